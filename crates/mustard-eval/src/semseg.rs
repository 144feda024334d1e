//! Semantic segmentation: a confusion matrix accumulated over a dataset, and the per-class IoU,
//! mean IoU and pixel accuracy derived from it (the dataset-wide definition of mmsegmentation
//! and torchmetrics, not a mean of per-image scores).

use rayon::prelude::*;
use serde::Serialize;

use crate::{Error, Result};

/// The label of pixels that are not evaluated, by convention.
pub const IGNORE_INDEX: u64 = 255;

/// Pixels per parallel chunk of [`ConfusionMatrix::update`].
const CHUNK: usize = 1 << 16;

/// Counts of (target, prediction) label pairs, streamed image by image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfusionMatrix {
    num_classes: usize,
    ignore_index: Option<u64>,
    counts: Vec<u64>,
}

/// The metrics of a [`ConfusionMatrix`].
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SegmentationMetrics {
    /// IoU per class: TP / (TP + FP + FN); `None` for a class absent from both targets and
    /// predictions.
    pub per_class_iou: Vec<Option<f64>>,
    /// The mean of the per-class IoUs that are not `None`.
    pub mean_iou: Option<f64>,
    /// Correct pixels over evaluated pixels.
    pub pixel_accuracy: Option<f64>,
}

impl ConfusionMatrix {
    /// An empty matrix for labels `0..num_classes`, ignoring target label 255.
    pub fn new(num_classes: usize) -> Self {
        Self::with_ignore_index(num_classes, Some(IGNORE_INDEX))
    }

    /// An empty matrix with another ignored target label, or none.
    pub fn with_ignore_index(num_classes: usize, ignore_index: Option<u64>) -> Self {
        ConfusionMatrix {
            num_classes,
            ignore_index,
            counts: vec![0; num_classes * num_classes],
        }
    }

    /// The number of classes.
    pub fn num_classes(&self) -> usize {
        self.num_classes
    }

    /// `counts[target * num_classes + prediction]`.
    pub fn counts(&self) -> &[u64] {
        &self.counts
    }

    /// Adds the pixels of one image (or batch): `target` and `prediction` hold one label per
    /// pixel, in the same order. Target pixels with the ignore label are skipped. On error the
    /// matrix is unchanged.
    pub fn update<T: Copy + Into<u64> + Sync>(
        &mut self,
        target: &[T],
        prediction: &[T],
    ) -> Result<()> {
        const OP: &str = "ConfusionMatrix::update";
        if target.len() != prediction.len() {
            return Err(Error::input(
                OP,
                format!(
                    "the target has {} pixels but the prediction has {}",
                    target.len(),
                    prediction.len()
                ),
            ));
        }
        let n = self.num_classes as u64;
        let ignore = self.ignore_index;
        for (i, (&t, &p)) in target.iter().zip(prediction).enumerate() {
            let (t, p) = (t.into(), p.into());
            if Some(t) == ignore {
                continue;
            }
            if t >= n {
                return Err(Error::input(
                    OP,
                    format!("target label {t} at pixel {i} is neither a class (0..{n}) nor the ignore label"),
                ));
            }
            if p >= n {
                return Err(Error::input(
                    OP,
                    format!("predicted label {p} at pixel {i} is not a class (0..{n})"),
                ));
            }
        }
        let k = self.num_classes;
        let delta = target
            .par_chunks(CHUNK)
            .zip(prediction.par_chunks(CHUNK))
            .fold(
                || vec![0u64; k * k],
                |mut acc, (ts, ps)| {
                    for (&t, &p) in ts.iter().zip(ps) {
                        let (t, p) = (t.into(), p.into());
                        if Some(t) != ignore {
                            acc[t as usize * k + p as usize] += 1;
                        }
                    }
                    acc
                },
            )
            .reduce(
                || vec![0u64; k * k],
                |mut a, b| {
                    a.iter_mut().zip(&b).for_each(|(x, y)| *x += y);
                    a
                },
            );
        self.counts
            .iter_mut()
            .zip(&delta)
            .for_each(|(x, y)| *x += y);
        Ok(())
    }

    /// Adds the counts of another matrix (e.g. of another worker).
    pub fn merge(&mut self, other: &ConfusionMatrix) -> Result<()> {
        if other.num_classes != self.num_classes {
            return Err(Error::input(
                "ConfusionMatrix::merge",
                format!(
                    "matrices of {} and {} classes",
                    self.num_classes, other.num_classes
                ),
            ));
        }
        self.counts
            .iter_mut()
            .zip(&other.counts)
            .for_each(|(x, y)| *x += y);
        Ok(())
    }

    /// Adds counts laid out as [`ConfusionMatrix::counts`] (another matrix's, sent by another
    /// process, say).
    pub fn add_counts(&mut self, counts: &[u64]) -> Result<()> {
        if counts.len() != self.counts.len() {
            return Err(Error::input(
                "ConfusionMatrix::add_counts",
                format!(
                    "{} counts for a matrix of {} classes ({} counts)",
                    counts.len(),
                    self.num_classes,
                    self.counts.len()
                ),
            ));
        }
        self.counts
            .iter_mut()
            .zip(counts)
            .for_each(|(x, y)| *x += y);
        Ok(())
    }

    /// IoU per class (see [`SegmentationMetrics::per_class_iou`]).
    pub fn iou_per_class(&self) -> Vec<Option<f64>> {
        let k = self.num_classes;
        (0..k)
            .map(|c| {
                let tp = self.counts[c * k + c];
                let target: u64 = self.counts[c * k..(c + 1) * k].iter().sum();
                let predicted: u64 = (0..k).map(|r| self.counts[r * k + c]).sum();
                let union = target + predicted - tp;
                (union > 0).then(|| tp as f64 / union as f64)
            })
            .collect()
    }

    /// Mean IoU over the classes present in targets or predictions.
    pub fn mean_iou(&self) -> Option<f64> {
        let ious: Vec<f64> = self.iou_per_class().into_iter().flatten().collect();
        (!ious.is_empty()).then(|| ious.iter().sum::<f64>() / ious.len() as f64)
    }

    /// Correct pixels over evaluated pixels; `None` before any pixel.
    pub fn pixel_accuracy(&self) -> Option<f64> {
        let k = self.num_classes;
        let total: u64 = self.counts.iter().sum();
        let correct: u64 = (0..k).map(|c| self.counts[c * k + c]).sum();
        (total > 0).then(|| correct as f64 / total as f64)
    }

    /// All metrics at once.
    pub fn metrics(&self) -> SegmentationMetrics {
        SegmentationMetrics {
            per_class_iou: self.iou_per_class(),
            mean_iou: self.mean_iou(),
            pixel_accuracy: self.pixel_accuracy(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iou_and_accuracy_by_hand() {
        // Pairs (target, prediction): (0,0) (0,1) (1,1) (1,1) (2,0), and one ignored pixel.
        let mut cm = ConfusionMatrix::new(4);
        cm.update(&[0u8, 0, 1, 1, 2, 255], &[0u8, 1, 1, 1, 0, 2])
            .unwrap();
        assert_eq!(
            cm.counts(),
            [1, 1, 0, 0, 0, 2, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0]
        );
        // Class 0: TP 1, target 2, predicted 2 -> 1/3. Class 1: 2 / (2 + 3 - 2). Class 2: 0 / 1.
        // Class 3 never appears and is left out of the mean.
        assert_eq!(
            cm.iou_per_class(),
            [Some(1.0 / 3.0), Some(2.0 / 3.0), Some(0.0), None]
        );
        assert_eq!(cm.mean_iou(), Some((1.0 / 3.0 + 2.0 / 3.0 + 0.0) / 3.0));
        assert_eq!(cm.pixel_accuracy(), Some(0.6));
        // Streaming in two parts gives the same matrix.
        let mut parts = ConfusionMatrix::new(4);
        parts.update(&[0u8, 0, 1], &[0u8, 1, 1]).unwrap();
        let mut other = ConfusionMatrix::new(4);
        other.update(&[1u8, 2, 255], &[1u8, 0, 2]).unwrap();
        parts.merge(&other).unwrap();
        assert_eq!(parts, cm);
    }

    #[test]
    fn large_inputs_are_counted_in_parallel_chunks() {
        let n = 3 * CHUNK + 17;
        let target: Vec<u32> = (0..n as u32).map(|i| i % 3).collect();
        let prediction: Vec<u32> = (0..n as u32).map(|i| (i / 2) % 3).collect();
        let mut cm = ConfusionMatrix::with_ignore_index(3, None);
        cm.update(&target, &prediction).unwrap();
        let mut expected = vec![0u64; 9];
        for (t, p) in target.iter().zip(&prediction) {
            expected[*t as usize * 3 + *p as usize] += 1;
        }
        assert_eq!(cm.counts(), expected);
    }

    #[test]
    fn bad_labels_are_errors_and_leave_the_matrix_unchanged() {
        let mut cm = ConfusionMatrix::new(3);
        assert_eq!(
            cm.update(&[0u8, 7], &[0u8, 1]).unwrap_err().to_string(),
            "ConfusionMatrix::update: target label 7 at pixel 1 is neither a class (0..3) nor the ignore label"
        );
        assert_eq!(
            cm.update(&[0u8, 1], &[0u8, 255]).unwrap_err().to_string(),
            "ConfusionMatrix::update: predicted label 255 at pixel 1 is not a class (0..3)"
        );
        assert_eq!(
            cm.update(&[0u8], &[0u8, 1]).unwrap_err().to_string(),
            "ConfusionMatrix::update: the target has 1 pixels but the prediction has 2"
        );
        assert_eq!(
            cm.merge(&ConfusionMatrix::new(2)).unwrap_err().to_string(),
            "ConfusionMatrix::merge: matrices of 3 and 2 classes"
        );
        assert_eq!(cm.counts(), [0; 9]);
        assert_eq!(cm.mean_iou(), None);
        assert_eq!(cm.pixel_accuracy(), None);
    }
}
