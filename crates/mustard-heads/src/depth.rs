//! Monocular depth: log-depth at stride 4, upsampled to the input.
//!
//! Metric labels train with L1 on log-depth over pixels with depth; relative labels (teacher
//! pseudo-labels) train with a scale-and-shift-invariant L1: per image, the prediction is first
//! aligned to the target by least squares (`s·p + t`), then compared.

use mustard_core::candle_core::{Device, Tensor};
use mustard_core::candle_nn::VarBuilder;
use mustard_core::ops::upsample_bilinear2d;
use mustard_core::{Error, Result};

use crate::block::{HeadBlock, HeadInit, SharedHidden};
use crate::STRIDE;

/// Hyperparameters of depth estimation.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DepthConfig {
    /// Hidden channels of the head block.
    pub head_conv: usize,
    /// Train with the scale-and-shift-invariant loss (relative depth).
    pub relative: bool,
}

/// A batch of depth targets.
#[derive(Debug, Clone)]
pub struct DepthBatch {
    /// `(B, 1, H, W)` log-depth (0 where unknown).
    pub log_depth: Tensor,
    /// `(B, 1, H, W)` 1 where the depth is known and the image is labelled.
    pub valid: Tensor,
}

impl DepthBatch {
    /// The same targets on `device` (a no-op on the device they are on).
    pub fn to_device(&self, device: &Device) -> Result<Self> {
        self.map(&|t| Ok(t.to_device(device)?))
    }

    /// Every tensor of the targets passed through `f`.
    pub fn map(&self, f: &dyn Fn(&Tensor) -> Result<Tensor>) -> Result<Self> {
        Ok(Self {
            log_depth: f(&self.log_depth)?,
            valid: f(&self.valid)?,
        })
    }
}

/// Stacks depth maps in metres (row-major); images without depth are all-invalid.
pub fn collate(
    maps: &[Option<&[f32]>],
    (h, w): (usize, usize),
    device: &Device,
) -> Result<DepthBatch> {
    let (mut log, mut valid) = (
        Vec::with_capacity(maps.len() * h * w),
        Vec::with_capacity(maps.len() * h * w),
    );
    for (i, m) in maps.iter().enumerate() {
        match m {
            Some(m) if m.len() == h * w => {
                for &d in m.iter() {
                    let ok = d.is_finite() && d > 0.0;
                    log.push(if ok { d.ln() } else { 0.0 });
                    valid.push(f32::from(u8::from(ok)));
                }
            }
            Some(m) => {
                return Err(Error::InvalidConfig {
                    what: "depth collate",
                    reason: format!("map {i} has {} pixels, expected {h} x {w}", m.len()),
                })
            }
            None => {
                log.extend(std::iter::repeat_n(0.0, h * w));
                valid.extend(std::iter::repeat_n(0.0, h * w));
            }
        }
    }
    let shape = (maps.len(), 1, h, w);
    Ok(DepthBatch {
        log_depth: Tensor::from_vec(log, shape, device)?,
        valid: Tensor::from_vec(valid, shape, device)?,
    })
}

/// The depth head.
#[derive(Debug, Clone)]
pub struct DepthHead {
    block: HeadBlock,
    config: DepthConfig,
}

impl DepthHead {
    /// Builds (or loads) the head under `vb` (`depth.*`).
    pub fn new(in_channels: usize, config: &DepthConfig, vb: VarBuilder<'_>) -> Result<Self> {
        Ok(Self {
            block: HeadBlock::new(
                in_channels,
                config.head_conv,
                1,
                HeadInit::Default,
                vb.pp("depth"),
            )?,
            config: config.clone(),
        })
    }

    /// A copy for inference ([`HeadBlock::for_inference`]).
    pub fn for_inference(&self) -> Result<Self> {
        Ok(Self {
            block: self.block.for_inference()?,
            config: self.config.clone(),
        })
    }

    /// Log-depth at the input resolution.
    ///
    /// # Shapes
    /// `(B, in, h, w)` → `(B, 1, 4h, 4w)`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_shared(x, &SharedHidden::default())
    }

    /// [`Self::forward`] with the hidden map in `shared` ([`SharedHidden`]).
    pub fn forward_shared(&self, x: &Tensor, shared: &SharedHidden) -> Result<Tensor> {
        let y = self.block.forward_shared(x, shared)?;
        let (_, _, h, w) = y.dims4()?;
        upsample_bilinear2d(&y, h * STRIDE, w * STRIDE)
    }

    /// The head's block.
    pub fn blocks(&self) -> Vec<&HeadBlock> {
        vec![&self.block]
    }

    /// Appends the head to `g` under `prefix`: log-depth at the input resolution.
    pub fn onnx(&self, g: &mut mustard_core::onnx::Graph, x: &str, prefix: &str) -> Result<String> {
        let y = self.block.onnx(g, x, &format!("{prefix}.depth"))?;
        Ok(g.upsample(&y, STRIDE, true, &format!("{prefix}.up")))
    }

    /// L1 on log-depth over valid pixels, or the scale-and-shift-invariant L1 when relative.
    pub fn loss(&self, pred: &Tensor, t: &DepthBatch) -> Result<Tensor> {
        // Valid pixels of every process of a data-parallel step (mustard_core::dist).
        let count = (mustard_core::dist::global_sum(&t.valid.sum_all()?)? + 1e-6)?;
        let pred = if self.config.relative {
            align(pred, &t.log_depth, &t.valid)?
        } else {
            pred.clone()
        };
        Ok(((pred - &t.log_depth)?.abs()? * &t.valid)?
            .sum_all()?
            .broadcast_div(&count)?)
    }

    /// Depth in metres per image (row-major).
    pub fn decode(&self, pred: &Tensor) -> Result<Vec<Vec<f32>>> {
        Ok(pred.exp()?.flatten_from(1)?.to_vec2::<f32>()?)
    }

    /// Convolution FLOPs on an `h` x `w` stride-4 map.
    pub fn flops(&self, h: usize, w: usize) -> u64 {
        self.block.flops(h, w)
    }
}

/// Per image, the least-squares `s·pred + t` closest to `target` over valid pixels.
fn align(pred: &Tensor, target: &Tensor, valid: &Tensor) -> Result<Tensor> {
    let dims = (1, 2, 3);
    let n = (valid.sum_keepdim(dims)? + 1e-6)?;
    let mean =
        |x: &Tensor| -> Result<Tensor> { Ok((x * valid)?.sum_keepdim(dims)?.broadcast_div(&n)?) };
    let (mp, mt) = (mean(pred)?, mean(target)?);
    let (dp, dt) = (pred.broadcast_sub(&mp)?, target.broadcast_sub(&mt)?);
    let s = mean(&(&dp * &dt)?)?.broadcast_div(&(mean(&dp.sqr()?)? + 1e-6)?)?;
    Ok(dp.broadcast_mul(&s)?.broadcast_add(&mt)?)
}

#[cfg(test)]
mod tests {
    use mustard_core::candle_nn::VarMap;

    use super::*;

    #[test]
    fn relative_loss_ignores_scale_and_shift_of_log_depth() {
        let dev = Device::Cpu;
        let depth = vec![1.0f32, 2.0, 4.0, 8.0];
        let batch = collate(&[Some(&depth)], (2, 2), &dev).unwrap();
        let vm = VarMap::new();
        let head = |relative| {
            DepthHead::new(
                4,
                &DepthConfig {
                    head_conv: 4,
                    relative,
                },
                VarBuilder::from_varmap(&vm, mustard_core::candle_core::DType::F32, &dev),
            )
            .unwrap()
        };
        // Prediction = 2·log d + 3: wrong metrically, right up to scale and shift.
        let pred = Tensor::from_vec(
            depth
                .iter()
                .map(|d| 2.0 * d.ln() + 3.0)
                .collect::<Vec<f32>>(),
            (1, 1, 2, 2),
            &dev,
        )
        .unwrap();
        let relative = head(true)
            .loss(&pred, &batch)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(relative.abs() < 1e-5, "{relative}");
        let metric = head(false)
            .loss(&pred, &batch)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let expected = depth.iter().map(|d| (d.ln() + 3.0).abs()).sum::<f32>() / 4.0;
        assert!((metric - expected).abs() < 1e-5, "{metric} vs {expected}");
        let missing = collate(&[None, Some(&[0.0; 4])], (2, 2), &dev).unwrap();
        assert_eq!(
            missing.valid.sum_all().unwrap().to_scalar::<f32>().unwrap(),
            0.0
        );
    }
}
