//! Custom ops with a correct backward pass.
//!
//! candle 0.11 refuses the backward of max-pooling with kernel != stride and of bilinear
//! upsampling, and its max-pool backward with kernel == stride silently scales every gradient by
//! 1/k². These ops replace them. Each has a CPU kernel (always built) for f32 and f64; on other
//! devices the same function falls back to a composition of candle ops whose gradient candle
//! derives itself, except where mustard has a CUDA kernel of its own (`cuda/*.cu`, built with
//! the `cuda` feature: max-pooling and training BatchNorm, forward and backward).
//!
//! The convolution engine ([`conv2d`], [`conv_transpose2d`] and their gradients) replaces
//! candle's CPU convolution, whose input gradient runs a naive direct loop; see [`conv`].

/// Defines `fn $name<T: Real>(…)` whose body runs compiled for AVX2 + FMA when the CPU has them,
/// else for the baseline x86-64 the crate is built for (SSE2, half as wide). The body is an
/// `#[inline(always)]` function called from a `#[target_feature]` one, so its slice parameters
/// keep their no-alias guarantee and its loops vectorise with 256-bit registers. FMA contraction
/// is never enabled, so both builds give identical results.
macro_rules! avx2_dispatch {
    ($(#[$doc:meta])* fn $name:ident<T>($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$doc])*
        fn $name<T: $crate::ops::Real>($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn body<T: $crate::ops::Real>($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2<T: $crate::ops::Real>($($arg: $ty),*) $(-> $ret)? {
                    body::<T>($($arg),*)
                }
                if $crate::ops::has_avx2() {
                    // SAFETY: the CPU supports the enabled features (checked above).
                    return unsafe { avx2::<T>($($arg),*) };
                }
            }
            body::<T>($($arg),*)
        }
    };
}

/// Runs `$body` with `$s` bound to the contiguous slices of the CPU arguments `$inputs` in
/// their float type (f32 or f64, all the same), and wraps the result's `Vec` in that type's
/// `CpuStorage`; any other dtype is an error naming `$op`.
macro_rules! run_typed {
    ($op:expr, $inputs:expr, |$s:ident| $body:expr) => {
        match $crate::ops::args($op, $inputs)? {
            $crate::ops::Args::F32($s) => candle_core::CpuStorage::F32($body),
            $crate::ops::Args::F64($s) => candle_core::CpuStorage::F64($body),
        }
    };
}

mod batchnorm;
pub mod conv;
#[cfg(feature = "cuda")]
pub(crate) mod cuda;
pub(crate) mod loss;
mod maxpool;
mod relu;
mod upsample;

pub use batchnorm::{batch_norm_train, BatchStats};
pub use conv::{
    conv2d, conv2d_cached, conv2d_input_grad, conv2d_relu, conv2d_weight_grad, conv_transpose2d,
    set_winograd, winograd_enabled, ConvAlgorithm, ConvParams, WeightCache,
};
pub use maxpool::{max_pool2d, MaxPool2dConfig};
pub use relu::relu;
pub use upsample::{upsample_bilinear2d, upsample_nearest2d};

use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::{CpuStorage, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

use crate::{Error, Result};

/// Whether the custom ops take the composed candle path everywhere (see [`Kernels`]).
static PORTABLE: AtomicBool = AtomicBool::new(false);

/// Which implementation the custom ops run: a numerics setting saved in a run's config.
/// `Fast` runs mustard's own kernels where an op has one for the device (every op and the
/// decoding top-K on the CPU; max-pooling, training BatchNorm and the top-K's peaks on CUDA) and
/// the composition of candle ops elsewhere. `Portable` takes that composition on every device,
/// so that the path a GPU takes is tested and compared with the fast one on any machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kernels {
    /// The CPU kernels (max-pool, bilinear upsampling, training BatchNorm, ReLU, the
    /// convolution engine, the focal and cross-entropy losses).
    #[default]
    Fast,
    /// The device-generic composed candle ops, as on a GPU.
    Portable,
}

impl std::str::FromStr for Kernels {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "fast" => Ok(Kernels::Fast),
            "portable" => Ok(Kernels::Portable),
            _ => Err(format!("unknown kernels {s:?}: expected fast or portable")),
        }
    }
}

impl Kernels {
    /// Makes these the kernels of every custom op of the process from now on.
    pub fn apply(self) {
        PORTABLE.store(self == Kernels::Portable, Ordering::Relaxed);
    }

    /// The kernels in use.
    pub fn current() -> Self {
        if PORTABLE.load(Ordering::Relaxed) {
            Kernels::Portable
        } else {
            Kernels::Fast
        }
    }
}

/// Whether `x` takes the CPU kernels: on the CPU, unless [`Kernels::Portable`] is set.
pub(crate) fn cpu_kernels(x: &Tensor) -> bool {
    x.device().is_cpu() && !PORTABLE.load(Ordering::Relaxed)
}

/// Whether `x` takes mustard's CUDA kernel (for the ops that have one): on a CUDA device in a
/// `cuda` build, unless [`Kernels::Portable`] is set.
pub(crate) fn cuda_kernels(x: &Tensor) -> bool {
    cfg!(feature = "cuda") && x.device().is_cuda() && !PORTABLE.load(Ordering::Relaxed)
}

/// The float types the CPU kernels run on.
pub(crate) trait Real:
    Copy
    + Send
    + Sync
    + PartialOrd
    + std::ops::Add<Output = Self>
    + std::ops::Sub<Output = Self>
    + std::ops::Mul<Output = Self>
    + std::ops::AddAssign
    + candle_core::WithDType
{
    const ZERO: Self;
    const NEG_INFINITY: Self;
    fn from_f64_(v: f64) -> Self;
    fn is_nan_(self) -> bool;
}

impl Real for f32 {
    const ZERO: Self = 0.0;
    const NEG_INFINITY: Self = f32::NEG_INFINITY;
    fn from_f64_(v: f64) -> Self {
        v as f32
    }
    fn is_nan_(self) -> bool {
        self.is_nan()
    }
}

impl Real for f64 {
    const ZERO: Self = 0.0;
    const NEG_INFINITY: Self = f64::NEG_INFINITY;
    fn from_f64_(v: f64) -> Self {
        v
    }
    fn is_nan_(self) -> bool {
        self.is_nan()
    }
}

/// The contiguous data of a CPU tensor, or an error naming the op.
pub(crate) fn contiguous_slice<'a, T: candle_core::WithDType>(
    op: &'static str,
    storage: &'a CpuStorage,
    layout: &Layout,
) -> candle_core::Result<&'a [T]> {
    let data = storage.as_slice::<T>()?;
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("{op}: the input must be contiguous"),
    }
}

/// The contiguous f32 or f64 data of the CPU arguments of an op ([`run_typed!`]).
pub(crate) enum Args<'a> {
    F32(Vec<&'a [f32]>),
    F64(Vec<&'a [f64]>),
}

pub(crate) fn args<'a>(
    op: &'static str,
    inputs: &[(&'a CpuStorage, &Layout)],
) -> candle_core::Result<Args<'a>> {
    fn slices<'a, T: Real>(
        op: &'static str,
        inputs: &[(&'a CpuStorage, &Layout)],
    ) -> candle_core::Result<Vec<&'a [T]>> {
        inputs
            .iter()
            .map(|(s, l)| contiguous_slice::<T>(op, s, l))
            .collect()
    }
    match inputs[0].0 {
        CpuStorage::F32(_) => Ok(Args::F32(slices(op, inputs)?)),
        CpuStorage::F64(_) => Ok(Args::F64(slices(op, inputs)?)),
        _ => candle_core::bail!("{op}: only f32 and f64 are supported"),
    }
}

/// Checks that `x` is a non-empty 4-D float tensor and returns its dims.
pub(crate) fn check_nchw(op: &'static str, x: &Tensor) -> Result<(usize, usize, usize, usize)> {
    let dims = x
        .dims4()
        .map_err(|_| Error::shape(op, "input", x.shape(), "(N, C, H, W)"))?;
    if x.elem_count() == 0 {
        return Err(Error::shape(op, "input", x.shape(), "a non-empty tensor"));
    }
    if !matches!(x.dtype(), DType::F32 | DType::F64) {
        return Err(Error::config(
            op,
            format!("dtype {:?} is not supported, use f32 or f64", x.dtype()),
        ));
    }
    Ok(dims)
}

pub(crate) fn nchw(n: usize, c: usize, h: usize, w: usize) -> Shape {
    Shape::from((n, c, h, w))
}

/// Values per task of the element-wise maps below.
const MAP_BLOCK: usize = 1 << 14;

/// `f` of each value of `a` and `b` (the same length), in parallel blocks of plain loops that
/// LLVM vectorises, written into a new vector's uninitialised capacity. A parallel iterator
/// collected element by element stays scalar.
pub(crate) fn zip_map<A: Copy + Sync, B: Copy + Sync, U: Send>(
    a: &[A],
    b: &[B],
    f: impl Fn(A, B) -> U + Sync,
) -> Vec<U> {
    assert_eq!(a.len(), b.len(), "zip_map: operand lengths");
    let mut out = Vec::with_capacity(a.len());
    out.spare_capacity_mut()[..a.len()]
        .par_chunks_mut(MAP_BLOCK)
        .zip(a.par_chunks(MAP_BLOCK).zip(b.par_chunks(MAP_BLOCK)))
        .for_each(|(o, (a, b))| {
            for ((o, &a), &b) in o.iter_mut().zip(a).zip(b) {
                o.write(f(a, b));
            }
        });
    // SAFETY: the blocks cover all `a.len()` elements, each written once.
    unsafe { out.set_len(a.len()) };
    out
}

/// `f(a[i])` for each value, as [`zip_map`].
pub(crate) fn map<A: Copy + Sync, U: Send>(a: &[A], f: impl Fn(A) -> U + Sync) -> Vec<U> {
    zip_map(a, a, |v, _| f(v))
}

/// Whether the CPU has AVX2 and FMA, for the kernels' builds that use them.
#[cfg(target_arch = "x86_64")]
pub(crate) fn has_avx2() -> bool {
    std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
}

#[cfg(test)]
mod tests {
    /// Every value mapped once, across several blocks and a remainder.
    #[test]
    fn maps_cover_every_block_and_the_remainder() {
        let n = 2 * super::MAP_BLOCK + 37;
        let a: Vec<u32> = (0..n as u32).collect();
        let b: Vec<u32> = (0..n as u32).map(|v| 3 * v).collect();
        let sums = super::zip_map(&a, &b, |x, y| x + y);
        assert!(sums.iter().enumerate().all(|(i, &v)| v == 4 * i as u32));
        let doubled = super::map(&a, |x| 2 * x);
        assert!(doubled.iter().enumerate().all(|(i, &v)| v == 2 * i as u32));
        assert_eq!((sums.len(), doubled.len()), (n, n));
    }
}
