//! A small deterministic random number generator (SplitMix64).
//!
//! Data pipelines derive one generator per (seed, epoch, sample) with [`Rng::derive`], so that
//! results do not depend on thread count or scheduling, and do not change with the version of an
//! external crate.

/// SplitMix64: 64-bit state, passes BigCrush, trivially seedable and splittable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rng {
    state: u64,
}

impl Rng {
    /// A generator from a seed.
    pub fn new(seed: u64) -> Self {
        Self {
            state: seed ^ 0x5851_F42D_4C95_7F2D,
        }
    }

    /// An independent generator for the stream `ids` (e.g. `[epoch, index]`) of `seed`.
    pub fn derive(seed: u64, ids: &[u64]) -> Self {
        let mut rng = Rng::new(seed);
        for &id in ids {
            let mixed = rng.next_u64() ^ id.wrapping_mul(0x9E37_79B9_7F4A_7C15);
            rng = Rng { state: mixed };
            rng.next_u64();
        }
        rng
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in [lo, hi).
    pub fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.uniform()
    }

    /// Uniform integer in [0, n); 0 when n is 0.
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            return 0;
        }
        ((self.next_u64() as u128 * n as u128) >> 64) as usize
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        self.uniform() < p
    }

    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = self.uniform().max(f64::MIN_POSITIVE);
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }

    /// Shuffles a slice in place (Fisher–Yates).
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            items.swap(i, self.below(i + 1));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_deterministic_and_distinct() {
        let a: Vec<u64> = (0..3).map(|_| Rng::derive(7, &[1, 2]).next_u64()).collect();
        assert_eq!(a[0], a[1]);
        assert_ne!(
            Rng::derive(7, &[1, 2]).next_u64(),
            Rng::derive(7, &[2, 1]).next_u64()
        );
        assert_ne!(
            Rng::derive(7, &[1]).next_u64(),
            Rng::derive(8, &[1]).next_u64()
        );
        let mut r = Rng::new(1);
        let n = 100_000;
        let mean = (0..n).map(|_| r.uniform()).sum::<f64>() / n as f64;
        assert!((mean - 0.5).abs() < 0.01, "{mean}");
        let counts = (0..n).fold([0usize; 3], |mut c, _| {
            c[r.below(3)] += 1;
            c
        });
        assert!(
            counts
                .iter()
                .all(|&c| (c as f64 / n as f64 - 1.0 / 3.0).abs() < 0.01),
            "{counts:?}"
        );
        let mut v: Vec<u32> = (0..10).collect();
        r.shuffle(&mut v);
        v.sort();
        assert_eq!(v, (0..10).collect::<Vec<_>>());
    }
}
