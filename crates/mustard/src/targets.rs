//! From augmented samples to batches of network inputs and per-task targets.

use mustard_core::candle_core::{DType, Device, Tensor};
use mustard_data::augment::Affine;
use mustard_data::{BatchEncoder, Sample, Task, TaskMap, TaskSet};

use crate::tasks::{BatchTargets, HeadSpec, ItemTargetMap, SourceMap};

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
    /// The targets of every head of the encoder.
    pub targets: ItemTargetMap,
    meta: Meta,
}

/// A batch: images and the targets of every head of the model.
#[derive(Debug, Clone)]
pub struct Batch {
    /// `(B, 3, H, W)` normalised images.
    pub images: Tensor,
    /// Per-task targets.
    pub targets: BatchTargets,
    /// Per-image metadata.
    pub meta: Vec<Meta>,
}

impl Batch {
    /// The batch on `device`: built on the CPU by the loader, moved once per step to the
    /// model's device (a cheap clone when it is already there).
    pub fn to_device(&self, device: &Device) -> crate::Result<Batch> {
        if self.images.device().same_device(device) {
            return Ok(self.clone());
        }
        Ok(Batch {
            images: self.images.to_device(device)?,
            targets: self.targets.to_device(device)?,
            meta: self.meta.clone(),
        })
    }

    /// The batch as `model` computes on it: on its device, in its float type.
    pub fn for_model(&self, model: &crate::MultiTaskModel) -> crate::Result<Batch> {
        let moved = self.to_device(model.device())?;
        if moved.images.dtype() == model.dtype() {
            return Ok(moved);
        }
        moved.to_dtype(model.dtype())
    }

    /// The batch with images and float targets in `dtype` (a model built in that dtype, e.g.
    /// f64 to compare two computations without f32 rounding).
    pub fn to_dtype(&self, dtype: DType) -> crate::Result<Batch> {
        Ok(Batch {
            images: self.images.to_dtype(dtype)?,
            targets: self.targets.to_dtype(dtype)?,
            meta: self.meta.clone(),
        })
    }
}

/// Encodes samples for a model's heads (runs in the loader's worker threads).
pub struct Encoder {
    heads: TaskMap<HeadSpec>,
    size: usize,
    map: Option<SourceMap>,
}

impl Encoder {
    /// An encoder for `heads` (a model's [`crate::MultiTaskModel::head_specs`]) at `size` x
    /// `size` inputs.
    pub fn new(heads: TaskMap<HeadSpec>, size: u32) -> Self {
        Self {
            heads,
            size: size as usize,
            map: None,
        }
    }

    /// The same encoder for samples whose class indices are `map`'s source's.
    pub fn with_map(self, map: SourceMap) -> Self {
        Self {
            map: Some(map),
            ..self
        }
    }

    /// An encoder of images and metadata only (no targets), e.g. for pseudo-labelling.
    pub fn images_only(size: u32) -> Self {
        Self::new(TaskMap::new(), size)
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
        let targets = self
            .heads
            .try_map(|_, spec| spec.encode(&s, size, self.map.as_ref()))
            .map_err(mustard_data::Error::from)?;
        let meta = Meta {
            image_id: s.image_id,
            transform: s.transform,
            original_size: s.original_size,
            tasks: s.tasks,
        };
        Ok(Item {
            image: normalise(&s.image),
            targets: ItemTargetMap(targets),
            meta,
        })
    }

    fn collate(&self, items: Vec<Item>) -> mustard_data::Result<Batch> {
        let dev = Device::Cpu;
        let (b, s) = (items.len(), self.size);
        let targets = self
            .heads
            .try_map(|task: Task, spec| {
                let mut per_image = Vec::with_capacity(b);
                for item in &items {
                    per_image.push(item.targets.0.get(task).ok_or_else(|| {
                        mustard_core::Error::InvalidConfig {
                            what: "collate",
                            reason: format!("an item without {task} targets"),
                        }
                    })?);
                }
                let presence: Vec<bool> =
                    items.iter().map(|i| i.meta.tasks.contains(task)).collect();
                spec.collate(&per_image, &presence, (s, s), &dev)
            })
            .map_err(mustard_data::Error::from)?;
        let images: Vec<f32> = items.iter().flat_map(|i| i.image.iter().copied()).collect();
        let images = Tensor::from_vec(images, (b, 3, s, s), &dev)
            .map_err(|e| mustard_data::Error::from(mustard_core::Error::from(e)))?;
        Ok(Batch {
            images,
            targets: BatchTargets(targets),
            meta: items.into_iter().map(|i| i.meta).collect(),
        })
    }
}
