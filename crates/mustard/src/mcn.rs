//! The MultiTask-CenterNet study (Heuer et al., <https://arxiv.org/abs/2108.05060>): detection,
//! segmentation and pose models, each task alone, in pairs and all three together, with the same
//! training budget, over several seeds, on the synthetic default. Writes `report.md` with each
//! task's metric in every model that has it (mean ± standard deviation over the seeds), the
//! paper's claim checked in a plain sentence, and each model's parameters and milliseconds per
//! image.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use mustard_core::candle_core::{DType, Tensor};
use mustard_data::{Dataset, Task};
use serde::{Deserialize, Serialize};

use crate::checkpoint::{load_model, RunPaths};
use crate::config::{read_toml, write_toml, Config};
use crate::datasets::{open_dataset, synthetic_datasets};
use crate::error::Problems;
use crate::evaluate::{evaluate_shared, EvalReport, Resolution};
use crate::stats::{claim_above, MeanStd};
use crate::train::train_unless_done;
use crate::{Error, Result};

/// The tasks of the study.
pub const TASKS: [Task; 3] = [Task::Detection, Task::Segmentation, Task::Pose];

/// The study's settings, saved as `runs/mcn/config.toml` (presets in `presets.rs`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct McnConfig {
    /// The models: each a set of tasks among detection, segmentation and pose.
    pub variants: Vec<Vec<Task>>,
    /// Every model is trained with seeds `base.seed`, `base.seed + 1`, …
    pub seeds: usize,
    /// Backbone, data, sizes and the budget shared by every model (tasks set per model).
    pub base: Config,
}

impl McnConfig {
    /// Checks every setting, reporting all problems at once.
    pub fn validate(&self) -> Result<()> {
        let mut p = Problems::default();
        p.extend(self.base.validate())?;
        p.check(self.seeds == 0, "mcn.seeds", || "at least one seed".into());
        p.check(self.variants.is_empty(), "mcn.variants", || {
            "at least one model".into()
        });
        for v in &self.variants {
            p.check(
                v.is_empty() || v.iter().any(|t| !TASKS.contains(t)),
                "mcn.variants",
                || format!("{v:?}: a model has one or more of detection, segmentation, pose"),
            );
        }
        p.finish()
    }

    /// Reads a saved study config.
    pub fn read(path: &Path) -> Result<Self> {
        let config: McnConfig = read_toml(path)?;
        config.validate()?;
        Ok(config)
    }
}

/// A model's name: its task, `joint` for all three, or its tasks joined by `-`.
pub fn variant_name(tasks: &[Task]) -> String {
    let mut sorted = tasks.to_vec();
    sorted.sort();
    sorted.dedup();
    if sorted.len() == TASKS.len() {
        return "joint".into();
    }
    let names: Vec<&str> = sorted.iter().map(|t| t.name()).collect();
    names.join("-")
}

/// The run folder name of a model with seed offset `k` (the first seed keeps the bare name).
fn run_name(variant: &str, k: usize) -> String {
    if k == 0 {
        variant.to_string()
    } else {
        format!("{variant}-seed{k}")
    }
}

/// One model of the study, over its seeds.
#[derive(Debug, Clone)]
pub struct Variant {
    /// See [`variant_name`].
    pub name: String,
    /// Its tasks.
    pub tasks: Vec<Task>,
    /// Validation results, one per seed.
    pub reports: Vec<EvalReport>,
    /// Trainable parameters.
    pub parameters: usize,
    /// Forward milliseconds per image (batch 1, eval mode, the first seed's model).
    pub ms_per_image: f64,
    /// Training seconds over the seeds (0 for runs already trained).
    pub train_seconds: f64,
}

impl Variant {
    /// The model's tasks other than `task`, joined by ` + `.
    fn partners(&self, task: Task) -> String {
        let names: Vec<&str> = self
            .tasks
            .iter()
            .filter(|&&t| t != task)
            .map(|t| t.name())
            .collect();
        names.join(" + ")
    }

    /// `task`'s headline metric over the seeds, when this model has the task.
    pub fn metric(&self, task: Task) -> Option<MeanStd> {
        if !self.tasks.contains(&task) {
            return None;
        }
        let values: Vec<f64> = self
            .reports
            .iter()
            .filter_map(|r| r.headline().get(task).copied())
            .collect();
        (!values.is_empty()).then(|| MeanStd::of(&values))
    }
}

/// The study's results.
#[derive(Debug, Clone)]
pub struct Study {
    /// The models, in the config's order.
    pub variants: Vec<Variant>,
    /// The report file.
    pub report: PathBuf,
    /// Wall time of the whole study.
    pub seconds: f64,
}

/// The single-task models and the joint one (the quick study).
pub fn singles_and_joint() -> Vec<Vec<Task>> {
    let mut v: Vec<Vec<Task>> = TASKS.iter().map(|&t| vec![t]).collect();
    v.push(TASKS.to_vec());
    v
}

/// Each task alone, each pair and all three (the paper's table).
pub fn every_combination() -> Vec<Vec<Task>> {
    let mut v: Vec<Vec<Task>> = TASKS.iter().map(|&t| vec![t]).collect();
    for (i, &a) in TASKS.iter().enumerate() {
        for &b in &TASKS[i + 1..] {
            v.push(vec![a, b]);
        }
    }
    v.push(TASKS.to_vec());
    v
}

fn milliseconds_per_image(model: &crate::MultiTaskModel, size: u32) -> Result<f64> {
    let model = &model.for_inference()?;
    let x = Tensor::zeros(
        (1, 3, size as usize, size as usize),
        DType::F32,
        model.device(),
    )?;
    model.forward_t(&x, false)?;
    let runs = 5;
    let started = Instant::now();
    for _ in 0..runs {
        model.forward_t(&x, false)?;
    }
    Ok(started.elapsed().as_secs_f64() * 1e3 / runs as f64)
}

/// Runs the study under `runs/mcn/` (saving its settings as `runs/mcn/config.toml`); finished
/// runs are reused, unfinished ones resumed.
pub fn study(config: &McnConfig, runs: &Path, progress: bool) -> Result<Study> {
    let started = Instant::now();
    config.validate()?;
    let base = &config.base;
    // A device this build cannot open is refused before any data is written.
    base.device.device()?;
    base.numerics.apply();
    let root = runs.join("mcn");
    std::fs::create_dir_all(&root).map_err(|e| Error::io(&root, e))?;
    // Under a launcher every process trains every model together and evaluates its share of
    // the validation set; rank 0 alone scores, times, writes and reports.
    let main = mustard_core::dist::is_main();
    let progress = progress && main;
    if main {
        write_toml(config, &root.join("config.toml"))?;
    }
    // The synthetic data lives under the top-level runs folder, shared by all variants.
    let (train, val) = synthetic_datasets(base, runs)?;
    let val_ds = Arc::new(open_dataset(&val, None, false)?);
    let mut out = Vec::new();
    for tasks in &config.variants {
        let name = variant_name(tasks);
        let mut variant = Variant {
            name: name.clone(),
            tasks: tasks.clone(),
            reports: Vec::new(),
            parameters: 0,
            ms_per_image: 0.0,
            train_seconds: 0.0,
        };
        for k in 0..config.seeds {
            let mut c = base.clone();
            c.name = run_name(&name, k);
            c.seed = base.seed + k as u64;
            c.model.tasks = tasks.clone();
            c.train.validate = false;
            c.data.train = Some(train.clone());
            c.data.val = Some(val.clone());
            if progress {
                let names: Vec<&str> = tasks.iter().map(|t| t.name()).collect();
                let what = format!("{name} model ({}), seed {}", names.join(" + "), c.seed);
                let state = crate::train::StageState::of(&root, &c.name);
                eprintln!("mcn: {}", state.say(&what, &format!("training the {what}")));
            }
            variant.train_seconds += train_unless_done(&c, &root, progress)?;
            measure(
                &mut variant,
                &RunPaths::new(&root, &c.name).last(),
                &val_ds,
                k == 0,
            )?;
        }
        out.push(variant);
    }
    let report = root.join("report.md");
    if main {
        let text = render(&out, config, started.elapsed().as_secs_f64());
        mustard_core::io::write_bytes(&report, text.as_bytes())?;
        crate::charts::write_bars(&root.join("mcn.png"), &charts(&out, config.seeds))?;
    }
    mustard_core::dist::world().barrier()?;
    Ok(Study {
        variants: out,
        report,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// `mcn.png`: one panel per task (each on its own scale: keypoint AP is far below mIoU), one
/// bar per model that has the task (mean over seeds, whisker one standard deviation).
fn charts(variants: &[Variant], seeds: usize) -> Vec<crate::charts::Bars> {
    let over = if seeds > 1 {
        format!(", mean of {seeds} seeds ± sd")
    } else {
        String::new()
    };
    Task::ALL
        .into_iter()
        .filter(|t| variants.iter().any(|v| v.tasks.contains(t)))
        .map(|task| {
            let cells: Vec<(String, MeanStd)> = variants
                .iter()
                .filter_map(|v| Some((v.name.clone(), v.metric(task)?)))
                .collect();
            crate::charts::Bars {
                title: format!(
                    "MultiTask-CenterNet: {task} {} in every model that has it{over}",
                    crate::must::metric_name(task)
                ),
                y_label: format!("validation {}", crate::must::metric_name(task)),
                legend: vec![format!("{task}")],
                groups: cells
                    .iter()
                    .map(|(n, m)| (n.clone(), vec![m.mean]))
                    .collect(),
                errors: (seeds > 1).then(|| cells.iter().map(|(_, m)| vec![m.std]).collect()),
                empty: "no model".into(),
            }
        })
        .collect()
}

/// A trained model on the validation set: its metrics, and with `size` its parameters and
/// speed. Every process of the run calls it; rank 0 alone keeps the numbers.
fn measure(variant: &mut Variant, weights: &Path, val: &Arc<Dataset>, size: bool) -> Result<()> {
    let (config, varmap, model) = load_model(weights)?;
    let t = &config.train;
    let Some(report) = evaluate_shared(
        &model,
        val.clone(),
        t.input_size,
        t.batch_size,
        t.workers,
        Resolution::Original,
        config.data.skip_bad,
    )?
    else {
        return Ok(());
    };
    variant.reports.push(report);
    if size {
        variant.parameters = mustard_core::optim::trainable_vars(&varmap)
            .iter()
            .map(|(_, v)| v.elem_count())
            .sum();
        variant.ms_per_image = milliseconds_per_image(&model, t.input_size)?;
    }
    Ok(())
}

fn metric_name(task: Task) -> &'static str {
    match task {
        Task::Detection => "box AP",
        Task::Segmentation => "mIoU",
        _ => "keypoint AP",
    }
}

/// The Markdown report.
pub fn render(variants: &[Variant], config: &McnConfig, seconds: f64) -> String {
    let mut s = String::new();
    let base = &config.base;
    let t = &base.train;
    let _ = writeln!(s, "# MultiTask-CenterNet study\n");
    let _ = writeln!(
        s,
        "Each model: {} backbone, {}, {} epochs of {} synthetic images at {} px, batch {}, AdamW lr {}; {} seed(s) each ({}). \
         Validation on {} held-out synthetic images. Metrics: box AP and keypoint AP (COCO, equal to pycocotools), mIoU; \
         trivial baselines: AP 0 (no box or person found), mIoU of answering background everywhere (docs/SYNTHETIC.md).{}\n",
        base.model.backbone, base.model.neck, t.epochs, base.data.synth.train_images, t.input_size, t.batch_size, t.lr,
        config.seeds,
        if config.seeds > 1 { "mean ± sample standard deviation" } else { "one run" },
        base.data.synth.val_images,
        if config.seeds > 1 { "" } else { " One seed gives no noise estimate: differences below are not tested claims." },
    );
    render_table(&mut s, variants);
    render_claims(&mut s, variants);
    render_costs(&mut s, variants);
    let _ = writeln!(s, "\nStudy wall time: {seconds:.0} s.");
    s
}

/// One row per task: the task alone, then every model that has it.
fn render_table(s: &mut String, variants: &[Variant]) {
    let _ = writeln!(s, "| task | metric | model | score | model − task alone |");
    let _ = writeln!(s, "| --- | --- | --- | --- | --- |");
    for task in TASKS {
        let alone = variants
            .iter()
            .find(|v| v.tasks == [task])
            .and_then(|v| v.metric(task));
        for v in variants.iter().filter(|v| v.tasks.contains(&task)) {
            let Some(m) = v.metric(task) else { continue };
            let diff = match alone {
                Some(a) if v.tasks.len() > 1 => format!("{:+.3}", m.mean - a.mean),
                _ => "–".into(),
            };
            let with = if v.tasks.len() == 1 {
                "alone".to_string()
            } else {
                format!("with {}", v.partners(task))
            };
            let _ = writeln!(
                s,
                "| {task} | {} | {with} | {m} | {diff} |",
                metric_name(task)
            );
        }
    }
}

/// The paper's headline (pose trained with segmentation scores at least as well as pose alone)
/// and the same question for every task with each partner, one sentence each.
fn render_claims(s: &mut String, variants: &[Variant]) {
    let find = |tasks: &[Task]| {
        let name = variant_name(tasks);
        variants.iter().find(|v| v.name == name)
    };
    let _ = writeln!(s, "\n## Claims\n");
    let mut any = false;
    for task in TASKS {
        let Some(alone) = find(&[task]).and_then(|v| v.metric(task)) else {
            continue;
        };
        for v in variants
            .iter()
            .filter(|v| v.tasks.len() > 1 && v.tasks.contains(&task))
        {
            let Some(m) = v.metric(task) else { continue };
            let baseline = (task != Task::Segmentation).then_some(0.0);
            let (_, sentence) = claim_above(m, alone, baseline);
            let headline =
                task == Task::Pose && v.tasks.len() == 2 && v.tasks.contains(&Task::Segmentation);
            let _ = writeln!(
                s,
                "- {}{task} trained with {} scores at least as well as {task} alone: {} {m} against {alone}, {sentence}.",
                if headline { "**MCN's headline** — " } else { "" },
                v.partners(task),
                metric_name(task),
            );
            any = true;
        }
    }
    if !any {
        let _ = writeln!(s, "No model trains a task together with another.");
    }
}

fn render_costs(s: &mut String, variants: &[Variant]) {
    let singles: Vec<&Variant> = variants.iter().filter(|v| v.tasks.len() == 1).collect();
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
    if let Some(j) = variants.iter().find(|v| v.tasks.len() == TASKS.len()) {
        let _ = writeln!(
            s,
            "\nThe joint model has {:.0}% of the parameters and takes {:.0}% of the time of running the three single-task models side by side.",
            100.0 * j.parameters as f64 / p_sum.max(1) as f64,
            100.0 * j.ms_per_image / ms_sum.max(1e-9)
        );
    }
}
