//! Batch normalisation with batch statistics (training) as one fused CPU op: one pass for the
//! per-channel statistics, one for the output, and a backward of two passes, instead of the
//! eight whole-tensor temporaries of the composed form.

use std::mem::MaybeUninit;

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::{check_nchw, contiguous_slice, Real};
use crate::{Error, Result};

/// Per-channel statistics of a batch.
#[derive(Debug, Clone)]
pub struct BatchStats {
    /// `(C,)` mean over N, H, W.
    pub mean: Tensor,
    /// `(C,)` biased variance over N, H, W.
    pub var: Tensor,
    /// The values per channel these are over: N·H·W, summed over the processes when
    /// synchronised (for the unbiased running variance).
    pub count: f64,
}

/// `(x − mean) / √(var + eps) · γ + β` with the mean and biased variance of `x` per channel over
/// N, H, W; gradients flow to `x`, `γ` and `β`. Also returns the statistics (no gradient), for
/// the running averages.
///
/// On the CPU (f32, f64) this is one fused op, and on CUDA mustard's kernels
/// (`cuda/batch_norm.cu`: the same passes, per-channel sums as block reductions in double);
/// elsewhere, and with [`super::Kernels::Portable`], the same formula composed from candle ops.
///
/// # Shapes
/// `x`: `(N, C, H, W)`, `γ`, `β`: `(C,)` → `(N, C, H, W)`.
pub fn batch_norm_train(
    x: &Tensor,
    gamma: &Tensor,
    beta: &Tensor,
    eps: f64,
) -> Result<(Tensor, BatchStats)> {
    let (n, c, h, w) = check_nchw("batch_norm_train", x)?;
    for (name, t) in [("weight", gamma), ("bias", beta)] {
        if t.dims() != [c] {
            return Err(Error::shape(
                "batch_norm_train",
                name,
                t.shape(),
                format!("({c},) for {c} channels"),
            ));
        }
    }
    if n * h * w < 2 {
        return Err(Error::shape(
            "batch_norm_train",
            "input",
            x.shape(),
            "more than one value per channel in training",
        ));
    }
    // Statistics over every process of a data-parallel step (crate::dist), unless per-process.
    let synced = crate::dist::scope()
        .filter(|s| s.sync_batch_norm)
        .map(|s| s.world);
    if let Some(world) = &synced {
        if !super::cpu_kernels(x) && !super::cuda_kernels(x) {
            return Err(Error::config(
                "batch_norm_train",
                format!(
                    "BatchNorm synchronised over {} processes runs on the CPU and CUDA kernels only (not on {:?} or with --kernels portable); set train.sync_batch_norm = false",
                    world.size(),
                    x.device()
                ),
            ));
        }
    }
    if !super::cpu_kernels(x) && !super::cuda_kernels(x) {
        let per_channel = |t: &Tensor| t.reshape((1, c, 1, 1));
        let mean = x.mean_keepdim((0, 2, 3))?;
        let centred = x.broadcast_sub(&mean)?;
        let var = centred.sqr()?.mean_keepdim((0, 2, 3))?;
        let inv_std = (&var + eps)?.sqrt()?.recip()?;
        let y = centred
            .broadcast_mul(&inv_std)?
            .broadcast_mul(&per_channel(gamma)?)?
            .broadcast_add(&per_channel(beta)?)?;
        let stats = BatchStats {
            mean: mean.detach().flatten_all()?,
            var: var.detach().flatten_all()?,
            count: (n * h * w) as f64,
        };
        return Ok((y, stats));
    }
    let x = x.contiguous()?;
    // Row 0: means, row 1: biased variances.
    let (stats, sync) = match synced {
        None => (x.apply_op1_no_bwd(&ChannelStats)?, None),
        Some(world) => {
            let sync = Synced {
                world,
                local_count: (n * h * w) as f64,
                count: Default::default(),
            };
            (x.apply_op1_no_bwd(&sync)?, Some(sync))
        }
    };
    // `[mean; 1/√(var + eps)]` in f64 on x's device (correctly rounded IEEE operations, the
    // same numbers everywhere): on CUDA nothing goes to the host and back in every layer.
    let moments = stats.to_dtype(candle_core::DType::F64)?;
    let inv_std = moments.get(1)?.affine(1.0, eps)?.sqrt()?.recip()?;
    let count = sync.as_ref().map_or((n * h * w) as f64, Synced::count);
    let op = BatchNormTrain {
        moments: Tensor::cat(&[&moments.get(0)?, &inv_std], 0)?.contiguous()?,
        sync,
    };
    let gamma = gamma.to_dtype(x.dtype())?.contiguous()?;
    let beta = beta.to_dtype(x.dtype())?.contiguous()?;
    let y = x.apply_op3(&gamma, &beta, op)?;
    Ok((
        y,
        BatchStats {
            mean: stats.get(0)?,
            var: stats.get(1)?,
            count,
        },
    ))
}

/// A sum in f64 over eight lanes: value `i` of each slice added goes to lane `i mod 8`, and the
/// lanes are combined pairwise at the end. A fixed order, the same for any thread count, in
/// eight independent chains of additions: one running sum waits for each addition before the
/// next (four cycles each), which made the per-channel sums of BatchNorm about 6% of a training
/// step of the MCN network.
#[derive(Default, Clone, Copy)]
struct Lanes([f64; 8]);

impl Lanes {
    #[inline(always)]
    fn add<T: Copy>(&mut self, values: &[T], f: impl Fn(T) -> f64) {
        let mut chunks = values.chunks_exact(8);
        for chunk in &mut chunks {
            for (lane, &v) in self.0.iter_mut().zip(chunk) {
                *lane += f(v);
            }
        }
        for (lane, &v) in self.0.iter_mut().zip(chunks.remainder()) {
            *lane += f(v);
        }
    }

    fn total(&self) -> f64 {
        let l = &self.0;
        ((l[0] + l[4]) + (l[2] + l[6])) + ((l[1] + l[5]) + (l[3] + l[7]))
    }
}

/// `Σ dy · (x − mean) · inv_std` into `lanes`, in [`Lanes::add`]'s order.
#[inline(always)]
fn sdy_x<T: Real>(lanes: &mut Lanes, x: &[T], dy: &[T], (mean, inv_std): (f64, f64)) {
    let (mut xc, mut gc) = (x.chunks_exact(8), dy.chunks_exact(8));
    for (xs, gs) in (&mut xc).zip(&mut gc) {
        for ((lane, &v), &g) in lanes.0.iter_mut().zip(xs).zip(gs) {
            *lane += g.to_f64() * (v.to_f64() - mean) * inv_std;
        }
    }
    for ((lane, &v), &g) in lanes.0.iter_mut().zip(xc.remainder()).zip(gc.remainder()) {
        *lane += g.to_f64() * (v.to_f64() - mean) * inv_std;
    }
}

/// `(2, C)`: per channel the mean and the biased variance (accumulated in f64).
struct ChannelStats;

impl ChannelStats {
    fn fwd<T: Real>(x: &[T], (n, c, h, w): (usize, usize, usize, usize)) -> Vec<T> {
        let hw = h * w;
        let count = (n * hw) as f64;
        let per: Vec<(f64, f64)> = (0..c)
            .into_par_iter()
            .map(|ch| {
                let plane = |img: usize| &x[(img * c + ch) * hw..(img * c + ch + 1) * hw];
                let sum = (0..n).fold(Lanes::default(), |l, img| plane_sum(l, plane(img)));
                let mean = sum.total() / count;
                let sq = (0..n).fold(Lanes::default(), |l, img| {
                    plane_squares(l, plane(img), mean)
                });
                (mean, sq.total() / count)
            })
            .collect();
        per.iter()
            .map(|p| T::from_f64_(p.0))
            .chain(per.iter().map(|p| T::from_f64_(p.1)))
            .collect()
    }
}

impl CustomOp1 for ChannelStats {
    fn name(&self) -> &'static str {
        "mustard.batch_stats"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let dims = l.shape().dims4()?;
        let shape = Shape::from((2, dims.1));
        match s {
            CpuStorage::F32(_) => Ok((
                CpuStorage::F32(Self::fwd(contiguous_slice::<f32>(self.name(), s, l)?, dims)),
                shape,
            )),
            CpuStorage::F64(_) => Ok((
                CpuStorage::F64(Self::fwd(contiguous_slice::<f64>(self.name(), s, l)?, dims)),
                shape,
            )),
            _ => candle_core::bail!("{}: only f32 and f64 are supported", self.name()),
        }
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        let (n, c, h, w) = l.shape().dims4()?;
        let stats = super::cuda::batch_norm_stats((s, l), (n, c, h * w))?;
        Ok((stats, Shape::from((2, c))))
    }
}

/// BatchNorm over the processes of a data-parallel step: as an op, the `(2, C)` statistics of
/// [`ChannelStats`] over every process's values (each sum all-reduced: the means first, then
/// the squared deviations from them); in the backward, the per-channel gradient sums.
#[derive(Clone)]
struct Synced {
    world: std::sync::Arc<dyn crate::dist::Collective>,
    /// This process's values per channel, N·H·W.
    local_count: f64,
    /// Every process's, summed with the per-channel sums (one all-reduce), set by the forward.
    count: std::sync::Arc<std::sync::OnceLock<f64>>,
}

impl Synced {
    /// Values per channel over every process (after the forward ran).
    fn count(&self) -> f64 {
        *self
            .count
            .get()
            .expect("the synchronised statistics are computed before they are used")
    }

    fn all_reduce(&self, values: &mut [f64]) -> candle_core::Result<()> {
        self.world
            .all_reduce_f64(values)
            .map_err(|e| candle_core::Error::Msg(e.to_string()))
    }

    /// Sums a buffer of doubles on the GPU over the processes.
    #[cfg(feature = "cuda")]
    fn all_reduce_cuda(
        &self,
        values: &mut candle_core::cuda_backend::cudarc::driver::CudaSlice<f64>,
    ) -> candle_core::Result<()> {
        self.world
            .all_reduce_cuda(crate::dist::CudaValues::F64(values))
            .map_err(|e| candle_core::Error::Msg(e.to_string()))
    }

    fn fwd<T: Real>(
        &self,
        x: &[T],
        (n, c, h, w): (usize, usize, usize, usize),
    ) -> candle_core::Result<Vec<T>> {
        let hw = h * w;
        let plane = |img: usize, ch: usize| &x[(img * c + ch) * hw..(img * c + ch + 1) * hw];
        let mut sums: Vec<f64> = (0..c)
            .into_par_iter()
            .map(|ch| {
                (0..n)
                    .fold(Lanes::default(), |l, img| plane_sum(l, plane(img, ch)))
                    .total()
            })
            .collect();
        sums.push(self.local_count);
        self.all_reduce(&mut sums)?;
        let count = sums.pop().expect("the count was pushed");
        let _ = self.count.set(count);
        let mean: Vec<f64> = sums.iter().map(|s| s / count).collect();
        let mut squares: Vec<f64> = (0..c)
            .into_par_iter()
            .map(|ch| {
                (0..n)
                    .fold(Lanes::default(), |l, img| {
                        plane_squares(l, plane(img, ch), mean[ch])
                    })
                    .total()
            })
            .collect();
        self.all_reduce(&mut squares)?;
        Ok(mean
            .iter()
            .map(|&m| T::from_f64_(m))
            .chain(squares.iter().map(|&s| T::from_f64_(s / count)))
            .collect())
    }
}

impl CustomOp1 for Synced {
    fn name(&self) -> &'static str {
        "mustard.batch_stats_synced"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let dims = l.shape().dims4()?;
        let shape = Shape::from((2, dims.1));
        match s {
            CpuStorage::F32(_) => Ok((
                CpuStorage::F32(self.fwd(contiguous_slice::<f32>(self.name(), s, l)?, dims)?),
                shape,
            )),
            CpuStorage::F64(_) => Ok((
                CpuStorage::F64(self.fwd(contiguous_slice::<f64>(self.name(), s, l)?, dims)?),
                shape,
            )),
            _ => candle_core::bail!("{}: only f32 and f64 are supported", self.name()),
        }
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s: &candle_core::CudaStorage,
        l: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        let (n, c, h, w) = l.shape().dims4()?;
        let reduce = |v: &mut _| self.all_reduce_cuda(v);
        let (stats, count) = super::cuda::batch_norm_stats_synced((s, l), (n, c, h * w), &reduce)?;
        let _ = self.count.set(count);
        Ok((stats, Shape::from((2, c))))
    }
}

/// The normalisation with fixed batch statistics; its backward accounts for their dependence
/// on `x`.
struct BatchNormTrain {
    /// `(2·C,)` f64 on the input's device: the means, then the inverse deviations.
    moments: Tensor,
    /// The processes whose statistics these are, when synchronised.
    sync: Option<Synced>,
}

/// The means and inverse deviations of `moments` (`(2·C,)` f64), on the host.
fn host_moments(moments: &Tensor) -> candle_core::Result<(Vec<f64>, Vec<f64>)> {
    let mut mean = moments.to_vec1::<f64>()?;
    let inv_std = mean.split_off(mean.len() / 2);
    Ok((mean, inv_std))
}

impl BatchNormTrain {
    fn fwd<T: Real>(
        x: &[T],
        gamma: &[T],
        beta: &[T],
        (mean, inv_std): (&[f64], &[f64]),
        (_, c, h, w): (usize, usize, usize, usize),
    ) -> Vec<T> {
        let hw = h * w;
        let mut y = Vec::with_capacity(x.len());
        y.spare_capacity_mut()
            .par_chunks_mut(hw)
            .zip(x.par_chunks(hw))
            .enumerate()
            .for_each(|(p, (out, plane))| {
                let ch = p % c;
                let scale = gamma[ch].to_f64() * inv_std[ch];
                let shift = beta[ch].to_f64() - mean[ch] * scale;
                normalize_plane(out, plane, T::from_f64_(scale), T::from_f64_(shift));
            });
        // SAFETY: the planes above cover all `x.len()` elements, each written once.
        unsafe { y.set_len(x.len()) };
        y
    }
}

fn three<'a, T: Real>(
    name: &'static str,
    (s1, l1): (&'a CpuStorage, &Layout),
    (s2, l2): (&'a CpuStorage, &Layout),
    (s3, l3): (&'a CpuStorage, &Layout),
) -> candle_core::Result<(&'a [T], &'a [T], &'a [T])> {
    Ok((
        contiguous_slice::<T>(name, s1, l1)?,
        contiguous_slice::<T>(name, s2, l2)?,
        contiguous_slice::<T>(name, s3, l3)?,
    ))
}

impl CustomOp3 for BatchNormTrain {
    fn name(&self) -> &'static str {
        "mustard.batch_norm_train"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let dims = l1.shape().dims4()?;
        let shape = l1.shape().clone();
        let (mean, inv_std) = host_moments(&self.moments)?;
        let m = (&mean[..], &inv_std[..]);
        match s1 {
            CpuStorage::F32(_) => {
                let (x, g, b) = three::<f32>(self.name(), (s1, l1), (s2, l2), (s3, l3))?;
                Ok((CpuStorage::F32(Self::fwd(x, g, b, m, dims)), shape))
            }
            CpuStorage::F64(_) => {
                let (x, g, b) = three::<f64>(self.name(), (s1, l1), (s2, l2), (s3, l3))?;
                Ok((CpuStorage::F64(Self::fwd(x, g, b, m, dims)), shape))
            }
            _ => candle_core::bail!("{}: only f32 and f64 are supported", self.name()),
        }
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        let (n, c, h, w) = l1.shape().dims4()?;
        let (storage, ml) = self.moments.storage_and_layout();
        let candle_core::Storage::Cuda(ms) = &*storage else {
            candle_core::bail!("{}: statistics on another device", self.name())
        };
        let y = super::cuda::batch_norm_normalize(
            (s1, l1),
            (s2, l2),
            (s3, l3),
            (ms, ml),
            (n, c, h * w),
        )?;
        Ok((y, l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        _beta: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (n, c, h, w) = x.dims4()?;
        let packed = x.apply_op2_no_bwd(
            &grad.contiguous()?,
            &BatchNormTrainBackward {
                moments: self.moments.clone(),
                gamma: gamma.to_dtype(candle_core::DType::F64)?.contiguous()?,
                sync: self.sync.clone(),
            },
        )?;
        let len = n * c * h * w;
        let dx = packed.narrow(0, 0, len)?.reshape((n, c, h, w))?;
        let dgamma = packed.narrow(0, len, c)?;
        let dbeta = packed.narrow(0, len + c, c)?;
        Ok((Some(dx), Some(dgamma), Some(dbeta)))
    }
}

/// One channel's numbers for its input gradient.
struct DxConstants {
    /// γ / √(var + eps).
    k: f64,
    mean: f64,
    inv_std: f64,
    /// Σ dy / count.
    sdy_mean: f64,
    /// Σ dy · x̂.
    sdyx: f64,
    /// The values per channel, N·H·W.
    count: f64,
    /// `1 / count` where that is exact (a power of two).
    reciprocal: Option<f64>,
}

avx2_dispatch! {
    /// `dx = k · (dy − Σdy / count − x̂ · Σdy·x̂ / count)` over one plane.
    fn dx_plane<T>(dx: &mut [MaybeUninit<T>], x: &[T], dy: &[T], c: &DxConstants) {
        let (k, mean, inv_std, sdy_mean, sdyx) = (c.k, c.mean, c.inv_std, c.sdy_mean, c.sdyx);
        match c.reciprocal {
            Some(r) => {
                for ((o, &v), &g) in dx.iter_mut().zip(x).zip(dy) {
                    let xhat = (v.to_f64() - mean) * inv_std;
                    o.write(T::from_f64_(k * (g.to_f64() - sdy_mean - xhat * sdyx * r)));
                }
            }
            None => {
                let count = c.count;
                for ((o, &v), &g) in dx.iter_mut().zip(x).zip(dy) {
                    let xhat = (v.to_f64() - mean) * inv_std;
                    o.write(T::from_f64_(k * (g.to_f64() - sdy_mean - xhat * sdyx / count)));
                }
            }
        }
    }
}

avx2_dispatch! {
    /// `lanes` plus the values of `plane`.
    fn plane_sum<T>(lanes: Lanes, plane: &[T]) -> Lanes {
        let mut lanes = lanes;
        lanes.add(plane, |v| v.to_f64());
        lanes
    }
}

avx2_dispatch! {
    /// `lanes` plus the squared deviations from `mean` of the values of `plane`.
    fn plane_squares<T>(lanes: Lanes, plane: &[T], mean: f64) -> Lanes {
        let mut lanes = lanes;
        lanes.add(plane, |v| {
            let d = v.to_f64() - mean;
            d * d
        });
        lanes
    }
}

avx2_dispatch! {
    /// `out = plane · scale + shift`.
    fn normalize_plane<T>(out: &mut [MaybeUninit<T>], plane: &[T], scale: T, shift: T) {
        for (o, &v) in out.iter_mut().zip(plane) {
            o.write(v * scale + shift);
        }
    }
}

avx2_dispatch! {
    /// `(Σ dy, Σ dy · x̂)` plus one plane's.
    fn plane_grad_sums<T>(
        sums: (Lanes, Lanes),
        x: &[T],
        dy: &[T],
        mean: f64,
        inv_std: f64,
    ) -> (Lanes, Lanes) {
        let (mut sdy, mut sdyx) = sums;
        sdy.add(dy, |g| g.to_f64());
        sdy_x(&mut sdyx, x, dy, (mean, inv_std));
        (sdy, sdyx)
    }
}

/// Packs `[dx (N·C·H·W), dγ (C), dβ (C)]`.
struct BatchNormTrainBackward {
    /// The forward's [`BatchNormTrain::moments`].
    moments: Tensor,
    /// `(C,)` γ in f64, on the same device.
    gamma: Tensor,
    /// The forward's processes, when synchronised: the input gradient takes the gradient sums
    /// of every process (γ's and β's gradients stay this process's, summed with the others'
    /// with every parameter's).
    sync: Option<Synced>,
}

impl BatchNormTrainBackward {
    fn bwd<T: Real>(
        x: &[T],
        dy: &[T],
        (mean, inv_std, gamma): (&[f64], &[f64], &[f64]),
        (n, c, h, w): (usize, usize, usize, usize),
        sync: Option<&Synced>,
    ) -> candle_core::Result<Vec<T>> {
        let hw = h * w;
        let count = sync.map_or((n * hw) as f64, Synced::count);
        assert_eq!(
            dy.len(),
            x.len(),
            "batch_norm backward: gradient and input lengths"
        );
        // Per channel: Σ dy and Σ dy·x̂.
        let sums: Vec<(f64, f64)> = (0..c)
            .into_par_iter()
            .map(|ch| {
                let (m, s) = (mean[ch], inv_std[ch]);
                let (sdy, sdyx) = (0..n).fold(Default::default(), |sums, img| {
                    let range = (img * c + ch) * hw..(img * c + ch + 1) * hw;
                    plane_grad_sums(sums, &x[range.clone()], &dy[range], m, s)
                });
                (sdy.total(), sdyx.total())
            })
            .collect();
        // Over every process when synchronised.
        let global = match sync {
            None => None,
            Some(s) => {
                let mut flat: Vec<f64> = sums.iter().flat_map(|&(a, b)| [a, b]).collect();
                s.all_reduce(&mut flat)?;
                Some(flat.chunks(2).map(|p| (p[0], p[1])).collect::<Vec<_>>())
            }
        };
        let for_dx = global.as_deref().unwrap_or(&sums);
        let mut out = Vec::with_capacity(x.len() + 2 * c);
        let (dx, tail) = out.spare_capacity_mut().split_at_mut(x.len());
        // `x̂ · Σdy·x̂ / count` divides per value. Divided by a power of two, the result is the
        // same as multiplied by its exact reciprocal (both round the same real number once), and
        // a multiplication is several times cheaper.
        let reciprocal =
            (count.fract() == 0.0 && (count as u64).is_power_of_two()).then(|| 1.0 / count);
        let planes = dx
            .par_chunks_mut(hw)
            .zip(x.par_chunks(hw).zip(dy.par_chunks(hw)))
            .enumerate();
        planes.for_each(|(p, (d, (x, g)))| {
            let ch = p % c;
            let constants = DxConstants {
                k: gamma[ch] * inv_std[ch],
                mean: mean[ch],
                inv_std: inv_std[ch],
                sdy_mean: for_dx[ch].0 / count,
                sdyx: for_dx[ch].1,
                count,
                reciprocal,
            };
            dx_plane(d, x, g, &constants)
        });
        for ch in 0..c {
            tail[ch].write(T::from_f64_(sums[ch].1));
            tail[c + ch].write(T::from_f64_(sums[ch].0));
        }
        // SAFETY: the planes of `dx` cover its `x.len()` elements and the loop above the `2c` of
        // the tail, each written once.
        unsafe { out.set_len(x.len() + 2 * c) };
        Ok(out)
    }
}

impl CustomOp2 for BatchNormTrainBackward {
    fn name(&self) -> &'static str {
        "mustard.batch_norm_train_backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let dims = l1.shape().dims4()?;
        let len = l1.shape().elem_count() + 2 * dims.1;
        let (mean, inv_std) = host_moments(&self.moments)?;
        let gamma = self.gamma.to_vec1::<f64>()?;
        let m = (&mean[..], &inv_std[..], &gamma[..]);
        match s1 {
            CpuStorage::F32(_) => {
                let x = contiguous_slice::<f32>(self.name(), s1, l1)?;
                let g = contiguous_slice::<f32>(self.name(), s2, l2)?;
                let out = Self::bwd(x, g, m, dims, self.sync.as_ref())?;
                Ok((CpuStorage::F32(out), Shape::from(len)))
            }
            CpuStorage::F64(_) => {
                let x = contiguous_slice::<f64>(self.name(), s1, l1)?;
                let g = contiguous_slice::<f64>(self.name(), s2, l2)?;
                let out = Self::bwd(x, g, m, dims, self.sync.as_ref())?;
                Ok((CpuStorage::F64(out), Shape::from(len)))
            }
            _ => candle_core::bail!("{}: only f32 and f64 are supported", self.name()),
        }
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
        let (ms, ml) = self.moments.storage_and_layout();
        let (gs, gl) = self.gamma.storage_and_layout();
        let (candle_core::Storage::Cuda(ms), candle_core::Storage::Cuda(gs)) = (&*ms, &*gs) else {
            candle_core::bail!("{}: statistics on another device", self.name())
        };
        let reduce = |v: &mut _| match &self.sync {
            Some(s) => s.all_reduce_cuda(v),
            None => Ok(()),
        };
        let packed = super::cuda::batch_norm_backward(
            (s1, l1),
            (s2, l2),
            ((ms, ml), (gs, gl)),
            (n, c, h * w),
            self.sync.as_ref().map(|s| (&reduce as _, s.count())),
        )?;
        Ok((packed, Shape::from(n * c * h * w + 2 * c)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lane_sums_add_every_value_once() {
        // Integers are exact in f64 whatever the order: 0 + 1 + … + 1002 over uneven slices.
        let v: Vec<f32> = (0..1003).map(|i| i as f32).collect();
        let mut lanes = Lanes::default();
        for part in [&v[..5], &v[5..16], &v[16..1000], &v[1000..]] {
            lanes.add(part, |x| x as f64);
        }
        assert_eq!(lanes.total(), 1002.0 * 1003.0 / 2.0);
        let mut lanes = Lanes::default();
        sdy_x(&mut lanes, &v, &v, (1.0, 0.5));
        let expected: f64 = v.iter().map(|&x| x as f64 * (x as f64 - 1.0) * 0.5).sum();
        assert_eq!(lanes.total(), expected);
    }

    /// Dividing by a power-of-two count and multiplying by its reciprocal give the same bits,
    /// in f32 and f64, for values spread over many binades.
    #[test]
    fn reciprocal_of_a_power_of_two_count_is_the_division_bit_for_bit() {
        let x: Vec<f64> = (0..4099)
            .map(|i| {
                let v = ((i * 7919) % 2003) as f64 / 101.0 - 9.7;
                v * 2f64.powi((i % 37) - 18)
            })
            .collect();
        let dy: Vec<f64> = (0..x.len())
            .map(|i| ((i * 104729) % 1009) as f64 / 53.0 - 9.1)
            .collect();
        for count in [2.0, 64.0, 8192.0, 2f64.powi(40)] {
            let constants = |reciprocal| DxConstants {
                k: 1.7,
                mean: 0.3,
                inv_std: 2.9,
                sdy_mean: 0.01,
                sdyx: 0.37 * count,
                count,
                reciprocal,
            };
            let run = |reciprocal: Option<f64>| {
                let mut out64 = vec![MaybeUninit::uninit(); x.len()];
                dx_plane(&mut out64, &x, &dy, &constants(reciprocal));
                let (x32, dy32): (Vec<f32>, Vec<f32>) = x
                    .iter()
                    .zip(&dy)
                    .map(|(&a, &b)| (a as f32, b as f32))
                    .unzip();
                let mut out32 = vec![MaybeUninit::uninit(); x.len()];
                dx_plane(&mut out32, &x32, &dy32, &constants(reciprocal));
                // SAFETY: dx_plane writes every element.
                unsafe {
                    (
                        out64
                            .iter()
                            .map(|v| v.assume_init().to_bits())
                            .collect::<Vec<_>>(),
                        out32
                            .iter()
                            .map(|v| v.assume_init().to_bits())
                            .collect::<Vec<_>>(),
                    )
                }
            };
            assert_eq!(run(Some(1.0 / count)), run(None), "count {count}");
        }
    }
}
