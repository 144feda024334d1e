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
use mustard_pseudo::{PseudoSource, Stats, Thresholds};
use serde::{Deserialize, Serialize};

use crate::baseline::constant_baseline_with;
use crate::checkpoint::{load_model, RunPaths};
use crate::config::{read_toml, write_toml, Config};
use crate::datasets::{classes_of, open_dataset};
use crate::error::Problems;
use crate::evaluate::{evaluate_loss_shared, evaluate_shared, EvalReport, Resolution};
use crate::pseudo::{pseudo_label, PseudoOptions, PseudoSummary};
use crate::stats::{claim_above, MeanStd};
use crate::train::train_unless_done;
use crate::trainer::initial_model;
use crate::{Error, MultiTaskModel, Result};

/// Where the pipeline's data comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[allow(clippy::large_enum_variant)] // a settings value, built once per run
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
        /// The held-out labelled COCO file of each task, in its teacher's label space (one file
        /// may serve several tasks).
        test: TaskMap<PathBuf>,
        /// The unlabelled images: a folder or a COCO file.
        unlabelled: PathBuf,
        /// One labelled COCO file per task (its teacher's training set).
        labelled: TaskMap<PathBuf>,
        /// Already-trained teachers (a run folder or a weights file) used instead of training
        /// one on a labelled file; the same checkpoint serves every seed.
        #[serde(default, skip_serializing_if = "TaskMap::is_empty")]
        teachers: TaskMap<PathBuf>,
        /// The downstream tasks of the transfer test: per task, a small labelled train file
        /// and a test file, on data no teacher saw.
        #[serde(default, skip_serializing_if = "TaskMap::is_empty")]
        downstream: TaskMap<Downstream>,
    },
}

/// One downstream task's files.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Downstream {
    /// The small labelled train split.
    pub train: PathBuf,
    /// The held-out test split.
    pub test: PathBuf,
}

/// The transfer test: fine-tune every candidate backbone on the small labelled train split of
/// each downstream task (data no teacher or student saw) and score it on the task's test split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Transfer {
    /// The downstream tasks (the synthetic downstream family has detection, segmentation,
    /// depth and classification).
    pub tasks: Vec<Task>,
    /// Labelled images of each synthetic downstream train split (your downstream files are
    /// used whole).
    pub images: usize,
    /// Fine-tuning epochs.
    pub epochs: usize,
    /// Also fine-tune from each teacher's backbone and neck (MuST's comparison with every
    /// specialist), not only from the student's and from scratch.
    #[serde(default)]
    pub from_teachers: bool,
}

/// What the student trains with where it differs from the teachers (the `base` settings).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StudentRecipe {
    /// AdamW learning rate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lr: Option<f64>,
    /// Per-task loss weights.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss_weights: Option<crate::config::LossWeights>,
}

impl StudentRecipe {
    fn is_empty(&self) -> bool {
        self == &StudentRecipe::default()
    }

    /// The student's learning rate with `base` as the default.
    pub fn lr(&self, base: &Config) -> f64 {
        self.lr.unwrap_or(base.train.lr)
    }
}

/// The whole pipeline's settings, saved as `runs/must/config.toml` (presets in `presets.rs`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MustConfig {
    /// One teacher per task.
    pub tasks: Vec<Task>,
    /// Every trained model (teachers, student, transfer runs) is trained with seeds
    /// `base.seed`, `base.seed + 1`, … (the first in `runs/must`, seed `k` in
    /// `runs/must/seed<k>`), and every number is reported as mean ± standard deviation.
    #[serde(default = "one")]
    pub seeds: usize,
    /// Epochs of each teacher.
    pub teacher_epochs: usize,
    /// Epochs of the student over the pseudo-labelled set.
    pub student_epochs: usize,
    /// The student's own learning rate and loss weights, where they differ from `base`'s.
    #[serde(default, skip_serializing_if = "StudentRecipe::is_empty")]
    pub student: StudentRecipe,
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
        p.check(self.seeds == 0, "must.seeds", || "at least one seed".into());
        if let Some(lr) = self.student.lr {
            p.check(!(lr.is_finite() && lr > 0.0), "must.student.lr", || {
                format!("{lr} must be a positive number")
            });
        }
        if let Some(w) = &self.student.loss_weights {
            for (task, v) in w.iter() {
                p.check(
                    !(v.is_finite() && *v >= 0.0),
                    "must.student.loss_weights",
                    || format!("{task}: {v} must be a number ≥ 0"),
                );
            }
        }
        p.check(
            self.teacher_epochs == 0 || self.student_epochs == 0 || self.shard_size == 0,
            "must",
            || "teacher_epochs, student_epochs and shard_size must be at least 1".into(),
        );
        if let Err(e) = self.thresholds.validate() {
            p.push("must.thresholds", e.to_string());
        }
        if let MustData::User {
            labelled,
            test,
            teachers,
            ..
        } = &self.data
        {
            for task in &self.tasks {
                p.check(
                    !labelled.contains(*task) && !teachers.contains(*task),
                    "must.data.labelled",
                    || {
                        format!(
                        "no labelled dataset for the {task} teacher (give --labelled {task}=FILE or --teacher {task}=CHECKPOINT)"
                    )
                    },
                );
                p.check(!test.contains(*task), "must.data.test", || {
                    format!("no test set for {task} (give --test FILE or --test {task}=FILE)")
                });
            }
        }
        if let Some(t) = &self.transfer {
            p.check(t.images == 0 || t.epochs == 0, "must.transfer", || {
                "images and epochs must be at least 1".into()
            });
            p.check(t.tasks.is_empty(), "must.transfer.tasks", || {
                "at least one downstream task".into()
            });
            for &task in &t.tasks {
                match &self.data {
                    MustData::Synthetic { .. } => {
                        p.check(!synth::DOWNSTREAM_TASKS.contains(&task), "must.transfer.tasks", || {
                            format!("the synthetic downstream family has no {task} task (it has detection, segmentation, depth and classification)")
                        })
                    }
                    MustData::User { downstream, .. } => {
                        p.check(!downstream.contains(task), "must.data.downstream", || {
                            format!("no downstream files for the {task} transfer (give --downstream {task}=TRAIN,TEST or --transfer none)")
                        })
                    }
                }
            }
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
    /// The constant prediction fitted on the teacher's labelled set ([`crate::baseline::constant_baseline`]);
    /// NaN when the teacher was given without its labelled set.
    pub baseline: f64,
}

/// The transfer test's outcome: MuST's table, rows are initialisations, columns downstream
/// tasks.
#[derive(Debug, Clone, PartialEq)]
pub struct TransferResult {
    /// The downstream tasks (columns).
    pub tasks: Vec<Task>,
    /// Per initialisation (the student's backbone and neck, from scratch, then each teacher's
    /// when asked), the headline metric of each task after fine-tuning.
    pub rows: Vec<(String, Vec<f64>)>,
}

/// What one seed of the pipeline produced.
#[derive(Debug, Clone)]
pub struct SeedRun {
    /// The seed of every model.
    pub seed: u64,
    /// Per task.
    pub tasks: Vec<TaskResult>,
    /// The transfer test.
    pub transfer: Option<TransferResult>,
    /// What the teachers' labels kept.
    pub pseudo: Stats,
}

/// What the pipeline produced.
#[derive(Debug, Clone)]
pub struct MustReport {
    /// One per seed.
    pub seeds: Vec<SeedRun>,
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
            "seeds": self.seeds.iter().map(|r| serde_json::json!({
                "seed": r.seed,
                "tasks": r.tasks.iter().map(|r| serde_json::json!({
                    "task": r.task.name(),
                    "metric": metric_name(r.task),
                    "teacher": r.teacher,
                    "student": r.student,
                    "initial": r.initial,
                    "initial_loss": r.initial_loss,
                    "student_loss": r.student_loss,
                    "constant_baseline": r.baseline,
                })).collect::<Vec<_>>(),
                "transfer": r.transfer.as_ref().map(|t| serde_json::json!({
                    "tasks": t.tasks.iter().map(|t| t.name()).collect::<Vec<_>>(),
                    "initialisations": t.rows.iter().map(|(name, v)| serde_json::json!({"from": name, "metrics": v})).collect::<Vec<_>>(),
                })),
                "pseudo_labels": r.pseudo,
            })).collect::<Vec<_>>(),
            "timings": self.timings.iter().map(|(s, t)| serde_json::json!({"stage": s, "seconds": t})).collect::<Vec<_>>(),
            "seconds": self.seconds,
        })
    }

    /// `value` of every seed.
    fn over(&self, value: impl Fn(&SeedRun) -> Option<f64>) -> Option<MeanStd> {
        let values: Option<Vec<f64>> = self.seeds.iter().map(value).collect();
        values.filter(|v| !v.is_empty()).map(|v| MeanStd::of(&v))
    }
}

fn one() -> usize {
    1
}

/// The transfer table's row of the constant prediction (no model).
pub const CONSTANT_ROW: &str = "constant prediction (no training)";

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

/// The folders and files of one seed of the pipeline (`runs/must`, `runs/must/seed<k>`), with
/// the data shared by every seed (`runs/must/data`).
struct Paths {
    root: PathBuf,
    data: PathBuf,
}

impl Paths {
    fn labels(&self) -> PathBuf {
        self.root.join("labels")
    }
    fn data(&self) -> PathBuf {
        self.data.clone()
    }
    fn last(&self, run: &str) -> PathBuf {
        RunPaths::new(&self.root, run).last()
    }
}

/// The synthetic splits written to `runs/must/data` (`splits.toml`).
#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct WrittenSplits {
    splits: Splits,
    size: u32,
    seed: u64,
}

/// The pipeline's data, resolved to files.
struct Files {
    labelled: TaskMap<PathBuf>,
    teachers: TaskMap<PathBuf>,
    unlabelled: PathBuf,
    test: TaskMap<PathBuf>,
    downstream: TaskMap<Downstream>,
}

/// The held-out test sets, each opened once (one file may serve several tasks).
struct TestSets {
    files: TaskMap<PathBuf>,
    opened: Vec<(PathBuf, Arc<Dataset>)>,
}

impl TestSets {
    fn open(files: &TaskMap<PathBuf>, tasks: &[Task], skip_bad: bool) -> Result<Self> {
        let mut opened: Vec<(PathBuf, Arc<Dataset>)> = Vec::new();
        for &task in tasks {
            let Some(path) = files.get(task) else {
                continue;
            };
            if !opened.iter().any(|(p, _)| p == path) {
                opened.push((path.clone(), Arc::new(open_dataset(path, None, skip_bad)?)));
            }
        }
        Ok(Self {
            files: files.clone(),
            opened,
        })
    }

    /// The test set of `task`.
    fn of(&self, task: Task) -> Result<&Arc<Dataset>> {
        let path = self.files.get(task);
        self.opened
            .iter()
            .find(|(p, _)| Some(p) == path)
            .map(|(_, d)| d)
            .ok_or_else(|| Error::config("must.data.test", format!("no test set for {task}")))
    }
}

/// A run of the pipeline: its settings (one seed's), folders and stage timings.
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
    // A device this build cannot open is refused before any data is written.
    config.base.device.device()?;
    config.base.numerics.apply();
    let root = runs.join("must");
    std::fs::create_dir_all(&root).map_err(|e| Error::io(&root, e))?;
    // Under a launcher every process trains every model together and pseudo-labels its share
    // of the shards; rank 0 alone writes the data, evaluates and reports.
    let world = mustard_core::dist::world();
    let main = world.rank() == 0;
    let progress = progress && main;
    let mut p = Pipeline {
        config,
        paths: Paths {
            root: root.clone(),
            data: root.join("data"),
        },
        progress,
        timings: Vec::new(),
    };
    let stage = Instant::now();
    let files = p.data()?;
    // The other processes read what rank 0 wrote.
    world.barrier()?;
    // Saved once the data fits it (a refused config leaves the saved one as it was).
    if main {
        write_toml(config, &root.join("config.toml"))?;
    }
    p.timings
        .push(("data".to_string(), stage.elapsed().as_secs_f64()));
    check_labelled(&config.tasks, &files.labelled, &files.teachers, &files.test)?;
    if let Some(t) = &config.transfer {
        check_downstream(&t.tasks, &files.downstream)?;
    }
    let test = TestSets::open(&files.test, &config.tasks, config.base.data.skip_bad)?;
    let mut seeds = Vec::new();
    let mut timings = std::mem::take(&mut p.timings);
    for k in 0..config.seeds {
        let mut seeded = config.clone();
        seeded.base.seed = config.base.seed + k as u64;
        let mut p = Pipeline {
            config: &seeded,
            paths: Paths {
                root: if k == 0 {
                    root.clone()
                } else {
                    root.join(format!("seed{k}"))
                },
                data: root.join("data"),
            },
            progress,
            timings: Vec::new(),
        };
        if config.seeds > 1 {
            p.say(|| format!("seed {} ({} of {})", seeded.base.seed, k + 1, config.seeds));
        }
        seeds.push(p.run(&files, &test)?);
        let prefix = if config.seeds > 1 {
            format!("seed {}: ", seeded.base.seed)
        } else {
            String::new()
        };
        timings.extend(
            p.timings
                .into_iter()
                .map(|(s, t)| (format!("{prefix}{s}"), t)),
        );
    }
    let report = MustReport {
        seeds,
        timings,
        report: root.join("report.md"),
        seconds: started.elapsed().as_secs_f64(),
    };
    if main {
        write_report(&report, config, &root)?;
    }
    world.barrier()?;
    Ok(report)
}

impl Pipeline<'_> {
    /// Teachers, pseudo-labels, student, evaluation and transfer with this pipeline's seed.
    fn run(&mut self, files: &Files, test: &TestSets) -> Result<SeedRun> {
        let teachers = self.teachers(files)?;
        let labels = self.pseudo_labels(files, &teachers)?;
        let student = self.student_config();
        let initial = self.initial_student(&student, test)?;
        let seconds = train_unless_done(&student, &self.paths.root, self.progress)?;
        self.timings.push(("student".to_string(), seconds));
        let tasks = self.evaluate_all(files, &teachers, &initial, test)?;
        let transfer = self.transfer(files, &student, &teachers)?;
        Ok(SeedRun {
            seed: self.config.base.seed,
            tasks,
            transfer,
            pseudo: labels.stats,
        })
    }

    fn say(&self, msg: impl FnOnce() -> String) {
        if self.progress {
            eprintln!("must: {}", msg());
        }
    }

    /// Step 1: the labelled, unlabelled, test and downstream files (the synthetic splits and the
    /// downstream family are written once).
    fn data(&self) -> Result<Files> {
        let (splits, size, seed) = match &self.config.data {
            MustData::User {
                labelled,
                unlabelled,
                test,
                downstream,
                teachers,
            } => {
                return Ok(Files {
                    labelled: labelled.clone(),
                    teachers: teachers.clone(),
                    unlabelled: unlabelled.clone(),
                    test: test.clone(),
                    downstream: downstream.clone(),
                })
            }
            MustData::Synthetic { splits, size, seed } => (splits, *size, *seed),
        };
        let dir = self.paths.data();
        let synth = SynthConfig {
            size,
            seed,
            max_objects: 6,
        };
        // The splits are written again when the config asks for another test split than the
        // one on disk: the test scenes come after every training scene, so the training images,
        // and every model trained on them, stay as they were. Any other difference would
        // change what finished stages were trained on, and is refused.
        let written = WrittenSplits {
            splits: splits.clone(),
            size,
            seed,
        };
        let record = dir.join("splits.toml");
        let on_disk = read_toml::<WrittenSplits>(&record).ok();
        if let Some(old) = &on_disk {
            let training =
                |w: &WrittenSplits| (w.splits.per_task, w.splits.unlabeled, w.size, w.seed);
            if training(old) != training(&written) {
                return Err(Error::config(
                    "must.data",
                    format!(
                        "{} holds splits of {} labelled images per task, {} unlabelled, {} px, seed {}, and the config asks for {}, {}, {} px, seed {}: finished teachers and labels were made from those; delete {} to start over",
                        dir.display(), old.splits.per_task, old.splits.unlabeled, old.size,
                        old.seed, splits.per_task, splits.unlabeled, size, seed,
                        self.paths.root.display()
                    ),
                ));
            }
        }
        let complete = ["test_classification.json", "unlabeled_truth.json"]
            .iter()
            .all(|f| dir.join(f).is_file());
        if on_disk.as_ref() != Some(&written) || !complete {
            if let Some(old) = &on_disk {
                self.say(|| format!(
                    "{} holds a test split of {} images: writing the config's {} (the training images and every finished model stay as they are)",
                    dir.display(), old.splits.test, splits.test
                ));
            }
            self.say(|| format!(
                "writing the synthetic splits ({} labelled images per task, {} unlabelled, {} test) to {}",
                splits.per_task, splits.unlabeled, splits.test, dir.display()
            ));
            if mustard_core::dist::is_main() {
                synth::write(&dir, &synth, 0, Some(splits))?;
                write_toml(&written, &record)?;
            }
        }
        let mut downstream = TaskMap::new();
        if let Some(t) = &self.config.transfer {
            // The downstream family: new shapes, backgrounds and labels, no teacher saw them.
            let down = dir.join(format!("downstream-{}-{}", t.images, splits.test));
            if !down.join("test_classification.json").is_file() {
                self.say(|| {
                    format!(
                    "writing the downstream family ({} labelled images per task, {} test) to {}",
                    t.images, splits.test, down.display()
                )
                });
                if mustard_core::dist::is_main() {
                    synth::write_downstream(&down, &synth, t.images, splits.test)?;
                }
            }
            for task in synth::DOWNSTREAM_TASKS {
                let file = |split: &str| down.join(format!("{split}_{task}.json"));
                downstream.insert(
                    task,
                    Downstream {
                        train: file("train"),
                        test: file("test"),
                    },
                );
            }
        }
        Ok(Files {
            labelled: Task::ALL
                .iter()
                .map(|&t| (t, dir.join(format!("train_{t}.json"))))
                .collect(),
            teachers: TaskMap::new(),
            unlabelled: dir.join("unlabeled.json"),
            test: Task::ALL
                .iter()
                .map(|&t| (t, dir.join(format!("test_{t}.json"))))
                .collect(),
            downstream,
        })
    }

    /// Step 2: one teacher per task on its own labelled set; returns each teacher's weights file (a given checkpoint is used as it is).
    fn teachers(&mut self, files: &Files) -> Result<Vec<(Task, PathBuf)>> {
        let mut teachers = Vec::new();
        for &task in &self.config.tasks {
            if let Some(given) = files.teachers.get(task) {
                self.say(|| format!("the {task} teacher is {} (not trained)", given.display()));
                teachers.push((task, crate::checkpoint::weights_file(given)));
                continue;
            }
            let data = files.labelled.get(task).ok_or_else(|| {
                Error::config(
                    "must",
                    format!(
                        "no labelled dataset for the {task} teacher (give --labelled {task}=FILE or --teacher {task}=CHECKPOINT)"
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
            let state = crate::train::StageState::of(&self.paths.root, &c.name);
            self.say(|| {
                state.say(
                    &format!("{task} teacher"),
                    &format!("training the {task} teacher on {}", data.display()),
                )
            });
            let seconds = train_unless_done(&c, &self.paths.root, self.progress)?;
            self.timings.push((format!("teacher {task}"), seconds));
            teachers.push((task, self.paths.last(&c.name)));
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
        options.device = Some(self.config.base.device);
        options.progress = self.progress;
        options.skip_bad = self.config.base.data.skip_bad;
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
        student.train.lr = self.config.student.lr(&self.config.base);
        if let Some(w) = &self.config.student.loss_weights {
            student.model.loss_weights = w.clone();
        }
        student
    }

    /// The student at its initialisation (the model training starts from) on the test set:
    /// metrics and per-task loss.
    fn initial_student(&self, student: &Config, test: &TestSets) -> Result<Initial> {
        let state = crate::train::StageState::of(&self.paths.root, &student.name);
        self.say(|| state.say("student", "training the student on every pseudo-label"));
        let mut c = student.clone();
        c.model.classes = classes_of(&PseudoSource::open(&self.paths.labels(), None)?);
        let (_, model) = initial_model(&c)?;
        // Every process evaluates its share; rank 0 scores (the others keep nothing).
        let (report, loss) = per_task(&model, &c, test)?.unwrap_or_default();
        Ok(Initial { report, loss })
    }

    /// Step 5: teachers and student on the held-out set.
    fn evaluate_all(
        &mut self,
        files: &Files,
        teachers: &[(Task, PathBuf)],
        initial: &Initial,
        test: &TestSets,
    ) -> Result<Vec<TaskResult>> {
        let stage = Instant::now();
        self.say(|| "evaluating every model on the test sets".into());
        // Every process evaluates its share of each test set; rank 0 scores and reports (the
        // others return no rows).
        let (config, _, model) = load_model(&self.paths.last("student"))?;
        let scored = per_task(&model, &config, test)?;
        let loss_of = |losses: &TaskMap<f64>, task| losses.get(task).copied().unwrap_or(f64::NAN);
        let mut rows = Vec::new();
        for (task, weights) in teachers {
            let (c, _, model) = load_model(weights)?;
            let report = evaluate_on(&model, &c, test.of(*task)?)?;
            let (Some(report), Some((student, student_loss))) = (report, &scored) else {
                continue;
            };
            let baseline = match files.labelled.get(*task) {
                Some(path) => {
                    let train = open_dataset(path, None, self.config.base.data.skip_bad)?;
                    constant_baseline_with(
                        *task,
                        &train,
                        test.of(*task)?,
                        self.config.base.data.skip_bad,
                    )?
                    .unwrap_or(f64::NAN)
                }
                None => f64::NAN,
            };
            rows.push(TaskResult {
                baseline,
                task: *task,
                teacher: report.headline_of(*task),
                student: student.get(*task).copied().unwrap_or(f64::NAN),
                initial: initial.report.get(*task).copied().unwrap_or(f64::NAN),
                initial_loss: loss_of(&initial.loss, *task),
                student_loss: loss_of(student_loss, *task),
            });
        }
        self.timings
            .push(("evaluation".to_string(), stage.elapsed().as_secs_f64()));
        Ok(rows)
    }

    /// Step 6, the transfer test: every candidate backbone and neck fine-tuned on each
    /// downstream task's train split with the same budget and seed, scored on its test split.
    fn transfer(
        &mut self,
        files: &Files,
        student: &Config,
        teachers: &[(Task, PathBuf)],
    ) -> Result<Option<TransferResult>> {
        let Some(t) = &self.config.transfer else {
            return Ok(None);
        };
        let mut inits: Vec<(String, String, Option<PathBuf>)> = vec![
            (
                "student".into(),
                "student backbone + neck".into(),
                Some(self.paths.last("student")),
            ),
            ("scratch".into(), "from scratch".into(), None),
        ];
        if t.from_teachers {
            for (task, weights) in teachers {
                inits.push((
                    format!("teacher-{task}"),
                    format!("{task} teacher backbone + neck"),
                    Some(weights.clone()),
                ));
            }
        }
        let mut rows: Vec<(String, Vec<f64>)> = inits
            .iter()
            .map(|(_, l, _)| (l.clone(), Vec::new()))
            .collect();
        let mut constant = (CONSTANT_ROW.to_string(), Vec::new());
        for &task in &t.tasks {
            let down = files.downstream.get(task).ok_or_else(|| {
                Error::config(
                    "must.data.downstream",
                    format!("no downstream files for {task}"),
                )
            })?;
            let test = Arc::new(open_dataset(&down.test, None, false)?);
            let train = open_dataset(&down.train, None, false)?;
            constant
                .1
                .push(constant_baseline_with(task, &train, &test, false)?.unwrap_or(f64::NAN));
            for ((name, label, init), row) in inits.iter().zip(rows.iter_mut()) {
                let mut c = student.clone();
                c.name = format!("transfer-{task}-{name}");
                c.model.tasks = vec![task];
                c.model.relative_depth = false;
                c.model.init_from = init.clone();
                c.data.pseudo = None;
                c.data.train = Some(down.train.clone());
                c.data.root = None;
                c.train.epochs = t.epochs;
                let state = crate::train::StageState::of(&self.paths.root, &c.name);
                self.say(|| {
                    state.say(
                        &format!("transfer run ({task}, {label})"),
                        &format!("transfer: {task}, {label}, on {}", down.train.display()),
                    )
                });
                let seconds = train_unless_done(&c, &self.paths.root, self.progress)?;
                self.timings.push((c.name.clone(), seconds));
                // Every process evaluates its share; rank 0 scores and reports.
                let (c, _, model) = load_model(&self.paths.last(&c.name))?;
                let report = evaluate_on(&model, &c, &test)?;
                row.1.push(report.map_or(f64::NAN, |r| r.headline_of(task)));
            }
        }
        rows.push(constant);
        Ok(Some(TransferResult {
            tasks: t.tasks.clone(),
            rows,
        }))
    }
}

/// Checks, before anything is trained, that each teacher's labelled set can train its task and
/// that its task's test set is in the same label space (the student's head keeps the
/// teacher's), naming every file that does not fit. Teachers may have different label spaces.
pub fn check_labelled(
    tasks: &[Task],
    labelled: &TaskMap<PathBuf>,
    teachers: &TaskMap<PathBuf>,
    test: &TaskMap<PathBuf>,
) -> Result<()> {
    let mut p = Problems::default();
    let mut files: Vec<(PathBuf, Option<coco::CocoFile>)> = Vec::new();
    let mut read = |path: &Path, what: &str, p: &mut Problems| -> Option<coco::CocoFile> {
        if let Some((_, file)) = files.iter().find(|(f, _)| f == path) {
            return file.clone();
        }
        let file = match index_of(path) {
            Ok(file) => Some(file),
            Err(e) => {
                p.push(what, mustard_core::error_chain(&e));
                None
            }
        };
        files.push((path.to_path_buf(), file.clone()));
        file
    };
    for &task in tasks {
        if let Some(given) = teachers.get(task) {
            let what = format!("must.data.teachers.{task}");
            let model = match crate::checkpoint::config_of(given) {
                Ok((weights, c)) if weights.is_file() => Some(c),
                Ok((weights, _)) => {
                    p.push(&what, format!("{}: no such checkpoint", weights.display()));
                    None
                }
                Err(e) => {
                    p.push(&what, mustard_core::error_chain(&e));
                    None
                }
            };
            let test_file = test
                .get(task)
                .and_then(|t| read(t, &format!("must.data.test.{task}"), &mut p).map(|f| (t, f)));
            let Some(c) = model else { continue };
            if !c.model.tasks.contains(&task) {
                let has: Vec<&str> = c.model.tasks.iter().map(|t| t.name()).collect();
                p.push(
                    &what,
                    format!(
                        "{} has no {task} head (its tasks: {})",
                        given.display(),
                        has.join(", ")
                    ),
                );
                continue;
            }
            if let Some((test_path, test_file)) = test_file {
                let space = LabelSpace::of_model(task, &c.model.classes);
                let theirs = LabelSpace::of(task, &test_file);
                p.check(theirs != space, &what, || {
                    format!(
                        "the {task} teacher {} has {space} but the {task} test set {} has {theirs}; a task's test set must use its teacher's label space",
                        given.display(),
                        test_path.display()
                    )
                });
            }
            continue;
        }
        let Some(path) = labelled.get(task) else {
            continue;
        };
        let what = format!("must.data.labelled.{task}");
        let file = if path.is_dir() {
            p.check(task != Task::Classification, &what, || {
                format!(
                    "{} is a folder; only classification reads class folders",
                    path.display()
                )
            });
            None
        } else {
            read(path, &what, &mut p)
        };
        let test_file = test
            .get(task)
            .and_then(|t| read(t, &format!("must.data.test.{task}"), &mut p).map(|f| (t, f)));
        let Some(file) = file else { continue };
        let space = LabelSpace::of(task, &file);
        if let Some(missing) = space.missing() {
            p.push(what.clone(), format!("{} has no {missing}", path.display()));
            continue;
        }
        if let Some((test_path, test_file)) = test_file {
            let theirs = LabelSpace::of(task, &test_file);
            p.check(theirs != space, &what, || {
                format!(
                    "the {task} teacher's {} has {space} but the {task} test set {} has {theirs}; a task's test set must use its teacher's label space",
                    path.display(),
                    test_path.display()
                )
            });
        }
    }
    p.finish()
}

/// The index of any dataset `--data` takes (a COCO file or several, a folder-dataset
/// description, a classification list or class folders), as a COCO file.
fn index_of(path: &Path) -> mustard_data::Result<coco::CocoFile> {
    Ok(Dataset::open_path(path, None)?.file().clone())
}

/// Checks, before anything is trained, that each downstream task's train and test files read
/// and share one label space, naming every file that does not.
pub fn check_downstream(tasks: &[Task], downstream: &TaskMap<Downstream>) -> Result<()> {
    let mut p = Problems::default();
    for &task in tasks {
        let Some(d) = downstream.get(task) else {
            continue;
        };
        let what = format!("must.data.downstream.{task}");
        let mut read = |path: &Path| match index_of(path) {
            Ok(f) => Some(LabelSpace::of(task, &f)),
            Err(e) => {
                p.push(what.clone(), mustard_core::error_chain(&e));
                None
            }
        };
        let (Some(train), Some(test)) = (read(&d.train), read(&d.test)) else {
            continue;
        };
        if let Some(missing) = train.missing() {
            p.push(
                what.clone(),
                format!("{} has no {missing}", d.train.display()),
            );
        } else {
            p.check(train != test, &what, || {
                format!(
                    "{} has {train} but {} has {test}; a downstream task's train and test files must share one label space",
                    d.train.display(),
                    d.test.display()
                )
            });
        }
    }
    p.finish()
}

/// What a COCO file gives one task: its label space, compared between a teacher's training
/// file and the task's test file.
#[derive(Debug, PartialEq)]
enum LabelSpace {
    /// Category names and ids.
    Detection(Vec<(String, u64)>),
    /// The pose category's name, id and joints.
    Pose(Option<(String, u64, usize)>),
    /// Segmentation classes by label value.
    Segmentation(Vec<String>),
    /// Depth has none.
    Depth,
    /// Image-level classes.
    Classification(Vec<String>),
}

impl LabelSpace {
    fn of(task: Task, file: &coco::CocoFile) -> Self {
        match task {
            Task::Detection => LabelSpace::Detection(
                file.categories
                    .iter()
                    .map(|c| (c.name.clone(), c.id))
                    .collect(),
            ),
            Task::Pose => LabelSpace::Pose(coco::person_category(&file.categories).map(|i| {
                let c = &file.categories[i];
                (c.name.clone(), c.id, coco::num_keypoints(&file.categories))
            })),
            Task::Segmentation => LabelSpace::Segmentation(coco::segmentation_classes(file)),
            Task::Depth => LabelSpace::Depth,
            Task::Classification => LabelSpace::Classification(file.label_names.clone()),
        }
    }

    /// The label space a trained model's head of `task` predicts in.
    fn of_model(task: Task, classes: &crate::config::Classes) -> Self {
        match task {
            Task::Detection => LabelSpace::Detection(
                classes
                    .categories
                    .iter()
                    .cloned()
                    .zip(classes.category_ids.iter().copied())
                    .collect(),
            ),
            Task::Pose => LabelSpace::Pose(
                classes
                    .pose_category()
                    .map(|c| (c.name, c.id, classes.joints)),
            ),
            Task::Segmentation => LabelSpace::Segmentation(classes.segmentation_classes()),
            Task::Depth => LabelSpace::Depth,
            Task::Classification => LabelSpace::Classification(classes.labels.clone()),
        }
    }

    /// What the teacher's file lacks to train its task.
    fn missing(&self) -> Option<&'static str> {
        match self {
            LabelSpace::Detection(c) if c.is_empty() => Some("categories"),
            LabelSpace::Pose(None) => Some("category with keypoints"),
            LabelSpace::Classification(l) if l.is_empty() => {
                Some("`label_names` (image-level classes)")
            }
            _ => None,
        }
    }
}

impl std::fmt::Display for LabelSpace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LabelSpace::Detection(c) => {
                let c: Vec<String> = c.iter().map(|(n, id)| format!("{n} ({id})")).collect();
                write!(f, "categories [{}]", c.join(", "))
            }
            LabelSpace::Pose(Some((n, id, j))) => {
                write!(f, "pose category {n} ({id}) with {j} joints")
            }
            LabelSpace::Pose(None) => write!(f, "no category with keypoints"),
            LabelSpace::Segmentation(c) => write!(f, "segmentation classes [{}]", c.join(", ")),
            LabelSpace::Depth => write!(f, "depth"),
            LabelSpace::Classification(c) => write!(f, "image classes [{}]", c.join(", ")),
        }
    }
}

/// The student at its initialisation: each task's headline metric and test loss.
struct Initial {
    report: TaskMap<f64>,
    loss: TaskMap<f64>,
}

/// Each task's headline metric and loss of a multi-task `model`, each on its task's test set
/// (a file that serves several tasks is evaluated once).
fn per_task(
    model: &MultiTaskModel,
    config: &Config,
    test: &TestSets,
) -> Result<Option<(TaskMap<f64>, TaskMap<f64>)>> {
    let (mut metric, mut loss) = (TaskMap::new(), TaskMap::new());
    let t = &config.train;
    for (path, set) in &test.opened {
        let tasks: Vec<Task> = config
            .model
            .tasks
            .iter()
            .copied()
            .filter(|&task| test.files.get(task) == Some(path))
            .collect();
        if tasks.is_empty() {
            continue;
        }
        let report = evaluate_on(model, config, set)?;
        let losses = evaluate_loss_shared(model, set.clone(), t.input_size, t.batch_size)?;
        let (Some(report), Some(losses)) = (report, losses) else {
            continue;
        };
        for task in tasks {
            metric.insert(task, report.headline_of(task));
            if let Some(&l) = losses.get(task) {
                loss.insert(task, l);
            }
        }
    }
    Ok(mustard_core::dist::is_main().then_some((metric, loss)))
}

/// `report.md`, `results.json` and `must.png`.
fn write_report(report: &MustReport, config: &MustConfig, root: &Path) -> Result<()> {
    let text = render(report, config);
    mustard_core::io::write_bytes(&report.report, text.as_bytes())?;
    let json = serde_json::to_vec_pretty(&report.to_json()).expect("JSON values serialise");
    mustard_core::io::write_bytes(&root.join("results.json"), &json)?;
    crate::charts::write_bars(&root.join("must.png"), &must_charts(report))
}

/// The two panels of `must.png`: each task's teacher, student and untrained student on its
/// test set, and the transfer table (rows are bars, downstream tasks are groups). Bars are
/// means over seeds, whiskers one standard deviation.
fn must_charts(report: &MustReport) -> Vec<crate::charts::Bars> {
    let seeds = report.seeds.len();
    let over_seeds = if seeds > 1 {
        format!(", mean of {seeds} seeds ± sd")
    } else {
        String::new()
    };
    let cell = |value: &dyn Fn(&SeedRun) -> Option<f64>| {
        report
            .over(value)
            .map_or((f64::NAN, f64::NAN), |m| (m.mean, m.std))
    };
    let fields: [fn(&TaskResult) -> f64; 4] =
        [|r| r.teacher, |r| r.student, |r| r.initial, |r| r.baseline];
    let mut groups = Vec::new();
    let mut errors = Vec::new();
    for (k, r) in report.seeds[0].tasks.iter().enumerate() {
        let cells: Vec<(f64, f64)> = fields
            .iter()
            .map(|f| cell(&|s: &SeedRun| s.tasks.get(k).map(f)))
            .collect();
        groups.push((
            format!("{} {}", r.task, metric_name(r.task)),
            cells.iter().map(|c| c.0).collect(),
        ));
        errors.push(cells.iter().map(|c| c.1).collect());
    }
    let teachers = crate::charts::Bars {
        title: format!("MuST: each task's test set{over_seeds}"),
        y_label: "headline metric (higher is better)".into(),
        legend: vec![
            "teacher".into(),
            "student".into(),
            "student at initialisation".into(),
            "constant prediction".into(),
        ],
        groups,
        errors: (seeds > 1).then_some(errors),
        empty: "no task".into(),
    };
    let transfer = match &report.seeds[0].transfer {
        Some(first) => {
            let mut groups = Vec::new();
            let mut errors = Vec::new();
            for (c, task) in first.tasks.iter().enumerate() {
                let cells: Vec<(f64, f64)> = (0..first.rows.len())
                    .map(|row| cell(&|s: &SeedRun| s.transfer.as_ref()?.rows.get(row)?.1.get(c).copied()))
                    .collect();
                groups.push((
                    format!("{task} {}", metric_name(*task)),
                    cells.iter().map(|c| c.0).collect(),
                ));
                errors.push(cells.iter().map(|c| c.1).collect());
            }
            crate::charts::Bars {
                title: format!("Transfer to held-out downstream tasks{over_seeds}"),
                y_label: "headline metric after fine-tuning".into(),
                legend: first.rows.iter().map(|(name, _)| name.clone()).collect(),
                groups,
                errors: (seeds > 1).then_some(errors),
                empty: String::new(),
            }
        }
        None => crate::charts::Bars {
            title: "Transfer to held-out downstream tasks".into(),
            y_label: String::new(),
            legend: Vec::new(),
            groups: Vec::new(),
            errors: None,
            empty: "not run: the pipeline was run without a transfer test (no --downstream on your data, or transfer switched off)".into(),
        },
    };
    vec![teachers, transfer]
}

fn labels_tasks(tasks: &[Task]) -> mustard_data::TaskSet {
    tasks.iter().copied().collect()
}

/// `model` on a test set, split over the processes of the run: the report on rank 0, `None`
/// on the others (every process calls it).
fn evaluate_on(
    model: &MultiTaskModel,
    config: &Config,
    test: &Arc<Dataset>,
) -> Result<Option<EvalReport>> {
    evaluate_shared(
        model,
        test.clone(),
        config.train.input_size,
        config.train.batch_size,
        config.train.workers,
        Resolution::Original,
        config.data.skip_bad,
    )
}

/// ", loss weights classification 3" when the student's weights are not all 1.
fn student_weights(config: &MustConfig) -> String {
    let Some(w) = &config.student.loss_weights else {
        return String::new();
    };
    let not_one: Vec<String> = config
        .tasks
        .iter()
        .filter_map(|&t| {
            let v = crate::config::loss_weight(w, t);
            (v != 1.0).then(|| format!("{t} {v}"))
        })
        .collect();
    if not_one.is_empty() {
        String::new()
    } else {
        format!(", loss weights {} (others 1)", not_one.join(", "))
    }
}

/// The Markdown report: every cell the mean ± sample standard deviation over the seeds (a
/// plain value for one seed).
pub fn render(r: &MustReport, config: &MustConfig) -> String {
    let mut s = String::new();
    let b = &config.base;
    let _ = writeln!(
        s,
        "# MuST: multi-task self-training
"
    );
    let seeds = if config.seeds > 1 {
        format!(
            " Every model is trained with {} seeds; cells are mean ± sample standard deviation.",
            config.seeds
        )
    } else {
        String::new()
    };
    let _ = writeln!(
        s,
        "Teachers: one {} model per task, {} epochs on its own labelled set, in its own label space, AdamW lr {}. Student: the same backbone with an FPN neck and every head (each in its teacher's label space), {} epochs on the teachers' pseudo-labels of the unlabelled set, AdamW lr {}{}. {} px, batch {}. Every model is evaluated on each task's held-out test set.{seeds}\n",
        b.model.backbone, config.teacher_epochs, b.train.lr, config.student_epochs, config.student.lr(b), student_weights(config), b.train.input_size, b.train.batch_size
    );
    let _ = writeln!(
        s,
        "| task | metric | teacher | student | student / teacher | student at initialisation | constant prediction | test loss, initialisation → student |"
    );
    let _ = writeln!(s, "| --- | --- | --- | --- | --- | --- | --- | --- |");
    for (k, row) in r.seeds[0].tasks.iter().enumerate() {
        let cell = |f: fn(&TaskResult) -> f64| {
            r.over(|s| s.tasks.get(k).map(f))
                .unwrap_or(MeanStd::of(&[f64::NAN]))
        };
        let (teacher, student) = (cell(|t| t.teacher), cell(|t| t.student));
        // A ratio of two numbers that print as 0.000 would only show noise.
        let ratio = if teacher.mean >= 0.0005 {
            format!("{:.2}", student.mean / teacher.mean)
        } else {
            "–".into()
        };
        let _ = writeln!(
            s,
            "| {} | {} | {teacher} | {student} | {ratio} | {} | {} | {:.3} → {:.3} |",
            row.task,
            metric_name(row.task),
            cell(|t| t.initial),
            baseline_cell(row.baseline),
            cell(|t| t.initial_loss).mean,
            cell(|t| t.student_loss).mean
        );
    }
    let _ = writeln!(
        s,
        "\nThe constant prediction ignores the image: no box or person (AP 0), the teacher's training set's majority class (mIoU, top-1) or median depth (δ<1.25), scored like the models; it is the floor to read each number against. The test loss is each task's training loss against the test set's real labels (the student's depth loss is scale-and-shift invariant)."
    );
    render_pseudo(&mut s, r, config);
    render_transfer(&mut s, r, config);
    render_timings(&mut s, r);
    let _ = writeln!(s, "\nWall time of this call: {:.0} s.", r.seconds);
    s
}

/// A constant baseline's cell (the same for every seed: it involves no training).
fn baseline_cell(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.3}")
    } else {
        "–".into()
    }
}

fn render_pseudo(s: &mut String, r: &MustReport, config: &MustConfig) {
    let _ = writeln!(s, "\n## Pseudo-labels\n");
    let tasks = labels_tasks(&config.tasks);
    let t = &config.thresholds;
    let _ = writeln!(
        s,
        "Thresholds: box score ≥ {}, person score ≥ {}, pixel confidence ≥ {} (else ignored), temperature {}.{}\n",
        t.detection,
        t.pose,
        t.segmentation,
        t.temperature,
        if r.seeds.len() > 1 { " The labels of the first seed's teachers:" } else { "" }
    );
    for line in r.seeds[0].pseudo.describe(tasks).lines() {
        let _ = writeln!(s, "- {line}");
    }
}

fn render_transfer(s: &mut String, r: &MustReport, config: &MustConfig) {
    let _ = writeln!(s, "\n## Transfer to held-out downstream tasks\n");
    let Some(first) = &r.seeds[0].transfer else {
        let _ = writeln!(s, "Not run.");
        return;
    };
    let images = match &config.data {
        MustData::Synthetic { .. } => format!(
            "the synthetic downstream family (pentagons, stars and crosses over waves or dots, labelled by the main shape; docs/SYNTHETIC.md), {} labelled train images per task",
            config.transfer.as_ref().map_or(0, |t| t.images)
        ),
        MustData::User { .. } => "your downstream files".into(),
    };
    let _ = writeln!(
        s,
        "Each backbone and neck fine-tuned on data no teacher or student saw: {images}, {} epochs, same budget and seeds for every initialisation; scored on each task's test split.\n",
        config.transfer.as_ref().map_or(0, |t| t.epochs),
    );
    let header: Vec<String> = first
        .tasks
        .iter()
        .map(|t| format!("{t} {}", metric_name(*t)))
        .collect();
    let _ = writeln!(s, "| initialisation | {} |", header.join(" | "));
    let _ = writeln!(s, "|{}", " --- |".repeat(header.len() + 1));
    let cell = |row: usize, col: usize| {
        r.over(|s| s.transfer.as_ref()?.rows.get(row)?.1.get(col).copied())
    };
    for (k, (name, _)) in first.rows.iter().enumerate() {
        let cells: Vec<String> = (0..first.tasks.len())
            .map(|c| cell(k, c).map_or("–".into(), |m| m.to_string()))
            .collect();
        let _ = writeln!(s, "| {name} | {} |", cells.join(" | "));
    }
    let _ = writeln!(s);
    for (c, task) in first.tasks.iter().enumerate() {
        let find = |pred: &dyn Fn(&str) -> bool| {
            first
                .rows
                .iter()
                .enumerate()
                .filter(|(_, (n, _))| pred(n))
                .filter_map(|(k, (n, _))| Some((n.clone(), cell(k, c)?)))
                .max_by(|a, b| a.1.mean.total_cmp(&b.1.mean))
        };
        let Some((_, student)) = find(&|n| n.starts_with("student")) else {
            continue;
        };
        let other = find(&|n| n.contains("teacher")).or_else(|| find(&|n| n == "from scratch"));
        let Some((other, o)) = other else { continue };
        let baseline = find(&|n| n == CONSTANT_ROW)
            .map(|(_, m)| m.mean)
            .filter(|m| m.is_finite());
        let (_, sentence) = claim_above(student, o, baseline);
        let against = if other == "from scratch" {
            "training from scratch (no teacher backbone was fine-tuned; --transfer-from-teachers)"
                .to_string()
        } else {
            format!("the best specialist's ({other})")
        };
        let _ = writeln!(
            s,
            "- **MuST's claim on downstream {task}** — the student's backbone transfers at least as well as {against}: {student} against {o}, {sentence}."
        );
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
            test: [Task::Detection, Task::Depth]
                .into_iter()
                .map(|t| (t, PathBuf::from("test.json")))
                .collect(),
            unlabelled: "photos".into(),
            labelled: [(Task::Detection, PathBuf::from("det.json"))]
                .into_iter()
                .collect(),
            teachers: TaskMap::new(),
            downstream: [(
                Task::Segmentation,
                Downstream {
                    train: "ade/train.json".into(),
                    test: "ade/val.json".into(),
                },
            )]
            .into_iter()
            .collect(),
        };
        user.transfer.as_mut().unwrap().tasks = vec![Task::Segmentation, Task::Classification];
        write_toml(&user, &path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.contains("[data.labelled]\ndetection = \"det.json\""),
            "{text}"
        );
        assert!(
            text.contains(
                "[data.downstream.segmentation]\ntrain = \"ade/train.json\"\ntest = \"ade/val.json\""
            ),
            "{text}"
        );
        // Read back, it is refused for the teacher without data, with every other problem.
        user.teacher_epochs = 0;
        write_toml(&user, &path).unwrap();
        assert_eq!(
            MustConfig::read(&path).unwrap_err().to_string(),
            "must: teacher_epochs, student_epochs and shard_size must be at least 1; \
             must.data.labelled: no labelled dataset for the depth teacher (give --labelled depth=FILE \
             or --teacher depth=CHECKPOINT); \
             must.data.downstream: no downstream files for the classification transfer \
             (give --downstream classification=TRAIN,TEST or --transfer none)"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
