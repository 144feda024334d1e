//! From augmented samples to batches of network inputs and per-task targets.

use mustard_core::candle_core::{Device, Tensor};
use mustard_data::augment::Affine;
use mustard_data::{BatchEncoder, Label, Sample, Task, TaskSet};
use mustard_heads::classification::{self, ClassTarget, ClassificationBatch};
use mustard_heads::depth::{self, DepthBatch};
use mustard_heads::detection::{self, BoxLabel, DetectionBatch, DetectionConfig, DetectionTargets};
use mustard_heads::pose::{self, PersonLabel, PoseBatch, PoseConfig, PoseTargets};
use mustard_heads::segmentation::{self, SegmentationBatch};

use crate::config::ModelConfig;

/// ImageNet channel means and deviations (what torchvision/timm weights expect).
pub const MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// See [`MEAN`].
pub const STD: [f32; 3] = [0.229, 0.224, 0.225];

/// Where a sample came from, to map predictions back to the original image.
#[derive(Debug, Clone, PartialEq)]
pub struct Meta {
    /// The image record's id.
    pub image_id: u64,
    /// Original image → network input.
    pub transform: Affine,
    /// `(width, height)` of the original image.
    pub original_size: (u32, u32),
    /// Tasks labelled for this image.
    pub tasks: TaskSet,
}

/// One encoded sample.
pub struct Item {
    image: Vec<f32>,
    detection: Option<DetectionTargets>,
    pose: Option<PoseTargets>,
    segmentation: Option<Vec<u8>>,
    depth: Option<Vec<f32>>,
    classification: Option<ClassTarget>,
    meta: Meta,
}

impl Item {
    /// The detection targets.
    pub fn detection(&self) -> Option<&DetectionTargets> {
        self.detection.as_ref()
    }

    /// The pose targets.
    pub fn pose(&self) -> Option<&PoseTargets> {
        self.pose.as_ref()
    }
}

/// A batch: images and the targets of every task the model has.
#[derive(Debug, Clone)]
pub struct Batch {
    /// `(B, 3, H, W)` normalised images.
    pub images: Tensor,
    /// Detection targets.
    pub detection: Option<DetectionBatch>,
    /// Pose targets.
    pub pose: Option<PoseBatch>,
    /// Segmentation targets.
    pub segmentation: Option<SegmentationBatch>,
    /// Depth targets.
    pub depth: Option<DepthBatch>,
    /// Classification targets.
    pub classification: Option<ClassificationBatch>,
    /// Per-image metadata.
    pub meta: Vec<Meta>,
}

/// Encodes samples for a model config (runs in the loader's worker threads).
pub struct Encoder {
    config: ModelConfig,
    size: usize,
}

impl Encoder {
    /// An encoder for `config` at `size` x `size` inputs.
    pub fn new(config: &ModelConfig, size: u32) -> Self {
        Self {
            config: config.clone(),
            size: size as usize,
        }
    }

    fn has(&self, t: Task) -> bool {
        self.config.tasks.contains(&t)
    }
}

/// The image as normalised CHW floats.
pub fn normalise(img: &image::RgbImage) -> Vec<f32> {
    let n = (img.width() * img.height()) as usize;
    let mut out = vec![0f32; 3 * n];
    for (i, p) in img.pixels().enumerate() {
        for c in 0..3 {
            out[c * n + i] = (p.0[c] as f32 / 255.0 - MEAN[c]) / STD[c];
        }
    }
    out
}

impl BatchEncoder for Encoder {
    type Item = Item;
    type Batch = Batch;

    fn encode(&self, s: Sample) -> mustard_data::Result<Item> {
        let size = (self.size, self.size);
        let wrap = |e: mustard_core::Error| mustard_data::Error::from(e);
        let present = |t: Task| s.tasks.contains(t);
        let classes = &self.config.classes;
        let detection = if self.has(Task::Detection) {
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
            let cfg = DetectionConfig {
                head_conv: self.config.head_conv,
                ..DetectionConfig::new(classes.categories.len())
            };
            Some(detection::encode(&cfg, &labels, size).map_err(wrap)?)
        } else {
            None
        };
        let pose = if self.has(Task::Pose) {
            let persons: Vec<PersonLabel> = if present(Task::Pose) {
                s.objects
                    .iter()
                    .filter(|o| !o.crowd && Some(o.class) == classes.person)
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
            Some(pose::encode(&PoseConfig::new(classes.joints), &persons, size).map_err(wrap)?)
        } else {
            None
        };
        let segmentation = s
            .semantic
            .as_ref()
            .filter(|_| present(Task::Segmentation))
            .map(|m| m.as_raw().clone());
        let depth = s
            .depth
            .as_ref()
            .filter(|_| present(Task::Depth))
            .map(|d| d.as_raw().clone());
        let classification = s
            .label
            .as_ref()
            .filter(|_| present(Task::Classification))
            .map(|l| match l {
                Label::Class(c) => ClassTarget::Hard(*c),
                Label::Soft(p) => ClassTarget::Soft(p.clone()),
            });
        let meta = Meta {
            image_id: s.image_id,
            transform: s.transform,
            original_size: s.original_size,
            tasks: s.tasks,
        };
        Ok(Item {
            image: normalise(&s.image),
            detection,
            pose,
            segmentation,
            depth,
            classification,
            meta,
        })
    }

    fn collate(&self, items: Vec<Item>) -> mustard_data::Result<Batch> {
        let dev = Device::Cpu;
        let b = items.len();
        let s = self.size;
        let wrap = |e: mustard_core::Error| mustard_data::Error::from(e);
        let candle = |e: mustard_core::candle_core::Error| {
            mustard_data::Error::from(mustard_core::Error::from(e))
        };
        let presence = |t: Task| {
            items
                .iter()
                .map(|i| i.meta.tasks.contains(t))
                .collect::<Vec<bool>>()
        };
        let images: Vec<f32> = items.iter().flat_map(|i| i.image.iter().copied()).collect();
        let detection = if self.has(Task::Detection) {
            let t: Vec<&DetectionTargets> =
                items.iter().filter_map(|i| i.detection.as_ref()).collect();
            Some(detection::collate(&t, &presence(Task::Detection), &dev).map_err(wrap)?)
        } else {
            None
        };
        let pose = if self.has(Task::Pose) {
            let t: Vec<&PoseTargets> = items.iter().filter_map(|i| i.pose.as_ref()).collect();
            Some(pose::collate(&t, &presence(Task::Pose), &dev).map_err(wrap)?)
        } else {
            None
        };
        let segmentation = if self.has(Task::Segmentation) {
            let maps: Vec<Option<&[u8]>> =
                items.iter().map(|i| i.segmentation.as_deref()).collect();
            Some(segmentation::collate(&maps, (s, s), &dev).map_err(wrap)?)
        } else {
            None
        };
        let depth = if self.has(Task::Depth) {
            let maps: Vec<Option<&[f32]>> = items.iter().map(|i| i.depth.as_deref()).collect();
            Some(depth::collate(&maps, (s, s), &dev).map_err(wrap)?)
        } else {
            None
        };
        let classification = if self.has(Task::Classification) {
            let labels: Vec<Option<ClassTarget>> =
                items.iter().map(|i| i.classification.clone()).collect();
            Some(
                classification::collate(&labels, self.config.classes.labels.len(), &dev)
                    .map_err(wrap)?,
            )
        } else {
            None
        };
        Ok(Batch {
            images: Tensor::from_vec(images, (b, 3, s, s), &dev).map_err(candle)?,
            detection,
            pose,
            segmentation,
            depth,
            classification,
            meta: items.into_iter().map(|i| i.meta).collect(),
        })
    }
}
