//! The MultiTask-CenterNet study (Heuer et al., <https://arxiv.org/abs/2108.05060>): single-task
//! detection, segmentation and pose models against one joint model with the same training
//! budget, on the synthetic default. Writes `report.md` with each task's metric, parameters and
//! milliseconds per image (the joint model against the sum of the single ones).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use mustard_core::candle_core::{DType, Device, Tensor};
use mustard_data::{Dataset, Task};

use crate::checkpoint::{load_model, RunPaths};
use crate::config::{Config, Preset};
use crate::datasets::{open_dataset, synthetic_datasets};
use crate::evaluate::{evaluate, EvalReport};
use crate::train::train_unless_done;
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

/// The config of the study's runs for `preset`: the same budget for every variant (see
/// [`Config::mcn`]).
pub fn base_config(preset: Preset) -> Config {
    Config::mcn(preset)
}

/// The models of the study: one per task, then all three together.
pub const VARIANTS: [(&str, &[Task]); 4] = [
    ("detection", &[Task::Detection]),
    ("segmentation", &[Task::Segmentation]),
    ("pose", &[Task::Pose]),
    ("joint", &[Task::Detection, Task::Segmentation, Task::Pose]),
];

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

/// Runs the study with the budget of `base` under `runs/mcn/` (saving `base` as
/// `runs/mcn/config.toml`); finished runs are reused, unfinished ones resumed.
pub fn study(base: &Config, runs: &Path, progress: bool) -> Result<Study> {
    let started = Instant::now();
    base.validate()?;
    base.numerics.apply();
    let root = runs.join("mcn");
    std::fs::create_dir_all(&root).map_err(|e| Error::io(&root, e))?;
    base.write(&root.join("config.toml"))?;
    // The synthetic data lives under the top-level runs folder, shared by all variants.
    let (train, val) = synthetic_datasets(base, runs)?;
    let val_ds = Arc::new(open_dataset(&val, None, false)?);
    let mut out = Vec::new();
    for (name, tasks) in VARIANTS {
        let mut config = base.clone();
        config.name = name.to_string();
        config.model.tasks = tasks.to_vec();
        config.train.validate = false;
        config.data.train = Some(train.clone());
        config.data.val = Some(val.clone());
        if progress && !RunPaths::new(&root, name).dir.join("done").is_file() {
            let names: Vec<&str> = tasks.iter().map(|t| t.name()).collect();
            eprintln!("mcn: training the {name} model ({})", names.join(" + "));
        }
        let seconds = train_unless_done(&config, &root, progress)?;
        out.push(measure(name, tasks, &root, &val_ds, seconds)?);
    }
    let report = root.join("report.md");
    let text = render(&out, base, started.elapsed().as_secs_f64());
    std::fs::write(&report, text).map_err(|e| Error::io(&report, e))?;
    Ok(Study {
        variants: out,
        report,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// A trained variant on the validation set: metrics, parameters, speed.
fn measure(
    name: &str,
    tasks: &[Task],
    root: &Path,
    val: &Arc<Dataset>,
    train_seconds: f64,
) -> Result<Variant> {
    let (config, varmap, model) = load_model(&RunPaths::new(root, name).last())?;
    let t = &config.train;
    let report = evaluate(&model, val.clone(), t.input_size, t.batch_size, t.workers)?;
    let parameters = mustard_core::optim::trainable_vars(&varmap)
        .iter()
        .map(|(_, v)| v.elem_count())
        .sum();
    Ok(Variant {
        name: name.to_string(),
        tasks: tasks.to_vec(),
        report,
        parameters,
        ms_per_image: milliseconds_per_image(&model, t.input_size)?,
        train_seconds,
    })
}

fn metric(report: &EvalReport, task: Task) -> Option<f64> {
    report.headline().get(task).copied()
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
