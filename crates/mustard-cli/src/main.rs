//! The `mustard` command. It parses arguments into typed values, calls into the `mustard` crate
//! and reports; it holds no logic of its own.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use mustard::backbone::ResNetPreset;
use mustard::data::synth::{self, Splits, SynthConfig};
use mustard::data::{Dataset, Task};
use mustard::eval::{CocoDt, CocoGt, IouType, Params};
use mustard::train::{TrainOptions, TrainSummary};
use mustard::{Config, Preset};

/// One model that detects objects, segments scenes, estimates human pose and depth, and
/// classifies images.
#[derive(Debug, Parser)]
#[command(name = "mustard", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Write the synthetic all-task dataset (COCO json, images, label maps, depth maps).
    Synth(SynthArgs),
    /// Inspect datasets.
    Data {
        #[command(subcommand)]
        command: DataCommand,
    },
    /// Train a model (any subset of tasks); with no data given, on the synthetic default.
    Train(TrainArgs),
    /// Evaluate a checkpoint on a dataset, or score a COCO results file against ground truth.
    Eval(EvalArgs),
    /// Run a checkpoint on images: COCO-results JSON and pictures of the predictions.
    Predict(PredictArgs),
    /// Run teacher checkpoints over unlabelled images into a sharded, resumable pseudo-label
    /// store (MuST step 2); `--shard i/N` lets N workers share the work.
    PseudoLabel(PseudoArgs),
    /// MuST: train one teacher per task, pseudo-label the unlabelled set, train the multi-task
    /// student, evaluate them all and run the transfer test; writes runs/must/report.md.
    Must(MustArgs),
    /// Time a model: preprocess / inference / postprocess ms per image, images/s, memory.
    Bench(BenchArgs),
    /// The MultiTask-CenterNet study: single-task models against one joint model.
    Mcn {
        /// Model and data size.
        #[arg(long, value_enum, default_value = "quick")]
        preset: PresetArg,
        /// Folder of the runs (the study writes runs/mcn/).
        #[arg(long, default_value = "runs")]
        runs: PathBuf,
    },
}

#[derive(Debug, Args)]
struct BenchArgs {
    /// A checkpoint file or run folder (default: an untrained model of --config/--preset).
    #[arg(long, conflicts_with_all = ["config", "tasks", "backbone"])]
    checkpoint: Option<PathBuf>,
    /// A TOML config.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Preset of the untrained model.
    #[arg(long, value_enum, default_value = "quick")]
    preset: PresetArg,
    /// Tasks of the untrained model (comma-separated).
    #[arg(long, value_delimiter = ',')]
    tasks: Option<Vec<Task>>,
    /// Backbone of the untrained model.
    #[arg(long, value_enum)]
    backbone: Option<BackboneArg>,
    /// Network input side.
    #[arg(long, default_value_t = 512)]
    input_size: u32,
    /// Images per forward pass.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Timed iterations.
    #[arg(long, default_value_t = 10)]
    iterations: usize,
    /// Untimed iterations first.
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// An image to run on (default: a synthetic scene of the input size).
    #[arg(long)]
    image: Option<PathBuf>,
    /// Device: cpu, cuda:N or metal.
    #[arg(long)]
    device: Option<String>,
}

#[derive(Debug, Args)]
struct ThresholdArgs {
    /// Keep boxes scoring at least this [default: 0.5; `must --preset quick`: 0.3].
    #[arg(long)]
    det_threshold: Option<f64>,
    /// Keep people (pose teacher) scoring at least this [default: 0.5; quick `must`: 0.3].
    #[arg(long)]
    pose_threshold: Option<f64>,
    /// Leave joints whose heatmap score is below this unlabelled [default: 0].
    #[arg(long)]
    keypoint_threshold: Option<f64>,
    /// Ignore pixels whose top class probability is below this [default: 0.5].
    #[arg(long)]
    seg_threshold: Option<f64>,
    /// Softmax temperature of the soft class labels [default: 1].
    #[arg(long)]
    temperature: Option<f64>,
}

impl ThresholdArgs {
    /// `base` with the values given on the command line.
    fn over(&self, base: mustard::pseudo_labels::Thresholds) -> mustard::pseudo_labels::Thresholds {
        mustard::pseudo_labels::Thresholds {
            detection: self.det_threshold.unwrap_or(base.detection),
            pose: self.pose_threshold.unwrap_or(base.pose),
            keypoint: self.keypoint_threshold.unwrap_or(base.keypoint),
            segmentation: self.seg_threshold.unwrap_or(base.segmentation),
            temperature: self.temperature.unwrap_or(base.temperature),
        }
    }
}

#[derive(Debug, Args)]
struct PseudoArgs {
    /// A teacher checkpoint (file or run folder); repeat for each task's teacher.
    #[arg(long = "teacher", required = true)]
    teachers: Vec<PathBuf>,
    /// The unlabelled images: a folder of .jpg/.png images or a COCO file.
    #[arg(long)]
    images: PathBuf,
    /// Image folder of a COCO file (default: its folder).
    #[arg(long)]
    root: Option<PathBuf>,
    /// The store folder.
    #[arg(long)]
    out: PathBuf,
    /// This worker's slice: shards i, i+N, i+2N, … (e.g. $SLURM_ARRAY_TASK_ID/N).
    #[arg(long, default_value = "0/1")]
    shard: mustard::pseudo_labels::ShardSpec,
    /// Images per shard (fixed when the store is created).
    #[arg(long, default_value_t = 256)]
    shard_size: usize,
    /// Images per forward pass.
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    /// Network input size (default: the largest training size of the teachers).
    #[arg(long)]
    input_size: Option<u32>,
    #[command(flatten)]
    thresholds: ThresholdArgs,
}

#[derive(Debug, Args)]
struct MustArgs {
    /// Model and data size.
    #[arg(long, value_enum, default_value = "quick")]
    preset: PresetArg,
    /// Folder of the runs (the pipeline writes runs/must/).
    #[arg(long, default_value = "runs")]
    runs: PathBuf,
    /// A teacher's labelled COCO file, as TASK=FILE; repeat per task. With --unlabelled and
    /// --test, runs on your data instead of the synthetic default.
    #[arg(long = "labelled", value_name = "TASK=FILE", requires_all = ["unlabelled", "test"])]
    labelled: Vec<String>,
    /// The unlabelled images: a folder or a COCO file.
    #[arg(long, requires = "labelled")]
    unlabelled: Option<PathBuf>,
    /// The held-out labelled COCO file every model is evaluated on.
    #[arg(long, requires = "labelled")]
    test: Option<PathBuf>,
    /// Tasks with a teacher (default: every task, or those given with --labelled).
    #[arg(long, value_delimiter = ',')]
    tasks: Option<Vec<Task>>,
    /// Synthetic default: labelled images per task.
    #[arg(long)]
    per_task: Option<usize>,
    /// Synthetic default: unlabelled images.
    #[arg(long)]
    unlabelled_images: Option<usize>,
    /// Synthetic default: held-out test images.
    #[arg(long)]
    test_images: Option<usize>,
    /// Synthetic default: image side.
    #[arg(long)]
    size: Option<u32>,
    /// Network input size.
    #[arg(long)]
    input_size: Option<u32>,
    /// Images per batch.
    #[arg(long)]
    batch_size: Option<usize>,
    /// Epochs of each teacher.
    #[arg(long)]
    teacher_epochs: Option<usize>,
    /// Epochs of the student.
    #[arg(long)]
    student_epochs: Option<usize>,
    /// Images per pseudo-label shard.
    #[arg(long)]
    shard_size: Option<usize>,
    /// Task of the transfer test, or `none`.
    #[arg(long)]
    transfer: Option<String>,
    /// Labelled images of the transfer split.
    #[arg(long)]
    transfer_images: Option<usize>,
    /// Fine-tuning epochs of the transfer test.
    #[arg(long)]
    transfer_epochs: Option<usize>,
    #[command(flatten)]
    thresholds: ThresholdArgs,
}

#[derive(Debug, Args)]
struct PredictArgs {
    /// A checkpoint file (runs/<name>/weights/*.safetensors) or a run folder.
    #[arg(long)]
    checkpoint: PathBuf,
    /// An image, or a folder of .jpg/.png images.
    #[arg(long)]
    input: PathBuf,
    /// Output folder.
    #[arg(long)]
    out: PathBuf,
    /// Also write the heatmaps as pictures (to compare with the targets).
    #[arg(long)]
    save_heatmaps: bool,
    /// Ground-truth COCO file of the inputs: with --save-heatmaps, the target heatmaps are drawn
    /// under the predicted ones (images matched by file name).
    #[arg(long, requires = "save_heatmaps")]
    gt: Option<PathBuf>,
    /// Draw boxes and people scoring at least this.
    #[arg(long, default_value_t = 0.3)]
    threshold: f32,
}

#[derive(Debug, Args)]
struct SynthArgs {
    /// Output folder.
    #[arg(long)]
    out: PathBuf,
    /// Number of images (without --splits).
    #[arg(long, default_value_t = 200)]
    images: usize,
    /// Image side in pixels.
    #[arg(long, default_value_t = 256)]
    size: u32,
    /// Seed of every random choice.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Most objects per scene.
    #[arg(long, default_value_t = 6)]
    max_objects: usize,
    /// Write the MuST splits instead of one file: train_<task>.json per task, unlabeled.json
    /// and test.json.
    #[arg(long)]
    splits: bool,
    /// Images per single-task split (with --splits).
    #[arg(long, default_value_t = 200)]
    per_task: usize,
    /// Images of the unlabelled split (with --splits).
    #[arg(long, default_value_t = 400)]
    unlabeled: usize,
    /// Images of the test split (with --splits).
    #[arg(long, default_value_t = 100)]
    test: usize,
}

#[derive(Debug, Subcommand)]
enum DataCommand {
    /// Count images and annotations per task and category, and report every bad record.
    Check {
        /// The COCO json file.
        dataset: PathBuf,
        /// Image folder (default: the json file's folder).
        #[arg(long)]
        root: Option<PathBuf>,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum PresetArg {
    /// Tiny model, small synthetic set: minutes on 2 CPU cores.
    Quick,
    /// ResNet-18 + FPN at 256 px: a GPU or a long CPU run.
    Full,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum BackboneArg {
    Tiny,
    R18,
    R34,
    R50,
}

#[derive(Debug, Args)]
struct TrainArgs {
    /// A TOML config (see `runs/<name>/config.toml` of any run); flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Starting point when no --config is given.
    #[arg(long, value_enum, default_value = "quick")]
    preset: PresetArg,
    /// Run name: the folder under --runs.
    #[arg(long)]
    name: Option<String>,
    /// Folder of the runs.
    #[arg(long, default_value = "runs")]
    runs: PathBuf,
    /// Continue the run from its last checkpoint (its saved config is used).
    #[arg(long)]
    resume: bool,
    /// Training COCO file (default: the synthetic dataset).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Validation COCO file.
    #[arg(long)]
    val: Option<PathBuf>,
    /// Image folder (default: each file's folder).
    #[arg(long)]
    root: Option<PathBuf>,
    /// Tasks to train, comma separated (detection, pose, segmentation, depth, classification).
    #[arg(long, value_delimiter = ',')]
    tasks: Option<Vec<Task>>,
    /// Backbone preset.
    #[arg(long, value_enum)]
    backbone: Option<BackboneArg>,
    /// Backbone weights: a safetensors path or hf:<org>/<repo>[:<file>].
    #[arg(long)]
    pretrained: Option<String>,
    /// Start the backbone and neck from a mustard checkpoint (file or run folder).
    #[arg(long)]
    init_from: Option<PathBuf>,
    /// Train on a pseudo-label store (from `mustard pseudo-label`) instead of --data.
    #[arg(long, conflicts_with = "data")]
    pseudo: Option<PathBuf>,
    /// With --pseudo: use an image's real labels where it has them.
    #[arg(long, requires = "pseudo")]
    real_labels: bool,
    /// Epochs.
    #[arg(long)]
    epochs: Option<usize>,
    /// Stop after this many steps.
    #[arg(long)]
    max_steps: Option<u64>,
    /// Images per step.
    #[arg(long)]
    batch_size: Option<usize>,
    /// Input side in pixels (a multiple of 32).
    #[arg(long)]
    input_size: Option<u32>,
    /// Learning rate.
    #[arg(long)]
    lr: Option<f64>,
    /// Seed.
    #[arg(long)]
    seed: Option<u64>,
    /// Loader threads.
    #[arg(long)]
    workers: Option<usize>,
    /// Synthetic training images (with no --data).
    #[arg(long)]
    synth_images: Option<usize>,
    /// Synthetic validation images (with no --data).
    #[arg(long)]
    synth_val_images: Option<usize>,
    /// Leave bad dataset records out (each is logged) instead of refusing the dataset.
    #[arg(long)]
    skip_bad: bool,
    /// Do not validate after each epoch.
    #[arg(long)]
    no_val: bool,
    /// Write a checkpoint every this many steps.
    #[arg(long)]
    checkpoint_every: Option<u64>,
}

#[derive(Debug, Args)]
struct EvalArgs {
    /// A checkpoint file (runs/<name>/weights/*.safetensors) or a run folder.
    #[arg(long, conflicts_with_all = ["gt", "results"])]
    checkpoint: Option<PathBuf>,
    /// Dataset to evaluate the checkpoint on (default: the run's validation set).
    #[arg(long, requires = "checkpoint")]
    data: Option<PathBuf>,
    /// Ground-truth COCO file (with --results).
    #[arg(long, requires = "results")]
    gt: Option<PathBuf>,
    /// COCO results file (with --gt).
    #[arg(long, requires = "gt")]
    results: Option<PathBuf>,
    /// What the results are (with --gt).
    #[arg(long, value_enum, default_value = "bbox")]
    iou_type: IouArg,
    /// Write every number as JSON here.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Folder of the runs (for the synthetic validation set).
    #[arg(long, default_value = "runs")]
    runs: PathBuf,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum IouArg {
    Bbox,
    Segm,
    Keypoints,
}

fn synth(args: SynthArgs) -> Result<ExitCode> {
    let config = SynthConfig {
        size: args.size,
        seed: args.seed,
        max_objects: args.max_objects,
    };
    let splits = args.splits.then_some(Splits {
        per_task: args.per_task,
        unlabeled: args.unlabeled,
        test: args.test,
    });
    let started = std::time::Instant::now();
    let written = synth::write(&args.out, &config, args.images, splits.as_ref())
        .with_context(|| format!("writing the synthetic dataset to {}", args.out.display()))?;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "wrote {} images of {}x{} in {secs:.1} s",
        written.images, args.size, args.size
    );
    for (name, path) in &written.files {
        println!("  {name:<15} {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

fn data_check(dataset: PathBuf, root: Option<PathBuf>) -> Result<ExitCode> {
    let ds = Dataset::open(&dataset, root.as_deref())?;
    let report = ds.check();
    print!("{report}");
    Ok(if report.is_clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn backbone_preset(b: BackboneArg) -> ResNetPreset {
    match b {
        BackboneArg::Tiny => ResNetPreset::Tiny,
        BackboneArg::R18 => ResNetPreset::R18,
        BackboneArg::R34 => ResNetPreset::R34,
        BackboneArg::R50 => ResNetPreset::R50,
    }
}

fn train_config(args: &TrainArgs) -> Result<Config> {
    let mut config = match &args.config {
        Some(path) => Config::read(path)?,
        None => Config::preset(
            match args.preset {
                PresetArg::Quick => Preset::Quick,
                PresetArg::Full => Preset::Full,
            },
            "train",
        ),
    };
    if let Some(v) = &args.name {
        config.name = v.clone();
    }
    if let Some(v) = &args.data {
        config.data.train = Some(v.clone());
        config.data.val = None;
    }
    if let Some(v) = &args.val {
        config.data.val = Some(v.clone());
    }
    if let Some(v) = &args.root {
        config.data.root = Some(v.clone());
    }
    if let Some(v) = &args.tasks {
        config.model.tasks = v.clone();
    }
    if let Some(v) = args.backbone {
        config.model.backbone = backbone_preset(v);
    }
    if let Some(v) = &args.pretrained {
        config.model.pretrained = Some(v.clone());
    }
    if let Some(v) = &args.init_from {
        config.model.init_from = Some(v.clone());
    }
    if let Some(v) = &args.pseudo {
        config.data.pseudo = Some(v.clone());
        config.data.train = None;
    }
    config.data.real_labels |= args.real_labels;
    let t = &mut config.train;
    t.epochs = args.epochs.unwrap_or(t.epochs);
    t.max_steps = args.max_steps.or(t.max_steps);
    t.batch_size = args.batch_size.unwrap_or(t.batch_size);
    t.input_size = args.input_size.unwrap_or(t.input_size);
    t.lr = args.lr.unwrap_or(t.lr);
    t.workers = args.workers.or(t.workers);
    t.checkpoint_every = args.checkpoint_every.unwrap_or(t.checkpoint_every);
    if args.no_val {
        t.validate = false;
    }
    config.seed = args.seed.unwrap_or(config.seed);
    if let Some(n) = args.synth_images {
        config.data.synth.train_images = n;
    }
    if let Some(n) = args.synth_val_images {
        config.data.synth.val_images = n;
    }
    // The synthetic scenes are rendered at the input size.
    if let (Some(size), None, None) = (args.input_size, &config.data.train, &config.data.pseudo) {
        config.data.synth.size = size;
    }
    config.data.skip_bad |= args.skip_bad;
    config.validate()?;
    Ok(config)
}

fn print_summary(summary: &TrainSummary) {
    println!(
        "trained {} steps in {:.1} s ({} parameters); run folder {}",
        summary.steps,
        summary.seconds,
        summary.parameters,
        summary.run.display()
    );
    if let Some(v) = &summary.validation {
        print!("{}", v.summary());
    }
}

fn train(args: TrainArgs) -> Result<ExitCode> {
    let options = TrainOptions {
        runs: args.runs.clone(),
        resume: args.resume,
        progress: true,
        stop_after: None,
    };
    let config = if args.resume {
        let name = args
            .name
            .clone()
            .context("--resume needs --name of the run to continue")?;
        let mut c = Config::preset(Preset::Quick, &name);
        c.name = name;
        c
    } else {
        train_config(&args)?
    };
    let summary = mustard::train::train(&config, &options)?;
    print_summary(&summary);
    Ok(ExitCode::SUCCESS)
}

fn eval(args: EvalArgs) -> Result<ExitCode> {
    if let (Some(gt), Some(results)) = (&args.gt, &args.results) {
        let gt = CocoGt::from_path(gt)?;
        let dt = CocoDt::from_path(&gt, results)?;
        let iou = match args.iou_type {
            IouArg::Bbox => IouType::Bbox,
            IouArg::Segm => IouType::Segm,
            IouArg::Keypoints => IouType::Keypoints,
        };
        let report = mustard::eval::evaluate(&gt, &dt, &Params::new(iou))?;
        print!("{}", report.summary());
        if let Some(out) = &args.out {
            let text = serde_json::to_string_pretty(&report.to_json())?;
            std::fs::write(out, text).with_context(|| format!("writing {}", out.display()))?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    let Some(checkpoint) = &args.checkpoint else {
        bail!("give --checkpoint (a model to evaluate) or --gt with --results (a COCO results file to score)");
    };
    let (config, _, model) = mustard::checkpoint::load_model(checkpoint)?;
    let data = match (&args.data, &config.data.val, &config.data.train) {
        (Some(d), _, _) => d.clone(),
        (None, Some(v), _) => v.clone(),
        (None, None, None) => mustard::train::synthetic_datasets(&config, &args.runs)?.1,
        (None, None, Some(_)) => bail!("the run has no validation set: pass --data"),
    };
    let ds = Arc::new(mustard::train::open_dataset(
        &data,
        config.data.root.as_deref(),
        false,
    )?);
    let report = mustard::evaluate::evaluate(
        &model,
        ds,
        config.train.input_size,
        config.train.batch_size,
        config.train.workers,
    )?;
    print!("{}", report.summary());
    if let Some(out) = &args.out {
        let text = serde_json::to_string_pretty(&report.to_json())?;
        std::fs::write(out, text).with_context(|| format!("writing {}", out.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}

fn predict(args: PredictArgs) -> Result<ExitCode> {
    let (config, _, model) = mustard::checkpoint::load_model(&args.checkpoint)?;
    let inputs = mustard::predict::collect_inputs(&args.input)?;
    let targets = match &args.gt {
        Some(gt) => Some(Arc::new(Dataset::open(gt, None)?)),
        None => None,
    };
    let options = mustard::predict::PredictOptions {
        save_heatmaps: args.save_heatmaps,
        draw_threshold: args.threshold,
        targets,
    };
    let summary = mustard::predict::predict(&model, &config, &inputs, &args.out, &options)?;
    let t = summary.timing;
    let s = config.train.input_size;
    println!(
        "Speed: {:.1}ms preprocess, {:.1}ms inference, {:.1}ms postprocess per image at shape (1, 3, {s}, {s})",
        t.preprocess, t.inference, t.postprocess
    );
    println!(
        "wrote {} files for {} images to {}",
        summary.files.len(),
        summary.images,
        args.out.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn pseudo_label(args: PseudoArgs) -> Result<ExitCode> {
    let mut options = mustard::pseudo::PseudoOptions::new(args.teachers, args.images, args.out);
    options.root = args.root;
    options.shard = args.shard;
    options.shard_size = args.shard_size;
    options.batch_size = args.batch_size;
    options.input_size = args.input_size;
    options.thresholds = args.thresholds.over(Default::default());
    options.progress = true;
    let s = mustard::pseudo::pseudo_label(&options)?;
    println!(
        "shard {}: wrote {} shard(s), {} already complete, {} redone, in {:.1} s",
        options.shard, s.written, s.skipped, s.redone, s.seconds
    );
    let tasks = mustard::pseudo::store_tasks(&s.store)?;
    if s.complete {
        println!("store {} is complete:", s.store.display());
        println!("{}", s.stats.describe(tasks));
    } else {
        println!(
            "store {} is not complete yet: other workers (--shard) still have shards to write",
            s.store.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn must(args: MustArgs) -> Result<ExitCode> {
    use mustard::must::{MustConfig, MustData, Transfer};
    let preset = match args.preset {
        PresetArg::Quick => Preset::Quick,
        PresetArg::Full => Preset::Full,
    };
    let mut config = MustConfig::preset(preset);
    if !args.labelled.is_empty() {
        let mut labelled = Vec::new();
        for item in &args.labelled {
            let Some((task, file)) = item.split_once('=') else {
                bail!("--labelled {item:?}: expected TASK=FILE, e.g. detection=train.json");
            };
            let task: Task = task
                .parse()
                .map_err(|e| anyhow::anyhow!("--labelled {item:?}: {e}"))?;
            labelled.push((task, PathBuf::from(file)));
        }
        config.tasks = labelled.iter().map(|(t, _)| *t).collect();
        config.data = MustData::User {
            labelled,
            unlabelled: args
                .unlabelled
                .clone()
                .context("--unlabelled is required")?,
            test: args.test.clone().context("--test is required")?,
        };
    }
    if let MustData::Synthetic { splits, size, .. } = &mut config.data {
        splits.per_task = args.per_task.unwrap_or(splits.per_task);
        splits.unlabeled = args.unlabelled_images.unwrap_or(splits.unlabeled);
        splits.test = args.test_images.unwrap_or(splits.test);
        *size = args.size.unwrap_or(*size);
    }
    if let Some(tasks) = &args.tasks {
        config.tasks = tasks.clone();
    }
    let t = &mut config.base.train;
    t.input_size = args.input_size.unwrap_or(t.input_size);
    t.batch_size = args.batch_size.unwrap_or(t.batch_size);
    config.teacher_epochs = args.teacher_epochs.unwrap_or(config.teacher_epochs);
    config.student_epochs = args.student_epochs.unwrap_or(config.student_epochs);
    config.shard_size = args.shard_size.unwrap_or(config.shard_size);
    config.thresholds = args.thresholds.over(config.thresholds.clone());
    match args.transfer.as_deref() {
        Some("none") => config.transfer = None,
        Some(task) => {
            let task: Task = task
                .parse()
                .map_err(|e| anyhow::anyhow!("--transfer {task:?}: {e}"))?;
            let images = config.transfer.as_ref().map_or(64, |t| t.images);
            let epochs = config.transfer.as_ref().map_or(6, |t| t.epochs);
            config.transfer = Some(Transfer {
                task,
                images,
                epochs,
            });
        }
        None => {}
    }
    if let Some(tr) = &mut config.transfer {
        tr.images = args.transfer_images.unwrap_or(tr.images);
        tr.epochs = args.transfer_epochs.unwrap_or(tr.epochs);
    }
    config.base.validate()?;
    let report = mustard::must::must(&config, &args.runs, true)?;
    print!("{}", std::fs::read_to_string(&report.report)?);
    println!("report: {}", report.report.display());
    Ok(ExitCode::SUCCESS)
}

fn bench(args: BenchArgs) -> Result<ExitCode> {
    let (mut config, varmap, model);
    if let Some(path) = &args.checkpoint {
        (config, varmap, model) = mustard::checkpoint::load_model(path)?;
    } else {
        config = match &args.config {
            Some(p) => Config::read(p)?,
            None => Config::preset(
                match args.preset {
                    PresetArg::Quick => Preset::Quick,
                    PresetArg::Full => Preset::Full,
                },
                "bench",
            ),
        };
        if let Some(t) = &args.tasks {
            config.model.tasks = t.clone();
        }
        if let Some(b) = args.backbone {
            config.model.backbone = backbone_preset(b);
        }
        if let Some(d) = &args.device {
            config.device = d.parse()?;
        }
        (varmap, model) = mustard::bench::untrained(&config)?;
    }
    let image = match &args.image {
        Some(p) => mustard::data::imageio::read_rgb(p)?,
        None => {
            synth::render(
                &SynthConfig {
                    size: args.input_size,
                    seed: 0,
                    max_objects: 6,
                },
                0,
            )?
            .image
        }
    };
    let options = mustard::bench::BenchOptions {
        input_size: args.input_size,
        batch: args.batch,
        iterations: args.iterations,
        warmup: args.warmup,
    };
    let device = config.device.device()?;
    let report = mustard::bench::bench(&model, &varmap, &device, &image, &options)?;
    println!(
        "{:?} backbone, {:?} neck, tasks {}",
        config.model.backbone,
        config.model.neck,
        config
            .model
            .tasks
            .iter()
            .map(|t| t.name())
            .collect::<Vec<_>>()
            .join(",")
    );
    println!("{report}");
    Ok(ExitCode::SUCCESS)
}

fn mcn(preset: PresetArg, runs: PathBuf) -> Result<ExitCode> {
    let preset = match preset {
        PresetArg::Quick => Preset::Quick,
        PresetArg::Full => Preset::Full,
    };
    let study = mustard::mcn::study(&mustard::mcn::base_config(preset), &runs, true)?;
    print!("{}", std::fs::read_to_string(&study.report)?);
    println!("report: {}", study.report.display());
    Ok(ExitCode::SUCCESS)
}

/// The error and its causes, leaving out causes the message already quotes.
fn describe(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !out.contains(&text) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
    }
    out
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Freed activations stay in the process for the next ones instead of being faulted in anew.
    mustard::core::memory::retain_freed_memory();
    let result = match cli.command {
        Command::Synth(args) => synth(args),
        Command::Data {
            command: DataCommand::Check { dataset, root },
        } => data_check(dataset, root),
        Command::Train(args) => train(args),
        Command::Eval(args) => eval(args),
        Command::Predict(args) => predict(args),
        Command::PseudoLabel(args) => pseudo_label(args),
        Command::Must(args) => must(args),
        Command::Bench(args) => bench(args),
        Command::Mcn { preset, runs } => mcn(preset, runs),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", describe(&e));
            ExitCode::FAILURE
        }
    }
}
