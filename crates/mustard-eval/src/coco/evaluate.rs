//! pycocotools' `COCOeval.evaluate` and `accumulate`.

use std::collections::HashMap;
use std::ops::Range;

use rayon::prelude::*;

use super::report::{CategoryAp, CocoEval, NdArray};
use super::{CocoDt, CocoGt, IouType, Params, ResultKind};
use crate::rle::{self, Rle};
use crate::{numpy, Error, Result};

/// `np.spacing(1)`.
const EPS: f64 = f64::EPSILON;

/// Per detection and IoU threshold: what accumulation counts it as.
const FP: u8 = 0;
const TP: u8 = 1;
const IGNORED: u8 = 2;

/// Evaluates `dt` against `gt` as pycocotools' `COCOeval(gt, dt, iou_type)` with
/// `evaluate()`, `accumulate()` and `summarize()` does, in parallel over (category, image)
/// pairs and then over categories.
pub fn evaluate(gt: &CocoGt, dt: &CocoDt, params: &Params) -> Result<CocoEval> {
    let mut p = params.validated()?;
    let img_ids = sorted_unique(match &p.img_ids {
        Some(ids) => ids.clone(),
        None => gt.images().iter().map(|i| i.id).collect(),
    });
    let cat_ids = sorted_unique(match &p.cat_ids {
        Some(ids) => ids.clone(),
        None => gt.categories().iter().map(|c| c.id).collect(),
    });
    let img_pos: HashMap<i64, u32> = (0u32..)
        .zip(img_ids.iter().copied())
        .map(|(i, id)| (id, i))
        .collect();
    let cat_pos: HashMap<i64, u32> = (0u32..)
        .zip(cat_ids.iter().copied())
        .map(|(i, id)| (id, i))
        .collect();

    // Annotations and detections of the evaluated images and categories, grouped by
    // (category, image) and in file order within a group, as pycocotools' `_gts`/`_dts`.
    let key = |image_id: i64, category_id: i64| -> Option<(u32, u32)> {
        Some((*cat_pos.get(&category_id)?, *img_pos.get(&image_id)?))
    };
    let mut gt_sel: Vec<(u32, u32, usize)> = gt
        .annotations()
        .iter()
        .enumerate()
        .filter_map(|(n, a)| key(a.image_id, a.category_id).map(|(k, i)| (k, i, n)))
        .collect();
    gt_sel.sort_by_key(|&(k, i, _)| (k, i));
    let mut dt_sel: Vec<(u32, u32, usize)> = dt
        .detections()
        .iter()
        .enumerate()
        .filter_map(|(n, d)| key(d.image_id, d.category_id).map(|(k, i)| (k, i, n)))
        .collect();
    dt_sel.sort_by_key(|&(k, i, _)| (k, i));

    let gts = prepare_gts(gt, &gt_sel, &p)?;
    let dts = prepare_dts(gt, dt, &dt_sel, &p)?;
    let cells = group(&gt_sel, &dt_sel);

    let evals: Vec<CellEval> = cells
        .par_iter()
        .map(|c| evaluate_cell(&gts[c.gts.clone()], &dts[c.dts.clone()], &p))
        .collect();

    // Cells of one category are contiguous.
    let k_count = cat_ids.len();
    let mut k_ranges = vec![0..0; k_count];
    let mut start = 0;
    while start < cells.len() {
        let k = cells[start].k;
        let end = start + cells[start..].iter().take_while(|c| c.k == k).count();
        k_ranges[k as usize] = start..end;
        start = end;
    }
    let per_k: Vec<Accumulated> = k_ranges
        .par_iter()
        .map(|r| accumulate(&evals[r.clone()], &p))
        .collect();

    let (t_n, r_n, a_n, m_n) = (
        p.iou_thrs.len(),
        p.rec_thrs.len(),
        p.area_ranges.len(),
        p.max_dets.len(),
    );
    let mut precision = NdArray::filled(vec![t_n, r_n, k_count, a_n, m_n], -1.0);
    let mut recall = NdArray::filled(vec![t_n, k_count, a_n, m_n], -1.0);
    for (k, acc) in per_k.iter().enumerate() {
        for t in 0..t_n {
            for a in 0..a_n {
                for m in 0..m_n {
                    recall.data[((t * k_count + k) * a_n + a) * m_n + m] =
                        acc.recall[(t * a_n + a) * m_n + m];
                    for r in 0..r_n {
                        precision.data[(((t * r_n + r) * k_count + k) * a_n + a) * m_n + m] =
                            acc.precision[((t * r_n + r) * a_n + a) * m_n + m];
                    }
                }
            }
        }
    }
    let per_category = cat_ids
        .iter()
        .zip(&per_k)
        .enumerate()
        .map(|(k, (&id, acc))| CategoryAp::new(id, gt, k, acc.num_gt, &precision, &p))
        .collect();
    p.img_ids = Some(img_ids);
    p.cat_ids = Some(cat_ids);
    Ok(CocoEval::new(p, precision, recall, per_category))
}

fn sorted_unique(mut ids: Vec<i64>) -> Vec<i64> {
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// What matching needs of a ground-truth annotation.
struct GtItem<'a> {
    area: f64,
    /// `iscrowd`, or (keypoints) no labelled joint.
    ignore: bool,
    crowd: bool,
    /// A match with id 0 counts as none in pycocotools (`dtm` holds the matched id).
    id_is_zero: bool,
    geometry: Geometry<'a>,
}

/// What matching needs of a detection.
struct DtItem<'a> {
    score: f64,
    area: f64,
    geometry: Geometry<'a>,
}

enum Geometry<'a> {
    Box([f64; 4]),
    Mask(Rle, [f64; 4]),
    Keypoints(&'a [f64], [f64; 4]),
}

fn record(gt: &CocoGt, n: usize) -> String {
    format!("annotation {n} (id {})", gt.annotations()[n].id)
}

fn invalid(gt: &CocoGt, n: usize, field: &'static str, reason: impl Into<String>) -> Error {
    Error::InvalidRecord {
        origin: gt.origin().to_string(),
        record: record(gt, n),
        field,
        reason: reason.into(),
    }
}

/// The items, or the first error in input order (deterministic under parallel preparation).
fn collect_ordered<T>(items: Vec<Result<T>>) -> Result<Vec<T>> {
    items.into_iter().collect()
}

fn prepare_gts<'a>(
    gt: &'a CocoGt,
    sel: &[(u32, u32, usize)],
    p: &Params,
) -> Result<Vec<GtItem<'a>>> {
    let k_joints = p.kpt_oks_sigmas.len();
    let items: Vec<Result<GtItem<'a>>> = sel
        .par_iter()
        .map(|&(_, _, n)| {
            let a = &gt.annotations()[n];
            let mut ignore = a.iscrowd;
            let geometry = match p.iou_type {
                IouType::Bbox => {
                    Geometry::Box(a.bbox.ok_or_else(|| invalid(gt, n, "bbox", "is missing"))?)
                }
                IouType::Segm => {
                    let s = a
                        .segmentation
                        .as_ref()
                        .ok_or_else(|| invalid(gt, n, "segmentation", "is missing"))?;
                    let size = gt.image(a.image_id).and_then(|i| i.size());
                    let rle = s
                        .to_rle(size)
                        .map_err(|e| invalid(gt, n, "segmentation", e.to_string()))?;
                    let b = rle.to_bbox();
                    Geometry::Mask(rle, b)
                }
                IouType::Keypoints => {
                    let num = a
                        .num_keypoints
                        .ok_or_else(|| invalid(gt, n, "num_keypoints", "is missing"))?;
                    ignore = ignore || num == 0;
                    let k = a
                        .keypoints
                        .as_deref()
                        .ok_or_else(|| invalid(gt, n, "keypoints", "are missing"))?;
                    if k.len() != 3 * k_joints {
                        return Err(invalid(
                            gt,
                            n,
                            "keypoints",
                            format!(
                                "has {} values, expected 3 x {k_joints} for {k_joints} sigmas",
                                k.len()
                            ),
                        ));
                    }
                    let b = a.bbox.ok_or_else(|| invalid(gt, n, "bbox", "is missing"))?;
                    Geometry::Keypoints(k, b)
                }
            };
            Ok(GtItem {
                area: a.area,
                ignore,
                crowd: a.iscrowd,
                id_is_zero: a.id == 0,
                geometry,
            })
        })
        .collect();
    collect_ordered(items)
}

fn prepare_dts<'a>(
    gt: &CocoGt,
    dt: &'a CocoDt,
    sel: &[(u32, u32, usize)],
    p: &Params,
) -> Result<Vec<DtItem<'a>>> {
    let k_joints = p.kpt_oks_sigmas.len();
    let invalid = |n: usize, field: &'static str, reason: String| Error::InvalidRecord {
        origin: dt.origin().to_string(),
        record: format!("result {n}"),
        field,
        reason,
    };
    let items: Vec<Result<DtItem<'a>>> = sel
        .par_iter()
        .map(|&(_, _, n)| {
            let d = &dt.detections()[n];
            let geometry = match p.iou_type {
                IouType::Bbox => Geometry::Box(d.bbox),
                IouType::Segm => {
                    let size = gt.image(d.image_id).and_then(|i| i.size());
                    let rle = match (&d.segmentation, dt.kind()) {
                        (Some(s), _) => s.to_rle(size),
                        // loadRes gives box results the polygon of their box.
                        (None, ResultKind::Bbox) => match size {
                            Some((h, w)) => Rle::from_bbox(d.bbox, h, w),
                            None => Err(Error::mask(
                                "the box needs the image's height and width, which are missing",
                            )),
                        },
                        (None, _) => return Err(invalid(n, "segmentation", "is missing".into())),
                    }
                    .map_err(|e| invalid(n, "segmentation", e.to_string()))?;
                    let b = rle.to_bbox();
                    Geometry::Mask(rle, b)
                }
                IouType::Keypoints => {
                    let k = d
                        .keypoints
                        .as_deref()
                        .ok_or_else(|| invalid(n, "keypoints", "are missing".into()))?;
                    if k.len() != 3 * k_joints {
                        return Err(invalid(
                            n,
                            "keypoints",
                            format!(
                                "has {} values, expected 3 x {k_joints} for {k_joints} sigmas",
                                k.len()
                            ),
                        ));
                    }
                    Geometry::Keypoints(k, d.bbox)
                }
            };
            Ok(DtItem {
                score: d.score,
                area: d.area,
                geometry,
            })
        })
        .collect();
    collect_ordered(items)
}

/// The ground truth and detections of one (category, image) pair.
struct Cell {
    k: u32,
    gts: Range<usize>,
    dts: Range<usize>,
}

fn group(gt_sel: &[(u32, u32, usize)], dt_sel: &[(u32, u32, usize)]) -> Vec<Cell> {
    let mut cells = Vec::new();
    let (mut g, mut d) = (0, 0);
    while g < gt_sel.len() || d < dt_sel.len() {
        let kg = gt_sel.get(g).map(|&(k, i, _)| (k, i));
        let kd = dt_sel.get(d).map(|&(k, i, _)| (k, i));
        let key = match (kg, kd) {
            (Some(a), Some(b)) => a.min(b),
            (Some(a), None) => a,
            (None, Some(b)) => b,
            (None, None) => break,
        };
        let g_end = g + gt_sel[g..]
            .iter()
            .take_while(|&&(k, i, _)| (k, i) == key)
            .count();
        let d_end = d + dt_sel[d..]
            .iter()
            .take_while(|&&(k, i, _)| (k, i) == key)
            .count();
        cells.push(Cell {
            k: key.0,
            gts: g..g_end,
            dts: d..d_end,
        });
        g = g_end;
        d = d_end;
    }
    cells
}

/// `evaluateImg` of one (category, image) pair for every area range.
struct CellEval {
    /// Scores of the kept detections, highest first.
    scores: Vec<f64>,
    /// `[area][detection][threshold]`: FP, TP or IGNORED.
    states: Vec<u8>,
    /// Per area range, the ground truth that is not ignored.
    valid_gt: Vec<u32>,
}

fn evaluate_cell(gts: &[GtItem<'_>], dts: &[DtItem<'_>], p: &Params) -> CellEval {
    // Highest score first, ties in file order (np.argsort(-scores, kind='mergesort')).
    let mut order: Vec<usize> = (0..dts.len()).collect();
    order.sort_by(|&a, &b| {
        dts[b]
            .score
            .partial_cmp(&dts[a].score)
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    order.truncate(p.max_dets[p.max_dets.len() - 1]);
    let dts: Vec<&DtItem<'_>> = order.iter().map(|&i| &dts[i]).collect();
    let (g_n, d_n, t_n) = (gts.len(), dts.len(), p.iou_thrs.len());
    let sim = if g_n > 0 && d_n > 0 {
        similarity(gts, &dts, p)
    } else {
        Vec::new()
    };

    let mut states = vec![FP; p.area_ranges.len() * d_n * t_n];
    let mut valid_gt = Vec::with_capacity(p.area_ranges.len());
    let mut gt_order: Vec<usize> = Vec::with_capacity(g_n);
    let mut ignored = vec![false; g_n];
    let mut matched = vec![false; g_n];
    for (a, range) in p.area_ranges.iter().enumerate() {
        for (g, item) in gts.iter().enumerate() {
            ignored[g] = item.ignore || range.excludes(item.area);
        }
        // Ignored ground truth last, stable.
        gt_order.clear();
        gt_order.extend((0..g_n).filter(|&g| !ignored[g]));
        let valid = gt_order.len();
        gt_order.extend((0..g_n).filter(|&g| ignored[g]));
        valid_gt.push(valid as u32);
        let states = &mut states[a * d_n * t_n..(a + 1) * d_n * t_n];
        for (t, &thr) in p.iou_thrs.iter().enumerate() {
            matched.iter_mut().for_each(|m| *m = false);
            for d in 0..d_n {
                let mut best = thr.min(1.0 - 1e-10);
                let mut m: Option<usize> = None;
                if !sim.is_empty() {
                    let row = &sim[d * g_n..(d + 1) * g_n];
                    for (gi, &g) in gt_order.iter().enumerate() {
                        // Already matched, and not a crowd region.
                        if matched[gi] && !gts[g].crowd {
                            continue;
                        }
                        // Matched to a regular annotation, and now on ignored ones: stop.
                        if let Some(mi) = m {
                            if !ignored[gt_order[mi]] && ignored[g] {
                                break;
                            }
                        }
                        if row[g] < best {
                            continue;
                        }
                        best = row[g];
                        m = Some(gi);
                    }
                }
                let out_of_range = range.excludes(dts[d].area);
                states[d * t_n + t] = match m {
                    None if out_of_range => IGNORED,
                    None => FP,
                    Some(mi) => {
                        matched[mi] = true;
                        let g = gt_order[mi];
                        if ignored[g] || (gts[g].id_is_zero && out_of_range) {
                            IGNORED
                        } else if gts[g].id_is_zero {
                            FP
                        } else {
                            TP
                        }
                    }
                };
            }
        }
    }
    CellEval {
        scores: dts.iter().map(|d| d.score).collect(),
        states,
        valid_gt,
    }
}

/// `[detection x ground truth]` IoU (boxes, masks) or OKS (keypoints).
fn similarity(gts: &[GtItem<'_>], dts: &[&DtItem<'_>], p: &Params) -> Vec<f64> {
    let mut out = Vec::with_capacity(dts.len() * gts.len());
    match p.iou_type {
        IouType::Keypoints => {
            let vars: Vec<f64> = p
                .kpt_oks_sigmas
                .iter()
                .map(|s| (s * 2.0) * (s * 2.0))
                .collect();
            let mut buf = Vec::with_capacity(vars.len());
            for d in dts {
                for g in gts {
                    out.push(match (&d.geometry, &g.geometry) {
                        (Geometry::Keypoints(dk, _), Geometry::Keypoints(gk, gb)) => {
                            oks(gk, gb, g.area, dk, &vars, &mut buf)
                        }
                        _ => 0.0,
                    });
                }
            }
        }
        IouType::Bbox | IouType::Segm => {
            for d in dts {
                for g in gts {
                    out.push(match (&d.geometry, &g.geometry) {
                        (Geometry::Box(db), Geometry::Box(gb)) => rle::bbox_iou(db, gb, g.crowd),
                        (Geometry::Mask(dm, db), Geometry::Mask(gm, gb)) => {
                            rle::iou_with_boxes(dm, db, gm, gb, g.crowd)
                        }
                        _ => 0.0,
                    });
                }
            }
        }
    }
    out
}

/// `computeOks` for one pair: the mean over labelled joints of exp(-d² / (2 (2σ)² (area + ε))).
/// Without labelled joints, the distance is to the box twice the annotation's box, over all
/// joints.
fn oks(
    gt: &[f64],
    gt_box: &[f64; 4],
    area: f64,
    dt: &[f64],
    vars: &[f64],
    buf: &mut Vec<f64>,
) -> f64 {
    let labelled = gt.iter().skip(2).step_by(3).filter(|&&v| v > 0.0).count();
    let [bx, by, bw, bh] = *gt_box;
    let (x0, x1) = (bx - bw, bx + bw * 2.0);
    let (y0, y1) = (by - bh, by + bh * 2.0);
    buf.clear();
    for (j, &var) in vars.iter().enumerate() {
        let (xg, yg, vg) = (gt[3 * j], gt[3 * j + 1], gt[3 * j + 2]);
        let (xd, yd) = (dt[3 * j], dt[3 * j + 1]);
        let (dx, dy) = if labelled > 0 {
            if vg <= 0.0 {
                continue;
            }
            (xd - xg, yd - yg)
        } else {
            (
                0f64.max(x0 - xd) + 0f64.max(xd - x1),
                0f64.max(y0 - yd) + 0f64.max(yd - y1),
            )
        };
        let e = (dx * dx + dy * dy) / var / (area + EPS) / 2.0;
        buf.push((-e).exp());
    }
    numpy::sum(buf) / buf.len() as f64
}

/// `accumulate` of one category: precision `[T, R, A, M]`, recall `[T, A, M]`.
struct Accumulated {
    precision: Vec<f64>,
    recall: Vec<f64>,
    /// Ground truth not ignored in the first area range.
    num_gt: u64,
}

fn accumulate(cells: &[CellEval], p: &Params) -> Accumulated {
    let (t_n, r_n, a_n, m_n) = (
        p.iou_thrs.len(),
        p.rec_thrs.len(),
        p.area_ranges.len(),
        p.max_dets.len(),
    );
    let mut precision = vec![-1.0; t_n * r_n * a_n * m_n];
    let mut recall = vec![-1.0; t_n * a_n * m_n];
    // All kept detections of the category, images in id order, then sorted by score with a
    // stable sort: np.argsort(-dtScores, kind='mergesort') of the concatenation. Keeping only
    // those of rank < maxDet afterwards gives the same order as sorting them alone.
    let mut entries: Vec<(f64, u32, u32)> = Vec::new();
    for (c, cell) in cells.iter().enumerate() {
        entries.extend((0u32..).zip(&cell.scores).map(|(r, &s)| (s, c as u32, r)));
    }
    entries.sort_by(|a, b| b.0.partial_cmp(&a.0).unwrap_or(std::cmp::Ordering::Equal));
    let n = entries.len();
    // Per max_dets, the entries of rank < maxDet.
    let kept: Vec<Vec<u32>> = p
        .max_dets
        .iter()
        .map(|&max_det| {
            (0u32..)
                .zip(&entries)
                .filter(|(_, &(_, _, r))| (r as usize) < max_det)
                .map(|(e, _)| e)
                .collect()
        })
        .collect();

    // `[threshold][entry]` states of one area range.
    let mut states = vec![FP; n * t_n];
    // Cumulative (tp, fp) at each detection that is not ignored.
    let mut counts: Vec<(u32, u32)> = Vec::with_capacity(n);
    let mut pr: Vec<f64> = Vec::with_capacity(n);
    let mut num_gt = 0;
    for a in 0..a_n {
        let npig: u64 = cells.iter().map(|c| u64::from(c.valid_gt[a])).sum();
        if a == 0 {
            num_gt = npig;
        }
        if npig == 0 {
            continue;
        }
        let npig = npig as f64;
        for (e, &(_, c, r)) in entries.iter().enumerate() {
            let cell = &cells[c as usize];
            let from = (a * cell.scores.len() + r as usize) * t_n;
            for (t, &state) in cell.states[from..from + t_n].iter().enumerate() {
                states[t * n + e] = state;
            }
        }
        for (m, kept) in kept.iter().enumerate() {
            for t in 0..t_n {
                let states = &states[t * n..(t + 1) * n];
                // Ignored detections only repeat the previous recall and precision, which
                // changes neither the interpolated precision nor the recall: they are skipped.
                counts.clear();
                let (mut tp, mut fp) = (0u32, 0u32);
                for &e in kept {
                    match states[e as usize] {
                        TP => tp += 1,
                        FP => fp += 1,
                        _ => continue,
                    }
                    counts.push((tp, fp));
                }
                // tp / npig and tp / (fp + tp + np.spacing(1)), as numpy computes them.
                let rc = |i: usize| f64::from(counts[i].0) / npig;
                pr.clear();
                pr.extend(
                    counts
                        .iter()
                        .map(|&(tp, fp)| f64::from(tp) / (f64::from(fp) + f64::from(tp) + EPS)),
                );
                recall[(t * a_n + a) * m_n + m] = if counts.is_empty() {
                    0.0
                } else {
                    rc(counts.len() - 1)
                };
                for i in (1..pr.len()).rev() {
                    if pr[i] > pr[i - 1] {
                        pr[i - 1] = pr[i];
                    }
                }
                for (ri, &thr) in p.rec_thrs.iter().enumerate() {
                    // np.searchsorted(rc, thr, side='left'); past the end, this and all later
                    // thresholds keep precision 0.
                    let pi = partition_point(counts.len(), |i| rc(i) < thr);
                    match pr.get(pi) {
                        Some(&v) => precision[((t * r_n + ri) * a_n + a) * m_n + m] = v,
                        None => {
                            for rj in ri..r_n {
                                precision[((t * r_n + rj) * a_n + a) * m_n + m] = 0.0;
                            }
                            break;
                        }
                    }
                }
            }
        }
    }
    Accumulated {
        precision,
        recall,
        num_gt,
    }
}

/// The first index in `0..len` where `below` is false (`below` must be true, then false).
fn partition_point(len: usize, below: impl Fn(usize) -> bool) -> usize {
    let (mut lo, mut hi) = (0, len);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if below(mid) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    lo
}
