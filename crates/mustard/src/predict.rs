//! Prediction on image files: COCO-results JSON and pictures (boxes, labels, skeletons,
//! segmentation overlay, depth colour map, optionally the raw heatmaps).

use std::path::{Path, PathBuf};
use std::time::Instant;

use image::{GrayImage, Luma, RgbImage};
use mustard_core::candle_core::{Device, Tensor};
use mustard_core::candle_nn::ops::sigmoid;
use mustard_core::rng::Rng;
use mustard_data::augment::{Affine, AugmentConfig};
use mustard_data::{imageio, relative_name, Sample, TaskSet};
use serde_json::{json, Value};

use crate::config::Config;
use crate::evaluate::to_original;
use crate::model::MultiTaskModel;
use crate::targets::normalise;
use crate::tasks::Outputs;
use crate::{draw, Error, Result};

/// How to predict.
#[derive(Debug, Clone)]
pub struct PredictOptions {
    /// Also write the detection and joint heatmaps as pictures.
    pub save_heatmaps: bool,
    /// Boxes and people below this score are not drawn (all go to the JSON).
    pub draw_threshold: f32,
    /// Ground truth of the inputs (matched by file name): with `save_heatmaps`, the target
    /// heatmaps are drawn under the predicted ones.
    pub targets: Option<std::sync::Arc<mustard_data::Dataset>>,
}

/// Milliseconds per image of each stage.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Timing {
    /// Decoding and letterboxing.
    pub preprocess: f64,
    /// The network.
    pub inference: f64,
    /// Decoding the heads and mapping back to the image.
    pub postprocess: f64,
}

/// What [`predict`] wrote.
#[derive(Debug, Clone)]
pub struct PredictSummary {
    /// Images processed.
    pub images: usize,
    /// Files written.
    pub files: Vec<PathBuf>,
    /// Mean time per image.
    pub timing: Timing,
}

/// One image to predict on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Input {
    /// The file.
    pub path: PathBuf,
    /// Its name in the results' `file_name`: the path relative to the folder given, with `/`
    /// between folders (the file name for a single file).
    pub name: String,
    /// Where its pictures go under the output folder, without extension: the relative path
    /// without its extension, or with it (`a.jpg`) when another image of the same folder has
    /// the same stem (`a.png`), so that no output overwrites another.
    pub output: String,
}

/// The images of an input, and the files of a folder that are not images.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inputs {
    /// The images, in sorted order.
    pub images: Vec<Input>,
    /// The files of the folder that were not read (not an image by their extension).
    pub left_out: Vec<PathBuf>,
}

impl Inputs {
    /// One line naming the files left out (at most five by name), or None.
    pub fn left_out_line(&self, root: &Path) -> Option<String> {
        left_out_line(root, &self.left_out)
    }
}

/// "left out 2 files that are not images: notes.txt, sub/x.csv" (at most five by name, relative
/// to `root`), or None when `files` is empty.
pub fn left_out_line(root: &Path, files: &[PathBuf]) -> Option<String> {
    if files.is_empty() {
        return None;
    }
    let mut names: Vec<String> = files
        .iter()
        .take(5)
        .map(|p| relative_name(root, p))
        .collect();
    if files.len() > 5 {
        names.push("…".into());
    }
    let n = files.len();
    let what = if n == 1 {
        "file that is not an image"
    } else {
        "files that are not images"
    };
    Some(format!("left out {n} {what}: {}", names.join(", ")))
}

/// The images of `input`: the file itself (read whatever its extension), or the image files of
/// a folder and its sub-folders, sorted, with the other files it holds.
pub fn collect_inputs(input: &Path) -> Result<Inputs> {
    if input.is_file() {
        let name = relative_name(input.parent().unwrap_or(Path::new("")), input);
        let output = input
            .file_stem()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| name.clone());
        return Ok(Inputs {
            images: vec![Input {
                path: input.to_path_buf(),
                name,
                output,
            }],
            left_out: Vec::new(),
        });
    }
    if !input.is_dir() {
        return Err(Error::file(input, "no such file or folder"));
    }
    let (paths, left_out) = mustard_data::walk_images(input)?;
    if paths.is_empty() {
        return Err(Error::file(
            input,
            format!(
                "no images ({}) here or in its sub-folders",
                imageio::image_extensions_list()
            ),
        ));
    }
    // Stems used by more than one image of a folder keep their extension in the output's name.
    let without_ext = |p: &Path| relative_name(input, &p.with_extension(""));
    let mut count = std::collections::HashMap::new();
    for p in &paths {
        *count.entry(without_ext(p)).or_insert(0usize) += 1;
    }
    let images = paths
        .iter()
        .map(|p| {
            let stem = without_ext(p);
            Input {
                name: relative_name(input, p),
                output: if count[&stem] > 1 {
                    relative_name(input, p)
                } else {
                    stem
                },
                path: p.clone(),
            }
        })
        .collect();
    Ok(Inputs { images, left_out })
}

/// Creates the folder `file` goes into (outputs mirror the input's sub-folders).
fn create_parent(file: &Path) -> Result<()> {
    match file.parent() {
        Some(dir) => std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e)),
        None => Ok(()),
    }
}

/// Resamples a map given in network-input pixels onto the original image (nearest).
fn to_original_map<T: Copy>(
    values: &[T],
    size: usize,
    t: &Affine,
    (w, h): (u32, u32),
    outside: T,
) -> Vec<T> {
    let mut out = Vec::with_capacity((w * h) as usize);
    for y in 0..h {
        for x in 0..w {
            let (u, v) = t.apply(x as f64 + 0.5, y as f64 + 0.5);
            let inside = u >= 0.0 && v >= 0.0 && (u as usize) < size && (v as usize) < size;
            out.push(if inside {
                values[v as usize * size + u as usize]
            } else {
                outside
            });
        }
    }
    out
}

/// Runs `model` on every file and writes `detections.json`, `keypoints.json` and
/// `classification.json` (COCO results, `image_id` = position in `inputs` + 1, with
/// `file_name`), and one picture per image into `out`.
pub fn predict(
    model: &MultiTaskModel,
    config: &Config,
    inputs: &[Input],
    out: &Path,
    options: &PredictOptions,
) -> Result<PredictSummary> {
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let model = &model.for_inference()?;
    let mut records = Records::default();
    let mut timing = Timing::default();
    let mut files = Vec::new();
    for (i, input) in inputs.iter().enumerate() {
        let image = Image::read(input, i as u64 + 1, config.train.input_size)?;
        let t = image.predict(model, out, options, &mut records, &mut files)?;
        timing.preprocess += t.preprocess;
        timing.inference += t.inference;
        timing.postprocess += t.postprocess;
    }
    records.write(out, &mut files)?;
    let n = inputs.len().max(1) as f64;
    timing = Timing {
        preprocess: timing.preprocess / n,
        inference: timing.inference / n,
        postprocess: timing.postprocess / n,
    };
    Ok(PredictSummary {
        images: inputs.len(),
        files,
        timing,
    })
}

/// The COCO-results records of every image.
#[derive(Default)]
struct Records {
    boxes: Vec<Value>,
    people: Vec<Value>,
    labels: Vec<Value>,
}

impl Records {
    fn write(&self, out: &Path, files: &mut Vec<PathBuf>) -> Result<()> {
        for (name, records) in [
            ("detections", &self.boxes),
            ("keypoints", &self.people),
            ("classification", &self.labels),
        ] {
            if records.is_empty() {
                continue;
            }
            let file = out.join(format!("{name}.json"));
            let bytes =
                serde_json::to_vec(&Value::Array(records.clone())).expect("JSON values serialise");
            mustard_core::io::write_bytes(&file, &bytes)?;
            files.push(file);
        }
        Ok(())
    }
}

/// One input image, decoded and letterboxed.
struct Image {
    image_id: u64,
    name: String,
    stem: String,
    original: RgbImage,
    sample: Sample,
    size: u32,
    started: Instant,
}

impl Image {
    fn read(input: &Input, image_id: u64, size: u32) -> Result<Self> {
        let started = Instant::now();
        let (name, stem) = (input.name.clone(), input.output.clone());
        let path = &input.path;
        let original = imageio::read_rgb(path)?;
        let (w, h) = original.dimensions();
        let sample = Sample {
            image_id,
            image: original.clone(),
            objects: Vec::new(),
            semantic: None,
            depth: None,
            label: None,
            tasks: TaskSet::EMPTY,
            transform: Affine::IDENTITY,
            original_size: (w, h),
        };
        let sample = AugmentConfig::eval(size).apply(sample, &[], &mut Rng::new(0));
        Ok(Self {
            image_id,
            name,
            stem,
            original,
            sample,
            size,
            started,
        })
    }

    /// Runs the model, records its predictions and writes the pictures.
    fn predict(
        &self,
        model: &MultiTaskModel,
        out: &Path,
        options: &PredictOptions,
        records: &mut Records,
        files: &mut Vec<PathBuf>,
    ) -> Result<Timing> {
        let s = self.size as usize;
        let x = Tensor::from_vec(normalise(&self.sample.image), (1, 3, s, s), &Device::Cpu)?
            .to_device(model.device())?;
        let t1 = Instant::now();
        let outputs = model.infer(&x)?;
        let t2 = Instant::now();
        let mut picture = self.original.clone();
        self.segmentation(model, &outputs, &mut picture)?;
        self.detections(model, &outputs, options, records, &mut picture)?;
        self.people(model, &outputs, options, records, &mut picture)?;
        self.classification(model, &outputs, records, &mut picture)?;
        let mut parts = vec![picture];
        if let (Some(head), Some(pred)) = (model.depth(), outputs.depth()) {
            let (w, h) = self.original.dimensions();
            let depth = head.decode(pred)?.remove(0);
            let map = to_original_map(&depth, s, &self.sample.transform, (w, h), f32::NAN);
            parts.push(draw::colour_map(&map, w, h, true));
        }
        let file = out.join(format!("{}.png", self.stem));
        create_parent(&file)?;
        imageio::write_rgb(&file, &side_by_side(&parts))?;
        files.push(file);
        if options.save_heatmaps {
            self.heatmaps(model, &outputs, out, options, files)?;
        }
        let t3 = Instant::now();
        Ok(Timing {
            preprocess: (t1 - self.started).as_secs_f64() * 1e3,
            inference: (t2 - t1).as_secs_f64() * 1e3,
            postprocess: (t3 - t2).as_secs_f64() * 1e3,
        })
    }

    fn segmentation(
        &self,
        model: &MultiTaskModel,
        outputs: &Outputs,
        picture: &mut RgbImage,
    ) -> Result<()> {
        if let (Some(head), Some(logits)) = (model.segmentation(), outputs.segmentation()) {
            let (w, h) = self.original.dimensions();
            let pred = head.decode(logits)?.remove(0);
            let map = to_original_map(
                &pred,
                self.size as usize,
                &self.sample.transform,
                (w, h),
                0u8,
            );
            draw::overlay(
                picture,
                &GrayImage::from_raw(w, h, map).expect("sizes match"),
            );
        }
        Ok(())
    }

    fn detections(
        &self,
        model: &MultiTaskModel,
        outputs: &Outputs,
        options: &PredictOptions,
        records: &mut Records,
        picture: &mut RgbImage,
    ) -> Result<()> {
        let (Some(head), Some(o)) = (model.detection(), outputs.detection()) else {
            return Ok(());
        };
        let classes = &model.config().classes;
        for d in head.decode(o)?.remove(0) {
            let bbox = to_original(d.bbox, &self.sample.transform, self.original.dimensions());
            records.boxes.push(json!({"image_id": self.image_id, "file_name": self.name, "category_id": classes.category_ids[d.class], "bbox": bbox, "score": d.score}));
            if d.score >= options.draw_threshold {
                let b = [
                    bbox[0] as f32,
                    bbox[1] as f32,
                    (bbox[0] + bbox[2]) as f32,
                    (bbox[1] + bbox[3]) as f32,
                ];
                let label = format!("{} {:.2}", classes.categories[d.class], d.score);
                draw::boxed(picture, b, &label, draw::colour(d.class));
            }
        }
        Ok(())
    }

    fn people(
        &self,
        model: &MultiTaskModel,
        outputs: &Outputs,
        options: &PredictOptions,
        records: &mut Records,
        picture: &mut RgbImage,
    ) -> Result<()> {
        let classes = &model.config().classes;
        let (Some(head), Some(o), Some(person), Some(pose)) = (
            model.pose(),
            outputs.pose(),
            classes.person,
            classes.pose_category(),
        ) else {
            return Ok(());
        };
        let inv = self.sample.transform.inverse().unwrap_or(Affine::IDENTITY);
        let skeleton = mustard_data::coco::COCO_SKELETON;
        for d in head.decode(o)?.remove(0) {
            let joints: Vec<[f32; 3]> = d
                .payload
                .iter()
                .map(|k| {
                    let (x, y) = inv.apply(k[0] as f64, k[1] as f64);
                    [x as f32, y as f32, k[2]]
                })
                .collect();
            let flat: Vec<f64> = joints
                .iter()
                .flat_map(|j| [j[0] as f64, j[1] as f64, 1.0])
                .collect();
            records.people.push(json!({"image_id": self.image_id, "file_name": self.name, "category_id": pose.id, "keypoints": flat, "score": d.score}));
            if d.score >= options.draw_threshold {
                let edges: &[[u32; 2]] = if joints.len() == 17 { &skeleton } else { &[] };
                draw::skeleton(picture, &joints, edges, draw::colour(person));
            }
        }
        Ok(())
    }

    fn classification(
        &self,
        model: &MultiTaskModel,
        outputs: &Outputs,
        records: &mut Records,
        picture: &mut RgbImage,
    ) -> Result<()> {
        let (Some(head), Some(logits)) = (model.classification(), outputs.classification()) else {
            return Ok(());
        };
        let labels = &model.config().classes.labels;
        let probs = head.decode(logits)?.remove(0);
        let (best, p) =
            probs
                .iter()
                .enumerate()
                .fold((0, f32::MIN), |a, (i, &p)| if p > a.1 { (i, p) } else { a });
        records.labels.push(json!({"image_id": self.image_id, "file_name": self.name, "label": labels.get(best), "score": p, "probabilities": probs}));
        let text = format!("{} {:.2}", labels.get(best).map_or("?", String::as_str), p);
        let h = self.original.height();
        draw::label(picture, 2, h as i32 - 14, &text, draw::colour(best));
        Ok(())
    }

    /// `<stem>_heatmaps.png`: the predicted heatmaps, and under them the targets when the
    /// ground truth has this image.
    fn heatmaps(
        &self,
        model: &MultiTaskModel,
        outputs: &Outputs,
        out: &Path,
        options: &PredictOptions,
        files: &mut Vec<PathBuf>,
    ) -> Result<()> {
        let mut maps = Vec::new();
        if let Some(o) = outputs.detection() {
            maps.push(heat_picture(&o.hm)?);
        }
        if let Some(o) = outputs.pose() {
            maps.push(heat_picture(&o.hm_hp)?);
        }
        let target = match &options.targets {
            Some(ds) => target_heatmaps(model, ds, &self.name, self.size)?,
            None => Vec::new(),
        };
        if !maps.is_empty() {
            let mut rows = vec![side_by_side(&maps)];
            if !target.is_empty() {
                rows.push(side_by_side(&target));
            }
            let file = out.join(format!("{}_heatmaps.png", self.stem));
            create_parent(&file)?;
            imageio::write_rgb(&file, &draw::stack(&rows))?;
            files.push(file);
        }
        Ok(())
    }
}

/// The maximum over channels of a heatmap's sigmoid, as a colour map, 4x enlarged.
fn heat_picture(logits: &Tensor) -> Result<RgbImage> {
    let (_, _, h, w) = logits.dims4()?;
    let heat = sigmoid(logits)?.max(1)?.flatten_all()?.to_vec1::<f32>()?;
    Ok(max_picture(&heat, 1, h, w))
}

/// The target heatmaps (detection, then joints) of the dataset image named `name`, encoded as
/// for training at `size`; nothing when the dataset has no such image.
fn target_heatmaps(
    model: &MultiTaskModel,
    ds: &mustard_data::Dataset,
    name: &str,
    size: u32,
) -> Result<Vec<RgbImage>> {
    let found = (0..ds.len()).find(|&i| {
        let f = &ds.image(i).file_name;
        f == name || f.ends_with(&format!("/{name}"))
    });
    let Some(i) = found else {
        return Ok(Vec::new());
    };
    let mut sample = ds.load(i)?;
    sample.tasks = TaskSet::all();
    let sample = AugmentConfig::eval(size).apply(sample, ds.flip_pairs(), &mut Rng::new(0));
    let item = mustard_data::BatchEncoder::encode(&model.encoder_for(ds, size), sample)?;
    let mut out = Vec::new();
    if let Some(t) = item.targets.detection() {
        let (h, w) = t.size;
        out.push(max_picture(&t.hm, t.hm.len() / (h * w), h, w));
    }
    if let Some(t) = item.targets.pose() {
        let (h, w) = t.det.size;
        out.push(max_picture(&t.hm_hp, t.hm_hp.len() / (h * w), h, w));
    }
    Ok(out)
}

/// The maximum over the `c` planes of `(c, h, w)` values in `[0, 1]`, as a colour map, 4x
/// enlarged.
fn max_picture(values: &[f32], c: usize, h: usize, w: usize) -> RgbImage {
    let heat: Vec<f32> = (0..h * w)
        .map(|p| (0..c).map(|k| values[k * h * w + p]).fold(0f32, f32::max))
        .collect();
    let small = GrayImage::from_fn(w as u32, h as u32, |x, y| {
        Luma([(heat[y as usize * w + x as usize] * 255.0) as u8])
    });
    let big = image::imageops::resize(
        &small,
        4 * w as u32,
        4 * h as u32,
        image::imageops::FilterType::Nearest,
    );
    let values: Vec<f32> = big.pixels().map(|p| p.0[0] as f32).collect();
    draw::colour_map_range(&values, big.width(), big.height(), (0.0, 255.0), false)
}

fn side_by_side(parts: &[RgbImage]) -> RgbImage {
    let w = parts.iter().map(RgbImage::width).sum::<u32>().max(1);
    let h = parts.iter().map(RgbImage::height).max().unwrap_or(1);
    let mut out = RgbImage::new(w, h);
    let mut x = 0;
    for p in parts {
        image::imageops::overlay(&mut out, p, x as i64, 0);
        x += p.width();
    }
    out
}
