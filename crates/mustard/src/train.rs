//! The training loop: epochs of [`Trainer::step`] over the loader, atomic checkpoints every N
//! steps and every epoch, exact resume, validation every epoch, a progress bar and
//! `metrics.csv`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use mustard_data::{Dataset, Loader, LoaderConfig, TaskMap};

use crate::checkpoint::RunPaths;
use crate::config::Config;
use crate::datasets::TrainData;
use crate::evaluate::EvalReport;
use crate::log::{progress_bar, EpochRow, MetricsLog};
use crate::targets::Encoder;
use crate::trainer::Trainer;
use crate::{Error, Result};

pub use crate::datasets::{classes_from, classes_of, open_dataset, synthetic_datasets};
pub use crate::log::write_results_png;
pub use crate::trainer::init_from;

/// How to run [`train`] and [`resume`].
#[derive(Debug, Clone)]
pub struct TrainOptions {
    /// Folder holding the runs (`runs/`).
    pub runs: PathBuf,
    /// Draw a progress bar on the terminal.
    pub progress: bool,
    /// Stop right after this optimiser step, as if the process were killed just after its
    /// checkpoint (for resume tests and time-boxed runs).
    pub stop_after: Option<u64>,
    /// On resume, leave out images that cannot be read from now on (saved in the run's config;
    /// a new run takes `data.skip_bad` from its config).
    pub skip_bad: bool,
}

/// What a training run did.
#[derive(Debug, Clone)]
pub struct TrainSummary {
    /// The run folder.
    pub run: PathBuf,
    /// Optimiser steps taken in total.
    pub steps: u64,
    /// Mean total loss of each epoch trained in this call.
    pub epoch_losses: Vec<f64>,
    /// The last validation.
    pub validation: Option<EvalReport>,
    /// Wall time of this call.
    pub seconds: f64,
    /// Trainable parameters.
    pub parameters: usize,
    /// The best validation score and the epoch that reached it (`best.safetensors`).
    pub best: Option<(f64, u64)>,
    /// Whether training stopped before its last epoch (`train.patience`).
    pub stopped_early: bool,
    /// Training images left out because they cannot be read (`data.skip_bad`), each with why.
    pub skipped: Vec<String>,
    /// With several processes: what this process's all-reduces carried during this call.
    pub traffic: Option<mustard_core::dist::Traffic>,
    /// Optimiser steps taken by this call (`steps` counts those before a resume too).
    pub steps_this_call: u64,
}

/// Trains a new run `config.name` under `options.runs`. A folder that already holds a run of
/// the same config is continued from its last checkpoint (the same command, run again after
/// an interruption, finishes the run); one of another config is refused.
pub fn train(config: &Config, options: &TrainOptions) -> Result<TrainSummary> {
    let run = RunPaths::new(&options.runs, &config.name);
    if run.last().is_file() {
        let saved = Config::read(&run.config()).ok();
        let Some(mut saved) = saved.filter(|saved| same_run(saved, config)) else {
            return Err(Error::config(
                "name",
                format!("{} already holds a run of another config; pass --resume to continue it with its own config, or choose another --name", run.dir.display()),
            ));
        };
        if options.progress && mustard_core::dist::is_main() {
            let step = crate::checkpoint::saved_step(&run.last()).unwrap_or(0);
            eprintln!(
                "{} holds this run at step {step}: continuing it",
                run.dir.display()
            );
        }
        saved.data.skip_bad |= config.data.skip_bad || options.skip_bad;
        return run_loop(saved, run, options, true);
    }
    config.validate()?;
    run_loop(config.clone(), run, options, false)
}

/// Whether `saved` (a run's config, its classes filled from the data) is the run `config` asks
/// for: equal but for what training fills in and what a resume may change (`--skip-bad`).
fn same_run(saved: &Config, config: &Config) -> bool {
    let mut a = saved.clone();
    let mut b = config.clone();
    b.model.classes = a.model.classes.clone();
    b.model.relative_depth = a.model.relative_depth;
    a.data.skip_bad = false;
    b.data.skip_bad = false;
    a == b
}

/// Continues the run `name` under `options.runs` from its last checkpoint, with its saved
/// config.
pub fn resume(name: &str, options: &TrainOptions) -> Result<TrainSummary> {
    let run = RunPaths::new(&options.runs, name);
    if !run.last().is_file() {
        return Err(Error::file(run.last(), "no checkpoint to resume from"));
    }
    let mut config = Config::read(&run.config())?;
    config.data.skip_bad |= options.skip_bad;
    run_loop(config, run, options, true)
}

/// Trains `config` under `runs` unless its `done` marker says it finished (then returns 0 s);
/// a partial run is resumed. The marker is written when training ends, so the stages of a
/// pipeline are skipped on a rerun.
pub fn train_unless_done(config: &Config, runs: &Path, progress: bool) -> Result<f64> {
    let run = RunPaths::new(runs, &config.name);
    let done = run.dir.join("done");
    if done.is_file() {
        return Ok(0.0);
    }
    let options = TrainOptions {
        runs: runs.to_path_buf(),
        progress,
        stop_after: None,
        skip_bad: config.data.skip_bad,
    };
    let summary = if run.last().is_file() {
        resume(&config.name, &options)?
    } else {
        train(config, &options)?
    };
    let world = mustard_core::dist::world();
    if world.rank() == 0 {
        std::fs::write(&done, format!("{}\n", summary.steps)).map_err(|e| Error::io(&done, e))?;
    }
    world.barrier()?;
    Ok(summary.seconds)
}

/// Where a pipeline's stage stands before [`train_unless_done`] runs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StageState {
    /// Finished earlier: it is reused as it is.
    Finished,
    /// Interrupted after a checkpoint at this step: it resumes there.
    Interrupted(u64),
    /// Not begun.
    New,
}

impl StageState {
    /// The state of run `name` under `runs`.
    pub fn of(runs: &Path, name: &str) -> StageState {
        let run = RunPaths::new(runs, name);
        if run.dir.join("done").is_file() {
            StageState::Finished
        } else if run.last().is_file() {
            StageState::Interrupted(crate::checkpoint::saved_step(&run.last()).unwrap_or(0))
        } else {
            StageState::New
        }
    }

    /// What is done with the stage, for a progress line: `what` is the model ("the detection
    /// teacher"), `training` what a new run does ("training the detection teacher on x.json").
    pub fn say(self, what: &str, training: &str) -> String {
        match self {
            StageState::Finished => format!("reusing the finished {what}"),
            StageState::Interrupted(step) => format!("resuming the {what} at step {step}"),
            StageState::New => training.to_string(),
        }
    }
}

/// What one epoch of the loop ended with.
enum EpochEnd {
    /// The epoch (or the planned steps) ran out.
    Done { losses: EpochLosses },
    /// `stop_after` was reached.
    Stopped,
}

/// Sums of one epoch's losses.
#[derive(Default)]
struct EpochLosses {
    total: f64,
    per_task: TaskMap<f64>,
    count: usize,
}

impl EpochLosses {
    fn mean_total(&self) -> f64 {
        self.mean(self.total)
    }

    fn mean(&self, sum: f64) -> f64 {
        if self.count > 0 {
            sum / self.count as f64
        } else {
            f64::NAN
        }
    }
}

fn run_loop(
    mut config: Config,
    run: RunPaths,
    options: &TrainOptions,
    resume: bool,
) -> Result<TrainSummary> {
    let started = Instant::now();
    config.numerics.apply();
    let world = mustard_core::dist::world();
    let main = world.rank() == 0;
    // Every process opens the data and builds the model; the first that fails ends them all
    // with its error.
    let setup = (|| -> Result<_> {
        if world.size() > config.train.batch_size {
            return Err(Error::config(
                "train.batch_size",
                format!(
                    "{} is smaller than the {} processes: batch_size is the global batch, and every process needs a share of it",
                    config.train.batch_size,
                    world.size()
                ),
            ));
        }
        let data = TrainData::open(&config, &options.runs)?;
        if config.train.patience.is_some() && data.val.is_none() {
            return Err(Error::config(
                "train.patience",
                "early stopping needs a validation set: give --val (or data.val)",
            ));
        }
        if !resume {
            config.model.classes = classes_of(data.train.as_ref());
            // Pseudo depth labels are relative (SPEC §6): train them scale-and-shift invariant.
            if config.data.pseudo.is_some() {
                config.model.relative_depth = true;
            }
        }
        let trainer = Trainer::start(&config, &run, resume)?;
        let loader = Loader::new(
            data.train.clone(),
            Arc::new(
                trainer
                    .model()
                    .encoder_for(data.train.as_ref(), config.train.input_size),
            ),
            loader_config(&config, world.as_ref()),
        )?;
        Ok((data, trainer, loader))
    })();
    let (data, mut trainer, loader) = mustard_core::dist::agree(
        world.as_ref(),
        setup.map_err(|e| mustard_core::error_chain(&e)),
    )
    .map_err(Error::Process)?;
    // Rank 0 alone writes the run folder.
    let log = if main {
        let weights = run.dir.join("weights");
        std::fs::create_dir_all(&weights).map_err(|e| Error::io(&weights, e))?;
        config.write(&run.config())?;
        Some(MetricsLog::open(&run, &config.model.tasks)?)
    } else {
        None
    };
    let options = &TrainOptions {
        progress: options.progress && main,
        ..options.clone()
    };
    let per_epoch = loader.batches_per_epoch() as u64;
    trainer.plan(per_epoch);
    let mut summary = TrainSummary {
        run: run.dir.clone(),
        steps: trainer.state().step,
        epoch_losses: Vec::new(),
        validation: None,
        seconds: 0.0,
        parameters: trainer.parameters(),
        best: None,
        stopped_early: false,
        skipped: Vec::new(),
        traffic: None,
        steps_this_call: 0,
    };
    let traffic_before = world.traffic();
    let first_step = trainer.state().step;
    while !trainer.finished() {
        let epoch_started = Instant::now();
        let losses = match run_epoch(&mut trainer, &loader, &config, options)? {
            EpochEnd::Done { losses } => losses,
            EpochEnd::Stopped => break,
        };
        let finished_epoch = trainer.end_epoch(per_epoch);
        // Every process runs its share of the validation batches; rank 0 scores and decides
        // (best weights, early stopping), the others take its decisions.
        let validation = match &data.val {
            Some(ds) if finished_epoch || trainer.state().step >= trainer.total_steps() => {
                trainer.validate(ds.clone())?
            }
            _ => None,
        };
        trainer.share_decisions()?;
        trainer.save()?;
        if let Some(log) = &log {
            end_epoch(
                &trainer,
                log,
                &losses,
                validation.as_ref(),
                epoch_started,
                options,
                loader.skipped().len(),
            )?;
        }
        summary.epoch_losses.push(losses.mean_total());
        if validation.is_some() {
            summary.validation = validation;
        }
        if trainer.stopped_early() && options.progress {
            let s = trainer.state();
            eprintln!(
                "stopping early: the validation score has not improved for {} epochs (best {:.4} after epoch {})",
                s.epoch - s.best_epoch,
                s.best,
                s.best_epoch
            );
        }
    }
    // The last validation's precision–recall curves and confusion matrices.
    if let Some(v) = &summary.validation {
        v.write_plots(&run.dir)?;
    }
    // Every process returns once rank 0's last checkpoint is on disk.
    world.barrier()?;
    let state = trainer.state();
    summary.best = state
        .best
        .is_finite()
        .then_some((state.best, state.best_epoch));
    summary.stopped_early = trainer.stopped_early();
    summary.steps = trainer.state().step;
    summary.skipped = loader.skipped().into_iter().map(|(_, why)| why).collect();
    summary.steps_this_call = summary.steps - first_step;
    if world.size() > 1 {
        let now = world.traffic();
        summary.traffic = Some(mustard_core::dist::Traffic {
            calls: now.calls - traffic_before.calls,
            bytes: now.bytes - traffic_before.bytes,
            seconds: now.seconds - traffic_before.seconds,
        });
    }
    summary.seconds = started.elapsed().as_secs_f64();
    Ok(summary)
}

/// Writes the epoch's row to the log and tells the terminal.
fn end_epoch(
    trainer: &Trainer,
    log: &MetricsLog,
    losses: &EpochLosses,
    validation: Option<&EvalReport>,
    started: Instant,
    options: &TrainOptions,
    skipped: usize,
) -> Result<()> {
    let state = trainer.state();
    let task_losses = losses.per_task.map(|_, &sum| losses.mean(sum));
    log.append(&EpochRow {
        epoch: state.epoch,
        step: state.step,
        lr: trainer.learning_rate(),
        seconds: started.elapsed().as_secs_f64(),
        loss: losses.mean_total(),
        task_losses: &task_losses,
        validation,
        skipped,
    })?;
    if options.progress {
        let val = validation
            .map(|v| format!(", validation score {:.4}", v.score()))
            .unwrap_or_default();
        eprintln!(
            "epoch {} done: loss {:.4}{val}",
            state.epoch,
            losses.mean_total()
        );
    }
    Ok(())
}

fn loader_config(config: &Config, world: &dyn mustard_core::dist::Collective) -> LoaderConfig {
    let t = &config.train;
    LoaderConfig {
        batch_size: t.batch_size,
        prefetch: 2,
        shuffle: true,
        drop_last: true,
        seed: config.seed,
        threads: t.workers,
        augment: if t.augment {
            mustard_data::augment::AugmentConfig::train_at_strength(
                t.input_size,
                t.augment_strength,
            )
        } else {
            mustard_data::augment::AugmentConfig::eval(t.input_size)
        },
        skip_bad: config.data.skip_bad,
        share: mustard_data::Share {
            rank: world.rank(),
            processes: world.size(),
        },
    }
}

/// The rest of the current epoch: steps, progress, checkpoints every `checkpoint_every`.
fn run_epoch(
    trainer: &mut Trainer,
    loader: &Loader<Encoder>,
    config: &Config,
    options: &TrainOptions,
) -> Result<EpochEnd> {
    let t = &config.train;
    let started = Instant::now();
    let state = trainer.state();
    let bar = progress_bar(
        options.progress,
        loader.batches_per_epoch() as u64,
        "{prefix} [{bar:30}] {pos}/{len} {msg} eta {eta}",
    );
    bar.set_prefix(format!("epoch {}/{}", state.epoch + 1, t.epochs));
    bar.set_position(state.batch);
    let mut sums = EpochLosses::default();
    let mut images = 0usize;
    let mut epoch = loader.epoch_from(state.epoch, state.batch as usize);
    while let Some(slot) = epoch.next_slot() {
        for (_, why) in loader.take_skipped() {
            crate::log::say(&bar, options.progress, format!("left out {why}"));
        }
        let batch = slot.map_err(|e| stopped_by_data(trainer, e))?;
        // A batch whose every image was left out counts as done (on every process).
        let Some(losses) = trainer.step_shared(batch.as_ref())? else {
            bar.inc(1);
            continue;
        };
        let batch = batch.expect("a step was taken on a batch");
        sums.total += losses.total as f64;
        for (task, &v) in losses.per_task.iter() {
            if config.model.tasks.contains(&task) {
                match sums.per_task.get_mut(task) {
                    Some(sum) => *sum += v as f64,
                    None => {
                        sums.per_task.insert(task, v as f64);
                    }
                }
            }
        }
        sums.count += 1;
        images += batch.meta.len();
        let rate = images as f64 / started.elapsed().as_secs_f64().max(1e-9);
        let per_task: Vec<String> = losses
            .per_task
            .iter()
            .map(|(t, v)| format!("{t} {v:.3}"))
            .collect();
        bar.set_message(format!(
            "loss {:.3} ({}) {rate:.1} img/s",
            losses.total,
            per_task.join(", ")
        ));
        bar.inc(1);
        let step = trainer.state().step;
        if step % t.checkpoint_every == 0 {
            trainer.save()?;
        }
        if options.stop_after == Some(step) {
            trainer.save()?;
            return Ok(EpochEnd::Stopped);
        }
        if step >= trainer.total_steps() {
            break;
        }
    }
    for (_, why) in loader.take_skipped() {
        crate::log::say(&bar, options.progress, format!("left out {why}"));
    }
    bar.finish_and_clear();
    Ok(EpochEnd::Done { losses: sums })
}

/// A loader error during training, saying where the run can be resumed from.
fn stopped_by_data(trainer: &Trainer, e: mustard_data::Error) -> Error {
    let last = trainer.run().last();
    let resume = if last.is_file() {
        format!(
            "the run resumes from its last checkpoint ({}), with --resume or by running the same command again",
            last.display()
        )
    } else {
        "no checkpoint was written yet".to_string()
    };
    Error::DataStopped {
        reason: e.to_string(),
        step: trainer.state().step + 1,
        resume,
    }
}

/// The validation set of a run's config (the synthetic default's when it trained on neither
/// a dataset nor a validation set), for `eval` without `--data`.
pub fn validation_set(config: &Config, runs: &Path) -> Result<Option<Arc<Dataset>>> {
    let path = match (&config.data.val, &config.data.train) {
        (Some(v), _) => v.clone(),
        (None, None) => synthetic_datasets(config, runs)?.1,
        (None, Some(_)) => return Ok(None),
    };
    Ok(Some(Arc::new(open_dataset(
        &path,
        config.data.root.as_deref(),
        false,
    )?)))
}
