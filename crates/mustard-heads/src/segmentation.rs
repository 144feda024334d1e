//! Semantic segmentation: per-pixel class logits at stride 4, upsampled to the input.

use mustard_core::candle_core::{DType, Device, Tensor};
use mustard_core::candle_nn::VarBuilder;
use mustard_core::loss::cross_entropy;
use mustard_core::ops::upsample_bilinear2d;
use mustard_core::{Error, Result};

use crate::block::{HeadBlock, HeadInit, SharedHidden};
use crate::STRIDE;

/// The label that no loss or metric counts.
pub const IGNORE: u8 = 255;

/// Hyperparameters of segmentation.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SegmentationConfig {
    /// Classes, background included.
    pub num_classes: usize,
    /// Hidden channels of the head block.
    pub head_conv: usize,
}

/// A batch of label maps.
#[derive(Debug, Clone)]
pub struct SegmentationBatch {
    /// `(B, H, W)` u32 train ids; 255 where ignored or where the image is not labelled.
    pub labels: Tensor,
}

impl SegmentationBatch {
    /// The same targets on `device` (a no-op on the device they are on).
    pub fn to_device(&self, device: &Device) -> Result<Self> {
        self.map(&|t| Ok(t.to_device(device)?))
    }

    /// Every tensor of the targets passed through `f`.
    pub fn map(&self, f: &dyn Fn(&Tensor) -> Result<Tensor>) -> Result<Self> {
        Ok(Self {
            labels: f(&self.labels)?,
        })
    }
}

/// Stacks label maps (row-major `H·W` bytes each); images without labels become all-ignore.
pub fn collate(
    maps: &[Option<&[u8]>],
    (h, w): (usize, usize),
    device: &Device,
) -> Result<SegmentationBatch> {
    let mut all = Vec::with_capacity(maps.len() * h * w);
    for (i, m) in maps.iter().enumerate() {
        match m {
            Some(m) if m.len() == h * w => all.extend(m.iter().map(|&v| v as u32)),
            Some(m) => {
                return Err(Error::InvalidConfig {
                    what: "segmentation collate",
                    reason: format!("map {i} has {} pixels, expected {h} x {w}", m.len()),
                })
            }
            None => all.extend(std::iter::repeat_n(IGNORE as u32, h * w)),
        }
    }
    Ok(SegmentationBatch {
        labels: Tensor::from_vec(all, (maps.len(), h, w), device)?,
    })
}

/// The segmentation head.
#[derive(Debug, Clone)]
pub struct SegmentationHead {
    block: HeadBlock,
    config: SegmentationConfig,
}

impl SegmentationHead {
    /// Builds (or loads) the head under `vb` (`seg.*`).
    pub fn new(
        in_channels: usize,
        config: &SegmentationConfig,
        vb: VarBuilder<'_>,
    ) -> Result<Self> {
        let block = HeadBlock::new(
            in_channels,
            config.head_conv,
            config.num_classes,
            HeadInit::Default,
            vb.pp("seg"),
        )?;
        Ok(Self {
            block,
            config: config.clone(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &SegmentationConfig {
        &self.config
    }

    /// A copy for inference ([`HeadBlock::for_inference`]).
    pub fn for_inference(&self) -> Result<Self> {
        Ok(Self {
            block: self.block.for_inference()?,
            config: self.config.clone(),
        })
    }

    /// Logits at the input resolution.
    ///
    /// # Shapes
    /// `(B, in, h, w)` → `(B, C, 4h, 4w)`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_shared(x, &SharedHidden::default())
    }

    /// [`Self::forward`] with the hidden map in `shared` ([`SharedHidden`]).
    pub fn forward_shared(&self, x: &Tensor, shared: &SharedHidden) -> Result<Tensor> {
        let logits = self.block.forward_shared(x, shared)?;
        let (_, _, h, w) = logits.dims4()?;
        upsample_bilinear2d(&logits, h * STRIDE, w * STRIDE)
    }

    /// The head's block.
    pub fn blocks(&self) -> Vec<&HeadBlock> {
        vec![&self.block]
    }

    /// Appends the head to `g` under `prefix`: logits at the input resolution.
    pub fn onnx(&self, g: &mut mustard_core::onnx::Graph, x: &str, prefix: &str) -> Result<String> {
        let logits = self.block.onnx(g, x, &format!("{prefix}.seg"))?;
        Ok(g.upsample(&logits, STRIDE, true, &format!("{prefix}.up")))
    }

    /// Pixel cross-entropy, ignoring label 255.
    pub fn loss(&self, logits: &Tensor, t: &SegmentationBatch) -> Result<Tensor> {
        cross_entropy(logits, &t.labels, IGNORE as u32)
    }

    /// The class of every pixel, per image (row-major).
    pub fn decode(&self, logits: &Tensor) -> Result<Vec<Vec<u8>>> {
        Ok(logits
            .argmax(1)?
            .to_dtype(DType::U8)?
            .flatten_from(1)?
            .to_vec2::<u8>()?)
    }

    /// Convolution FLOPs on an `h` x `w` stride-4 map.
    pub fn flops(&self, h: usize, w: usize) -> u64 {
        self.block.flops(h, w)
    }
}
