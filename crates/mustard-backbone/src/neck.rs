use mustard_core::candle_core::{Module, ModuleT, Tensor};
use mustard_core::candle_nn::VarBuilder;
use mustard_core::nn::{
    BatchNorm2d, BatchNorm2dConfig, Conv2d, Conv2dConfig, ConvTranspose2d, ConvTranspose2dConfig,
};
use mustard_core::ops::{relu, upsample_bilinear2d, upsample_nearest2d};

use crate::resnet::ConvBn;
use crate::{Error, FeatureMaps, Result};

/// The shape of an [`Fpn`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FpnConfig {
    /// Channels of C2..C5.
    pub in_channels: [usize; 4],
    /// Channels `d` of P2..P5.
    pub out_channels: usize,
    /// Also build the fused stride-4 map: each P_k through `max(1, k − 2)` stages of
    /// [3x3 conv → BN → ReLU (→ bilinear x2 while above stride 4)], summed.
    pub fuse: bool,
}

/// The output of an [`Fpn`].
///
/// # Shapes
/// `p2..p5`: `(N, d, H/4 … H/32, W/4 … W/32)`; `fused`: `(N, d, H/4, W/4)`.
#[derive(Debug, Clone)]
pub struct Pyramid {
    /// Stride 4.
    pub p2: Tensor,
    /// Stride 8.
    pub p3: Tensor,
    /// Stride 16.
    pub p4: Tensor,
    /// Stride 32.
    pub p5: Tensor,
    /// The fused stride-4 map, when configured.
    pub fused: Option<Tensor>,
}

impl Pyramid {
    /// The stride-4 map dense heads read: the fused map when built, else P2.
    pub fn dense(&self) -> &Tensor {
        self.fused.as_ref().unwrap_or(&self.p2)
    }
}

/// Feature pyramid: lateral 1x1 convolutions to `d` channels, top-down nearest x2 + add, 3x3
/// smoothing. Variables: `lateral.{0..3}`, `output.{0..3}`, `fuse.{level}.{stage}.{conv,bn}`.
#[derive(Debug, Clone)]
pub struct Fpn {
    lateral: Vec<Conv2d>,
    output: Vec<Conv2d>,
    fuse: Option<Vec<Vec<ConvBn>>>,
}

impl Fpn {
    /// Builds (or loads) the neck under `vb`.
    pub fn new(config: &FpnConfig, vb: VarBuilder<'_>) -> Result<Self> {
        if config.out_channels == 0 {
            return Err(Error::InvalidConfig {
                what: "fpn",
                reason: "out_channels must be at least 1".into(),
            });
        }
        let d = config.out_channels;
        let smooth = Conv2dConfig {
            padding: 1,
            ..Default::default()
        };
        let mut lateral = Vec::new();
        let mut output = Vec::new();
        for (i, &c) in config.in_channels.iter().enumerate() {
            lateral.push(Conv2d::new(
                c,
                d,
                1,
                Conv2dConfig::default(),
                vb.pp(format!("lateral.{i}")),
            )?);
            output.push(Conv2d::new(d, d, 3, smooth, vb.pp(format!("output.{i}")))?);
        }
        let fuse = if config.fuse {
            let mut levels = Vec::new();
            for level in 0..4 {
                let stages = (0..level.max(1))
                    .map(|s| {
                        let p = format!("fuse.{level}.{s}");
                        ConvBn::new(
                            d,
                            d,
                            3,
                            1,
                            vb.pp(format!("{p}.conv")),
                            vb.pp(format!("{p}.bn")),
                        )
                    })
                    .collect::<Result<Vec<_>>>()?;
                levels.push(stages);
            }
            Some(levels)
        } else {
            None
        };
        Ok(Self {
            lateral,
            output,
            fuse,
        })
    }

    /// Runs the neck.
    pub fn forward_t(&self, maps: &FeatureMaps, train: bool) -> Result<Pyramid> {
        let c = maps.levels();
        let mut inner = self.lateral[3].forward(c[3])?;
        let mut outs = vec![self.output[3].forward(&inner)?];
        for i in (0..3).rev() {
            inner = (self.lateral[i].forward(c[i])? + upsample_nearest2d(&inner, 2)?)?;
            outs.push(self.output[i].forward(&inner)?);
        }
        outs.reverse();
        let fused = match &self.fuse {
            None => None,
            Some(levels) => {
                let mut sum: Option<Tensor> = None;
                for (level, stages) in levels.iter().enumerate() {
                    let mut x = outs[level].clone();
                    for stage in stages {
                        x = relu(&stage.forward_t(&x, train)?)?;
                        if level > 0 {
                            let (_, _, h, w) = x.dims4()?;
                            x = upsample_bilinear2d(&x, 2 * h, 2 * w)?;
                        }
                    }
                    sum = Some(match sum {
                        None => x,
                        Some(s) => (s + x)?,
                    });
                }
                sum
            }
        };
        let [p2, p3, p4, p5]: [Tensor; 4] = outs.try_into().expect("four levels");
        Ok(Pyramid {
            p2,
            p3,
            p4,
            p5,
            fused,
        })
    }

    /// Convolution FLOPs at an input of `h` x `w` pixels (the backbone's input).
    pub fn flops(&self, h: usize, w: usize) -> u64 {
        let mut total = 0;
        for i in 0..4 {
            let hw = (h >> (i + 2), w >> (i + 2));
            total += self.lateral[i].flops(hw).0 + self.output[i].flops(hw).0;
            if let Some(levels) = &self.fuse {
                let mut hw = hw;
                for stage in &levels[i] {
                    total += stage.flops(hw).0;
                    if i > 0 {
                        hw = (hw.0 * 2, hw.1 * 2);
                    }
                }
            }
        }
        total
    }
}

/// The shape of a [`DeconvNeck`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DeconvConfig {
    /// Channels of C5.
    pub in_channels: usize,
    /// Output channels of each of the stages (CenterNet: 256, 256, 256).
    pub widths: Vec<usize>,
}

/// CenterNet's ResNet neck: C5 → n x [ConvTranspose2d k4 s2 p1 (no bias) → BN → ReLU], each
/// doubling the resolution (three stages: stride 32 → 4). Variables follow CenterNet's
/// `deconv_layers.{3i}` (transposed conv) and `deconv_layers.{3i+1}` (BatchNorm).
#[derive(Debug, Clone)]
pub struct DeconvNeck {
    stages: Vec<(ConvTranspose2d, BatchNorm2d)>,
}

impl DeconvNeck {
    /// Builds (or loads) the neck under `vb`.
    pub fn new(config: &DeconvConfig, vb: VarBuilder<'_>) -> Result<Self> {
        if config.widths.is_empty() || config.widths.contains(&0) {
            return Err(Error::InvalidConfig {
                what: "deconv neck",
                reason: format!("widths {:?} must be non-empty and positive", config.widths),
            });
        }
        let cfg = ConvTranspose2dConfig {
            stride: 2,
            padding: 1,
            bias: false,
            ..Default::default()
        };
        let mut in_c = config.in_channels;
        let mut stages = Vec::new();
        for (i, &w) in config.widths.iter().enumerate() {
            let deconv =
                ConvTranspose2d::new(in_c, w, 4, cfg, vb.pp(format!("deconv_layers.{}", 3 * i)))?;
            let bn = BatchNorm2d::new(
                w,
                BatchNorm2dConfig::default(),
                vb.pp(format!("deconv_layers.{}", 3 * i + 1)),
            )?;
            stages.push((deconv, bn));
            in_c = w;
        }
        Ok(Self { stages })
    }

    /// Runs the neck on C5.
    ///
    /// # Shapes
    /// `(N, C₅, h, w)` → `(N, widths.last(), h · 2ⁿ, w · 2ⁿ)`.
    pub fn forward_t(&self, c5: &Tensor, train: bool) -> Result<Tensor> {
        let mut x = c5.clone();
        for (deconv, bn) in &self.stages {
            x = relu(&bn.forward_t(&deconv.forward(&x)?, train)?)?;
        }
        Ok(x)
    }

    /// Transposed-convolution FLOPs for a backbone input of `h` x `w` pixels.
    pub fn flops(&self, h: usize, w: usize) -> u64 {
        let mut hw = (h / 32, w / 32);
        let mut total = 0;
        for (deconv, _) in &self.stages {
            let (f, o) = deconv.flops(hw);
            total += f;
            hw = o;
        }
        total
    }
}
