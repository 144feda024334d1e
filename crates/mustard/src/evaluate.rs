//! Evaluation of a model on a dataset through mustard-eval: COCO box and keypoint AP (equal to
//! pycocotools), mIoU, depth errors and top-1/top-5.

use std::sync::Arc;

use mustard_data::augment::Affine;
use mustard_data::{Dataset, Loader, LoaderConfig, Task, TaskMap};
use mustard_eval::coco::ResultRecord;
use mustard_eval::{
    ClassificationAccuracy, CocoDt, CocoEval, CocoGt, ConfusionMatrix, DepthAccumulator, IouType,
    Params, SegmentationMetrics,
};
use mustard_heads::segmentation::IGNORE;
use serde_json::{json, Value};

use crate::model::MultiTaskModel;
use crate::targets::Batch;
use crate::tasks::Outputs;
use crate::Result;

/// One task's metrics.
#[derive(Debug, Clone)]
pub enum TaskMetrics {
    /// COCO AP (boxes for detection, OKS for pose), equal to pycocotools.
    Coco(Box<CocoEval>),
    /// mIoU and pixel accuracy.
    Segmentation {
        /// Per-class IoU, mIoU, pixel accuracy.
        metrics: SegmentationMetrics,
        /// Pixels per (true, predicted) class.
        confusion: Confusion,
    },
    /// Depth errors (metres).
    Depth(mustard_eval::DepthMetrics),
    /// Top-1 and top-5 accuracy.
    Classification {
        /// Top-1.
        top1: f64,
        /// Top-5.
        top5: f64,
        /// Images per (true, predicted) class.
        confusion: Confusion,
    },
}

/// A confusion matrix with its class names: `counts[true * n + predicted]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Confusion {
    /// Class names, by index.
    pub classes: Vec<String>,
    /// Row-major counts, `classes.len()` squared.
    pub counts: Vec<u64>,
}

impl Confusion {
    fn of(matrix: &ConfusionMatrix, classes: &[String]) -> Self {
        let n = matrix.num_classes();
        let classes = (0..n)
            .map(|i| {
                classes
                    .get(i)
                    .cloned()
                    .unwrap_or_else(|| format!("class {i}"))
            })
            .collect();
        Self {
            classes,
            counts: matrix.counts().to_vec(),
        }
    }

    /// Per true class, the share predicted correctly (recall); `None` for a class with no
    /// true sample.
    pub fn recall(&self) -> Vec<Option<f64>> {
        let n = self.classes.len();
        (0..n)
            .map(|t| {
                let row = &self.counts[t * n..(t + 1) * n];
                let total: u64 = row.iter().sum();
                (total > 0).then(|| row[t] as f64 / total as f64)
            })
            .collect()
    }

    /// True samples per class.
    pub fn support(&self) -> Vec<u64> {
        let n = self.classes.len();
        (0..n)
            .map(|t| self.counts[t * n..(t + 1) * n].iter().sum())
            .collect()
    }

    fn to_json(&self) -> Value {
        let n = self.classes.len();
        let rows: Vec<&[u64]> = (0..n).map(|t| &self.counts[t * n..(t + 1) * n]).collect();
        json!({"classes": self.classes, "rows_true_columns_predicted": rows})
    }
}

impl TaskMetrics {
    /// The headline number (higher is better): AP, mIoU, δ < 1.25 or top-1.
    pub fn headline(&self) -> f64 {
        match self {
            TaskMetrics::Coco(e) => e.stats()[0].max(0.0),
            TaskMetrics::Segmentation { metrics, .. } => metrics.mean_iou.unwrap_or(0.0),
            TaskMetrics::Depth(d) => d.delta1,
            TaskMetrics::Classification { top1, .. } => *top1,
        }
    }

    /// The human-readable lines of `task`.
    fn summary(&self, task: Task, s: &mut String) {
        match self {
            TaskMetrics::Coco(e) => {
                let what = if task == Task::Pose {
                    "keypoint"
                } else {
                    "box"
                };
                s.push_str(&format!("{task} (COCO {what} AP, equal to pycocotools):\n"));
                push_lines(s, &e.summary());
                if e.per_category.len() > 1 {
                    s.push_str(&per_category_table(e));
                }
            }
            TaskMetrics::Segmentation { metrics, confusion } => {
                s.push_str(&format!(
                    "segmentation: mIoU {:.4}, pixel accuracy {:.4}\n",
                    metrics.mean_iou.unwrap_or(f64::NAN),
                    metrics.pixel_accuracy.unwrap_or(f64::NAN)
                ));
                per_class(s, confusion, "IoU", &metrics.per_class_iou, "pixels");
            }
            TaskMetrics::Depth(d) => s.push_str(&format!(
                "depth: AbsRel {:.4}, RMSE {:.4} m, δ<1.25 {:.4}, δ<1.25² {:.4}, δ<1.25³ {:.4}\n",
                d.abs_rel, d.rmse, d.delta1, d.delta2, d.delta3
            )),
            TaskMetrics::Classification {
                top1,
                top5,
                confusion,
            } => {
                s.push_str(&format!(
                    "classification: top-1 {top1:.4}, top-5 {top5:.4}\n"
                ));
                per_class(s, confusion, "accuracy", &confusion.recall(), "images");
            }
        }
    }

    fn to_json(&self) -> Value {
        match self {
            TaskMetrics::Coco(e) => e.to_json(),
            TaskMetrics::Segmentation {
                metrics: m,
                confusion,
            } => {
                json!({"mean_iou": m.mean_iou, "pixel_accuracy": m.pixel_accuracy, "per_class_iou": m.per_class_iou, "confusion": confusion.to_json()})
            }
            TaskMetrics::Depth(d) => {
                json!({"abs_rel": d.abs_rel, "rmse": d.rmse, "delta1": d.delta1, "delta2": d.delta2, "delta3": d.delta3})
            }
            TaskMetrics::Classification {
                top1,
                top5,
                confusion,
            } => {
                json!({"top1": top1, "top5": top5, "per_class_accuracy": confusion.recall(), "confusion": confusion.to_json()})
            }
        }
    }
}

/// Everything measured on one dataset: each evaluated task's metrics.
#[derive(Debug, Clone, Default)]
pub struct EvalReport {
    /// Images evaluated.
    pub images: usize,
    /// Where segmentation and depth were scored.
    pub resolution: Resolution,
    /// Per task.
    pub metrics: TaskMap<TaskMetrics>,
    /// Images left out because they cannot be read (`--skip-bad`), each with why; they count
    /// in no metric.
    pub left_out: Vec<String>,
}

impl EvalReport {
    /// COCO box AP.
    pub fn detection(&self) -> Option<&CocoEval> {
        match self.metrics.get(Task::Detection) {
            Some(TaskMetrics::Coco(e)) => Some(e.as_ref()),
            _ => None,
        }
    }

    /// COCO keypoint AP.
    pub fn pose(&self) -> Option<&CocoEval> {
        match self.metrics.get(Task::Pose) {
            Some(TaskMetrics::Coco(e)) => Some(e.as_ref()),
            _ => None,
        }
    }

    /// Each task's headline number (higher is better): box AP, keypoint AP, mIoU, δ < 1.25,
    /// top-1.
    pub fn headline(&self) -> TaskMap<f64> {
        self.metrics.map(|_, m| m.headline())
    }

    /// The headline number of `task` (0 when the report has none).
    pub fn headline_of(&self, task: Task) -> f64 {
        self.metrics.get(task).map_or(0.0, TaskMetrics::headline)
    }

    /// The mean of the headline numbers (the "best checkpoint" criterion).
    pub fn score(&self) -> f64 {
        let h = self.headline();
        if h.is_empty() {
            0.0
        } else {
            h.values().sum::<f64>() / h.len() as f64
        }
    }

    /// Human-readable tables: pycocotools' summary lines, then the other metrics.
    pub fn summary(&self) -> String {
        let mut s = format!("{} images\n", self.images);
        if !self.left_out.is_empty() {
            let n = self.left_out.len();
            s.push_str(&format!(
                "left out {n} image{} that cannot be read (--skip-bad): {}\n",
                if n == 1 { "" } else { "s" },
                self.left_out.join("; ")
            ));
        }
        for (task, m) in self.metrics.iter() {
            m.summary(task, &mut s);
        }
        s
    }

    /// Writes the pictures of this evaluation into `dir` (created) and returns their paths:
    /// `PR_curve_bbox.png` and `PR_curve_keypoints.png` (the interpolated precision at each
    /// recall, IoU 0.5 and 0.5:0.95, per category and over all), `confusion_matrix_segmentation.png`
    /// and `confusion_matrix_classification.png` (normalised by true class).
    pub fn write_plots(&self, dir: &std::path::Path) -> Result<Vec<std::path::PathBuf>> {
        std::fs::create_dir_all(dir).map_err(|e| crate::Error::io(dir, e))?;
        let mut written = Vec::new();
        for (task, m) in self.metrics.iter() {
            match m {
                TaskMetrics::Coco(e) => {
                    let (kind, what) = if task == Task::Pose {
                        ("keypoints", "keypoint AP (OKS)")
                    } else {
                        ("bbox", "box AP")
                    };
                    let path = dir.join(format!("PR_curve_{kind}.png"));
                    let stats = e.stats();
                    let panel = |title: &str, iou: Option<f64>, stat: usize| {
                        let classes = e
                            .per_category
                            .iter()
                            .enumerate()
                            .filter_map(|(k, c)| {
                                let ap = if iou.is_some() { c.ap50 } else { c.ap }?;
                                Some((c.name.clone(), ap, e.precision_curve(Some(k), iou)?))
                            })
                            .collect();
                        crate::charts::PrPanel {
                            title: title.into(),
                            classes,
                            mean: e
                                .precision_curve(None, iou)
                                .map(|c| (stats.get(stat).copied().unwrap_or(f64::NAN), c)),
                        }
                    };
                    crate::charts::write_pr_curves(
                        &path,
                        &format!(
                            "{task}: precision against recall, {} images; legend: {what}",
                            self.images
                        ),
                        &[
                            panel("IoU 0.5", Some(0.5), 1),
                            panel("IoU 0.5:0.95 (mean over thresholds)", None, 0),
                        ],
                    )?;
                    written.push(path);
                }
                TaskMetrics::Segmentation { confusion, .. }
                | TaskMetrics::Classification { confusion, .. } => {
                    let path = dir.join(format!("confusion_matrix_{task}.png"));
                    let unit = if task == Task::Segmentation {
                        "pixels"
                    } else {
                        "images"
                    };
                    crate::charts::write_confusion(
                        &path,
                        &format!(
                            "{task}: share of each true class's {unit}, {} images",
                            self.images
                        ),
                        &confusion.classes,
                        &confusion.counts,
                    )?;
                    written.push(path);
                }
                TaskMetrics::Depth(_) => {}
            }
        }
        Ok(written)
    }

    /// Every number as JSON (`null` for a task that was not evaluated).
    pub fn to_json(&self) -> Value {
        let mut out = json!({"images": self.images, "resolution": self.resolution.name()});
        for task in Task::ALL {
            out[task.name()] = self
                .metrics
                .get(task)
                .map_or(Value::Null, TaskMetrics::to_json);
        }
        out["score"] = self.score().into();
        out
    }
}

/// The per-category AP table printed under pycocotools' summary: name, AP, AP50, AP75 and
/// the instances of each category, one line each.
pub fn per_category_table(e: &CocoEval) -> String {
    let mut s = String::new();
    let width = e
        .per_category
        .iter()
        .map(|c| c.name.chars().count())
        .max()
        .unwrap_or(0)
        .max(8);
    s.push_str(&format!(
        " {:<width$}  {:>6}  {:>6}  {:>6}  {:>9}\n",
        "category", "AP", "AP50", "AP75", "instances"
    ));
    let cell = |v: Option<f64>| v.map_or("–".to_string(), |v| format!("{v:.3}"));
    for c in &e.per_category {
        s.push_str(&format!(
            " {:<width$}  {:>6}  {:>6}  {:>6}  {:>9}\n",
            c.name,
            cell(c.ap),
            cell(c.ap50),
            cell(c.ap75),
            c.num_gt
        ));
    }
    s
}

/// One line per class: its name, `values[class]` under `what`, and its true samples.
fn per_class(s: &mut String, c: &Confusion, what: &str, values: &[Option<f64>], unit: &str) {
    let width = c
        .classes
        .iter()
        .map(|n| n.chars().count())
        .max()
        .unwrap_or(0)
        .max(5);
    s.push_str(&format!(" {:<width$}  {what:>8}  {unit:>10}\n", "class"));
    for ((name, v), n) in c.classes.iter().zip(values).zip(c.support()) {
        let v = v.map_or("–".to_string(), |v| format!("{v:.4}"));
        s.push_str(&format!(" {name:<width$}  {v:>8}  {n:>10}\n"));
    }
}

fn push_lines(s: &mut String, lines: &str) {
    s.push_str(lines);
    if !lines.ends_with('\n') {
        s.push('\n');
    }
}

/// Maps a box from network-input pixels back to the original image, clipped to it.
pub fn to_original(bbox: [f32; 4], transform: &Affine, (w, h): (u32, u32)) -> [f64; 4] {
    let inv = transform.inverse().unwrap_or(Affine::IDENTITY);
    let (x1, y1) = inv.apply(bbox[0] as f64, bbox[1] as f64);
    let (x2, y2) = inv.apply(bbox[2] as f64, bbox[3] as f64);
    let (x1, x2) = (
        x1.min(x2).clamp(0.0, w as f64),
        x1.max(x2).clamp(0.0, w as f64),
    );
    let (y1, y2) = (
        y1.min(y2).clamp(0.0, h as f64),
        y1.max(y2).clamp(0.0, h as f64),
    );
    [x1, y1, x2 - x1, y2 - y1]
}

/// Detections and keypoints of one batch as COCO result records (original image pixels).
pub fn result_records(
    model: &MultiTaskModel,
    out: &Outputs,
    batch: &Batch,
) -> Result<(Vec<ResultRecord>, Vec<ResultRecord>)> {
    let classes = &model.config().classes;
    let mut boxes = Vec::new();
    let mut people = Vec::new();
    if let (Some(head), Some(o)) = (model.detection(), out.detection()) {
        for (dets, meta) in head.decode(o)?.iter().zip(&batch.meta) {
            for d in dets {
                boxes.push(ResultRecord {
                    image_id: meta.image_id as i64,
                    category_id: classes.category_ids[d.class] as i64,
                    score: d.score as f64,
                    bbox: Some(to_original(d.bbox, &meta.transform, meta.original_size)),
                    segmentation: None,
                    keypoints: None,
                });
            }
        }
    }
    if let (Some(head), Some(o), Some(person)) = (model.pose(), out.pose(), classes.pose_category())
    {
        for (dets, meta) in head.decode(o)?.iter().zip(&batch.meta) {
            let inv = meta.transform.inverse().unwrap_or(Affine::IDENTITY);
            for d in dets {
                let keypoints = d
                    .payload
                    .iter()
                    .flat_map(|k| {
                        let (x, y) = inv.apply(k[0] as f64, k[1] as f64);
                        [x, y, 1.0]
                    })
                    .collect();
                people.push(ResultRecord {
                    image_id: meta.image_id as i64,
                    category_id: person.id as i64,
                    score: d.score as f64,
                    bbox: None,
                    segmentation: None,
                    keypoints: Some(keypoints),
                });
            }
        }
    }
    Ok((boxes, people))
}

/// A relative depth prediction aligned to the target as it was trained: `s·log p + t` fitted to
/// the log target by least squares over valid pixels, then exponentiated.
pub fn align_log_depth(pred: &[f32], log_target: &[f32], valid: &[f32]) -> Vec<f32> {
    let (mut n, mut sx, mut sy, mut sxx, mut sxy) = (0f64, 0f64, 0f64, 0f64, 0f64);
    for ((&p, &t), &v) in pred.iter().zip(log_target).zip(valid) {
        if v > 0.0 && p > 0.0 {
            let x = (p as f64).ln();
            n += 1.0;
            sx += x;
            sy += t as f64;
            sxx += x * x;
            sxy += x * t as f64;
        }
    }
    let det = n * sxx - sx * sx;
    let (s, t) = if n > 0.0 && det.abs() > 1e-12 {
        let s = (n * sxy - sx * sy) / det;
        (s, (sy - s * sx) / n)
    } else if n > 0.0 {
        (1.0, (sy - sx) / n)
    } else {
        (1.0, 0.0)
    };
    pred.iter()
        .map(|&p| (s * (p.max(1e-12) as f64).ln() + t).exp() as f32)
        .collect()
}

/// Each task's mean training loss on `dataset` (evaluation mode, letterboxed, no augmentation):
/// how far the model is from the real labels, a finer signal than the metrics early in training.
pub fn evaluate_loss(
    model: &MultiTaskModel,
    dataset: Arc<Dataset>,
    size: u32,
    batch_size: usize,
) -> Result<TaskMap<f64>> {
    let losses = loss_in(
        &mustard_core::dist::Single,
        model,
        dataset,
        size,
        batch_size,
    )?;
    Ok(losses.expect("one process averages its own losses"))
}

/// [`evaluate_loss`] split over the processes of this run as [`evaluate_shared`] splits an
/// evaluation: each process's batches, the losses added in batch order on rank 0 (`None` on the
/// others).
pub fn evaluate_loss_shared(
    model: &MultiTaskModel,
    dataset: Arc<Dataset>,
    size: u32,
    batch_size: usize,
) -> Result<Option<TaskMap<f64>>> {
    let world = mustard_core::dist::world();
    loss_in(world.as_ref(), model, dataset, size, batch_size)
}

fn loss_in(
    world: &dyn mustard_core::dist::Collective,
    model: &MultiTaskModel,
    dataset: Arc<Dataset>,
    size: u32,
    batch_size: usize,
) -> Result<Option<TaskMap<f64>>> {
    let model = &model.for_inference()?;
    let encoder = model.encoder_for(dataset.as_ref(), size);
    let loader = Loader::new(
        dataset,
        Arc::new(encoder),
        LoaderConfig::eval(batch_size, size),
    )?;
    // Each batch's loss of each task, in batch order.
    let mut values: Vec<(Task, f64)> = Vec::new();
    let batches = mustard_core::dist::share(loader.batches_per_epoch(), world.rank(), world.size());
    for batch in loader.epoch_batches(0, batches) {
        let batch = batch?.for_model(model)?;
        let out = model.forward_t(&batch.images, false)?;
        for (task, loss) in model.loss(&out, &batch)?.per_task {
            let v = loss
                .to_dtype(mustard_core::candle_core::DType::F64)?
                .to_scalar::<f64>()?;
            values.push((task, v));
        }
    }
    if world.size() > 1 {
        let mut w = wire::Writer::default();
        for (task, v) in &values {
            w.u64(Task::ALL.iter().position(|t| t == task).expect("a task") as u64);
            w.f64(*v);
        }
        let parts = world.gather(0, &w.0)?;
        if world.rank() != 0 {
            return Ok(None);
        }
        values.clear();
        for (rank, part) in parts.iter().enumerate() {
            let mut r = wire::Reader::new(part);
            let unreadable = |e: String| {
                crate::Error::Process(format!(
                    "the losses of process {rank} of {} could not be read: {e}",
                    world.size()
                ))
            };
            for _ in 0..part.len() / 16 {
                let task = Task::ALL
                    .get(r.u64().map_err(unreadable)? as usize)
                    .copied()
                    .ok_or_else(|| unreadable("an unknown task".into()))?;
                values.push((task, r.f64().map_err(unreadable)?));
            }
            r.end().map_err(unreadable)?;
        }
    }
    let mut sums: TaskMap<(f64, usize)> = TaskMap::new();
    for (task, v) in values {
        match sums.get_mut(task) {
            Some(e) => {
                e.0 += v;
                e.1 += 1;
            }
            None => {
                sums.insert(task, (v, 1));
            }
        }
    }
    Ok(Some(sums.map(|_, &(v, n)| v / n.max(1) as f64)))
}

/// Evaluates `model` on `dataset` at `size` x `size` (letterboxed, no augmentation).
pub fn evaluate(
    model: &MultiTaskModel,
    dataset: Arc<Dataset>,
    size: u32,
    batch_size: usize,
    workers: Option<usize>,
    skip_bad: bool,
) -> Result<EvalReport> {
    evaluate_at(
        model,
        dataset,
        size,
        batch_size,
        workers,
        Resolution::Original,
        skip_bad,
    )
}

/// Where segmentation and depth are scored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Resolution {
    /// At each image's original size, as the datasets' official evaluations do: the outputs
    /// are resampled (bilinearly, logits before the argmax) onto the original pixels and
    /// compared with the label and depth maps as they are on disk.
    #[default]
    Original,
    /// At the network's input size against the letterboxed labels: faster (no second decode),
    /// used for validation during training.
    Network,
}

impl Resolution {
    /// `original` or `network`.
    pub fn name(self) -> &'static str {
        match self {
            Resolution::Original => "original",
            Resolution::Network => "network",
        }
    }
}

/// [`evaluate`] with segmentation and depth scored at `resolution`, in this process alone.
pub fn evaluate_at(
    model: &MultiTaskModel,
    dataset: Arc<Dataset>,
    size: u32,
    batch_size: usize,
    workers: Option<usize>,
    resolution: Resolution,
    skip_bad: bool,
) -> Result<EvalReport> {
    let settings = (size, batch_size, workers, resolution, skip_bad);
    let report = evaluate_in(&mustard_core::dist::Single, model, dataset, settings)?;
    Ok(report.expect("one process scores its own evaluation"))
}

/// [`evaluate_at`] split over the processes of this run ([`mustard_core::dist::world`]): each
/// runs the model on a contiguous range of the batches (the batches one process would make),
/// rank 0 gathers what they found in rank order and scores it once (COCO AP over every
/// detection, depth errors added image by image in the dataset's order), so the numbers are
/// those of one process, bit for bit. Every process calls it; the report comes back on rank 0,
/// `None` on the others.
pub fn evaluate_shared(
    model: &MultiTaskModel,
    dataset: Arc<Dataset>,
    size: u32,
    batch_size: usize,
    workers: Option<usize>,
    resolution: Resolution,
    skip_bad: bool,
) -> Result<Option<EvalReport>> {
    let world = mustard_core::dist::world();
    let settings = (size, batch_size, workers, resolution, skip_bad);
    evaluate_in(world.as_ref(), model, dataset, settings)
}

/// The input size, batch size, loader threads, resolution and `skip_bad` of an evaluation.
type Settings = (u32, usize, Option<usize>, Resolution, bool);

fn evaluate_in(
    world: &dyn mustard_core::dist::Collective,
    model: &MultiTaskModel,
    dataset: Arc<Dataset>,
    (size, batch_size, workers, resolution, skip_bad): Settings,
) -> Result<Option<EvalReport>> {
    let config = LoaderConfig {
        threads: workers,
        skip_bad,
        ..LoaderConfig::eval(batch_size, size)
    };
    let model = &model.for_inference()?;
    let encoder = model.encoder_for(dataset.as_ref(), size);
    let loader = Loader::new(dataset.clone(), Arc::new(encoder), config)?;
    let fresh = || {
        let mut acc = Accumulator::new(model);
        acc.resolution = resolution;
        if resolution == Resolution::Original {
            acc.originals = Some(Originals {
                index: (0..dataset.len())
                    .map(|i| (dataset.image(i).id, i))
                    .collect(),
                map: crate::tasks::SourceMap::new(&model.config().classes, dataset.as_ref()),
                dataset: dataset.clone(),
            });
        }
        acc
    };
    let mut acc = fresh();
    let batches = mustard_core::dist::share(loader.batches_per_epoch(), world.rank(), world.size());
    for batch in loader.epoch_batches(0, batches) {
        acc.add(model, &batch?)?;
    }
    for (i, why) in loader.skipped() {
        acc.left_out.insert(dataset.image(i).id);
        acc.reasons.push(why);
    }
    if world.size() > 1 {
        let parts = world.gather(0, &acc.part())?;
        if world.rank() != 0 {
            return Ok(None);
        }
        acc = fresh();
        for (rank, part) in parts.iter().enumerate() {
            acc.merge(part).map_err(|e| {
                crate::Error::Process(format!(
                    "the evaluation of process {rank} of {} could not be read: {e}",
                    world.size()
                ))
            })?;
        }
    }
    let reasons = std::mem::take(&mut acc.reasons);
    let mut report = acc.finish(model, &dataset)?;
    report.left_out = reasons;
    Ok(Some(report))
}

/// The dataset again, for the label and depth maps at their original size.
struct Originals {
    dataset: Arc<Dataset>,
    index: std::collections::HashMap<u64, usize>,
    map: crate::tasks::SourceMap,
}

impl Originals {
    fn load(&self, image_id: u64) -> Result<mustard_data::Sample> {
        let i = *self.index.get(&image_id).ok_or_else(|| {
            crate::Error::file(
                self.dataset.path(),
                format!("image {image_id} of a batch is not in the dataset"),
            )
        })?;
        Ok(self.dataset.load(i)?)
    }
}

/// The samples of one batch, loaded from the dataset when first needed.
struct Loaded(Vec<Option<mustard_data::Sample>>);

impl Loaded {
    fn get(&mut self, o: &Originals, b: usize, image_id: u64) -> Result<&mustard_data::Sample> {
        if self.0[b].is_none() {
            self.0[b] = Some(o.load(image_id)?);
        }
        Ok(self.0[b].as_ref().expect("loaded above"))
    }
}

/// Where an original pixel's centre falls in a network map of side `side`: the four
/// neighbours and their bilinear weights (edges clamped).
fn bilinear_at(t: &Affine, x: u32, y: u32, side: usize) -> [(usize, f32); 4] {
    let (u, v) = t.apply(f64::from(x) + 0.5, f64::from(y) + 0.5);
    let max = (side - 1) as f64;
    let (fx, fy) = ((u - 0.5).clamp(0.0, max), (v - 0.5).clamp(0.0, max));
    let (x0, y0) = (fx.floor(), fy.floor());
    let (ax, ay) = ((fx - x0) as f32, (fy - y0) as f32);
    let (x0, y0) = (x0 as usize, y0 as usize);
    let (x1, y1) = ((x0 + 1).min(side - 1), (y0 + 1).min(side - 1));
    [
        (y0 * side + x0, (1.0 - ax) * (1.0 - ay)),
        (y0 * side + x1, ax * (1.0 - ay)),
        (y1 * side + x0, (1.0 - ax) * ay),
        (y1 * side + x1, ax * ay),
    ]
}

/// The class of every original pixel: per-class logits (`maps[c][row][col]`, the network's
/// input size) sampled bilinearly at the pixel's centre, then the argmax (first of equals).
fn argmax_at_original(maps: &[Vec<Vec<f32>>], t: &Affine, w: u32, h: u32) -> Vec<u32> {
    let side = maps.first().map_or(0, Vec::len);
    let flat: Vec<Vec<f32>> = maps.iter().map(|m| m.concat()).collect();
    let mut out = Vec::with_capacity((w * h) as usize);
    for y in 0..h {
        for x in 0..w {
            let taps = bilinear_at(t, x, y, side);
            let mut best = (0u32, f32::NEG_INFINITY);
            for (c, m) in flat.iter().enumerate() {
                let v: f32 = taps.iter().map(|&(i, wt)| m[i] * wt).sum();
                if v > best.1 {
                    best = (c as u32, v);
                }
            }
            out.push(best.0);
        }
    }
    out
}

/// A network-size map (`side` x `side`, row-major) sampled bilinearly at every original pixel.
fn resample_at_original(map: &[f32], side: usize, t: &Affine, w: u32, h: u32) -> Vec<f32> {
    let mut out = Vec::with_capacity((w * h) as usize);
    for y in 0..h {
        for x in 0..w {
            out.push(
                bilinear_at(t, x, y, side)
                    .iter()
                    .map(|&(i, wt)| map[i] * wt)
                    .sum(),
            );
        }
    }
    out
}

/// What evaluation collects batch by batch: COCO result records, the segmentation confusion
/// matrix, depth errors and classification accuracy.
struct Accumulator {
    resolution: Resolution,
    originals: Option<Originals>,
    images: usize,
    boxes: Vec<ResultRecord>,
    people: Vec<ResultRecord>,
    confusion: ConfusionMatrix,
    /// Each depth image's errors, in the order of the images (`None`: no valid pixel), added
    /// up at the end: the same sums whichever processes computed them.
    depth: Vec<Option<mustard_eval::DepthMetrics>>,
    accuracy: ClassificationAccuracy,
    labels: ConfusionMatrix,
    /// Ids of the images left out (not scored against their ground truth either).
    left_out: std::collections::HashSet<u64>,
    /// Why each was left out, in the dataset's order.
    reasons: Vec<String>,
}

impl Accumulator {
    fn new(model: &MultiTaskModel) -> Self {
        let classes = model.config().classes.segmentation_classes().len();
        Self {
            resolution: Resolution::Network,
            originals: None,
            images: 0,
            boxes: Vec::new(),
            people: Vec::new(),
            confusion: ConfusionMatrix::with_ignore_index(classes, Some(IGNORE as u64)),
            depth: Vec::new(),
            accuracy: ClassificationAccuracy::new(),
            labels: ConfusionMatrix::with_ignore_index(model.config().classes.labels.len(), None),
            left_out: Default::default(),
            reasons: Vec::new(),
        }
    }

    /// What this process found, for rank 0 ([`Accumulator::merge`]): exact values, in order.
    fn part(&self) -> Vec<u8> {
        let mut w = wire::Writer::default();
        w.u64(self.images as u64);
        for records in [&self.boxes, &self.people] {
            w.u64(records.len() as u64);
            for r in records.iter() {
                w.record(r);
            }
        }
        w.counts(self.confusion.counts());
        w.u64(self.depth.len() as u64);
        for m in &self.depth {
            match m {
                Some(m) => {
                    w.u64(1);
                    for v in [m.abs_rel, m.rmse, m.delta1, m.delta2, m.delta3] {
                        w.f64(v);
                    }
                }
                None => w.u64(0),
            }
        }
        w.counts(&self.accuracy.counts());
        w.counts(self.labels.counts());
        w.u64(self.reasons.len() as u64);
        let mut ids: Vec<u64> = self.left_out.iter().copied().collect();
        ids.sort_unstable();
        w.counts(&ids);
        for why in &self.reasons {
            w.text(why);
        }
        w.0
    }

    /// Adds another process's [`Accumulator::part`] after what this one holds.
    fn merge(&mut self, part: &[u8]) -> std::result::Result<(), String> {
        let mut r = wire::Reader::new(part);
        self.images += r.u64()? as usize;
        for records in [&mut self.boxes, &mut self.people] {
            for _ in 0..r.u64()? {
                records.push(r.record()?);
            }
        }
        self.confusion
            .add_counts(&r.counts()?)
            .map_err(|e| e.to_string())?;
        for _ in 0..r.u64()? {
            self.depth.push(match r.u64()? {
                0 => None,
                _ => Some(mustard_eval::DepthMetrics {
                    abs_rel: r.f64()?,
                    rmse: r.f64()?,
                    delta1: r.f64()?,
                    delta2: r.f64()?,
                    delta3: r.f64()?,
                }),
            });
        }
        let counts: [u64; 3] = r
            .counts()?
            .try_into()
            .map_err(|_| "classification counts are not three numbers".to_string())?;
        self.accuracy
            .merge(&ClassificationAccuracy::from_counts(counts).map_err(|e| e.to_string())?);
        self.labels
            .add_counts(&r.counts()?)
            .map_err(|e| e.to_string())?;
        let reasons = r.u64()?;
        self.left_out.extend(r.counts()?);
        for _ in 0..reasons {
            self.reasons.push(r.text()?);
        }
        r.end()
    }

    /// Runs the model on `batch` and adds its predictions against the batch's labels.
    fn add(&mut self, model: &MultiTaskModel, batch: &Batch) -> Result<()> {
        self.images += batch.meta.len();
        // On the model's device; the images go into its float type in `forward_t`, the labels
        // stay f32 as the metrics read them.
        let batch = &batch.to_device(model.device())?;
        // Each image's maps at their original size, decoded once for segmentation and depth.
        let mut originals = Loaded(vec![None; batch.meta.len()]);
        let out = model.infer(&batch.images)?;
        let (b, p) = result_records(model, &out, batch)?;
        let keep = |r: &ResultRecord, t: Task| {
            batch
                .meta
                .iter()
                .any(|m| m.image_id as i64 == r.image_id && m.tasks.contains(t))
        };
        self.boxes
            .extend(b.into_iter().filter(|r| keep(r, Task::Detection)));
        self.people
            .extend(p.into_iter().filter(|r| keep(r, Task::Pose)));
        if let (Some(head), Some(logits), Some(t)) = (
            model.segmentation(),
            out.segmentation(),
            batch.targets.segmentation(),
        ) {
            if let Some(o) = &self.originals {
                for (b, m) in batch.meta.iter().enumerate() {
                    if !m.tasks.contains(Task::Segmentation) {
                        continue;
                    }
                    let Some(labels) = originals.get(o, b, m.image_id)?.semantic.clone() else {
                        continue;
                    };
                    let (w, h) = labels.dimensions();
                    let target: Vec<u32> = labels
                        .as_raw()
                        .iter()
                        .map(|&v| u32::from(o.map.segmentation_class(v)))
                        .collect();
                    let maps = logits.get(b)?.to_vec3::<f32>()?;
                    let pred = argmax_at_original(&maps, &m.transform, w, h);
                    self.confusion.update(&target, &pred)?;
                }
            } else {
                let pred = head.decode(logits)?;
                let target = t.labels.flatten_from(1)?.to_vec2::<u32>()?;
                for (p, t) in pred.iter().zip(&target) {
                    let p: Vec<u32> = p.iter().map(|&v| v as u32).collect();
                    self.confusion.update(t, &p)?;
                }
            }
        }
        if let (Some(head), Some(pred), Some(t)) =
            (model.depth(), out.depth(), batch.targets.depth())
        {
            let decoded = head.decode(pred)?;
            let relative = model.config().relative_depth;
            if let Some(o) = &self.originals {
                let side = pred.dim(3)?;
                for (b, m) in batch.meta.iter().enumerate() {
                    if !m.tasks.contains(Task::Depth) {
                        continue;
                    }
                    let Some(depth) = originals.get(o, b, m.image_id)?.depth.clone() else {
                        continue;
                    };
                    let (w, h) = depth.dimensions();
                    let target = depth.into_raw();
                    if target.iter().all(|&d| d <= 0.0) {
                        continue;
                    }
                    let p = resample_at_original(&decoded[b], side, &m.transform, w, h);
                    if relative {
                        let log: Vec<f32> = target
                            .iter()
                            .map(|&d| if d > 0.0 { d.ln() } else { 0.0 })
                            .collect();
                        let valid: Vec<f32> = target
                            .iter()
                            .map(|&d| f32::from(u8::from(d > 0.0)))
                            .collect();
                        depth_image(&mut self.depth, &align_log_depth(&p, &log, &valid), &target)?;
                    } else {
                        depth_image(&mut self.depth, &p, &target)?;
                    }
                }
            } else {
                self.add_depth(&decoded, t, relative)?;
            }
        }
        if let (Some(logits), Some(t)) = (out.classification(), batch.targets.classification()) {
            let presence = t.presence.to_vec1::<f32>()?;
            let targets = t.probs.argmax(1)?.to_vec1::<u32>()?;
            let scores = logits.to_vec2::<f32>()?;
            for ((row, &target), &p) in scores.iter().zip(&targets).zip(&presence) {
                if p > 0.0 {
                    self.accuracy.update(row, row.len(), &[target])?;
                    let best = (0..row.len())
                        .max_by(|&a, &b| row[a].total_cmp(&row[b]).then(b.cmp(&a)))
                        .unwrap_or(0) as u32;
                    self.labels.update(&[target], &[best])?;
                }
            }
        }
        Ok(())
    }

    fn add_depth(
        &mut self,
        pred: &[Vec<f32>],
        t: &mustard_heads::depth::DepthBatch,
        relative: bool,
    ) -> Result<()> {
        let log = t.log_depth.flatten_from(1)?.to_vec2::<f32>()?;
        let valid = t.valid.flatten_from(1)?.to_vec2::<f32>()?;
        for ((p, l), v) in pred.iter().zip(&log).zip(&valid) {
            if v.iter().all(|&x| x == 0.0) {
                continue;
            }
            // Unknown depth is 0, which the metric skips (≤ min_depth).
            let target: Vec<f32> = l
                .iter()
                .zip(v)
                .map(|(&l, &v)| if v > 0.0 { l.exp() } else { 0.0 })
                .collect();
            if relative {
                depth_image(&mut self.depth, &align_log_depth(p, l, v), &target)?;
            } else {
                depth_image(&mut self.depth, p, &target)?;
            }
        }
        Ok(())
    }

    /// The report of every task of the model.
    fn finish(self, model: &MultiTaskModel, dataset: &Dataset) -> Result<EvalReport> {
        let tasks = &model.config().tasks;
        let mut report = EvalReport {
            images: self.images,
            resolution: self.resolution,
            ..Default::default()
        };
        // The ground truth is read once, when the first COCO task needs it.
        let mut gt: Option<CocoGt> = None;
        let m = &mut report.metrics;
        if tasks.contains(&Task::Detection) {
            if let Some(e) = coco(
                model,
                dataset,
                &mut gt,
                self.boxes,
                Task::Detection,
                &self.left_out,
            )? {
                m.insert(Task::Detection, TaskMetrics::Coco(Box::new(e)));
            }
        }
        if tasks.contains(&Task::Pose) {
            if let Some(e) = coco(
                model,
                dataset,
                &mut gt,
                self.people,
                Task::Pose,
                &self.left_out,
            )? {
                m.insert(Task::Pose, TaskMetrics::Coco(Box::new(e)));
            }
        }
        let classes = &model.config().classes;
        if tasks.contains(&Task::Segmentation) && self.confusion.counts().iter().any(|&c| c > 0) {
            m.insert(
                Task::Segmentation,
                TaskMetrics::Segmentation {
                    metrics: self.confusion.metrics(),
                    confusion: Confusion::of(&self.confusion, &classes.segmentation_classes()),
                },
            );
        }
        let mut depth = DepthAccumulator::new(mustard_eval::DepthConfig::default());
        self.depth.iter().for_each(|&m| depth.add(m));
        if let (true, Some(d)) = (tasks.contains(&Task::Depth), depth.mean()) {
            m.insert(Task::Depth, TaskMetrics::Depth(d));
        }
        if let (true, Some(top1), Some(top5)) = (
            tasks.contains(&Task::Classification),
            self.accuracy.top1(),
            self.accuracy.top5(),
        ) {
            m.insert(
                Task::Classification,
                TaskMetrics::Classification {
                    top1,
                    top5,
                    confusion: Confusion::of(&self.labels, &classes.labels),
                },
            );
        }
        Ok(report)
    }
}

/// COCO AP of `records` (boxes for detection, people for pose) on the images labelled for
/// `task`; `None` when no image is.
fn coco(
    model: &MultiTaskModel,
    dataset: &Dataset,
    gt: &mut Option<CocoGt>,
    records: Vec<ResultRecord>,
    task: Task,
    left_out: &std::collections::HashSet<u64>,
) -> Result<Option<CocoEval>> {
    let ids: Vec<i64> = (0..dataset.len())
        .filter(|&i| dataset.tasks(i).contains(task) && !left_out.contains(&dataset.image(i).id))
        .map(|i| dataset.image(i).id as i64)
        .collect();
    if ids.is_empty() {
        return Ok(None);
    }
    let gt = match gt {
        Some(gt) => gt,
        slot => slot.insert(CocoGt::from_path(dataset.path())?),
    };
    let dt = CocoDt::from_records(gt, records, format!("{task} predictions"))?;
    let iou = if task == Task::Pose {
        IouType::Keypoints
    } else {
        IouType::Bbox
    };
    let mut params = Params::new(iou);
    params.img_ids = Some(ids);
    if task == Task::Pose {
        let classes = &model.config().classes;
        params.cat_ids = classes.pose_category().map(|p| vec![p.id as i64]);
    }
    Ok(Some(mustard_eval::evaluate(gt, &dt, &params)?))
}

/// One image's depth errors, after those of the images before it.
fn depth_image(
    depth: &mut Vec<Option<mustard_eval::DepthMetrics>>,
    prediction: &[f32],
    target: &[f32],
) -> Result<()> {
    let config = mustard_eval::DepthConfig::default();
    depth.push(mustard_eval::depth_metrics(prediction, target, &config)?);
    Ok(())
}

/// The little-endian encoding of what an evaluation process sends rank 0: numbers as their
/// bits, so nothing is rounded on the way.
mod wire {
    use mustard_eval::coco::ResultRecord;

    #[derive(Default)]
    pub(super) struct Writer(pub(super) Vec<u8>);

    impl Writer {
        pub(super) fn u64(&mut self, v: u64) {
            self.0.extend_from_slice(&v.to_le_bytes());
        }
        pub(super) fn f64(&mut self, v: f64) {
            self.0.extend_from_slice(&v.to_le_bytes());
        }
        pub(super) fn counts(&mut self, v: &[u64]) {
            self.u64(v.len() as u64);
            v.iter().for_each(|&c| self.u64(c));
        }
        pub(super) fn text(&mut self, v: &str) {
            self.u64(v.len() as u64);
            self.0.extend_from_slice(v.as_bytes());
        }
        /// A box or keypoints result (evaluation makes no mask results).
        pub(super) fn record(&mut self, r: &ResultRecord) {
            self.u64(r.image_id as u64);
            self.u64(r.category_id as u64);
            self.f64(r.score);
            match &r.bbox {
                Some(b) => {
                    self.u64(1);
                    b.iter().for_each(|&v| self.f64(v));
                }
                None => self.u64(0),
            }
            match &r.keypoints {
                Some(k) => {
                    self.u64(k.len() as u64 + 1);
                    k.iter().for_each(|&v| self.f64(v));
                }
                None => self.u64(0),
            }
        }
    }

    pub(super) struct Reader<'a> {
        bytes: &'a [u8],
        at: usize,
    }

    impl<'a> Reader<'a> {
        pub(super) fn new(bytes: &'a [u8]) -> Self {
            Reader { bytes, at: 0 }
        }
        fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
            let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len());
            let end = end.ok_or_else(|| {
                format!("{} bytes end before byte {}", self.bytes.len(), self.at + n)
            })?;
            let part = &self.bytes[self.at..end];
            self.at = end;
            Ok(part)
        }
        pub(super) fn u64(&mut self) -> Result<u64, String> {
            Ok(u64::from_le_bytes(
                self.take(8)?.try_into().expect("8 bytes"),
            ))
        }
        pub(super) fn f64(&mut self) -> Result<f64, String> {
            Ok(f64::from_bits(self.u64()?))
        }
        fn len(&mut self) -> Result<usize, String> {
            let n = self.u64()?;
            usize::try_from(n)
                .ok()
                .filter(|&n| n <= self.bytes.len())
                .ok_or_else(|| format!("a length of {n} in {} bytes", self.bytes.len()))
        }
        pub(super) fn counts(&mut self) -> Result<Vec<u64>, String> {
            (0..self.len()?).map(|_| self.u64()).collect()
        }
        pub(super) fn text(&mut self) -> Result<String, String> {
            let n = self.len()?;
            Ok(String::from_utf8_lossy(self.take(n)?).into_owned())
        }
        pub(super) fn record(&mut self) -> Result<ResultRecord, String> {
            let (image_id, category_id) = (self.u64()? as i64, self.u64()? as i64);
            let score = self.f64()?;
            let bbox = match self.u64()? {
                0 => None,
                _ => Some([self.f64()?, self.f64()?, self.f64()?, self.f64()?]),
            };
            let keypoints = match self.len()? {
                0 => None,
                n => Some((1..n).map(|_| self.f64()).collect::<Result<Vec<_>, _>>()?),
            };
            Ok(ResultRecord {
                image_id,
                category_id,
                score,
                bbox,
                segmentation: None,
                keypoints,
            })
        }
        pub(super) fn end(&self) -> Result<(), String> {
            if self.at == self.bytes.len() {
                Ok(())
            } else {
                Err(format!("{} bytes left over", self.bytes.len() - self.at))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a process sends rank 0 comes back bit for bit, and a cut message is an error.
    #[test]
    fn evaluation_parts_travel_exactly() {
        let records = [
            ResultRecord {
                image_id: 7,
                category_id: 3,
                score: 0.1 + 0.2,
                bbox: Some([1.0 / 3.0, -0.0, 5e-324, 1e300]),
                segmentation: None,
                keypoints: None,
            },
            ResultRecord {
                image_id: -1,
                category_id: 1,
                score: f64::MIN_POSITIVE,
                bbox: None,
                segmentation: None,
                keypoints: Some(vec![0.5, 2.0 / 3.0, 2.0]),
            },
            ResultRecord {
                image_id: i64::MAX,
                category_id: 0,
                score: 1.0,
                bbox: Some([0.0; 4]),
                segmentation: None,
                keypoints: Some(Vec::new()),
            },
        ];
        let mut w = wire::Writer::default();
        records.iter().for_each(|r| w.record(r));
        w.counts(&[3, 0, u64::MAX]);
        w.text("a.png: truncated");
        let mut r = wire::Reader::new(&w.0);
        for want in &records {
            let got = r.record().unwrap();
            assert_eq!(got, *want);
            let bits = |v: &Option<[f64; 4]>| v.map(|b| b.map(f64::to_bits));
            assert_eq!(bits(&got.bbox), bits(&want.bbox));
            assert_eq!(got.score.to_bits(), want.score.to_bits());
        }
        assert_eq!(r.counts().unwrap(), [3, 0, u64::MAX]);
        assert_eq!(r.text().unwrap(), "a.png: truncated");
        r.end().unwrap();
        let mut cut = wire::Reader::new(&w.0[..w.0.len() - 3]);
        for _ in &records {
            cut.record().unwrap();
        }
        cut.counts().unwrap();
        assert_eq!(
            cut.text().unwrap_err(),
            format!("{} bytes end before byte {}", w.0.len() - 3, w.0.len())
        );
    }

    /// At the identity (an image already at the input size) the original-resolution path gives
    /// the network's values exactly; at half the size it interpolates between pixel centres.
    #[test]
    fn outputs_resample_onto_the_original_pixels() {
        let map: Vec<f32> = vec![0.0, 1.0, 2.0, 3.0];
        let same = resample_at_original(&map, 2, &Affine::IDENTITY, 2, 2);
        assert_eq!(same, map);
        // A 4x4 original letterboxed into a 2x2 input: original → network scales by 1/2.
        let half = Affine::scale_translate(0.5, 0.5, 0.0, 0.0);
        let up = resample_at_original(&map, 2, &half, 4, 4);
        // Pixel centres 0.5, 1.5, 2.5, 3.5 land at 0.25, 0.75, 1.25, 1.75 − 0.5 (clamped).
        assert_eq!(
            up,
            [
                0.0, 0.25, 0.75, 1.0, //
                0.5, 0.75, 1.25, 1.5, //
                1.5, 1.75, 2.25, 2.5, //
                2.0, 2.25, 2.75, 3.0,
            ]
        );
        // Two classes: the logits are interpolated before the argmax.
        let logits = vec![
            vec![vec![1.0, 0.0], vec![1.0, 0.0]],
            vec![vec![0.0, 1.0], vec![0.0, 1.0]],
        ];
        assert_eq!(
            argmax_at_original(&logits, &Affine::IDENTITY, 2, 2),
            [0, 1, 0, 1]
        );
        assert_eq!(
            argmax_at_original(&logits, &half, 4, 1),
            [0, 0, 1, 1],
            "0.25 and 0.75 of the way: class 0 then class 1"
        );
    }
}
