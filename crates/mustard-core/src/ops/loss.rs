//! One-pass CPU kernels of the two dense losses, each with its own backward.
//!
//! Composed from candle ops, the focal loss is about twenty element-wise passes over the heatmap
//! (each allocating its result) and its backward as many again, with a clamp whose backward
//! alone compares, masks and divides; the pixel cross-entropy broadcasts the log-softmax's
//! maximum and sum over the class dimension, whose backward sums them back. On the quick
//! five-head network these chains were a fifth of a training step. Here each loss is one pass
//! that returns a few per-image sums, and its gradient one more pass; `crate::loss` composes
//! the final scalar from the sums with small ops, so the presence masks and the normalisation
//! keep their autograd form. The arithmetic is the composed form's, element by element, so
//! [`Kernels::Portable`](super::Kernels) gives the same loss to rounding (the sums here
//! accumulate in f64), and the same gradient except at exact ties: at a logit of exactly 0 the
//! composed `min(x, 0)` and `|x|` take candle's subgradients (½ and the sign +1, which add to
//! d/dx log σ(x) = 1 instead of ½), and at a clamp bound exactly the composed clamp passes half
//! the gradient; these kernels take the derivative, and 0 at the bound. A NaN anywhere in the
//! logits or targets makes the loss NaN, as composed.

use candle_core::{CpuStorage, CustomOp2, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::{contiguous_slice, Real};

/// Evaluates `$body` with the type alias `$t` set to the float type of the CPU storage `$s`
/// (f32 or f64) and wraps the resulting vector back into a storage of that type.
macro_rules! by_float {
    ($name:expr, $s:expr, $t:ident => $body:expr) => {
        match $s {
            CpuStorage::F32(_) => {
                type $t = f32;
                CpuStorage::F32($body)
            }
            CpuStorage::F64(_) => {
                type $t = f64;
                CpuStorage::F64($body)
            }
            _ => candle_core::bail!("{}: only f32 and f64 are supported", $name),
        }
    };
}

/// The float operations the loss kernels need beyond [`Real`].
trait Float: Real + std::ops::Neg<Output = Self> + std::ops::Div<Output = Self> {
    fn exp(self) -> Self;
    fn ln(self) -> Self;
}

impl Float for f32 {
    fn exp(self) -> Self {
        f32::exp(self)
    }
    fn ln(self) -> Self {
        f32::ln(self)
    }
}

impl Float for f64 {
    fn exp(self) -> Self {
        f64::exp(self)
    }
    fn ln(self) -> Self {
        f64::ln(self)
    }
}

/// Per element of the focal loss: the clamped `log p`, `log(1 − p)`, `p`, and the derivatives
/// of the two logs with respect to the logit (zero where clamped).
struct FocalTerms<T> {
    log_p: T,
    log_1mp: T,
    p: T,
    dlog_p: T,
    dlog_1mp: T,
}

/// `log σ(x) = min(x, 0) − log(1 + e^{−|x|})` and `log σ(−x)`, each clamped to `[lo, hi]`, as
/// `crate::loss::focal_sums_composed` composes them; `d/dx log σ(x) = 1 − σ(x)`, `d/dx log σ(−x) = −σ(x)`.
#[inline(always)]
fn focal_terms<T: Float>(x: T, (lo, hi): (T, T)) -> FocalTerms<T> {
    let one = T::from_f64_(1.0);
    let abs = if x < T::ZERO { -x } else { x };
    let e = (-abs).exp();
    let l1p = (one + e).ln();
    let min0 = |v: T| if v < T::ZERO { v } else { T::ZERO };
    let (ls, lsn) = (min0(x) - l1p, min0(-x) - l1p);
    // σ(x) from e = e^{−|x|}, stable on both sides.
    let s = if x < T::ZERO {
        e / (one + e)
    } else {
        one / (one + e)
    };
    let clamp = |v: T| {
        if v < lo {
            lo
        } else if v > hi {
            hi
        } else {
            v
        }
    };
    let inside = |v: T| v > lo && v < hi;
    let log_p = clamp(ls);
    FocalTerms {
        log_p,
        log_1mp: clamp(lsn),
        p: log_p.exp(),
        dlog_p: if inside(ls) { one - s } else { T::ZERO },
        dlog_1mp: if inside(lsn) { -s } else { T::ZERO },
    }
}

/// `(1 − y)⁴`.
#[inline(always)]
fn neg_weight<T: Float>(y: T) -> T {
    let q = T::from_f64_(1.0) - y;
    let q2 = q * q;
    q2 * q2
}

/// Per image of `(B, C, H, W)` heatmap logits and targets: `[Σ pos term, Σ neg term, #(y = 1)]`
/// of the penalty-reduced focal loss (the terms with their sign, before the minus and the
/// division), `(B, 3)`.
pub(crate) struct FocalSums {
    /// The probability clamp's logs, `(ln 1e−4, ln(1 − 1e−4))`.
    pub(crate) bounds: (f64, f64),
}

impl FocalSums {
    fn fwd<T: Float>(&self, x: &[T], y: &[T], b: usize) -> Vec<T> {
        let per = x.len() / b;
        let bounds = (T::from_f64_(self.bounds.0), T::from_f64_(self.bounds.1));
        let sums: Vec<[f64; 3]> = (0..b)
            .into_par_iter()
            .map(|i| {
                let mut acc = [0f64; 3];
                let range = i * per..(i + 1) * per;
                for (&xv, &yv) in x[range.clone()].iter().zip(&y[range]) {
                    let t = focal_terms(xv, bounds);
                    let one = T::from_f64_(1.0);
                    if yv == one {
                        let q = one - t.p;
                        acc[0] += (t.log_p * (q * q)).to_f64();
                        acc[2] += 1.0;
                    } else if yv < one {
                        acc[1] += (t.log_1mp * (t.p * t.p) * neg_weight(yv)).to_f64();
                    } else if xv.is_nan_() || yv.is_nan_() {
                        // Neither term (a target above 1, or NaN): composed, NaN · 0 is NaN.
                        acc[1] = f64::NAN;
                    }
                }
                acc
            })
            .collect();
        sums.iter()
            .flat_map(|s| s.map(T::from_f64_))
            .collect::<Vec<_>>()
    }
}

impl CustomOp2 for FocalSums {
    fn name(&self) -> &'static str {
        "mustard.focal_sums"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let b = l1.shape().dims()[0];
        let out = by_float!(self.name(), s1, T => self.fwd(
            contiguous_slice::<T>(self.name(), s1, l1)?,
            contiguous_slice::<T>(self.name(), s2, l2)?,
            b
        ));
        Ok((out, Shape::from((b, 3))))
    }

    fn bwd(
        &self,
        logits: &Tensor,
        target: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let g = grad.to_dtype(DType::F64)?.to_vec2::<f64>()?;
        let dx = logits.apply_op2_no_bwd(
            target,
            &FocalSumsBackward {
                bounds: self.bounds,
                grad: g.iter().map(|r| (r[0], r[1])).collect(),
            },
        )?;
        Ok((Some(dx), None))
    }
}

/// The logits' gradient of [`FocalSums`] given the gradient `(∂/∂pos, ∂/∂neg)` of each image's
/// two sums.
struct FocalSumsBackward {
    bounds: (f64, f64),
    grad: Vec<(f64, f64)>,
}

impl FocalSumsBackward {
    fn bwd<T: Float>(&self, x: &[T], y: &[T]) -> Vec<T> {
        let b = self.grad.len();
        let per = x.len() / b;
        let bounds = (T::from_f64_(self.bounds.0), T::from_f64_(self.bounds.1));
        let mut dx = vec![T::ZERO; x.len()];
        dx.par_chunks_mut(per)
            .zip(x.par_chunks(per).zip(y.par_chunks(per)))
            .zip(&self.grad)
            .for_each(|((d, (xs, ys)), &(gp, gn))| {
                let (gp, gn) = (T::from_f64_(gp), T::from_f64_(gn));
                let (one, two) = (T::from_f64_(1.0), T::from_f64_(2.0));
                for ((o, &xv), &yv) in d.iter_mut().zip(xs).zip(ys) {
                    let t = focal_terms(xv, bounds);
                    let dp = t.p * t.dlog_p;
                    *o = if yv == one {
                        // d/dx [log p · (1 − p)²]
                        let q = one - t.p;
                        gp * (t.dlog_p * (q * q) - two * t.log_p * q * dp)
                    } else if yv < one {
                        // d/dx [log(1 − p) · p² · (1 − y)⁴]
                        gn * neg_weight(yv)
                            * (t.dlog_1mp * (t.p * t.p) + two * t.log_1mp * t.p * dp)
                    } else {
                        T::ZERO
                    };
                }
            });
        dx
    }
}

impl CustomOp2 for FocalSumsBackward {
    fn name(&self) -> &'static str {
        "mustard.focal_sums_backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let out = by_float!(self.name(), s1, T => self.bwd(
            contiguous_slice::<T>(self.name(), s1, l1)?,
            contiguous_slice::<T>(self.name(), s2, l2)?
        ));
        Ok((out, l1.shape().clone()))
    }
}

/// `[Σ −log softmax(x)[t] over the elements whose target t is not ignored, their count]` of
/// logits `(N, C, S…)` and `u32` targets `(N, S…)`, `(2,)`.
pub(crate) struct CrossEntropySums {
    pub(crate) ignore_index: u32,
}

/// Per image of `(C, S)` logits: the maximum and `Σ_c e^{x − max}` of every position.
#[inline(always)]
fn max_and_sum<T: Float>(x: &[T], c: usize, s: usize, m: &mut [T], z: &mut [T]) {
    m.copy_from_slice(&x[..s]);
    for row in x.chunks_exact(s).take(c).skip(1) {
        for (mv, &v) in m.iter_mut().zip(row) {
            if v > *mv {
                *mv = v;
            }
        }
    }
    z.fill(T::ZERO);
    for row in x.chunks_exact(s).take(c) {
        for ((zv, &v), &mv) in z.iter_mut().zip(row).zip(&*m) {
            *zv += (v - mv).exp();
        }
    }
}

impl CrossEntropySums {
    fn fwd<T: Float>(&self, x: &[T], t: &[u32], n: usize) -> Vec<T> {
        let (per, s) = (x.len() / n, t.len() / n);
        let c = per / s;
        let (sum, count): (f64, f64) = (0..n)
            .into_par_iter()
            .map(|i| {
                let (xs, ts) = (&x[i * per..(i + 1) * per], &t[i * s..(i + 1) * s]);
                let (mut m, mut z) = (vec![T::ZERO; s], vec![T::ZERO; s]);
                max_and_sum(xs, c, s, &mut m, &mut z);
                let (mut sum, mut count) = (0f64, 0f64);
                for (j, &tv) in ts.iter().enumerate() {
                    if tv != self.ignore_index {
                        let picked = xs[tv as usize * s + j] - m[j] - z[j].ln();
                        sum -= picked.to_f64();
                        count += 1.0;
                    } else if z[j].is_nan_() {
                        // A NaN logit at an ignored position: composed, NaN · 0 is NaN.
                        sum = f64::NAN;
                    }
                }
                (sum, count)
            })
            .collect::<Vec<_>>()
            .into_iter()
            // In image order, so that the sum does not depend on the thread count.
            .fold((0.0, 0.0), |a, b| (a.0 + b.0, a.1 + b.1));
        vec![T::from_f64_(sum), T::from_f64_(count)]
    }
}

impl CustomOp2 for CrossEntropySums {
    fn name(&self) -> &'static str {
        "mustard.cross_entropy_sums"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let n = l1.shape().dims()[0];
        let t = contiguous_slice::<u32>(self.name(), s2, l2)?;
        let out = by_float!(self.name(), s1, T => self.fwd(
            contiguous_slice::<T>(self.name(), s1, l1)?,
            t,
            n
        ));
        Ok((out, Shape::from(2)))
    }

    fn bwd(
        &self,
        logits: &Tensor,
        target: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let g = grad.to_dtype(DType::F64)?.to_vec1::<f64>()?[0];
        let dx = logits.apply_op2_no_bwd(
            target,
            &CrossEntropySumsBackward {
                ignore_index: self.ignore_index,
                grad: g,
            },
        )?;
        Ok((Some(dx), None))
    }
}

/// The logits' gradient of [`CrossEntropySums`] given the gradient of its sum:
/// `g · (softmax(x) − onehot(t))` at every position whose target is not ignored.
struct CrossEntropySumsBackward {
    ignore_index: u32,
    grad: f64,
}

impl CrossEntropySumsBackward {
    fn bwd<T: Float>(&self, x: &[T], t: &[u32], n: usize) -> Vec<T> {
        let (per, s) = (x.len() / n, t.len() / n);
        let c = per / s;
        let g = T::from_f64_(self.grad);
        let mut dx = vec![T::ZERO; x.len()];
        dx.par_chunks_mut(per)
            .zip(x.par_chunks(per).zip(t.par_chunks(s)))
            .for_each(|(d, (xs, ts))| {
                let (mut m, mut z) = (vec![T::ZERO; s], vec![T::ZERO; s]);
                max_and_sum(xs, c, s, &mut m, &mut z);
                for (k, (drow, row)) in d.chunks_exact_mut(s).zip(xs.chunks_exact(s)).enumerate() {
                    for (j, (o, &v)) in drow.iter_mut().zip(row).enumerate() {
                        let tv = ts[j];
                        if tv != self.ignore_index {
                            let p = (v - m[j]).exp() / z[j];
                            let hot = if tv as usize == k {
                                T::from_f64_(1.0)
                            } else {
                                T::ZERO
                            };
                            *o = g * (p - hot);
                        }
                    }
                }
            });
        dx
    }
}

impl CustomOp2 for CrossEntropySumsBackward {
    fn name(&self) -> &'static str {
        "mustard.cross_entropy_sums_backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let n = l1.shape().dims()[0];
        let t = contiguous_slice::<u32>(self.name(), s2, l2)?;
        let out = by_float!(self.name(), s1, T => self.bwd(
            contiguous_slice::<T>(self.name(), s1, l1)?,
            t,
            n
        ));
        Ok((out, l1.shape().clone()))
    }
}
