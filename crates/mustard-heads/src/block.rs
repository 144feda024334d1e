use mustard_core::candle_core::{DType, Module, Tensor};
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
    Ok(num.broadcast_div(&(mask.sum_all()? + 1e-4)?)?)
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
