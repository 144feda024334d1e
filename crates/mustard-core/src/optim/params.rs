use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};
use candle_nn::VarMap;
use rayon::prelude::*;

use crate::Result;

/// A set of parameters sharing hyperparameters.
#[derive(Debug, Clone)]
pub struct ParamGroup {
    /// Named parameters, sorted by name.
    pub params: Vec<(String, Var)>,
    /// L2 (SGD) or decoupled (AdamW) weight decay of this group.
    pub weight_decay: f64,
}

/// Whether a variable is a buffer (BatchNorm running statistics) rather than a parameter.
pub fn is_buffer(name: &str) -> bool {
    ["running_mean", "running_var", "num_batches_tracked"]
        .iter()
        .any(|b| name == *b || name.ends_with(&format!(".{b}")))
}

/// The trainable variables of a `VarMap`, sorted by name, buffers excluded.
pub fn trainable_vars(varmap: &VarMap) -> Vec<(String, Var)> {
    let data = varmap.data().lock().expect("VarMap lock poisoned");
    let mut vars: Vec<(String, Var)> = data
        .iter()
        .filter(|(name, var)| !is_buffer(name) && var.dtype().is_float())
        .map(|(name, var)| (name.clone(), var.clone()))
        .collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    vars
}

/// Two groups as usual for CNNs: weights of rank ≥ 2 get `weight_decay`; biases and
/// BatchNorm/1-D parameters get none. Buffers are not parameters and appear in neither.
pub fn param_groups(varmap: &VarMap, weight_decay: f64) -> Vec<ParamGroup> {
    let (decay, no_decay): (Vec<_>, Vec<_>) = trainable_vars(varmap)
        .into_iter()
        .partition(|(name, var)| var.rank() >= 2 && !name.ends_with(".bias") && name != "bias");
    vec![
        ParamGroup {
            params: decay,
            weight_decay,
        },
        ParamGroup {
            params: no_decay,
            weight_decay: 0.0,
        },
    ]
}

/// `Σ x²` in f64 of a contiguous f32 CPU tensor in one pass without allocating (fixed chunks
/// summed in order, so the result does not depend on the thread count); `None` for anything
/// else.
fn sum_of_squares_cpu_f32(t: &Tensor) -> Option<f64> {
    let (storage, layout) = t.storage_and_layout();
    let partials: Vec<f64> = super::f32_data(&storage, layout)?
        .par_chunks(1 << 14)
        .map(|c| c.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>())
        .collect();
    Some(partials.iter().sum())
}

/// Scales all gradients so that their global L2 norm is at most `max_norm` (PyTorch's
/// `clip_grad_norm_`: factor `max_norm / (norm + 1e−6)` when below 1). Returns the norm before
/// clipping, which the caller checks for NaN/Inf.
pub fn clip_grad_norm(grads: &mut GradStore, vars: &[(String, Var)], max_norm: f64) -> Result<f64> {
    let mut sq = 0f64;
    for (_, var) in vars {
        if let Some(g) = grads.get(var.as_tensor()) {
            sq += match sum_of_squares_cpu_f32(g) {
                Some(v) => v,
                None => g
                    .to_dtype(DType::F64)?
                    .sqr()?
                    .sum_all()?
                    .to_scalar::<f64>()?,
            };
        }
    }
    let norm = sq.sqrt();
    let coef = max_norm / (norm + 1e-6);
    if coef < 1.0 {
        for (_, var) in vars {
            if let Some(g) = grads.get(var.as_tensor()) {
                let scaled = (g * coef)?;
                grads.insert(var.as_tensor(), scaled);
            }
        }
    }
    Ok(norm)
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;

    #[test]
    fn the_one_pass_sum_of_squares_equals_the_f64_ops() {
        let t = Tensor::randn(0f32, 3.0, (300, 170), &Device::Cpu).unwrap();
        let fast = sum_of_squares_cpu_f32(&t).unwrap();
        let ops = t
            .to_dtype(DType::F64)
            .unwrap()
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        assert!((fast - ops).abs() <= 1e-12 * ops, "{fast} vs {ops}");
        assert!(sum_of_squares_cpu_f32(&t.t().unwrap()).is_none());
        assert!(sum_of_squares_cpu_f32(&t.to_dtype(DType::F64).unwrap()).is_none());
    }
}
