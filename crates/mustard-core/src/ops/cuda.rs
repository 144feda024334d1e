//! mustard's own CUDA kernels (`cuda/*.cu`, compiled to PTX by `build.rs` with the `cuda`
//! feature), launched from the `cuda_fwd` of the custom ops. Each computes what the op's CPU
//! kernel computes, in the same order where sums are involved; `tests/cuda.rs` compares them on
//! a GPU.

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::{CudaStorageSlice, WrapErr};
use candle_core::{CudaStorage, Layout};

use super::MaxPool2dConfig;

/// The max-pooling module: its name in the device's module cache and its PTX.
const MAX_POOL: (&str, &str) = (
    "mustard_max_pool",
    include_str!(concat!(env!("OUT_DIR"), "/max_pool.ptx")),
);

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
    let dims = [h, w, oh, ow, cfg.kernel, cfg.stride, cfg.padding].map(|v| v as i32);
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
