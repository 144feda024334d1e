//! The multi-task network: a ResNet backbone, a neck, and any subset of task heads.

use mustard_backbone::{DeconvConfig, DeconvNeck, Fpn, FpnConfig, ResNet, ResNetConfig};
use mustard_core::candle_core::{Tensor, D};
use mustard_core::candle_nn::VarBuilder;
use mustard_data::Task;
use mustard_heads::classification::{ClassificationConfig, ClassificationHead};
use mustard_heads::depth::{DepthConfig, DepthHead};
use mustard_heads::detection::{DetectionConfig, DetectionHead, DetectionOutput};
use mustard_heads::pose::{PoseConfig, PoseHead, PoseOutput};
use mustard_heads::segmentation::{SegmentationConfig, SegmentationHead};

use crate::config::{ModelConfig, NeckConfig};
use crate::targets::Batch;
use crate::{Error, Result};

enum Neck {
    Fpn(Fpn),
    Deconv(DeconvNeck),
}

/// The raw outputs of every head.
#[derive(Debug, Clone, Default)]
pub struct Outputs {
    /// Detection maps.
    pub detection: Option<DetectionOutput>,
    /// Pose maps.
    pub pose: Option<PoseOutput>,
    /// Segmentation logits at input size.
    pub segmentation: Option<Tensor>,
    /// Log-depth at input size.
    pub depth: Option<Tensor>,
    /// Class logits.
    pub classification: Option<Tensor>,
}

/// The losses of one batch: the weighted total and each task's loss.
#[derive(Debug, Clone)]
pub struct Losses {
    /// Σ weight · task loss.
    pub total: Tensor,
    /// Each task's (unweighted) loss.
    pub per_task: Vec<(Task, Tensor)>,
}

/// Backbone + neck + heads.
pub struct MultiTaskModel {
    backbone: ResNet,
    neck: Neck,
    detection: Option<DetectionHead>,
    pose: Option<PoseHead>,
    segmentation: Option<SegmentationHead>,
    depth: Option<DepthHead>,
    classification: Option<ClassificationHead>,
    config: ModelConfig,
}

impl MultiTaskModel {
    /// Builds the model under `vb` (`backbone.*`, `neck.*`, `heads.<task>.*`). The config's
    /// `classes` must be filled (see [`crate::config::Classes`]).
    pub fn new(config: &ModelConfig, vb: VarBuilder<'_>) -> Result<Self> {
        let backbone_cfg = ResNetConfig::preset(config.backbone);
        let c = backbone_cfg.out_channels();
        let backbone = ResNet::new(&backbone_cfg, vb.pp("backbone"))?;
        let (neck, dense) = match &config.neck {
            NeckConfig::Fpn { channels, fuse } => (
                Neck::Fpn(Fpn::new(
                    &FpnConfig {
                        in_channels: c,
                        out_channels: *channels,
                        fuse: *fuse,
                    },
                    vb.pp("neck"),
                )?),
                *channels,
            ),
            NeckConfig::Deconv { widths } => {
                let neck = DeconvNeck::new(
                    &DeconvConfig {
                        in_channels: c[3],
                        widths: widths.clone(),
                    },
                    vb.pp("neck"),
                )?;
                if widths.len() != 3 {
                    return Err(Error::config(
                        "model.neck.widths",
                        format!("{widths:?}: three stages are needed to reach stride 4"),
                    ));
                }
                (Neck::Deconv(neck), *widths.last().unwrap_or(&0))
            }
        };
        let classes = &config.classes;
        let has = |t: Task| config.tasks.contains(&t);
        let hc = config.head_conv;
        let heads = vb.pp("heads");
        let detection = if has(Task::Detection) {
            if classes.categories.is_empty() {
                return Err(Error::config(
                    "model.tasks",
                    "detection needs at least one category",
                ));
            }
            let cfg = DetectionConfig {
                head_conv: hc,
                ..DetectionConfig::new(classes.categories.len())
            };
            Some(DetectionHead::new(dense, &cfg, heads.pp("detection"))?)
        } else {
            None
        };
        let pose = if has(Task::Pose) {
            if classes.person.is_none() || classes.joints == 0 {
                return Err(Error::config(
                    "model.tasks",
                    "pose needs a category with keypoints in the training data",
                ));
            }
            Some(PoseHead::new(
                dense,
                &PoseConfig {
                    head_conv: hc,
                    ..PoseConfig::new(classes.joints)
                },
                heads.pp("pose"),
            )?)
        } else {
            None
        };
        let segmentation = if has(Task::Segmentation) {
            let cfg = SegmentationConfig {
                num_classes: classes.categories.len() + 1,
                head_conv: hc,
            };
            Some(SegmentationHead::new(
                dense,
                &cfg,
                heads.pp("segmentation"),
            )?)
        } else {
            None
        };
        let depth = if has(Task::Depth) {
            Some(DepthHead::new(
                dense,
                &DepthConfig {
                    head_conv: hc,
                    relative: config.relative_depth,
                },
                heads.pp("depth"),
            )?)
        } else {
            None
        };
        let classification = if has(Task::Classification) {
            if classes.labels.is_empty() {
                return Err(Error::config(
                    "model.tasks",
                    "classification needs image labels (`label_names`) in the training data",
                ));
            }
            let cfg = ClassificationConfig {
                num_classes: classes.labels.len(),
            };
            Some(ClassificationHead::new(
                c[3],
                &cfg,
                heads.pp("classification"),
            )?)
        } else {
            None
        };
        Ok(Self {
            backbone,
            neck,
            detection,
            pose,
            segmentation,
            depth,
            classification,
            config: config.clone(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// Runs every head; `train` selects BatchNorm batch statistics.
    ///
    /// # Shapes
    /// `(B, 3, H, W)` normalised images, H and W multiples of 32.
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Outputs> {
        let maps = self.backbone.forward_t(x, train)?;
        let dense = match &self.neck {
            Neck::Fpn(f) => f.forward_t(&maps, train)?.dense().clone(),
            Neck::Deconv(d) => d.forward_t(&maps.c5, train)?,
        };
        Ok(Outputs {
            detection: self
                .detection
                .as_ref()
                .map(|h| h.forward(&dense))
                .transpose()?,
            pose: self.pose.as_ref().map(|h| h.forward(&dense)).transpose()?,
            segmentation: self
                .segmentation
                .as_ref()
                .map(|h| h.forward(&dense))
                .transpose()?,
            depth: self.depth.as_ref().map(|h| h.forward(&dense)).transpose()?,
            classification: self
                .classification
                .as_ref()
                .map(|h| h.forward(&maps.c5))
                .transpose()?,
        })
    }

    /// Each task's loss on the images that carry its labels, and their weighted sum.
    pub fn loss(&self, out: &Outputs, batch: &Batch) -> Result<Losses> {
        let mut per_task = Vec::new();
        let missing = |t: Task| {
            Error::config(
                "loss",
                format!("the batch has no {t} targets for the {t} head"),
            )
        };
        if let (Some(h), Some(o)) = (&self.detection, &out.detection) {
            per_task.push((
                Task::Detection,
                h.loss(
                    o,
                    batch
                        .detection
                        .as_ref()
                        .ok_or_else(|| missing(Task::Detection))?,
                )?
                .total,
            ));
        }
        if let (Some(h), Some(o)) = (&self.pose, &out.pose) {
            per_task.push((
                Task::Pose,
                h.loss(o, batch.pose.as_ref().ok_or_else(|| missing(Task::Pose))?)?
                    .total,
            ));
        }
        if let (Some(h), Some(o)) = (&self.segmentation, &out.segmentation) {
            per_task.push((
                Task::Segmentation,
                h.loss(
                    o,
                    batch
                        .segmentation
                        .as_ref()
                        .ok_or_else(|| missing(Task::Segmentation))?,
                )?,
            ));
        }
        if let (Some(h), Some(o)) = (&self.depth, &out.depth) {
            per_task.push((
                Task::Depth,
                h.loss(o, batch.depth.as_ref().ok_or_else(|| missing(Task::Depth))?)?,
            ));
        }
        if let (Some(h), Some(o)) = (&self.classification, &out.classification) {
            per_task.push((
                Task::Classification,
                h.loss(
                    o,
                    batch
                        .classification
                        .as_ref()
                        .ok_or_else(|| missing(Task::Classification))?,
                )?,
            ));
        }
        let mut total: Option<Tensor> = None;
        for (task, loss) in &per_task {
            let weighted = (loss * self.config.loss_weights.of(*task))?;
            total = Some(match total {
                None => weighted,
                Some(t) => (t + weighted)?,
            });
        }
        let total = total.ok_or_else(|| Error::config("model.tasks", "no head produced a loss"))?;
        Ok(Losses { total, per_task })
    }

    /// The detection head.
    pub fn detection(&self) -> Option<&DetectionHead> {
        self.detection.as_ref()
    }

    /// The pose head.
    pub fn pose(&self) -> Option<&PoseHead> {
        self.pose.as_ref()
    }

    /// The segmentation head.
    pub fn segmentation(&self) -> Option<&SegmentationHead> {
        self.segmentation.as_ref()
    }

    /// The depth head.
    pub fn depth(&self) -> Option<&DepthHead> {
        self.depth.as_ref()
    }

    /// The classification head.
    pub fn classification(&self) -> Option<&ClassificationHead> {
        self.classification.as_ref()
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
            + self.detection.as_ref().map_or(0, |x| x.flops(h, w))
            + self.pose.as_ref().map_or(0, |x| x.flops(h, w))
            + self.segmentation.as_ref().map_or(0, |x| x.flops(h, w))
            + self.depth.as_ref().map_or(0, |x| x.flops(h, w))
    }
}

/// The arg-max class of every row of `(N, C)` logits.
pub fn argmax_rows(logits: &Tensor) -> Result<Vec<u32>> {
    Ok(logits.argmax(D::Minus1)?.to_vec1::<u32>()?)
}
