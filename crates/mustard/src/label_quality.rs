//! How good a pseudo-label store is, against the true labels of its images: box and person
//! recall and precision at each score threshold, the segmentation maps' agreement, the depth
//! maps' δ < 1.25 and the class labels' top-1 (`mustard data labels STORE --truth FILE`).
//!
//! A user with labels for part of the unlabelled pool sees what each teacher gets right before
//! training a student on it; the MuST study uses it to tell lost boxes from a weak student.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::Path;

use mustard_data::{Dataset, Label, Task};
use mustard_eval::{ConfusionMatrix, DepthAccumulator, DepthAlignment, DepthConfig};
use mustard_pseudo::{PseudoBox, Store};

use crate::{Error, Result};

/// The score thresholds the box tables are cut at.
pub const THRESHOLDS: [f32; 9] = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9];

/// Recall and precision of one kind of box (detection's shapes, or the pose teacher's people)
/// at IoU 0.5, per score threshold.
#[derive(Debug, Clone, PartialEq)]
pub struct BoxQuality {
    /// True boxes over the images.
    pub truth: usize,
    /// Per threshold of [`THRESHOLDS`]: stored boxes at or above it, those that match a true
    /// box, recall and precision.
    pub rows: Vec<BoxRow>,
}

/// One threshold of a [`BoxQuality`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BoxRow {
    /// The score threshold.
    pub threshold: f32,
    /// Stored boxes scoring at least `threshold`.
    pub kept: usize,
    /// Of those, boxes matched to a true box of their class (IoU ≥ 0.5, each true box once).
    pub matched: usize,
    /// `matched / truth`.
    pub recall: f64,
    /// `matched / kept` (`NaN` when nothing is kept).
    pub precision: f64,
}

/// Every task's agreement of a store with the truth.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelQuality {
    /// Images compared.
    pub images: usize,
    /// The store's detection threshold (no box below it was kept).
    pub detection_threshold: f32,
    /// Boxes of the detection teacher.
    pub detection: Option<BoxQuality>,
    /// People of the pose teacher.
    pub people: Option<BoxQuality>,
    /// Segmentation: mIoU and pixel accuracy of the stored maps over the pixels they label, and
    /// the share of pixels they label (the rest were left unsure).
    pub segmentation: Option<(f64, f64, f64)>,
    /// Depth: δ < 1.25 after scaling each map by the median ratio (the store keeps relative
    /// depth).
    pub depth: Option<f64>,
    /// Classification: how often the stored distribution's top class is the true label.
    pub classification: Option<f64>,
}

fn iou(a: &[f32; 4], b: &[f32; 4]) -> f64 {
    let w = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0) as f64;
    let h = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0) as f64;
    let inter = w * h;
    let area = |r: &[f32; 4]| ((r[2] - r[0]).max(0.0) * (r[3] - r[1]).max(0.0)) as f64;
    let union = area(a) + area(b) - inter;
    if union > 0.0 {
        inter / union
    } else {
        0.0
    }
}

/// Each stored box's score and whether it matches a true box: per image and class, boxes in
/// descending score take the unmatched true box they overlap most, at IoU ≥ 0.5 (so the boxes
/// above any threshold are matched as if the others did not exist).
fn match_boxes(stored: &[PseudoBox], truth: &[([f32; 4], usize)]) -> Vec<(f32, bool)> {
    let mut order: Vec<usize> = (0..stored.len()).collect();
    order.sort_by(|&a, &b| stored[b].score.total_cmp(&stored[a].score).then(a.cmp(&b)));
    let mut taken = vec![false; truth.len()];
    order
        .into_iter()
        .map(|i| {
            let b = &stored[i];
            let best = truth
                .iter()
                .enumerate()
                .filter(|(j, t)| !taken[*j] && t.1 == b.class)
                .map(|(j, t)| (j, iou(&b.bbox, &t.0)))
                .filter(|&(_, v)| v >= 0.5)
                .max_by(|x, y| x.1.total_cmp(&y.1).then(y.0.cmp(&x.0)));
            if let Some((j, _)) = best {
                taken[j] = true;
            }
            (b.score, best.is_some())
        })
        .collect()
}

fn box_quality(scored: &[(f32, bool)], truth: usize) -> BoxQuality {
    let rows = THRESHOLDS
        .iter()
        .map(|&threshold| {
            let kept = scored.iter().filter(|s| s.0 >= threshold).count();
            let matched = scored.iter().filter(|s| s.0 >= threshold && s.1).count();
            BoxRow {
                threshold,
                kept,
                matched,
                recall: matched as f64 / truth.max(1) as f64,
                precision: if kept > 0 {
                    matched as f64 / kept as f64
                } else {
                    f64::NAN
                },
            }
        })
        .collect();
    BoxQuality { truth, rows }
}

/// Compares the store in `dir` with `truth` (the same images with true labels, in the store's
/// label spaces by name: categories, `seg_classes`, `label_names`).
pub fn label_quality(dir: &Path, truth: &Dataset) -> Result<LabelQuality> {
    let store = Store::open(dir)?;
    let m = store.manifest().clone();
    let by_id: HashMap<u64, usize> = (0..truth.len()).map(|i| (truth.image(i).id, i)).collect();
    // Index of each store name in the truth's lists.
    let lookup = |ours: &[String], theirs: &[String], what: &str| -> Result<Vec<Option<usize>>> {
        let mapped: Vec<Option<usize>> = ours
            .iter()
            .map(|n| theirs.iter().position(|t| t == n))
            .collect();
        if !ours.is_empty() && mapped.iter().all(Option::is_none) {
            return Err(Error::file(
                truth.path(),
                format!(
                    "none of the store's {what} ({}) is in this file ({})",
                    ours.join(", "),
                    theirs.join(", ")
                ),
            ));
        }
        Ok(mapped)
    };
    let names =
        |c: &[mustard_data::coco::Category]| c.iter().map(|c| c.name.clone()).collect::<Vec<_>>();
    let categories = lookup(
        &names(&m.categories),
        &names(truth.categories()),
        "categories",
    )?;
    let file = truth.file();
    let seg = lookup(&m.seg_classes, &file.seg_classes, "segmentation classes")?;
    let labels = lookup(&m.label_names, &file.label_names, "class labels")?;
    let tasks = m.task_set();
    let (mut det, mut people) = (Vec::new(), Vec::new());
    let (mut det_truth, mut people_truth) = (0, 0);
    let mut confusion = ConfusionMatrix::new(m.seg_classes.len());
    let (mut labelled_pixels, mut pixels) = (0u64, 0u64);
    let mut depth = DepthAccumulator::new(DepthConfig {
        alignment: DepthAlignment::Median,
        ..DepthConfig::default()
    });
    let (mut correct, mut classified) = (0usize, 0usize);
    let mut images = 0;
    for k in 0..m.shards() {
        for (id, stored) in store.read_shard(k)? {
            let i = *by_id.get(&id).ok_or_else(|| {
                Error::file(
                    truth.path(),
                    format!("image {id} of the store is not in this file"),
                )
            })?;
            let sample = truth.load(i)?;
            images += 1;
            // The truth's objects in the store's category indices: people, or everything else.
            let truth_of = |people: bool| -> Vec<([f32; 4], usize)> {
                sample
                    .objects
                    .iter()
                    .filter(|o| !o.crowd)
                    .filter_map(|o| {
                        let class = categories.iter().position(|&c| c == Some(o.class))?;
                        (people == (Some(class) == m.person())).then_some((o.bbox, class))
                    })
                    .collect()
            };
            if tasks.contains(Task::Detection) && sample.tasks.contains(Task::Detection) {
                let t = truth_of(false);
                det_truth += t.len();
                det.extend(match_boxes(&stored.boxes, &t));
            }
            if tasks.contains(Task::Pose) && sample.tasks.contains(Task::Pose) {
                let t = truth_of(true);
                people_truth += t.len();
                people.extend(match_boxes(&stored.people, &t));
            }
            if let (Some(ours), Some(theirs)) = (&stored.semantic, &sample.semantic) {
                if ours.dimensions() == theirs.dimensions() {
                    let (mut t, mut p) = (Vec::new(), Vec::new());
                    for (&a, &b) in ours.as_raw().iter().zip(theirs.as_raw()) {
                        pixels += 1;
                        let truth_class = seg.iter().position(|&c| c == Some(b as usize));
                        if a == 255 {
                            continue;
                        }
                        labelled_pixels += 1;
                        if let Some(tc) = truth_class {
                            t.push(tc as u32);
                            p.push(u32::from(a));
                        }
                    }
                    confusion.update(&t, &p)?;
                }
            }
            if let (Some(ours), Some(theirs)) = (&stored.depth, &sample.depth) {
                if ours.dimensions() == theirs.dimensions() {
                    depth.update(ours.as_raw(), theirs.as_raw())?;
                }
            }
            if let (Some(probs), Some(Label::Class(c))) = (&stored.classes, &sample.label) {
                let top =
                    (0..probs.len()).max_by(|&a, &b| probs[a].total_cmp(&probs[b]).then(b.cmp(&a)));
                if probs.iter().any(|&p| p > 0.0) {
                    classified += 1;
                    correct += usize::from(top.and_then(|t| labels[t]) == Some(*c as usize));
                }
            }
        }
    }
    let seg_metrics = confusion.metrics();
    Ok(LabelQuality {
        images,
        detection_threshold: m.thresholds.detection as f32,
        detection: (det_truth > 0).then(|| box_quality(&det, det_truth)),
        people: (people_truth > 0).then(|| box_quality(&people, people_truth)),
        segmentation: match (seg_metrics.mean_iou, seg_metrics.pixel_accuracy) {
            (Some(miou), Some(acc)) if pixels > 0 => {
                Some((miou, acc, labelled_pixels as f64 / pixels as f64))
            }
            _ => None,
        },
        depth: depth.mean().map(|d| d.delta1),
        classification: (classified > 0).then(|| correct as f64 / classified as f64),
    })
}

impl LabelQuality {
    /// The tables `mustard data labels` prints.
    pub fn summary(&self) -> String {
        let mut s = format!("{} images\n", self.images);
        for (name, q) in [
            ("detection boxes", &self.detection),
            ("pose people", &self.people),
        ] {
            let Some(q) = q else { continue };
            let _ = writeln!(
                s,
                "{name}: {} true boxes; recall and precision at IoU 0.5 by score threshold (the store kept none below {:.2})",
                q.truth, self.detection_threshold
            );
            let _ = writeln!(s, " threshold   kept  matched  recall  precision");
            for r in &q.rows {
                let _ = writeln!(
                    s,
                    " {:>9.1} {:>6} {:>8} {:>7.3} {:>10.3}",
                    r.threshold, r.kept, r.matched, r.recall, r.precision
                );
            }
        }
        if let Some((miou, acc, share)) = self.segmentation {
            let _ = writeln!(
                s,
                "segmentation: mIoU {miou:.4}, pixel accuracy {acc:.4} over the {:.1}% of pixels labelled",
                share * 100.0
            );
        }
        if let Some(d) = self.depth {
            let _ = writeln!(
                s,
                "depth: δ<1.25 {d:.4} (each map scaled by its median ratio)"
            );
        }
        if let Some(c) = self.classification {
            let _ = writeln!(s, "classification: top-1 {c:.4}");
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pb(bbox: [f32; 4], score: f32, class: usize) -> PseudoBox {
        PseudoBox {
            bbox,
            score,
            class,
            keypoints: None,
        }
    }

    /// The best-scoring box takes the true box; a duplicate below it is a false positive; a box
    /// of another class never matches; thresholds cut the same matching.
    #[test]
    fn boxes_match_greedily_by_score_within_their_class() {
        let truth = [([0.0, 0.0, 10.0, 10.0], 0), ([20.0, 20.0, 30.0, 30.0], 1)];
        let stored = [
            pb([1.0, 0.0, 10.0, 10.0], 0.3, 0),
            pb([0.0, 0.0, 10.0, 10.0], 0.9, 0),
            pb([20.0, 20.0, 30.0, 30.0], 0.8, 0),
            pb([20.0, 20.0, 29.0, 30.0], 0.15, 1),
        ];
        let scored = match_boxes(&stored, &truth);
        assert_eq!(
            scored,
            [(0.9, true), (0.8, false), (0.3, false), (0.15, true)]
        );
        let q = box_quality(&scored, truth.len());
        let at = |t: f32| *q.rows.iter().find(|r| r.threshold == t).unwrap();
        assert_eq!((at(0.1).kept, at(0.1).matched), (4, 2));
        assert_eq!((at(0.1).recall, at(0.1).precision), (1.0, 0.5));
        assert_eq!((at(0.5).kept, at(0.5).matched, at(0.5).recall), (2, 1, 0.5));
        assert_eq!(at(0.9).precision, 1.0);
        assert!(q.rows.last().unwrap().kept == 1);
        // IoU of the 9-wide box with the 10-wide one: 90 / 100.
        assert!((iou(&[1.0, 0.0, 10.0, 10.0], &[0.0, 0.0, 10.0, 10.0]) - 0.9).abs() < 1e-12);
    }
}
