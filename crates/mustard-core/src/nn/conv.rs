use std::sync::Arc;

use candle_core::{Module, Tensor};
use candle_nn::{Init, VarBuilder};

use super::{default_init, snapshot, BatchNorm2d};
use crate::onnx::{Attr, Graph};
use crate::ops::{self, ConvParams, WeightCache};
use crate::{Error, Result};

/// Hyperparameters of [`Conv2d`], filled with struct-update syntax.
#[derive(Debug, Clone, Copy)]
pub struct Conv2dConfig {
    /// Zero padding on every side.
    pub padding: usize,
    /// Stride.
    pub stride: usize,
    /// Dilation.
    pub dilation: usize,
    /// Groups (`in_channels` for depthwise).
    pub groups: usize,
    /// Whether the layer has a bias.
    pub bias: bool,
    /// Weight initialisation; `None` is PyTorch's default.
    pub weight_init: Option<Init>,
    /// Bias initialisation; `None` is PyTorch's default.
    pub bias_init: Option<Init>,
}

impl Default for Conv2dConfig {
    fn default() -> Self {
        Self {
            padding: 0,
            stride: 1,
            dilation: 1,
            groups: 1,
            bias: true,
            weight_init: None,
            bias_init: None,
        }
    }
}

/// A 2-D convolution with PyTorch's weight layout `(out, in / groups, k, k)`.
///
/// The forward pass and both gradients run the CPU engine of [`crate::ops::conv`] (candle's
/// convolution on other devices and for `groups > 1`). For inference, [`Conv2d::forward_relu`]
/// fuses a following ReLU, [`Conv2d::fold_batchnorm`] a following BatchNorm, and
/// [`Conv2d::for_inference`] keeps the engine's transforms of the weight across calls.
#[derive(Debug, Clone)]
pub struct Conv2d {
    weight: Tensor,
    bias: Option<Tensor>,
    config: Conv2dConfig,
    /// Transforms of `weight` kept across calls: only in a copy for inference, whose weight is
    /// its own (see [`Conv2d::for_inference`]).
    cache: Option<Arc<WeightCache>>,
}

impl Conv2d {
    /// Creates (or loads) `weight` and optionally `bias` under `vb`.
    pub fn new(
        in_channels: usize,
        out_channels: usize,
        kernel: usize,
        config: Conv2dConfig,
        vb: VarBuilder<'_>,
    ) -> Result<Self> {
        let fan_in = in_channels / config.groups.max(1) * kernel * kernel;
        let weight = vb.get_with_hints(
            (
                out_channels,
                in_channels / config.groups.max(1),
                kernel,
                kernel,
            ),
            "weight",
            config.weight_init.unwrap_or_else(|| default_init(fan_in)),
        )?;
        let bias = if config.bias {
            Some(vb.get_with_hints(
                out_channels,
                "bias",
                config.bias_init.unwrap_or_else(|| default_init(fan_in)),
            )?)
        } else {
            None
        };
        Ok(Self {
            weight,
            bias,
            config,
            cache: None,
        })
    }

    /// Wraps existing tensors.
    pub fn from_tensors(weight: Tensor, bias: Option<Tensor>, config: Conv2dConfig) -> Self {
        Self {
            weight,
            bias,
            config,
            cache: None,
        }
    }

    /// A copy of this layer for inference: the weight and bias copied as they are now (later
    /// changes of the variables, an optimizer step or a loaded checkpoint, do not reach it),
    /// without gradients, and the engine's transform of the weight made at the first call that
    /// needs it and then kept (Winograd's `G g Gᵀ`, 4x the weight's size, only for layers
    /// whose inputs take that kernel). Outputs are the same as this layer's, bit for bit.
    pub fn for_inference(&self) -> Result<Self> {
        Ok(Self {
            weight: snapshot(&self.weight)?,
            bias: self.bias.as_ref().map(snapshot).transpose()?,
            config: self.config,
            cache: Some(Arc::new(WeightCache::new())),
        })
    }

    /// One convolution whose output channels are those of `convs` in turn (their weights and
    /// biases concatenated; gradients flow back to each), or `None` when there are fewer than
    /// two or they differ in input channels, kernel, padding, stride, dilation, groups or
    /// bias. Run on one input, it gives each layer's output as its channels, bit for bit, with
    /// the input read (and, in the engine, transformed) once for all of them.
    pub fn concat_out(convs: &[&Conv2d]) -> Result<Option<Conv2d>> {
        let [first, rest @ ..] = convs else {
            return Ok(None);
        };
        let same = |c: &Conv2d| {
            let (a, b) = (&c.config, &first.config);
            c.weight.dims()[1..] == first.weight.dims()[1..]
                && (a.padding, a.stride, a.dilation, a.groups, a.bias)
                    == (b.padding, b.stride, b.dilation, b.groups, b.bias)
                && c.bias.is_some() == first.bias.is_some()
        };
        if rest.is_empty() || first.config.groups != 1 || !rest.iter().all(|c| same(c)) {
            return Ok(None);
        }
        let weights: Vec<&Tensor> = convs.iter().map(|c| &c.weight).collect();
        let bias = match first.bias {
            Some(_) => {
                let biases: Vec<&Tensor> = convs.iter().filter_map(|c| c.bias.as_ref()).collect();
                Some(Tensor::cat(&biases, 0)?)
            }
            None => None,
        };
        Ok(Some(Self {
            weight: Tensor::cat(&weights, 0)?,
            bias,
            config: first.config,
            cache: None,
        }))
    }

    /// Values held by the kept transforms of an inference copy (0 before its first call, and
    /// for a layer that is not one).
    pub fn cached_values(&self) -> usize {
        self.cache.as_ref().map_or(0, |c| c.len())
    }

    /// The weight, `(out, in / groups, k, k)`.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// The bias, `(out,)`.
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    /// The hyperparameters.
    pub fn config(&self) -> &Conv2dConfig {
        &self.config
    }

    /// Stops the weight and bias from receiving gradients (they still follow loaded values).
    pub fn freeze(&mut self) {
        self.weight = self.weight.detach();
        self.bias = self.bias.as_ref().map(Tensor::detach);
    }

    /// Multiply-accumulate operations × 2 for an `in_h` x `in_w` input, and the output size.
    pub fn flops(&self, (in_h, in_w): (usize, usize)) -> (u64, (usize, usize)) {
        let (out_c, in_per_group, k, _) = self.weight.dims4().unwrap_or((0, 0, 0, 0));
        let c = &self.config;
        let out = |len: usize| {
            (len + 2 * c.padding).saturating_sub(c.dilation * (k - 1) + 1) / c.stride + 1
        };
        let (oh, ow) = (out(in_h), out(in_w));
        (
            2 * (out_c * in_per_group * k * k * oh * ow) as u64,
            (oh, ow),
        )
    }

    /// `relu(self.forward(x))` with the ReLU fused into the convolution (forward and backward).
    ///
    /// # Shapes
    /// As [`Module::forward`].
    pub fn forward_relu(&self, x: &Tensor) -> Result<Tensor> {
        self.run(x, true)
    }

    fn run(&self, x: &Tensor, relu: bool) -> Result<Tensor> {
        let (w, b, p) = (&self.weight, self.bias.as_ref(), self.params());
        match (&self.cache, relu) {
            (Some(cache), _) => ops::conv2d_cached(x, w, b, p, relu, cache),
            (None, true) => ops::conv2d_relu(x, w, b, p),
            (None, false) => ops::conv2d(x, w, b, p),
        }
    }

    /// This convolution followed by `bn` in evaluation mode, as one convolution: the weight
    /// scaled per output channel by `γ / √(var + ε)` and the bias `β + (b − mean)·γ / √(var + ε)`.
    /// Gradients still flow to the original tensors.
    pub fn fold_batchnorm(&self, bn: &BatchNorm2d) -> Result<Self> {
        let out = self.weight.dim(0)?;
        let (scale, shift) = bn.scale_shift()?;
        if scale.dims() != [out] {
            return Err(Error::ShapeMismatch {
                op: "fold_batchnorm",
                lhs_name: "conv weight",
                lhs: self.weight.shape().clone(),
                rhs_name: "batchnorm scale",
                rhs: scale.shape().clone(),
            });
        }
        let scale = scale.to_dtype(self.weight.dtype())?;
        let shift = shift.to_dtype(self.weight.dtype())?;
        let weight = self.weight.broadcast_mul(&scale.reshape((out, 1, 1, 1))?)?;
        let bias = match &self.bias {
            Some(b) => ((b * &scale)? + shift)?,
            None => shift,
        };
        Ok(Self {
            weight,
            bias: Some(bias),
            config: Conv2dConfig {
                bias: true,
                ..self.config
            },
            cache: None,
        })
    }

    /// Appends this convolution to `g` as a `Conv` node reading `x`; returns its output.
    pub fn onnx(&self, g: &mut Graph, x: &str, name: &str) -> Result<String> {
        let c = &self.config;
        let geometry = (c.padding, c.stride, c.dilation);
        let group = ("group", Attr::Int(c.groups as i64));
        conv_node(
            g,
            "Conv",
            x,
            name,
            (&self.weight, self.bias.as_ref()),
            geometry,
            group,
        )
    }

    fn params(&self) -> ConvParams {
        let c = &self.config;
        ConvParams {
            padding: c.padding,
            stride: c.stride,
            dilation: c.dilation,
            groups: c.groups,
        }
    }
}

/// A `Conv` or `ConvTranspose` node with square `k` x `k` kernels: the weight and bias as
/// initialisers named `{name}.weight` / `{name}.bias`, `(padding, stride, dilation)` on both
/// axes, and one more attribute of the op.
fn conv_node(
    g: &mut Graph,
    op: &str,
    x: &str,
    name: &str,
    (weight, bias): (&Tensor, Option<&Tensor>),
    (padding, stride, dilation): (usize, usize, usize),
    extra: (&str, Attr),
) -> Result<String> {
    let k = weight.dim(2)? as i64;
    let weight = g.weight(&format!("{name}.weight"), weight)?;
    let bias = bias
        .map(|b| g.weight(&format!("{name}.bias"), b))
        .transpose()?;
    let mut inputs = vec![x, weight.as_str()];
    inputs.extend(bias.as_deref());
    let p = padding as i64;
    Ok(g.node(
        op,
        name,
        &inputs,
        vec![
            ("kernel_shape", Attr::Ints(vec![k, k])),
            ("pads", Attr::Ints(vec![p, p, p, p])),
            ("strides", Attr::Ints(vec![stride as i64; 2])),
            ("dilations", Attr::Ints(vec![dilation as i64; 2])),
            extra,
        ],
    ))
}

/// Keeps the message of a mustard error inside a candle error.
fn to_candle(e: Error) -> candle_core::Error {
    match e {
        Error::Candle(e) => e,
        e => candle_core::Error::Wrapped(Box::new(e)),
    }
}

impl Module for Conv2d {
    /// Runs the convolution engine ([`ops::conv2d`]).
    ///
    /// # Shapes
    /// `(N, in, H, W)` → `(N, out, (H + 2p − d(k − 1) − 1) / s + 1, …)`.
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.run(x, false).map_err(to_candle)
    }
}

/// Hyperparameters of [`ConvTranspose2d`].
#[derive(Debug, Clone, Copy)]
pub struct ConvTranspose2dConfig {
    /// Padding removed from every side of the output.
    pub padding: usize,
    /// Extra rows/columns added at the bottom/right of the output.
    pub output_padding: usize,
    /// Stride.
    pub stride: usize,
    /// Dilation.
    pub dilation: usize,
    /// Whether the layer has a bias.
    pub bias: bool,
    /// Weight initialisation; `None` is PyTorch's default.
    pub weight_init: Option<Init>,
}

impl Default for ConvTranspose2dConfig {
    fn default() -> Self {
        Self {
            padding: 0,
            output_padding: 0,
            stride: 1,
            dilation: 1,
            bias: true,
            weight_init: None,
        }
    }
}

/// A 2-D transposed convolution with PyTorch's weight layout `(in, out, k, k)`, run by the
/// convolution engine ([`crate::ops::conv_transpose2d`]); `output_padding` must be smaller than
/// the stride.
#[derive(Debug, Clone)]
pub struct ConvTranspose2d {
    weight: Tensor,
    bias: Option<Tensor>,
    config: ConvTranspose2dConfig,
}

impl ConvTranspose2d {
    /// Creates (or loads) `weight` and optionally `bias` under `vb`.
    pub fn new(
        in_channels: usize,
        out_channels: usize,
        kernel: usize,
        config: ConvTranspose2dConfig,
        vb: VarBuilder<'_>,
    ) -> Result<Self> {
        // PyTorch computes fan_in of a transposed conv from weight.size(1) = out_channels.
        let fan_in = out_channels * kernel * kernel;
        let weight = vb.get_with_hints(
            (in_channels, out_channels, kernel, kernel),
            "weight",
            config.weight_init.unwrap_or_else(|| default_init(fan_in)),
        )?;
        let bias = if config.bias {
            Some(vb.get_with_hints(out_channels, "bias", default_init(fan_in))?)
        } else {
            None
        };
        Ok(Self {
            weight,
            bias,
            config,
        })
    }

    /// A copy for inference: the weight and bias copied as they are now, without gradients
    /// (later changes of the variables do not reach it).
    pub fn for_inference(&self) -> Result<Self> {
        Ok(Self {
            weight: snapshot(&self.weight)?,
            bias: self.bias.as_ref().map(snapshot).transpose()?,
            config: self.config,
        })
    }

    /// The weight, `(in, out, k, k)`.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// Stops the weight and bias from receiving gradients.
    pub fn freeze(&mut self) {
        self.weight = self.weight.detach();
        self.bias = self.bias.as_ref().map(Tensor::detach);
    }

    /// Appends this layer to `g` as a `ConvTranspose` node reading `x`; returns its output.
    pub fn onnx(&self, g: &mut Graph, x: &str, name: &str) -> Result<String> {
        let c = &self.config;
        let geometry = (c.padding, c.stride, c.dilation);
        let extra = (
            "output_padding",
            Attr::Ints(vec![c.output_padding as i64; 2]),
        );
        conv_node(
            g,
            "ConvTranspose",
            x,
            name,
            (&self.weight, self.bias.as_ref()),
            geometry,
            extra,
        )
    }

    /// Multiply-accumulate operations × 2 for an `in_h` x `in_w` input, and the output size.
    pub fn flops(&self, (in_h, in_w): (usize, usize)) -> (u64, (usize, usize)) {
        let (in_c, out_c, k, _) = self.weight.dims4().unwrap_or((0, 0, 0, 0));
        let c = &self.config;
        let out = |len: usize| {
            ((len - 1) * c.stride + c.dilation * (k - 1) + c.output_padding + 1)
                .saturating_sub(2 * c.padding)
        };
        (
            2 * (in_c * out_c * k * k * in_h * in_w) as u64,
            (out(in_h), out(in_w)),
        )
    }
}

impl Module for ConvTranspose2d {
    /// Runs the convolution engine ([`ops::conv_transpose2d`]).
    ///
    /// # Shapes
    /// `(N, in, H, W)` → `(N, out, (H − 1)s − 2p + d(k − 1) + output_padding + 1, …)`.
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let c = &self.config;
        let params = ConvParams {
            padding: c.padding,
            stride: c.stride,
            dilation: c.dilation,
            groups: 1,
        };
        ops::conv_transpose2d(
            x,
            &self.weight,
            self.bias.as_ref(),
            params,
            c.output_padding,
        )
        .map_err(to_candle)
    }
}
