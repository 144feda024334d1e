//! The CPU convolution engine: 2-D convolution and transposed convolution with fast forward,
//! input-gradient and weight-gradient kernels, used by [`crate::nn::Conv2d`] and
//! [`crate::nn::ConvTranspose2d`].
//!
//! # Layout
//! Tensors stay in PyTorch's layout: activations `(N, C, H, W)`, convolution weights
//! `(out, in, kh, kw)`, transposed-convolution weights `(in, out, kh, kw)`, all contiguous (a
//! strided input is made contiguous first). Per image, the output `(out, OH·OW)` is a
//! row-major matrix, so it is written in place by the GEMM without a transpose.
//!
//! # Algorithm
//! With `K = in·kh·kw` and `P = OH·OW`, per image `n`:
//! - forward: `y[n] (out × P) = W (out × K) · cols[n] (K × P)`, where `cols = im2col(x[n])`;
//! - input gradient: `dx[n] = col2im(Wᵀ · dy[n])` (col2im adds each element back into the input
//!   pixel it was read from);
//! - weight gradient: `dW = Σₙ dy[n] · cols[n]ᵀ`;
//! - bias gradient: `db = Σ_{n, y, x} dy`.
//!
//! im2col is never materialised for a whole image: the output rows are cut into blocks whose
//! slice of `cols` (about 1 MiB in f32, at least 128 output pixels) stays in the core's L2 cache
//! between the copy and the GEMM that reads it, in a scratch buffer kept per thread (it grows to
//! the largest block seen, a few MiB). 1x1 stride-1 convolutions without padding skip im2col and
//! read the input directly. Work is split with rayon into independent tasks, each running a
//! single-threaded GEMM of the `gemm` crate (the one candle uses; its AVX2/FMA micro-kernels are
//! picked at run time):
//! - forward: (image, row block); each task writes its own columns of the output;
//! - input gradient: (image, block of input channels), so that the col2im scatters of two tasks
//!   never touch the same pixel;
//! - weight gradient: one block of input channels per thread, which owns those columns of `dW`
//!   and runs im2col for its channels only over the whole batch (no partial sums); with fewer
//!   input channels than twice the threads (the RGB stem), runs of (image, row block) with one
//!   accumulator per thread, summed at the end.
//!
//! When a pass has fewer than two tasks per thread (one image with small maps), its tasks run one
//! after the other, each with im2col and the GEMM parallel inside.
//!
//! 3x3 stride-1 undilated convolutions with enough channels and tiles (a ResNet's stages up to
//! 256 channels, FPN outputs, head blocks) run Winograd's F(4x4, 3x3) instead (`winograd.rs`):
//! a quarter of the multiplications, as 36 GEMMs over transformed 6x6 tiles, for the forward
//! pass and the input gradient (the flipped, transposed weight), and for the weight gradient of
//! the larger layers; about 2x faster per layer. [`set_winograd`] (or a run's
//! [`ConvAlgorithm`]) turns it off. The transformed weight is recomputed per call, except in a
//! layer made for inference ([`conv2d_cached`], [`crate::nn::Conv2d::for_inference`]), which
//! keeps it.
//!
//! A transposed convolution is the input gradient of the convolution with the same weight, and
//! its gradients are the convolution forward (input) and the weight gradient with the roles of
//! input and output swapped, so the same three kernels serve both layers.
//!
//! # Fusion
//! The bias and an optional ReLU ([`conv2d_relu`]) are applied to each output block right after
//! its GEMM, while it is in cache; the backward pass masks the output gradient once by the
//! saved output. For inference, [`crate::nn::Conv2d::fold_batchnorm`] folds a following
//! BatchNorm into the weight and bias. Gradients are computed only for arguments that need one:
//! the input gradient of a network's first convolution, or the weight gradient of a frozen
//! layer, is skipped.
//!
//! # Fallbacks
//! Other devices, dtypes other than f32/f64 and grouped convolutions (`groups > 1`) go through
//! candle's `conv2d` / `conv_transpose2d`, whose gradients candle derives itself. Shapes are
//! checked before either path, so a bad shape is an [`Error`], never a panic.

mod kernels;
mod winograd;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Shape, Tensor};

use kernels::Geometry;

use crate::{Error, Result};

/// Whether 3x3 stride-1 convolutions take the Winograd kernel (the default) for the whole
/// process. Nothing in this crate reads the environment: a run applies its config's
/// [`ConvAlgorithm`] when it starts.
static WINOGRAD: AtomicBool = AtomicBool::new(true);

/// Which kernel 3x3 stride-1 convolutions use: a numerics setting saved in a run's config,
/// because it changes results in the last bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConvAlgorithm {
    /// Winograd F(4x4, 3x3) where it is faster than im2col + GEMM (about 1e-5 relative error in
    /// f32), im2col + GEMM elsewhere.
    #[default]
    Winograd,
    /// im2col + GEMM everywhere: products summed in the direct order (about 5e-7 in f32).
    Direct,
}

impl std::str::FromStr for ConvAlgorithm {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "winograd" => Ok(ConvAlgorithm::Winograd),
            "direct" => Ok(ConvAlgorithm::Direct),
            _ => Err(format!(
                "unknown convolution algorithm {s:?}: expected winograd or direct"
            )),
        }
    }
}

impl ConvAlgorithm {
    /// Makes this the algorithm of every convolution of the process from now on.
    pub fn apply(self) {
        set_winograd(self == ConvAlgorithm::Winograd);
    }
}

/// Turns the Winograd kernel for 3x3 stride-1 convolutions on or off for the whole process.
///
/// It is on by default. Off, every convolution runs im2col + GEMM, which sums the products in
/// the direct order. The Winograd kernel does a quarter of the multiplications of a 3x3
/// convolution, at the price of a larger rounding error in f32: about 1e-5 of the output's
/// magnitude against 5e-7 (see `docs/PERFORMANCE.md`). Runs set it from their config
/// ([`ConvAlgorithm::apply`]); benchmarks use it to compare the two kernels in one run.
pub fn set_winograd(enabled: bool) {
    WINOGRAD.store(enabled, Ordering::Relaxed);
}

/// Whether 3x3 stride-1 convolutions use the Winograd kernel (see [`set_winograd`]).
pub fn winograd_enabled() -> bool {
    WINOGRAD.load(Ordering::Relaxed)
}

/// Weights of one convolution in the forms its kernels compute from them, made at the first
/// call that needs each form and kept: for a layer whose weight no longer changes (an inference
/// copy, [`crate::nn::Conv2d::for_inference`]), so that its evaluation does not transform the
/// same weight again on every call.
///
/// A cache belongs to one weight tensor: [`conv2d_cached`] must always be given the same
/// weight values with it, or it computes with a stale transform.
#[derive(Default)]
pub struct WeightCache {
    winograd_f32: OnceLock<Vec<f32>>,
    winograd_f64: OnceLock<Vec<f64>>,
}

impl WeightCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// Values held, over every form and dtype (0 until a call has needed a transform).
    pub fn len(&self) -> usize {
        self.winograd_f32.get().map_or(0, Vec::len) + self.winograd_f64.get().map_or(0, Vec::len)
    }

    /// Whether nothing has been computed yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl std::fmt::Debug for WeightCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WeightCache")
            .field("values", &self.len())
            .finish()
    }
}

/// Padding, stride, dilation (the same along both axes) and groups of a convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvParams {
    /// Zero padding on every side (for a transposed convolution: removed from every side of the
    /// output).
    pub padding: usize,
    /// Stride.
    pub stride: usize,
    /// Dilation of the kernel.
    pub dilation: usize,
    /// Groups; the engine runs `groups == 1`, other values go through candle.
    pub groups: usize,
}

impl Default for ConvParams {
    fn default() -> Self {
        Self {
            padding: 0,
            stride: 1,
            dilation: 1,
            groups: 1,
        }
    }
}

impl ConvParams {
    fn validate(&self, op: &'static str) -> Result<()> {
        if self.stride == 0 || self.dilation == 0 || self.groups == 0 {
            return Err(Error::config(
                op,
                format!(
                    "stride ({}), dilation ({}) and groups ({}) must be at least 1",
                    self.stride, self.dilation, self.groups
                ),
            ));
        }
        Ok(())
    }

    /// Output length along one axis of a convolution, or `None` when the dilated kernel does not
    /// fit the padded input.
    fn out_len(&self, len: usize, kernel: usize) -> Option<usize> {
        (len + 2 * self.padding)
            .checked_sub(self.dilation * (kernel - 1) + 1)
            .map(|v| v / self.stride + 1)
    }
}

/// 2-D convolution (PyTorch `F.conv2d`) of `x` with `weight` and an optional `bias`.
///
/// On the CPU, in f32 or f64 with `groups == 1`, this runs the engine of this module; otherwise
/// candle's convolution.
///
/// # Shapes
/// `x (N, C, H, W)`, `weight (O, C / groups, kh, kw)`, `bias (O,)` →
/// `(N, O, (H + 2p − d(kh − 1) − 1) / s + 1, (W + 2p − d(kw − 1) − 1) / s + 1)`.
pub fn conv2d(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    params: ConvParams,
) -> Result<Tensor> {
    conv2d_impl(x, weight, bias, params, false, None)
}

/// `relu(conv2d(x, weight, bias))`, with the ReLU fused into the engine's output loop.
///
/// # Shapes
/// As [`conv2d`].
pub fn conv2d_relu(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    params: ConvParams,
) -> Result<Tensor> {
    conv2d_impl(x, weight, bias, params, true, None)
}

/// [`conv2d`] (with `relu`: [`conv2d_relu`]) of a layer whose weight does not change: the
/// engine's transforms of `weight` are taken from `cache`, computed by the first call that
/// needs them. Same results as without the cache, bit for bit.
///
/// # Shapes
/// As [`conv2d`].
pub fn conv2d_cached(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    params: ConvParams,
    relu: bool,
    cache: &Arc<WeightCache>,
) -> Result<Tensor> {
    conv2d_impl(x, weight, bias, params, relu, Some(cache))
}

fn conv2d_impl(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    params: ConvParams,
    relu: bool,
    cache: Option<&Arc<WeightCache>>,
) -> Result<Tensor> {
    const OP: &str = "conv2d";
    params.validate(OP)?;
    let (_, c, h, w) = dims4(OP, "input", x, "(N, C, H, W)")?;
    let (o, ci, kh, kw) = dims4(OP, "weight", weight, "(out, in / groups, kh, kw)")?;
    same_kind(OP, x, "weight", weight)?;
    if ci * params.groups != c {
        return Err(Error::shape(
            OP,
            "input",
            x.shape(),
            format!(
                "{} channels for weight {:?} with groups {}",
                ci * params.groups,
                weight.dims(),
                params.groups
            ),
        ));
    }
    if o % params.groups != 0 {
        return Err(Error::shape(
            OP,
            "weight",
            weight.shape(),
            format!(
                "a number of output channels divisible by groups {}",
                params.groups
            ),
        ));
    }
    if params.out_len(h, kh).is_none() || params.out_len(w, kw).is_none() {
        return Err(Error::shape(
            OP,
            "input",
            x.shape(),
            format!(
                "H + 2·padding ≥ {} and W + 2·padding ≥ {} for weight {:?} with padding {} and \
                 dilation {}",
                params.dilation * (kh - 1) + 1,
                params.dilation * (kw - 1) + 1,
                weight.dims(),
                params.padding,
                params.dilation
            ),
        ));
    }
    if let Some(b) = bias {
        check_bias(OP, b, o, x)?;
    }
    let op = Conv2dOp {
        params,
        relu,
        cache: cache.cloned(),
    };
    if uses_engine(x) && params.groups == 1 {
        let (x, weight) = (x.contiguous()?, weight.contiguous()?);
        return Ok(match bias {
            Some(b) => x.apply_op3(&weight, &b.contiguous()?, op)?,
            None => x.apply_op2(&weight, op)?,
        });
    }
    let y = x.conv2d(
        weight,
        params.padding,
        params.stride,
        params.dilation,
        params.groups,
    )?;
    let y = match bias {
        Some(b) => y.broadcast_add(&b.reshape((1, o, 1, 1))?)?,
        None => y,
    };
    Ok(if relu { y.relu()? } else { y })
}

/// 2-D transposed convolution (PyTorch `F.conv_transpose2d`, `groups == 1`) of `x` with
/// `weight` and an optional `bias`.
///
/// `output_padding` (smaller than the stride) adds rows and columns at the bottom and right of
/// the output.
///
/// # Shapes
/// `x (N, C, H, W)`, `weight (C, O, kh, kw)`, `bias (O,)` →
/// `(N, O, (H − 1)s − 2p + d(kh − 1) + output_padding + 1, …)`.
pub fn conv_transpose2d(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    params: ConvParams,
    output_padding: usize,
) -> Result<Tensor> {
    const OP: &str = "conv_transpose2d";
    params.validate(OP)?;
    if params.groups != 1 {
        return Err(Error::config(
            OP,
            format!("groups {} is not supported, only 1", params.groups),
        ));
    }
    if output_padding >= params.stride {
        return Err(Error::config(
            OP,
            format!(
                "output_padding {output_padding} must be smaller than the stride {}",
                params.stride
            ),
        ));
    }
    let (_, c, h, w) = dims4(OP, "input", x, "(N, C, H, W)")?;
    let (ci, o, kh, kw) = dims4(OP, "weight", weight, "(in, out, kh, kw)")?;
    same_kind(OP, x, "weight", weight)?;
    if ci != c {
        return Err(Error::shape(
            OP,
            "input",
            x.shape(),
            format!("{ci} channels for weight {:?}", weight.dims()),
        ));
    }
    let full = |len: usize, k: usize| {
        (len - 1) * params.stride + params.dilation * (k - 1) + output_padding + 1
    };
    let (fh, fw) = (full(h, kh), full(w, kw));
    if fh <= 2 * params.padding || fw <= 2 * params.padding {
        return Err(Error::shape(
            OP,
            "input",
            x.shape(),
            format!(
                "an output larger than twice the padding {} for weight {:?}",
                params.padding,
                weight.dims()
            ),
        ));
    }
    if let Some(b) = bias {
        check_bias(OP, b, o, x)?;
    }
    let out_hw = (fh - 2 * params.padding, fw - 2 * params.padding);
    let y = if uses_engine(x) {
        x.contiguous()?
            .apply_op2(&weight.contiguous()?, ConvTranspose2dOp { params, out_hw })?
    } else {
        x.conv_transpose2d(
            weight,
            params.padding,
            output_padding,
            params.stride,
            params.dilation,
        )?
    };
    Ok(match bias {
        Some(b) => y.broadcast_add(&b.reshape((1, o, 1, 1))?)?,
        None => y,
    })
}

/// The input gradient of [`conv2d`] (`groups == 1`): `grad` is the gradient of the output, the
/// result that of an input of `input_hw` pixels. No gradient flows through the result. Exposed
/// for benchmarks and tests; autograd calls it through [`conv2d`].
///
/// # Shapes
/// `grad (N, O, OH, OW)`, `weight (O, C, kh, kw)` → `(N, C, input_hw.0, input_hw.1)`.
pub fn conv2d_input_grad(
    grad: &Tensor,
    weight: &Tensor,
    input_hw: (usize, usize),
    params: ConvParams,
) -> Result<Tensor> {
    const OP: &str = "conv2d_input_grad";
    let (_, o, oh, ow) = dims4(OP, "gradient", grad, "(N, out, OH, OW)")?;
    let (wo, _, kh, kw) = dims4(OP, "weight", weight, "(out, in, kh, kw)")?;
    check_backward_shapes(OP, params, (o, oh, ow), (wo, kh, kw), input_hw, grad)?;
    same_kind(OP, grad, "weight", weight)?;
    if uses_engine(grad) {
        return Ok(grad.contiguous()?.apply_op2_no_bwd(
            &weight.contiguous()?,
            &ConvTranspose2dOp {
                params,
                out_hw: input_hw,
            },
        )?);
    }
    // candle's own backward: a transposed convolution with the output padding that restores
    // the input size.
    let full = (oh - 1) * params.stride + params.dilation * (kh - 1) + 1 - 2 * params.padding;
    Ok(grad
        .conv_transpose2d(
            weight,
            params.padding,
            input_hw.0 - full,
            params.stride,
            params.dilation,
        )?
        .detach())
}

/// The weight gradient of [`conv2d`] (`groups == 1`) for input `x` and output gradient `grad`.
/// No gradient flows through the result. Exposed for benchmarks and tests; autograd calls it
/// through [`conv2d`].
///
/// # Shapes
/// `x (N, C, H, W)`, `grad (N, O, OH, OW)` → `(O, C, kernel_hw.0, kernel_hw.1)`.
pub fn conv2d_weight_grad(
    x: &Tensor,
    grad: &Tensor,
    kernel_hw: (usize, usize),
    params: ConvParams,
) -> Result<Tensor> {
    const OP: &str = "conv2d_weight_grad";
    let (n, _, h, w) = dims4(OP, "input", x, "(N, C, H, W)")?;
    let (gn, o, oh, ow) = dims4(OP, "gradient", grad, "(N, out, OH, OW)")?;
    check_backward_shapes(
        OP,
        params,
        (o, oh, ow),
        (o, kernel_hw.0, kernel_hw.1),
        (h, w),
        grad,
    )?;
    if gn != n {
        return Err(Error::ShapeMismatch {
            op: OP,
            lhs_name: "input",
            lhs: x.shape().clone(),
            rhs_name: "gradient",
            rhs: grad.shape().clone(),
        });
    }
    same_kind(OP, x, "gradient", grad)?;
    if uses_engine(x) {
        return Ok(x
            .contiguous()?
            .apply_op2_no_bwd(&grad.contiguous()?, &WeightGradOp { params, kernel_hw })?);
    }
    // candle's own backward: a convolution of the input by the gradient over the batch.
    let g = x
        .transpose(0, 1)?
        .conv2d(
            &grad.transpose(0, 1)?,
            params.padding,
            params.dilation,
            params.stride,
            1,
        )?
        .transpose(0, 1)?;
    Ok(g.narrow(2, 0, kernel_hw.0)?
        .narrow(3, 0, kernel_hw.1)?
        .contiguous()?
        .detach())
}

fn check_backward_shapes(
    op: &'static str,
    params: ConvParams,
    (o, oh, ow): (usize, usize, usize),
    (wo, kh, kw): (usize, usize, usize),
    (h, w): (usize, usize),
    grad: &Tensor,
) -> Result<()> {
    params.validate(op)?;
    if params.groups != 1 {
        return Err(Error::config(
            op,
            format!("groups {} is not supported, only 1", params.groups),
        ));
    }
    if o != wo || params.out_len(h, kh) != Some(oh) || params.out_len(w, kw) != Some(ow) {
        return Err(Error::shape(
            op,
            "gradient",
            grad.shape(),
            format!(
                "{wo} channels and the output size of a {h}x{w} input under a {kh}x{kw} kernel \
                 with {params:?}"
            ),
        ));
    }
    Ok(())
}

fn dims4(
    op: &'static str,
    name: &'static str,
    t: &Tensor,
    expected: &str,
) -> Result<(usize, usize, usize, usize)> {
    let dims = t
        .dims4()
        .map_err(|_| Error::shape(op, name, t.shape(), expected))?;
    if t.elem_count() == 0 {
        return Err(Error::shape(op, name, t.shape(), "a non-empty tensor"));
    }
    Ok(dims)
}

fn same_kind(op: &'static str, x: &Tensor, name: &'static str, other: &Tensor) -> Result<()> {
    if x.dtype() != other.dtype() {
        return Err(Error::config(
            op,
            format!(
                "{name} dtype {:?} differs from input dtype {:?}",
                other.dtype(),
                x.dtype()
            ),
        ));
    }
    if !x.device().same_device(other.device()) {
        return Err(Error::config(
            op,
            format!(
                "{name} is on {:?}, the input on {:?}",
                other.device(),
                x.device()
            ),
        ));
    }
    Ok(())
}

fn check_bias(op: &'static str, b: &Tensor, out: usize, x: &Tensor) -> Result<()> {
    if b.dims() != [out] {
        return Err(Error::shape(op, "bias", b.shape(), format!("({out},)")));
    }
    same_kind(op, x, "bias", b)
}

fn uses_engine(x: &Tensor) -> bool {
    super::cpu_kernels(x) && matches!(x.dtype(), DType::F32 | DType::F64)
}

fn conv_geometry(
    (n, cin, h, w): (usize, usize, usize, usize),
    (cout, kh, kw): (usize, usize, usize),
    (oh, ow): (usize, usize),
    p: ConvParams,
) -> Geometry {
    Geometry {
        n,
        cin,
        h,
        w,
        cout,
        kh,
        kw,
        oh,
        ow,
        stride: p.stride,
        padding: p.padding,
        dilation: p.dilation,
    }
}

/// The convolution `(x, weight[, bias]) → y`, optionally followed by a ReLU.
#[derive(Debug, Clone)]
struct Conv2dOp {
    params: ConvParams,
    relu: bool,
    /// Transforms of the weight kept across calls ([`conv2d_cached`]).
    cache: Option<Arc<WeightCache>>,
}

impl Conv2dOp {
    fn geometry(&self, x: &Layout, w: &Layout) -> candle_core::Result<Geometry> {
        let (n, cin, h, wd) = x.shape().dims4()?;
        let (cout, wcin, kh, kw) = w.shape().dims4()?;
        let p = self.params;
        match (p.out_len(h, kh), p.out_len(wd, kw)) {
            (Some(oh), Some(ow)) if wcin == cin => {
                Ok(conv_geometry((n, cin, h, wd), (cout, kh, kw), (oh, ow), p))
            }
            _ => candle_core::bail!(
                "conv2d: input {:?} does not fit weight {:?}",
                x.shape(),
                w.shape()
            ),
        }
    }

    fn output_shape(g: &Geometry) -> Shape {
        Shape::from((g.n, g.cout, g.oh, g.ow))
    }

    fn backward(
        &self,
        x: &Tensor,
        w: &Tensor,
        bias: Option<&Tensor>,
        res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let mut grad = grad.contiguous()?;
        if self.relu {
            grad = grad.apply_op2_no_bwd(res, &ReluGradOp)?;
        }
        let (_, _, h, wd) = x.dims4()?;
        let (_, _, kh, kw) = w.dims4()?;
        let dx = if x.track_op() {
            Some(grad.apply_op2_no_bwd(
                w,
                &ConvTranspose2dOp {
                    params: self.params,
                    out_hw: (h, wd),
                },
            )?)
        } else {
            None
        };
        let dw = if w.track_op() {
            Some(x.apply_op2_no_bwd(
                &grad,
                &WeightGradOp {
                    params: self.params,
                    kernel_hw: (kh, kw),
                },
            )?)
        } else {
            None
        };
        let db = match bias {
            Some(b) if b.track_op() => Some(grad.apply_op1_no_bwd(&BiasGradOp)?),
            _ => None,
        };
        Ok((dx, dw, db))
    }
}

impl CustomOp2 for Conv2dOp {
    fn name(&self) -> &'static str {
        "mustard.conv2d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let g = self.geometry(l1, l2)?;
        let out = run_typed!("mustard.conv2d", &[(s1, l1), (s2, l2)], |s| {
            kernels::forward(&g, s[0], s[1], None, self.relu, self.cache.as_deref())
        });
        Ok((out, Self::output_shape(&g)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (dx, dw, _) = self.backward(x, w, None, res, grad)?;
        Ok((dx, dw))
    }
}

impl CustomOp3 for Conv2dOp {
    fn name(&self) -> &'static str {
        "mustard.conv2d"
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
        let g = self.geometry(l1, l2)?;
        if l3.shape().dims() != [g.cout] {
            candle_core::bail!("conv2d: bias {:?} for {} channels", l3.shape(), g.cout);
        }
        let out = run_typed!("mustard.conv2d", &[(s1, l1), (s2, l2), (s3, l3)], |s| {
            kernels::forward(&g, s[0], s[1], Some(s[2]), self.relu, self.cache.as_deref())
        });
        Ok((out, Self::output_shape(&g)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        self.backward(x, w, Some(b), res, grad)
    }
}

/// The transposed convolution `(x, weight) → y` with an explicit output size, which is also the
/// input gradient of a convolution (`x` the output gradient, `y` the input gradient).
#[derive(Debug, Clone, Copy)]
struct ConvTranspose2dOp {
    params: ConvParams,
    out_hw: (usize, usize),
}

impl CustomOp2 for ConvTranspose2dOp {
    fn name(&self) -> &'static str {
        "mustard.conv_transpose2d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        // In convolution terms: x is the output (n, cout, oh, ow), the weight (cout, cin, kh,
        // kw), the result the input (n, cin, h, w).
        let (n, cout, oh, ow) = l1.shape().dims4()?;
        let (wcout, cin, kh, kw) = l2.shape().dims4()?;
        let (h, w) = self.out_hw;
        let p = self.params;
        if wcout != cout || p.out_len(h, kh) != Some(oh) || p.out_len(w, kw) != Some(ow) {
            candle_core::bail!(
                "conv_transpose2d: input {:?} does not fit weight {:?} and output {h}x{w}",
                l1.shape(),
                l2.shape()
            );
        }
        let g = conv_geometry((n, cin, h, w), (cout, kh, kw), (oh, ow), p);
        let out = run_typed!(self.name(), &[(s1, l1), (s2, l2)], |s| {
            kernels::input_grad(&g, s[0], s[1])
        });
        Ok((out, Shape::from((n, cin, h, w))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let (_, _, kh, kw) = w.dims4()?;
        let dx = if x.track_op() {
            let op = Conv2dOp {
                params: self.params,
                relu: false,
                cache: None,
            };
            Some(grad.apply_op2_no_bwd(w, &op)?)
        } else {
            None
        };
        let dw = if w.track_op() {
            let op = WeightGradOp {
                params: self.params,
                kernel_hw: (kh, kw),
            };
            Some(grad.apply_op2_no_bwd(x, &op)?)
        } else {
            None
        };
        Ok((dx, dw))
    }
}

/// The weight gradient `(x, grad) → dW` of a convolution.
#[derive(Debug, Clone, Copy)]
struct WeightGradOp {
    params: ConvParams,
    kernel_hw: (usize, usize),
}

impl CustomOp2 for WeightGradOp {
    fn name(&self) -> &'static str {
        "mustard.conv2d_weight_grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, cin, h, w) = l1.shape().dims4()?;
        let (gn, cout, oh, ow) = l2.shape().dims4()?;
        let (kh, kw) = self.kernel_hw;
        let p = self.params;
        if gn != n || p.out_len(h, kh) != Some(oh) || p.out_len(w, kw) != Some(ow) {
            candle_core::bail!(
                "conv2d_weight_grad: input {:?} does not fit gradient {:?}",
                l1.shape(),
                l2.shape()
            );
        }
        let g = conv_geometry((n, cin, h, w), (cout, kh, kw), (oh, ow), p);
        let out = run_typed!(self.name(), &[(s1, l1), (s2, l2)], |s| {
            kernels::weight_grad(&g, s[0], s[1])
        });
        Ok((out, Shape::from((cout, cin, kh, kw))))
    }
}

/// The bias gradient `grad (N, C, H, W) → (C,)`.
struct BiasGradOp;

impl CustomOp1 for BiasGradOp {
    fn name(&self) -> &'static str {
        "mustard.conv2d_bias_grad"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (n, c, h, w) = l.shape().dims4()?;
        let out = run_typed!(self.name(), &[(s, l)], |s| {
            kernels::bias_grad(s[0], (n, c, h * w))
        });
        Ok((out, Shape::from(c)))
    }
}

/// `(grad, y) → grad · [y > 0]`, the gradient through a fused ReLU.
pub(crate) struct ReluGradOp;

impl CustomOp2 for ReluGradOp {
    fn name(&self) -> &'static str {
        "mustard.relu_grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        if l1.shape() != l2.shape() {
            candle_core::bail!("relu_grad: {:?} vs {:?}", l1.shape(), l2.shape());
        }
        let out = run_typed!(self.name(), &[(s1, l1), (s2, l2)], |s| {
            kernels::relu_grad(s[0], s[1])
        });
        Ok((out, l1.shape().clone()))
    }
}
