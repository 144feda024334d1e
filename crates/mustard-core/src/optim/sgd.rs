use std::collections::HashMap;
use std::path::Path;

use candle_core::backprop::GradStore;
use candle_core::Tensor;

use super::{Buffers, Optimizer, ParamGroup};
use crate::{Error, Result};

/// Hyperparameters of [`Sgd`] (PyTorch `torch.optim.SGD`).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SgdConfig {
    /// Learning rate.
    pub lr: f64,
    /// Momentum factor (0 disables the buffer).
    pub momentum: f64,
    /// Dampening of the momentum.
    pub dampening: f64,
    /// Nesterov momentum.
    pub nesterov: bool,
}

impl Default for SgdConfig {
    fn default() -> Self {
        Self {
            lr: 0.01,
            momentum: 0.9,
            dampening: 0.0,
            nesterov: false,
        }
    }
}

/// Stochastic gradient descent with momentum, Nesterov and per-group L2 weight decay:
/// `d = g + wd·p; buf = μ·buf + (1 − τ)·d` (first step `buf = d`);
/// `d = d + μ·buf` (Nesterov) or `buf`; `p −= lr·d`.
#[derive(Debug)]
pub struct Sgd {
    groups: Vec<ParamGroup>,
    config: SgdConfig,
    state: Buffers,
}

impl Sgd {
    /// An optimiser over `groups`.
    pub fn new(groups: Vec<ParamGroup>, config: SgdConfig) -> Result<Self> {
        if config.nesterov && (config.momentum <= 0.0 || config.dampening != 0.0) {
            return Err(Error::config(
                "sgd",
                "Nesterov momentum requires a momentum > 0 and zero dampening",
            ));
        }
        let state = Buffers {
            lr: config.lr,
            ..Default::default()
        };
        Ok(Self {
            groups,
            config,
            state,
        })
    }
}

impl Optimizer for Sgd {
    fn step(&mut self, grads: &GradStore) -> Result<()> {
        let c = self.config;
        let lr = self.state.lr;
        for group in &self.groups {
            for (name, var) in &group.params {
                let Some(g) = grads.get(var.as_tensor()) else {
                    continue;
                };
                let p = var.as_tensor().detach();
                let mut d = g.detach();
                if group.weight_decay != 0.0 {
                    d = (d + (&p * group.weight_decay)?)?;
                }
                if c.momentum != 0.0 {
                    let buf = match self.state.per_param.get(name) {
                        Some(bufs) => ((&bufs[0] * c.momentum)? + (&d * (1.0 - c.dampening))?)?,
                        None => d.copy()?,
                    };
                    d = if c.nesterov {
                        (d + (&buf * c.momentum)?)?
                    } else {
                        buf.clone()
                    };
                    self.state.per_param.insert(name.clone(), vec![buf]);
                }
                var.set(&(p - (d * lr)?)?)?;
            }
        }
        self.state.step += 1;
        Ok(())
    }

    fn learning_rate(&self) -> f64 {
        self.state.lr
    }

    fn set_learning_rate(&mut self, lr: f64) {
        self.state.lr = lr;
    }

    fn steps(&self) -> u64 {
        self.state.step
    }

    fn state(&self) -> Result<HashMap<String, Tensor>> {
        self.state.to_state(&["momentum_buffer"])
    }

    fn load_state(&mut self, state: HashMap<String, Tensor>, source: &Path) -> Result<()> {
        let groups: Vec<&ParamGroup> = self.groups.iter().collect();
        let names: &[&str] = if self.config.momentum != 0.0 {
            &["momentum_buffer"]
        } else {
            &[]
        };
        self.state = Buffers::from_state(state, names, &groups, source)?;
        Ok(())
    }
}
