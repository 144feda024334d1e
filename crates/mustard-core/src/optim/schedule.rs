use std::f64::consts::PI;

use crate::{Error, Result};

/// The shape of the schedule after warm-up.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ScheduleKind {
    /// The base learning rate throughout.
    Constant,
    /// Multiplied by `gamma` at every milestone step passed.
    MultiStep {
        /// Steps at which the rate drops, increasing.
        milestones: Vec<u64>,
        /// Factor per milestone.
        gamma: f64,
    },
    /// Half a cosine from the base rate down to `min_factor · base` between the end of warm-up
    /// and `total_steps`, constant after.
    Cosine {
        /// Last step of the schedule.
        total_steps: u64,
        /// Final fraction of the base rate.
        min_factor: f64,
    },
}

/// A learning-rate schedule: linear warm-up from `warmup_factor · base` to `base` over
/// `warmup_steps`, then [`ScheduleKind`]. Step 0 is the first optimiser step.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LrSchedule {
    /// The base learning rate.
    pub base_lr: f64,
    /// Steps of linear warm-up (0 for none).
    pub warmup_steps: u64,
    /// Fraction of the base rate at step 0.
    pub warmup_factor: f64,
    /// What follows the warm-up.
    pub kind: ScheduleKind,
}

impl LrSchedule {
    /// A constant rate without warm-up.
    pub fn constant(base_lr: f64) -> Self {
        Self {
            base_lr,
            warmup_steps: 0,
            warmup_factor: 1.0,
            kind: ScheduleKind::Constant,
        }
    }

    /// Checks the values.
    pub fn validate(&self) -> Result<()> {
        if !(self.base_lr.is_finite() && self.base_lr >= 0.0) {
            return Err(Error::config(
                "lr schedule",
                format!("base_lr {} must be finite and non-negative", self.base_lr),
            ));
        }
        if !(0.0..=1.0).contains(&self.warmup_factor) {
            return Err(Error::config(
                "lr schedule",
                format!("warmup_factor {} must be in [0, 1]", self.warmup_factor),
            ));
        }
        match &self.kind {
            ScheduleKind::MultiStep { milestones, .. }
                if milestones.windows(2).any(|w| w[0] >= w[1]) =>
            {
                Err(Error::config(
                    "lr schedule",
                    format!("milestones {milestones:?} must be strictly increasing"),
                ))
            }
            ScheduleKind::Cosine { total_steps, .. } if *total_steps < self.warmup_steps => {
                Err(Error::config(
                    "lr schedule",
                    format!(
                        "total_steps {total_steps} is shorter than the warm-up of {} steps",
                        self.warmup_steps
                    ),
                ))
            }
            _ => Ok(()),
        }
    }

    /// The learning rate of optimiser step `step`.
    pub fn lr_at(&self, step: u64) -> f64 {
        let warm = if step < self.warmup_steps {
            let alpha = step as f64 / self.warmup_steps as f64;
            self.warmup_factor * (1.0 - alpha) + alpha
        } else {
            1.0
        };
        let main = match &self.kind {
            ScheduleKind::Constant => 1.0,
            ScheduleKind::MultiStep { milestones, gamma } => {
                gamma.powi(milestones.iter().filter(|&&m| m <= step).count() as i32)
            }
            ScheduleKind::Cosine {
                total_steps,
                min_factor,
            } => {
                let span = total_steps.saturating_sub(self.warmup_steps).max(1) as f64;
                let t = (step.saturating_sub(self.warmup_steps) as f64 / span).min(1.0);
                min_factor + (1.0 - min_factor) * 0.5 * (1.0 + (PI * t).cos())
            }
        };
        self.base_lr * warm * main
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_multistep() {
        let s = LrSchedule {
            base_lr: 0.1,
            warmup_steps: 4,
            warmup_factor: 0.2,
            kind: ScheduleKind::MultiStep {
                milestones: vec![6, 8],
                gamma: 0.1,
            },
        };
        s.validate().unwrap();
        let got: Vec<f64> = (0..10).map(|t| s.lr_at(t)).collect();
        let expected = [0.02, 0.04, 0.06, 0.08, 0.1, 0.1, 0.01, 0.01, 0.001, 0.001];
        for (g, e) in got.iter().zip(expected) {
            assert!((g - e).abs() < 1e-12, "{got:?}");
        }
    }

    #[test]
    fn cosine_reaches_the_floor_and_stays() {
        let s = LrSchedule {
            base_lr: 1.0,
            warmup_steps: 2,
            warmup_factor: 0.0,
            kind: ScheduleKind::Cosine {
                total_steps: 6,
                min_factor: 0.1,
            },
        };
        assert_eq!(s.lr_at(0), 0.0);
        assert_eq!(s.lr_at(1), 0.5);
        assert_eq!(s.lr_at(2), 1.0);
        assert!((s.lr_at(4) - 0.55).abs() < 1e-12);
        assert!((s.lr_at(6) - 0.1).abs() < 1e-12);
        assert!((s.lr_at(100) - 0.1).abs() < 1e-12);
    }

    #[test]
    fn invalid_schedules_are_named() {
        let mut s = LrSchedule::constant(0.1);
        s.kind = ScheduleKind::MultiStep {
            milestones: vec![5, 5],
            gamma: 0.1,
        };
        assert_eq!(
            s.validate().unwrap_err().to_string(),
            "lr schedule: milestones [5, 5] must be strictly increasing"
        );
        s.kind = ScheduleKind::Cosine {
            total_steps: 3,
            min_factor: 0.0,
        };
        s.warmup_steps = 10;
        assert_eq!(
            s.validate().unwrap_err().to_string(),
            "lr schedule: total_steps 3 is shorter than the warm-up of 10 steps"
        );
    }
}
