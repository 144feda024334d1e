//! Checkpoints: one safetensors file holding the model's variables (by their names), the
//! optimiser state (`optimizer.*`) and the loop position (`state.*`), written atomically so a
//! killed process leaves the previous checkpoint intact.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use mustard_core::candle_core::{Device, Tensor};
use mustard_core::candle_nn::VarMap;
use mustard_core::io::{load_weights, LoadOptions};

use crate::config::Config;
use crate::model::MultiTaskModel;
use crate::{Error, Result};

/// Where the training loop stands.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct LoopState {
    /// Optimiser steps taken.
    pub step: u64,
    /// Current epoch.
    pub epoch: u64,
    /// Batches of the current epoch already consumed.
    pub batch: u64,
    /// Best validation score so far.
    pub best: f64,
    /// The epoch that scored `best` (0 before any validation).
    pub best_epoch: u64,
}

/// The files of a run.
#[derive(Debug, Clone)]
pub struct RunPaths {
    /// `runs/<name>`.
    pub dir: PathBuf,
}

impl RunPaths {
    /// The run folder `root/name`.
    pub fn new(root: &Path, name: &str) -> Self {
        Self {
            dir: root.join(name),
        }
    }

    /// `config.toml`.
    pub fn config(&self) -> PathBuf {
        self.dir.join("config.toml")
    }

    /// `weights/last.safetensors`.
    pub fn last(&self) -> PathBuf {
        self.dir.join("weights").join("last.safetensors")
    }

    /// `weights/best.safetensors`.
    pub fn best(&self) -> PathBuf {
        self.dir.join("weights").join("best.safetensors")
    }

    /// `metrics.csv`.
    pub fn metrics(&self) -> PathBuf {
        self.dir.join("metrics.csv")
    }
}

fn model_tensors(varmap: &VarMap) -> HashMap<String, Tensor> {
    varmap
        .data()
        .lock()
        .expect("VarMap lock poisoned")
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
        .collect()
}

/// Writes model, optimiser state, weight averages and loop state to `path` atomically.
pub fn save(
    path: &Path,
    varmap: &VarMap,
    optimizer: Option<HashMap<String, Tensor>>,
    ema: Option<HashMap<String, Tensor>>,
    state: LoopState,
) -> Result<()> {
    let mut all = model_tensors(varmap);
    for (k, v) in optimizer.unwrap_or_default() {
        all.insert(format!("optimizer.{k}"), v);
    }
    for (k, v) in ema.unwrap_or_default() {
        all.insert(format!("ema.{k}"), v);
    }
    let cpu = Device::Cpu;
    all.insert(
        "state.step".into(),
        Tensor::new(&[state.step as i64], &cpu)?,
    );
    all.insert(
        "state.epoch".into(),
        Tensor::new(&[state.epoch as i64], &cpu)?,
    );
    all.insert(
        "state.batch".into(),
        Tensor::new(&[state.batch as i64], &cpu)?,
    );
    all.insert("state.best".into(), Tensor::new(&[state.best], &cpu)?);
    all.insert(
        "state.best_epoch".into(),
        Tensor::new(&[state.best_epoch as i64], &cpu)?,
    );
    mustard_core::io::save_safetensors(&all, path)?;
    Ok(())
}

/// The optimiser step a checkpoint was written at, from its `state.step` entry alone (the
/// safetensors header and eight bytes are read, not the weights).
pub fn saved_step(path: &Path) -> Result<u64> {
    use std::io::{Read, Seek, SeekFrom};
    let bad = |why: &str| Error::file(path, format!("not a mustard checkpoint: {why}"));
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len).map_err(|e| Error::io(path, e))?;
    let len = u64::from_le_bytes(len);
    if len > 100 << 20 {
        return Err(bad("its header is larger than 100 MiB"));
    }
    let mut header = vec![0u8; len as usize];
    f.read_exact(&mut header).map_err(|e| Error::io(path, e))?;
    let header: serde_json::Value =
        serde_json::from_slice(&header).map_err(|_| bad("its header is not JSON"))?;
    let entry = &header["state.step"];
    if entry["dtype"] != "I64" {
        return Err(bad("no 64-bit `state.step` entry"));
    }
    let start = entry["data_offsets"][0]
        .as_u64()
        .ok_or_else(|| bad("`state.step` has no data offsets"))?;
    f.seek(SeekFrom::Start(8 + len + start))
        .map_err(|e| Error::io(path, e))?;
    let mut step = [0u8; 8];
    f.read_exact(&mut step).map_err(|e| Error::io(path, e))?;
    Ok(i64::from_le_bytes(step).max(0) as u64)
}

/// A loaded checkpoint, split into its parts.
pub struct Loaded {
    /// Optimiser state (keys without the `optimizer.` prefix).
    pub optimizer: HashMap<String, Tensor>,
    /// Weight averages (keys without the `ema.` prefix), when training keeps them.
    pub ema: HashMap<String, Tensor>,
    /// Loop position.
    pub state: LoopState,
}

/// Loads `path` into `varmap` (strictly: the model must match) and returns the rest.
pub fn load(path: &Path, varmap: &VarMap) -> Result<Loaded> {
    let all = mustard_core::io::load_safetensors(path, &Device::Cpu)?;
    let (mut model, mut optimizer, mut state, mut ema) = (
        HashMap::new(),
        HashMap::new(),
        HashMap::new(),
        HashMap::new(),
    );
    for (k, v) in all {
        if let Some(rest) = k.strip_prefix("optimizer.") {
            optimizer.insert(rest.to_string(), v);
        } else if let Some(rest) = k.strip_prefix("ema.") {
            ema.insert(rest.to_string(), v);
        } else if let Some(rest) = k.strip_prefix("state.") {
            state.insert(rest.to_string(), v);
        } else {
            model.insert(k, v);
        }
    }
    load_weights(
        varmap,
        &model,
        &LoadOptions {
            strict: true,
            ..Default::default()
        },
        path,
    )?;
    let int = |name: &str| -> Result<u64> {
        let t = state
            .get(name)
            .ok_or_else(|| Error::file(path, format!("no `state.{name}` entry")))?;
        Ok(t.flatten_all()?
            .to_vec1::<i64>()?
            .first()
            .copied()
            .unwrap_or(0)
            .max(0) as u64)
    };
    let best = match state.get("best") {
        Some(t) => t
            .flatten_all()?
            .to_vec1::<f64>()?
            .first()
            .copied()
            .unwrap_or(f64::NEG_INFINITY),
        None => f64::NEG_INFINITY,
    };
    let state = if state.is_empty() {
        LoopState {
            best,
            ..Default::default()
        }
    } else {
        LoopState {
            step: int("step")?,
            epoch: int("epoch")?,
            batch: int("batch")?,
            best,
            // Checkpoints written before early stopping existed lack it: the last epoch then.
            best_epoch: int("best_epoch").or_else(|_| int("epoch"))?,
        }
    };
    Ok(Loaded {
        optimizer,
        ema,
        state,
    })
}

/// The run folder of a checkpoint argument: the folder itself, or the folder holding a
/// weights file's `weights/` (else the file's own folder).
pub fn run_folder(path: &Path) -> PathBuf {
    if path.is_dir() {
        return path.to_path_buf();
    }
    let parent = path.parent().unwrap_or(Path::new("."));
    match (parent.file_name(), parent.parent()) {
        (Some(name), Some(run)) if name == "weights" => run.to_path_buf(),
        _ => parent.to_path_buf(),
    }
}

/// The weights file a checkpoint argument names: the file itself, or a run folder's `best`
/// (else `last`) checkpoint.
pub fn weights_file(path: &Path) -> PathBuf {
    if path.is_dir() {
        let run = RunPaths {
            dir: path.to_path_buf(),
        };
        if run.best().is_file() {
            run.best()
        } else {
            run.last()
        }
    } else {
        path.to_path_buf()
    }
}

/// Rebuilds a trained model from a checkpoint file and the `config.toml` of its run (two
/// folders up: `runs/<name>/weights/<file>`), or from a run folder (its `best`, else `last`),
/// and applies the run's numerics settings to the process.
pub fn load_model(path: &Path) -> Result<(Config, VarMap, MultiTaskModel)> {
    load_model_on(path, None)
}

/// [`load_model`] on `device` instead of the run's (the returned config says which).
pub fn load_model_on(
    path: &Path,
    device: Option<mustard_core::DeviceSpec>,
) -> Result<(Config, VarMap, MultiTaskModel)> {
    let (weights, mut config) = config_of(path)?;
    if let Some(device) = device {
        config.device = device;
    }
    config.numerics.apply();
    let (varmap, model) = MultiTaskModel::for_run(&config)?;
    let loaded = load(&weights, &varmap)?;
    use_averages(&varmap, &loaded.ema)?;
    Ok((config, varmap, model))
}

/// The weights file a checkpoint argument names and the config of its run, read without
/// building the model.
pub fn config_of(path: &Path) -> Result<(PathBuf, Config)> {
    let weights = weights_file(path);
    let config_path = if path.is_dir() {
        path.join("config.toml")
    } else {
        path.parent()
            .and_then(Path::parent)
            .ok_or_else(|| Error::file(path, "expected runs/<name>/weights/<file>"))?
            .join("config.toml")
    };
    if !weights.is_file() {
        return Err(Error::file(&weights, "no such checkpoint"));
    }
    if !config_path.is_file() {
        return Err(Error::file(
            &config_path,
            format!(
                "not found: the model of {} is rebuilt from the config.toml of its run folder \
                 (runs/<name>/config.toml beside weights/); pass the run folder or a file of its weights/",
                weights.display()
            ),
        ));
    }
    Ok((weights, Config::read(&config_path)?))
}

/// Copies weight averages (kept when the run trained with `ema`) into `varmap`: a trained
/// model is its averaged weights; the raw ones only serve to resume training.
pub fn use_averages(varmap: &VarMap, ema: &HashMap<String, Tensor>) -> Result<()> {
    let data = varmap.data().lock().expect("VarMap lock poisoned");
    for (name, average) in ema {
        if let Some(var) = data.get(name) {
            var.set(&average.to_device(var.device())?.to_dtype(var.dtype())?)?;
        }
    }
    Ok(())
}

/// The model tensors of a checkpoint file as a trained model uses them: its weights with any
/// weight averages laid over them, without optimiser or loop state.
pub fn model_tensors_of(path: &Path) -> Result<HashMap<String, Tensor>> {
    let all = mustard_core::io::load_safetensors(path, &Device::Cpu)?;
    let mut model: HashMap<String, Tensor> = HashMap::new();
    let mut averages = Vec::new();
    for (k, v) in all {
        if let Some(rest) = k.strip_prefix("ema.") {
            averages.push((rest.to_string(), v));
        } else if !k.starts_with("optimizer.") && !k.starts_with("state.") {
            model.insert(k, v);
        }
    }
    for (k, v) in averages {
        if model.contains_key(&k) {
            model.insert(k, v);
        }
    }
    Ok(model)
}
