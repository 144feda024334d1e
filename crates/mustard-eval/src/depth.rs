//! Monocular depth: AbsRel, RMSE and the δ < 1.25ⁱ accuracies of Eigen et al. ("Depth Map
//! Prediction from a Single Image using a Multi-Scale Deep Network",
//! <https://arxiv.org/abs/1406.2283>), computed per image on the pixels with valid ground truth
//! and averaged over images (the protocol of Monodepth2 and most papers).
//!
//! Relative-depth predictions are first aligned to the ground truth: by the ratio of medians,
//! by a least-squares scale, or by a least-squares scale and shift (in depth space). The
//! aligned prediction is then clamped to `[min_depth, max_depth]`.

use serde::Serialize;

use crate::{Error, Result};

/// How a prediction is aligned to the ground truth before the errors are measured.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub enum DepthAlignment {
    /// Metric depth: no alignment.
    #[default]
    None,
    /// Multiply by median(target) / median(prediction).
    Median,
    /// Multiply by the `s` minimising Σ (s·p − t)².
    LeastSquaresScale,
    /// Map to `s·p + b` with `s, b` minimising Σ (s·p + b − t)².
    LeastSquaresScaleShift,
}

/// Which pixels count and how predictions are aligned.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct DepthConfig {
    /// Alignment of the prediction.
    pub alignment: DepthAlignment,
    /// Pixels with target depth ≤ `min_depth` are not evaluated; predictions are clamped to
    /// at least this. Must be positive.
    pub min_depth: f64,
    /// Pixels with target depth ≥ `max_depth` are not evaluated; predictions are clamped to
    /// at most this (e.g. 10 m for NYUv2, 80 m for KITTI).
    pub max_depth: f64,
}

impl Default for DepthConfig {
    /// No alignment, `min_depth` 1e-3, no maximum.
    fn default() -> Self {
        DepthConfig {
            alignment: DepthAlignment::None,
            min_depth: 1e-3,
            max_depth: f64::INFINITY,
        }
    }
}

/// The depth metrics of one image, or their mean over images.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct DepthMetrics {
    /// mean(|p − t| / t).
    pub abs_rel: f64,
    /// sqrt(mean((p − t)²)).
    pub rmse: f64,
    /// Fraction of pixels with max(p / t, t / p) < 1.25.
    pub delta1: f64,
    /// … < 1.25².
    pub delta2: f64,
    /// … < 1.25³.
    pub delta3: f64,
}

const OP: &str = "depth_metrics";

/// The metrics of one image: `prediction` and `target` hold one depth per pixel in the same
/// order. `Ok(None)` when no pixel has a valid target; an error for inputs of different
/// lengths, a prediction that is not finite at a valid pixel, or an alignment without a
/// solution (e.g. a constant prediction for scale and shift).
pub fn depth_metrics<T: Copy + Into<f64>>(
    prediction: &[T],
    target: &[T],
    config: &DepthConfig,
) -> Result<Option<DepthMetrics>> {
    let DepthConfig {
        alignment,
        min_depth,
        max_depth,
    } = *config;
    if !(min_depth > 0.0 && max_depth > min_depth) {
        return Err(Error::input(
            OP,
            format!("min_depth {min_depth} and max_depth {max_depth} must satisfy 0 < min < max"),
        ));
    }
    if prediction.len() != target.len() {
        return Err(Error::input(
            OP,
            format!(
                "the prediction has {} pixels but the target has {}",
                prediction.len(),
                target.len()
            ),
        ));
    }
    let mut pairs = Vec::with_capacity(target.len());
    for (i, (&p, &t)) in prediction.iter().zip(target).enumerate() {
        let (p, t): (f64, f64) = (p.into(), t.into());
        if !(t > min_depth && t < max_depth) {
            continue;
        }
        if !p.is_finite() {
            return Err(Error::input(
                OP,
                format!("the prediction at pixel {i} is {p}"),
            ));
        }
        pairs.push((p, t));
    }
    if pairs.is_empty() {
        return Ok(None);
    }
    let (scale, shift) = align(&pairs, alignment)?;
    let n = pairs.len() as f64;
    let (mut abs_rel, mut sq, mut d1, mut d2, mut d3) = (0.0, 0.0, 0u64, 0u64, 0u64);
    for &(p, t) in &pairs {
        let p = (scale * p + shift).clamp(min_depth, max_depth);
        abs_rel += (p - t).abs() / t;
        sq += (p - t) * (p - t);
        let ratio = (p / t).max(t / p);
        d1 += u64::from(ratio < 1.25);
        d2 += u64::from(ratio < 1.25 * 1.25);
        d3 += u64::from(ratio < 1.25 * 1.25 * 1.25);
    }
    Ok(Some(DepthMetrics {
        abs_rel: abs_rel / n,
        rmse: (sq / n).sqrt(),
        delta1: d1 as f64 / n,
        delta2: d2 as f64 / n,
        delta3: d3 as f64 / n,
    }))
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

/// `(scale, shift)` of the alignment.
fn align(pairs: &[(f64, f64)], alignment: DepthAlignment) -> Result<(f64, f64)> {
    let unsolvable = |what: &str| {
        Error::input(
            OP,
            format!(
                "{what} alignment has no solution: {}",
                match alignment {
                    DepthAlignment::Median => "the median prediction is not positive",
                    _ => "the prediction is constant or zero on the valid pixels",
                }
            ),
        )
    };
    match alignment {
        DepthAlignment::None => Ok((1.0, 0.0)),
        DepthAlignment::Median => {
            let mp = median(pairs.iter().map(|&(p, _)| p).collect());
            let mt = median(pairs.iter().map(|&(_, t)| t).collect());
            if mp > 0.0 {
                Ok((mt / mp, 0.0))
            } else {
                Err(unsolvable("median"))
            }
        }
        DepthAlignment::LeastSquaresScale => {
            let pp: f64 = pairs.iter().map(|&(p, _)| p * p).sum();
            let pt: f64 = pairs.iter().map(|&(p, t)| p * t).sum();
            if pp > 0.0 {
                Ok((pt / pp, 0.0))
            } else {
                Err(unsolvable("least-squares scale"))
            }
        }
        DepthAlignment::LeastSquaresScaleShift => {
            let n = pairs.len() as f64;
            let (mut sp, mut st, mut spp, mut spt) = (0.0, 0.0, 0.0, 0.0);
            for &(p, t) in pairs {
                sp += p;
                st += t;
                spp += p * p;
                spt += p * t;
            }
            let det = spp * n - sp * sp;
            if det > 0.0 {
                Ok(((n * spt - sp * st) / det, (spp * st - sp * spt) / det))
            } else {
                Err(unsolvable("least-squares scale-and-shift"))
            }
        }
    }
}

/// Averages per-image [`DepthMetrics`] over a dataset.
#[derive(Clone, Debug, PartialEq)]
pub struct DepthAccumulator {
    config: DepthConfig,
    sum: DepthMetrics,
    images: u64,
    skipped: u64,
}

impl DepthAccumulator {
    /// An empty accumulator.
    pub fn new(config: DepthConfig) -> Self {
        DepthAccumulator {
            config,
            sum: DepthMetrics {
                abs_rel: 0.0,
                rmse: 0.0,
                delta1: 0.0,
                delta2: 0.0,
                delta3: 0.0,
            },
            images: 0,
            skipped: 0,
        }
    }

    /// Adds one image; images without a valid target pixel are counted as skipped.
    pub fn update<T: Copy + Into<f64>>(&mut self, prediction: &[T], target: &[T]) -> Result<()> {
        self.add(depth_metrics(prediction, target, &self.config)?);
        Ok(())
    }

    /// Adds one image's metrics as [`depth_metrics`] returned them (computed elsewhere: by
    /// another process, say); `None` counts as skipped. Images added in the same order give
    /// the same mean, bit for bit.
    pub fn add(&mut self, metrics: Option<DepthMetrics>) {
        match metrics {
            Some(m) => {
                self.sum.abs_rel += m.abs_rel;
                self.sum.rmse += m.rmse;
                self.sum.delta1 += m.delta1;
                self.sum.delta2 += m.delta2;
                self.sum.delta3 += m.delta3;
                self.images += 1;
            }
            None => self.skipped += 1,
        }
    }

    /// The configuration its images are scored with.
    pub fn config(&self) -> &DepthConfig {
        &self.config
    }

    /// Images evaluated so far.
    pub fn images(&self) -> u64 {
        self.images
    }

    /// Images without a valid target pixel.
    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    /// The mean of the per-image metrics; `None` before the first evaluated image.
    pub fn mean(&self) -> Option<DepthMetrics> {
        let n = self.images as f64;
        (self.images > 0).then(|| DepthMetrics {
            abs_rel: self.sum.abs_rel / n,
            rmse: self.sum.rmse / n,
            delta1: self.sum.delta1 / n,
            delta2: self.sum.delta2 / n,
            delta3: self.sum.delta3 / n,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics(p: &[f64], t: &[f64], alignment: DepthAlignment) -> DepthMetrics {
        let config = DepthConfig {
            alignment,
            ..DepthConfig::default()
        };
        depth_metrics(p, t, &config).unwrap().unwrap()
    }

    #[test]
    fn metric_depth_by_hand() {
        // Ratios 1, 1, 2: two of three pixels within every δ; |Δ|/t = 0, 0, 0.5; Δ² = 0, 0, 4.
        let m = metrics(&[1.0, 2.0, 2.0], &[1.0, 2.0, 4.0], DepthAlignment::None);
        assert_eq!(
            m,
            DepthMetrics {
                abs_rel: 0.5 / 3.0,
                rmse: (4.0f64 / 3.0).sqrt(),
                delta1: 2.0 / 3.0,
                delta2: 2.0 / 3.0,
                delta3: 2.0 / 3.0,
            }
        );
        // Ratio 1.5 passes δ2 (< 1.5625) but not δ1; 1.9 passes δ3 (< 1.953125) only.
        let m = metrics(&[1.5, 1.9], &[1.0, 1.0], DepthAlignment::None);
        assert_eq!((m.delta1, m.delta2, m.delta3), (0.0, 0.5, 1.0));
    }

    #[test]
    fn alignments_by_hand() {
        // Half the depth: the median ratio is 2 and the result exact.
        let m = metrics(&[0.5, 1.0, 2.0], &[1.0, 2.0, 4.0], DepthAlignment::Median);
        assert_eq!((m.abs_rel, m.rmse, m.delta1), (0.0, 0.0, 1.0));
        // Constant prediction 1 against 1, 2, 3: s = Σpt / Σp² = 6 / 3 = 2, p' = 2.
        let m = metrics(
            &[1.0, 1.0, 1.0],
            &[1.0, 2.0, 3.0],
            DepthAlignment::LeastSquaresScale,
        );
        assert_eq!(m.abs_rel, (1.0 + 0.0 + 1.0 / 3.0) / 3.0);
        assert_eq!(m.rmse, (2.0f64 / 3.0).sqrt());
        // p = 2t + 1: s = 0.5, b = -0.5 recovers t exactly (det = 83·3 − 15² = 24).
        let m = metrics(
            &[3.0, 5.0, 7.0],
            &[1.0, 2.0, 3.0],
            DepthAlignment::LeastSquaresScaleShift,
        );
        assert_eq!((m.abs_rel, m.rmse, m.delta1), (0.0, 0.0, 1.0));
    }

    #[test]
    fn invalid_pixels_are_skipped_and_bad_input_rejected() {
        let config = DepthConfig {
            max_depth: 10.0,
            ..DepthConfig::default()
        };
        // Targets 0 and 10 are outside (min, max); the prediction 20 is clamped to 10.
        let m = depth_metrics(&[f64::NAN, 20.0, 3.0, 1.0], &[0.0, 5.0, 3.0, 10.0], &config)
            .unwrap()
            .unwrap();
        assert_eq!(m.abs_rel, (1.0 + 0.0) / 2.0);
        assert_eq!(depth_metrics(&[1.0f32], &[0.0f32], &config).unwrap(), None);
        assert_eq!(
            depth_metrics(&[f64::NAN], &[1.0], &config)
                .unwrap_err()
                .to_string(),
            "depth_metrics: the prediction at pixel 0 is NaN"
        );
        assert_eq!(
            depth_metrics(&[1.0], &[1.0, 2.0], &config)
                .unwrap_err()
                .to_string(),
            "depth_metrics: the prediction has 1 pixels but the target has 2"
        );
        let shift = DepthConfig {
            alignment: DepthAlignment::LeastSquaresScaleShift,
            ..config
        };
        assert_eq!(
            depth_metrics(&[2.0, 2.0], &[1.0, 3.0], &shift)
                .unwrap_err()
                .to_string(),
            "depth_metrics: least-squares scale-and-shift alignment has no solution: the prediction is constant or zero on the valid pixels"
        );
        let zero = DepthConfig {
            min_depth: 0.0,
            ..config
        };
        assert_eq!(
            depth_metrics(&[1.0], &[1.0], &zero)
                .unwrap_err()
                .to_string(),
            "depth_metrics: min_depth 0 and max_depth 10 must satisfy 0 < min < max"
        );
    }

    #[test]
    fn accumulator_averages_images() {
        let mut acc = DepthAccumulator::new(DepthConfig::default());
        acc.update(&[1.0, 2.0], &[1.0, 2.0]).unwrap();
        acc.update(&[2.0], &[1.0]).unwrap();
        acc.update(&[2.0], &[0.0]).unwrap();
        assert_eq!((acc.images(), acc.skipped()), (2, 1));
        let m = acc.mean().unwrap();
        assert_eq!((m.abs_rel, m.rmse, m.delta1), (0.5, 0.5, 0.5));
    }
}
