//! The `mustard` command. It parses arguments into the library's types (`args`), calls into
//! the `mustard` crate and reports; it holds no logic of its own.

#![forbid(unsafe_code)]

mod args;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::Parser;
use mustard::core::DeviceSpec;
use mustard::data::synth::{self, Splits, SynthConfig};
use mustard::data::{CheckDepth, Dataset, Task, TaskMap};
use mustard::eval::{CocoDt, IouType, Params};
use mustard::must::{Downstream, MustConfig, MustData, Transfer};
use mustard::train::{TrainOptions, TrainSummary};
use mustard::Preset;

use args::{BenchArgs, Cli, Command, DataCommand, EvalArgs, MustArgs, PredictArgs, PseudoArgs};

/// `println!` on rank 0 only: the processes of a data-parallel run print one report.
macro_rules! outln {
    ($($t:tt)*) => {
        if mustard::core::dist::is_main() {
            println!($($t)*)
        }
    };
}

/// `print!` on rank 0 only.
macro_rules! out {
    ($($t:tt)*) => {
        if mustard::core::dist::is_main() {
            print!($($t)*)
        }
    };
}
use args::{ExportArgs, ExportFormat, SynthArgs, TrainArgs};

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
    let written = if args.downstream {
        synth::write_downstream(&args.out, &config, args.per_task, args.test)
    } else {
        synth::write(&args.out, &config, args.images, splits.as_ref())
    }
    .with_context(|| format!("writing the synthetic dataset to {}", args.out.display()))?;
    let secs = started.elapsed().as_secs_f64();
    outln!(
        "wrote {} images of {}x{} in {secs:.1} s",
        written.images,
        args.size,
        args.size
    );
    for (name, path) in &written.files {
        outln!("  {name:<20} {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

fn data_check(dataset: PathBuf, root: Option<PathBuf>, deep: bool) -> Result<ExitCode> {
    let ds = Dataset::open_path(&dataset, root.as_deref())?;
    let (depth, verb) = if deep {
        (CheckDepth::Decode, "decoding")
    } else {
        (CheckDepth::Headers, "reading headers")
    };
    let bar = mustard::log::progress_bar(
        true,
        ds.file().images.len() as u64,
        "{msg} [{bar:30}] {pos}/{len} images eta {eta}",
    );
    bar.set_message(verb);
    let report = ds.check_with(depth, &|| bar.inc(1));
    bar.finish_and_clear();
    out!("{report}");
    Ok(if report.is_clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn print_summary(summary: &TrainSummary) {
    outln!(
        "trained {} steps in {:.1} s ({} parameters); run folder {}",
        summary.steps,
        summary.seconds,
        summary.parameters,
        summary.run.display()
    );
    if let Some(t) = summary.traffic {
        let (steps, processes) = (
            summary.steps_this_call.max(1) as f64,
            mustard::core::dist::world().size(),
        );
        outln!(
            "{processes} processes; all-reduces of rank 0: {} calls, {:.1} MB, {:.2} s in all ({:.1} calls, {:.2} MB, {:.1} ms a step)",
            t.calls,
            t.bytes as f64 / 1e6,
            t.seconds,
            t.calls as f64 / steps,
            t.bytes as f64 / 1e6 / steps,
            t.seconds * 1e3 / steps
        );
    }
    if !summary.skipped.is_empty() {
        let n = summary.skipped.len();
        outln!(
            "left out {n} training image{} that cannot be read (--skip-bad; named above)",
            if n == 1 { "" } else { "s" }
        );
    }
    if let Some(v) = &summary.validation {
        out!("{}", v.summary());
    }
    if let Some((score, epoch)) = summary.best {
        let stopped = if summary.stopped_early {
            " (stopped early: no improvement since)"
        } else {
            ""
        };
        outln!("best validation score {score:.4} after epoch {epoch}{stopped}: best.safetensors");
    }
}

fn train(args: TrainArgs) -> Result<ExitCode> {
    let options = TrainOptions {
        runs: args.runs.clone(),
        progress: true,
        stop_after: None,
        skip_bad: args.skip_bad,
    };
    let summary = match (&args.name, args.resume) {
        (Some(name), true) => mustard::train::resume(name, &options)?,
        _ => mustard::train::train(&args.config()?, &options)?,
    };
    print_summary(&summary);
    Ok(ExitCode::SUCCESS)
}

fn write_json(out: &Option<PathBuf>, value: &serde_json::Value) -> Result<()> {
    if let Some(out) = out {
        let text = serde_json::to_string_pretty(value)?;
        std::fs::write(out, text).with_context(|| format!("writing {}", out.display()))?;
    }
    Ok(())
}

fn eval(args: EvalArgs) -> Result<ExitCode> {
    if let (Some(gt), Some(results)) = (&args.gt, &args.results) {
        let (gt, dt) = CocoDt::load(gt, results)?;
        let warnings = dt.warnings();
        for w in warnings.iter().take(5) {
            eprintln!("warning: {}: {w}", results.display());
        }
        if warnings.len() > 5 {
            eprintln!(
                "warning: {}: {} more results like these",
                results.display(),
                warnings.len() - 5
            );
        }
        let report = mustard::eval::evaluate(&gt, &dt, &Params::new(args.iou_type))?;
        outln!("{}", report.summary());
        if report.per_category.len() > 1 {
            out!("{}", mustard::evaluate::per_category_table(&report));
        }
        write_json(&args.out, &report.to_json())?;
        if let (Some(dir), false) = (&args.plots, args.no_plots) {
            let task = if args.iou_type == IouType::Keypoints {
                Task::Pose
            } else {
                Task::Detection
            };
            let mut scored = mustard::evaluate::EvalReport {
                images: gt.images().len(),
                ..Default::default()
            };
            scored
                .metrics
                .insert(task, mustard::evaluate::TaskMetrics::Coco(Box::new(report)));
            print_plots(&scored.write_plots(dir)?);
        }
        return Ok(ExitCode::SUCCESS);
    }
    let Some(checkpoint) = &args.checkpoint else {
        bail!("give --checkpoint (a model to evaluate) or --gt with --results (a COCO results file to score)");
    };
    let (config, _, model) = mustard::checkpoint::load_model_on(checkpoint, args.device)?;
    let ds = match &args.data {
        Some(d) => Arc::new(mustard::train::open_dataset(
            d,
            args.root.as_deref().or(config.data.root.as_deref()),
            args.skip_bad,
        )?),
        None => mustard::train::validation_set(&config, &args.runs)?
            .context("the run has no validation set: pass --data")?,
    };
    let t = &config.train;
    let resolution = if args.network_resolution {
        mustard::evaluate::Resolution::Network
    } else {
        mustard::evaluate::Resolution::Original
    };
    // Under a launcher every process runs its share of the batches; rank 0 scores and writes.
    let report = mustard::evaluate::evaluate_shared(
        &model,
        ds,
        t.input_size,
        t.batch_size,
        t.workers,
        resolution,
        args.skip_bad,
    )?;
    let Some(report) = report else {
        return Ok(ExitCode::SUCCESS);
    };
    out!("{}", report.summary());
    write_json(&args.out, &report.to_json())?;
    if !args.no_plots {
        let dir = args
            .plots
            .clone()
            .unwrap_or_else(|| mustard::checkpoint::run_folder(checkpoint).join("eval"));
        print_plots(&report.write_plots(&dir)?);
    }
    Ok(ExitCode::SUCCESS)
}

fn data_labels(store: PathBuf, truth: PathBuf, root: Option<PathBuf>) -> Result<ExitCode> {
    let truth = mustard::train::open_dataset(&truth, root.as_deref(), false)?;
    let quality = mustard::label_quality::label_quality(&store, &truth)?;
    out!("{}", quality.summary());
    Ok(ExitCode::SUCCESS)
}

fn print_plots(files: &[PathBuf]) {
    for f in files {
        outln!("wrote {}", f.display());
    }
}

fn export(args: ExportArgs) -> Result<ExitCode> {
    let ExportFormat::Onnx = args.format;
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| mustard::checkpoint::run_folder(&args.checkpoint).join("model.onnx"));
    let options = mustard::export::ExportOptions {
        input_size: args.input_size,
        dynamic_batch: args.dynamic_batch,
        opset: args.opset,
        reference: args.reference,
    };
    let e = mustard::export::export_onnx(&args.checkpoint, &out, &options)?;
    let dims = |shape: &[Option<usize>]| {
        shape
            .iter()
            .map(|d| d.map_or("batch".to_string(), |d| d.to_string()))
            .collect::<Vec<_>>()
            .join("x")
    };
    let batch = if args.dynamic_batch { "batch" } else { "1" };
    outln!(
        "wrote {} ({:.1} MiB, {} nodes, opset {}): input {} {batch}x3x{s}x{s}",
        e.path.display(),
        e.bytes as f64 / (1024.0 * 1024.0),
        e.nodes,
        args.opset,
        mustard::export::INPUT,
        s = e.input_size,
    );
    for (name, shape) in &e.outputs {
        outln!("  output {name} {}", dims(shape));
    }
    if let Some(r) = &e.reference {
        outln!("wrote {} (inputs and mustard's outputs)", r.display());
    }
    Ok(ExitCode::SUCCESS)
}

fn predict(args: PredictArgs) -> Result<ExitCode> {
    let (config, _, model) = mustard::checkpoint::load_model_on(&args.checkpoint, args.device)?;
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
    if let Some(line) = inputs.left_out_line(&args.input) {
        eprintln!("{line}");
    }
    let summary = mustard::predict::predict(&model, &config, &inputs.images, &args.out, &options)?;
    let t = summary.timing;
    let s = config.train.input_size;
    outln!(
        "Speed: {:.1}ms preprocess, {:.1}ms inference, {:.1}ms postprocess per image at shape (1, 3, {s}, {s})",
        t.preprocess, t.inference, t.postprocess
    );
    outln!(
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
    options.device = args.device;
    options.skip_bad = args.skip_bad;
    let s = mustard::pseudo::pseudo_label(&options)?;
    if !s.left_out.is_empty() {
        let n = s.left_out.len();
        outln!(
            "left out {n} image{} that cannot be read (--skip-bad; stored with no task labelled, named above)",
            if n == 1 { "" } else { "s" }
        );
    }
    outln!(
        "shard {}: wrote {} shard(s), {} already complete, {} redone, in {:.1} s",
        options.shard,
        s.written,
        s.skipped,
        s.redone,
        s.seconds
    );
    let tasks = mustard::pseudo::store_tasks(&s.store)?;
    if s.complete {
        outln!("store {} is complete:", s.store.display());
        outln!("{}", s.stats.describe(tasks));
    } else {
        outln!(
            "store {} is not complete yet: other workers (--shard) still have shards to write",
            s.store.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `--labelled TASK=FILE` items: the tasks in the order given, and each task's file.
/// `--labelled` (or `--teacher`, named by `flag`) values: TASK=PATH, one per task.
fn per_task(flag: &str, items: &[String]) -> Result<(Vec<Task>, TaskMap<PathBuf>)> {
    let (mut tasks, mut map) = (Vec::new(), TaskMap::new());
    for item in items {
        let Some((task, file)) = item.split_once('=') else {
            bail!("--{flag} {item:?}: expected TASK=PATH, e.g. detection=train.json");
        };
        let task: Task = task
            .parse()
            .map_err(|e| anyhow::anyhow!("--{flag} {item:?}: {e}"))?;
        if map.insert(task, PathBuf::from(file)).is_some() {
            bail!("--{flag} {item:?}: the {task} teacher already has one; give one per task");
        }
        tasks.push(task);
    }
    Ok((tasks, map))
}

/// `--downstream TASK=TRAIN,TEST` values.
fn downstream(items: &[String]) -> Result<TaskMap<Downstream>> {
    let mut map = TaskMap::new();
    for item in items {
        let parsed = item.split_once('=').and_then(|(task, files)| {
            let (train, test) = files.split_once(',')?;
            Some((task, train, test))
        });
        let Some((task, train, test)) = parsed else {
            bail!("--downstream {item:?}: expected TASK=TRAIN,TEST, e.g. segmentation=ade/train.json,ade/val.json");
        };
        let task: Task = task
            .parse()
            .map_err(|e| anyhow::anyhow!("--downstream {item:?}: {e}"))?;
        let files = Downstream {
            train: train.into(),
            test: test.into(),
        };
        if map.insert(task, files).is_some() {
            bail!("--downstream {item:?}: {task} already has downstream files");
        }
    }
    Ok(map)
}

/// `--test` values: FILE for every task of `tasks` not named otherwise, TASK=FILE for one.
fn test_sets(items: &[String], tasks: &[Task]) -> Result<TaskMap<PathBuf>> {
    let mut sets = TaskMap::new();
    let mut every = None;
    for item in items {
        match item.split_once('=') {
            Some((task, file)) if task.parse::<Task>().is_ok() => {
                let task: Task = task.parse().expect("checked");
                if sets.insert(task, PathBuf::from(file)).is_some() {
                    bail!("--test {item:?}: {task} already has a test set");
                }
            }
            _ if every.is_some() => {
                bail!("--test {item:?}: a second test file for every task; name its task, e.g. --test detection={item}")
            }
            _ => every = Some(PathBuf::from(item)),
        }
    }
    for &task in tasks {
        if !sets.contains(task) {
            if let Some(file) = &every {
                sets.insert(task, file.clone());
            }
        }
    }
    Ok(sets)
}

/// The pipeline's config: the preset with every flag laid over it.
fn must_config(args: &MustArgs) -> Result<MustConfig> {
    let mut config = match &args.config {
        Some(path) => MustConfig::read(path)?,
        None => MustConfig::preset(args.preset),
    };
    if !args.labelled.is_empty() || !args.teacher.is_empty() {
        let (mut tasks, labelled) = per_task("labelled", &args.labelled)?;
        let (given, teachers) = per_task("teacher", &args.teacher)?;
        if let Some(t) = given.iter().find(|t| labelled.contains(**t)) {
            bail!("--teacher {t}=…: the {t} teacher has a labelled set too; give --labelled or --teacher for a task, not both");
        }
        tasks.extend(given);
        config.tasks = tasks.clone();
        config.data = MustData::User {
            labelled,
            teachers,
            unlabelled: args
                .unlabelled
                .clone()
                .context("--unlabelled is required")?,
            test: test_sets(&args.test, &tasks)?,
            downstream: downstream(&args.downstream)?,
        };
        if let Some(t) = &mut config.transfer {
            // Your downstream tasks, unless --transfer names them.
            t.tasks = match &config.data {
                MustData::User { downstream, .. } => downstream.iter().map(|(t, _)| t).collect(),
                MustData::Synthetic { .. } => t.tasks.clone(),
            };
            if t.tasks.is_empty() {
                config.transfer = None;
            }
        }
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
    args.optim.apply_to(&mut config.base);
    config.teacher_epochs = args.teacher_epochs.unwrap_or(config.teacher_epochs);
    config.student_epochs = args.student_epochs.unwrap_or(config.student_epochs);
    for item in &args.student_loss_weight {
        let parsed = item
            .split_once('=')
            .and_then(|(task, w)| Some((task, w.parse::<f64>().ok()?)));
        let Some((task, weight)) = parsed else {
            bail!("--student-loss-weight {item:?}: expected TASK=WEIGHT, e.g. detection=3");
        };
        let task: Task = task
            .parse()
            .map_err(|e| anyhow::anyhow!("--student-loss-weight {item:?}: {e}"))?;
        config
            .student
            .loss_weights
            .get_or_insert_with(mustard::config::default_loss_weights)
            .insert(task, weight);
    }
    config.shard_size = args.shard_size.unwrap_or(config.shard_size);
    config.thresholds = args.thresholds.over(config.thresholds.clone());
    match args.transfer.as_deref() {
        Some("none") => config.transfer = None,
        Some(tasks) => {
            let tasks = tasks
                .split(',')
                .map(|t| {
                    t.parse::<Task>()
                        .map_err(|e| anyhow::anyhow!("--transfer {tasks:?}: {e}"))
                })
                .collect::<Result<Vec<Task>>>()?;
            let preset = config.transfer.take();
            config.transfer = Some(Transfer {
                tasks,
                images: preset.as_ref().map_or(64, |t| t.images),
                epochs: preset.as_ref().map_or(6, |t| t.epochs),
                from_teachers: preset.as_ref().is_some_and(|t| t.from_teachers),
            });
        }
        None => {}
    }
    if let Some(tr) = &mut config.transfer {
        tr.images = args.transfer_images.unwrap_or(tr.images);
        tr.epochs = args.transfer_epochs.unwrap_or(tr.epochs);
        tr.from_teachers |= args.transfer_from_teachers;
    }
    config.seeds = args.seeds.unwrap_or(config.seeds);
    config.base.data.skip_bad |= args.skip_bad;
    config.validate()?;
    Ok(config)
}

fn must(args: MustArgs) -> Result<ExitCode> {
    let config = must_config(&args)?;
    let report = mustard::must::must(&config, &args.runs, true)?;
    out!("{}", std::fs::read_to_string(&report.report)?);
    outln!("report: {}", report.report.display());
    Ok(ExitCode::SUCCESS)
}

fn bench(args: BenchArgs) -> Result<ExitCode> {
    let (config, varmap, model) = match &args.checkpoint {
        Some(path) => mustard::checkpoint::load_model(path)?,
        None => {
            let config = args.config()?;
            config.numerics.apply();
            let (varmap, model) = mustard::bench::untrained(&config)?;
            (config, varmap, model)
        }
    };
    let image = match &args.image {
        Some(p) => mustard::data::imageio::read_rgb(p)?,
        None => {
            let scene = SynthConfig {
                size: args.input_size,
                seed: 0,
                max_objects: 6,
            };
            synth::render(&scene, 0)?.image
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
    let tasks: Vec<&str> = config.model.tasks.iter().map(|t| t.name()).collect();
    outln!(
        "{} backbone, {}, tasks {}",
        config.model.backbone,
        config.model.neck,
        tasks.join(",")
    );
    outln!("{report}");
    Ok(ExitCode::SUCCESS)
}

fn mcn(
    preset: Preset,
    runs: PathBuf,
    seeds: Option<usize>,
    pairs: bool,
    device: Option<DeviceSpec>,
) -> Result<ExitCode> {
    let mut config = mustard::mcn::McnConfig::preset(preset);
    config.base.device = device.unwrap_or(config.base.device);
    config.seeds = seeds.unwrap_or(config.seeds);
    if pairs {
        config.variants = mustard::mcn::every_combination();
    }
    let study = mustard::mcn::study(&config, &runs, true)?;
    out!("{}", std::fs::read_to_string(&study.report)?);
    outln!("report: {}", study.report.display());
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The processes a launcher (`mpirun`, `srun`) started train together; MPI ends when
    // `launch` is dropped, at the end of main.
    let launch = match mustard::core::dist::init() {
        Ok(launch) => launch,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Freed activations stay in the process for the next ones instead of being faulted in anew.
    mustard::core::memory::retain_freed_memory();
    let result = match cli.command {
        Command::Synth(args) => synth(args),
        Command::Data {
            command:
                DataCommand::Check {
                    dataset,
                    root,
                    deep,
                },
        } => data_check(dataset, root, deep),
        Command::Data {
            command: DataCommand::Labels { store, truth, root },
        } => data_labels(store, truth, root),
        Command::Train(args) => train(args),
        Command::Eval(args) => eval(args),
        Command::Predict(args) => predict(args),
        Command::PseudoLabel(args) => pseudo_label(args),
        Command::Must(args) => must(args),
        Command::Bench(args) => bench(args),
        Command::Export(args) => export(args),
        Command::Mcn {
            preset,
            runs,
            seeds,
            pairs,
            device,
        } => mcn(preset, runs, seeds, pairs, device),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            // The error, then each cause after a `: ` (no message repeats its cause).
            eprintln!("error: {e:#}");
            // The other processes would wait for this one forever: end them all.
            let world = launch.world();
            if world.size() > 1 {
                world.abort(1);
            }
            ExitCode::FAILURE
        }
    }
}
