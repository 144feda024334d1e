//! The multi-task network: a ResNet backbone, a neck, and any subset of task heads.

use mustard_backbone::{DeconvConfig, DeconvNeck, Fpn, FpnConfig, ResNet, ResNetConfig};
use mustard_core::candle_core::{DType, Device, Tensor, D};
use mustard_core::candle_nn::{VarBuilder, VarMap};
use mustard_core::nn::Conv2d;
use mustard_data::{Task, TaskMap};
use mustard_heads::classification::ClassificationHead;
use mustard_heads::depth::DepthHead;
use mustard_heads::detection::DetectionHead;
use mustard_heads::pose::PoseHead;
use mustard_heads::segmentation::SegmentationHead;
use mustard_heads::{HeadBlock, SharedHidden};

use crate::config::{loss_weight, ModelConfig, NeckConfig};
use crate::targets::{Batch, Encoder};
use crate::tasks::{Head, HeadSpec, Heads, Outputs, SourceMap, BACKBONE, HEADS, NECK};
use crate::{Error, Result};

pub use crate::tasks::Output;

enum Neck {
    Fpn(Fpn),
    Deconv(DeconvNeck),
}

/// The losses of one batch: the weighted total and each task's loss.
#[derive(Debug, Clone)]
pub struct Losses {
    /// Σ weight · task loss, summed in task order.
    pub total: Tensor,
    /// Each task's (unweighted) loss.
    pub per_task: TaskMap<Tensor>,
}

/// Backbone + neck + heads.
pub struct MultiTaskModel {
    backbone: ResNet,
    neck: Neck,
    heads: Heads,
    /// In an inference copy, the heads' first convolutions on the stride-4 map joined into one
    /// ([`SharedHidden`]) and copied for inference once; otherwise joined at each forward pass.
    joined_hidden: Option<Conv2d>,
    specs: TaskMap<HeadSpec>,
    config: ModelConfig,
    device: Device,
    dtype: DType,
}

impl MultiTaskModel {
    /// The one way to make a model: its variables are created in a new [`VarMap`] on `device`,
    /// each initialised from `(seed, name)` ([`crate::init::seeded`]), so the same config and
    /// seed give the same model wherever it is built. The config's `classes` must be filled
    /// (see [`crate::config::Classes`]). Checkpoints are loaded into the returned map.
    pub fn build(config: &ModelConfig, seed: u64, device: &Device) -> Result<(VarMap, Self)> {
        Self::build_as(config, seed, device, DType::F32)
    }

    /// The model of a run's config: its model, seed, device and precision.
    pub fn for_run(config: &crate::Config) -> Result<(VarMap, Self)> {
        Self::build_as(
            &config.model,
            config.seed,
            &config.device.device()?,
            config.numerics.precision.dtype(),
        )
    }

    /// [`MultiTaskModel::build`] with weights of `dtype` (f64 to check computations without f32
    /// rounding; see [`crate::config::Precision`]).
    pub fn build_as(
        config: &ModelConfig,
        seed: u64,
        device: &Device,
        dtype: DType,
    ) -> Result<(VarMap, Self)> {
        let varmap = VarMap::new();
        // Initialised on the CPU (the values do not depend on the device, and Metal has no
        // f64 for the initialisers), then moved.
        let model = Self::new(
            config,
            crate::init::seeded(&varmap, seed, dtype, &Device::Cpu),
        )?;
        if device.is_cpu() {
            return Ok((varmap, model));
        }
        let moved = VarMap::new();
        {
            let mut data = moved.data().lock().expect("VarMap lock poisoned");
            for (name, var) in varmap.data().lock().expect("VarMap lock poisoned").iter() {
                let t = var.as_tensor().to_device(device)?;
                data.insert(
                    name.clone(),
                    mustard_core::candle_core::Var::from_tensor(&t)?,
                );
            }
        }
        let model = Self::new(config, VarBuilder::from_varmap(&moved, dtype, device))?;
        Ok((moved, model))
    }

    /// The device of the model's variables (batches are moved there, [`crate::targets::Batch::to_device`]).
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Builds the model under `vb` (`backbone.*`, `neck.*`, `heads.<task>.*`).
    pub fn new(config: &ModelConfig, vb: VarBuilder<'_>) -> Result<Self> {
        let backbone_cfg = ResNetConfig::preset(config.backbone);
        let c = backbone_cfg.out_channels();
        let backbone = ResNet::new(&backbone_cfg, vb.pp(BACKBONE))?;
        let (neck, dense) = match &config.neck {
            NeckConfig::Fpn { channels, fuse } => {
                let fpn = FpnConfig {
                    in_channels: c,
                    out_channels: *channels,
                    fuse: *fuse,
                };
                (Neck::Fpn(Fpn::new(&fpn, vb.pp(NECK))?), *channels)
            }
            NeckConfig::Deconv { widths } => {
                if widths.len() != 3 {
                    return Err(Error::config(
                        "model.neck.widths",
                        format!("{widths:?}: three stages are needed to reach stride 4"),
                    ));
                }
                let deconv = DeconvConfig {
                    in_channels: c[3],
                    widths: widths.clone(),
                };
                (
                    Neck::Deconv(DeconvNeck::new(&deconv, vb.pp(NECK))?),
                    widths[2],
                )
            }
        };
        let specs = HeadSpec::all(config)?;
        let heads = vb.pp(HEADS);
        let heads =
            specs.try_map(|task, spec| Head::new(spec, dense, c[3], heads.pp(task.name())))?;
        Ok(Self {
            backbone,
            neck,
            heads: Heads(heads),
            joined_hidden: None,
            specs,
            config: config.clone(),
            device: vb.device().clone(),
            dtype: vb.dtype(),
        })
    }

    /// The float type of the weights (inputs are converted to it).
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The configuration.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The configuration of every head, as the target encoder needs it.
    pub fn head_specs(&self) -> &TaskMap<HeadSpec> {
        &self.specs
    }

    /// The target encoder of this model's heads at `size` x `size` inputs.
    pub fn encoder(&self, size: u32) -> Encoder {
        Encoder::new(self.specs.clone(), size)
    }

    /// The target encoder for samples of `source`, whose classes are matched to this model's
    /// by name.
    pub fn encoder_for(&self, source: &dyn mustard_data::Source, size: u32) -> Encoder {
        self.encoder(size)
            .with_map(SourceMap::new(&self.config.classes, source))
    }

    /// Appends the evaluation-mode network to `g`, reading the normalised image batch `x`
    /// (variables named as in the checkpoint); returns every head's raw outputs as
    /// `(task.name, value)` in task order.
    pub fn onnx(
        &self,
        g: &mut mustard_core::onnx::Graph,
        x: &str,
    ) -> Result<Vec<(String, String)>> {
        let c = self.backbone.onnx(g, x, BACKBONE)?;
        let dense = match &self.neck {
            Neck::Fpn(f) => f.onnx(g, &c, NECK)?,
            Neck::Deconv(d) => d.onnx(g, &c[3], NECK)?,
        };
        let mut outputs = Vec::new();
        for (task, head) in self.heads.0.iter() {
            let prefix = format!("{HEADS}.{}", task.name());
            for (name, value) in head.onnx(g, &dense, &c[3], &prefix)? {
                outputs.push((format!("{}.{name}", task.name()), value));
            }
        }
        Ok(outputs)
    }

    /// A copy of the model for inference (evaluation, prediction, pseudo-labelling): every
    /// BatchNorm of the backbone folded into its convolution once instead of on every call,
    /// the convolutions' weights copied as they are now, and each convolution's transformed
    /// weight (Winograd's) kept after its first use instead of recomputed per call.
    /// `forward_t(x, false)` gives the same outputs as this model's, bit for bit, in less time;
    /// `forward_t(x, true)` is an error. The copy does not follow later changes of the
    /// variables (an optimizer step, a loaded checkpoint): make a new one then. The kept
    /// transforms hold 4x the weights of the layers that use them (about 50 MB for the
    /// ResNet-18 MCN network at 512 px).
    pub fn for_inference(&self) -> Result<Self> {
        let mut copy = Self {
            backbone: self.backbone.for_inference()?,
            neck: match &self.neck {
                Neck::Fpn(f) => Neck::Fpn(f.for_inference()?),
                Neck::Deconv(d) => Neck::Deconv(d.for_inference()?),
            },
            heads: Heads(self.heads.0.try_map(|_, h| h.for_inference())?),
            joined_hidden: None,
            specs: self.specs.clone(),
            config: self.config.clone(),
            device: self.device.clone(),
            dtype: self.dtype,
        };
        let convs: Vec<&Conv2d> = copy
            .dense_blocks()
            .iter()
            .map(|b| b.hidden_conv())
            .collect();
        copy.joined_hidden = Conv2d::concat_out(&convs)?
            .map(|joined| joined.for_inference())
            .transpose()?;
        Ok(copy)
    }

    /// Every head's outputs for decoding and scoring: evaluation mode, in f32 whatever the
    /// model computes in (the decoders and metrics read f32). Evaluation, prediction,
    /// pseudo-labelling and `mustard bench` run the model through it.
    pub fn infer(&self, x: &Tensor) -> Result<Outputs> {
        self.forward_t(x, false)?.to_dtype(DType::F32)
    }

    /// Runs every head; `train` selects BatchNorm batch statistics.
    ///
    /// # Shapes
    /// `(B, 3, H, W)` normalised images, H and W multiples of 32, of any float type (taken in
    /// the model's: f32 images into an f64 model, say).
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Outputs> {
        let x = &x.to_dtype(self.dtype)?;
        let maps = self.backbone.forward_t(x, train)?;
        let dense = match &self.neck {
            Neck::Fpn(f) => f.forward_t(&maps, train)?.dense().clone(),
            Neck::Deconv(d) => d.forward_t(&maps.c5, train)?,
        };
        let blocks = self.dense_blocks();
        let shared = match &self.joined_hidden {
            Some(joined) => SharedHidden::with_conv(&blocks, joined, &dense)?,
            None => SharedHidden::new(&blocks, &dense)?,
        };
        let outputs = self
            .heads
            .0
            .try_map(|_, h| h.forward(&dense, &maps.c5, &shared))?;
        Ok(Outputs(outputs))
    }

    /// Every head's blocks on the neck's stride-4 map, in the order of the tasks.
    fn dense_blocks(&self) -> Vec<&HeadBlock> {
        self.heads
            .0
            .iter()
            .flat_map(|(_, h)| h.dense_blocks())
            .collect()
    }

    /// Each task's loss on the images that carry its labels, and their weighted sum.
    pub fn loss(&self, out: &Outputs, batch: &Batch) -> Result<Losses> {
        let mut per_task = TaskMap::new();
        for (task, head) in self.heads.0.iter() {
            let Some(o) = out.0.get(task) else { continue };
            let targets = batch.targets.0.get(task).ok_or_else(|| {
                Error::config(
                    "loss",
                    format!("the batch has no {task} targets for the {task} head"),
                )
            })?;
            per_task.insert(task, head.loss(o, targets)?);
        }
        let mut total: Option<Tensor> = None;
        for (task, loss) in per_task.iter() {
            let weighted = (loss * loss_weight(&self.config.loss_weights, task))?;
            total = Some(match total {
                None => weighted,
                Some(t) => (t + weighted)?,
            });
        }
        let total = total.ok_or_else(|| Error::config("model.tasks", "no head produced a loss"))?;
        Ok(Losses { total, per_task })
    }

    /// The tasks with a head.
    pub fn tasks(&self) -> impl Iterator<Item = Task> + '_ {
        self.heads.0.iter().map(|(t, _)| t)
    }

    /// The detection head.
    pub fn detection(&self) -> Option<&DetectionHead> {
        self.heads.detection()
    }

    /// The pose head.
    pub fn pose(&self) -> Option<&PoseHead> {
        self.heads.pose()
    }

    /// The segmentation head.
    pub fn segmentation(&self) -> Option<&SegmentationHead> {
        self.heads.segmentation()
    }

    /// The depth head.
    pub fn depth(&self) -> Option<&DepthHead> {
        self.heads.depth()
    }

    /// The classification head.
    pub fn classification(&self) -> Option<&ClassificationHead> {
        self.heads.classification()
    }

    /// Convolution FLOPs of one forward pass at `size` x `size`.
    pub fn flops(&self, size: usize) -> u64 {
        let (h, w) = (size / 4, size / 4);
        let neck = match &self.neck {
            Neck::Fpn(f) => f.flops(size, size),
            Neck::Deconv(d) => d.flops(size, size),
        };
        self.backbone.flops(size, size)
            + neck
            + self.heads.0.values().map(|x| x.flops(h, w)).sum::<u64>()
    }
}

/// The arg-max class of every row of `(N, C)` logits.
pub fn argmax_rows(logits: &Tensor) -> Result<Vec<u32>> {
    Ok(logits.argmax(D::Minus1)?.to_vec1::<u32>()?)
}
