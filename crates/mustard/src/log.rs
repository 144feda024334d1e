//! A run's record of its epochs: `metrics.csv` (one row per epoch: losses, validation
//! metrics) and `results.png` drawn from it; the progress bars of long loops.

use std::io::Write;
use std::path::PathBuf;

use mustard_data::{Task, TaskMap};

use crate::checkpoint::RunPaths;
use crate::evaluate::EvalReport;
use crate::{Error, Result};

/// A progress bar on the terminal of `len` steps drawn with `template` (indicatif's syntax), or
/// a hidden one when not `visible`.
pub fn progress_bar(visible: bool, len: u64, template: &str) -> indicatif::ProgressBar {
    let bar = if visible {
        indicatif::ProgressBar::new(len)
    } else {
        indicatif::ProgressBar::hidden()
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(template)
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar
}

/// Prints a line above `bar` when `visible`: through the bar on a terminal (which keeps it
/// drawn below), straight to stderr when the bar is hidden (output to a file or a pipe, where
/// the bar draws nothing and would swallow the line).
pub fn say(bar: &indicatif::ProgressBar, visible: bool, line: String) {
    if !visible {
        return;
    }
    if bar.is_hidden() {
        eprintln!("{line}");
    } else {
        bar.println(line);
    }
}

/// One epoch's row.
pub struct EpochRow<'a> {
    /// Epochs done.
    pub epoch: u64,
    /// Optimiser steps done.
    pub step: u64,
    /// The learning rate at the end of the epoch.
    pub lr: f64,
    /// Wall time of the epoch.
    pub seconds: f64,
    /// Mean total loss.
    pub loss: f64,
    /// Mean loss of each task.
    pub task_losses: &'a TaskMap<f64>,
    /// The validation of the epoch, when there was one.
    pub validation: Option<&'a EvalReport>,
    /// Training images left out so far because they cannot be read (`--skip-bad`).
    pub skipped: usize,
}

/// `metrics.csv` of a run, with one column per task in the run's task order.
pub struct MetricsLog {
    run: RunPaths,
    tasks: Vec<Task>,
    /// Whether the file has the `skipped` column (a log begun by an older version has not).
    skipped_column: bool,
}

impl MetricsLog {
    /// Opens (creating with its header) the log of `run`.
    pub fn open(run: &RunPaths, tasks: &[Task]) -> Result<Self> {
        let mut log = Self {
            run: run.clone(),
            tasks: tasks.to_vec(),
            skipped_column: true,
        };
        if log.path().is_file() {
            let text = std::fs::read_to_string(log.path()).map_err(|e| Error::io(log.path(), e))?;
            let header = text.lines().next().unwrap_or_default();
            log.skipped_column = header.split(',').any(|c| c == "skipped");
        } else {
            std::fs::write(log.path(), log.header() + "\n")
                .map_err(|e| Error::io(log.path(), e))?;
        }
        Ok(log)
    }

    fn path(&self) -> PathBuf {
        self.run.metrics()
    }

    fn header(&self) -> String {
        let mut cols: Vec<String> = ["epoch", "step", "lr", "seconds", "loss"]
            .map(String::from)
            .to_vec();
        cols.extend(self.tasks.iter().map(|t| format!("loss_{t}")));
        if self.skipped_column {
            cols.push("skipped".into());
        }
        cols.extend(self.tasks.iter().map(|t| format!("val_{t}")));
        cols.push("val_score".into());
        cols.join(",")
    }

    /// Appends `row` and redraws `results.png`.
    pub fn append(&self, row: &EpochRow<'_>) -> Result<()> {
        let mut cells = vec![
            row.epoch.to_string(),
            row.step.to_string(),
            format!("{:.6e}", row.lr),
            format!("{:.1}", row.seconds),
            format!("{:.5}", row.loss),
        ];
        let mean = |t: Task| row.task_losses.get(t).copied().unwrap_or(f64::NAN);
        cells.extend(self.tasks.iter().map(|&t| format!("{:.5}", mean(t))));
        if self.skipped_column {
            cells.push(row.skipped.to_string());
        }
        let headline = row.validation.map(EvalReport::headline).unwrap_or_default();
        cells.extend(
            self.tasks
                .iter()
                .map(|&t| headline.get(t).map_or(String::new(), |v| format!("{v:.5}"))),
        );
        cells.push(
            row.validation
                .map_or(String::new(), |v| format!("{:.5}", v.score())),
        );
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(self.path())
            .map_err(|e| Error::io(self.path(), e))?;
        writeln!(file, "{}", cells.join(",")).map_err(|e| Error::io(self.path(), e))?;
        write_results_png(&self.run)
    }
}

/// Draws `results.png` from `metrics.csv`: one panel per loss (the total, then each task's) and
/// per validation metric, epochs on x, each epoch's value with a smoothed trend.
pub fn write_results_png(run: &RunPaths) -> Result<()> {
    let csv = std::fs::read_to_string(run.metrics()).map_err(|e| Error::io(run.metrics(), e))?;
    let (panels, validated, tasks) = results_panels(&csv);
    let name = run
        .dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let not_validated = if validated {
        ""
    } else {
        "; not validated (no validation set, or --no-val)"
    };
    crate::charts::write_panels(
        &run.dir.join("results.png"),
        &format!("{name}: points are epochs, the line their smoothed trend{not_validated}"),
        &panels,
        (tasks + 1).clamp(3, 6),
    )
}

/// The panels of `results.png` drawn from the text of `metrics.csv`, whether the run validated,
/// and its number of tasks: the losses and the learning rate, and the validation metrics only
/// when some epoch was validated.
fn results_panels(csv: &str) -> (Vec<crate::charts::Panel>, bool, usize) {
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().unwrap_or_default().split(',').collect();
    let rows: Vec<Vec<f64>> = lines
        .map(|l| {
            l.split(',')
                .map(|v| v.parse().unwrap_or(f64::NAN))
                .collect()
        })
        .collect();
    let column = |name: &str| -> Vec<(f64, f64)> {
        let Some(i) = header.iter().position(|h| *h == name) else {
            return Vec::new();
        };
        rows.iter()
            .map(|r| (r[0], r.get(i).copied().unwrap_or(f64::NAN)))
            .collect()
    };
    let validated = rows.iter().any(|r| {
        header
            .iter()
            .zip(r)
            .any(|(h, v)| h.starts_with("val_") && v.is_finite())
    });
    // Losses and the learning rate may span decades (log axis); metrics stay linear.
    let panel = |title: String, name: &str, empty: &str| crate::charts::Panel {
        title,
        x_label: "epoch".into(),
        points: column(name),
        empty: empty.into(),
        log: !name.starts_with("val_"),
        smooth: name != "lr",
    };
    let mut panels = vec![panel("total loss".into(), "loss", "no epoch finished yet")];
    let tasks: Vec<Task> = header
        .iter()
        .filter_map(|h| h.strip_prefix("loss_")?.parse().ok())
        .collect();
    for task in &tasks {
        panels.push(panel(
            format!("{task} loss"),
            &format!("loss_{task}"),
            "no epoch finished yet",
        ));
    }
    // Validation panels only for a run that validated: one without draws none and says so in
    // its title.
    if validated {
        for task in &tasks {
            let title = format!("validation {task} {}", crate::must::metric_name(*task));
            panels.push(panel(
                title,
                &format!("val_{task}"),
                "no validation image is labelled for this task",
            ));
        }
        if tasks.len() > 1 {
            panels.push(panel(
                "validation score (mean)".into(),
                "val_score",
                "no validation yet",
            ));
        }
    }
    panels.push(panel("learning rate".into(), "lr", "no epoch finished yet"));
    let n = tasks.len();
    (panels, validated, n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn titles(csv: &str) -> (Vec<String>, bool) {
        let (panels, validated, _) = results_panels(csv);
        (panels.into_iter().map(|p| p.title).collect(), validated)
    }

    /// A run without validation draws only the panels it has data for.
    #[test]
    fn results_draw_validation_panels_only_for_a_validated_run() {
        let header = "epoch,step,lr,seconds,loss,loss_detection,loss_segmentation,skipped,val_detection,val_segmentation,val_score";
        let unvalidated = format!("{header}\n1,2,1e-3,0.1,5.0,3.0,2.0,0,,,\n");
        assert_eq!(
            titles(&unvalidated),
            (
                vec![
                    "total loss".to_string(),
                    "detection loss".into(),
                    "segmentation loss".into(),
                    "learning rate".into()
                ],
                false
            )
        );
        let validated = format!("{header}\n1,2,1e-3,0.1,5.0,3.0,2.0,0,0.1,0.3,0.2\n");
        let (t, v) = titles(&validated);
        assert!(v);
        assert_eq!(t.len(), 7, "{t:?}");
        assert_eq!(t[3], "validation detection box AP");
        assert_eq!(t[5], "validation score (mean)");
    }
}
