use std::collections::HashMap;
use std::mem::MaybeUninit;
use std::path::Path;

use candle_core::backprop::GradStore;
use candle_core::Tensor;
use rayon::prelude::*;

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

/// The scalars of one parameter's update.
struct Coefficients {
    /// `1 − lr·wd`, or `None` without weight decay.
    decay: Option<f64>,
    beta1: f64,
    beta2: f64,
    /// `1 / √(1 − β₂ᵗ)`.
    inv_bc2_sqrt: f64,
    eps: f64,
    /// `lr / (1 − β₁ᵗ)`.
    step_size: f64,
}

/// The update of one parameter as candle ops: `(p, m, v)` after the step.
fn composed(
    p: &Tensor,
    g: &Tensor,
    buffers: Option<(&Tensor, &Tensor)>,
    k: &Coefficients,
) -> Result<(Tensor, Tensor, Tensor)> {
    let g = g.detach();
    let mut p = p.detach();
    if let Some(d) = k.decay {
        p = (p * d)?;
    }
    let (m, v) = match buffers {
        Some((m, v)) => (m.clone(), v.clone()),
        None => (g.zeros_like()?, g.zeros_like()?),
    };
    let m = ((m * k.beta1)? + (&g * (1.0 - k.beta1))?)?;
    let v = ((v * k.beta2)? + (g.sqr()? * (1.0 - k.beta2))?)?;
    let denom = ((v.sqrt()? * k.inv_bc2_sqrt)? + k.eps)?;
    let update = ((&m / denom)? * k.step_size)?;
    Ok(((p - update)?, m, v))
}

/// The update of one f32 CPU parameter in one parallel pass over `p`, `g`, `m`, `v`, with the
/// same f32 operations in the same order as [`composed`] (so the results
/// are identical), instead of thirteen tensor ops that each allocate and sweep the parameter.
/// `None` when a tensor is not a contiguous f32 CPU tensor: the caller uses the composed ops.
fn fused_cpu_f32(
    p: &Tensor,
    g: &Tensor,
    buffers: Option<(&Tensor, &Tensor)>,
    k: &Coefficients,
) -> Result<Option<(Tensor, Tensor, Tensor)>> {
    let mut tensors = vec![p, g];
    if let Some((m, v)) = buffers {
        tensors.extend([m, v]);
    }
    if tensors.iter().any(|t| t.shape() != p.shape()) {
        return Ok(None);
    }
    let guards: Vec<_> = tensors.iter().map(|t| t.storage_and_layout()).collect();
    let Some(slices) = guards
        .iter()
        .map(|(storage, layout)| super::f32_data(storage, layout))
        .collect::<Option<Vec<&[f32]>>>()
    else {
        return Ok(None);
    };
    let n = slices[0].len();
    let f = |x: f64| x as f32;
    let k = Lanes {
        decay: k.decay.map(f),
        b1: f(k.beta1),
        c1: f(1.0 - k.beta1),
        b2: f(k.beta2),
        c2: f(1.0 - k.beta2),
        inv_bc2: f(k.inv_bc2_sqrt),
        eps: f(k.eps),
        step: f(k.step_size),
    };
    // Written in full below, so never zeroed first.
    let (mut p_new, mut m_new, mut v_new) = (
        Vec::<f32>::with_capacity(n),
        Vec::<f32>::with_capacity(n),
        Vec::<f32>::with_capacity(n),
    );
    const CHUNK: usize = 1 << 14;
    let (po, mo, vo) = (
        &mut p_new.spare_capacity_mut()[..n],
        &mut m_new.spare_capacity_mut()[..n],
        &mut v_new.spare_capacity_mut()[..n],
    );
    po.par_chunks_mut(CHUNK)
        .zip(mo.par_chunks_mut(CHUNK))
        .zip(vo.par_chunks_mut(CHUNK))
        .enumerate()
        .for_each(|(ci, ((po, mo), vo))| {
            let r = ci * CHUNK..ci * CHUNK + po.len();
            let (p, g) = (&slices[0][r.clone()], &slices[1][r.clone()]);
            if slices.len() == 4 {
                update::<true>(p, g, &slices[2][r.clone()], &slices[3][r], po, mo, vo, &k);
            } else {
                update::<false>(p, g, &[], &[], po, mo, vo, &k);
            }
        });
    // SAFETY: `update` wrote every one of the n elements of each (the chunks cover 0..n).
    unsafe {
        p_new.set_len(n);
        m_new.set_len(n);
        v_new.set_len(n);
    }
    drop(guards);
    let shape = p.shape();
    let dev = p.device();
    Ok(Some((
        Tensor::from_vec(p_new, shape, dev)?,
        Tensor::from_vec(m_new, shape, dev)?,
        Tensor::from_vec(v_new, shape, dev)?,
    )))
}

/// The f32 scalars of [`Coefficients`].
struct Lanes {
    decay: Option<f32>,
    b1: f32,
    c1: f32,
    b2: f32,
    c2: f32,
    inv_bc2: f32,
    eps: f32,
    step: f32,
}

/// One chunk of [`fused_cpu_f32`]: `po`, `mo`, `vo` from `p`, `g` and (with `MV`) `m`, `v`, all
/// `po.len()` long. Separate slice parameters, so that LLVM knows the outputs alias no input
/// and vectorises the loop (square root and division included).
#[inline(never)]
fn update<const MV: bool>(
    p: &[f32],
    g: &[f32],
    m: &[f32],
    v: &[f32],
    po: &mut [MaybeUninit<f32>],
    mo: &mut [MaybeUninit<f32>],
    vo: &mut [MaybeUninit<f32>],
    k: &Lanes,
) {
    let n = po.len();
    let (p, g, mo, vo) = (&p[..n], &g[..n], &mut mo[..n], &mut vo[..n]);
    let (m, v) = if MV { (&m[..n], &v[..n]) } else { (m, v) };
    for i in 0..n {
        let (mi, vi) = if MV { (m[i], v[i]) } else { (0.0, 0.0) };
        let pi = match k.decay {
            Some(d) => p[i] * d,
            None => p[i],
        };
        let gi = g[i];
        let mi = mi * k.b1 + gi * k.c1;
        let vi = vi * k.b2 + (gi * gi) * k.c2;
        let denom = vi.sqrt() * k.inv_bc2 + k.eps;
        po[i].write(pi - (mi / denom) * k.step);
        mo[i].write(mi);
        vo[i].write(vi);
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
                let k = Coefficients {
                    decay: (group.weight_decay != 0.0).then_some(1.0 - lr * group.weight_decay),
                    beta1: c.beta1,
                    beta2: c.beta2,
                    inv_bc2_sqrt: 1.0 / bc2_sqrt,
                    eps: c.eps,
                    step_size: lr / bc1,
                };
                let buffers = self.state.per_param.get(name).map(|b| (&b[0], &b[1]));
                let (p, m, v) = match fused_cpu_f32(var.as_tensor(), g, buffers, &k)? {
                    Some(updated) => updated,
                    None => composed(var.as_tensor(), g, buffers, &k)?,
                };
                var.set(&p)?;
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

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device};

    use super::*;

    fn pair(b: &Option<(Tensor, Tensor)>) -> Option<(&Tensor, &Tensor)> {
        b.as_ref().map(|(m, v)| (m, v))
    }

    #[test]
    fn the_fused_cpu_update_equals_the_composed_ops() {
        let dev = Device::Cpu;
        // More than two chunks of the parallel pass.
        let shape = (200, 200);
        let p = Tensor::randn(0f32, 1.0, shape, &dev).unwrap();
        let vec = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for decay in [None, Some(1.0 - 0.05 * 0.01)] {
            let (mut fused, mut reference) = ((p.clone(), None), (p.clone(), None));
            for step in 1..=3 {
                let g = (Tensor::randn(0f32, 1.0, shape, &dev).unwrap() * step as f64).unwrap();
                let k = Coefficients {
                    decay,
                    beta1: 0.9,
                    beta2: 0.999,
                    inv_bc2_sqrt: 1.0 / (1.0 - 0.999f64.powi(step)).sqrt(),
                    eps: 1e-8,
                    step_size: 0.05 / (1.0 - 0.9f64.powi(step)),
                };
                let (fp, fm, fv) = fused_cpu_f32(&fused.0, &g, pair(&fused.1), &k)
                    .unwrap()
                    .expect("contiguous f32 CPU tensors take the fused path");
                let (cp, cm, cv) = composed(&reference.0, &g, pair(&reference.1), &k).unwrap();
                assert_eq!(vec(&fp), vec(&cp), "parameters after step {step}");
                assert_eq!(vec(&fm), vec(&cm), "first moments after step {step}");
                assert_eq!(vec(&fv), vec(&cv), "second moments after step {step}");
                assert_ne!(vec(&fp), vec(&fused.0), "the step moved the parameters");
                fused = (fp, Some((fm, fv)));
                reference = (cp, Some((cm, cv)));
            }
        }
        // Anything else takes the composed path.
        let g = Tensor::ones((200, 200), DType::F32, &dev).unwrap();
        let k = Coefficients {
            decay: None,
            beta1: 0.9,
            beta2: 0.999,
            inv_bc2_sqrt: 1.0,
            eps: 1e-8,
            step_size: 0.1,
        };
        assert!(fused_cpu_f32(&p.t().unwrap(), &g, None, &k)
            .unwrap()
            .is_none());
        let p64 = p.to_dtype(DType::F64).unwrap();
        assert!(
            fused_cpu_f32(&p64, &g.to_dtype(DType::F64).unwrap(), None, &k)
                .unwrap()
                .is_none()
        );
    }
}
