//! The [`Trainer`]: a model with its optimiser (AdamW with parameter groups), weight average,
//! learning-rate schedule and loop position, and the four things a training loop does with
//! them: [`Trainer::step`], [`Trainer::validate`], [`Trainer::save`] and resuming
//! ([`Trainer::start`] with `resume`). `train`, the MuST and MCN pipelines and the transfer
//! runs all train through it.

use std::path::Path;
use std::sync::Arc;

use mustard_core::candle_core::{DType, Tensor, Var};
use mustard_core::candle_nn::VarMap;
use mustard_core::io::LoadOptions;
use mustard_core::optim::{
    clip_grad_norm, param_groups, trainable_vars, AdamW, AdamWConfig, Ema, LrSchedule, Optimizer,
    ScheduleKind,
};
use mustard_data::{Dataset, TaskMap};

use crate::checkpoint::{self, LoopState, RunPaths};
use crate::config::{Config, TrainConfig};
use crate::evaluate::{evaluate_at, EvalReport, Resolution};
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
}

/// The model a new run of `config` starts from: seeded variables, then the pretrained backbone
/// (`model.pretrained`) and the backbone and neck of another run (`model.init_from`).
pub fn initial_model(config: &Config) -> Result<(VarMap, MultiTaskModel)> {
    let (varmap, model) =
        MultiTaskModel::build(&config.model, config.seed, &config.device.device()?)?;
    if let Some(source) = &config.model.pretrained {
        let path = mustard_backbone::weights::Resolver::default().resolve(&source.parse()?)?;
        let options = LoadOptions {
            strict: false,
            prefix: format!("{BACKBONE}."),
            skip: vec!["fc.".into()],
        };
        let report = mustard_backbone::weights::load_into(&varmap, &path, &options)?;
        eprintln!("backbone weights from {}: {report}", path.display());
    }
    if let Some(from) = &config.model.init_from {
        let loaded = init_from(&varmap, from)?;
        eprintln!(
            "backbone and neck from {}: {loaded} tensors",
            from.display()
        );
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
            MultiTaskModel::build(&config.model, config.seed, &config.device.device()?)?
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
        let batch = &batch.to_device(self.model.device())?;
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
        let mut grads = losses.total.backward()?;
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
        Ok(StepLosses { total, per_task })
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
    /// the weights as `best.safetensors` when their score is the best so far.
    pub fn validate(&mut self, dataset: Arc<Dataset>) -> Result<EvalReport> {
        let t = &self.train;
        let training = self.ema.as_ref().map(|e| self.swap_in(e)).transpose()?;
        let report = evaluate_at(
            &self.model,
            dataset,
            t.input_size,
            t.batch_size,
            t.workers,
            Resolution::Network,
        )?;
        if report.score() > self.state.best {
            self.state.best = report.score();
            self.state.best_epoch = self.state.epoch;
            checkpoint::save(&self.run.best(), &self.varmap, None, None, self.state)?;
        }
        if let Some(weights) = training {
            self.restore(&weights)?;
        }
        Ok(report)
    }

    /// Writes `last.safetensors`: model, optimiser state, average and loop position.
    pub fn save(&self) -> Result<()> {
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
