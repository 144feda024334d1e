use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::{check_nchw, nchw, Real};
use crate::{Error, Result};

/// Max-pooling hyperparameters (PyTorch `nn.MaxPool2d` without `ceil_mode` and dilation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaxPool2dConfig {
    /// Window size.
    pub kernel: usize,
    /// Step between windows.
    pub stride: usize,
    /// Implicit negative-infinity padding on every side; at most `kernel / 2`.
    pub padding: usize,
}

impl MaxPool2dConfig {
    /// A `kernel` x `kernel` window moved by `stride`, without padding.
    pub fn new(kernel: usize, stride: usize) -> Self {
        Self {
            kernel,
            stride,
            padding: 0,
        }
    }

    /// ResNet's stem pool: 3x3, stride 2, padding 1.
    pub fn resnet_stem() -> Self {
        Self {
            kernel: 3,
            stride: 2,
            padding: 1,
        }
    }

    fn validate(&self) -> Result<()> {
        if self.kernel == 0 || self.stride == 0 {
            return Err(Error::config(
                "max_pool2d",
                "kernel and stride must be at least 1",
            ));
        }
        if 2 * self.padding > self.kernel {
            return Err(Error::config(
                "max_pool2d",
                format!(
                    "padding {} is larger than half the kernel {}",
                    self.padding, self.kernel
                ),
            ));
        }
        Ok(())
    }

    /// Output size along one axis, or `None` when the window does not fit.
    fn out_len(&self, len: usize) -> Option<usize> {
        (len + 2 * self.padding)
            .checked_sub(self.kernel)
            .map(|v| v / self.stride + 1)
    }
}

/// 2-D max-pooling of an `(N, C, H, W)` tensor with a correct backward pass.
///
/// Like PyTorch, the gradient goes to the first maximum of each window in scan order and a NaN
/// in a window wins. On CUDA mustard's kernels (`cuda/max_pool.cu`) compute the same values and
/// gradients; on other devices (and with [`super::Kernels::Portable`]) the pool is composed from
/// shifted strided views and `maximum`, whose candle gradient splits ties evenly.
///
/// # Shapes
/// `(N, C, H, W)` → `(N, C, (H + 2p − k) / s + 1, (W + 2p − k) / s + 1)`.
pub fn max_pool2d(x: &Tensor, cfg: MaxPool2dConfig) -> Result<Tensor> {
    cfg.validate()?;
    let (_, _, h, w) = check_nchw("max_pool2d", x)?;
    if cfg.out_len(h).is_none() || cfg.out_len(w).is_none() {
        return Err(Error::shape(
            "max_pool2d",
            "input",
            x.shape(),
            format!(
                "H and W of at least {} for kernel {} and padding {}",
                cfg.kernel.saturating_sub(2 * cfg.padding),
                cfg.kernel,
                cfg.padding
            ),
        ));
    }
    if super::cpu_kernels(x) || super::cuda_kernels(x) {
        Ok(x.contiguous()?.apply_op1(MaxPool2d(cfg))?)
    } else {
        composed(x, cfg)
    }
}

/// The device-generic path: the maximum over the k² shifted, strided views of the padded input.
fn composed(x: &Tensor, cfg: MaxPool2dConfig) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    let (oh, ow) = (cfg.out_len(h).unwrap_or(0), cfg.out_len(w).unwrap_or(0));
    let (s, p, k) = (cfg.stride, cfg.padding, cfg.kernel);
    // Pad to at least (k − 1 + s·oh) rows so that every strided view can be reshaped.
    let (ph, pw) = (k - 1 + s * oh, k - 1 + s * ow);
    let ph = ph.max(h + 2 * p);
    let pw = pw.max(w + 2 * p);
    let neg = |rows: usize, cols: usize| {
        Tensor::full(f64::NEG_INFINITY, (n, c, rows, cols), x.device())?.to_dtype(x.dtype())
    };
    let mut padded = x.clone();
    if p > 0 || pw > w {
        padded = Tensor::cat(&[&neg(h, p)?, &padded, &neg(h, pw - w - p)?], 3)?;
    }
    if p > 0 || ph > h {
        padded = Tensor::cat(&[&neg(p, pw)?, &padded, &neg(ph - h - p, pw)?], 2)?;
    }
    let mut out: Option<Tensor> = None;
    for dy in 0..k {
        let rows = padded
            .narrow(2, dy, s * oh)?
            .reshape((n, c, oh, s, pw))?
            .narrow(3, 0, 1)?;
        let rows = rows.reshape((n, c, oh, pw))?;
        for dx in 0..k {
            let v = rows
                .narrow(3, dx, s * ow)?
                .reshape((n, c, oh, ow, s))?
                .narrow(4, 0, 1)?;
            let v = v.reshape((n, c, oh, ow))?;
            out = Some(match out {
                None => v,
                Some(o) => o.maximum(&v)?,
            });
        }
    }
    Ok(out.expect("kernel >= 1"))
}

/// Visits every output element with the index of the winning input element of its window
/// (`None` only for a window entirely in the padding, which a valid config never has): the
/// plain scan in PyTorch's order, which [`pool_plane`] and [`route_plane`] are tested against.
#[cfg(test)]
fn for_each_window<T: Real>(
    plane: &[T],
    (h, w): (usize, usize),
    (oh, ow): (usize, usize),
    cfg: MaxPool2dConfig,
    mut visit: impl FnMut(usize, Option<usize>, T),
) {
    for oy in 0..oh {
        for ox in 0..ow {
            let (arg, best) = scan_window(plane, (h, w), cfg, (oy, ox));
            visit(oy * ow + ox, arg, best);
        }
    }
}

/// The window rows (or columns) of output index `o` that fall inside a map of `len`.
fn window_span(cfg: MaxPool2dConfig, o: usize, len: usize) -> (usize, usize) {
    let start = (o * cfg.stride) as isize - cfg.padding as isize;
    let lo = start.max(0) as usize;
    let hi = ((start + cfg.kernel as isize).min(len as isize)).max(0) as usize;
    (lo, hi)
}

/// The index of the winning element of window `(oy, ox)` and its value: the first element in
/// row-major scan order that is larger than every one before it, or the first NaN.
fn scan_window<T: Real>(
    plane: &[T],
    (h, w): (usize, usize),
    cfg: MaxPool2dConfig,
    (oy, ox): (usize, usize),
) -> (Option<usize>, T) {
    let ((y0, y1), (x0, x1)) = (window_span(cfg, oy, h), window_span(cfg, ox, w));
    let mut best = T::NEG_INFINITY;
    let mut arg = None;
    for y in y0..y1 {
        let row = &plane[y * w..(y + 1) * w];
        for x in x0..x1 {
            let v = row[x];
            if arg.is_none() || v > best || v.is_nan_() {
                best = v;
                arg = Some(y * w + x);
                if v.is_nan_() {
                    return (arg, best);
                }
            }
        }
    }
    (arg, best)
}

/// Scratch for [`for_each_tap`]: a padded input row and its phases, −∞ where no value is
/// copied.
fn tap_buffer<T: Real>(buf: &mut Vec<T>, cfg: MaxPool2dConfig, ow: usize) {
    // Phase length: tap kx of window ox reads element ox + kx / s of phase kx % s.
    let q = ow + (cfg.kernel - 1) / cfg.stride;
    buf.clear();
    buf.resize(2 * cfg.stride * q, T::NEG_INFINITY);
}

/// Calls `visit(y, kx, tap)` for each window row `y` of output row `oy` inside the map and each
/// kernel column `kx`, in the scan order of [`scan_window`]: `tap[ox]` is the value window `ox`
/// reads there, −∞ in the padding. The input row is padded with −∞ and split into `stride`
/// phases (`phase j` holds columns `j, j + s, j + 2s, …` of the padded row), so that each tap
/// of a whole output row is one contiguous slice. `buf` comes from [`tap_buffer`].
#[inline(always)]
fn for_each_tap<T: Real>(
    plane: &[T],
    (h, w): (usize, usize),
    (oy, ow): (usize, usize),
    cfg: MaxPool2dConfig,
    buf: &mut [T],
    mut visit: impl FnMut(usize, usize, &[T]),
) {
    let (k, s, p) = (cfg.kernel, cfg.stride, cfg.padding);
    let q = buf.len() / (2 * s);
    let (padded, phases) = buf.split_at_mut(s * q);
    let start = (oy * s) as isize - p as isize;
    let y0 = start.max(0) as usize;
    let y1 = (start + k as isize).clamp(0, h as isize) as usize;
    for y in y0..y1 {
        // Columns −p.. of the map, −∞ outside it (the padded row is at least w + p long
        // wherever a window reaches past the right edge).
        let row = &plane[y * w..(y + 1) * w];
        let len = w.min(s * q - p);
        padded[p..p + len].copy_from_slice(&row[..len]);
        split_phases(padded, phases, s, q);
        for kx in 0..k {
            visit(y, kx, &phases[(kx % s) * q + kx / s..][..ow]);
        }
    }
}

/// The maxima of one plane's windows, the values [`scan_window`] finds, computed a whole
/// output row at a time so that the comparisons vectorise ([`for_each_tap`]): a value replaces
/// the running maximum when it is larger, or a NaN when the maximum is not one yet. The first
/// maximum in scan order thus wins, as there: the same value, zero sign and NaN payload. `buf`
/// is scratch.
fn pool_plane<T: Real>(
    plane: &[T],
    (h, w): (usize, usize),
    (_, ow): (usize, usize),
    cfg: MaxPool2dConfig,
    out: &mut [T],
    buf: &mut Vec<T>,
) {
    tap_buffer(buf, cfg, ow);
    for (oy, best) in out.chunks_exact_mut(ow).enumerate() {
        best.fill(T::NEG_INFINITY);
        for_each_tap(plane, (h, w), (oy, ow), cfg, buf, |_, _, tap| {
            update_max(best, tap)
        });
    }
}

avx2_dispatch! {
    /// The input gradient of one plane: each output gradient added to the winning element of its
    /// window, the one [`scan_window`] finds, found from the forward's maxima `m` a whole output
    /// row at a time (as [`pool_plane`] reads the taps): the first element in scan order equal to
    /// its window's maximum, or the first NaN where that is NaN. Ties and signed zeros resolve as
    /// in the scan, since no element before the winner is larger. A window whose maximum is −∞,
    /// which the padding's −∞ would match, takes the scan. `buf` and `win` are scratch.
    #[allow(clippy::too_many_arguments)]
    fn route_plane<T>(
        plane: &[T],
        hw: (usize, usize),
        out_hw: (usize, usize),
        cfg: MaxPool2dConfig,
        maxima_and_grad: (&[T], &[T]),
        d: &mut [T],
        buf: &mut Vec<T>,
        win: &mut Vec<usize>,
    ) {
        const NONE: usize = usize::MAX;
        let ((h, w), (_, ow), (m, g)) = (hw, out_hw, maxima_and_grad);
        let (s, p) = (cfg.stride, cfg.padding);
        tap_buffer(buf, cfg, ow);
        for (oy, (mrow, grow)) in m.chunks_exact(ow).zip(g.chunks_exact(ow)).enumerate() {
            win.clear();
            win.resize(ow, NONE);
            for_each_tap(plane, (h, w), (oy, ow), cfg, buf, |y, kx, tap| {
                // Padded column ox·s + kx is map column ox·s + kx − p (a hit is never in the
                // padding, where the wrapped index is not used).
                let base = (y * w + kx).wrapping_sub(p);
                for (ox, ((slot, &v), &best)) in win.iter_mut().zip(tap).zip(mrow).enumerate() {
                    let hit =
                        (v == best && best != T::NEG_INFINITY) || (v.is_nan_() && best.is_nan_());
                    // A select and an unconditional store, which vectorise.
                    let take = hit && *slot == NONE;
                    *slot = if take { base.wrapping_add(ox * s) } else { *slot };
                }
            });
            for (ox, (&slot, &gv)) in win.iter().zip(grow).enumerate() {
                let arg = if slot == NONE {
                    scan_window(plane, (h, w), cfg, (oy, ox)).0
                } else {
                    Some(slot)
                };
                if let Some(i) = arg {
                    d[i] += gv;
                }
            }
        }
    }
}

/// `phases[j·q + m] = padded[m·s + j]` for `j < s`, `m < q`: a copy for `s = 1`, pairs split
/// in one vectorised pass for the common `s = 2`.
#[inline]
fn split_phases<T: Real>(padded: &[T], phases: &mut [T], s: usize, q: usize) {
    match s {
        1 => phases[..q].copy_from_slice(&padded[..q]),
        2 => {
            let (even, odd) = phases[..2 * q].split_at_mut(q);
            for ((pair, e), o) in padded[..2 * q].chunks_exact(2).zip(even).zip(odd) {
                *e = pair[0];
                *o = pair[1];
            }
        }
        _ => {
            for (j, phase) in phases[..s * q].chunks_exact_mut(q).enumerate() {
                for (m, v) in phase.iter_mut().enumerate() {
                    *v = padded[m * s + j];
                }
            }
        }
    }
}

/// `best[i] = tap[i]` where `tap[i] > best[i]`, or where `tap[i]` is NaN and `best[i]` is not.
#[inline]
fn update_max<T: Real>(best: &mut [T], tap: &[T]) {
    for (b, &v) in best.iter_mut().zip(tap) {
        // A select and an unconditional store: a conditional store stays scalar.
        let take = v > *b || (v.is_nan_() && !b.is_nan_());
        *b = if take { v } else { *b };
    }
}

struct MaxPool2d(MaxPool2dConfig);

impl MaxPool2d {
    fn fwd<T: Real>(&self, x: &[T], (n, c, h, w): (usize, usize, usize, usize)) -> Vec<T> {
        let (oh, ow) = (
            self.0.out_len(h).unwrap_or(0),
            self.0.out_len(w).unwrap_or(0),
        );
        let mut out = vec![T::ZERO; n * c * oh * ow];
        out.par_chunks_mut(oh * ow)
            .zip(x.par_chunks(h * w))
            .for_each_init(Vec::new, |buf, (o, plane)| {
                pool_plane(plane, (h, w), (oh, ow), self.0, o, buf);
            });
        out
    }
}

impl CustomOp1 for MaxPool2d {
    fn name(&self) -> &'static str {
        "mustard.max_pool2d"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = l.shape().dims4()?;
        let out_hw = (
            self.0.out_len(h).unwrap_or(0),
            self.0.out_len(w).unwrap_or(0),
        );
        let out = run_typed!(self.name(), &[(s, l)], |x| self.fwd(x[0], (n, c, h, w)));
        Ok((out, nchw(n, c, out_hw.0, out_hw.1)))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        let (n, c, h, w) = l.shape().dims4()?;
        let (oh, ow) = (
            self.0.out_len(h).unwrap_or(0),
            self.0.out_len(w).unwrap_or(0),
        );
        let y = super::cuda::max_pool((s, l), None, (n * c, h, w, oh, ow), self.0)?;
        Ok((y, nchw(n, c, oh, ow)))
    }

    fn bwd(
        &self,
        arg: &Tensor,
        res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let op = MaxPool2dBackward {
            cfg: self.0,
            out: res.contiguous()?,
        };
        let grad = arg.apply_op2_no_bwd(&grad_res.contiguous()?, &op)?;
        Ok(Some(grad))
    }
}

/// Routes each output gradient to the winning input element of its window.
struct MaxPool2dBackward {
    cfg: MaxPool2dConfig,
    /// The forward's output (contiguous), whose maxima name the winners on the CPU.
    out: Tensor,
}

impl MaxPool2dBackward {
    fn bwd<T: Real>(
        &self,
        x: &[T],
        (g, m): (&[T], &[T]),
        (n, c, h, w): (usize, usize, usize, usize),
    ) -> Vec<T> {
        let cfg = self.cfg;
        let (oh, ow) = (cfg.out_len(h).unwrap_or(0), cfg.out_len(w).unwrap_or(0));
        let mut dx = vec![T::ZERO; n * c * h * w];
        if oh * ow == 0 {
            return dx;
        }
        dx.par_chunks_mut(h * w)
            .zip(x.par_chunks(h * w))
            .zip(g.par_chunks(oh * ow).zip(m.par_chunks(oh * ow)))
            .for_each_init(
                || (Vec::new(), Vec::new()),
                |(buf, win), ((d, plane), (gp, mp))| {
                    route_plane(plane, (h, w), (oh, ow), cfg, (mp, gp), d, buf, win);
                },
            );
        dx
    }
}

impl CustomOp2 for MaxPool2dBackward {
    fn name(&self) -> &'static str {
        "mustard.max_pool2d_backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let dims = l1.shape().dims4()?;
        let (s3, l3) = self.out.storage_and_layout();
        let candle_core::Storage::Cpu(s3) = &*s3 else {
            candle_core::bail!("{}: the forward output is on another device", self.name())
        };
        let inputs = [(s1, l1), (s2, l2), (s3, l3)];
        let out = run_typed!(self.name(), &inputs, |a| self.bwd(a[0], (a[1], a[2]), dims));
        Ok((out, l1.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        let (n, c, h, w) = l1.shape().dims4()?;
        let (oh, ow) = (
            self.cfg.out_len(h).unwrap_or(0),
            self.cfg.out_len(w).unwrap_or(0),
        );
        let dx = super::cuda::max_pool((s1, l1), Some((s2, l2)), (n * c, h, w, oh, ow), self.cfg)?;
        Ok((dx, l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

    use super::*;

    fn grad_of(x: &Tensor, f: impl Fn(&Tensor) -> Result<Tensor>) -> (Tensor, Tensor) {
        let var = Var::from_tensor(x).unwrap();
        let y = f(var.as_tensor()).unwrap();
        let w = Tensor::arange(0f64, y.elem_count() as f64, &Device::Cpu)
            .unwrap()
            .reshape(y.shape())
            .unwrap();
        let w = w.to_dtype(y.dtype()).unwrap().affine(0.1, 1.0).unwrap();
        let g = (&y * w).unwrap().sum_all().unwrap().backward().unwrap();
        (y, g.get(var.as_tensor()).unwrap().clone())
    }

    /// candle 0.11.1's max_pool2d backward scales every gradient by 1/k² (0.25 here).
    #[test]
    fn regression_candle_max_pool_gradient_scaled_by_inverse_k_squared() {
        let x = Tensor::new(&[[[[1f32, 2.], [3., 4.]]]], &Device::Cpu).unwrap();
        let var = Var::from_tensor(&x).unwrap();
        let y = max_pool2d(var.as_tensor(), MaxPool2dConfig::new(2, 2)).unwrap();
        let g = y.sum_all().unwrap().backward().unwrap();
        let g = g
            .get(var.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(g, [0.0, 0.0, 0.0, 1.0]);
    }

    #[test]
    fn the_first_maximum_of_a_tie_takes_the_gradient_and_nan_wins() {
        let x = Tensor::new(
            &[[[[5f32, 5., 1.], [5., f32::NAN, 0.], [2., 2., 2.]]]],
            &Device::Cpu,
        )
        .unwrap();
        let (y, g) = grad_of(&x, |x| max_pool2d(x, MaxPool2dConfig::new(2, 1)));
        let y = y.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(y.iter().all(|v| v.is_nan()), "{y:?}");
        let x = Tensor::new(&[[[[5f32, 5.], [5., 1.]]]], &Device::Cpu).unwrap();
        let (_, g2) = grad_of(&x, |x| max_pool2d(x, MaxPool2dConfig::new(2, 2)));
        assert_eq!(
            g2.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            [1.0, 0.0, 0.0, 0.0]
        );
        assert_eq!(g.dims(), &[1, 1, 3, 3]);
    }

    /// The row-at-a-time forward, and the backward's routing from its maxima, against the
    /// window scan, bit for bit, on planes full of ties, signed zeros, infinities and NaNs with
    /// distinct payloads.
    #[test]
    fn the_vectorised_forward_and_backward_find_the_first_maximum_of_every_window() {
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let special = [
            0.0f32,
            -0.0,
            1.0,
            1.0,
            2.0,
            f32::NEG_INFINITY,
            f32::INFINITY,
        ];
        for (h, w) in [(1, 1), (2, 3), (7, 9), (12, 10), (17, 31)] {
            let plane: Vec<f32> = (0..h * w)
                .map(|_| match next() % 16 {
                    0 => f32::from_bits(0x7fc0_0000 | (next() as u32 & 0xffff)),
                    1 => -f32::from_bits(0x7fc0_0000 | (next() as u32 & 0xffff)),
                    r => special[r as usize % special.len()],
                })
                .collect();
            for kernel in 1..=4 {
                for stride in 1..=3 {
                    for padding in 0..=kernel / 2 {
                        let cfg = MaxPool2dConfig {
                            kernel,
                            stride,
                            padding,
                        };
                        let (Some(oh), Some(ow)) = (cfg.out_len(h), cfg.out_len(w)) else {
                            continue;
                        };
                        let mut scan = vec![0f32; oh * ow];
                        for_each_window(&plane, (h, w), (oh, ow), cfg, |j, _, v| scan[j] = v);
                        let mut rows = vec![0f32; oh * ow];
                        pool_plane(&plane, (h, w), (oh, ow), cfg, &mut rows, &mut Vec::new());
                        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                        assert_eq!(bits(&rows), bits(&scan), "{h}x{w}, {cfg:?}");
                        // The backward's routing from these maxima against the scan's winners.
                        let g: Vec<f32> = (0..oh * ow).map(|j| 1.0 + j as f32 * 0.37).collect();
                        let mut want = vec![0f32; h * w];
                        for_each_window(&plane, (h, w), (oh, ow), cfg, |j, arg, _| {
                            if let Some(i) = arg {
                                want[i] += g[j];
                            }
                        });
                        let mut got = vec![0f32; h * w];
                        let (mut buf, mut win) = (Vec::new(), Vec::new());
                        let mg = (&rows[..], &g[..]);
                        route_plane(
                            &plane,
                            (h, w),
                            (oh, ow),
                            cfg,
                            mg,
                            &mut got,
                            &mut buf,
                            &mut win,
                        );
                        assert_eq!(bits(&got), bits(&want), "gradient {h}x{w}, {cfg:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn composed_path_equals_the_kernel() {
        let n = 2 * 3 * 9 * 11;
        let v: Vec<f64> = (0..n).map(|i| ((i * 7919) % 1009) as f64 / 97.0).collect();
        let x = Tensor::from_vec(v, (2, 3, 9, 11), &Device::Cpu).unwrap();
        for cfg in [
            MaxPool2dConfig::resnet_stem(),
            MaxPool2dConfig::new(2, 2),
            MaxPool2dConfig {
                kernel: 3,
                stride: 1,
                padding: 1,
            },
            MaxPool2dConfig::new(3, 3),
        ] {
            let (y1, g1) = grad_of(&x, |x| max_pool2d(x, cfg));
            let (y2, g2) = grad_of(&x, |x| composed(x, cfg));
            assert_eq!(
                y1.flatten_all().unwrap().to_vec1::<f64>().unwrap(),
                y2.flatten_all().unwrap().to_vec1::<f64>().unwrap(),
                "{cfg:?}"
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
            assert!(d < 1e-12, "{cfg:?}: gradients differ by {d}");
        }
    }

    #[test]
    fn bad_configurations_and_inputs_are_errors() {
        let x = Tensor::zeros((1, 1, 2, 2), candle_core::DType::F32, &Device::Cpu).unwrap();
        let err = |x: &Tensor, cfg| max_pool2d(x, cfg).unwrap_err().to_string();
        assert_eq!(
            err(
                &x,
                MaxPool2dConfig {
                    kernel: 2,
                    stride: 1,
                    padding: 2
                }
            ),
            "max_pool2d: padding 2 is larger than half the kernel 2"
        );
        assert_eq!(
            err(&x, MaxPool2dConfig::new(0, 1)),
            "max_pool2d: kernel and stride must be at least 1"
        );
        assert_eq!(err(&x, MaxPool2dConfig::new(3, 1)), "max_pool2d: input has shape [1, 1, 2, 2], expected H and W of at least 3 for kernel 3 and padding 0");
        let flat = Tensor::zeros((2, 2), candle_core::DType::F32, &Device::Cpu).unwrap();
        assert_eq!(
            err(&flat, MaxPool2dConfig::new(2, 2)),
            "max_pool2d: input has shape [2, 2], expected (N, C, H, W)"
        );
        let empty = Tensor::zeros((0, 1, 2, 2), candle_core::DType::F32, &Device::Cpu).unwrap();
        assert_eq!(
            err(&empty, MaxPool2dConfig::new(2, 2)),
            "max_pool2d: input has shape [0, 1, 2, 2], expected a non-empty tensor"
        );
        let ints = Tensor::zeros((1, 1, 2, 2), candle_core::DType::U32, &Device::Cpu).unwrap();
        assert_eq!(
            err(&ints, MaxPool2dConfig::new(2, 2)),
            "max_pool2d: dtype U32 is not supported, use f32 or f64"
        );
    }
}
