use mustard_core::candle_core::{Module, ModuleT, Tensor};
use mustard_core::candle_nn::VarBuilder;
use mustard_core::nn::{BatchNorm2d, BatchNorm2dConfig, Conv2d, Conv2dConfig, Linear};
use mustard_core::onnx::Graph;
use mustard_core::ops::{max_pool2d, relu as relu_op, MaxPool2dConfig};

use crate::{Error, Result};

/// The residual block type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BlockKind {
    /// Two 3x3 convolutions (ResNet-18/34), expansion 1.
    Basic,
    /// 1x1 → 3x3 (strided) → 1x1 convolutions (ResNet-50), expansion 4.
    Bottleneck,
}

impl BlockKind {
    /// Output channels per block width.
    pub fn expansion(self) -> usize {
        match self {
            BlockKind::Basic => 1,
            BlockKind::Bottleneck => 4,
        }
    }
}

/// Named ResNet sizes, as picked on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "snake_case")]
pub enum ResNetPreset {
    /// BasicBlock [1, 1, 1, 1], widths 16/32/64/128: for tests and quick runs.
    Tiny,
    /// ResNet-18.
    R18,
    /// ResNet-34.
    R34,
    /// ResNet-50.
    R50,
}

impl std::fmt::Display for ResNetPreset {
    /// `tiny ResNet`, `ResNet-18`, `ResNet-34`, `ResNet-50`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ResNetPreset::Tiny => "tiny ResNet",
            ResNetPreset::R18 => "ResNet-18",
            ResNetPreset::R34 => "ResNet-34",
            ResNetPreset::R50 => "ResNet-50",
        })
    }
}

/// The shape of a ResNet.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ResNetConfig {
    /// Block type.
    pub block: BlockKind,
    /// Blocks per stage (layer1..layer4).
    pub layers: [usize; 4],
    /// Block width per stage (output channels are `width · expansion`).
    pub widths: [usize; 4],
    /// Channels of the 7x7 stem convolution.
    pub stem_width: usize,
    /// Input channels.
    pub in_channels: usize,
    /// With `Some(n)`, a classifier `fc` (global average pool of C5 → Linear(n)) is built.
    pub num_classes: Option<usize>,
    /// Stages frozen for fine-tuning: 0 none, 1 the stem, 2 the stem and layer1, … 5 all. Frozen
    /// stages get no gradient and their BatchNorm uses the running statistics.
    pub freeze_stages: usize,
    /// Freeze every BatchNorm (running statistics in training too, γ and β fixed).
    pub frozen_bn: bool,
}

impl ResNetConfig {
    /// A preset with no classifier and nothing frozen.
    pub fn preset(preset: ResNetPreset) -> Self {
        let (block, layers, widths, stem_width) = match preset {
            ResNetPreset::Tiny => (BlockKind::Basic, [1, 1, 1, 1], [16, 32, 64, 128], 16),
            ResNetPreset::R18 => (BlockKind::Basic, [2, 2, 2, 2], [64, 128, 256, 512], 64),
            ResNetPreset::R34 => (BlockKind::Basic, [3, 4, 6, 3], [64, 128, 256, 512], 64),
            ResNetPreset::R50 => (BlockKind::Bottleneck, [3, 4, 6, 3], [64, 128, 256, 512], 64),
        };
        Self {
            block,
            layers,
            widths,
            stem_width,
            in_channels: 3,
            num_classes: None,
            freeze_stages: 0,
            frozen_bn: false,
        }
    }

    /// ResNet-18.
    pub fn r18() -> Self {
        Self::preset(ResNetPreset::R18)
    }

    /// ResNet-34.
    pub fn r34() -> Self {
        Self::preset(ResNetPreset::R34)
    }

    /// ResNet-50.
    pub fn r50() -> Self {
        Self::preset(ResNetPreset::R50)
    }

    /// The narrow test preset.
    pub fn tiny() -> Self {
        Self::preset(ResNetPreset::Tiny)
    }

    /// Channels of C2..C5.
    pub fn out_channels(&self) -> [usize; 4] {
        self.widths.map(|w| w * self.block.expansion())
    }
}

/// The feature maps of a backbone, by stride.
///
/// # Shapes
/// For an `(N, 3, H, W)` input: `c2` `(N, C₂, H/4, W/4)`, `c3` at `/8`, `c4` at `/16`, `c5` at
/// `/32`.
#[derive(Debug, Clone)]
pub struct FeatureMaps {
    /// Stride 4 (layer1).
    pub c2: Tensor,
    /// Stride 8 (layer2).
    pub c3: Tensor,
    /// Stride 16 (layer3).
    pub c4: Tensor,
    /// Stride 32 (layer4).
    pub c5: Tensor,
}

impl FeatureMaps {
    /// The maps from fine to coarse.
    pub fn levels(&self) -> [&Tensor; 4] {
        [&self.c2, &self.c3, &self.c4, &self.c5]
    }
}

/// A convolution followed by BatchNorm, optionally frozen.
#[derive(Debug, Clone)]
pub(crate) struct ConvBn {
    conv: Conv2d,
    bn: BatchNorm2d,
    /// In a copy for inference: the BatchNorm folded into the convolution once, with its
    /// transforms kept ([`Conv2d::for_inference`]).
    folded: Option<Conv2d>,
}

impl ConvBn {
    pub fn new(
        in_c: usize,
        out_c: usize,
        kernel: usize,
        stride: usize,
        conv: VarBuilder<'_>,
        bn: VarBuilder<'_>,
    ) -> Result<Self> {
        let cfg = Conv2dConfig {
            stride,
            padding: kernel / 2,
            bias: false,
            ..Default::default()
        };
        Ok(Self {
            conv: Conv2d::new(in_c, out_c, kernel, cfg, conv)?,
            bn: BatchNorm2d::new(out_c, BatchNorm2dConfig::default(), bn)?,
            folded: None,
        })
    }

    /// Folds the BatchNorm into the convolution once, as evaluation does on every call, and
    /// keeps the result: this layer then only evaluates.
    pub fn prepare_inference(&mut self) -> Result<()> {
        self.folded = Some(self.conv.fold_batchnorm(&self.bn)?.for_inference()?);
        Ok(())
    }

    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.forward_act(x, train, false)
    }

    /// Convolution, BatchNorm and (with `relu`) ReLU. In evaluation the BatchNorm is folded
    /// into the convolution and the ReLU fused into its epilogue: one pass over the output.
    pub fn forward_act(&self, x: &Tensor, train: bool, relu: bool) -> Result<Tensor> {
        if let Some(folded) = &self.folded {
            if train {
                return Err(Error::InferenceOnly { what: "network" });
            }
            return Ok(if relu {
                folded.forward_relu(x)?
            } else {
                folded.forward(x)?
            });
        }
        if !train {
            let folded = self.conv.fold_batchnorm(&self.bn)?;
            return Ok(if relu {
                folded.forward_relu(x)?
            } else {
                folded.forward(x)?
            });
        }
        let y = self.bn.forward_t(&self.conv.forward(x)?, train)?;
        Ok(if relu { relu_op(&y)? } else { y })
    }

    pub fn freeze(&mut self) {
        self.conv.freeze();
        self.bn.freeze();
    }

    /// Appends the evaluation-mode layer to `g`: `Conv`, `BatchNormalization` (named
    /// `{conv}` and `{bn}`, the variables' prefixes) and with `relu` a `Relu`.
    pub fn onnx(&self, g: &mut Graph, x: &str, conv: &str, bn: &str, relu: bool) -> Result<String> {
        let y = self.conv.onnx(g, x, conv)?;
        let y = self.bn.onnx(g, &y, bn)?;
        Ok(if relu {
            g.relu(&y, &format!("{bn}.relu"))
        } else {
            y
        })
    }

    pub fn freeze_bn(&mut self) {
        self.bn.freeze();
    }

    pub fn flops(&self, hw: (usize, usize)) -> (u64, (usize, usize)) {
        self.conv.flops(hw)
    }
}

/// A residual block: the convolutions of its kind plus an optional projection shortcut.
#[derive(Debug, Clone)]
struct Block {
    convs: Vec<ConvBn>,
    downsample: Option<ConvBn>,
}

impl Block {
    fn new(
        kind: BlockKind,
        in_c: usize,
        width: usize,
        stride: usize,
        vb: VarBuilder<'_>,
    ) -> Result<Self> {
        let out_c = width * kind.expansion();
        // (in, out, kernel, stride) of conv1, conv2[, conv3]; torchvision/timm stride the 3x3.
        let specs = match kind {
            BlockKind::Basic => vec![(in_c, width, 3, stride), (width, width, 3, 1)],
            BlockKind::Bottleneck => vec![
                (in_c, width, 1, 1),
                (width, width, 3, stride),
                (width, out_c, 1, 1),
            ],
        };
        let convs = specs
            .into_iter()
            .enumerate()
            .map(|(i, (ci, co, k, s))| {
                ConvBn::new(
                    ci,
                    co,
                    k,
                    s,
                    vb.pp(format!("conv{}", i + 1)),
                    vb.pp(format!("bn{}", i + 1)),
                )
            })
            .collect::<Result<_>>()?;
        let downsample = if stride != 1 || in_c != out_c {
            Some(ConvBn::new(
                in_c,
                out_c,
                1,
                stride,
                vb.pp("downsample.0"),
                vb.pp("downsample.1"),
            )?)
        } else {
            None
        };
        Ok(Self { convs, downsample })
    }

    fn onnx(&self, g: &mut Graph, x: &str, prefix: &str) -> Result<String> {
        let mut y = x.to_string();
        let last = self.convs.len() - 1;
        for (i, conv) in self.convs.iter().enumerate() {
            let n = i + 1;
            y = conv.onnx(
                g,
                &y,
                &format!("{prefix}.conv{n}"),
                &format!("{prefix}.bn{n}"),
                i < last,
            )?;
        }
        let shortcut = match &self.downsample {
            Some(d) => d.onnx(
                g,
                x,
                &format!("{prefix}.downsample.0"),
                &format!("{prefix}.downsample.1"),
                false,
            )?,
            None => x.to_string(),
        };
        let sum = g.add(&y, &shortcut, &format!("{prefix}.add"));
        Ok(g.relu(&sum, &format!("{prefix}.relu")))
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let mut y = x.clone();
        let last = self.convs.len() - 1;
        for (i, conv) in self.convs.iter().enumerate() {
            y = conv.forward_act(&y, train, i < last)?;
        }
        let shortcut = match &self.downsample {
            Some(d) => d.forward_t(x, train)?,
            None => x.clone(),
        };
        Ok(relu_op(&(y + shortcut)?)?)
    }

    fn all_mut(&mut self) -> impl Iterator<Item = &mut ConvBn> {
        self.convs.iter_mut().chain(self.downsample.iter_mut())
    }

    fn flops(&self, hw: (usize, usize)) -> (u64, (usize, usize)) {
        let (mut total, mut out) = (0, hw);
        for conv in &self.convs {
            let (f, o) = conv.flops(out);
            total += f;
            out = o;
        }
        if let Some(d) = &self.downsample {
            total += d.flops(hw).0;
        }
        (total, out)
    }
}

/// A ResNet in the torchvision/timm layout: stem (7x7/s2 conv, BN, ReLU, 3x3/s2 max-pool) and
/// four stages of residual blocks. Variable names mirror the checkpoints (`conv1.weight`,
/// `bn1.running_var`, `layer1.0.downsample.0.weight`, `fc.bias`…).
#[derive(Debug, Clone)]
pub struct ResNet {
    stem: ConvBn,
    stages: [Vec<Block>; 4],
    fc: Option<Linear>,
    config: ResNetConfig,
}

impl ResNet {
    /// Builds (or loads) the network under `vb`.
    pub fn new(config: &ResNetConfig, vb: VarBuilder<'_>) -> Result<Self> {
        if config.layers.contains(&0) || config.widths.contains(&0) || config.stem_width == 0 {
            return Err(Error::InvalidConfig {
                what: "resnet",
                reason: format!(
                    "layers {:?}, widths {:?} and stem width {} must all be at least 1",
                    config.layers, config.widths, config.stem_width
                ),
            });
        }
        if config.freeze_stages > 5 {
            return Err(Error::InvalidConfig {
                what: "resnet freeze_stages",
                reason: format!(
                    "{} is more than the 5 stages (stem + 4)",
                    config.freeze_stages
                ),
            });
        }
        let mut stem = ConvBn::new(
            config.in_channels,
            config.stem_width,
            7,
            2,
            vb.pp("conv1"),
            vb.pp("bn1"),
        )?;
        let mut in_c = config.stem_width;
        let mut stages: [Vec<Block>; 4] = Default::default();
        for (s, stage) in stages.iter_mut().enumerate() {
            for b in 0..config.layers[s] {
                let stride = if s > 0 && b == 0 { 2 } else { 1 };
                let block = Block::new(
                    config.block,
                    in_c,
                    config.widths[s],
                    stride,
                    vb.pp(format!("layer{}.{b}", s + 1)),
                )?;
                in_c = config.widths[s] * config.block.expansion();
                stage.push(block);
            }
        }
        let fc = match config.num_classes {
            Some(n) => Some(Linear::new(in_c, n, vb.pp("fc"))?),
            None => None,
        };
        if config.frozen_bn {
            stem.freeze_bn();
            stages
                .iter_mut()
                .flatten()
                .flat_map(Block::all_mut)
                .for_each(ConvBn::freeze_bn);
        }
        if config.freeze_stages >= 1 {
            stem.freeze();
        }
        for stage in stages
            .iter_mut()
            .take(config.freeze_stages.saturating_sub(1))
        {
            stage
                .iter_mut()
                .flat_map(Block::all_mut)
                .for_each(ConvBn::freeze);
        }
        Ok(Self {
            stem,
            stages,
            fc,
            config: config.clone(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &ResNetConfig {
        &self.config
    }

    /// A copy for inference: every BatchNorm folded into its convolution once (evaluation
    /// otherwise folds on every call), the weights copied as they are now, and each
    /// convolution's transformed weight kept after its first use ([`Conv2d::for_inference`]).
    /// `forward_t(x, false)` gives the same maps as this network's, bit for bit;
    /// `forward_t(x, true)` is an error. Make a new copy after the weights change.
    pub fn for_inference(&self) -> Result<Self> {
        let mut copy = self.clone();
        copy.fc = self.fc.as_ref().map(Linear::for_inference).transpose()?;
        copy.stem.prepare_inference()?;
        for conv in copy.stages.iter_mut().flatten().flat_map(Block::all_mut) {
            conv.prepare_inference()?;
        }
        Ok(copy)
    }

    /// Runs the network; `train` selects batch statistics in BatchNorm.
    ///
    /// # Shapes
    /// `(N, in_channels, H, W)` with H, W multiples of 32 → [`FeatureMaps`].
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<FeatureMaps> {
        let (_, c, h, w) = x
            .dims4()
            .map_err(|_| mustard_core::Error::UnexpectedShape {
                op: "resnet",
                name: "input",
                shape: x.shape().clone(),
                expected: "(N, C, H, W)".into(),
            })?;
        if c != self.config.in_channels || h % 32 != 0 || w % 32 != 0 || h == 0 || w == 0 {
            return Err(mustard_core::Error::UnexpectedShape {
                op: "resnet",
                name: "input",
                shape: x.shape().clone(),
                expected: format!(
                    "{} channels and H, W non-zero multiples of 32",
                    self.config.in_channels
                ),
            }
            .into());
        }
        let x = self.stem.forward_act(x, train, true)?;
        let mut x = max_pool2d(&x, MaxPool2dConfig::resnet_stem())?;
        let mut maps = Vec::with_capacity(4);
        for stage in &self.stages {
            for block in stage {
                x = block.forward_t(&x, train)?;
            }
            maps.push(x.clone());
        }
        let [c2, c3, c4, c5]: [Tensor; 4] = maps.try_into().expect("four stages");
        Ok(FeatureMaps { c2, c3, c4, c5 })
    }

    /// Appends the evaluation-mode network to `g`, reading `x`, with every variable under
    /// `prefix` as in the checkpoint; returns the names of C2, C3, C4 and C5.
    pub fn onnx(&self, g: &mut Graph, x: &str, prefix: &str) -> Result<[String; 4]> {
        let stem = self.stem.onnx(
            g,
            x,
            &format!("{prefix}.conv1"),
            &format!("{prefix}.bn1"),
            true,
        )?;
        let mp = MaxPool2dConfig::resnet_stem();
        let mut x = g.max_pool(
            &stem,
            mp.kernel,
            mp.stride,
            mp.padding,
            &format!("{prefix}.maxpool"),
        );
        let mut maps = Vec::with_capacity(4);
        for (s, stage) in self.stages.iter().enumerate() {
            for (b, block) in stage.iter().enumerate() {
                x = block.onnx(g, &x, &format!("{prefix}.layer{}.{b}", s + 1))?;
            }
            maps.push(x.clone());
        }
        Ok(maps.try_into().expect("four stages"))
    }

    /// Class logits from C5 (global average pool → `fc`), when a classifier was built.
    ///
    /// # Shapes
    /// `c5` `(N, C₅, h, w)` → `(N, num_classes)`.
    pub fn classify(&self, c5: &Tensor) -> Result<Option<Tensor>> {
        match &self.fc {
            Some(fc) => Ok(Some(fc.forward(&c5.mean((2, 3))?)?)),
            None => Ok(None),
        }
    }

    /// Convolution FLOPs (2 × multiply-accumulates) of one forward pass at `h` x `w`, including
    /// the classifier when present.
    pub fn flops(&self, h: usize, w: usize) -> u64 {
        let (mut total, hw) = self.stem.flops((h, w));
        let mut hw = ((hw.0 + 2 - 3) / 2 + 1, (hw.1 + 2 - 3) / 2 + 1);
        for block in self.stages.iter().flatten() {
            let (f, o) = block.flops(hw);
            total += f;
            hw = o;
        }
        if let Some(n) = self.config.num_classes {
            total += 2 * (n * self.config.out_channels()[3]) as u64;
        }
        total
    }
}

#[cfg(test)]
mod tests {
    use mustard_core::candle_core::{DType, Device, Var};
    use mustard_core::candle_nn::VarMap;

    use super::*;
    use crate::parameter_count;

    fn build(config: &ResNetConfig) -> (VarMap, ResNet) {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let net = ResNet::new(config, vb).unwrap();
        (varmap, net)
    }

    #[test]
    fn presets_have_torchvisions_parameter_counts_and_flops() {
        // torchvision: resnet18 11,689,512, resnet34 21,797,672, resnet50 25,557,032 parameters
        // with the 1000-class classifier; about 1.82 / 3.67 / 4.11 G multiply-adds at 224².
        for (config, params, macs) in [
            (ResNetConfig::r18(), 11_689_512, 1.82e9),
            (ResNetConfig::r34(), 21_797_672, 3.67e9),
            (ResNetConfig::r50(), 25_557_032, 4.11e9),
        ] {
            let config = ResNetConfig {
                num_classes: Some(1000),
                ..config
            };
            let (varmap, net) = build(&config);
            assert_eq!(parameter_count(&varmap), params, "{:?}", config.layers);
            let got = net.flops(224, 224) as f64 / 2.0;
            assert!(
                (got / macs - 1.0).abs() < 0.01,
                "{:?}: {got} MACs",
                config.layers
            );
        }
        let (_, net) = build(&ResNetConfig::r18());
        // Exact count: stem 118,013,952 MACs + layers 1,695,547,392 at 224².
        assert_eq!(net.flops(224, 224), 2 * 1_813_561_344);
    }

    #[test]
    fn feature_maps_have_the_strides_and_channels_of_the_preset() {
        let (_, net) = build(&ResNetConfig::tiny());
        let x = Tensor::zeros((2, 3, 64, 96), DType::F32, &Device::Cpu).unwrap();
        let maps = net.forward_t(&x, true).unwrap();
        let dims: Vec<Vec<usize>> = maps.levels().iter().map(|t| t.dims().to_vec()).collect();
        assert_eq!(
            dims,
            [
                vec![2, 16, 16, 24],
                vec![2, 32, 8, 12],
                vec![2, 64, 4, 6],
                vec![2, 128, 2, 3]
            ]
        );
        let r50 = ResNetConfig::r50();
        assert_eq!(r50.out_channels(), [256, 512, 1024, 2048]);
    }

    #[test]
    fn inputs_that_are_not_multiples_of_32_are_refused() {
        let (_, net) = build(&ResNetConfig::tiny());
        let x = Tensor::zeros((1, 3, 60, 64), DType::F32, &Device::Cpu).unwrap();
        assert_eq!(
            net.forward_t(&x, false).unwrap_err().to_string(),
            "resnet: input has shape [1, 3, 60, 64], expected 3 channels and H, W non-zero multiples of 32"
        );
        let bad = ResNetConfig {
            freeze_stages: 6,
            ..ResNetConfig::tiny()
        };
        let err = ResNet::new(&bad, VarBuilder::zeros(DType::F32, &Device::Cpu)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "resnet freeze_stages: 6 is more than the 5 stages (stem + 4)"
        );
    }

    #[test]
    fn frozen_stages_get_no_gradient_and_keep_their_statistics() {
        let config = ResNetConfig {
            freeze_stages: 2,
            ..ResNetConfig::tiny()
        };
        let (varmap, net) = build(&config);
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, 3, 32, 32), &Device::Cpu).unwrap())
            .unwrap();
        let maps = net.forward_t(x.as_tensor(), true).unwrap();
        let grads = maps.c5.sum_all().unwrap().backward().unwrap();
        let data = varmap.data().lock().unwrap();
        for frozen in [
            "conv1.weight",
            "bn1.weight",
            "layer1.0.conv2.weight",
            "layer1.0.bn2.bias",
        ] {
            assert!(
                grads.get(data[frozen].as_tensor()).is_none(),
                "{frozen} must be frozen"
            );
        }
        for trained in [
            "layer2.0.conv1.weight",
            "layer2.0.downsample.1.weight",
            "layer4.0.bn2.bias",
        ] {
            assert!(
                grads.get(data[trained].as_tensor()).is_some(),
                "{trained} must train"
            );
        }
        let stem_mean = data["bn1.running_mean"]
            .as_tensor()
            .to_vec1::<f32>()
            .unwrap();
        assert!(
            stem_mean.iter().all(|&v| v == 0.0),
            "frozen BatchNorm keeps its statistics"
        );
        let l2_mean = data["layer2.0.bn1.running_mean"]
            .as_tensor()
            .to_vec1::<f32>()
            .unwrap();
        assert!(
            l2_mean.iter().any(|&v| v != 0.0),
            "training BatchNorm updates its statistics"
        );
    }
}
