//! The MultiTask-CenterNet study (Heuer et al., <https://arxiv.org/abs/2108.05060>): single-task
//! detection, segmentation and pose models against one joint model with the same training
//! budget, on the synthetic default. Writes `report.md` with each task's metric, parameters and
//! milliseconds per image (the joint model against the sum of the single ones).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use mustard_core::candle_core::{DType, Device, Tensor};
use mustard_data::Task;

use crate::checkpoint::{load_model, RunPaths};
use crate::config::{Config, Preset};
use crate::evaluate::{evaluate, EvalReport};
use crate::train::{open_dataset, synthetic_datasets, train, TrainOptions};
use crate::{Error, Result};

/// One model of the study.
#[derive(Debug, Clone)]
pub struct Variant {
    /// `detection`, `segmentation`, `pose` or `joint`.
    pub name: String,
    /// Its tasks.
    pub tasks: Vec<Task>,
    /// Validation results.
    pub report: EvalReport,
    /// Trainable parameters.
    pub parameters: usize,
    /// Forward milliseconds per image (batch 1, eval mode).
    pub ms_per_image: f64,
    /// Training seconds (0 when the run was already trained).
    pub train_seconds: f64,
}

/// The study's results.
#[derive(Debug, Clone)]
pub struct Study {
    /// The single-task models, then the joint one.
    pub variants: Vec<Variant>,
    /// The report file.
    pub report: PathBuf,
    /// Wall time of the whole study.
    pub seconds: f64,
}

/// The config of the study's runs for `preset`: the same budget for every variant.
pub fn base_config(preset: Preset) -> Config {
    let mut config = Config::preset(preset, "mcn");
    if preset == Preset::Quick {
        // About 2.5 minutes per model on 2 cores: 432 steps of 8 images at 96 px.
        config.train.epochs = 18;
        config.train.batch_size = 8;
        config.data.synth.train_images = 192;
    }
    config
}

fn milliseconds_per_image(model: &crate::MultiTaskModel, size: u32) -> Result<f64> {
    let x = Tensor::zeros(
        (1, 3, size as usize, size as usize),
        DType::F32,
        &Device::Cpu,
    )?;
    model.forward_t(&x, false)?;
    let runs = 5;
    let started = Instant::now();
    for _ in 0..runs {
        model.forward_t(&x, false)?;
    }
    Ok(started.elapsed().as_secs_f64() * 1e3 / runs as f64)
}

/// Runs the study with the budget of `base` under `runs/mcn/`; finished runs are reused,
/// unfinished ones resumed.
pub fn study(base: &Config, runs: &Path, progress: bool) -> Result<Study> {
    let started = Instant::now();
    let root = runs.join("mcn");
    let base = base.clone();
    let (_, val) = synthetic_datasets(&base, runs)?;
    let val = Arc::new(open_dataset(&val, None, false)?);
    let variants = [
        ("detection", vec![Task::Detection]),
        ("segmentation", vec![Task::Segmentation]),
        ("pose", vec![Task::Pose]),
        (
            "joint",
            vec![Task::Detection, Task::Segmentation, Task::Pose],
        ),
    ];
    let mut out = Vec::new();
    for (name, tasks) in variants {
        let mut config = base.clone();
        config.name = name.to_string();
        config.model.tasks = tasks.clone();
        config.train.validate = false;
        let run = RunPaths::new(&root, name);
        let done = run.dir.join("done");
        let mut seconds = 0.0;
        if !done.is_file() {
            if progress {
                eprintln!(
                    "mcn: training the {name} model ({})",
                    tasks
                        .iter()
                        .map(|t| t.name())
                        .collect::<Vec<_>>()
                        .join(" + ")
                );
            }
            let options = TrainOptions {
                runs: root.clone(),
                resume: run.last().is_file(),
                progress,
                stop_after: None,
            };
            // The synthetic data lives under the top-level runs folder, shared by all variants.
            let (train_path, val_path) = synthetic_datasets(&config, runs)?;
            config.data.train = Some(train_path);
            config.data.val = Some(val_path);
            let summary = train(&config, &options)?;
            seconds = summary.seconds;
            std::fs::write(&done, format!("{}\n", summary.steps))
                .map_err(|e| Error::file(&done, e))?;
        }
        let (config, varmap, model) = load_model(&run.last())?;
        let report = evaluate(
            &model,
            val.clone(),
            config.train.input_size,
            config.train.batch_size,
            config.train.workers,
        )?;
        let parameters = mustard_core::optim::trainable_vars(&varmap)
            .iter()
            .map(|(_, v)| v.elem_count())
            .sum();
        let ms_per_image = milliseconds_per_image(&model, config.train.input_size)?;
        out.push(Variant {
            name: name.to_string(),
            tasks,
            report,
            parameters,
            ms_per_image,
            train_seconds: seconds,
        });
    }
    let report = root.join("report.md");
    let text = render(&out, &base, started.elapsed().as_secs_f64());
    std::fs::write(&report, text).map_err(|e| Error::file(&report, e))?;
    Ok(Study {
        variants: out,
        report,
        seconds: started.elapsed().as_secs_f64(),
    })
}

fn metric(report: &EvalReport, task: Task) -> Option<f64> {
    report
        .headline()
        .into_iter()
        .find(|(t, _)| *t == task)
        .map(|(_, v)| v)
}

/// The Markdown report.
pub fn render(variants: &[Variant], config: &Config, seconds: f64) -> String {
    let mut s = String::new();
    let t = &config.train;
    let _ = writeln!(s, "# MultiTask-CenterNet study\n");
    let _ = writeln!(
        s,
        "Each model: {:?} backbone, {:?} neck, {} epochs of {} synthetic images at {} px, batch {}, AdamW lr {}. \
         Validation on {} held-out synthetic images. Metrics: box AP and keypoint AP (COCO, equal to pycocotools), mIoU.\n",
        config.model.backbone, config.model.neck, t.epochs, config.data.synth.train_images, t.input_size, t.batch_size, t.lr, config.data.synth.val_images
    );
    let _ = writeln!(
        s,
        "| task | metric | single-task | joint | joint − single |"
    );
    let _ = writeln!(s, "| --- | --- | --- | --- | --- |");
    let joint = variants.iter().find(|v| v.name == "joint");
    for (task, name) in [
        (Task::Detection, "box AP"),
        (Task::Segmentation, "mIoU"),
        (Task::Pose, "keypoint AP"),
    ] {
        let single = variants
            .iter()
            .find(|v| v.tasks == [task])
            .and_then(|v| metric(&v.report, task));
        let j = joint.and_then(|v| metric(&v.report, task));
        let fmt = |v: Option<f64>| v.map_or("–".to_string(), |v| format!("{v:.3}"));
        let diff = match (single, j) {
            (Some(a), Some(b)) => format!("{:+.3}", b - a),
            _ => "–".into(),
        };
        let _ = writeln!(
            s,
            "| {task} | {name} | {} | {} | {diff} |",
            fmt(single),
            fmt(j)
        );
    }
    let singles: Vec<&Variant> = variants.iter().filter(|v| v.name != "joint").collect();
    let (p_sum, ms_sum) = (
        singles.iter().map(|v| v.parameters).sum::<usize>(),
        singles.iter().map(|v| v.ms_per_image).sum::<f64>(),
    );
    let _ = writeln!(
        s,
        "\n| model | parameters | ms / image (batch 1) | training s |"
    );
    let _ = writeln!(s, "| --- | --- | --- | --- |");
    for v in variants {
        let _ = writeln!(
            s,
            "| {} | {} | {:.1} | {:.0} |",
            v.name, v.parameters, v.ms_per_image, v.train_seconds
        );
    }
    let _ = writeln!(
        s,
        "| sum of the single-task models | {p_sum} | {ms_sum:.1} | |"
    );
    if let Some(j) = joint {
        let _ = writeln!(
            s,
            "\nThe joint model has {:.0}% of the parameters and takes {:.0}% of the time of running the three single-task models side by side.",
            100.0 * j.parameters as f64 / p_sum.max(1) as f64,
            100.0 * j.ms_per_image / ms_sum.max(1e-9)
        );
    }
    let _ = writeln!(s, "\nStudy wall time: {seconds:.0} s.");
    s
}
