use std::collections::HashMap;
use std::path::Path;

use candle_core::backprop::GradStore;
use candle_core::Tensor;

use super::{Buffers, Optimizer, ParamGroup};
use crate::Result;

/// Hyperparameters of [`AdamW`] (PyTorch `torch.optim.AdamW` defaults).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AdamWConfig {
    /// Learning rate.
    pub lr: f64,
    /// Decay of the first moment.
    pub beta1: f64,
    /// Decay of the second moment.
    pub beta2: f64,
    /// Added to the denominator.
    pub eps: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        }
    }
}

/// Adam with decoupled weight decay per group, as PyTorch computes it:
/// `p ·= 1 − lr·wd; m = β₁m + (1 − β₁)g; v = β₂v + (1 − β₂)g²;
/// p −= lr/(1 − β₁ᵗ) · m / (√v / √(1 − β₂ᵗ) + ε)`.
#[derive(Debug)]
pub struct AdamW {
    groups: Vec<ParamGroup>,
    config: AdamWConfig,
    state: Buffers,
}

impl AdamW {
    /// An optimiser over `groups`.
    pub fn new(groups: Vec<ParamGroup>, config: AdamWConfig) -> Result<Self> {
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

impl Optimizer for AdamW {
    fn step(&mut self, grads: &GradStore) -> Result<()> {
        let c = self.config;
        let lr = self.state.lr;
        let t = self.state.step + 1;
        let bc1 = 1.0 - c.beta1.powi(t as i32);
        let bc2_sqrt = (1.0 - c.beta2.powi(t as i32)).sqrt();
        for group in &self.groups {
            for (name, var) in &group.params {
                let Some(g) = grads.get(var.as_tensor()) else {
                    continue;
                };
                let g = g.detach();
                let mut p = var.as_tensor().detach();
                if group.weight_decay != 0.0 {
                    p = (p * (1.0 - lr * group.weight_decay))?;
                }
                let (m, v) = match self.state.per_param.get(name) {
                    Some(bufs) => (&bufs[0], &bufs[1]),
                    None => (&g.zeros_like()?, &g.zeros_like()?),
                };
                let m = ((m * c.beta1)? + (&g * (1.0 - c.beta1))?)?;
                let v = ((v * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
                let denom = ((v.sqrt()? / bc2_sqrt)? + c.eps)?;
                let update = ((&m / denom)? * (lr / bc1))?;
                var.set(&(p - update)?)?;
                self.state.per_param.insert(name.clone(), vec![m, v]);
            }
        }
        self.state.step = t;
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
        self.state.to_state(&["exp_avg", "exp_avg_sq"])
    }

    fn load_state(&mut self, state: HashMap<String, Tensor>, source: &Path) -> Result<()> {
        let groups: Vec<&ParamGroup> = self.groups.iter().collect();
        self.state = Buffers::from_state(state, &["exp_avg", "exp_avg_sq"], &groups, source)?;
        Ok(())
    }
}
