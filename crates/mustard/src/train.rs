//! The training loop: AdamW with warm-up and cosine decay, gradient clipping, atomic
//! checkpoints every N steps and every epoch, exact resume, validation every epoch, a progress
//! bar and `metrics.csv`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use mustard_core::candle_core::DType;
use mustard_core::candle_nn::VarMap;
use mustard_core::io::LoadOptions;
use mustard_core::optim::{
    clip_grad_norm, param_groups, trainable_vars, AdamW, AdamWConfig, Ema, LrSchedule, Optimizer,
    ScheduleKind,
};
use mustard_data::synth::{self, SynthConfig};
use mustard_data::{Dataset, Loader, LoaderConfig, Source, Task};
use mustard_pseudo::PseudoSource;

use crate::checkpoint::{self, LoopState, RunPaths};
use crate::config::{Classes, Config};
use crate::evaluate::{evaluate, EvalReport};
use crate::model::MultiTaskModel;
use crate::targets::Encoder;
use crate::{Error, Result};

/// How to run [`train`].
#[derive(Debug, Clone)]
pub struct TrainOptions {
    /// Folder holding the runs (`runs/`).
    pub runs: PathBuf,
    /// Continue `runs/<name>` from its last checkpoint.
    pub resume: bool,
    /// Draw a progress bar on the terminal.
    pub progress: bool,
    /// Stop right after this optimiser step, as if the process were killed just after its
    /// checkpoint (for resume tests and time-boxed runs).
    pub stop_after: Option<u64>,
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
}

/// The synthetic default, generated once under `runs/synth/` and reused.
pub fn synthetic_datasets(config: &Config, runs: &Path) -> Result<(PathBuf, PathBuf)> {
    let s = &config.data.synth;
    let mut paths = Vec::new();
    for (split, images, seed) in [
        ("train", s.train_images, s.seed),
        ("val", s.val_images, s.seed.wrapping_add(1_000_003)),
    ] {
        let dir = runs
            .join("synth")
            // The version tag changes with the scenes, so that older renderings are not reused.
            .join(format!("{split}-{}px-{images}-seed{}-v3", s.size, s.seed));
        let json = dir.join("instances.json");
        if !json.is_file() {
            synth::write(
                &dir,
                &SynthConfig {
                    size: s.size,
                    seed,
                    max_objects: 6,
                },
                images,
                None,
            )?;
        }
        paths.push(json);
    }
    Ok((paths[0].clone(), paths[1].clone()))
}

/// Opens a dataset (a COCO file, or an ImageNet-style `root/<class>/<image>` folder tree) and
/// refuses it when bad, unless `skip_bad` (then each skipped record is printed to stderr).
pub fn open_dataset(path: &Path, root: Option<&Path>, skip_bad: bool) -> Result<Dataset> {
    let ds = if path.is_dir() {
        Dataset::from_class_folders(path)?
    } else {
        Dataset::open(path, root)?
    };
    Ok(ds.require_clean(skip_bad, |p| eprintln!("skipping {p}"))?)
}

/// The class lists of a dataset or pseudo-label store.
pub fn classes_of(ds: &dyn Source) -> Classes {
    classes_from(ds.categories(), ds.label_names())
}

/// The class lists of object categories and image-level class names.
pub fn classes_from(cats: &[mustard_data::coco::Category], labels: &[String]) -> Classes {
    Classes {
        categories: cats.iter().map(|c| c.name.clone()).collect(),
        category_ids: cats.iter().map(|c| c.id).collect(),
        person: mustard_data::coco::person_category(cats),
        joints: mustard_data::coco::num_keypoints(cats),
        labels: labels.to_vec(),
    }
}

fn csv_header(tasks: &[Task]) -> String {
    let mut cols = vec![
        "epoch".to_string(),
        "step".into(),
        "lr".into(),
        "seconds".into(),
        "loss".into(),
    ];
    cols.extend(tasks.iter().map(|t| format!("loss_{t}")));
    cols.extend(tasks.iter().map(|t| format!("val_{t}")));
    cols.push("val_score".into());
    cols.join(",")
}

/// Loads the backbone and neck variables of a mustard checkpoint (a run folder or weights file)
/// into `varmap`; returns how many tensors were loaded. Heads are left as initialised.
pub fn init_from(varmap: &VarMap, from: &Path) -> Result<usize> {
    let file = checkpoint::weights_file(from);
    let tensors: std::collections::HashMap<_, _> =
        mustard_core::io::load_safetensors(&file, &mustard_core::candle_core::Device::Cpu)?
            .into_iter()
            .filter(|(k, _)| k.starts_with("backbone.") || k.starts_with("neck."))
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

/// Copies the averaged weights into `varmap`, returning the training weights.
fn swap_in(varmap: &VarMap, ema: &Ema) -> Result<Vec<(String, mustard_core::candle_core::Tensor)>> {
    let saved = varmap
        .data()
        .lock()
        .expect("VarMap lock poisoned")
        .iter()
        .map(|(k, v)| Ok((k.clone(), v.as_tensor().copy()?)))
        .collect::<Result<Vec<_>>>()?;
    ema.copy_to(varmap)?;
    Ok(saved)
}

fn restore(varmap: &VarMap, weights: &[(String, mustard_core::candle_core::Tensor)]) -> Result<()> {
    let data = varmap.data().lock().expect("VarMap lock poisoned");
    for (k, t) in weights {
        if let Some(v) = data.get(k) {
            v.set(t)?;
        }
    }
    Ok(())
}

/// Draws `results.png` (loss curves and validation metrics per epoch) from `metrics.csv`.
pub fn write_results_png(run: &RunPaths) -> Result<()> {
    let csv = std::fs::read_to_string(run.metrics()).map_err(|e| Error::file(run.metrics(), e))?;
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().unwrap_or_default().split(',').collect();
    let rows: Vec<Vec<f64>> = lines
        .map(|l| {
            l.split(',')
                .map(|v| v.parse().unwrap_or(f64::NAN))
                .collect()
        })
        .collect();
    let column = |name: &str| -> Option<Vec<f64>> {
        let i = header.iter().position(|h| *h == name)?;
        Some(
            rows.iter()
                .map(|r| r.get(i).copied().unwrap_or(f64::NAN))
                .collect(),
        )
    };
    let pick = |prefix: &str| -> Vec<(String, Vec<f64>)> {
        header
            .iter()
            .filter(|h| h.starts_with(prefix))
            .filter_map(|h| column(h).map(|v| (h.trim_start_matches(prefix).to_string(), v)))
            .collect()
    };
    let mut losses = pick("loss_");
    if let Some(total) = column("loss") {
        losses.insert(0, ("total".into(), total));
    }
    let picture = crate::draw::stack(&[
        crate::draw::chart("training loss per epoch", &losses, 640, 220),
        crate::draw::chart("validation (higher is better)", &pick("val_"), 640, 220),
    ]);
    mustard_data::imageio::write_rgb(&run.dir.join("results.png"), &picture)?;
    Ok(())
}

/// Trains (or resumes) the run `config.name` under `options.runs`.
pub fn train(config: &Config, options: &TrainOptions) -> Result<TrainSummary> {
    let started = Instant::now();
    let run = RunPaths::new(&options.runs, &config.name);
    let mut config = if options.resume {
        if !run.last().is_file() {
            return Err(Error::file(run.last(), "no checkpoint to resume from"));
        }
        Config::read(&run.config())?
    } else {
        if run.last().is_file() {
            return Err(Error::config(
                "name",
                format!("{} already holds a trained run; pass --resume to continue it or choose another --name", run.dir.display()),
            ));
        }
        config.clone()
    };
    config.validate()?;
    let root = config.data.root.clone();
    let (train_ds, val_path): (Arc<dyn Source>, Option<PathBuf>) =
        match (&config.data.pseudo, &config.data.train) {
            (Some(store), _) => (
                Arc::new(
                    PseudoSource::open(store, None)?.with_real_labels(config.data.real_labels),
                ),
                config.data.val.clone(),
            ),
            (None, Some(train)) => (
                Arc::new(open_dataset(train, root.as_deref(), config.data.skip_bad)?),
                config.data.val.clone(),
            ),
            (None, None) => {
                let (t, v) = synthetic_datasets(&config, &options.runs)?;
                (Arc::new(open_dataset(&t, None, false)?), Some(v))
            }
        };
    let val_ds = match &val_path {
        Some(p) if config.train.validate => Some(Arc::new(open_dataset(
            p,
            root.as_deref(),
            config.data.skip_bad,
        )?)),
        _ => None,
    };
    if !options.resume {
        config.model.classes = classes_of(train_ds.as_ref());
        // Pseudo depth labels are relative (SPEC §6): train them scale-and-shift invariant.
        if config.data.pseudo.is_some() {
            config.model.relative_depth = true;
        }
    }
    std::fs::create_dir_all(run.dir.join("weights")).map_err(|e| Error::file(&run.dir, e))?;
    config.write(&run.config())?;

    let device = config.device.device()?;
    let varmap = VarMap::new();
    let model = MultiTaskModel::new(
        &config.model,
        crate::init::seeded(&varmap, config.seed, DType::F32, &device),
    )?;
    if let (Some(source), false) = (&config.model.pretrained, options.resume) {
        let source = source.parse()?;
        let path = mustard_backbone::weights::Resolver::default().resolve(&source)?;
        let options = LoadOptions {
            strict: false,
            prefix: "backbone.".into(),
            skip: vec!["fc.".into()],
        };
        let report = mustard_backbone::weights::load_into(&varmap, &path, &options)?;
        eprintln!("backbone weights from {}: {report}", path.display());
    }
    if let (Some(from), false) = (&config.model.init_from, options.resume) {
        let loaded = init_from(&varmap, from)?;
        eprintln!(
            "backbone and neck from {}: {loaded} tensors",
            from.display()
        );
    }
    let t = &config.train;
    let loader_config = LoaderConfig {
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
    };
    let loader = Loader::new(
        train_ds.clone(),
        Arc::new(Encoder::new(&config.model, t.input_size)),
        loader_config,
    )?;
    let per_epoch = loader.batches_per_epoch() as u64;
    let total_steps = t
        .max_steps
        .unwrap_or(u64::MAX)
        .min(per_epoch * t.epochs as u64);
    let schedule = LrSchedule {
        base_lr: t.lr,
        // A warm-up longer than a fifth of the run would leave no time at the full rate.
        warmup_steps: t.warmup_steps.min(total_steps / 5),
        warmup_factor: 0.001,
        kind: ScheduleKind::Cosine {
            total_steps,
            min_factor: 0.01,
        },
    };
    let mut optimizer = AdamW::new(
        param_groups(&varmap, t.weight_decay),
        AdamWConfig {
            lr: t.lr,
            ..Default::default()
        },
    )?;
    let mut state = LoopState {
        best: f64::NEG_INFINITY,
        ..Default::default()
    };
    let mut ema = match t.ema {
        Some(decay) => Some(Ema::new(&varmap, decay, Some(t.ema_ramp))?),
        None => None,
    };
    if options.resume {
        let loaded = checkpoint::load(&run.last(), &varmap)?;
        optimizer.load_state(loaded.optimizer, &run.last())?;
        if let Some(ema) = &mut ema {
            ema.load_state(loaded.ema, &run.last())?;
        }
        state = loaded.state;
    }
    let vars = trainable_vars(&varmap);
    let parameters = vars.iter().map(|(_, v)| v.elem_count()).sum();
    let tasks = config.model.tasks.clone();
    if !run.metrics().is_file() {
        std::fs::write(run.metrics(), csv_header(&tasks) + "\n")
            .map_err(|e| Error::file(run.metrics(), e))?;
    }
    let mut summary = TrainSummary {
        run: run.dir.clone(),
        steps: state.step,
        epoch_losses: Vec::new(),
        validation: None,
        seconds: 0.0,
        parameters,
    };
    let save = |state: LoopState, optimizer: &AdamW, ema: &Option<Ema>| {
        let averages = ema.as_ref().map(Ema::state).transpose()?;
        checkpoint::save(
            &run.last(),
            &varmap,
            Some(optimizer.state()?),
            averages,
            state,
        )
    };

    while state.epoch < t.epochs as u64 && state.step < total_steps {
        let epoch_started = Instant::now();
        let bar = if options.progress {
            ProgressBar::new(per_epoch)
        } else {
            ProgressBar::hidden()
        };
        bar.set_style(
            ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} eta {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.set_prefix(format!("epoch {}/{}", state.epoch + 1, t.epochs));
        bar.set_position(state.batch);
        let mut sums = vec![0f64; tasks.len() + 1];
        let mut count = 0usize;
        let mut images = 0usize;
        for batch in loader.epoch_from(state.epoch, state.batch as usize) {
            let batch = batch?;
            let out = model.forward_t(&batch.images, true)?;
            let losses = model.loss(&out, &batch)?;
            let mut values = Vec::with_capacity(losses.per_task.len());
            for (task, loss) in &losses.per_task {
                let v = loss.to_dtype(DType::F32)?.to_scalar::<f32>()?;
                if !v.is_finite() {
                    return Err(Error::NonFiniteLoss {
                        task: task.to_string(),
                        value: v,
                        step: state.step + 1,
                        checkpoint: run.last().display().to_string(),
                    });
                }
                values.push(v);
            }
            let total = losses.total.to_dtype(DType::F32)?.to_scalar::<f32>()?;
            let mut grads = losses.total.backward()?;
            if let Some(max) = t.clip_grad_norm {
                let norm = clip_grad_norm(&mut grads, &vars, max)?;
                if !norm.is_finite() {
                    return Err(Error::NonFiniteLoss {
                        task: "gradient norm".into(),
                        value: norm as f32,
                        step: state.step + 1,
                        checkpoint: run.last().display().to_string(),
                    });
                }
            }
            optimizer.set_learning_rate(schedule.lr_at(state.step));
            optimizer.step(&grads)?;
            if let Some(ema) = &mut ema {
                ema.update(&varmap)?;
            }
            state.step += 1;
            state.batch += 1;
            sums[0] += total as f64;
            for ((task, _), v) in losses.per_task.iter().zip(&values) {
                if let Some(i) = tasks.iter().position(|t| t == task) {
                    sums[i + 1] += *v as f64;
                }
            }
            count += 1;
            images += batch.meta.len();
            let rate = images as f64 / epoch_started.elapsed().as_secs_f64().max(1e-9);
            let per_task: Vec<String> = losses
                .per_task
                .iter()
                .zip(&values)
                .map(|((t, _), v)| format!("{t} {v:.3}"))
                .collect();
            bar.set_message(format!(
                "loss {total:.3} ({}) {rate:.1} img/s",
                per_task.join(", ")
            ));
            bar.inc(1);
            if state.step % t.checkpoint_every == 0 {
                save(state, &optimizer, &ema)?;
            }
            if options.stop_after == Some(state.step) {
                save(state, &optimizer, &ema)?;
                summary.steps = state.step;
                summary.seconds = started.elapsed().as_secs_f64();
                return Ok(summary);
            }
            if state.step >= total_steps {
                break;
            }
        }
        bar.finish_and_clear();
        let finished_epoch = state.batch >= per_epoch;
        if finished_epoch {
            state.epoch += 1;
            state.batch = 0;
        }
        let validation = match &val_ds {
            Some(ds) if finished_epoch || state.step >= total_steps => {
                // With an average, validate (and keep as best) the averaged weights.
                let training = ema.as_ref().map(|e| swap_in(&varmap, e)).transpose()?;
                let report = evaluate(&model, ds.clone(), t.input_size, t.batch_size, t.workers)?;
                if report.score() > state.best {
                    state.best = report.score();
                    checkpoint::save(&run.best(), &varmap, None, None, state)?;
                }
                if let Some(weights) = training {
                    restore(&varmap, &weights)?;
                }
                Some(report)
            }
            _ => None,
        };
        save(state, &optimizer, &ema)?;
        let mean = |i: usize| {
            if count > 0 {
                sums[i] / count as f64
            } else {
                f64::NAN
            }
        };
        let mut row = vec![
            state.epoch.to_string(),
            state.step.to_string(),
            format!("{:.6e}", optimizer.learning_rate()),
            format!("{:.1}", epoch_started.elapsed().as_secs_f64()),
            format!("{:.5}", mean(0)),
        ];
        row.extend((1..=tasks.len()).map(|i| format!("{:.5}", mean(i))));
        let headline = validation
            .as_ref()
            .map(EvalReport::headline)
            .unwrap_or_default();
        row.extend(tasks.iter().map(|t| {
            headline
                .iter()
                .find(|(h, _)| h == t)
                .map_or(String::new(), |(_, v)| format!("{v:.5}"))
        }));
        row.push(
            validation
                .as_ref()
                .map_or(String::new(), |v| format!("{:.5}", v.score())),
        );
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(run.metrics())
            .map_err(|e| Error::file(run.metrics(), e))?;
        writeln!(file, "{}", row.join(",")).map_err(|e| Error::file(run.metrics(), e))?;
        write_results_png(&run)?;
        if options.progress {
            let val = validation
                .as_ref()
                .map(|v| format!(", validation score {:.4}", v.score()))
                .unwrap_or_default();
            eprintln!("epoch {} done: loss {:.4}{val}", state.epoch, mean(0));
        }
        summary.epoch_losses.push(mean(0));
        if validation.is_some() {
            summary.validation = validation;
        }
    }
    summary.steps = state.step;
    summary.seconds = started.elapsed().as_secs_f64();
    Ok(summary)
}
