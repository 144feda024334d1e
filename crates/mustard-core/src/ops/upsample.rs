use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::{check_nchw, nchw, Real};
use crate::{Error, Result};

/// Bilinear resize of an `(N, C, H, W)` tensor to `(out_h, out_w)` with PyTorch's
/// `align_corners=False` semantics (`F.interpolate(x, size, mode="bilinear")`), with a backward
/// pass.
///
/// Source coordinate of output pixel `o`: `max((o + 0.5) · in / out − 0.5, 0)`, interpolated
/// between its floor and the next pixel (clamped at the border).
///
/// # Shapes
/// `(N, C, H, W)` → `(N, C, out_h, out_w)`.
pub fn upsample_bilinear2d(x: &Tensor, out_h: usize, out_w: usize) -> Result<Tensor> {
    let (_, _, h, w) = check_nchw("upsample_bilinear2d", x)?;
    if out_h == 0 || out_w == 0 {
        return Err(Error::config(
            "upsample_bilinear2d",
            format!("output size ({out_h}, {out_w}) must be at least (1, 1)"),
        ));
    }
    if super::cpu_kernels(x) {
        Ok(x.contiguous()?.apply_op1(Bilinear {
            in_hw: (h, w),
            out_hw: (out_h, out_w),
        })?)
    } else {
        // Device-generic path: out = A_h · x · A_wᵀ with sparse interpolation matrices.
        let (n, c, _, _) = x.dims4()?;
        let a_h = interpolation_matrix(h, out_h, x)?;
        let a_w = interpolation_matrix(w, out_w, x)?.t()?;
        let planes = x.reshape((n * c, h, w))?;
        let out = a_h.broadcast_matmul(&planes)?.broadcast_matmul(&a_w)?;
        Ok(out.reshape((n, c, out_h, out_w))?)
    }
}

/// Nearest-neighbour upsampling by an integer `factor` (each pixel becomes a `factor` x `factor`
/// block), with a backward pass that sums each block.
///
/// # Shapes
/// `(N, C, H, W)` → `(N, C, factor·H, factor·W)`.
pub fn upsample_nearest2d(x: &Tensor, factor: usize) -> Result<Tensor> {
    let (_, _, h, w) = check_nchw("upsample_nearest2d", x)?;
    if factor == 0 {
        return Err(Error::config(
            "upsample_nearest2d",
            "factor must be at least 1",
        ));
    }
    let too_large = h
        .checked_mul(factor)
        .zip(w.checked_mul(factor))
        .and_then(|(oh, ow)| oh.checked_mul(ow))
        .and_then(|plane| plane.checked_mul(x.elem_count() / (h * w)))
        .is_none();
    if too_large {
        return Err(Error::config(
            "upsample_nearest2d",
            format!(
                "factor {factor} makes the output of {:?} too large",
                x.dims()
            ),
        ));
    }
    // Not candle's `upsample_nearest2d`: its backward assigns the gradient of its input instead
    // of adding to it, so every other use of the input (the FPN's output convolution beside the
    // top-down path) loses its gradient. On the CPU, one pass each way; elsewhere a broadcast,
    // whose backward sums, gives the same values (and the same sums, in the same order).
    if super::cpu_kernels(x) {
        return Ok(x.contiguous()?.apply_op1(Nearest { factor })?);
    }
    let (n, c) = (x.dim(0)?, x.dim(1)?);
    Ok(x.reshape((n, c, h, 1, w, 1))?
        .broadcast_as((n, c, h, factor, w, factor))?
        .contiguous()?
        .reshape((n, c, h * factor, w * factor))?)
}

/// Nearest-neighbour upsampling by an integer factor, on the CPU.
struct Nearest {
    factor: usize,
}

impl Nearest {
    fn fwd<T: Real>(&self, x: &[T], (h, w): (usize, usize)) -> Vec<T> {
        let f = self.factor;
        let ow = w * f;
        let mut out = Vec::with_capacity(x.len() * f * f);
        // One output row from each input row, then copied to the block's other rows.
        out.spare_capacity_mut()[..x.len() * f * f]
            .par_chunks_mut(f * ow * h)
            .zip(x.par_chunks(h * w))
            .for_each(|(o, plane)| {
                for (rows, r) in o.chunks_exact_mut(f * ow).zip(plane.chunks_exact(w)) {
                    let (first, rest) = rows.split_at_mut(ow);
                    for (block, &v) in first.chunks_exact_mut(f).zip(r) {
                        block.iter_mut().for_each(|e| {
                            e.write(v);
                        });
                    }
                    for row in rest.chunks_exact_mut(ow) {
                        row.copy_from_slice(first);
                    }
                }
            });
        // SAFETY: every plane's `h` groups of `f` rows of `ow` values are written above.
        unsafe { out.set_len(x.len() * f * f) };
        out
    }
}

impl CustomOp1 for Nearest {
    fn name(&self) -> &'static str {
        "mustard.upsample_nearest2d"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = l.shape().dims4()?;
        let out = run_typed!(self.name(), &[(s, l)], |x| self.fwd(x[0], (h, w)));
        Ok((out, nchw(n, c, h * self.factor, w * self.factor)))
    }

    fn bwd(
        &self,
        _arg: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let op = NearestBackward {
            factor: self.factor,
        };
        Ok(Some(grad_res.contiguous()?.apply_op1_no_bwd(&op)?))
    }
}

/// The sum of each `factor` x `factor` block of the output gradient, added row by row from
/// zero, in the order of candle's sum over the broadcast dimensions (so both paths agree bit
/// for bit).
struct NearestBackward {
    factor: usize,
}

impl NearestBackward {
    fn bwd<T: Real>(&self, g: &[T], (oh, ow): (usize, usize)) -> Vec<T> {
        let f = self.factor;
        let (h, w) = (oh / f, ow / f);
        let mut dx = vec![T::ZERO; g.len() / (f * f)];
        dx.par_chunks_mut(h * w)
            .zip(g.par_chunks(oh * ow))
            .for_each(|(d, gp)| {
                for (drow, rows) in d.chunks_exact_mut(w).zip(gp.chunks_exact(f * ow)) {
                    for row in rows.chunks_exact(ow) {
                        for (v, block) in drow.iter_mut().zip(row.chunks_exact(f)) {
                            for &e in block {
                                *v += e;
                            }
                        }
                    }
                }
            });
        dx
    }
}

impl CustomOp1 for NearestBackward {
    fn name(&self) -> &'static str {
        "mustard.upsample_nearest2d_backward"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, c, oh, ow) = l.shape().dims4()?;
        let out = run_typed!(self.name(), &[(s, l)], |g| self.bwd(g[0], (oh, ow)));
        Ok((out, nchw(n, c, oh / self.factor, ow / self.factor)))
    }
}

/// Per output index: the two source indices and their weights.
#[derive(Debug, Clone, Copy)]
struct Tap {
    i0: usize,
    i1: usize,
    w0: f64,
    w1: f64,
}

fn taps(input: usize, output: usize) -> Vec<Tap> {
    let scale = input as f64 / output as f64;
    (0..output)
        .map(|o| {
            let src = ((o as f64 + 0.5) * scale - 0.5).max(0.0);
            let i0 = (src.floor() as usize).min(input - 1);
            let i1 = if i0 < input - 1 { i0 + 1 } else { i0 };
            let w1 = (src - i0 as f64).clamp(0.0, 1.0);
            Tap {
                i0,
                i1,
                w0: 1.0 - w1,
                w1,
            }
        })
        .collect()
}

fn interpolation_matrix(input: usize, output: usize, like: &Tensor) -> Result<Tensor> {
    let mut m = vec![0f64; output * input];
    for (o, t) in taps(input, output).iter().enumerate() {
        m[o * input + t.i0] += t.w0;
        m[o * input + t.i1] += t.w1;
    }
    Ok(Tensor::from_vec(m, (output, input), like.device())?.to_dtype(like.dtype())?)
}

struct Bilinear {
    in_hw: (usize, usize),
    out_hw: (usize, usize),
}

impl Bilinear {
    fn fwd<T: Real>(&self, x: &[T], planes: usize) -> Vec<T> {
        let ((h, w), (oh, ow)) = (self.in_hw, self.out_hw);
        let (ty, tx) = (taps(h, oh), taps(w, ow));
        let tx: Vec<(usize, usize, T, T)> = tx
            .iter()
            .map(|t| (t.i0, t.i1, T::from_f64_(t.w0), T::from_f64_(t.w1)))
            .collect();
        let mut out = vec![T::ZERO; planes * oh * ow];
        // `wy0 · (wx0 · r0[x0] + wx1 · r0[x1]) + wy1 · (the same on r1)`: the interpolation
        // along x of every input row once (an upsampling reads each row for several output
        // rows), then the one along y as a vectorised pass over whole rows. The same operations
        // in the same order as evaluating the formula per output pixel.
        out.par_chunks_mut(oh * ow)
            .zip(x.par_chunks(h * w))
            .for_each_init(Vec::new, |across: &mut Vec<T>, (o, p)| {
                across.resize(h * ow, T::ZERO);
                for (r, a) in p.chunks_exact(w).zip(across.chunks_exact_mut(ow)) {
                    for (v, &(x0, x1, wx0, wx1)) in a.iter_mut().zip(&tx) {
                        *v = wx0 * r[x0] + wx1 * r[x1];
                    }
                }
                for (t, row) in ty.iter().zip(o.chunks_exact_mut(ow)) {
                    let (a0, a1) = (&across[t.i0 * ow..][..ow], &across[t.i1 * ow..][..ow]);
                    let (wy0, wy1) = (T::from_f64_(t.w0), T::from_f64_(t.w1));
                    for ((v, &u0), &u1) in row.iter_mut().zip(a0).zip(a1) {
                        *v = wy0 * u0 + wy1 * u1;
                    }
                }
            });
        out
    }
}

impl CustomOp1 for Bilinear {
    fn name(&self) -> &'static str {
        "mustard.upsample_bilinear2d"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, c, _, _) = l.shape().dims4()?;
        let out = run_typed!(self.name(), &[(s, l)], |x| self.fwd(x[0], n * c));
        Ok((out, nchw(n, c, self.out_hw.0, self.out_hw.1)))
    }

    fn bwd(
        &self,
        _arg: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let op = BilinearBackward {
            in_hw: self.in_hw,
            out_hw: self.out_hw,
        };
        Ok(Some(grad_res.contiguous()?.apply_op1_no_bwd(&op)?))
    }
}

/// Scatters each output gradient to the four source pixels with the forward's weights.
struct BilinearBackward {
    in_hw: (usize, usize),
    out_hw: (usize, usize),
}

impl BilinearBackward {
    fn bwd<T: Real>(&self, g: &[T], planes: usize) -> Vec<T> {
        let ((h, w), (oh, ow)) = (self.in_hw, self.out_hw);
        let (ty, tx) = (taps(h, oh), taps(w, ow));
        let mut dx = vec![T::ZERO; planes * h * w];
        dx.par_chunks_mut(h * w)
            .zip(g.par_chunks(oh * ow))
            .for_each(|(d, gp)| {
                for (oy, t) in ty.iter().enumerate() {
                    for (ox, s) in tx.iter().enumerate() {
                        let v = gp[oy * ow + ox];
                        let (a, b) = (T::from_f64_(t.w0), T::from_f64_(t.w1));
                        let (e, f) = (T::from_f64_(s.w0), T::from_f64_(s.w1));
                        d[t.i0 * w + s.i0] += a * e * v;
                        d[t.i0 * w + s.i1] += a * f * v;
                        d[t.i1 * w + s.i0] += b * e * v;
                        d[t.i1 * w + s.i1] += b * f * v;
                    }
                }
            });
        dx
    }
}

impl CustomOp1 for BilinearBackward {
    fn name(&self) -> &'static str {
        "mustard.upsample_bilinear2d_backward"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, c, _, _) = l.shape().dims4()?;
        let out = run_typed!(self.name(), &[(s, l)], |g| self.bwd(g[0], n * c));
        Ok((out, nchw(n, c, self.in_hw.0, self.in_hw.1)))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, IndexOp, Var};

    use super::*;

    #[test]
    fn matrix_path_equals_the_kernel_in_values_and_gradients() {
        let v: Vec<f64> = (0..2 * 5 * 7)
            .map(|i| ((i * 31) % 17) as f64 - 8.0)
            .collect();
        let x = Tensor::from_vec(v, (1, 2, 5, 7), &Device::Cpu).unwrap();
        for (oh, ow) in [(10, 14), (13, 16), (3, 4), (5, 7)] {
            let var = Var::from_tensor(&x).unwrap();
            let kernel = upsample_bilinear2d(var.as_tensor(), oh, ow).unwrap();
            let planes = var.as_tensor().reshape((2, 5, 7)).unwrap();
            let a_h = interpolation_matrix(5, oh, &x).unwrap();
            let a_w = interpolation_matrix(7, ow, &x).unwrap().t().unwrap();
            let matrix = a_h
                .broadcast_matmul(&planes)
                .unwrap()
                .broadcast_matmul(&a_w)
                .unwrap()
                .reshape((1, 2, oh, ow))
                .unwrap();
            let d = (&kernel - &matrix)
                .unwrap()
                .abs()
                .unwrap()
                .flatten_all()
                .unwrap()
                .max(0)
                .unwrap()
                .to_scalar::<f64>()
                .unwrap();
            assert!(d < 1e-12, "{oh}x{ow}: {d}");
            let w = Tensor::arange(0f64, kernel.elem_count() as f64, &Device::Cpu)
                .unwrap()
                .reshape(kernel.shape())
                .unwrap();
            let g1 = (&kernel * &w)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let g2 = (&matrix * &w)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            let (g1, g2) = (
                g1.get(var.as_tensor()).unwrap(),
                g2.get(var.as_tensor()).unwrap(),
            );
            let d = (g1 - g2)
                .unwrap()
                .abs()
                .unwrap()
                .flatten_all()
                .unwrap()
                .max(0)
                .unwrap()
                .to_scalar::<f64>()
                .unwrap();
            assert!(d < 1e-9, "{oh}x{ow} gradient: {d}");
        }
    }

    /// The row-wise kernel against the formula evaluated per output pixel, bit for bit, in
    /// f32 (where a different order of operations would show), upsampling and downsampling.
    #[test]
    fn the_kernel_evaluates_the_formula_per_pixel_bit_for_bit() {
        let (h, w) = (6, 9);
        let x: Vec<f32> = (0..3 * h * w)
            .map(|i| ((i * 7919) % 1013) as f32 / 97.0 - 5.0)
            .collect();
        for (oh, ow) in [(24, 36), (12, 18), (13, 17), (4, 5), (6, 9)] {
            let (ty, tx) = (taps(h, oh), taps(w, ow));
            let mut expected = Vec::new();
            for p in x.chunks_exact(h * w) {
                for t in &ty {
                    let (r0, r1) = (&p[t.i0 * w..][..w], &p[t.i1 * w..][..w]);
                    let (wy0, wy1) = (t.w0 as f32, t.w1 as f32);
                    for s in &tx {
                        let (wx0, wx1) = (s.w0 as f32, s.w1 as f32);
                        expected.push(
                            wy0 * (wx0 * r0[s.i0] + wx1 * r0[s.i1])
                                + wy1 * (wx0 * r1[s.i0] + wx1 * r1[s.i1]),
                        );
                    }
                }
            }
            let got = Bilinear {
                in_hw: (h, w),
                out_hw: (oh, ow),
            }
            .fwd(&x, 3);
            let bits = |v: &[f32]| v.iter().map(|a| a.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got), bits(&expected), "{oh}x{ow}");
        }
    }

    /// The nearest kernel against the broadcast path (candle's sum for the gradient), bit for
    /// bit in f32, where a different order of the block sums would show.
    #[test]
    fn nearest_kernel_equals_the_broadcast_path_bit_for_bit() {
        let (n, c, h, w) = (2, 3, 5, 7);
        let v: Vec<f32> = (0..n * c * h * w)
            .map(|i| ((i * 7919) % 1013) as f32 / 97.0 - 5.0)
            .collect();
        let x = Tensor::from_vec(v, (n, c, h, w), &Device::Cpu).unwrap();
        for f in [1, 2, 3] {
            let (oh, ow) = (h * f, w * f);
            let g: Vec<f32> = (0..n * c * oh * ow)
                .map(|i| ((i * 104729) % 2039) as f32 / 113.0 - 9.0)
                .collect();
            let g = Tensor::from_vec(g, (n, c, oh, ow), &Device::Cpu).unwrap();
            let var = Var::from_tensor(&x).unwrap();
            let kernel = upsample_nearest2d(var.as_tensor(), f).unwrap();
            let broadcast = var
                .as_tensor()
                .reshape((n, c, h, 1, w, 1))
                .unwrap()
                .broadcast_as((n, c, h, f, w, f))
                .unwrap()
                .contiguous()
                .unwrap()
                .reshape((n, c, oh, ow))
                .unwrap();
            let bits = |t: &Tensor| {
                t.flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap()
                    .iter()
                    .map(|v| v.to_bits())
                    .collect::<Vec<_>>()
            };
            assert_eq!(bits(&kernel), bits(&broadcast), "factor {f}");
            let grad = |y: &Tensor| {
                let grads = (y * &g).unwrap().sum_all().unwrap().backward().unwrap();
                grads.get(var.as_tensor()).unwrap().clone()
            };
            let (gk, gb) = (grad(&kernel), grad(&broadcast));
            assert_eq!(gk.dims(), [n, c, h, w]);
            assert_eq!(bits(&gk), bits(&gb), "factor {f} gradient");
        }
    }

    #[test]
    fn same_size_is_the_identity_and_nearest_repeats_blocks() {
        let x = Tensor::new(&[[[[1f32, 2.], [3., 4.]]]], &Device::Cpu).unwrap();
        let same = upsample_bilinear2d(&x, 2, 2).unwrap();
        assert_eq!(
            same.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            [1., 2., 3., 4.]
        );
        let up = upsample_nearest2d(&x, 2).unwrap();
        assert_eq!(
            up.i((0, 0)).unwrap().to_vec2::<f32>().unwrap(),
            [
                [1., 1., 2., 2.],
                [1., 1., 2., 2.],
                [3., 3., 4., 4.],
                [3., 3., 4., 4.]
            ]
        );
        assert_eq!(
            upsample_nearest2d(&x, 0).unwrap_err().to_string(),
            "upsample_nearest2d: factor must be at least 1"
        );
        let huge = 1usize << 33;
        assert_eq!(
            upsample_nearest2d(&x, huge).unwrap_err().to_string(),
            format!("upsample_nearest2d: factor {huge} makes the output of [1, 1, 2, 2] too large")
        );
        assert_eq!(
            upsample_bilinear2d(&x, 0, 3).unwrap_err().to_string(),
            "upsample_bilinear2d: output size (0, 3) must be at least (1, 1)"
        );
    }
}
