//! Classification: top-1 and top-5 accuracy, streamed batch by batch.
//!
//! The rank of the target class is the number of classes with a higher score plus those with
//! an equal score and a lower index (a stable sort by descending score); a sample is correct at
//! `k` when that rank is below `k`.

use serde::Serialize;

use crate::{Error, Result};

/// Correct-at-1 and correct-at-5 counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ClassificationAccuracy {
    samples: u64,
    top1: u64,
    top5: u64,
}

const OP: &str = "ClassificationAccuracy::update";

impl ClassificationAccuracy {
    /// No samples yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a batch: `scores` is row-major `[targets.len(), num_classes]` (logits or
    /// probabilities), `targets` the class of each row. On error nothing is counted.
    pub fn update<T: Copy + Into<f64>>(
        &mut self,
        scores: &[T],
        num_classes: usize,
        targets: &[u32],
    ) -> Result<()> {
        if num_classes == 0 || scores.len() != targets.len() * num_classes {
            return Err(Error::input(
                OP,
                format!(
                    "{} scores do not form {} rows of {num_classes} classes",
                    scores.len(),
                    targets.len()
                ),
            ));
        }
        let mut batch = ClassificationAccuracy::default();
        for (i, (row, &target)) in scores.chunks(num_classes).zip(targets).enumerate() {
            let c = target as usize;
            if c >= num_classes {
                return Err(Error::input(
                    OP,
                    format!("target {target} of sample {i} is not a class (0..{num_classes})"),
                ));
            }
            let s: f64 = row[c].into();
            let mut rank = 0;
            for (j, &x) in row.iter().enumerate() {
                let x: f64 = x.into();
                if x.is_nan() {
                    return Err(Error::input(
                        OP,
                        format!("score of class {j} for sample {i} is NaN"),
                    ));
                }
                if x > s || (x == s && j < c) {
                    rank += 1;
                }
            }
            batch.samples += 1;
            batch.top1 += u64::from(rank < 1);
            batch.top5 += u64::from(rank < 5);
        }
        self.merge(&batch);
        Ok(())
    }

    /// The samples, correct at 1 and correct at 5, as [`ClassificationAccuracy::from_counts`]
    /// takes them.
    pub fn counts(&self) -> [u64; 3] {
        [self.samples, self.top1, self.top5]
    }

    /// The accuracy of given counts (samples, correct at 1, correct at 5); an error when the
    /// correct counts exceed the samples or top-1 exceeds top-5.
    pub fn from_counts([samples, top1, top5]: [u64; 3]) -> Result<Self> {
        if top1 > top5 || top5 > samples {
            return Err(Error::input(
                "ClassificationAccuracy::from_counts",
                format!("{top1} correct at 1 and {top5} at 5 of {samples} samples"),
            ));
        }
        Ok(Self {
            samples,
            top1,
            top5,
        })
    }

    /// Adds the counts of another accumulator.
    pub fn merge(&mut self, other: &ClassificationAccuracy) {
        self.samples += other.samples;
        self.top1 += other.top1;
        self.top5 += other.top5;
    }

    /// Samples seen.
    pub fn samples(&self) -> u64 {
        self.samples
    }

    /// Top-1 accuracy; `None` before the first sample.
    pub fn top1(&self) -> Option<f64> {
        (self.samples > 0).then(|| self.top1 as f64 / self.samples as f64)
    }

    /// Top-5 accuracy; `None` before the first sample.
    pub fn top5(&self) -> Option<f64> {
        (self.samples > 0).then(|| self.top5 as f64 / self.samples as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top1_top5_by_hand() {
        let scores: [f32; 14] = [
            // Target 3 has the highest score: correct at 1 and 5.
            0.1, 0.5, 0.2, 0.9, 0.0, 0.3, 0.05, //
            // Target 6 (0.2) is beaten by 0.9, 0.5, 0.3 and tied with class 2 (lower index):
            // rank 4, correct at 5 only.
            0.1, 0.5, 0.2, 0.9, 0.0, 0.3, 0.2,
        ];
        let mut acc = ClassificationAccuracy::new();
        acc.update(&scores, 7, &[3, 6]).unwrap();
        assert_eq!((acc.top1(), acc.top5()), (Some(0.5), Some(1.0)));
        // Target 4 (0.0) has rank 6: wrong at both.
        acc.update(&scores[..7], 7, &[4]).unwrap();
        assert_eq!(acc.samples(), 3);
        assert_eq!((acc.top1(), acc.top5()), (Some(1.0 / 3.0), Some(2.0 / 3.0)));
        // Ties go to the lower index: target 0 of equal scores is first, target 1 second.
        let mut ties = ClassificationAccuracy::new();
        ties.update(&[1.0f64, 1.0, 1.0, 1.0], 2, &[0, 1]).unwrap();
        assert_eq!(ties.top1(), Some(0.5));
        assert_eq!(ClassificationAccuracy::new().top1(), None);
    }

    #[test]
    fn bad_batches_are_errors() {
        let mut acc = ClassificationAccuracy::new();
        assert_eq!(
            acc.update(&[0.0f32; 5], 2, &[0, 1])
                .unwrap_err()
                .to_string(),
            "ClassificationAccuracy::update: 5 scores do not form 2 rows of 2 classes"
        );
        assert_eq!(
            acc.update(&[0.0f32; 4], 2, &[0, 2])
                .unwrap_err()
                .to_string(),
            "ClassificationAccuracy::update: target 2 of sample 1 is not a class (0..2)"
        );
        assert_eq!(
            acc.update(&[0.0, f64::NAN], 2, &[0])
                .unwrap_err()
                .to_string(),
            "ClassificationAccuracy::update: score of class 1 for sample 0 is NaN"
        );
        assert_eq!(acc.samples(), 0);
    }
}
