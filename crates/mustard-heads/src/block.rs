use mustard_core::candle_core::{DType, Module, Tensor, TensorId};
use mustard_core::candle_nn::{Init, VarBuilder};
use mustard_core::nn::{Conv2d, Conv2dConfig};
use mustard_core::{Error, Result};

/// How a head's convolutions start (SPEC §2, as in CenterNet).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum HeadInit {
    /// Default weights; the last bias is `bias` (−2.19 makes the initial sigmoid ≈ 0.1).
    Heatmap {
        /// Bias of the last convolution.
        bias: f64,
    },
    /// Weights N(0, 0.001), biases 0.
    Regression,
    /// PyTorch's default initialisation.
    Default,
}

impl HeadInit {
    /// The heatmap prior of CenterNet.
    pub const HEATMAP: HeadInit = HeadInit::Heatmap { bias: -2.19 };
}

/// The block every head is built from: 3x3 conv (`in → head_conv`, bias) → ReLU → 1x1 conv
/// (`head_conv → out`). Variables `<name>.0.*` and `<name>.2.*`, as in CenterNet checkpoints.
#[derive(Debug, Clone)]
pub struct HeadBlock {
    conv: Conv2d,
    out: Conv2d,
}

impl HeadBlock {
    /// Builds (or loads) the block under `vb`.
    pub fn new(
        in_channels: usize,
        head_conv: usize,
        out_channels: usize,
        init: HeadInit,
        vb: VarBuilder<'_>,
    ) -> Result<Self> {
        let small = Init::Randn {
            mean: 0.0,
            stdev: 0.001,
        };
        let zero = Init::Const(0.0);
        let (w1, b1, w2, b2) = match init {
            HeadInit::Heatmap { bias } => (None, None, None, Some(Init::Const(bias))),
            HeadInit::Regression => (Some(small), Some(zero), Some(small), Some(zero)),
            HeadInit::Default => (None, None, None, None),
        };
        let conv = Conv2d::new(
            in_channels,
            head_conv,
            3,
            Conv2dConfig {
                padding: 1,
                weight_init: w1,
                bias_init: b1,
                ..Default::default()
            },
            vb.pp("0"),
        )?;
        let out = Conv2d::new(
            head_conv,
            out_channels,
            1,
            Conv2dConfig {
                weight_init: w2,
                bias_init: b2,
                ..Default::default()
            },
            vb.pp("2"),
        )?;
        Ok(Self { conv, out })
    }

    /// A copy for inference: both convolutions' weights copied as they are now, with their
    /// transforms kept after first use ([`Conv2d::for_inference`]); same outputs, bit for bit.
    pub fn for_inference(&self) -> Result<Self> {
        Ok(Self {
            conv: self.conv.for_inference()?,
            out: self.out.for_inference()?,
        })
    }

    /// # Shapes
    /// `(N, in, h, w)` → `(N, out, h, w)`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.out.forward(&self.conv.forward_relu(x)?)?)
    }

    /// [`HeadBlock::forward`], taking the hidden map from `shared` when it holds this block's.
    ///
    /// # Shapes
    /// As [`HeadBlock::forward`].
    pub fn forward_shared(&self, x: &Tensor, shared: &SharedHidden) -> Result<Tensor> {
        match shared.get(self) {
            Some(hidden) => Ok(self.out.forward(hidden)?),
            None => self.forward(x),
        }
    }

    /// The first convolution (`in → head_conv`, 3x3), whose output ReLU makes the hidden map.
    pub fn hidden_conv(&self) -> &Conv2d {
        &self.conv
    }

    /// Convolution FLOPs on an `h` x `w` map.
    pub fn flops(&self, h: usize, w: usize) -> u64 {
        self.conv.flops((h, w)).0 + self.out.flops((h, w)).0
    }

    /// Appends the block to `g` (variables `{prefix}.0.*`, `{prefix}.2.*`); returns its output.
    pub fn onnx(&self, g: &mut mustard_core::onnx::Graph, x: &str, prefix: &str) -> Result<String> {
        let hidden = self.conv.onnx(g, x, &format!("{prefix}.0"))?;
        let hidden = g.relu(&hidden, &format!("{prefix}.1"));
        self.out.onnx(g, &hidden, &format!("{prefix}.2"))
    }
}

/// The hidden maps (3x3 convolution + ReLU) of several head blocks on one input, computed as
/// one convolution whose output channels are the blocks' in turn ([`Conv2d::concat_out`]):
/// the input is read and transformed once for all blocks, in the forward pass and in the weight
/// gradient, and the blocks' input gradients are summed inside one GEMM instead of block by
/// block. Each block then takes its own channels ([`HeadBlock::forward_shared`]). The outputs
/// are the blocks' own, bit for bit; the input's gradient is their sum in another order.
#[derive(Debug, Clone, Default)]
pub struct SharedHidden {
    /// Each block's hidden map, by the id of its first convolution's weight.
    maps: Vec<(TensorId, Tensor)>,
}

impl SharedHidden {
    /// The hidden maps of `blocks` on `x`; none (each block then runs alone) when the blocks'
    /// first convolutions cannot be joined ([`Conv2d::concat_out`]).
    pub fn new(blocks: &[&HeadBlock], x: &Tensor) -> Result<Self> {
        let convs: Vec<&Conv2d> = blocks.iter().map(|b| &b.conv).collect();
        match Conv2d::concat_out(&convs)? {
            Some(joined) => Self::with_conv(blocks, &joined, x),
            None => Ok(Self::default()),
        }
    }

    /// The hidden maps of `blocks` on `x` through `joined`, their first convolutions
    /// concatenated as [`Conv2d::concat_out`] makes it (or an inference copy of that).
    pub fn with_conv(blocks: &[&HeadBlock], joined: &Conv2d, x: &Tensor) -> Result<Self> {
        let hidden = joined.forward_relu(x)?;
        let mut start = 0;
        let mut maps = Vec::with_capacity(blocks.len());
        for b in blocks {
            let channels = b.conv.weight().dim(0)?;
            maps.push((b.conv.weight().id(), hidden.narrow(1, start, channels)?));
            start += channels;
        }
        let total = hidden.dim(1)?;
        if start != total {
            return Err(Error::UnexpectedShape {
                op: "shared hidden maps",
                name: "joined convolution",
                shape: joined.weight().shape().clone(),
                expected: format!("{start} output channels, the blocks' together"),
            });
        }
        Ok(Self { maps })
    }

    fn get(&self, block: &HeadBlock) -> Option<&Tensor> {
        let id = block.conv.weight().id();
        self.maps.iter().find(|(i, _)| *i == id).map(|(_, t)| t)
    }
}

/// Values of a dense map at flat positions: `pred (B, C, H, W)`, `ind (B, K)` → `(B, K, C)`.
pub fn gather(pred: &Tensor, ind: &Tensor) -> Result<Tensor> {
    let (b, c, _, _) = pred.dims4().map_err(|_| Error::UnexpectedShape {
        op: "gather",
        name: "pred",
        shape: pred.shape().clone(),
        expected: "(B, C, H, W)".into(),
    })?;
    let k = ind.dim(1)?;
    let flat = pred.flatten_from(2)?.transpose(1, 2)?.contiguous()?;
    let idx = ind
        .to_dtype(DType::U32)?
        .unsqueeze(2)?
        .broadcast_as((b, k, c))?
        .contiguous()?;
    Ok(flat.gather(&idx, 1)?)
}

/// Multiplies each image's mask rows by its presence flag: `mask (B, …)`, `presence (B,)`.
pub(crate) fn mask_absent(mask: &Tensor, presence: &Tensor) -> Result<Tensor> {
    let b = mask.dim(0)?;
    if presence.dims() != [b] {
        return Err(Error::UnexpectedShape {
            op: "presence",
            name: "presence",
            shape: presence.shape().clone(),
            expected: format!("({b},), one flag per image"),
        });
    }
    let mut shape = vec![b];
    shape.extend(std::iter::repeat_n(1, mask.rank() - 1));
    Ok(mask.broadcast_mul(&presence.to_dtype(mask.dtype())?.reshape(shape)?)?)
}

/// `Σ |pred − target| · mask / (Σ mask + 1e−4)` over same-shaped tensors (the mask counts
/// coordinates), CenterNet's `RegWeightedL1Loss`.
pub(crate) fn weighted_l1(pred: &Tensor, target: &Tensor, mask: &Tensor) -> Result<Tensor> {
    let num = ((pred - target)?.abs()? * mask)?.sum_all()?;
    let count = mustard_core::dist::global_sum(&mask.sum_all()?)?;
    Ok(num.broadcast_div(&(count + 1e-4)?)?)
}

/// The values of `t (B, C, H, W)` at flat positions `y·W + x`, the same number for every image,
/// as `[b][c][i]`: the gathering runs on `t`'s device and only the gathered values are copied.
pub(crate) fn values_at(t: &Tensor, positions: &[Vec<u32>]) -> Result<Vec<Vec<Vec<f32>>>> {
    let (b, c, _, _) = t.dims4()?;
    let k = positions.first().map_or(0, Vec::len);
    if positions.len() != b || positions.iter().any(|p| p.len() != k) {
        let lengths: Vec<usize> = positions.iter().map(Vec::len).collect();
        return Err(Error::InvalidConfig {
            what: "values_at",
            reason: format!(
                "positions of lengths {lengths:?} for {b} images: one list of {k} per image"
            ),
        });
    }
    if k == 0 {
        return Ok(vec![vec![Vec::new(); c]; b]);
    }
    let ind = Tensor::from_vec(positions.concat(), (b, 1, k), t.device())?
        .broadcast_as((b, c, k))?
        .contiguous()?;
    Ok(t.flatten_from(2)?
        .contiguous()?
        .gather(&ind, 2)?
        .to_dtype(DType::F32)?
        .to_vec3::<f32>()?)
}
