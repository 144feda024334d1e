//! `mustard bench`: preprocess / inference / postprocess milliseconds per image, images per
//! second and peak memory of a model at a given input size — the "Speed:" line users know.

use std::time::Instant;

use image::RgbImage;
use mustard_core::candle_core::{Device, Tensor};
use mustard_core::candle_nn::VarMap;
use mustard_core::rng::Rng;
use mustard_data::augment::{Affine, AugmentConfig};
use mustard_data::{Sample, TaskSet};
use mustard_pseudo::labels::{keep_boxes, keep_people, labels_to_original};

use crate::config::{Classes, Config};
use crate::targets::normalise;
use crate::tasks::Outputs;
use crate::{MultiTaskModel, Result};

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Network input side.
    pub input_size: u32,
    /// Images per forward pass.
    pub batch: usize,
    /// Timed iterations (after `warmup`).
    pub iterations: usize,
    /// Untimed iterations first.
    pub warmup: usize,
}

/// Median milliseconds per image of each stage, throughput and memory.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchReport {
    /// Input side.
    pub input_size: u32,
    /// Batch size.
    pub batch: usize,
    /// Letterboxing and normalisation, per image.
    pub preprocess: f64,
    /// The network, per image.
    pub inference: f64,
    /// Decoding every head and mapping back to the image, per image.
    pub postprocess: f64,
    /// Images per second end to end.
    pub images_per_second: f64,
    /// Peak resident memory of the process in MiB (None where the OS does not say).
    pub peak_memory_mib: Option<f64>,
    /// Trainable parameters.
    pub parameters: usize,
}

impl std::fmt::Display for BenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Speed: {:.1} ms preprocess, {:.1} ms inference, {:.1} ms postprocess per image at shape ({}, 3, {}, {}); {:.1} images/s; {} parameters",
            self.preprocess,
            self.inference,
            self.postprocess,
            self.batch,
            self.input_size,
            self.input_size,
            self.images_per_second,
            self.parameters
        )?;
        if let Some(m) = self.peak_memory_mib {
            write!(f, "; peak memory {m:.0} MiB")?;
        }
        Ok(())
    }
}

/// Peak resident set size of this process (Linux: `VmHWM` of `/proc/self/status`).
pub fn peak_memory_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// A model of `config` with seeded random weights and the synthetic default's classes (for
/// timing a configuration without a checkpoint).
pub fn untrained(config: &Config) -> Result<(VarMap, MultiTaskModel)> {
    let mut c = config.model.clone();
    if c.classes == Classes::default() {
        let cats = mustard_data::synth::CATEGORIES;
        c.classes = Classes {
            categories: cats.iter().map(|s| s.to_string()).collect(),
            category_ids: (1..=cats.len() as u64).collect(),
            person: cats.iter().position(|&n| n == "person"),
            joints: mustard_data::coco::COCO_KEYPOINTS.len(),
            labels: cats.iter().map(|s| s.to_string()).collect(),
            ..Classes::default()
        };
    }
    MultiTaskModel::build(&c, config.seed, &config.device.device()?)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Times `model` (whose variables are in `varmap`, on `device`) on `image`, letterboxed to
/// `options.input_size`.
pub fn bench(
    model: &MultiTaskModel,
    varmap: &VarMap,
    device: &Device,
    image: &RgbImage,
    options: &BenchOptions,
) -> Result<BenchReport> {
    let model = &model.for_inference()?;
    let size = options.input_size as usize;
    let b = options.batch.max(1);
    let (w, h) = image.dimensions();
    let (mut pre, mut inf, mut post, mut total) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for it in 0..options.warmup + options.iterations.max(1) {
        let t0 = Instant::now();
        let mut pixels = Vec::with_capacity(b * 3 * size * size);
        let mut transforms = Vec::with_capacity(b);
        for _ in 0..b {
            let sample = Sample {
                image_id: 1,
                image: image.clone(),
                objects: Vec::new(),
                semantic: None,
                depth: None,
                label: None,
                tasks: TaskSet::EMPTY,
                transform: Affine::IDENTITY,
                original_size: (w, h),
            };
            let sample =
                AugmentConfig::eval(options.input_size).apply(sample, &[], &mut Rng::new(0));
            pixels.extend(normalise(&sample.image));
            transforms.push(sample.transform);
        }
        let x = Tensor::from_vec(pixels, (b, 3, size, size), &Device::Cpu)?.to_device(device)?;
        // A GPU runs asynchronously: each phase ends when the device has finished it, so that
        // its time is not booked to the next phase.
        device.synchronize()?;
        let t1 = Instant::now();
        let out = model.infer(&x)?;
        device.synchronize()?;
        let t2 = Instant::now();
        let kept = postprocess(model, &out, &transforms, (w, h), size)?;
        let t3 = Instant::now();
        std::hint::black_box(kept);
        if it >= options.warmup {
            let per = |a: Instant, z: Instant| (z - a).as_secs_f64() * 1e3 / b as f64;
            pre.push(per(t0, t1));
            inf.push(per(t1, t2));
            post.push(per(t2, t3));
            total.push(per(t0, t3));
        }
    }
    let parameters = mustard_core::optim::trainable_vars(varmap)
        .iter()
        .map(|(_, v)| v.elem_count())
        .sum();
    Ok(BenchReport {
        input_size: options.input_size,
        batch: b,
        preprocess: median(pre),
        inference: median(inf),
        postprocess: median(post),
        images_per_second: 1e3 / median(total),
        peak_memory_mib: peak_memory_mib(),
        parameters,
    })
}

/// Decodes every head of `out` and maps the results back to the `(w, h)` image, as
/// pseudo-labelling does; returns how many things were kept (so that nothing is optimised
/// away).
fn postprocess(
    model: &MultiTaskModel,
    out: &Outputs,
    transforms: &[Affine],
    (w, h): (u32, u32),
    size: usize,
) -> Result<usize> {
    let mut kept = 0usize;
    if let (Some(head), Some(o)) = (model.detection(), out.detection()) {
        for (dets, t) in head.decode(o)?.iter().zip(transforms) {
            kept += keep_boxes(dets, 0.0, t, (w, h)).len();
        }
    }
    let person = model.config().classes.person;
    if let (Some(head), Some(o), Some(person)) = (model.pose(), out.pose(), person) {
        let th = mustard_pseudo::Thresholds {
            pose: 0.0,
            ..Default::default()
        };
        for (people, t) in head.decode(o)?.iter().zip(transforms) {
            kept += keep_people(people, &th, person, t, (w, h)).len();
        }
    }
    if let (Some(head), Some(logits)) = (model.segmentation(), out.segmentation()) {
        for (labels, t) in head.decode(logits)?.into_iter().zip(transforms) {
            let map =
                image::GrayImage::from_raw(size as u32, size as u32, labels).expect("sizes match");
            kept += labels_to_original(&map, t, (w, h)).len();
        }
    }
    if let (Some(head), Some(d)) = (model.depth(), out.depth()) {
        kept += head.decode(d)?.len();
    }
    if let (Some(head), Some(logits)) = (model.classification(), out.classification()) {
        kept += head.decode(logits)?.len();
    }
    Ok(kept)
}
