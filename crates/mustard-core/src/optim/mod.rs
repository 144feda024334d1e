//! Optimisation: SGD with momentum/Nesterov and AdamW with PyTorch's update rules, parameter
//! groups, state that saves to and loads from safetensors, learning-rate schedules, gradient
//! clipping by global norm and an exponential moving average of the weights.
//!
//! candle's own SGD has no momentum and its AdamW has no parameter groups and no saveable state,
//! which is why these live here.

mod adamw;
mod ema;
mod params;
mod schedule;
mod sgd;

use std::collections::HashMap;
use std::path::Path;

use candle_core::backprop::GradStore;
use candle_core::{Device, Tensor};

pub use adamw::{AdamW, AdamWConfig};
pub use ema::Ema;
pub use params::{clip_grad_norm, is_buffer, param_groups, trainable_vars, ParamGroup};
pub use schedule::{LrSchedule, ScheduleKind};
pub use sgd::{Sgd, SgdConfig};

use crate::{Error, Result};

/// The elements of a contiguous f32 CPU tensor, borrowed from its storage guard
/// (`Tensor::storage_and_layout`); `None` for any other storage or a strided layout.
pub(crate) fn f32_data<'a>(
    storage: &'a candle_core::Storage,
    layout: &candle_core::Layout,
) -> Option<&'a [f32]> {
    let candle_core::Storage::Cpu(candle_core::CpuStorage::F32(data)) = storage else {
        return None;
    };
    let (start, end) = layout.contiguous_offsets()?;
    Some(&data[start..end])
}

/// What every optimiser offers to the training loop.
pub trait Optimizer {
    /// Applies one update from the gradients; parameters without a gradient are left alone.
    fn step(&mut self, grads: &GradStore) -> Result<()>;
    /// The current learning rate.
    fn learning_rate(&self) -> f64;
    /// Sets the learning rate (a schedule calls this before every step).
    fn set_learning_rate(&mut self, lr: f64);
    /// Number of steps taken.
    fn steps(&self) -> u64;
    /// The state as named tensors: `step`, `lr` and per-parameter buffers `<param>.<buffer>`.
    fn state(&self) -> Result<HashMap<String, Tensor>>;
    /// Restores a state produced by [`Optimizer::state`]; `source` names it in errors.
    fn load_state(&mut self, state: HashMap<String, Tensor>, source: &Path) -> Result<()>;

    /// Saves the state to a safetensors file atomically.
    fn save(&self, path: &Path) -> Result<()> {
        crate::io::save_safetensors(&self.state()?, path)
    }

    /// Loads the state from a safetensors file.
    fn load(&mut self, path: &Path, device: &Device) -> Result<()> {
        let state = crate::io::load_safetensors(path, device)?;
        self.load_state(state, path)
    }
}

/// Per-parameter buffers keyed by parameter name, with the shared state codec.
#[derive(Debug, Default, Clone)]
pub(crate) struct Buffers {
    pub step: u64,
    pub lr: f64,
    pub per_param: HashMap<String, Vec<Tensor>>,
}

impl Buffers {
    pub fn to_state(&self, names: &[&str]) -> Result<HashMap<String, Tensor>> {
        let mut out = HashMap::new();
        out.insert(
            "step".to_string(),
            Tensor::new(&[self.step as i64], &Device::Cpu)?,
        );
        out.insert("lr".to_string(), Tensor::new(&[self.lr], &Device::Cpu)?);
        for (param, bufs) in &self.per_param {
            for (name, buf) in names.iter().zip(bufs) {
                out.insert(format!("{param}.{name}"), buf.clone());
            }
        }
        Ok(out)
    }

    /// Reads `step`, `lr` and the buffers of `params`, checking names and shapes.
    pub fn from_state(
        mut state: HashMap<String, Tensor>,
        names: &[&str],
        params: &[&ParamGroup],
        source: &Path,
    ) -> Result<Self> {
        let bad = |reason: String| Error::State {
            path: source.to_path_buf(),
            reason,
        };
        let scalar = |state: &mut HashMap<String, Tensor>, key: &str| -> Result<Tensor> {
            state
                .remove(key)
                .ok_or_else(|| bad(format!("optimizer state has no `{key}` entry")))
        };
        let step = scalar(&mut state, "step")?
            .flatten_all()?
            .to_vec1::<i64>()?;
        let lr = scalar(&mut state, "lr")?.flatten_all()?.to_vec1::<f64>()?;
        let (step, lr) = match (step.as_slice(), lr.as_slice()) {
            (&[s], &[l]) if s >= 0 => (s as u64, l),
            _ => return Err(bad("`step` and `lr` must hold one value each".into())),
        };
        let mut per_param = HashMap::new();
        let mut missing = Vec::new();
        for group in params {
            for (param, var) in &group.params {
                let mut bufs = Vec::new();
                for name in names {
                    let key = format!("{param}.{name}");
                    match state.remove(&key) {
                        Some(t) if t.shape() == var.shape() => {
                            bufs.push(t.to_device(var.device())?.to_dtype(var.dtype())?)
                        }
                        Some(t) => {
                            return Err(bad(format!(
                                "`{key}` has shape {:?}, the parameter has {:?}",
                                t.shape(),
                                var.shape()
                            )))
                        }
                        None => missing.push(key),
                    }
                }
                if bufs.len() == names.len() {
                    per_param.insert(param.clone(), bufs);
                }
            }
        }
        // A parameter that never had a gradient has no buffers; after steps, every other one must.
        if step > 0 && per_param.is_empty() && !missing.is_empty() {
            return Err(bad(format!(
                "optimizer state is missing {}",
                missing.join(", ")
            )));
        }
        if !state.is_empty() {
            let mut unexpected: Vec<_> = state.into_keys().collect();
            unexpected.sort();
            return Err(bad(format!(
                "optimizer state has entries for unknown parameters: {}",
                unexpected.join(", ")
            )));
        }
        Ok(Self {
            step,
            lr,
            per_param,
        })
    }
}

#[cfg(test)]
mod tests;
