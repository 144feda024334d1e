use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use candle_nn::VarMap;

use crate::{Error, Result};

/// Exponential moving average of every floating-point variable of a model (weights and
/// BatchNorm running statistics): `shadow = d · shadow + (1 − d) · value`.
///
/// With `ramp = Some(τ)` the decay grows as `d = decay · (1 − e^{−updates/τ})`, so that early
/// averages are not dominated by the random initialisation (the YOLO/timm convention).
#[derive(Debug, Clone)]
pub struct Ema {
    decay: f64,
    ramp: Option<f64>,
    updates: u64,
    shadow: Vec<(String, Tensor)>,
}

impl Ema {
    /// Starts the average at the current values of `varmap`.
    pub fn new(varmap: &VarMap, decay: f64, ramp: Option<f64>) -> Result<Self> {
        if !(0.0..1.0).contains(&decay) {
            return Err(Error::config(
                "ema",
                format!("decay {decay} must be in [0, 1)"),
            ));
        }
        let data = varmap.data().lock().expect("VarMap lock poisoned");
        let mut shadow: Vec<(String, Tensor)> = data
            .iter()
            .filter(|(_, v)| v.dtype().is_float())
            .map(|(n, v)| Ok((n.clone(), v.as_tensor().detach().copy()?)))
            .collect::<Result<_>>()?;
        shadow.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(Self {
            decay,
            ramp,
            updates: 0,
            shadow,
        })
    }

    /// The decay used by the next update.
    pub fn current_decay(&self) -> f64 {
        match self.ramp {
            Some(tau) => self.decay * (1.0 - (-((self.updates + 1) as f64) / tau).exp()),
            None => self.decay,
        }
    }

    /// Moves the average towards the current values of `varmap`.
    pub fn update(&mut self, varmap: &VarMap) -> Result<()> {
        let d = self.current_decay();
        let data = varmap.data().lock().expect("VarMap lock poisoned");
        for (name, avg) in &mut self.shadow {
            let var = data.get(name).ok_or_else(|| {
                Error::config(
                    "ema",
                    format!("the model has no variable `{name}` any more"),
                )
            })?;
            *avg = ((&*avg * d)? + (var.as_tensor().detach() * (1.0 - d))?)?;
        }
        self.updates += 1;
        Ok(())
    }

    /// Number of updates so far.
    pub fn updates(&self) -> u64 {
        self.updates
    }

    /// The averaged tensors by variable name (to save as model weights).
    pub fn tensors(&self) -> HashMap<String, Tensor> {
        self.shadow.iter().cloned().collect()
    }

    /// Writes the averaged values into `varmap` (e.g. before evaluation).
    pub fn copy_to(&self, varmap: &VarMap) -> Result<()> {
        let data = varmap.data().lock().expect("VarMap lock poisoned");
        for (name, avg) in &self.shadow {
            if let Some(var) = data.get(name) {
                var.set(avg)?;
            }
        }
        Ok(())
    }

    /// The averages and the update count (`ema.updates`) as named tensors.
    pub fn state(&self) -> Result<HashMap<String, Tensor>> {
        let mut state = self.tensors();
        state.insert(
            "ema.updates".into(),
            Tensor::new(&[self.updates as i64], &Device::Cpu)?,
        );
        Ok(state)
    }

    /// Saves the average and its update count atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        crate::io::save_safetensors(&self.state()?, path)
    }

    /// Loads a state saved by [`Ema::save`]; every averaged variable must be present.
    pub fn load(&mut self, path: &Path, device: &Device) -> Result<()> {
        let state = crate::io::load_safetensors(path, device)?;
        self.load_state(state, path)
    }

    /// Restores a state produced by [`Ema::state`]; `path` names its source in errors.
    pub fn load_state(&mut self, mut state: HashMap<String, Tensor>, path: &Path) -> Result<()> {
        let bad = |reason: String| Error::State {
            path: path.to_path_buf(),
            reason,
        };
        let updates = state
            .remove("ema.updates")
            .ok_or_else(|| bad("no `ema.updates` entry".into()))?;
        let updates = updates.flatten_all()?.to_vec1::<i64>()?;
        for (name, avg) in &mut self.shadow {
            let t = state
                .remove(name)
                .ok_or_else(|| bad(format!("no average for `{name}`")))?;
            if t.shape() != avg.shape() {
                return Err(bad(format!(
                    "`{name}` has shape {:?}, the model has {:?}",
                    t.shape(),
                    avg.shape()
                )));
            }
            *avg = t.to_dtype(avg.dtype())?;
        }
        self.updates = updates.first().copied().unwrap_or(0).max(0) as u64;
        Ok(())
    }
}
