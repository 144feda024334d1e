//! mustard's own CUDA kernels (`cuda/*.cu`, compiled to PTX by `build.rs` with the `cuda`
//! feature), launched from the `cuda_fwd` of the custom ops: max-pooling and training
//! BatchNorm, forward and backward, and the heatmap peaks of the device top-K
//! (`heatmap::select_on_device`). Each computes what the op's CPU kernel computes, in the
//! same order where it can (BatchNorm's per-channel sums are block reductions in double);
//! `tests/cuda.rs` compares them on a GPU, `tests/cuda_emulated.rs` runs their source on the
//! CPU (`cuda/emulate`).

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{CudaView, LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::{CudaStorageSlice, WrapErr};
use candle_core::{CudaStorage, Layout};

use super::MaxPool2dConfig;

/// The max-pooling module: its name in the device's module cache and its PTX.
const MAX_POOL: (&str, &str) = (
    "mustard_max_pool",
    include_str!(concat!(env!("OUT_DIR"), "/max_pool.ptx")),
);

/// `v` as a kernel's `int` argument, or an error naming `what`.
fn int(v: usize, what: &str) -> candle_core::Result<i32> {
    i32::try_from(v)
        .map_err(|_| candle_core::Error::Msg(format!("{what} = {v} is too large for a CUDA int")))
}

/// One thread per element, in blocks of 256 (the kernels declare `__launch_bounds__(256)`).
fn launch_config(len: usize) -> candle_core::Result<LaunchConfig> {
    const THREADS: u32 = 256;
    let blocks = u32::try_from(len.div_ceil(THREADS as usize)).map_err(|_| {
        candle_core::Error::Msg(format!("{len} elements are too many for one launch"))
    })?;
    Ok(LaunchConfig {
        grid_dim: (blocks.max(1), 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    })
}

/// Max-pooling of `planes` planes of `h`×`w` into `oh`×`ow`: the pooled maps, or with `grad`
/// (the gradient of the pooled maps) the gradient of the input.
pub(crate) fn max_pool(
    (x, xl): (&CudaStorage, &Layout),
    grad: Option<(&CudaStorage, &Layout)>,
    (planes, h, w, oh, ow): (usize, usize, usize, usize, usize),
    cfg: MaxPool2dConfig,
) -> candle_core::Result<CudaStorage> {
    if !xl.is_contiguous() || grad.is_some_and(|(_, l)| !l.is_contiguous()) {
        candle_core::bail!("mustard.max_pool2d (CUDA): the inputs must be contiguous");
    }
    if xl.shape().elem_count() != planes * h * w
        || grad.is_some_and(|(_, l)| l.shape().elem_count() != planes * oh * ow)
    {
        candle_core::bail!("mustard.max_pool2d (CUDA): input or gradient of the wrong size");
    }
    let dev = x.device();
    let len = if grad.is_some() {
        planes * h * w
    } else {
        planes * oh * ow
    };
    let dims = [
        int(h, "height")?,
        int(w, "width")?,
        int(oh, "output height")?,
        int(ow, "output width")?,
        int(cfg.kernel, "kernel")?,
        int(cfg.stride, "stride")?,
        int(cfg.padding, "padding")?,
    ];
    let planes = planes as i64;
    macro_rules! launch {
        ($t:ty, $suffix:literal) => {{
            let xs = x.as_cuda_slice::<$t>()?.slice(xl.start_offset()..);
            let gs = match grad {
                Some((g, gl)) => Some(g.as_cuda_slice::<$t>()?.slice(gl.start_offset()..)),
                None => None,
            };
            let name = if grad.is_some() {
                concat!("mustard_max_pool_bwd_", $suffix)
            } else {
                concat!("mustard_max_pool_", $suffix)
            };
            let func = dev.get_or_load_custom_func(name, MAX_POOL.0, MAX_POOL.1)?;
            // SAFETY: the kernel writes every one of the `len` elements.
            let mut out = unsafe { dev.alloc::<$t>(len)? };
            let mut b = func.builder();
            b.arg(&xs);
            if let Some(gs) = &gs {
                b.arg(gs);
            }
            b.arg(&mut out);
            b.arg(&planes);
            for d in &dims {
                b.arg(d);
            }
            // SAFETY: the arguments are those of the kernel's signature in cuda/max_pool.cu, in
            // order and type (pointers, `long long`, seven `int`s), and the buffers hold the
            // sizes checked above.
            unsafe { b.launch(launch_config(len)?) }.w()?;
            CudaStorage::wrap_cuda_slice(out, dev.clone())
        }};
    }
    match &x.slice {
        CudaStorageSlice::F32(_) => Ok(launch!(f32, "f32")),
        CudaStorageSlice::F64(_) => Ok(launch!(f64, "f64")),
        _ => candle_core::bail!("mustard.max_pool2d (CUDA): only f32 and f64 are supported"),
    }
}

/// The training-BatchNorm module (`cuda/batch_norm.cu`).
const BATCH_NORM: (&str, &str) = (
    "mustard_batch_norm",
    include_str!(concat!(env!("OUT_DIR"), "/batch_norm.ptx")),
);

/// One block of 256 threads per channel (the per-channel sums of `cuda/batch_norm.cu`).
fn per_channel_config(c: usize) -> candle_core::Result<LaunchConfig> {
    let blocks = u32::try_from(c).map_err(|_| {
        candle_core::Error::Msg(format!("{c} channels are too many for one launch"))
    })?;
    Ok(LaunchConfig {
        grid_dim: (blocks.max(1), 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    })
}

/// Checks that every input is contiguous and holds `len` values.
fn check_inputs(op: &str, inputs: &[(&Layout, usize)]) -> candle_core::Result<()> {
    for (l, len) in inputs {
        if !l.is_contiguous() {
            candle_core::bail!("{op} (CUDA): the inputs must be contiguous");
        }
        if l.shape().elem_count() != *len {
            candle_core::bail!(
                "{op} (CUDA): an input of {} values where {len} were expected",
                l.shape().elem_count()
            );
        }
    }
    Ok(())
}

/// Per-channel mean and biased variance of `(n, c, hw)` values: `(2, c)` in the input's type.
pub(crate) fn batch_norm_stats(
    (x, xl): (&CudaStorage, &Layout),
    (n, c, hw): (usize, usize, usize),
) -> candle_core::Result<CudaStorage> {
    check_inputs("mustard.batch_stats", &[(xl, n * c * hw)])?;
    let dev = x.device();
    let (n32, c32, hw64) = (int(n, "batch")?, int(c, "channels")?, hw as i64);
    macro_rules! launch {
        ($t:ty, $name:literal) => {{
            let xs = x.as_cuda_slice::<$t>()?.slice(xl.start_offset()..);
            let func = dev.get_or_load_custom_func($name, BATCH_NORM.0, BATCH_NORM.1)?;
            // SAFETY: thread 0 of each of the `c` blocks writes its two values.
            let mut out = unsafe { dev.alloc::<$t>(2 * c)? };
            let mut b = func.builder();
            b.arg(&xs).arg(&mut out).arg(&n32).arg(&c32).arg(&hw64);
            // SAFETY: the signature of mustard_bn_stats_* (two pointers, int, int, long long);
            // the input holds n·c·hw values.
            unsafe { b.launch(per_channel_config(c)?) }.w()?;
            CudaStorage::wrap_cuda_slice(out, dev.clone())
        }};
    }
    match &x.slice {
        CudaStorageSlice::F32(_) => Ok(launch!(f32, "mustard_bn_stats_f32")),
        CudaStorageSlice::F64(_) => Ok(launch!(f64, "mustard_bn_stats_f64")),
        _ => candle_core::bail!("mustard.batch_stats (CUDA): only f32 and f64 are supported"),
    }
}

/// Sums a per-channel buffer of doubles over the processes of a synchronised BatchNorm.
pub(crate) type SumOverProcesses<'a> = &'a dyn Fn(
    &mut candle_core::cuda_backend::cudarc::driver::CudaSlice<f64>,
) -> candle_core::Result<()>;

/// [`batch_norm_stats`] over every process's values: this process's per-channel sums and count,
/// summed by `reduce`; the squared deviations from the global mean, summed by `reduce`; then the
/// `(2, c)` mean and biased variance. Returns them with the global count per channel.
pub(crate) fn batch_norm_stats_synced(
    (x, xl): (&CudaStorage, &Layout),
    (n, c, hw): (usize, usize, usize),
    reduce: SumOverProcesses<'_>,
) -> candle_core::Result<(CudaStorage, f64)> {
    let op = "mustard.batch_stats_synced";
    check_inputs(op, &[(xl, n * c * hw)])?;
    let dev = x.device();
    let stream = dev.cuda_stream();
    let (n32, c32, hw64) = (int(n, "batch")?, int(c, "channels")?, hw as i64);
    // SAFETY: thread 0 of each block writes its channel's sum, block 0's also the count.
    let mut sums = unsafe { dev.alloc::<f64>(c + 1)? };
    // SAFETY: thread 0 of each block writes its channel's value.
    let mut squares = unsafe { dev.alloc::<f64>(c)? };
    macro_rules! launch {
        ($t:ty, $sums:literal, $squares:literal, $stats:literal) => {{
            let xs = x.as_cuda_slice::<$t>()?.slice(xl.start_offset()..);
            let func = dev.get_or_load_custom_func($sums, BATCH_NORM.0, BATCH_NORM.1)?;
            let mut b = func.builder();
            b.arg(&xs).arg(&mut sums).arg(&n32).arg(&c32).arg(&hw64);
            // SAFETY: the signature of mustard_bn_synced_sums_* (T pointer, double pointer, int,
            // int, long long); the input holds n·c·hw values, `sums` c + 1.
            unsafe { b.launch(per_channel_config(c)?) }.w()?;
            reduce(&mut sums)?;
            let count = stream.clone_dtoh(&sums.slice(c..)).w()?[0];
            let func = dev.get_or_load_custom_func($squares, BATCH_NORM.0, BATCH_NORM.1)?;
            let mut b = func.builder();
            b.arg(&xs)
                .arg(&sums)
                .arg(&mut squares)
                .arg(&n32)
                .arg(&c32)
                .arg(&hw64);
            // SAFETY: the signature of mustard_bn_synced_squares_* (T pointer, two double
            // pointers, int, int, long long).
            unsafe { b.launch(per_channel_config(c)?) }.w()?;
            reduce(&mut squares)?;
            // SAFETY: one thread per channel writes both of its values.
            let mut stats = unsafe { dev.alloc::<$t>(2 * c)? };
            let func = dev.get_or_load_custom_func($stats, BATCH_NORM.0, BATCH_NORM.1)?;
            let mut b = func.builder();
            b.arg(&sums).arg(&squares).arg(&mut stats).arg(&c32);
            // SAFETY: the signature of mustard_bn_synced_stats_* (two double pointers, T
            // pointer, int).
            unsafe { b.launch(launch_config(c)?) }.w()?;
            (CudaStorage::wrap_cuda_slice(stats, dev.clone()), count)
        }};
    }
    match &x.slice {
        CudaStorageSlice::F32(_) => Ok(launch!(
            f32,
            "mustard_bn_synced_sums_f32",
            "mustard_bn_synced_squares_f32",
            "mustard_bn_synced_stats_f32"
        )),
        CudaStorageSlice::F64(_) => Ok(launch!(
            f64,
            "mustard_bn_synced_sums_f64",
            "mustard_bn_synced_squares_f64",
            "mustard_bn_synced_stats_f64"
        )),
        _ => candle_core::bail!("{op} (CUDA): only f32 and f64 are supported"),
    }
}

/// The means and inverse deviations of `c` channels, `(2·c,)` f64 on the device.
fn moments_of<'a>(
    op: &str,
    (m, ml): (&'a CudaStorage, &Layout),
    c: usize,
) -> candle_core::Result<(CudaView<'a, f64>, CudaView<'a, f64>)> {
    check_inputs(op, &[(ml, 2 * c)])?;
    let all = m.as_cuda_slice::<f64>()?.slice(ml.start_offset()..);
    Ok((all.slice(0..c), all.slice(c..2 * c)))
}

/// `x · (γ·inv_std) + (β − mean·γ·inv_std)` per channel, the statistics given on the device as
/// `(2·C,)` f64 (means, then inverse deviations).
pub(crate) fn batch_norm_normalize(
    (x, xl): (&CudaStorage, &Layout),
    (gamma, gl): (&CudaStorage, &Layout),
    (beta, bl): (&CudaStorage, &Layout),
    moments: (&CudaStorage, &Layout),
    (n, c, hw): (usize, usize, usize),
) -> candle_core::Result<CudaStorage> {
    let len = n * c * hw;
    check_inputs("mustard.batch_norm_train", &[(xl, len), (gl, c), (bl, c)])?;
    let dev = x.device();
    let (mean, inv_std) = moments_of("mustard.batch_norm_train", moments, c)?;
    let (len64, c32, hw64) = (len as i64, int(c, "channels")?, hw as i64);
    macro_rules! launch {
        ($t:ty, $name:literal) => {{
            let xs = x.as_cuda_slice::<$t>()?.slice(xl.start_offset()..);
            let gs = gamma.as_cuda_slice::<$t>()?.slice(gl.start_offset()..);
            let bs = beta.as_cuda_slice::<$t>()?.slice(bl.start_offset()..);
            let func = dev.get_or_load_custom_func($name, BATCH_NORM.0, BATCH_NORM.1)?;
            // SAFETY: one thread writes each of the `len` elements.
            let mut out = unsafe { dev.alloc::<$t>(len)? };
            let mut b = func.builder();
            b.arg(&xs)
                .arg(&gs)
                .arg(&bs)
                .arg(&mean)
                .arg(&inv_std)
                .arg(&mut out);
            b.arg(&len64).arg(&c32).arg(&hw64);
            // SAFETY: the signature of mustard_bn_normalize_* (three T pointers, two double
            // pointers, the output, long long, int, long long); the sizes are checked above.
            unsafe { b.launch(launch_config(len)?) }.w()?;
            CudaStorage::wrap_cuda_slice(out, dev.clone())
        }};
    }
    match &x.slice {
        CudaStorageSlice::F32(_) => Ok(launch!(f32, "mustard_bn_normalize_f32")),
        CudaStorageSlice::F64(_) => Ok(launch!(f64, "mustard_bn_normalize_f64")),
        _ => candle_core::bail!("mustard.batch_norm_train (CUDA): only f32 and f64 are supported"),
    }
}

/// The backward of training BatchNorm, packed as the CPU kernel packs it: `[dx (n·c·hw), dγ (c),
/// dβ (c)]`; two launches (per-channel sums, then the element-wise input gradient).
pub(crate) fn batch_norm_backward(
    (x, xl): (&CudaStorage, &Layout),
    (dy, dyl): (&CudaStorage, &Layout),
    (moments, (gamma, gl)): ((&CudaStorage, &Layout), (&CudaStorage, &Layout)),
    (n, c, hw): (usize, usize, usize),
    sync: Option<(SumOverProcesses<'_>, f64)>,
) -> candle_core::Result<CudaStorage> {
    let len = n * c * hw;
    let op = "mustard.batch_norm_train_backward";
    check_inputs(op, &[(xl, len), (dyl, len), (gl, c)])?;
    let dev = x.device();
    let (mean, inv_std) = moments_of(op, moments, c)?;
    let gamma = gamma.as_cuda_slice::<f64>()?.slice(gl.start_offset()..);
    // SAFETY: the first kernel writes both halves of every channel's sums.
    let mut sums = unsafe { dev.alloc::<f64>(2 * c)? };
    let (n32, c32) = (int(n, "batch")?, int(c, "channels")?);
    // Synchronised: the input gradient takes every process's sums and values per channel.
    let count64 = match sync {
        Some((_, count)) => count as i64,
        None => (n * hw) as i64,
    };
    let (hw64, len64) = (hw as i64, len as i64);
    macro_rules! launch {
        ($t:ty, $sums:literal, $input:literal) => {{
            let xs = x.as_cuda_slice::<$t>()?.slice(xl.start_offset()..);
            let gs = dy.as_cuda_slice::<$t>()?.slice(dyl.start_offset()..);
            // SAFETY: the first kernel writes the 2·c tail, the second the `len` gradients.
            let mut out = unsafe { dev.alloc::<$t>(len + 2 * c)? };
            let func = dev.get_or_load_custom_func($sums, BATCH_NORM.0, BATCH_NORM.1)?;
            let mut b = func.builder();
            b.arg(&xs)
                .arg(&gs)
                .arg(&mean)
                .arg(&inv_std)
                .arg(&mut out)
                .arg(&mut sums);
            b.arg(&n32).arg(&c32).arg(&hw64);
            // SAFETY: the signature of mustard_bn_grad_sums_* (two T pointers, two double
            // pointers, the packed output, the double sums, int, int, long long).
            unsafe { b.launch(per_channel_config(c)?) }.w()?;
            if let Some((reduce, _)) = sync {
                reduce(&mut sums)?;
            }
            let func = dev.get_or_load_custom_func($input, BATCH_NORM.0, BATCH_NORM.1)?;
            let mut b = func.builder();
            b.arg(&xs)
                .arg(&gs)
                .arg(&mean)
                .arg(&inv_std)
                .arg(&gamma)
                .arg(&sums);
            b.arg(&mut out)
                .arg(&len64)
                .arg(&c32)
                .arg(&hw64)
                .arg(&count64);
            // SAFETY: the signature of mustard_bn_grad_input_* (two T pointers, four double
            // pointers, the packed output, long long, int, long long, long long).
            unsafe { b.launch(launch_config(len)?) }.w()?;
            CudaStorage::wrap_cuda_slice(out, dev.clone())
        }};
    }
    match &x.slice {
        CudaStorageSlice::F32(_) => Ok(launch!(
            f32,
            "mustard_bn_grad_sums_f32",
            "mustard_bn_grad_input_f32"
        )),
        CudaStorageSlice::F64(_) => Ok(launch!(
            f64,
            "mustard_bn_grad_sums_f64",
            "mustard_bn_grad_input_f64"
        )),
        _ => candle_core::bail!(
            "mustard.batch_norm_train_backward (CUDA): only f32 and f64 are supported"
        ),
    }
}

/// The heatmap-peaks module (`cuda/peaks.cu`).
const PEAKS: (&str, &str) = (
    "mustard_peaks",
    include_str!(concat!(env!("OUT_DIR"), "/peaks.ptx")),
);

/// Suppression (a `(2r + 1)²` window, none for `radius: None`) and the maximum of every chunk of
/// 256 values of each of `images` maps of `n` values (`h`×`w` planes), f32: the chunk table,
/// then the maxima, in one buffer of `images·chunks·257` values.
pub(crate) fn peak_chunks(
    (x, xl): (&CudaStorage, &Layout),
    (images, n, h, w): (usize, usize, usize, usize),
    radius: Option<usize>,
    chunks: usize,
) -> candle_core::Result<CudaStorage> {
    check_inputs("mustard.peak_chunks", &[(xl, images * n)])?;
    if chunks * 256 < n {
        candle_core::bail!("mustard.peak_chunks (CUDA): {chunks} chunks cannot hold {n} values");
    }
    // A grid holds at most 2³¹ − 1 blocks.
    let blocks = u32::try_from(images * chunks)
        .ok()
        .filter(|&b| b < 1 << 31)
        .ok_or_else(|| candle_core::Error::Msg("too many chunks for one launch".into()))?;
    let dev = x.device();
    if blocks == 0 {
        return Ok(CudaStorage::wrap_cuda_slice(
            dev.alloc_zeros::<f32>(0)?,
            dev.clone(),
        ));
    }
    let xs = match &x.slice {
        CudaStorageSlice::F32(s) => s.slice(xl.start_offset()..),
        _ => candle_core::bail!("mustard.peak_chunks (CUDA): only f32 is supported"),
    };
    let func = dev.get_or_load_custom_func("mustard_peak_chunks_f32", PEAKS.0, PEAKS.1)?;
    // SAFETY: every block writes its 256 table cells and its maximum.
    let mut out = unsafe { dev.alloc::<f32>(images * chunks * 257)? };
    let (n64, images64) = (n as i64, images as i64);
    let (chunks32, h32, w32) = (int(chunks, "chunks")?, int(h, "height")?, int(w, "width")?);
    let radius32 = radius.map_or(Ok(-1), |r| int(r, "radius"))?;
    let mut b = func.builder();
    b.arg(&xs)
        .arg(&mut out)
        .arg(&n64)
        .arg(&chunks32)
        .arg(&images64);
    b.arg(&h32).arg(&w32).arg(&radius32);
    // SAFETY: the signature of mustard_peak_chunks_f32 (two pointers, long long, int, long long,
    // int, int, int); the input holds images·n values and the output images·chunks·257.
    unsafe {
        b.launch(LaunchConfig {
            grid_dim: (blocks, 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        })
    }
    .w()?;
    Ok(CudaStorage::wrap_cuda_slice(out, dev.clone()))
}
