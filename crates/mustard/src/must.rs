//! MuST, multi-task self-training (Ghiasi et al., <https://arxiv.org/abs/2108.11353>): one
//! specialist teacher per task trained on its own labelled set, the teachers pseudo-label one
//! shared unlabelled set, and a multi-task student (ResNet + FPN, every head) learns from all
//! pseudo-labels at once. The pipeline then evaluates every teacher and the student on a held-out
//! labelled set, fine-tunes the student's backbone on a held-out split against the same network
//! from scratch (transfer), and writes `report.md` and `must.png`.
//!
//! Every stage is resumable: finished runs are reused, unfinished ones resumed, complete label
//! shards skipped. Delete `runs/must` to start over.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use mustard_data::coco;
use mustard_data::synth::{self, Splits, SynthConfig};
use mustard_data::{Dataset, Task, TaskMap};
use mustard_pseudo::{Stats, Store, Thresholds};
use serde::{Deserialize, Serialize};

use crate::checkpoint::{load_model, RunPaths};
use crate::config::{read_toml, write_toml, Config};
use crate::datasets::{classes_from, open_dataset};
use crate::error::Problems;
use crate::evaluate::{evaluate, evaluate_loss, EvalReport};
use crate::pseudo::{pseudo_label, PseudoOptions, PseudoSummary};
use crate::train::train_unless_done;
use crate::trainer::initial_model;
use crate::{Error, MultiTaskModel, Result};

/// Where the pipeline's data comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
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
        /// The held-out labelled COCO file every model is evaluated on.
        test: PathBuf,
        /// The unlabelled images: a folder or a COCO file.
        unlabelled: PathBuf,
        /// One labelled COCO file per task (its teacher's training set).
        labelled: TaskMap<PathBuf>,
    },
}

/// The transfer test: fine-tune on a small labelled split of one task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Transfer {
    /// The task.
    pub task: Task,
    /// Labelled images of the split (the first ones of that task's labelled set).
    pub images: usize,
    /// Fine-tuning epochs.
    pub epochs: usize,
}

/// The whole pipeline's settings, saved as `runs/must/config.toml` (presets in `presets.rs`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MustConfig {
    /// One teacher per task.
    pub tasks: Vec<Task>,
    /// Epochs of each teacher.
    pub teacher_epochs: usize,
    /// Epochs of the student over the pseudo-labelled set.
    pub student_epochs: usize,
    /// Images per label shard.
    pub shard_size: usize,
    /// The data.
    pub data: MustData,
    /// Pseudo-label thresholds.
    pub thresholds: Thresholds,
    /// The transfer test (None: skipped).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfer: Option<Transfer>,
    /// Backbone, sizes and optimisation shared by every run (tasks and data are set per run).
    pub base: Config,
}

impl MustConfig {
    /// Checks every setting, reporting all problems at once.
    pub fn validate(&self) -> Result<()> {
        let mut p = Problems::default();
        p.extend(self.base.validate())?;
        p.check(self.tasks.is_empty(), "must.tasks", || {
            "at least one teacher is needed".into()
        });
        p.check(
            self.teacher_epochs == 0 || self.student_epochs == 0 || self.shard_size == 0,
            "must",
            || "teacher_epochs, student_epochs and shard_size must be at least 1".into(),
        );
        if let Err(e) = self.thresholds.validate() {
            p.push("must.thresholds", e.to_string());
        }
        if let MustData::User { labelled, .. } = &self.data {
            for task in &self.tasks {
                p.check(!labelled.contains(*task), "must.data.labelled", || {
                    format!(
                        "no labelled dataset for the {task} teacher (give --labelled {task}=FILE)"
                    )
                });
            }
        }
        if let Some(t) = &self.transfer {
            p.check(t.images == 0 || t.epochs == 0, "must.transfer", || {
                "images and epochs must be at least 1".into()
            });
        }
        p.finish()
    }

    /// Reads a saved pipeline config.
    pub fn read(path: &Path) -> Result<Self> {
        let config: MustConfig = read_toml(path)?;
        config.validate()?;
        Ok(config)
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

/// The folders and files of the pipeline under `runs/must`.
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
    fn last(&self, run: &str) -> PathBuf {
        RunPaths::new(&self.root, run).last()
    }
}

/// The pipeline's data, resolved to files.
struct Files {
    labelled: TaskMap<PathBuf>,
    unlabelled: PathBuf,
    test: PathBuf,
}

/// A run of the pipeline: its settings, folders, held-out set and stage timings.
struct Pipeline<'a> {
    config: &'a MustConfig,
    paths: Paths,
    progress: bool,
    timings: Vec<(String, f64)>,
}

/// Runs the pipeline under `runs/must`, saving its config as `runs/must/config.toml`.
pub fn must(config: &MustConfig, runs: &Path, progress: bool) -> Result<MustReport> {
    let started = Instant::now();
    config.validate()?;
    config.base.numerics.apply();
    let mut p = Pipeline {
        config,
        paths: Paths {
            root: runs.join("must"),
        },
        progress,
        timings: Vec::new(),
    };
    std::fs::create_dir_all(&p.paths.root).map_err(|e| Error::io(&p.paths.root, e))?;
    write_toml(config, &p.paths.root.join("config.toml"))?;
    let stage = Instant::now();
    let files = p.data()?;
    p.timings
        .push(("data".to_string(), stage.elapsed().as_secs_f64()));
    let test = Arc::new(open_dataset(&files.test, None, false)?);
    check_labelled(&config.tasks, &files.labelled)?;
    let teachers = p.teachers(&files)?;
    let labels = p.pseudo_labels(&files, &teachers)?;
    let student = p.student_config();
    let initial = p.initial_student(&student, &test)?;
    let seconds = train_unless_done(&student, &p.paths.root, progress)?;
    p.timings.push(("student".to_string(), seconds));
    let rows = p.evaluate_all(&files, &teachers, &initial, &test)?;
    let transfer = p.transfer(&files, &student, &test)?;
    let report = MustReport {
        tasks: rows,
        transfer,
        pseudo: labels.stats,
        timings: p.timings,
        report: p.paths.root.join("report.md"),
        seconds: started.elapsed().as_secs_f64(),
    };
    write_report(&report, config, &p.paths.root)?;
    Ok(report)
}

impl Pipeline<'_> {
    fn say(&self, msg: impl FnOnce() -> String) {
        if self.progress {
            eprintln!("must: {}", msg());
        }
    }

    /// Step 1: the labelled, unlabelled and test files (the synthetic splits are written once).
    fn data(&self) -> Result<Files> {
        let (splits, size, seed) = match &self.config.data {
            MustData::User {
                labelled,
                unlabelled,
                test,
            } => {
                return Ok(Files {
                    labelled: labelled.clone(),
                    unlabelled: unlabelled.clone(),
                    test: test.clone(),
                })
            }
            MustData::Synthetic { splits, size, seed } => (splits, *size, *seed),
        };
        let dir = self.paths.data();
        let test = dir.join("test.json");
        if !test.is_file() {
            self.say(|| format!(
                "writing the synthetic splits ({} labelled images per task, {} unlabelled, {} test) to {}",
                splits.per_task, splits.unlabeled, splits.test, dir.display()
            ));
            let synth = SynthConfig {
                size,
                seed,
                max_objects: 6,
            };
            synth::write(&dir, &synth, 0, Some(splits))?;
        }
        Ok(Files {
            labelled: Task::ALL
                .iter()
                .map(|&t| (t, dir.join(format!("train_{t}.json"))))
                .collect(),
            unlabelled: dir.join("unlabeled.json"),
            test,
        })
    }

    /// Step 2: one teacher per task on its own labelled set; returns each teacher's run folder.
    fn teachers(&mut self, files: &Files) -> Result<Vec<(Task, PathBuf)>> {
        let mut teachers = Vec::new();
        for &task in &self.config.tasks {
            let data = files.labelled.get(task).ok_or_else(|| {
                Error::config(
                    "must",
                    format!(
                        "no labelled dataset for the {task} teacher (give --labelled {task}=FILE)"
                    ),
                )
            })?;
            let mut c = self.config.base.clone();
            c.name = format!("teacher-{task}");
            c.model.tasks = vec![task];
            c.model.relative_depth = false;
            c.data.train = Some(data.clone());
            c.data.val = None;
            c.data.pseudo = None;
            c.train.epochs = self.config.teacher_epochs;
            self.say(|| format!("training the {task} teacher on {}", data.display()));
            let seconds = train_unless_done(&c, &self.paths.root, self.progress)?;
            self.timings.push((format!("teacher {task}"), seconds));
            teachers.push((task, RunPaths::new(&self.paths.root, &c.name).dir));
        }
        Ok(teachers)
    }

    /// Step 3: the teachers label the unlabelled set into `runs/must/labels`.
    fn pseudo_labels(
        &mut self,
        files: &Files,
        teachers: &[(Task, PathBuf)],
    ) -> Result<PseudoSummary> {
        let stage = Instant::now();
        self.say(|| {
            format!(
                "pseudo-labelling {} into {}",
                files.unlabelled.display(),
                self.paths.labels().display()
            )
        });
        let mut options = PseudoOptions::new(
            teachers.iter().map(|(_, d)| d.clone()).collect(),
            files.unlabelled.clone(),
            self.paths.labels(),
        );
        options.thresholds = self.config.thresholds.clone();
        options.shard_size = self.config.shard_size;
        options.batch_size = self.config.base.train.batch_size;
        options.input_size = Some(self.config.base.train.input_size);
        options.progress = self.progress;
        let labels = pseudo_label(&options)?;
        if self.progress {
            eprintln!(
                "{}",
                labels.stats.describe(labels_tasks(&self.config.tasks))
            );
        }
        self.timings
            .push(("pseudo-labels".to_string(), stage.elapsed().as_secs_f64()));
        Ok(labels)
    }

    /// Step 4: the student, every head, on the label store.
    fn student_config(&self) -> Config {
        let mut student = self.config.base.clone();
        student.name = "student".into();
        student.model.tasks = self.config.tasks.clone();
        student.model.relative_depth = true;
        student.data.train = None;
        student.data.val = None;
        student.data.pseudo = Some(self.paths.labels());
        student.train.epochs = self.config.student_epochs;
        student
    }

    /// The student at its initialisation (the model training starts from) on the test set:
    /// metrics and per-task loss.
    fn initial_student(&self, student: &Config, test: &Arc<Dataset>) -> Result<Initial> {
        self.say(|| "training the student on every pseudo-label".into());
        let store = Store::open(&self.paths.labels())?;
        let mut c = student.clone();
        let m = store.manifest();
        c.model.classes = classes_from(&m.categories, &m.label_names);
        let (_, model) = initial_model(&c)?;
        let t = &c.train;
        let loss = evaluate_loss(&model, test.clone(), t.input_size, t.batch_size)?;
        Ok(Initial {
            report: evaluate_on(&model, &c, test)?,
            loss,
        })
    }

    /// Step 5: teachers and student on the held-out set.
    fn evaluate_all(
        &mut self,
        files: &Files,
        teachers: &[(Task, PathBuf)],
        initial: &Initial,
        test: &Arc<Dataset>,
    ) -> Result<Vec<TaskResult>> {
        let stage = Instant::now();
        self.say(|| format!("evaluating every model on {}", files.test.display()));
        let (config, _, model) = load_model(&self.paths.last("student"))?;
        let student = evaluate_on(&model, &config, test)?;
        let t = &config.train;
        let student_loss = evaluate_loss(&model, test.clone(), t.input_size, t.batch_size)?;
        let loss_of = |losses: &TaskMap<f64>, task| losses.get(task).copied().unwrap_or(f64::NAN);
        let mut rows = Vec::new();
        for (task, dir) in teachers {
            let (c, _, model) = load_model(&dir.join("weights").join("last.safetensors"))?;
            let report = evaluate_on(&model, &c, test)?;
            rows.push(TaskResult {
                task: *task,
                teacher: report.headline_of(*task),
                student: student.headline_of(*task),
                initial: initial.report.headline_of(*task),
                initial_loss: loss_of(&initial.loss, *task),
                student_loss: loss_of(&student_loss, *task),
            });
        }
        self.timings
            .push(("evaluation".to_string(), stage.elapsed().as_secs_f64()));
        Ok(rows)
    }

    /// Step 6, the transfer test: fine-tuning on a held-out split from the student's backbone
    /// and neck, against the same training from scratch.
    fn transfer(
        &mut self,
        files: &Files,
        student: &Config,
        test: &Arc<Dataset>,
    ) -> Result<Option<TransferResult>> {
        let Some(t) = &self.config.transfer else {
            return Ok(None);
        };
        let Some(source) = files.labelled.get(t.task) else {
            return Ok(None);
        };
        let split = self
            .paths
            .data()
            .join(format!("transfer_{}_{}.json", t.task, t.images));
        if !split.is_file() {
            subset(source, t.images, &split)?;
        }
        let mut results = Vec::new();
        for (name, init) in [("transfer-student", true), ("transfer-scratch", false)] {
            let mut c = student.clone();
            c.name = name.into();
            c.model.tasks = vec![t.task];
            c.model.relative_depth = false;
            c.model.init_from = init.then(|| self.paths.last("student"));
            c.data.pseudo = None;
            c.data.train = Some(split.clone());
            c.data.root = source.parent().map(Path::to_path_buf);
            c.train.epochs = t.epochs;
            self.say(|| {
                let from = if init {
                    "the student's backbone"
                } else {
                    "from scratch"
                };
                format!(
                    "transfer: fine-tuning {from} on {} labelled {} images",
                    t.images, t.task
                )
            });
            let seconds = train_unless_done(&c, &self.paths.root, self.progress)?;
            self.timings.push((name.to_string(), seconds));
            let (c, _, model) = load_model(&self.paths.last(name))?;
            results.push(evaluate_on(&model, &c, test)?.headline_of(t.task));
        }
        Ok(Some(TransferResult {
            task: t.task,
            from_student: results[0],
            from_scratch: results[1],
        }))
    }
}

/// Checks, before anything is trained, that each teacher's labelled set can train its task and
/// that the teachers' label spaces fit together, naming every file that does not.
///
/// Until each teacher keeps its own label space, the detection, pose and segmentation teachers
/// must share one category list: the student's heads and the label store use one.
pub fn check_labelled(tasks: &[Task], labelled: &TaskMap<PathBuf>) -> Result<()> {
    let mut p = Problems::default();
    let mut spaces: Vec<(Task, &Path, Vec<String>)> = Vec::new();
    for &task in tasks {
        let Some(path) = labelled.get(task) else {
            continue;
        };
        let what = format!("must.data.labelled.{task}");
        if path.is_dir() {
            p.check(task != Task::Classification, &what, || {
                format!(
                    "{} is a folder; only classification reads class folders",
                    path.display()
                )
            });
            continue;
        }
        let file = match coco::read(path) {
            Ok(file) => file,
            Err(e) => {
                p.push(what, mustard_core::error_chain(&e));
                continue;
            }
        };
        let lacks = |thing: &str| format!("{} has no {thing}", path.display());
        match task {
            Task::Detection => p.check(file.categories.is_empty(), &what, || lacks("categories")),
            Task::Pose => p.check(
                coco::person_category(&file.categories).is_none(),
                &what,
                || lacks("category with keypoints"),
            ),
            Task::Classification => p.check(file.label_names.is_empty(), &what, || {
                lacks("`label_names` (image-level classes)")
            }),
            Task::Segmentation | Task::Depth => {}
        }
        if matches!(task, Task::Detection | Task::Pose | Task::Segmentation) {
            let names = file.categories.iter().map(|c| c.name.clone()).collect();
            spaces.push((task, path, names));
        }
    }
    if let Some((first, first_path, first_names)) = spaces.first() {
        for (task, path, names) in &spaces[1..] {
            p.check(names != first_names, "must.data.labelled", || {
                format!(
                    "the {first} teacher's {} has categories {first_names:?} but the {task} teacher's {} has {names:?}; the teachers must share one category list",
                    first_path.display(),
                    path.display()
                )
            });
        }
    }
    p.finish()
}

/// The student at its initialisation.
struct Initial {
    report: EvalReport,
    loss: TaskMap<f64>,
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

/// `report.md`, `results.json` and `must.png`.
fn write_report(report: &MustReport, config: &MustConfig, root: &Path) -> Result<()> {
    let text = render(report, config);
    mustard_core::io::write_bytes(&report.report, text.as_bytes())?;
    let json = serde_json::to_vec_pretty(&report.to_json()).expect("JSON values serialise");
    mustard_core::io::write_bytes(&root.join("results.json"), &json)?;
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
    mustard_data::imageio::write_rgb(&root.join("must.png"), &chart)?;
    Ok(())
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
    render_pseudo(&mut s, r, config);
    render_transfer(&mut s, r, config);
    render_timings(&mut s, r);
    let _ = writeln!(s, "\nWall time of this call: {:.0} s.", r.seconds);
    s
}

fn render_pseudo(s: &mut String, r: &MustReport, config: &MustConfig) {
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
}

fn render_transfer(s: &mut String, r: &MustReport, config: &MustConfig) {
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
}

fn render_timings(s: &mut String, r: &MustReport) {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pipeline_config_round_trips_through_toml_and_names_every_problem() {
        let dir = std::env::temp_dir().join(format!("mustard-must-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("config.toml");
        let quick = MustConfig::quick();
        write_toml(&quick, &path).unwrap();
        assert_eq!(MustConfig::read(&path).unwrap(), quick);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("[data]\nkind = \"synthetic\""), "{text}");
        let mut user = MustConfig::quick();
        user.tasks = vec![Task::Detection, Task::Depth];
        user.data = MustData::User {
            test: "test.json".into(),
            unlabelled: "photos".into(),
            labelled: [(Task::Detection, PathBuf::from("det.json"))]
                .into_iter()
                .collect(),
        };
        write_toml(&user, &path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.contains("[data.labelled]\ndetection = \"det.json\""),
            "{text}"
        );
        // Read back, it is refused for the teacher without data, with every other problem.
        user.teacher_epochs = 0;
        write_toml(&user, &path).unwrap();
        assert_eq!(
            MustConfig::read(&path).unwrap_err().to_string(),
            "must: teacher_epochs, student_epochs and shard_size must be at least 1; \
             must.data.labelled: no labelled dataset for the depth teacher (give --labelled depth=FILE)"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
