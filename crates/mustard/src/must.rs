//! MuST, multi-task self-training (Ghiasi et al., <https://arxiv.org/abs/2108.11353>): one
//! specialist teacher per task trained on its own labelled set, the teachers pseudo-label one
//! shared unlabelled set, and a multi-task student (ResNet + FPN, every head) learns from all
//! pseudo-labels at once. The pipeline then evaluates every teacher and the student on a held-out
//! labelled set, fine-tunes the student's backbone on a held-out split against the same network
//! from scratch (transfer), and writes `report.md` and `must.png`.
//!
//! Every stage is resumable: finished runs are reused, unfinished ones resumed, complete label
//! shards skipped. Delete `runs/must` to start over.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use mustard_core::candle_core::DType;
use mustard_core::candle_nn::VarMap;
use mustard_data::coco;
use mustard_data::synth::{self, Splits, SynthConfig};
use mustard_data::{Dataset, Task};
use mustard_pseudo::{Stats, Store, Thresholds};

use crate::checkpoint::{load_model, RunPaths};
use crate::config::{Config, Preset};
use crate::evaluate::{evaluate, evaluate_loss, EvalReport};
use crate::pseudo::{pseudo_label, PseudoOptions};
use crate::train::{classes_from, open_dataset, train, TrainOptions};
use crate::{Error, MultiTaskModel, Result};

/// Where the pipeline's data comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum MustData {
    /// The synthetic default, written under `runs/must/data`.
    Synthetic {
        /// Split sizes.
        splits: Splits,
        /// Image side.
        size: u32,
        /// Seed of the scenes.
        seed: u64,
    },
    /// Your datasets.
    User {
        /// One labelled COCO file per task (its teacher's training set).
        labelled: Vec<(Task, PathBuf)>,
        /// The unlabelled images: a folder or a COCO file.
        unlabelled: PathBuf,
        /// The held-out labelled COCO file every model is evaluated on.
        test: PathBuf,
    },
}

/// The transfer test: fine-tune on a small labelled split of one task.
#[derive(Debug, Clone, PartialEq)]
pub struct Transfer {
    /// The task.
    pub task: Task,
    /// Labelled images of the split (the first ones of that task's labelled set).
    pub images: usize,
    /// Fine-tuning epochs.
    pub epochs: usize,
}

/// The whole pipeline's settings.
#[derive(Debug, Clone)]
pub struct MustConfig {
    /// Backbone, sizes and optimisation shared by every run (tasks and data are set per run).
    pub base: Config,
    /// One teacher per task.
    pub tasks: Vec<Task>,
    /// The data.
    pub data: MustData,
    /// Epochs of each teacher.
    pub teacher_epochs: usize,
    /// Epochs of the student over the pseudo-labelled set.
    pub student_epochs: usize,
    /// Pseudo-label thresholds.
    pub thresholds: Thresholds,
    /// Images per label shard.
    pub shard_size: usize,
    /// The transfer test (None: skipped).
    pub transfer: Option<Transfer>,
}

impl MustConfig {
    /// The settings of `preset` on the synthetic default.
    pub fn preset(preset: Preset) -> Self {
        let mut base = Config::preset(preset, "must");
        base.train.validate = false;
        let quick = preset == Preset::Quick;
        if quick {
            base.train.batch_size = 8;
        }
        MustConfig {
            tasks: Task::ALL.to_vec(),
            data: MustData::Synthetic {
                splits: if quick {
                    Splits {
                        per_task: 192,
                        unlabeled: 384,
                        test: 64,
                    }
                } else {
                    Splits {
                        per_task: 4000,
                        unlabeled: 20000,
                        test: 500,
                    }
                },
                size: base.data.synth.size,
                seed: base.data.synth.seed,
            },
            // Quick: 672 steps of 8 images per teacher, 960 for the student (96 px).
            teacher_epochs: if quick { 28 } else { 40 },
            student_epochs: if quick { 20 } else { 30 },
            // A briefly trained tiny teacher rarely scores a box above SPEC's 0.5: at 0.5 the
            // quick detection teacher (box AP 0.10) kept 11 boxes on 384 images.
            thresholds: if quick {
                Thresholds {
                    detection: 0.3,
                    pose: 0.3,
                    ..Thresholds::default()
                }
            } else {
                Thresholds::default()
            },
            shard_size: if quick { 64 } else { 256 },
            transfer: Some(Transfer {
                task: Task::Segmentation,
                images: if quick { 64 } else { 500 },
                epochs: if quick { 20 } else { 30 },
            }),
            base,
        }
    }
}

/// One row of the report: a task's metric for its teacher and the student.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskResult {
    /// The task.
    pub task: Task,
    /// The teacher's headline metric on the test set.
    pub teacher: f64,
    /// The student's.
    pub student: f64,
    /// The student's at its initialisation (before training).
    pub initial: f64,
    /// The student's training loss on the test set's real labels at its initialisation.
    pub initial_loss: f64,
    /// The same after training.
    pub student_loss: f64,
}

/// The transfer test's outcome.
#[derive(Debug, Clone, PartialEq)]
pub struct TransferResult {
    /// The task.
    pub task: Task,
    /// Metric after fine-tuning from the student's backbone and neck.
    pub from_student: f64,
    /// Metric after the same training from scratch.
    pub from_scratch: f64,
}

/// What the pipeline produced.
#[derive(Debug, Clone)]
pub struct MustReport {
    /// Per task.
    pub tasks: Vec<TaskResult>,
    /// The transfer test.
    pub transfer: Option<TransferResult>,
    /// What the teachers' labels kept.
    pub pseudo: Stats,
    /// Seconds per stage (training runs reused from an earlier call count 0).
    pub timings: Vec<(String, f64)>,
    /// `runs/must/report.md`.
    pub report: PathBuf,
    /// Wall time of this call.
    pub seconds: f64,
}

impl MustReport {
    /// Every number at full precision (`runs/must/results.json`).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "tasks": self.tasks.iter().map(|r| serde_json::json!({
                "task": r.task.name(),
                "metric": metric_name(r.task),
                "teacher": r.teacher,
                "student": r.student,
                "initial": r.initial,
                "initial_loss": r.initial_loss,
                "student_loss": r.student_loss,
            })).collect::<Vec<_>>(),
            "transfer": self.transfer.as_ref().map(|t| serde_json::json!({
                "task": t.task.name(),
                "from_student": t.from_student,
                "from_scratch": t.from_scratch,
            })),
            "pseudo_labels": self.pseudo,
            "timings": self.timings.iter().map(|(s, t)| serde_json::json!({"stage": s, "seconds": t})).collect::<Vec<_>>(),
            "seconds": self.seconds,
        })
    }
}

/// The headline metric's name per task.
pub fn metric_name(task: Task) -> &'static str {
    match task {
        Task::Detection => "box AP",
        Task::Pose => "keypoint AP",
        Task::Segmentation => "mIoU",
        Task::Depth => "δ<1.25",
        Task::Classification => "top-1",
    }
}

fn headline(report: &EvalReport, task: Task) -> f64 {
    report
        .headline()
        .into_iter()
        .find(|(t, _)| *t == task)
        .map_or(0.0, |(_, v)| v)
}

struct Paths {
    root: PathBuf,
}

impl Paths {
    fn labels(&self) -> PathBuf {
        self.root.join("labels")
    }
    fn data(&self) -> PathBuf {
        self.root.join("data")
    }
}

/// Trains `config` under `root` unless its `done` marker exists (resuming a partial run);
/// returns the seconds spent.
fn train_once(config: &Config, root: &Path, progress: bool) -> Result<f64> {
    let run = RunPaths::new(root, &config.name);
    let done = run.dir.join("done");
    if done.is_file() {
        return Ok(0.0);
    }
    let options = TrainOptions {
        runs: root.to_path_buf(),
        resume: run.last().is_file(),
        progress,
        stop_after: None,
    };
    let summary = train(config, &options)?;
    std::fs::write(&done, format!("{}\n", summary.steps)).map_err(|e| Error::file(&done, e))?;
    Ok(summary.seconds)
}

/// The first `n` images of a COCO file (with their annotations) as a new file.
fn subset(from: &Path, n: usize, to: &Path) -> Result<()> {
    let mut file = coco::read(from)?;
    file.images.truncate(n);
    let keep: std::collections::HashSet<u64> = file.images.iter().map(|i| i.id).collect();
    file.annotations.retain(|a| keep.contains(&a.image_id));
    coco::write(&file, to)?;
    Ok(())
}

/// Runs the pipeline under `runs/must`.
pub fn must(config: &MustConfig, runs: &Path, progress: bool) -> Result<MustReport> {
    let started = Instant::now();
    let paths = Paths {
        root: runs.join("must"),
    };
    std::fs::create_dir_all(&paths.root).map_err(|e| Error::file(&paths.root, e))?;
    let say = |msg: String| {
        if progress {
            eprintln!("must: {msg}");
        }
    };
    let mut timings = Vec::new();

    // 1. Data.
    let stage = Instant::now();
    let (labelled, unlabelled, test): (BTreeMap<Task, PathBuf>, PathBuf, PathBuf) = match &config
        .data
    {
        MustData::Synthetic { splits, size, seed } => {
            let dir = paths.data();
            let test = dir.join("test.json");
            if !test.is_file() {
                say(format!(
                        "writing the synthetic splits ({} labelled images per task, {} unlabelled, {} test) to {}",
                        splits.per_task,
                        splits.unlabeled,
                        splits.test,
                        dir.display()
                    ));
                synth::write(
                    &dir,
                    &SynthConfig {
                        size: *size,
                        seed: *seed,
                        max_objects: 6,
                    },
                    0,
                    Some(splits),
                )?;
            }
            (
                Task::ALL
                    .iter()
                    .map(|&t| (t, dir.join(format!("train_{t}.json"))))
                    .collect(),
                dir.join("unlabeled.json"),
                test,
            )
        }
        MustData::User {
            labelled,
            unlabelled,
            test,
        } => (
            labelled.iter().cloned().collect(),
            unlabelled.clone(),
            test.clone(),
        ),
    };
    timings.push(("data".to_string(), stage.elapsed().as_secs_f64()));
    let test_ds = Arc::new(open_dataset(&test, None, false)?);

    // 2. Teachers.
    let mut teachers = Vec::new();
    for &task in &config.tasks {
        let Some(data) = labelled.get(&task) else {
            return Err(Error::config(
                "must",
                format!("no labelled dataset for the {task} teacher (give --labelled {task}=FILE)"),
            ));
        };
        let mut c = config.base.clone();
        c.name = format!("teacher-{task}");
        c.model.tasks = vec![task];
        c.model.relative_depth = false;
        c.data.train = Some(data.clone());
        c.data.val = None;
        c.data.pseudo = None;
        c.train.epochs = config.teacher_epochs;
        say(format!("training the {task} teacher on {}", data.display()));
        let seconds = train_once(&c, &paths.root, progress)?;
        timings.push((format!("teacher {task}"), seconds));
        teachers.push((task, RunPaths::new(&paths.root, &c.name).dir));
    }

    // 3. Pseudo-labels.
    let stage = Instant::now();
    say(format!(
        "pseudo-labelling {} into {}",
        unlabelled.display(),
        paths.labels().display()
    ));
    let mut options = PseudoOptions::new(
        teachers.iter().map(|(_, d)| d.clone()).collect(),
        unlabelled.clone(),
        paths.labels(),
    );
    options.thresholds = config.thresholds.clone();
    options.shard_size = config.shard_size;
    options.batch_size = config.base.train.batch_size;
    options.input_size = Some(config.base.train.input_size);
    options.progress = progress;
    let labels = pseudo_label(&options)?;
    if progress {
        eprintln!("{}", labels.stats.describe(labels_tasks(&config.tasks)));
    }
    timings.push(("pseudo-labels".to_string(), stage.elapsed().as_secs_f64()));

    // 4. The student.
    let mut student = config.base.clone();
    student.name = "student".into();
    student.model.tasks = config.tasks.clone();
    student.model.relative_depth = true;
    student.data.train = None;
    student.data.val = None;
    student.data.pseudo = Some(paths.labels());
    student.train.epochs = config.student_epochs;
    say("training the student on every pseudo-label".into());
    let (initial, initial_loss) = {
        // The student's own initialisation (train() seeds it identically).
        let store = Store::open(&paths.labels())?;
        let mut c = student.clone();
        c.model.classes = classes_from(&store.manifest().categories, &store.manifest().label_names);
        let device = c.device.device()?;
        let varmap = VarMap::new();
        let model = MultiTaskModel::new(
            &c.model,
            crate::init::seeded(&varmap, c.seed, DType::F32, &device),
        )?;
        let loss = evaluate_loss(
            &model,
            test_ds.clone(),
            c.train.input_size,
            c.train.batch_size,
        )?;
        (evaluate_on(&model, &c, &test_ds)?, loss)
    };
    let seconds = train_once(&student, &paths.root, progress)?;
    timings.push(("student".to_string(), seconds));

    // 5. Evaluation on the held-out set.
    let stage = Instant::now();
    say(format!("evaluating every model on {}", test.display()));
    let (student_config, _, student_model) =
        load_model(&RunPaths::new(&paths.root, "student").last())?;
    let student_report = evaluate_on(&student_model, &student_config, &test_ds)?;
    let student_loss = evaluate_loss(
        &student_model,
        test_ds.clone(),
        student_config.train.input_size,
        student_config.train.batch_size,
    )?;
    let loss_of = |losses: &[(Task, f64)], task: Task| {
        losses
            .iter()
            .find(|(t, _)| *t == task)
            .map_or(f64::NAN, |(_, v)| *v)
    };
    let mut rows = Vec::new();
    for (task, dir) in &teachers {
        let (c, _, model) = load_model(&dir.join("weights").join("last.safetensors"))?;
        let report = evaluate_on(&model, &c, &test_ds)?;
        rows.push(TaskResult {
            task: *task,
            teacher: headline(&report, *task),
            student: headline(&student_report, *task),
            initial: headline(&initial, *task),
            initial_loss: loss_of(&initial_loss, *task),
            student_loss: loss_of(&student_loss, *task),
        });
    }
    timings.push(("evaluation".to_string(), stage.elapsed().as_secs_f64()));

    // 6. Transfer.
    let transfer = match &config.transfer {
        Some(t) => match labelled.get(&t.task) {
            Some(source) => {
                let split = paths
                    .data()
                    .join(format!("transfer_{}_{}.json", t.task, t.images));
                if !split.is_file() {
                    subset(source, t.images, &split)?;
                }
                let root = source.parent().map(Path::to_path_buf);
                let mut results = Vec::new();
                for (name, init) in [("transfer-student", true), ("transfer-scratch", false)] {
                    let mut c = student.clone();
                    c.name = name.into();
                    c.model.tasks = vec![t.task];
                    c.model.relative_depth = false;
                    c.model.init_from = init.then(|| RunPaths::new(&paths.root, "student").last());
                    c.data.pseudo = None;
                    c.data.train = Some(split.clone());
                    c.data.root = root.clone();
                    c.train.epochs = t.epochs;
                    say(format!(
                        "transfer: fine-tuning {} on {} labelled {} images",
                        if init {
                            "the student's backbone"
                        } else {
                            "from scratch"
                        },
                        t.images,
                        t.task
                    ));
                    let seconds = train_once(&c, &paths.root, progress)?;
                    timings.push((name.to_string(), seconds));
                    let (c, _, model) = load_model(&RunPaths::new(&paths.root, name).last())?;
                    results.push(headline(&evaluate_on(&model, &c, &test_ds)?, t.task));
                }
                Some(TransferResult {
                    task: t.task,
                    from_student: results[0],
                    from_scratch: results[1],
                })
            }
            None => None,
        },
        None => None,
    };

    let report = MustReport {
        tasks: rows,
        transfer,
        pseudo: labels.stats,
        timings,
        report: paths.root.join("report.md"),
        seconds: started.elapsed().as_secs_f64(),
    };
    let text = render(&report, config);
    mustard_core::io::write_bytes(&report.report, text.as_bytes())?;
    let json =
        serde_json::to_vec_pretty(&report.to_json()).map_err(|e| Error::file(&paths.root, e))?;
    mustard_core::io::write_bytes(&paths.root.join("results.json"), &json)?;
    let chart = crate::draw::bars(
        "MuST on the held-out set: teacher, student, student at initialisation",
        &report
            .tasks
            .iter()
            .map(|r| (r.task.to_string(), vec![r.teacher, r.student, r.initial]))
            .collect::<Vec<_>>(),
        &["teacher", "student", "initialisation"],
        220,
    );
    mustard_data::imageio::write_rgb(&paths.root.join("must.png"), &chart)?;
    Ok(report)
}

fn labels_tasks(tasks: &[Task]) -> mustard_data::TaskSet {
    tasks.iter().copied().collect()
}

fn evaluate_on(model: &MultiTaskModel, config: &Config, test: &Arc<Dataset>) -> Result<EvalReport> {
    evaluate(
        model,
        test.clone(),
        config.train.input_size,
        config.train.batch_size,
        config.train.workers,
    )
}

/// The Markdown report.
pub fn render(r: &MustReport, config: &MustConfig) -> String {
    let mut s = String::new();
    let b = &config.base;
    let _ = writeln!(s, "# MuST: multi-task self-training\n");
    let _ = writeln!(
        s,
        "Teachers: one {:?} model per task, {} epochs on its own labelled set. Student: the same backbone with an FPN neck and every head, {} epochs on the teachers' pseudo-labels of the unlabelled set. {} px, batch {}, AdamW lr {}. Every model is evaluated on the same held-out labelled set.\n",
        b.model.backbone, config.teacher_epochs, config.student_epochs, b.train.input_size, b.train.batch_size, b.train.lr
    );
    let _ = writeln!(
        s,
        "| task | metric | teacher | student | student / teacher | student at initialisation | test loss, initialisation → student |"
    );
    let _ = writeln!(s, "| --- | --- | --- | --- | --- | --- | --- |");
    for row in &r.tasks {
        // A ratio of two numbers that print as 0.000 would only show noise.
        let ratio = if row.teacher >= 0.0005 {
            format!("{:.2}", row.student / row.teacher)
        } else {
            "–".into()
        };
        let _ = writeln!(
            s,
            "| {} | {} | {:.3} | {:.3} | {ratio} | {:.3} | {:.3} → {:.3} |",
            row.task,
            metric_name(row.task),
            row.teacher,
            row.student,
            row.initial,
            row.initial_loss,
            row.student_loss
        );
    }
    let _ = writeln!(
        s,
        "\nThe test loss is each task's training loss against the test set's real labels (the student's depth loss is scale-and-shift invariant)."
    );
    let _ = writeln!(s, "\n## Pseudo-labels\n");
    let tasks = labels_tasks(&config.tasks);
    let t = &config.thresholds;
    let _ = writeln!(
        s,
        "Thresholds: box score ≥ {}, person score ≥ {}, pixel confidence ≥ {} (else ignored), temperature {}.\n",
        t.detection, t.pose, t.segmentation, t.temperature
    );
    for line in r.pseudo.describe(tasks).lines() {
        let _ = writeln!(s, "- {line}");
    }
    let _ = writeln!(s, "\n## Transfer\n");
    match &r.transfer {
        Some(tr) => {
            let _ = writeln!(
                s,
                "Fine-tuning on a held-out split of {} labelled {} images, same budget:\n",
                config.transfer.as_ref().map_or(0, |t| t.images),
                tr.task
            );
            let _ = writeln!(s, "| initialisation | {} |", metric_name(tr.task));
            let _ = writeln!(s, "| --- | --- |");
            let _ = writeln!(s, "| student backbone + neck | {:.3} |", tr.from_student);
            let _ = writeln!(s, "| from scratch | {:.3} |", tr.from_scratch);
            let _ = writeln!(
                s,
                "\nDifference: {:+.3}.",
                tr.from_student - tr.from_scratch
            );
        }
        None => {
            let _ = writeln!(s, "Not run (no labelled set for the transfer task).");
        }
    }
    let _ = writeln!(s, "\n## Timings\n");
    let _ = writeln!(s, "| stage | seconds |");
    let _ = writeln!(s, "| --- | --- |");
    for (stage, seconds) in &r.timings {
        let _ = writeln!(
            s,
            "| {stage} | {} |",
            if *seconds > 0.0 {
                format!("{seconds:.1}")
            } else {
                "reused".into()
            }
        );
    }
    let _ = writeln!(s, "\nWall time of this call: {:.0} s.", r.seconds);
    s
}
