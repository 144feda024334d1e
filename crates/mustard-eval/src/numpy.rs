//! The few numpy routines whose exact floating-point results the COCO metrics depend on.

/// `np.linspace(start, stop, num, endpoint=True)`: `start + i * step` with `step = (stop -
/// start) / (num - 1)`, and the last value exactly `stop`.
///
/// This is what pycocotools uses for its thresholds, so `linspace(0.5, 0.95, 10)[8]` is
/// `0.8999999999999999`, not `0.9`.
pub fn linspace(start: f64, stop: f64, num: usize) -> Vec<f64> {
    match num {
        0 => Vec::new(),
        1 => vec![start],
        _ => {
            let step = (stop - start) / (num - 1) as f64;
            let mut values: Vec<f64> = (0..num).map(|i| i as f64 * step + start).collect();
            values[num - 1] = stop;
            values
        }
    }
}

/// `np.sum` of a contiguous float64 array: numpy's pairwise summation (blocks of 128 summed
/// with eight accumulators, halved recursively above that).
pub fn sum(values: &[f64]) -> f64 {
    let n = values.len();
    if n < 8 {
        let mut res = 0.0;
        for &v in values {
            res += v;
        }
        res
    } else if n <= 128 {
        let mut r = [0.0; 8];
        r.copy_from_slice(&values[..8]);
        let mut i = 8;
        while i < n - n % 8 {
            for j in 0..8 {
                r[j] += values[i + j];
            }
            i += 8;
        }
        let mut res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        for &v in &values[i..] {
            res += v;
        }
        res
    } else {
        let mut n2 = n / 2;
        n2 -= n2 % 8;
        sum(&values[..n2]) + sum(&values[n2..])
    }
}

/// `np.mean` of a contiguous float64 array (`None` when it is empty).
pub fn mean(values: &[f64]) -> Option<f64> {
    (!values.is_empty()).then(|| sum(values) / values.len() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linspace_matches_numpy_bit_for_bit() {
        let iou = linspace(0.5, 0.95, 10);
        // repr(np.linspace(.5, 0.95, 10)): the ninth value is not 0.9.
        assert_eq!(
            iou,
            [
                0.5,
                0.55,
                0.6,
                0.65,
                0.7,
                0.75,
                0.8,
                0.85,
                0.8999999999999999,
                0.95
            ]
        );
        let rec = linspace(0.0, 1.0, 101);
        assert_eq!(rec.len(), 101);
        assert_eq!(rec[1], 0.01);
        assert_eq!(rec[29], 0.29);
        assert_eq!(rec[100], 1.0);
        assert_eq!(linspace(3.0, 7.0, 1), [3.0]);
        assert!(linspace(3.0, 7.0, 0).is_empty());
    }

    #[test]
    fn pairwise_sum_matches_numpy() {
        // np.sum([0.1] * 10) == 1.0 (pairwise), while a running sum gives 0.9999999999999999.
        assert_eq!(sum(&[0.1; 10]), 1.0);
        assert_eq!([0.1; 10].iter().sum::<f64>(), 0.9999999999999999);
        // Above 128 values the halves are summed separately: np.sum(1.0 / np.arange(1, 301))
        // is 6.282663880299504, a running sum gives 6.282663880299502.
        let v: Vec<f64> = (1..=300).map(|i| 1.0 / i as f64).collect();
        assert_eq!(sum(&v), 6.282663880299504);
        assert_eq!(v.iter().sum::<f64>(), 6.282663880299502);
        assert_eq!(mean(&v), Some(0.02094221293433168));
        assert_eq!(mean(&[]), None);
        assert_eq!(mean(&[1.0, 2.0]), Some(1.5));
    }
}
