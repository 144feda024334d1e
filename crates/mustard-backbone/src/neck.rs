use mustard_core::candle_core::{Module, ModuleT, Tensor};
use mustard_core::candle_nn::VarBuilder;
use mustard_core::nn::{
    BatchNorm2d, BatchNorm2dConfig, Conv2d, Conv2dConfig, ConvTranspose2d, ConvTranspose2dConfig,
};
use mustard_core::ops::{relu, upsample_bilinear2d, upsample_nearest2d};

use mustard_core::onnx::Graph;

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

    /// A copy for inference, as [`crate::ResNet::for_inference`]: every convolution's weights
    /// copied with their transforms kept after first use, the fusion stages' BatchNorms folded.
    pub fn for_inference(&self) -> Result<Self> {
        let convs = |layers: &[Conv2d]| -> Result<Vec<Conv2d>> {
            layers
                .iter()
                .map(Conv2d::for_inference)
                .collect::<mustard_core::Result<_>>()
                .map_err(Into::into)
        };
        let mut fuse = self.fuse.clone();
        for conv in fuse.iter_mut().flatten().flatten() {
            conv.prepare_inference()?;
        }
        Ok(Self {
            lateral: convs(&self.lateral)?,
            output: convs(&self.output)?,
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

    /// Appends the evaluation-mode neck to `g`, reading C2..C5, with its variables under
    /// `prefix`; returns P2 (without fusion) or the fused stride-4 map, the map the heads
    /// read.
    pub fn onnx(&self, g: &mut Graph, c: &[String; 4], prefix: &str) -> Result<String> {
        let mut inner = self.lateral[3].onnx(g, &c[3], &format!("{prefix}.lateral.3"))?;
        let mut outs = vec![(3, inner.clone())];
        for i in (0..3).rev() {
            let lateral = self.lateral[i].onnx(g, &c[i], &format!("{prefix}.lateral.{i}"))?;
            let up = g.upsample(&inner, 2, false, &format!("{prefix}.top_down.{i}"));
            inner = g.add(&lateral, &up, &format!("{prefix}.inner.{i}"));
            outs.push((i, inner.clone()));
        }
        // Only the outputs the heads read: P2, or every level when they are fused.
        let levels: Vec<usize> = if self.fuse.is_some() {
            vec![0, 1, 2, 3]
        } else {
            vec![0]
        };
        let mut p = vec![String::new(); 4];
        for (i, inner) in outs {
            if levels.contains(&i) {
                p[i] = self.output[i].onnx(g, &inner, &format!("{prefix}.output.{i}"))?;
            }
        }
        let Some(levels) = &self.fuse else {
            return Ok(p[0].clone());
        };
        let mut sum: Option<String> = None;
        for (level, stages) in levels.iter().enumerate() {
            let mut x = p[level].clone();
            for (s, stage) in stages.iter().enumerate() {
                let name = format!("{prefix}.fuse.{level}.{s}");
                x = stage.onnx(g, &x, &format!("{name}.conv"), &format!("{name}.bn"), true)?;
                if level > 0 {
                    x = g.upsample(&x, 2, true, &format!("{name}.up"));
                }
            }
            sum = Some(match sum {
                None => x,
                Some(s) => g.add(&s, &x, &format!("{prefix}.fused.{level}")),
            });
        }
        Ok(sum.expect("four levels"))
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
    /// A copy made for inference ([`DeconvNeck::for_inference`]).
    inference: bool,
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
        Ok(Self {
            stages,
            inference: false,
        })
    }

    /// A copy for inference: every weight and BatchNorm statistic copied as it is now; it
    /// cannot train.
    pub fn for_inference(&self) -> Result<Self> {
        let stages = self
            .stages
            .iter()
            .map(|(deconv, bn)| Ok((deconv.for_inference()?, bn.for_inference()?)))
            .collect::<mustard_core::Result<_>>()?;
        Ok(Self {
            stages,
            inference: true,
        })
    }

    /// Runs the neck on C5.
    ///
    /// # Shapes
    /// `(N, C₅, h, w)` → `(N, widths.last(), h · 2ⁿ, w · 2ⁿ)`.
    pub fn forward_t(&self, c5: &Tensor, train: bool) -> Result<Tensor> {
        if train && self.inference {
            return Err(Error::InferenceOnly { what: "network" });
        }
        let mut x = c5.clone();
        for (deconv, bn) in &self.stages {
            x = relu(&bn.forward_t(&deconv.forward(&x)?, train)?)?;
        }
        Ok(x)
    }

    /// Appends the evaluation-mode neck to `g`, reading C5, with its variables under `prefix`.
    pub fn onnx(&self, g: &mut Graph, c5: &str, prefix: &str) -> Result<String> {
        let mut x = c5.to_string();
        for (i, (deconv, bn)) in self.stages.iter().enumerate() {
            x = deconv.onnx(g, &x, &format!("{prefix}.deconv_layers.{}", 3 * i))?;
            let name = format!("{prefix}.deconv_layers.{}", 3 * i + 1);
            x = bn.onnx(g, &x, &name)?;
            x = g.relu(&x, &format!("{name}.relu"));
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
