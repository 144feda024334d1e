//! The task table: for every task, one arm that says how its head is configured, built, run,
//! trained and fed. A head's configuration ([`HeadSpec`]) is derived once from the model
//! config; the model builds its head from it and the target encoder encodes with the very
//! same value, so targets and head cannot disagree (on `max_objects`, classes or joints).
//!
//! A new task touches the heads crate (its module), `Task`/`TaskMap` in mustard-data (one
//! variant) and one arm in each `match` of this file; `docs/ARCHITECTURE.md` lists the rest.

use mustard_core::candle_core::{Device, Tensor};
use mustard_core::candle_nn::VarBuilder;
use mustard_data::{Label, Sample, Task, TaskMap};
use mustard_heads::classification::{
    self, ClassTarget, ClassificationBatch, ClassificationConfig, ClassificationHead,
};
use mustard_heads::depth::{self, DepthBatch, DepthConfig, DepthHead};
use mustard_heads::detection::{
    self, BoxLabel, DetectionBatch, DetectionConfig, DetectionHead, DetectionOutput,
    DetectionTargets,
};
use mustard_heads::pose::{
    self, PersonLabel, PoseBatch, PoseConfig, PoseHead, PoseOutput, PoseTargets,
};
use mustard_heads::segmentation::{self, SegmentationBatch, SegmentationConfig, SegmentationHead};

use crate::config::ModelConfig;
use crate::{Error, Result};

/// Checkpoint key prefix of the backbone (`backbone.conv1.weight`, …).
pub const BACKBONE: &str = "backbone";
/// Checkpoint key prefix of the neck.
pub const NECK: &str = "neck";
/// Checkpoint key prefix of the heads: `heads.<task>.…`.
pub const HEADS: &str = "heads";

/// One head's configuration, derived once from the model config.
#[derive(Debug, Clone, PartialEq)]
pub enum HeadSpec {
    /// CenterNet boxes over the detection categories.
    Detection(DetectionConfig),
    /// CenterNet people with joints; `person` is the category index whose objects are people.
    Pose {
        /// The head.
        config: PoseConfig,
        /// The pose category.
        person: usize,
    },
    /// Per-pixel classes.
    Segmentation(SegmentationConfig),
    /// Per-pixel log-depth.
    Depth(DepthConfig),
    /// One class per image.
    Classification(ClassificationConfig),
}

impl HeadSpec {
    /// The head of `task` for `config`, refusing classes that cannot make one.
    pub fn new(task: Task, config: &ModelConfig) -> Result<Self> {
        let classes = &config.classes;
        let head_conv = config.head_conv;
        let missing = |reason: &str| Error::config("model.tasks", reason);
        Ok(match task {
            Task::Detection => {
                if classes.categories.is_empty() {
                    return Err(missing("detection needs at least one category"));
                }
                HeadSpec::Detection(DetectionConfig {
                    head_conv,
                    ..DetectionConfig::new(classes.categories.len())
                })
            }
            Task::Pose => match classes.person {
                Some(person) if classes.joints > 0 => HeadSpec::Pose {
                    config: PoseConfig {
                        head_conv,
                        ..PoseConfig::new(classes.joints)
                    },
                    person,
                },
                _ => {
                    return Err(missing(
                        "pose needs a category with keypoints in the training data",
                    ))
                }
            },
            Task::Segmentation => HeadSpec::Segmentation(SegmentationConfig {
                num_classes: classes.categories.len() + 1,
                head_conv,
            }),
            Task::Depth => HeadSpec::Depth(DepthConfig {
                head_conv,
                relative: config.relative_depth,
            }),
            Task::Classification => {
                if classes.labels.is_empty() {
                    return Err(missing(
                        "classification needs image labels (`label_names`) in the training data",
                    ));
                }
                HeadSpec::Classification(ClassificationConfig {
                    num_classes: classes.labels.len(),
                })
            }
        })
    }

    /// The heads of every task of `config`.
    pub fn all(config: &ModelConfig) -> Result<TaskMap<HeadSpec>> {
        let mut tasks = config.tasks.clone();
        tasks.sort();
        tasks.dedup();
        tasks
            .into_iter()
            .map(|t| Ok((t, HeadSpec::new(t, config)?)))
            .collect()
    }

    /// Encodes one augmented sample's labels for this head (empty or absent when the sample is
    /// not labelled for the task).
    pub fn encode(&self, s: &Sample, size: (usize, usize)) -> mustard_core::Result<ItemTargets> {
        let present = |t: Task| s.tasks.contains(t);
        Ok(match self {
            HeadSpec::Detection(cfg) => {
                let labels: Vec<BoxLabel> = if present(Task::Detection) {
                    s.objects
                        .iter()
                        .filter(|o| !o.crowd)
                        .map(|o| BoxLabel {
                            bbox: o.bbox,
                            class: o.class,
                        })
                        .collect()
                } else {
                    Vec::new()
                };
                ItemTargets::Detection(detection::encode(cfg, &labels, size)?)
            }
            HeadSpec::Pose { config, person } => {
                let persons: Vec<PersonLabel> = if present(Task::Pose) {
                    s.objects
                        .iter()
                        .filter(|o| !o.crowd && o.class == *person)
                        .filter_map(|o| {
                            o.keypoints.as_ref().map(|k| PersonLabel {
                                bbox: o.bbox,
                                keypoints: k.clone(),
                            })
                        })
                        .collect()
                } else {
                    Vec::new()
                };
                ItemTargets::Pose(pose::encode(config, &persons, size)?)
            }
            HeadSpec::Segmentation(_) => ItemTargets::Segmentation(
                s.semantic
                    .as_ref()
                    .filter(|_| present(Task::Segmentation))
                    .map(|m| m.as_raw().clone()),
            ),
            HeadSpec::Depth(_) => ItemTargets::Depth(
                s.depth
                    .as_ref()
                    .filter(|_| present(Task::Depth))
                    .map(|d| d.as_raw().clone()),
            ),
            HeadSpec::Classification(_) => ItemTargets::Classification(
                s.label
                    .as_ref()
                    .filter(|_| present(Task::Classification))
                    .map(|l| match l {
                        Label::Class(c) => ClassTarget::Hard(*c),
                        Label::Soft(p) => ClassTarget::Soft(p.clone()),
                    }),
            ),
        })
    }

    /// Stacks the targets of `items` (one per image, all of this head) into tensors on
    /// `device`; `presence[i]` says whether image `i` is labelled for the task.
    pub fn collate(
        &self,
        items: &[&ItemTargets],
        presence: &[bool],
        size: (usize, usize),
        device: &Device,
    ) -> mustard_core::Result<Targets> {
        let mismatch = || mustard_core::Error::InvalidConfig {
            what: "collate",
            reason: "targets of another head in the batch".into(),
        };
        macro_rules! each {
            ($variant:ident) => {
                items
                    .iter()
                    .map(|i| match i {
                        ItemTargets::$variant(t) => Ok(t),
                        _ => Err(mismatch()),
                    })
                    .collect::<mustard_core::Result<Vec<_>>>()?
            };
        }
        Ok(match self {
            HeadSpec::Detection(_) => {
                Targets::Detection(detection::collate(&each!(Detection), presence, device)?)
            }
            HeadSpec::Pose { .. } => Targets::Pose(pose::collate(&each!(Pose), presence, device)?),
            HeadSpec::Segmentation(_) => {
                let maps: Vec<Option<&[u8]>> = each!(Segmentation)
                    .into_iter()
                    .map(|m| m.as_deref())
                    .collect();
                Targets::Segmentation(segmentation::collate(&maps, size, device)?)
            }
            HeadSpec::Depth(_) => {
                let maps: Vec<Option<&[f32]>> =
                    each!(Depth).into_iter().map(|m| m.as_deref()).collect();
                Targets::Depth(depth::collate(&maps, size, device)?)
            }
            HeadSpec::Classification(cfg) => {
                let labels: Vec<Option<ClassTarget>> =
                    each!(Classification).into_iter().cloned().collect();
                Targets::Classification(classification::collate(&labels, cfg.num_classes, device)?)
            }
        })
    }
}

/// One head (built once per model, so the size difference between variants costs nothing).
#[allow(clippy::large_enum_variant)]
pub enum Head {
    /// See [`HeadSpec::Detection`].
    Detection(DetectionHead),
    /// See [`HeadSpec::Pose`].
    Pose(PoseHead),
    /// See [`HeadSpec::Segmentation`].
    Segmentation(SegmentationHead),
    /// See [`HeadSpec::Depth`].
    Depth(DepthHead),
    /// See [`HeadSpec::Classification`].
    Classification(ClassificationHead),
}

impl Head {
    /// Builds the head of `spec` under `vb` (the model's `heads.<task>`): dense heads on the
    /// neck's `dense` channels, classification on the backbone's last `c5` channels.
    pub fn new(spec: &HeadSpec, dense: usize, c5: usize, vb: VarBuilder<'_>) -> Result<Self> {
        Ok(match spec {
            HeadSpec::Detection(c) => Head::Detection(DetectionHead::new(dense, c, vb)?),
            HeadSpec::Pose { config, .. } => Head::Pose(PoseHead::new(dense, config, vb)?),
            HeadSpec::Segmentation(c) => Head::Segmentation(SegmentationHead::new(dense, c, vb)?),
            HeadSpec::Depth(c) => Head::Depth(DepthHead::new(dense, c, vb)?),
            HeadSpec::Classification(c) => {
                Head::Classification(ClassificationHead::new(c5, c, vb)?)
            }
        })
    }

    /// The raw output on the neck's stride-4 map `dense` (and the backbone's `c5`).
    pub fn forward(&self, dense: &Tensor, c5: &Tensor) -> Result<Output> {
        Ok(match self {
            Head::Detection(h) => Output::Detection(h.forward(dense)?),
            Head::Pose(h) => Output::Pose(h.forward(dense)?),
            Head::Segmentation(h) => Output::Segmentation(h.forward(dense)?),
            Head::Depth(h) => Output::Depth(h.forward(dense)?),
            Head::Classification(h) => Output::Classification(h.forward(c5)?),
        })
    }

    /// The task's (unweighted) loss of `out` against `targets`.
    pub fn loss(&self, out: &Output, targets: &Targets) -> Result<Tensor> {
        Ok(match (self, out, targets) {
            (Head::Detection(h), Output::Detection(o), Targets::Detection(t)) => {
                h.loss(o, t)?.total
            }
            (Head::Pose(h), Output::Pose(o), Targets::Pose(t)) => h.loss(o, t)?.total,
            (Head::Segmentation(h), Output::Segmentation(o), Targets::Segmentation(t)) => {
                h.loss(o, t)?
            }
            (Head::Depth(h), Output::Depth(o), Targets::Depth(t)) => h.loss(o, t)?,
            (Head::Classification(h), Output::Classification(o), Targets::Classification(t)) => {
                h.loss(o, t)?
            }
            _ => {
                return Err(Error::config(
                    "loss",
                    "a head was given the output or targets of another task",
                ))
            }
        })
    }

    /// Convolution FLOPs at a `(h, w)` stride-4 map (classification's pooling + linear layer
    /// count nothing).
    pub fn flops(&self, h: usize, w: usize) -> u64 {
        match self {
            Head::Detection(x) => x.flops(h, w),
            Head::Pose(x) => x.flops(h, w),
            Head::Segmentation(x) => x.flops(h, w),
            Head::Depth(x) => x.flops(h, w),
            Head::Classification(_) => 0,
        }
    }
}

/// One head's raw output.
#[derive(Debug, Clone)]
pub enum Output {
    /// Detection maps.
    Detection(DetectionOutput),
    /// Pose maps.
    Pose(PoseOutput),
    /// Segmentation logits at input size.
    Segmentation(Tensor),
    /// Log-depth at input size.
    Depth(Tensor),
    /// Class logits.
    Classification(Tensor),
}

/// One image's encoded labels for one head.
#[derive(Debug, Clone)]
pub enum ItemTargets {
    /// Heatmap, sizes, offsets.
    Detection(DetectionTargets),
    /// Person heatmap and joints.
    Pose(PoseTargets),
    /// The label map (`None`: unlabelled).
    Segmentation(Option<Vec<u8>>),
    /// The depth map in metres (`None`: unlabelled).
    Depth(Option<Vec<f32>>),
    /// The image label (`None`: unlabelled).
    Classification(Option<ClassTarget>),
}

/// One head's targets for a batch.
#[derive(Debug, Clone)]
pub enum Targets {
    /// Detection targets.
    Detection(DetectionBatch),
    /// Pose targets.
    Pose(PoseBatch),
    /// Segmentation targets.
    Segmentation(SegmentationBatch),
    /// Depth targets.
    Depth(DepthBatch),
    /// Classification targets.
    Classification(ClassificationBatch),
}

/// Typed access to one task's entry of a map of heads, outputs or targets.
macro_rules! typed_access {
    ($map:ty, $enum:ident { $($method:ident: $variant:ident => $ty:ty),* $(,)? }) => {
        impl $map {
            $(
                #[doc = concat!("The ", stringify!($method), " entry, when there is one.")]
                pub fn $method(&self) -> Option<&$ty> {
                    match self.0.get(Task::$variant) {
                        Some($enum::$variant(x)) => Some(x),
                        _ => None,
                    }
                }
            )*
        }
    };
}

/// The raw outputs of every head.
#[derive(Debug, Clone, Default)]
pub struct Outputs(pub TaskMap<Output>);

typed_access!(Outputs, Output {
    detection: Detection => DetectionOutput,
    pose: Pose => PoseOutput,
    segmentation: Segmentation => Tensor,
    depth: Depth => Tensor,
    classification: Classification => Tensor,
});

/// Every head of a model.
#[derive(Default)]
pub struct Heads(pub TaskMap<Head>);

typed_access!(Heads, Head {
    detection: Detection => DetectionHead,
    pose: Pose => PoseHead,
    segmentation: Segmentation => SegmentationHead,
    depth: Depth => DepthHead,
    classification: Classification => ClassificationHead,
});

/// The targets of every head for a batch.
#[derive(Debug, Clone, Default)]
pub struct BatchTargets(pub TaskMap<Targets>);

typed_access!(BatchTargets, Targets {
    detection: Detection => DetectionBatch,
    pose: Pose => PoseBatch,
    segmentation: Segmentation => SegmentationBatch,
    depth: Depth => DepthBatch,
    classification: Classification => ClassificationBatch,
});

/// One image's targets for every head.
#[derive(Debug, Clone, Default)]
pub struct ItemTargetMap(pub TaskMap<ItemTargets>);

typed_access!(ItemTargetMap, ItemTargets {
    detection: Detection => DetectionTargets,
    pose: Pose => PoseTargets,
});
