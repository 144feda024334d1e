//! The task table: for every task, one arm that says how its head is configured, built, run,
//! trained and fed. A head's configuration ([`HeadSpec`]) is derived once from the model
//! config; the model builds its head from it and the target encoder encodes with the very
//! same value, so targets and head cannot disagree (on `max_objects`, classes or joints).
//!
//! A new task touches the heads crate (its module), `Task`/`TaskMap` in mustard-data (one
//! variant) and one arm in each `match` of this file; `docs/ARCHITECTURE.md` lists the rest.

use mustard_core::candle_core::{DType, Device, Tensor};
use mustard_core::candle_nn::VarBuilder;
use mustard_data::{Label, Sample, Source, Task, TaskMap};
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
use mustard_heads::{HeadBlock, SharedHidden};

use crate::config::{Classes, ModelConfig};
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
                    centre_targets: config.centre_targets,
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
                num_classes: classes.segmentation_classes().len(),
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
    /// not labelled for the task), its classes translated by `map` when the sample comes from
    /// a source with other class indices.
    pub fn encode(
        &self,
        s: &Sample,
        size: (usize, usize),
        map: Option<&SourceMap>,
    ) -> mustard_core::Result<ItemTargets> {
        let present = |t: Task| s.tasks.contains(t);
        Ok(match self {
            HeadSpec::Detection(cfg) => {
                let labels: Vec<BoxLabel> = if present(Task::Detection) {
                    s.objects
                        .iter()
                        .filter(|o| !o.crowd)
                        .filter_map(|o| {
                            let class = match map {
                                Some(m) => m.detection.get(o.class).copied().flatten()?,
                                None => o.class,
                            };
                            Some(BoxLabel {
                                bbox: o.bbox,
                                class,
                                score: o.score,
                            })
                        })
                        .collect()
                } else {
                    Vec::new()
                };
                ItemTargets::Detection(detection::encode(cfg, &labels, size)?)
            }
            HeadSpec::Pose { config, person } => {
                let person = map.map_or(Some(*person), |m| m.person);
                let persons: Vec<PersonLabel> = if present(Task::Pose) {
                    s.objects
                        .iter()
                        .filter(|o| !o.crowd && Some(o.class) == person)
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
                    .map(|m| match map.and_then(|m| m.segmentation.as_deref()) {
                        Some(lut) => m.as_raw().iter().map(|&v| lut[v as usize]).collect(),
                        None => m.as_raw().clone(),
                    }),
            ),
            HeadSpec::Depth(_) => ItemTargets::Depth(
                s.depth
                    .as_ref()
                    .filter(|_| present(Task::Depth))
                    .map(|d| d.as_raw().clone()),
            ),
            HeadSpec::Classification(_) => ItemTargets::Classification(
                match s.label.as_ref().filter(|_| present(Task::Classification)) {
                    None => None,
                    Some(Label::Soft(p)) => Some(ClassTarget::Soft(p.clone())),
                    Some(Label::Class(c)) => Some(ClassTarget::Hard(
                        match map.and_then(|m| m.classification.as_ref()) {
                            None => *c,
                            Some(to) => to.get(*c as usize).copied().flatten().map(|v| v as u32).ok_or_else(|| {
                                mustard_core::Error::InvalidConfig {
                                    what: "image label",
                                    reason: format!(
                                        "image {}: class {c} of the data is not a class of the model",
                                        s.image_id
                                    ),
                                }
                            })?,
                        },
                    )),
                },
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

/// How a data source's class indices map to a model's heads, matched by name, so that a
/// model is trained and evaluated on any source in its label spaces whatever the order of the
/// classes: its own training data, a pseudo-label store, a test file of one task.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SourceMap {
    /// Source category → detection class (`None`: a category this model does not detect).
    detection: Vec<Option<usize>>,
    /// The source category of the model's pose category.
    person: Option<usize>,
    /// Source label-map value → segmentation class (255, ignored, for classes the model does
    /// not have); `None` when the classes are the same.
    segmentation: Option<Vec<u8>>,
    /// Source image-level class → the model's; `None` when the classes are the same.
    classification: Option<Vec<Option<usize>>>,
}

impl SourceMap {
    /// The model's segmentation class of a source label-map value (255: ignored).
    pub fn segmentation_class(&self, value: u8) -> u8 {
        match &self.segmentation {
            Some(lut) => lut[usize::from(value)],
            None => value,
        }
    }

    /// The map from `source`'s classes to `classes`' (a model's).
    pub fn new(classes: &Classes, source: &dyn Source) -> Self {
        let cats = source.categories();
        let position = |list: &[String], name: &str| list.iter().position(|n| n == name);
        let detection = cats
            .iter()
            .enumerate()
            .map(|(i, c)| {
                (i < source.detection_classes())
                    .then(|| position(&classes.categories, &c.name))
                    .flatten()
            })
            .collect();
        let person = classes.pose_category().and_then(|pose| {
            cats.iter()
                .position(|c| c.name == pose.name && c.keypoints.is_some())
        });
        let (ours, theirs) = (
            classes.segmentation_classes(),
            source.segmentation_classes(),
        );
        let segmentation = (ours != theirs).then(|| {
            (0..256)
                .map(|v| {
                    theirs
                        .get(v)
                        .and_then(|name| position(&ours, name))
                        .and_then(|c| u8::try_from(c).ok())
                        .unwrap_or(segmentation::IGNORE)
                })
                .collect()
        });
        let classification = (classes.labels != source.label_names()).then(|| {
            source
                .label_names()
                .iter()
                .map(|name| position(&classes.labels, name))
                .collect()
        });
        SourceMap {
            detection,
            person,
            segmentation,
            classification,
        }
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

    /// A copy for inference: the weights copied as they are now, the dense heads'
    /// convolutions with their transforms kept after first use (`HeadBlock::for_inference`).
    pub fn for_inference(&self) -> Result<Self> {
        Ok(match self {
            Head::Detection(h) => Head::Detection(h.for_inference()?),
            Head::Pose(h) => Head::Pose(h.for_inference()?),
            Head::Segmentation(h) => Head::Segmentation(h.for_inference()?),
            Head::Depth(h) => Head::Depth(h.for_inference()?),
            Head::Classification(h) => Head::Classification(h.for_inference()?),
        })
    }

    /// The raw output on the neck's stride-4 map `dense` (and the backbone's `c5`), the hidden
    /// maps of its blocks taken from `shared` where it holds them ([`SharedHidden::new`] over
    /// [`Head::dense_blocks`]; an empty one runs each block alone).
    pub fn forward(&self, dense: &Tensor, c5: &Tensor, shared: &SharedHidden) -> Result<Output> {
        Ok(match self {
            Head::Detection(h) => Output::Detection(h.forward_shared(dense, shared)?),
            Head::Pose(h) => Output::Pose(h.forward_shared(dense, shared)?),
            Head::Segmentation(h) => Output::Segmentation(h.forward_shared(dense, shared)?),
            Head::Depth(h) => Output::Depth(h.forward_shared(dense, shared)?),
            Head::Classification(h) => Output::Classification(h.forward(c5)?),
        })
    }

    /// The head's blocks that read the neck's stride-4 map (none for classification, which
    /// reads `c5`).
    pub fn dense_blocks(&self) -> Vec<&HeadBlock> {
        match self {
            Head::Detection(h) => h.blocks(),
            Head::Pose(h) => h.blocks(),
            Head::Segmentation(h) => h.blocks(),
            Head::Depth(h) => h.blocks(),
            Head::Classification(_) => Vec::new(),
        }
    }

    /// Appends the head to `g` (variables under `prefix`, `heads.<task>`), reading the neck's
    /// `dense` map and the backbone's `c5`; returns each raw output as `(name, value)`, named
    /// as [`Output::named`] names them.
    pub fn onnx(
        &self,
        g: &mut mustard_core::onnx::Graph,
        dense: &str,
        c5: &str,
        prefix: &str,
    ) -> Result<Vec<(&'static str, String)>> {
        Ok(match self {
            Head::Detection(h) => {
                let [hm, wh, reg] = h.onnx(g, dense, prefix)?;
                vec![("hm", hm), ("wh", wh), ("reg", reg)]
            }
            Head::Pose(h) => {
                let [hm, wh, reg, hps, hm_hp, hp_offset] = h.onnx(g, dense, prefix)?;
                vec![
                    ("hm", hm),
                    ("wh", wh),
                    ("reg", reg),
                    ("hps", hps),
                    ("hm_hp", hm_hp),
                    ("hp_offset", hp_offset),
                ]
            }
            Head::Segmentation(h) => vec![("logits", h.onnx(g, dense, prefix)?)],
            Head::Depth(h) => vec![("log_depth", h.onnx(g, dense, prefix)?)],
            Head::Classification(h) => vec![("logits", h.onnx(g, c5, prefix)?)],
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

impl Output {
    /// Every map of the output with its name (as in an exported graph, after the task's name
    /// and a dot).
    pub fn named(&self) -> Vec<(&'static str, &Tensor)> {
        match self {
            Output::Detection(o) => vec![("hm", &o.hm), ("wh", &o.wh), ("reg", &o.reg)],
            Output::Pose(o) => vec![
                ("hm", &o.det.hm),
                ("wh", &o.det.wh),
                ("reg", &o.det.reg),
                ("hps", &o.hps),
                ("hm_hp", &o.hm_hp),
                ("hp_offset", &o.hp_offset),
            ],
            Output::Segmentation(t) | Output::Classification(t) => vec![("logits", t)],
            Output::Depth(t) => vec![("log_depth", t)],
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

impl Targets {
    /// The same targets on `device`.
    pub fn to_device(&self, device: &Device) -> Result<Self> {
        self.map(&|t| Ok(t.to_device(device)?))
    }

    /// The same targets with every float tensor in `dtype` (indices stay integers).
    pub fn to_dtype(&self, dtype: DType) -> Result<Self> {
        self.map(&|t| {
            Ok(if t.dtype().is_float() {
                t.to_dtype(dtype)?
            } else {
                t.clone()
            })
        })
    }

    fn map(&self, f: &dyn Fn(&Tensor) -> mustard_core::Result<Tensor>) -> Result<Self> {
        Ok(match self {
            Targets::Detection(t) => Targets::Detection(t.map(f)?),
            Targets::Pose(t) => Targets::Pose(t.map(f)?),
            Targets::Segmentation(t) => Targets::Segmentation(t.map(f)?),
            Targets::Depth(t) => Targets::Depth(t.map(f)?),
            Targets::Classification(t) => Targets::Classification(t.map(f)?),
        })
    }
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

impl Outputs {
    /// Every output in `dtype`: the decoders read f32, whatever the model computes in.
    pub fn to_dtype(&self, dtype: DType) -> Result<Self> {
        let f = |t: &Tensor| -> Result<Tensor> { Ok(t.to_dtype(dtype)?) };
        let det = |d: &DetectionOutput| -> Result<DetectionOutput> {
            Ok(DetectionOutput {
                hm: f(&d.hm)?,
                wh: f(&d.wh)?,
                reg: f(&d.reg)?,
            })
        };
        Ok(Outputs(self.0.try_map(|_, o| -> Result<Output> {
            Ok(match o {
                Output::Detection(d) => Output::Detection(det(d)?),
                Output::Pose(p) => Output::Pose(PoseOutput {
                    det: det(&p.det)?,
                    hps: f(&p.hps)?,
                    hm_hp: f(&p.hm_hp)?,
                    hp_offset: f(&p.hp_offset)?,
                }),
                Output::Segmentation(t) => Output::Segmentation(f(t)?),
                Output::Depth(t) => Output::Depth(f(t)?),
                Output::Classification(t) => Output::Classification(f(t)?),
            })
        })?))
    }
}

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

impl BatchTargets {
    /// Every task's targets on `device`.
    pub fn to_device(&self, device: &Device) -> Result<Self> {
        Ok(BatchTargets(self.0.try_map(|_, t| t.to_device(device))?))
    }

    /// Every task's targets with their float tensors in `dtype`.
    pub fn to_dtype(&self, dtype: DType) -> Result<Self> {
        Ok(BatchTargets(self.0.try_map(|_, t| t.to_dtype(dtype))?))
    }
}

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

#[cfg(test)]
mod tests {
    use std::path::Path;

    use mustard_data::coco::Category;

    use super::*;
    use crate::config::NamedClass;

    /// A source with the given label spaces and no samples.
    struct Spaces {
        categories: Vec<Category>,
        detected: usize,
        segmentation: Vec<String>,
        labels: Vec<String>,
    }

    impl Source for Spaces {
        fn path(&self) -> &Path {
            Path::new("spaces")
        }
        fn len(&self) -> usize {
            0
        }
        fn load(&self, _: usize) -> mustard_data::Result<Sample> {
            unreachable!("no samples")
        }
        fn categories(&self) -> &[Category] {
            &self.categories
        }
        fn label_names(&self) -> &[String] {
            &self.labels
        }
        fn detection_classes(&self) -> usize {
            self.detected
        }
        fn segmentation_classes(&self) -> Vec<String> {
            self.segmentation.clone()
        }
        fn flip_pairs(&self) -> &[(usize, usize)] {
            &[]
        }
    }

    fn category(id: u64, name: &str, keypoints: bool) -> Category {
        Category {
            id,
            name: name.into(),
            supercategory: None,
            keypoints: keypoints.then(|| vec!["a".into(), "b".into()]),
            skeleton: None,
        }
    }

    fn names(n: &[&str]) -> Vec<String> {
        n.iter().map(|s| s.to_string()).collect()
    }

    /// A MuST student's spaces: shapes detected, people posed apart, stuff segmentation,
    /// colour labels.
    fn student() -> Classes {
        Classes {
            categories: names(&["circle", "square", "triangle"]),
            category_ids: vec![1, 2, 3],
            person: Some(3),
            joints: 2,
            pose: Some(NamedClass {
                name: "person".into(),
                id: 1,
            }),
            segmentation: names(&["stripes", "checks", "shape", "person"]),
            labels: names(&["red", "green", "blue"]),
        }
    }

    #[test]
    fn a_source_in_the_same_spaces_maps_by_name_whatever_the_order() {
        let source = Spaces {
            categories: vec![
                category(7, "triangle", false),
                category(8, "circle", false),
                category(9, "person", true),
            ],
            detected: 2,
            segmentation: names(&["shape", "stuff", "stripes"]),
            labels: names(&["blue", "red", "purple"]),
        };
        let map = SourceMap::new(&student(), &source);
        assert_eq!(map.detection, [Some(2), Some(0), None]);
        assert_eq!(map.person, Some(2));
        let lut = map.segmentation.as_ref().unwrap();
        assert_eq!(lut[..4], [2, 255, 0, 255]);
        assert!(lut[4..].iter().all(|&v| v == 255));
        assert_eq!(map.classification, Some(vec![Some(2), Some(0), None]));
        // The same spaces in the same order map to themselves.
        let same = Spaces {
            categories: vec![
                category(1, "circle", false),
                category(2, "square", false),
                category(3, "triangle", false),
                category(1, "person", true),
            ],
            detected: 3,
            segmentation: student().segmentation,
            labels: student().labels,
        };
        let map = SourceMap::new(&student(), &same);
        assert_eq!(map.detection, [Some(0), Some(1), Some(2), None]);
        assert_eq!(map.person, Some(3));
        assert_eq!((map.segmentation, map.classification), (None, None));
    }

    #[test]
    fn each_head_is_built_in_its_own_space() {
        let mut config = crate::Config::quick("spaces").model;
        config.tasks = Task::ALL.to_vec();
        config.classes = student();
        let specs = HeadSpec::all(&config).unwrap();
        let Some(HeadSpec::Detection(det)) = specs.get(Task::Detection) else {
            panic!("no detection head")
        };
        assert_eq!(det.num_classes, 3);
        let Some(HeadSpec::Pose {
            config: pose,
            person,
        }) = specs.get(Task::Pose)
        else {
            panic!("no pose head")
        };
        assert_eq!((pose.num_joints, *person), (2, 3));
        let Some(HeadSpec::Segmentation(seg)) = specs.get(Task::Segmentation) else {
            panic!("no segmentation head")
        };
        assert_eq!(seg.num_classes, 4);
        let Some(HeadSpec::Classification(cls)) = specs.get(Task::Classification) else {
            panic!("no classification head")
        };
        assert_eq!(cls.num_classes, 3);
        // Without its own segmentation classes, segmentation is background + the categories.
        config.classes.segmentation.clear();
        let Some(HeadSpec::Segmentation(seg)) = HeadSpec::all(&config)
            .unwrap()
            .get(Task::Segmentation)
            .cloned()
        else {
            panic!("no segmentation head")
        };
        assert_eq!(seg.num_classes, 4);
        assert_eq!(
            config.classes.pose_category(),
            Some(NamedClass {
                name: "person".into(),
                id: 1
            })
        );
    }
}
