//! Losses of the task heads (SPEC §4), from raw logits, honouring per-image presence masks.

use candle_core::{DType, Tensor, D};

use crate::ops::loss::{CrossEntropySums, FocalSums};
use crate::{Error, Result};

/// Probability clamp of CenterNet's `_sigmoid`.
const P_MIN: f64 = 1e-4;

fn same_shape(
    op: &'static str,
    lhs_name: &'static str,
    lhs: &Tensor,
    rhs_name: &'static str,
    rhs: &Tensor,
) -> Result<()> {
    if lhs.shape() != rhs.shape() {
        return Err(Error::ShapeMismatch {
            op,
            lhs_name,
            lhs: lhs.shape().clone(),
            rhs_name,
            rhs: rhs.shape().clone(),
        });
    }
    if lhs.elem_count() == 0 {
        return Err(Error::shape(
            op,
            lhs_name,
            lhs.shape(),
            "a non-empty tensor",
        ));
    }
    Ok(())
}

/// `log σ(x) = min(x, 0) − log(1 + e^{−|x|})`, stable for any x.
fn log_sigmoid(x: &Tensor) -> Result<Tensor> {
    Ok((x.minimum(0.0)? - (x.abs()?.neg()?.exp()? + 1.0)?.log()?)?)
}

/// Checks a `(B,)` presence mask against a batch of `b` images and returns it as `dtype`.
fn presence_weights(op: &'static str, presence: &Tensor, b: usize, dtype: DType) -> Result<Tensor> {
    if presence.dims() != [b] {
        return Err(Error::shape(
            op,
            "presence",
            presence.shape(),
            format!("({b},), one flag per image"),
        ));
    }
    Ok(presence.to_dtype(dtype)?)
}

/// Penalty-reduced pixel-wise focal loss of CenterNet, from logits.
///
/// With `p = clamp(σ(x), 1e−4, 1 − 1e−4)` and `N = #(y == 1)`:
/// `L = −(1/N) Σ [y = 1: (1 − p)² log p ; y < 1: (1 − y)⁴ p² log(1 − p)]`, and when `N = 0` only
/// the negative term, undivided. `log p` and `log(1 − p)` are computed as clamped
/// log-sigmoids, so large logits never produce `log 0`. With `presence` (`(B,)`, 1 where the
/// image carries this task's labels) absent images contribute nothing.
///
/// # Shapes
/// `logits`, `target`: `(B, C, H, W)`; `presence`: `(B,)`; returns a scalar.
pub fn focal_loss(logits: &Tensor, target: &Tensor, presence: Option<&Tensor>) -> Result<Tensor> {
    const OP: &str = "focal_loss";
    same_shape(OP, "logits", logits, "target", target)?;
    let b = logits.dim(0)?;
    let target = target.to_dtype(logits.dtype())?;
    let (lo, hi) = (P_MIN.ln(), (1.0 - P_MIN).ln());
    let (mut pos_sum, mut neg_sum, mut num_pos) = focal_sums(logits, &target, (lo, hi))?;
    if let Some(presence) = presence {
        let w = presence_weights(OP, presence, b, logits.dtype())?;
        pos_sum = (pos_sum * &w)?;
        neg_sum = (neg_sum * &w)?;
        num_pos = (num_pos * &w)?;
    }
    // pos_sum is 0 when N = 0, so dividing by max(N, 1) is the reference's two cases in one.
    let total = (pos_sum.sum_all()? + neg_sum.sum_all()?)?;
    per_count(total.neg()?, &num_pos)
}

/// Per image, the focal loss's positive and negative sums (with their sign) and the number of
/// positives (`(B,)` each): the one-pass kernel where it runs, else candle ops.
fn focal_sums(
    logits: &Tensor,
    target: &Tensor,
    bounds: (f64, f64),
) -> Result<(Tensor, Tensor, Tensor)> {
    if !fused(logits) {
        return focal_sums_composed(logits, target, bounds);
    }
    let sums = logits
        .contiguous()?
        .apply_op2(&target.contiguous()?, FocalSums { bounds })?;
    let column = |i: usize| sums.narrow(1, i, 1)?.squeeze(1);
    Ok((column(0)?, column(1)?, column(2)?))
}

/// `sum / max(N, 1)` for the per-image counts `count`, N summed over every process of a
/// data-parallel step (crate::dist): the normaliser of the heatmap losses.
fn per_count(sum: Tensor, count: &Tensor) -> Result<Tensor> {
    Ok(sum.broadcast_div(&crate::dist::global_sum(&count.sum_all()?)?.maximum(1.0)?)?)
}

/// Quality focal loss (GFL, arXiv 2006.04388) of heatmap logits against soft targets: a peak
/// of `y < 1` (a teacher's confidence) is a positive of that strength, where CenterNet's focal
/// loss counts only `y = 1` as a positive.
///
/// With `p = σ(x)` and `N = Σ peaks` (the sum of the objects' peak values `peaks`, over every
/// process of a data-parallel step): `L = (1/max(N, 1)) Σ |y − p|^β · BCE(x, y)`, `β = 2`,
/// `BCE(x, y) = −(y log p + (1 − y) log(1 − p))` computed from the logits as `max(x, 0) − x·y +
/// log(1 + e^−|x|)` (never `log 0`). With `presence` (`(B,)`) absent images contribute nothing.
///
/// # Shapes
/// `logits`, `target`: `(B, C, H, W)`; `peaks`: `(B, K)` (0 for no object); `presence`: `(B,)`;
/// returns a scalar.
pub fn quality_focal_loss(
    logits: &Tensor,
    target: &Tensor,
    peaks: &Tensor,
    presence: Option<&Tensor>,
) -> Result<Tensor> {
    const OP: &str = "quality_focal_loss";
    same_shape(OP, "logits", logits, "target", target)?;
    let b = logits.dim(0)?;
    if peaks.rank() != 2 || peaks.dim(0)? != b {
        return Err(Error::shape(
            OP,
            "peaks",
            peaks.shape(),
            format!("({b}, K)"),
        ));
    }
    let y = target.to_dtype(logits.dtype())?;
    let bce = ((logits.relu()? - (logits * &y)?)? + (logits.abs()?.neg()?.exp()? + 1.0)?.log()?)?;
    let p = log_sigmoid(logits)?.exp()?;
    let modulation = (&y - &p)?.sqr()?;
    let mut per_image = (modulation * bce)?.flatten_from(1)?.sum(1)?;
    let mut count = peaks.to_dtype(logits.dtype())?.sum(1)?;
    if let Some(presence) = presence {
        let w = presence_weights(OP, presence, b, logits.dtype())?;
        per_image = (per_image * &w)?;
        count = (count * &w)?;
    }
    per_count(per_image.sum_all()?, &count)
}

/// CenterNet's focal loss with each object's positive term weighted by its score: the
/// penalty-reduced negatives as in [`focal_loss`], the positives `w_k (1 − p_k)² log p_k` at the
/// objects' centres `ind` (flat positions in each image's `(C, H, W)` map), and the sum divided
/// by `max(Σ w, 1)` (over every process of a data-parallel step). With every weight 1 it is
/// [`focal_loss`] (up to the order of the sums).
///
/// # Shapes
/// `logits`, `target`: `(B, C, H, W)`; `ind` (u32), `weights`: `(B, K)` (weight 0 for no
/// object); `presence`: `(B,)`; returns a scalar.
pub fn weighted_focal_loss(
    logits: &Tensor,
    target: &Tensor,
    (ind, weights): (&Tensor, &Tensor),
    presence: Option<&Tensor>,
) -> Result<Tensor> {
    const OP: &str = "weighted_focal_loss";
    same_shape(OP, "logits", logits, "target", target)?;
    let b = logits.dim(0)?;
    if ind.dims() != weights.dims() || ind.rank() != 2 || ind.dim(0)? != b {
        return Err(Error::shape(
            OP,
            "ind",
            ind.shape(),
            format!("({b}, K), as weights"),
        ));
    }
    let target = target.to_dtype(logits.dtype())?;
    let (lo, hi) = (P_MIN.ln(), (1.0 - P_MIN).ln());
    // The negatives' sums of the focal loss (y < 1 everywhere but at the centres).
    let (_, mut neg_sum, _) = focal_sums(logits, &target, (lo, hi))?;
    let at = logits
        .flatten_from(1)?
        .gather(&ind.to_dtype(DType::U32)?.contiguous()?, 1)?;
    let log_p = log_sigmoid(&at)?.clamp(lo, hi)?;
    let one_minus_p = (1.0 - log_p.exp()?)?;
    let w = weights.to_dtype(logits.dtype())?;
    let mut pos_sum = (one_minus_p.sqr()? * log_p)?.mul(&w)?.sum(1)?;
    let mut count = w.sum(1)?;
    if let Some(presence) = presence {
        let p = presence_weights(OP, presence, b, logits.dtype())?;
        pos_sum = (pos_sum * &p)?;
        neg_sum = (neg_sum * &p)?;
        count = (count * &p)?;
    }
    let total = (pos_sum.sum_all()? + neg_sum.sum_all()?)?;
    per_count(total.neg()?, &count)
}

/// Whether the losses of `logits` take the one-pass kernels of `ops::loss`.
fn fused(logits: &Tensor) -> bool {
    crate::ops::cpu_kernels(logits) && matches!(logits.dtype(), DType::F32 | DType::F64)
}

/// Per image, the focal loss's positive and negative sums (with their sign) and the number of
/// positives, from candle ops (`(B,)` each): the portable form of `ops::loss::FocalSums`.
fn focal_sums_composed(
    logits: &Tensor,
    target: &Tensor,
    (lo, hi): (f64, f64),
) -> Result<(Tensor, Tensor, Tensor)> {
    let log_p = log_sigmoid(logits)?.clamp(lo, hi)?;
    let log_1mp = log_sigmoid(&logits.neg()?)?.clamp(lo, hi)?;
    let p = log_p.exp()?;
    let pos = target.eq(1.0)?.to_dtype(logits.dtype())?;
    let neg = target.lt(1.0)?.to_dtype(logits.dtype())?;
    let pos_loss = ((log_p * (1.0 - &p)?.sqr()?)? * &pos)?;
    let neg_loss = ((log_1mp * p.sqr()?)? * (1.0 - target)?.powf(4.0)?)?.mul(&neg)?;
    // Per image sums, so that a presence mask can drop images.
    let per_image = |t: &Tensor| t.flatten_from(1)?.sum(1);
    Ok((
        per_image(&pos_loss)?,
        per_image(&neg_loss)?,
        per_image(&pos)?,
    ))
}

/// L1 regression at object centres: gathers `pred` at the flat positions `ind` and averages
/// `|pred − target|` over the objects whose `mask` is 1, per coordinate:
/// `Σ |pred − tgt| · m / (Σ m + 1e−4)` with `m` broadcast over the C channels.
///
/// # Shapes
/// `pred`: `(B, C, H, W)`; `ind`: `(B, K)` integers in `[0, H·W)`; `mask`: `(B, K)`;
/// `target`: `(B, K, C)`; returns a scalar.
pub fn reg_l1(pred: &Tensor, ind: &Tensor, mask: &Tensor, target: &Tensor) -> Result<Tensor> {
    const OP: &str = "reg_l1";
    let (b, c, h, w) = pred
        .dims4()
        .map_err(|_| Error::shape(OP, "pred", pred.shape(), "(B, C, H, W)"))?;
    let k = match ind.dims() {
        &[ib, k] if ib == b => k,
        _ => return Err(Error::shape(OP, "ind", ind.shape(), format!("({b}, K)"))),
    };
    if mask.dims() != [b, k] {
        return Err(Error::ShapeMismatch {
            op: OP,
            lhs_name: "ind",
            lhs: ind.shape().clone(),
            rhs_name: "mask",
            rhs: mask.shape().clone(),
        });
    }
    if target.dims() != [b, k, c] {
        return Err(Error::shape(
            OP,
            "target",
            target.shape(),
            format!("({b}, {k}, {c}) = (B, K, C of pred)"),
        ));
    }
    let ind = ind.to_dtype(DType::U32)?;
    if k > 0 {
        let max = ind.flatten_all()?.max(0)?.to_scalar::<u32>()? as usize;
        if max >= h * w {
            return Err(Error::config(
                OP,
                format!("index {max} is outside a {h} x {w} map"),
            ));
        }
    }
    let flat = pred.flatten_from(2)?.transpose(1, 2)?.contiguous()?; // (B, HW, C)
    let idx = ind.unsqueeze(2)?.broadcast_as((b, k, c))?.contiguous()?;
    let gathered = flat.gather(&idx, 1)?; // (B, K, C)
    let m = mask
        .to_dtype(pred.dtype())?
        .unsqueeze(2)?
        .broadcast_as((b, k, c))?;
    let target = target.to_dtype(pred.dtype())?;
    let num = ((gathered - target)?.abs()? * &m)?.sum_all()?;
    let count = m.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
    Ok((num / (crate::dist::global_sum_f64(count)? + 1e-4))?)
}

/// Cross-entropy over the class dimension 1, averaged over the elements whose target is not
/// `ignore_index` (0 when every element is ignored).
///
/// # Shapes
/// `logits`: `(N, C)` or `(N, C, H, W)`; `target`: `(N,)` or `(N, H, W)` integers; returns a
/// scalar.
pub fn cross_entropy(logits: &Tensor, target: &Tensor, ignore_index: u32) -> Result<Tensor> {
    const OP: &str = "cross_entropy";
    let dims = logits.dims();
    if dims.len() < 2 || logits.elem_count() == 0 {
        return Err(Error::shape(
            OP,
            "logits",
            logits.shape(),
            "(N, C) or (N, C, H, W), non-empty",
        ));
    }
    let mut expected: Vec<usize> = dims.to_vec();
    let classes = expected.remove(1);
    if target.dims() != expected.as_slice() {
        return Err(Error::ShapeMismatch {
            op: OP,
            lhs_name: "logits",
            lhs: logits.shape().clone(),
            rhs_name: "target",
            rhs: target.shape().clone(),
        });
    }
    let target = target.to_dtype(DType::U32)?;
    let valid = target.ne(ignore_index)?;
    let safe = valid.where_cond(&target, &target.zeros_like()?)?;
    let max = safe.flatten_all()?.max(0)?.to_scalar::<u32>()? as usize;
    if max >= classes {
        return Err(Error::config(OP, format!("target class {max} is not below the {classes} classes of the logits (ignore index {ignore_index})")));
    }
    if fused(logits) {
        let sums = logits
            .contiguous()?
            .apply_op2(&target.contiguous()?, CrossEntropySums { ignore_index })?;
        let count = crate::dist::global_sum(&sums.narrow(0, 1, 1)?)?.maximum(1.0)?;
        return Ok(sums.narrow(0, 0, 1)?.div(&count)?.squeeze(0)?);
    }
    cross_entropy_composed(logits, &safe, &valid)
}

/// The cross-entropy from candle ops, given the targets with ignored elements set to class 0
/// (`safe`) and the mask of the others (`valid`): the portable form of
/// `ops::loss::CrossEntropySums`.
fn cross_entropy_composed(logits: &Tensor, safe: &Tensor, valid: &Tensor) -> Result<Tensor> {
    let log_probs = candle_nn::ops::log_softmax(logits, 1)?;
    let picked = log_probs
        .gather(&safe.unsqueeze(1)?.contiguous()?, 1)?
        .squeeze(1)?;
    let valid = valid.to_dtype(logits.dtype())?;
    let count = crate::dist::global_sum(&valid.sum_all()?)?.maximum(1.0)?;
    Ok((picked * valid)?.sum_all()?.neg()?.broadcast_div(&count)?)
}

/// Cross-entropy against soft targets (pseudo-labels): `mean_n −Σ_c t[n, c] log softmax(x)[n, c]`.
///
/// # Shapes
/// `logits`, `target`: `(N, C)`; returns a scalar.
pub fn soft_cross_entropy(logits: &Tensor, target: &Tensor) -> Result<Tensor> {
    const OP: &str = "soft_cross_entropy";
    same_shape(OP, "logits", logits, "target", target)?;
    if logits.rank() != 2 {
        return Err(Error::shape(OP, "logits", logits.shape(), "(N, C)"));
    }
    let log_probs = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    let per_row = (log_probs * target.to_dtype(logits.dtype())?)?
        .sum(1)?
        .neg()?;
    if crate::dist::scope().is_some() {
        // The mean over the rows of every process of a data-parallel step.
        let rows = crate::dist::global_sum_f64(per_row.dim(0)? as f64)?;
        return Ok((per_row.sum_all()? / rows)?);
    }
    Ok(per_row.mean_all()?)
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

    use super::*;

    /// With every weight 1 the weighted focal loss is CenterNet's; halving an object's weight
    /// halves its positive term and its share of the divisor.
    #[test]
    fn weighted_focal_loss_with_unit_weights_is_the_focal_loss() {
        let dev = Device::Cpu;
        let x: Vec<f64> = (0..32).map(|i| ((i * 7 % 11) as f64 - 5.0) * 0.7).collect();
        let mut y = vec![0.0f64; 32];
        for (i, v) in [(3, 1.0), (2, 0.6), (4, 0.5), (21, 1.0), (20, 0.3)] {
            y[i] = v;
        }
        let logits = Tensor::from_vec(x.clone(), (2, 2, 2, 4), &dev).unwrap();
        let target = Tensor::from_vec(y.clone(), (2, 2, 2, 4), &dev).unwrap();
        // Image 0's centre at flat 3; image 1's at 21 − 16 = 5; a padded slot of weight 0.
        let ind = Tensor::from_vec(vec![3u32, 0, 5, 0], (2, 2), &dev).unwrap();
        let ones = Tensor::from_vec(vec![1.0f64, 0.0, 1.0, 0.0], (2, 2), &dev).unwrap();
        let hard = scalar(focal_loss(&logits, &target, None).unwrap());
        let weighted = scalar(weighted_focal_loss(&logits, &target, (&ind, &ones), None).unwrap());
        assert!((hard - weighted).abs() < 1e-12, "{hard} against {weighted}");
        let half = Tensor::from_vec(vec![0.5f64, 0.0, 1.0, 0.0], (2, 2), &dev).unwrap();
        let got = scalar(weighted_focal_loss(&logits, &target, (&ind, &half), None).unwrap());
        let pos = |x: f64| {
            let p = 1.0 / (1.0 + (-x).exp());
            (1.0 - p).powi(2) * p.ln()
        };
        // Same negatives; the first positive counts half, the divisor is 1.5 instead of 2.
        let expected = (hard * 2.0 + 0.5 * pos(x[3])) / 1.5;
        assert!((got - expected).abs() < 1e-12, "{got} against {expected}");
    }

    /// The quality focal loss against the formula written out per value: soft peaks are
    /// positives of their strength, absent images count for nothing, and the sum is divided by
    /// the present images' peak values.
    #[test]
    fn quality_focal_loss_is_the_formula() {
        let dev = Device::Cpu;
        let x: Vec<f64> = vec![2.0, -1.0, 0.5, -3.0, 1.5, 0.0, -0.5, 4.0];
        let y: Vec<f64> = vec![0.7, 0.1, 0.0, 0.0, 1.0, 0.3, 0.0, 0.9];
        let logits = Tensor::from_vec(x.clone(), (2, 1, 2, 2), &dev).unwrap();
        let target = Tensor::from_vec(y.clone(), (2, 1, 2, 2), &dev).unwrap();
        let peaks = Tensor::from_vec(vec![0.7, 0.0, 1.0, 0.9], (2, 2), &dev).unwrap();
        let term = |x: f64, y: f64| {
            let p = 1.0 / (1.0 + (-x).exp());
            (y - p).powi(2) * -(y * p.ln() + (1.0 - y) * (1.0 - p).ln())
        };
        let all: f64 = x.iter().zip(&y).map(|(&a, &b)| term(a, b)).sum();
        let got = quality_focal_loss(&logits, &target, &peaks, None)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        assert!(
            (got - all / 2.6).abs() < 1e-12,
            "{got} against {}",
            all / 2.6
        );
        let presence = Tensor::new(&[0.0f64, 1.0], &dev).unwrap();
        let second: f64 = x[4..].iter().zip(&y[4..]).map(|(&a, &b)| term(a, b)).sum();
        let got = quality_focal_loss(&logits, &target, &peaks, Some(&presence))
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        assert!(
            (got - second / 1.9).abs() < 1e-12,
            "{got} against {}",
            second / 1.9
        );
        // A logit far past its target stays finite; one at its target has no loss.
        let far = Tensor::from_vec(vec![60.0f64, -60.0], (1, 1, 1, 2), &dev).unwrap();
        let t = Tensor::from_vec(vec![0.0f64, 1.0], (1, 1, 1, 2), &dev).unwrap();
        let none = Tensor::zeros((1, 1), DType::F64, &dev).unwrap();
        let v = quality_focal_loss(&far, &t, &none, None)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        assert!((v - 120.0).abs() < 1e-9, "{v}");
    }

    fn scalar(t: Tensor) -> f64 {
        t.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap()
    }

    #[test]
    fn focal_loss_follows_the_definition_on_a_small_map() {
        let x = [2.0f64, -1.0, 0.5, 30.0];
        let y = [1.0f64, 0.5, 0.0, 0.0];
        let logits = Tensor::new(&x, &Device::Cpu)
            .unwrap()
            .reshape((1, 1, 2, 2))
            .unwrap();
        let target = Tensor::new(&y, &Device::Cpu)
            .unwrap()
            .reshape((1, 1, 2, 2))
            .unwrap();
        let p = |v: f64| (1.0 / (1.0 + (-v).exp())).clamp(1e-4, 1.0 - 1e-4);
        let mut expected = (1.0 - p(2.0)).powi(2) * p(2.0).ln();
        for i in 1..4 {
            expected += (1.0 - y[i]).powi(4) * p(x[i]).powi(2) * (1.0 - p(x[i])).ln();
        }
        let got = scalar(focal_loss(&logits, &target, None).unwrap());
        assert!((got + expected).abs() < 1e-12, "{got} vs {}", -expected);
    }

    #[test]
    fn focal_loss_without_positives_is_the_undivided_negative_term() {
        let logits = Tensor::new(&[[[[0.0f64, 1.0]]]], &Device::Cpu).unwrap();
        let target = Tensor::new(&[[[[0.0f64, 0.0]]]], &Device::Cpu).unwrap();
        let p1 = 1.0 / (1.0 + (-1.0f64).exp());
        let expected = -(0.25 * 0.5f64.ln() + p1 * p1 * (1.0 - p1).ln());
        assert!((scalar(focal_loss(&logits, &target, None).unwrap()) - expected).abs() < 1e-12);
    }

    #[test]
    fn absent_images_contribute_nothing() {
        let dev = Device::Cpu;
        let logits = Tensor::new(&[[[[0.3f64, -2.0]]], [[[5.0, 1.0]]]], &dev).unwrap();
        let target = Tensor::new(&[[[[1.0f64, 0.2]]], [[[0.0, 1.0]]]], &dev).unwrap();
        let presence = Tensor::new(&[1.0f64, 0.0], &dev).unwrap();
        let masked = scalar(focal_loss(&logits, &target, Some(&presence)).unwrap());
        let first = scalar(
            focal_loss(
                &logits.narrow(0, 0, 1).unwrap(),
                &target.narrow(0, 0, 1).unwrap(),
                None,
            )
            .unwrap(),
        );
        assert_eq!(masked, first);
    }

    #[test]
    fn reg_l1_gathers_at_centres_and_divides_by_coordinates() {
        let dev = Device::Cpu;
        // pred (1, 2, 2, 2): channel 0 = [0,1,2,3], channel 1 = [10,11,12,13].
        let pred =
            Tensor::new(&[[[[0f32, 1.], [2., 3.]], [[10., 11.], [12., 13.]]]], &dev).unwrap();
        let ind = Tensor::new(&[[3u32, 1, 0]], &dev).unwrap();
        let mask = Tensor::new(&[[1f32, 1., 0.]], &dev).unwrap();
        let target = Tensor::new(&[[[2.5f32, 13.0], [1.0, 10.0], [100., 100.]]], &dev).unwrap();
        // |3 − 2.5| + |13 − 13| + |1 − 1| + |11 − 10| = 1.5 over 4 coordinates.
        let got = scalar(reg_l1(&pred, &ind, &mask, &target).unwrap());
        assert!((got - 1.5 / (4.0 + 1e-4)).abs() < 1e-7, "{got}");
    }

    #[test]
    fn cross_entropy_ignores_255_and_soft_targets_reduce_to_hard_ones() {
        let dev = Device::Cpu;
        let logits = Tensor::new(
            &[[1.0f64, 2.0, 0.5], [0.0, 0.0, 3.0], [9.0, 9.0, 9.0]],
            &dev,
        )
        .unwrap();
        let target = Tensor::new(&[1u32, 2, 255], &dev).unwrap();
        let lse = |v: [f64; 3]| v.iter().map(|x| x.exp()).sum::<f64>().ln();
        let expected = ((lse([1.0, 2.0, 0.5]) - 2.0) + (lse([0.0, 0.0, 3.0]) - 3.0)) / 2.0;
        let got = scalar(cross_entropy(&logits, &target, 255).unwrap());
        assert!((got - expected).abs() < 1e-12);
        let onehot = Tensor::new(&[[0.0f64, 1.0, 0.0], [0.0, 0.0, 1.0]], &dev).unwrap();
        let soft = scalar(soft_cross_entropy(&logits.narrow(0, 0, 2).unwrap(), &onehot).unwrap());
        assert!((soft - expected).abs() < 1e-12);
        let all_ignored = Tensor::new(&[255u32, 255, 255], &dev).unwrap();
        assert_eq!(
            scalar(cross_entropy(&logits, &all_ignored, 255).unwrap()),
            0.0
        );
    }

    /// The gradient of the scalar `loss` with respect to `x`, flattened.
    fn gradient(loss: Tensor, x: &Var) -> Vec<f64> {
        let g = loss.backward().unwrap();
        g.get(x)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap()
    }

    /// Logits over the whole range (both clamps, near zero, large magnitudes) and targets with
    /// peaks, Gaussian tails and zeros, `(2, 3, 5, 7)`.
    fn heatmap_case() -> (Var, Tensor) {
        let dev = Device::Cpu;
        let n = 2 * 3 * 5 * 7;
        let x: Vec<f64> = (0..n)
            .map(|i| match i % 11 {
                // Not exactly 0: there the composed form's `min(x, 0)` and `|x|` take
                // subgradients whose sum is 1, not σ'(0)-based 1/2.
                0 => 1e-3,
                1 => 12.0,
                2 => -12.0,
                _ => ((i * 37) % 41) as f64 * 0.37 - 7.0,
            })
            .collect();
        let y: Vec<f64> = (0..n)
            .map(|i| match i % 7 {
                0 => 1.0,
                1 | 2 => ((i * 13) % 10) as f64 / 10.0,
                _ => 0.0,
            })
            .collect();
        let x = Var::from_tensor(&Tensor::from_vec(x, (2, 3, 5, 7), &dev).unwrap()).unwrap();
        (x, Tensor::from_vec(y, (2, 3, 5, 7), &dev).unwrap())
    }

    #[test]
    fn the_one_pass_focal_kernel_equals_the_composed_loss_and_gradient() {
        let (x, y) = heatmap_case();
        let bounds = (P_MIN.ln(), (1.0 - P_MIN).ln());
        let fused = x.as_tensor().apply_op2(&y, FocalSums { bounds }).unwrap();
        let (p, n, k) = focal_sums_composed(x.as_tensor(), &y, bounds).unwrap();
        let composed = Tensor::stack(&[p, n, k], 1).unwrap();
        let (a, b) = (
            fused.to_vec2::<f64>().unwrap(),
            composed.to_vec2::<f64>().unwrap(),
        );
        for (ra, rb) in a.iter().zip(&b) {
            for (va, vb) in ra.iter().zip(rb) {
                assert!(
                    (va - vb).abs() <= 1e-12 * vb.abs().max(1.0),
                    "{a:?} vs {b:?}"
                );
            }
        }
        // A weighting of the three sums that reaches every term of the gradient.
        let w = Tensor::new(&[[0.7f64, -1.3, 0.4], [2.0, 0.5, -0.2]], &Device::Cpu).unwrap();
        let grad = |t: Tensor| gradient((t * &w).unwrap().sum_all().unwrap(), &x);
        let (ga, gb) = (grad(fused), grad(composed));
        assert!(ga.iter().any(|v| *v != 0.0));
        for (va, vb) in ga.iter().zip(&gb) {
            assert!((va - vb).abs() <= 1e-12 * vb.abs().max(1.0), "{va} vs {vb}");
        }
        // The clamped logits (±12) get no gradient, as through the composed clamps.
        assert_eq!((ga[1], ga[2]), (0.0, 0.0));
    }

    #[test]
    fn the_one_pass_cross_entropy_equals_the_composed_one() {
        let dev = Device::Cpu;
        let v: Vec<f64> = (0..2 * 4 * 3 * 5)
            .map(|i| ((i * 29) % 31) as f64 * 0.4 - 6.0)
            .collect();
        let x = Var::from_tensor(&Tensor::from_vec(v, (2, 4, 3, 5), &dev).unwrap()).unwrap();
        let t: Vec<u32> = (0..2 * 3 * 5)
            .map(|i| if i % 6 == 5 { 255 } else { (i * 7 % 4) as u32 })
            .collect();
        let t = Tensor::from_vec(t, (2, 3, 5), &dev).unwrap();
        let fused = cross_entropy(x.as_tensor(), &t, 255).unwrap();
        let valid = t.ne(255u32).unwrap();
        let safe = valid.where_cond(&t, &t.zeros_like().unwrap()).unwrap();
        let composed = cross_entropy_composed(x.as_tensor(), &safe, &valid).unwrap();
        assert_eq!(fused.dims(), composed.dims());
        let (a, b) = (scalar(fused.clone()), scalar(composed.clone()));
        assert!((a - b).abs() < 1e-12 * b.abs(), "{a} vs {b}");
        let grad = |t: Tensor| gradient((t * 1.7).unwrap(), &x);
        let (ga, gb) = (grad(fused), grad(composed));
        for (va, vb) in ga.iter().zip(&gb) {
            assert!(
                (va - vb).abs() <= 1e-12 * vb.abs().max(1e-3),
                "{va} vs {vb}"
            );
        }
        // Position 5 of image 0 is ignored: no gradient on any of its classes.
        assert!((0..4).all(|c| ga[c * 15 + 5] == 0.0));
    }

    #[test]
    fn a_nan_where_no_term_reads_it_still_makes_the_loss_nan() {
        let dev = Device::Cpu;
        // Focal: a NaN logit under a target above 1 (neither term), and a NaN target.
        let logits = Tensor::new(&[[[[f32::NAN, 0.5, 1.0]]]], &dev).unwrap();
        let target = Tensor::new(&[[[[2.0f32, 1.0, 0.0]]]], &dev).unwrap();
        assert!(scalar(focal_loss(&logits, &target, None).unwrap()).is_nan());
        let logits = Tensor::new(&[[[[0.2f32, 0.5, 1.0]]]], &dev).unwrap();
        let target = Tensor::new(&[[[[f32::NAN, 1.0, 0.0]]]], &dev).unwrap();
        assert!(scalar(focal_loss(&logits, &target, None).unwrap()).is_nan());
        // Cross-entropy: a NaN logit at an ignored row.
        let logits = Tensor::new(&[[1.0f32, 2.0], [f32::NAN, 0.0]], &dev).unwrap();
        let target = Tensor::new(&[0u32, 255], &dev).unwrap();
        assert!(scalar(cross_entropy(&logits, &target, 255).unwrap()).is_nan());
    }

    #[test]
    fn bad_shapes_are_errors_that_name_the_shapes() {
        let dev = Device::Cpu;
        let a = Tensor::zeros((1, 2, 4, 4), DType::F32, &dev).unwrap();
        let b = Tensor::zeros((1, 3, 4, 4), DType::F32, &dev).unwrap();
        assert_eq!(
            focal_loss(&a, &b, None).unwrap_err().to_string(),
            "focal_loss: shape mismatch between logits [1, 2, 4, 4] and target [1, 3, 4, 4]"
        );
        let empty = Tensor::zeros((0, 2, 4, 4), DType::F32, &dev).unwrap();
        assert_eq!(
            focal_loss(&empty, &empty, None).unwrap_err().to_string(),
            "focal_loss: logits has shape [0, 2, 4, 4], expected a non-empty tensor"
        );
        let presence = Tensor::ones(3, DType::F32, &dev).unwrap();
        assert_eq!(
            focal_loss(&a, &a, Some(&presence)).unwrap_err().to_string(),
            "focal_loss: presence has shape [3], expected (1,), one flag per image"
        );
        let ind = Tensor::new(&[[16u32]], &dev).unwrap();
        let mask = Tensor::ones((1, 1), DType::F32, &dev).unwrap();
        let target = Tensor::zeros((1, 1, 2), DType::F32, &dev).unwrap();
        assert_eq!(
            reg_l1(&a, &ind, &mask, &target).unwrap_err().to_string(),
            "reg_l1: index 16 is outside a 4 x 4 map"
        );
        let target3 = Tensor::zeros((1, 1, 3), DType::F32, &dev).unwrap();
        assert_eq!(
            reg_l1(&a, &ind, &mask, &target3).unwrap_err().to_string(),
            "reg_l1: target has shape [1, 1, 3], expected (1, 1, 2) = (B, K, C of pred)"
        );
        let labels = Tensor::new(&[[[7u32; 4]; 4]], &dev).unwrap();
        assert_eq!(
            cross_entropy(&a, &labels, 255).unwrap_err().to_string(),
            "cross_entropy: target class 7 is not below the 2 classes of the logits (ignore index 255)"
        );
        let wrong = Tensor::zeros((1, 4), DType::U32, &dev).unwrap();
        assert_eq!(
            cross_entropy(&a, &wrong, 255).unwrap_err().to_string(),
            "cross_entropy: shape mismatch between logits [1, 2, 4, 4] and target [1, 4]"
        );
    }
}
