//! The [`Trainer`]: a model with its optimiser (AdamW with parameter groups), weight average,
//! learning-rate schedule and loop position, and the four things a training loop does with
//! them: [`Trainer::step`], [`Trainer::validate`], [`Trainer::save`] and resuming
//! ([`Trainer::start`] with `resume`). `train`, the MuST and MCN pipelines and the transfer
//! runs all train through it.

use std::path::Path;
use std::sync::Arc;

use mustard_core::candle_core::{DType, Tensor, Var};
use mustard_core::candle_nn::VarMap;
use mustard_core::dist::{self, Collective};
use mustard_core::io::LoadOptions;
use mustard_core::optim::{
    clip_grad_norm, param_groups, trainable_vars, AdamW, AdamWConfig, Ema, LrSchedule, Optimizer,
    ScheduleKind,
};
use mustard_data::{Dataset, TaskMap};

use crate::checkpoint::{self, LoopState, RunPaths};
use crate::config::{Config, TrainConfig};
use crate::evaluate::{evaluate_shared, EvalReport, Resolution};
use crate::model::MultiTaskModel;
use crate::targets::Batch;
use crate::tasks::{BACKBONE, NECK};
use crate::{Error, Result};

/// The losses of one step, as numbers.
#[derive(Debug, Clone)]
pub struct StepLosses {
    /// The weighted total.
    pub total: f32,
    /// Each task's loss.
    pub per_task: TaskMap<f32>,
}

/// A model being trained, with everything a checkpoint holds.
pub struct Trainer {
    varmap: VarMap,
    model: MultiTaskModel,
    vars: Vec<(String, Var)>,
    optimizer: AdamW,
    ema: Option<Ema>,
    schedule: LrSchedule,
    total_steps: u64,
    state: LoopState,
    train: TrainConfig,
    run: RunPaths,
    /// Leave out validation images that cannot be read (`data.skip_bad`).
    skip_bad: bool,
    /// The processes training this model together (one without a launcher).
    world: Arc<dyn Collective>,
}

/// The model a new run of `config` starts from: seeded variables, then the pretrained backbone
/// (`model.pretrained`) and the backbone and neck of another run (`model.init_from`).
pub fn initial_model(config: &Config) -> Result<(VarMap, MultiTaskModel)> {
    let (varmap, model) = MultiTaskModel::for_run(config)?;
    if let Some(source) = &config.model.pretrained {
        let path = mustard_backbone::weights::Resolver::default().resolve(&source.parse()?)?;
        let options = LoadOptions {
            strict: false,
            prefix: format!("{BACKBONE}."),
            skip: vec!["fc.".into()],
        };
        let report = mustard_backbone::weights::load_into(&varmap, &path, &options)?;
        if dist::is_main() {
            eprintln!("backbone weights from {}: {report}", path.display());
        }
    }
    if let Some(from) = &config.model.init_from {
        let loaded = init_from(&varmap, from)?;
        if dist::is_main() {
            eprintln!(
                "backbone and neck from {}: {loaded} tensors",
                from.display()
            );
        }
    }
    Ok((varmap, model))
}

/// Loads the backbone and neck variables of a mustard checkpoint (a run folder or weights file;
/// its weight averages when it kept them) into `varmap`; returns how many tensors were loaded.
/// Heads are left as initialised.
pub fn init_from(varmap: &VarMap, from: &Path) -> Result<usize> {
    let file = checkpoint::weights_file(from);
    let (backbone, neck) = (format!("{BACKBONE}."), format!("{NECK}."));
    let tensors: std::collections::HashMap<_, _> = checkpoint::model_tensors_of(&file)?
        .into_iter()
        .filter(|(k, _)| k.starts_with(&backbone) || k.starts_with(&neck))
        .collect();
    let options = LoadOptions {
        strict: false,
        prefix: String::new(),
        skip: Vec::new(),
    };
    let report = mustard_core::io::load_weights(varmap, &tensors, &options, &file)?;
    if !report.mismatched.is_empty() || !report.unexpected.is_empty() || report.loaded == 0 {
        return Err(Error::file(
            &file,
            format!("its backbone and neck do not fit this model: {report}"),
        ));
    }
    Ok(report.loaded)
}

impl Trainer {
    /// A trainer for `config` writing into `run`: a new model ([`initial_model`]), or with
    /// `resume` the model, optimiser, average and position of `run`'s last checkpoint. The
    /// schedule is set by [`Trainer::plan`] once the data's size is known.
    pub fn start(config: &Config, run: &RunPaths, resume: bool) -> Result<Self> {
        let (varmap, model) = if resume {
            MultiTaskModel::for_run(config)?
        } else {
            initial_model(config)?
        };
        let t = &config.train;
        let mut optimizer = AdamW::new(
            param_groups(&varmap, t.weight_decay),
            AdamWConfig {
                lr: t.lr,
                ..Default::default()
            },
        )?;
        let mut ema = t
            .ema
            .map(|decay| Ema::new(&varmap, decay, Some(t.ema_ramp)))
            .transpose()?;
        let mut state = LoopState {
            best: f64::NEG_INFINITY,
            ..Default::default()
        };
        if resume {
            let loaded = checkpoint::load(&run.last(), &varmap)?;
            optimizer.load_state(loaded.optimizer, &run.last())?;
            if let Some(ema) = &mut ema {
                ema.load_state(loaded.ema, &run.last())?;
            }
            state = loaded.state;
        }
        Ok(Self {
            vars: trainable_vars(&varmap),
            varmap,
            model,
            optimizer,
            ema,
            schedule: LrSchedule::constant(t.lr),
            total_steps: 0,
            state,
            train: t.clone(),
            run: run.clone(),
            skip_bad: config.data.skip_bad,
            world: dist::world(),
        })
    }

    /// Sets the length of the run from the batches of one epoch: `epochs` of them, or
    /// `max_steps`; a linear warm-up (at most a fifth of the run), then cosine decay to 1%.
    pub fn plan(&mut self, batches_per_epoch: u64) {
        let t = &self.train;
        self.total_steps = t
            .max_steps
            .unwrap_or(u64::MAX)
            .min(batches_per_epoch * t.epochs as u64);
        self.schedule = LrSchedule {
            base_lr: t.lr,
            warmup_steps: t.warmup_steps.min(self.total_steps / 5),
            warmup_factor: 0.001,
            kind: ScheduleKind::Cosine {
                total_steps: self.total_steps,
                min_factor: 0.01,
            },
        };
    }

    /// Whether every planned epoch and step is done, or training stopped early.
    pub fn finished(&self) -> bool {
        self.state.epoch >= self.train.epochs as u64
            || self.state.step >= self.total_steps
            || self.stopped_early()
    }

    /// Whether the validation score has not improved for `patience` epochs.
    pub fn stopped_early(&self) -> bool {
        match self.train.patience {
            Some(patience) => {
                self.state.best.is_finite()
                    && self.state.epoch >= self.state.best_epoch + patience.max(1)
            }
            None => false,
        }
    }

    /// One optimiser step on `batch`: forward, losses (a non-finite one stops before the
    /// update), backward, clipping, AdamW at the scheduled rate, the weight average.
    pub fn step(&mut self, batch: &Batch) -> Result<StepLosses> {
        let batch = &batch.for_model(&self.model)?;
        let out = self.model.forward_t(&batch.images, true)?;
        let losses = self.model.loss(&out, batch)?;
        let mut per_task = TaskMap::new();
        for (task, loss) in losses.per_task.iter() {
            let v = scalar(loss)?;
            if !v.is_finite() {
                return Err(self.diverged(task.name(), v));
            }
            per_task.insert(task, v);
        }
        let total = scalar(&losses.total)?;
        let grads = losses.total.backward()?;
        self.update(grads)?;
        Ok(StepLosses { total, per_task })
    }

    /// Clipping, AdamW at the scheduled rate and the weight average on `grads`; one step done.
    fn update(&mut self, mut grads: mustard_core::candle_core::backprop::GradStore) -> Result<()> {
        if let Some(max) = self.train.clip_grad_norm {
            let norm = clip_grad_norm(&mut grads, &self.vars, max)?;
            if !norm.is_finite() {
                return Err(self.diverged("gradient norm", norm as f32));
            }
        }
        self.optimizer
            .set_learning_rate(self.schedule.lr_at(self.state.step));
        self.optimizer.step(&grads)?;
        if let Some(ema) = &mut self.ema {
            ema.update(&self.varmap)?;
        }
        self.state.step += 1;
        self.state.batch += 1;
        Ok(())
    }

    /// One step of the global batch whose share of this process is `batch` (None: nothing of
    /// it here). With one process: [`Trainer::step`], or the batch passed over when every image
    /// of it was left out. With several, every process calls it for every batch of the epoch:
    /// the loss normalisers and (with `train.sync_batch_norm`) BatchNorm's statistics are
    /// summed over the processes inside the step, the gradients are summed in a few flat
    /// buckets, and clipping, AdamW, the average and the schedule then run the same on every
    /// process. A batch of which some process holds nothing (its images left out as
    /// unreadable) is passed over by all. Returns the losses summed over the processes.
    pub fn step_shared(&mut self, batch: Option<&Batch>) -> Result<Option<StepLosses>> {
        if self.world.size() == 1 {
            return match batch {
                Some(b) => self.step(b).map(Some),
                None => {
                    self.state.batch += 1;
                    Ok(None)
                }
            };
        }
        let world = self.world.clone();
        let mut holding = [f64::from(u8::from(
            batch.is_some_and(|b| !b.meta.is_empty()),
        ))];
        world.all_reduce_f64(&mut holding)?;
        let Some(batch) = batch.filter(|_| holding[0] == world.size() as f64) else {
            self.state.batch += 1;
            return Ok(None);
        };
        let batch = &batch.for_model(&self.model)?;
        let scope = dist::enter(dist::Scope {
            world: world.clone(),
            sync_batch_norm: self.train.sync_batch_norm,
        });
        let out = self.model.forward_t(&batch.images, true)?;
        let losses = self.model.loss(&out, batch)?;
        // This process's parts of the global losses (each divided by a global count), summed.
        let tasks: Vec<_> = losses.per_task.iter().map(|(t, _)| t).collect();
        let mut values = vec![scalar(&losses.total)? as f64];
        for (_, loss) in losses.per_task.iter() {
            values.push(scalar(loss)? as f64);
        }
        world.all_reduce_f64(&mut values)?;
        let mut per_task = TaskMap::new();
        for (&task, &v) in tasks.iter().zip(&values[1..]) {
            if !v.is_finite() {
                return Err(self.diverged(task.name(), v as f32));
            }
            per_task.insert(task, v as f32);
        }
        let total = values[0] as f32;
        let mut grads = losses.total.backward()?;
        drop(scope);
        dist::all_reduce_grads(world.as_ref(), &mut grads, &self.vars)?;
        self.update(grads)?;
        Ok(Some(StepLosses { total, per_task }))
    }

    /// Takes rank 0's loop position (its validation decides the best epoch and early
    /// stopping), so that every process stops together.
    pub fn share_decisions(&mut self) -> Result<()> {
        if self.world.size() == 1 {
            return Ok(());
        }
        let s = &self.state;
        let mut bytes: Vec<u8> =
            [s.best.to_le_bytes(), (s.best_epoch as f64).to_le_bytes()].concat();
        self.world.broadcast(0, &mut bytes)?;
        let number =
            |i: usize| f64::from_le_bytes(bytes[8 * i..8 * i + 8].try_into().expect("8 bytes"));
        self.state.best = number(0);
        self.state.best_epoch = number(1) as u64;
        Ok(())
    }

    /// The processes training this model.
    pub fn world(&self) -> &Arc<dyn Collective> {
        &self.world
    }

    fn diverged(&self, task: &str, value: f32) -> Error {
        Error::NonFiniteLoss {
            task: task.to_string(),
            value,
            step: self.state.step + 1,
            checkpoint: self.run.last().display().to_string(),
        }
    }

    /// Evaluates on `dataset` (with the averaged weights when there is an average) and keeps
    /// the weights as `best.safetensors` when their score is the best so far. Every process of
    /// the run calls it and runs the model on its share of the batches; rank 0 scores, keeps
    /// the best weights and gets the report (`None` on the others, which take rank 0's
    /// decisions from [`Trainer::share_decisions`]).
    pub fn validate(&mut self, dataset: Arc<Dataset>) -> Result<Option<EvalReport>> {
        let t = &self.train;
        let training = self.ema.as_ref().map(|e| self.swap_in(e)).transpose()?;
        let report = evaluate_shared(
            &self.model,
            dataset,
            t.input_size,
            t.batch_size,
            t.workers,
            Resolution::Network,
            self.skip_bad,
        )?;
        if let Some(report) = &report {
            if report.score() > self.state.best {
                self.state.best = report.score();
                self.state.best_epoch = self.state.epoch;
                checkpoint::save(&self.run.best(), &self.varmap, None, None, self.state)?;
            }
        }
        if let Some(weights) = training {
            self.restore(&weights)?;
        }
        Ok(report)
    }

    /// Writes `last.safetensors`: model, optimiser state, average and loop position (rank 0
    /// alone: every process holds the same weights).
    pub fn save(&self) -> Result<()> {
        if self.world.rank() != 0 {
            return Ok(());
        }
        let averages = self.ema.as_ref().map(Ema::state).transpose()?;
        checkpoint::save(
            &self.run.last(),
            &self.varmap,
            Some(self.optimizer.state()?),
            averages,
            self.state,
        )
    }

    /// Marks the current epoch done when all its batches were consumed; returns whether it was.
    pub fn end_epoch(&mut self, batches_per_epoch: u64) -> bool {
        let finished = self.state.batch >= batches_per_epoch;
        if finished {
            self.state.epoch += 1;
            self.state.batch = 0;
        }
        finished
    }

    /// The run's paths.
    pub fn run(&self) -> &RunPaths {
        &self.run
    }

    /// Where the loop stands.
    pub fn state(&self) -> LoopState {
        self.state
    }

    /// The planned number of steps.
    pub fn total_steps(&self) -> u64 {
        self.total_steps
    }

    /// The model.
    pub fn model(&self) -> &MultiTaskModel {
        &self.model
    }

    /// The optimiser's current learning rate.
    pub fn learning_rate(&self) -> f64 {
        self.optimizer.learning_rate()
    }

    /// Trainable parameters.
    pub fn parameters(&self) -> usize {
        self.vars.iter().map(|(_, v)| v.elem_count()).sum()
    }

    /// Copies the averaged weights into the model, returning the training weights.
    fn swap_in(&self, ema: &Ema) -> Result<Vec<(String, Tensor)>> {
        let saved = self
            .varmap
            .data()
            .lock()
            .expect("VarMap lock poisoned")
            .iter()
            .map(|(k, v)| Ok((k.clone(), v.as_tensor().copy()?)))
            .collect::<Result<Vec<_>>>()?;
        ema.copy_to(&self.varmap)?;
        Ok(saved)
    }

    fn restore(&self, weights: &[(String, Tensor)]) -> Result<()> {
        let data = self.varmap.data().lock().expect("VarMap lock poisoned");
        for (k, t) in weights {
            if let Some(v) = data.get(k) {
                v.set(t)?;
            }
        }
        Ok(())
    }
}

fn scalar(t: &Tensor) -> Result<f32> {
    Ok(t.to_dtype(DType::F32)?.to_scalar::<f32>()?)
}
