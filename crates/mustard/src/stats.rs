//! Means and standard deviations over seeds, and the one-sentence verdict on a paper's claim
//! that "A scores at least as well as B" given both measured over seeds.

use std::fmt;

/// The mean and sample standard deviation of a few runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MeanStd {
    /// Mean.
    pub mean: f64,
    /// Sample standard deviation (n − 1 in the denominator; 0 for one value).
    pub std: f64,
    /// Number of values.
    pub n: usize,
}

impl MeanStd {
    /// Of `values` (at least one).
    pub fn of(values: &[f64]) -> Self {
        let n = values.len();
        let mean = values.iter().sum::<f64>() / n.max(1) as f64;
        let var = if n > 1 {
            values.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / (n - 1) as f64
        } else {
            0.0
        };
        MeanStd {
            mean,
            std: var.sqrt(),
            n,
        }
    }

    /// The standard error of the mean.
    pub fn standard_error(&self) -> f64 {
        self.std / (self.n.max(1) as f64).sqrt()
    }
}

impl fmt::Display for MeanStd {
    /// `0.123 ± 0.004` over several values, `0.123` for one.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.n > 1 {
            write!(f, "{:.3} ± {:.3}", self.mean, self.std)
        } else {
            write!(f, "{:.3}", self.mean)
        }
    }
}

/// How "A scores at least as well as B" came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// A is higher by more than twice the standard error of the difference.
    Holds,
    /// The difference is within twice its standard error (or A is higher by less): A is at
    /// least as good within the noise.
    WithinNoise,
    /// A is lower by more than twice the standard error: not supported.
    NotSupported,
    /// One seed on either side: no noise estimate, so no verdict.
    OneSeed,
    /// Both scores are within [`FLOOR_MARGIN`] of the metric's trivial baseline: the budget is
    /// too small for the comparison to mean anything.
    AtFloor,
}

/// How far above its trivial baseline a score must be for a comparison to be tested.
pub const FLOOR_MARGIN: f64 = 0.01;

/// Like [`claim`], but with the metric's trivial baseline (0 for AP): when both scores are
/// within [`FLOOR_MARGIN`] of it, the verdict is [`Verdict::AtFloor`].
pub fn claim_above(a: MeanStd, b: MeanStd, baseline: Option<f64>) -> (Verdict, String) {
    if let Some(floor) = baseline {
        if a.mean.max(b.mean) < floor + FLOOR_MARGIN {
            let d = a.mean - b.mean;
            return (
                Verdict::AtFloor,
                format!("difference {d:+.3}; both are within {FLOOR_MARGIN} of the trivial baseline ({floor:.3}), so this budget cannot test the claim"),
            );
        }
    }
    claim(a, b)
}

/// The verdict on "`a` scores at least as well as `b`", and the sentence's numbers.
pub fn claim(a: MeanStd, b: MeanStd) -> (Verdict, String) {
    let d = a.mean - b.mean;
    if a.n < 2 || b.n < 2 {
        return (
            Verdict::OneSeed,
            format!("difference {d:+.3}; one seed gives no noise estimate, so the claim is not tested (run with --seeds 3)"),
        );
    }
    let se = (a.standard_error().powi(2) + b.standard_error().powi(2)).sqrt();
    let numbers = format!(
        "difference {d:+.3}, twice its standard error {:.3}",
        2.0 * se
    );
    let verdict = if d > 2.0 * se {
        Verdict::Holds
    } else if d >= -2.0 * se {
        Verdict::WithinNoise
    } else {
        Verdict::NotSupported
    };
    let what = match verdict {
        Verdict::Holds => "the claim holds, beyond the noise",
        Verdict::WithinNoise => "the claim holds within the noise (no difference is measurable)",
        Verdict::NotSupported => "the claim is not supported: it scores lower, beyond the noise",
        Verdict::OneSeed | Verdict::AtFloor => unreachable!("handled above"),
    };
    (verdict, format!("{numbers}: {what}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_std_and_verdicts() {
        let a = MeanStd::of(&[0.50, 0.52, 0.54]);
        assert!((a.mean - 0.52).abs() < 1e-12 && (a.std - 0.02).abs() < 1e-12);
        assert_eq!(a.to_string(), "0.520 ± 0.020");
        assert_eq!(MeanStd::of(&[0.25]).to_string(), "0.250");
        let b = MeanStd::of(&[0.40, 0.42, 0.44]);
        // se = sqrt(2 · 0.02² / 3) = 0.01633; d = 0.10.
        let (v, s) = claim(a, b);
        assert_eq!(v, Verdict::Holds);
        assert_eq!(
            s,
            "difference +0.100, twice its standard error 0.033: the claim holds, beyond the noise"
        );
        assert_eq!(claim(b, a).0, Verdict::NotSupported);
        let c = MeanStd::of(&[0.51, 0.53, 0.55]);
        assert_eq!(claim(a, c).0, Verdict::WithinNoise);
        assert_eq!(claim(c, a).0, Verdict::WithinNoise);
        assert_eq!(claim(MeanStd::of(&[0.5]), a).0, Verdict::OneSeed);
        let (low, lower) = (MeanStd::of(&[0.003, 0.004]), MeanStd::of(&[0.001, 0.002]));
        let (v, s) = claim_above(low, lower, Some(0.0));
        assert_eq!(v, Verdict::AtFloor);
        assert_eq!(s, "difference +0.002; both are within 0.01 of the trivial baseline (0.000), so this budget cannot test the claim");
        let (v, s) = claim_above(
            MeanStd::of(&[0.40, 0.41]),
            MeanStd::of(&[0.395]),
            Some(0.396),
        );
        assert_eq!(v, Verdict::AtFloor);
        assert_eq!(s, "difference +0.010; both are within 0.01 of the trivial baseline (0.396), so this budget cannot test the claim");
        assert_eq!(claim_above(a, b, Some(0.0)).0, Verdict::Holds);
        assert_eq!(claim_above(low, lower, None).0, Verdict::Holds);
    }
}
