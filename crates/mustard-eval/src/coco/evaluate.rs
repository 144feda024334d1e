//! pycocotools' `COCOeval.evaluate` and `accumulate`.

use std::ops::Range;

use rayon::prelude::*;

use super::ids::IdIndex;
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
    // Unique ids: no duplicate to report.
    let unique = |ids: &[i64]| IdIndex::new(ids).unwrap_or_else(|_| unreachable!());
    let (img_pos, cat_pos) = (unique(&img_ids), unique(&cat_ids));

    // Annotations and detections of the evaluated images and categories, grouped by
    // (category, image) and in file order within a group, as pycocotools' `_gts`/`_dts`.
    let key = |image_id: i64, category_id: i64| -> Option<u64> {
        let k = cat_pos.get(category_id)? as u64;
        let i = img_pos.get(image_id)? as u64;
        Some(k << 32 | i)
    };
    let k_count = cat_ids.len();
    let gt_sel = select(
        gt.annotations()
            .par_iter()
            .map(|a| key(a.image_id, a.category_id)),
        k_count,
        img_ids.len(),
    );
    let dt_sel = select(
        dt.detections()
            .par_iter()
            .map(|d| key(d.image_id, d.category_id)),
        k_count,
        img_ids.len(),
    );
    let gt_ranges = category_ranges(&gt_sel, k_count);
    let dt_ranges = category_ranges(&dt_sel, k_count);

    // The (category, image) pairs matched in parallel, in chunks of whole pairs within a
    // category (a category of many pairs is split, so that one-category keypoint sets use
    // every thread), into flat buffers; then each category's chunks, joined in image order,
    // accumulated. Nothing per pair outlives its chunk.
    let target = ((gt_sel.len() + dt_sel.len()) / (8 * rayon::current_num_threads())).max(2048);
    let chunks = chunks(&gt_sel, &dt_sel, &gt_ranges, &dt_ranges, target);
    let parts: Vec<Part> = chunks
        .par_iter()
        .map(|c| evaluate_pairs(gt, dt, &gt_sel[c.g.clone()], &dt_sel[c.d.clone()], &p))
        .collect();
    // The first error in (category, image, file) order, the ground truth's before the
    // detections', whatever the threads did.
    let mut per_k_parts: Vec<Vec<CategoryEval>> = (0..k_count).map(|_| Vec::new()).collect();
    let mut dt_error = None;
    for (c, part) in chunks.iter().zip(parts) {
        if let Some(e) = part.gt_error {
            return Err(e);
        }
        if dt_error.is_none() {
            dt_error = part.dt_error;
        }
        per_k_parts[c.k].push(part.eval);
    }
    if let Some(e) = dt_error {
        return Err(e);
    }
    let per_k: Vec<Accumulated> = per_k_parts
        .into_par_iter()
        .map(|parts| accumulate(&CategoryEval::join(parts, p.area_ranges.len()), &p))
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

/// An evaluated record: `key` = category position << 32 | image position, `n` its index in
/// the file.
#[derive(Clone, Copy)]
struct Sel {
    key: u64,
    n: usize,
}

impl Sel {
    fn category(self) -> usize {
        (self.key >> 32) as usize
    }
}

/// The records with a key, sorted by key and in file order within a key: two stable
/// counting passes over the records in file order, by image position and then by category
/// position, linear in the records.
fn select(
    keys: impl IndexedParallelIterator<Item = Option<u64>>,
    k_count: usize,
    i_count: usize,
) -> Vec<Sel> {
    let sel: Vec<Sel> = keys
        .enumerate()
        .filter_map(|(n, key)| key.map(|key| Sel { key, n }))
        .collect();
    let by_image = counting_sort(&sel, i_count, |s| (s.key & u64::from(u32::MAX)) as usize);
    drop(sel);
    counting_sort(&by_image, k_count, Sel::category)
}

/// `items` sorted by `bucket` (below `buckets`), stably.
fn counting_sort(items: &[Sel], buckets: usize, bucket: impl Fn(Sel) -> usize) -> Vec<Sel> {
    let mut starts = vec![0usize; buckets + 1];
    for &s in items {
        starts[bucket(s) + 1] += 1;
    }
    for b in 1..=buckets {
        starts[b] += starts[b - 1];
    }
    let mut out = vec![Sel { key: 0, n: 0 }; items.len()];
    for &s in items {
        let at = &mut starts[bucket(s)];
        out[*at] = s;
        *at += 1;
    }
    out
}

/// Per category position, its range of `sel`.
fn category_ranges(sel: &[Sel], k_count: usize) -> Vec<Range<usize>> {
    let mut ranges = vec![0..0; k_count];
    let mut start = 0;
    while start < sel.len() {
        let k = sel[start].category();
        let end = start + sel[start..].partition_point(|s| s.category() == k);
        ranges[k] = start..end;
        start = end;
    }
    ranges
}

/// What matching needs of a ground-truth annotation.
struct GtItem<'a> {
    area: f64,
    /// `iscrowd`, or (keypoints) no labelled joint.
    ignore: bool,
    crowd: bool,
    /// A match with id 0 counts as none in pycocotools (`dtm` holds the matched id).
    id_is_zero: bool,
    /// Keypoints with a visibility above 0 (0 for boxes and masks).
    labelled: usize,
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
    /// A detection whose mask is not needed (no ground truth in its pair) and known to be
    /// valid (results read as masks were decoded once when loaded).
    Unused,
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

fn gt_item<'a>(gt: &'a CocoGt, n: usize, p: &Params) -> Result<GtItem<'a>> {
    let k_joints = p.kpt_oks_sigmas.len();
    let a = &gt.annotations()[n];
    let mut ignore = a.iscrowd;
    let mut labelled = 0;
    let geometry = match p.iou_type {
        IouType::Bbox => Geometry::Box(a.bbox.ok_or_else(|| invalid(gt, n, "bbox", "is missing"))?),
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
            labelled = labelled_joints(k);
            Geometry::Keypoints(k, b)
        }
    };
    Ok(GtItem {
        area: a.area,
        ignore,
        crowd: a.iscrowd,
        id_is_zero: a.id == 0,
        labelled,
        geometry,
    })
}

/// A detection ready for matching; `needed` is false when its pair has no ground truth (its
/// geometry is then only checked, not built, where loading already checked it).
fn dt_item<'a>(
    gt: &CocoGt,
    dt: &'a CocoDt,
    n: usize,
    p: &Params,
    needed: bool,
) -> Result<DtItem<'a>> {
    let k_joints = p.kpt_oks_sigmas.len();
    let invalid = |field: &'static str, reason: String| Error::InvalidRecord {
        origin: dt.origin().to_string(),
        record: format!("result {n}"),
        field,
        reason,
    };
    let d = &dt.detections()[n];
    let geometry = match p.iou_type {
        IouType::Bbox => Geometry::Box(d.bbox),
        IouType::Segm if !needed && dt.kind() == ResultKind::Segm => Geometry::Unused,
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
                (None, _) => return Err(invalid("segmentation", "is missing".into())),
            }
            .map_err(|e| invalid("segmentation", e.to_string()))?;
            let b = rle.to_bbox();
            Geometry::Mask(rle, b)
        }
        IouType::Keypoints => {
            let k = d
                .keypoints
                .as_deref()
                .ok_or_else(|| invalid("keypoints", "are missing".into()))?;
            if k.len() != 3 * k_joints {
                return Err(invalid(
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
}

/// `evaluateImg` of every pair of a category, flat: per kept detection (pairs in image order,
/// each pair's detections highest score first) its score, its rank in its pair and, per area
/// range and IoU threshold, FP, TP or IGNORED.
struct CategoryEval {
    scores: Vec<f64>,
    ranks: Vec<u32>,
    /// `[detection][area][threshold]`.
    states: Vec<u8>,
    /// Per area range, the ground truth that is not ignored.
    npig: Vec<u64>,
}

/// Buffers reused from pair to pair, and what OKS needs of the parameters.
#[derive(Default)]
struct Scratch {
    oks: OksScale,
    joints: Vec<f64>,
    order: Vec<usize>,
    sim: Vec<f64>,
    gt_order: Vec<usize>,
    ignored: Vec<bool>,
    matched: Vec<bool>,
    row_max: Vec<f64>,
}

impl CategoryEval {
    fn new(a_n: usize) -> Self {
        CategoryEval {
            scores: Vec::new(),
            ranks: Vec::new(),
            states: Vec::new(),
            npig: vec![0; a_n],
        }
    }

    /// The chunks of one category, in order, as one.
    fn join(mut parts: Vec<CategoryEval>, a_n: usize) -> CategoryEval {
        if parts.len() == 1 {
            return parts.pop().unwrap_or_else(|| CategoryEval::new(a_n));
        }
        let mut all = CategoryEval::new(a_n);
        all.scores
            .reserve(parts.iter().map(|p| p.scores.len()).sum());
        all.ranks.reserve(parts.iter().map(|p| p.ranks.len()).sum());
        all.states
            .reserve(parts.iter().map(|p| p.states.len()).sum());
        for part in parts {
            all.scores.extend_from_slice(&part.scores);
            all.ranks.extend_from_slice(&part.ranks);
            all.states.extend_from_slice(&part.states);
            for (total, n) in all.npig.iter_mut().zip(&part.npig) {
                *total += n;
            }
        }
        all
    }
}

/// Whole (category, image) pairs of one category: `g` and `d` are ranges of the selections.
struct Chunk {
    k: usize,
    g: Range<usize>,
    d: Range<usize>,
}

/// Every category's pairs, cut into chunks of about `target` records (at least one per
/// category that has records, never inside a pair).
fn chunks(
    gt_sel: &[Sel],
    dt_sel: &[Sel],
    gt_ranges: &[Range<usize>],
    dt_ranges: &[Range<usize>],
    target: usize,
) -> Vec<Chunk> {
    let mut chunks = Vec::new();
    for (k, (gr, dr)) in gt_ranges.iter().zip(dt_ranges).enumerate() {
        let (mut g, mut d) = (gr.start, dr.start);
        let (mut g0, mut d0) = (g, d);
        while g < gr.end || d < dr.end {
            let key = match (gt_sel[g..gr.end].first(), dt_sel[d..dr.end].first()) {
                (Some(a), Some(b)) => a.key.min(b.key),
                (Some(a), None) => a.key,
                (None, Some(b)) => b.key,
                (None, None) => break,
            };
            g += run_len(&gt_sel[g..gr.end], key);
            d += run_len(&dt_sel[d..dr.end], key);
            if (g - g0) + (d - d0) >= target {
                chunks.push(Chunk {
                    k,
                    g: g0..g,
                    d: d0..d,
                });
                (g0, d0) = (g, d);
            }
        }
        if g > g0 || d > d0 {
            chunks.push(Chunk {
                k,
                g: g0..g,
                d: d0..d,
            });
        }
    }
    chunks
}

/// How many records at the start of `sel` have `key`: counted one by one, as pairs hold a
/// few records (a binary search over the rest of the selection strayed over megabytes).
fn run_len(sel: &[Sel], key: u64) -> usize {
    sel.iter().take_while(|s| s.key == key).count()
}

/// A chunk's evaluation, or the first errors met in it.
struct Part {
    eval: CategoryEval,
    gt_error: Option<Error>,
    dt_error: Option<Error>,
}

fn evaluate_pairs(gt: &CocoGt, dt: &CocoDt, gsel: &[Sel], dsel: &[Sel], p: &Params) -> Part {
    let mut eval = CategoryEval::new(p.area_ranges.len());
    let mut scratch = Scratch {
        oks: OksScale::new(p),
        ..Scratch::default()
    };
    let mut gts: Vec<GtItem<'_>> = Vec::new();
    let mut dts: Vec<DtItem<'_>> = Vec::new();
    let (mut gt_error, mut dt_error) = (None, None);
    let (mut g, mut d) = (0, 0);
    while g < gsel.len() || d < dsel.len() {
        let key = match (gsel.get(g), dsel.get(d)) {
            (Some(a), Some(b)) => a.key.min(b.key),
            (Some(a), None) => a.key,
            (None, Some(b)) => b.key,
            (None, None) => break,
        };
        let g_end = g + run_len(&gsel[g..], key);
        let d_end = d + run_len(&dsel[d..], key);
        let mut failed = false;
        gts.clear();
        for s in &gsel[g..g_end] {
            match gt_item(gt, s.n, p) {
                Ok(item) => gts.push(item),
                Err(e) => {
                    gt_error.get_or_insert(e);
                    failed = true;
                }
            }
        }
        dts.clear();
        let needed = g_end > g;
        for s in &dsel[d..d_end] {
            match dt_item(gt, dt, s.n, p, needed) {
                Ok(item) => dts.push(item),
                Err(e) => {
                    dt_error.get_or_insert(e);
                    failed = true;
                }
            }
        }
        if !failed && gt_error.is_none() && dt_error.is_none() {
            evaluate_pair(&gts, &dts, p, &mut scratch, &mut eval);
        }
        g = g_end;
        d = d_end;
    }
    Part {
        eval,
        gt_error,
        dt_error,
    }
}

/// `evaluateImg` of one (category, image) pair for every area range, appended to `out`.
fn evaluate_pair(
    gts: &[GtItem<'_>],
    dts: &[DtItem<'_>],
    p: &Params,
    s: &mut Scratch,
    out: &mut CategoryEval,
) {
    // Highest score first, ties in file order (np.argsort(-scores, kind='mergesort')).
    s.order.clear();
    s.order.extend(0..dts.len());
    s.order.sort_by(|&a, &b| {
        dts[b]
            .score
            .partial_cmp(&dts[a].score)
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    s.order.truncate(p.max_dets[p.max_dets.len() - 1]);
    let (g_n, d_n, t_n, a_n) = (
        gts.len(),
        s.order.len(),
        p.iou_thrs.len(),
        p.area_ranges.len(),
    );
    let at = a_n * t_n;
    s.sim.clear();
    if g_n > 0 && d_n > 0 {
        similarity(gts, dts, &s.order, p, &s.oks, &mut s.joints, &mut s.sim);
    }
    // Per detection, the highest similarity in its row (NaN, which matches, as infinity):
    // below a threshold, the detection matches nothing there.
    s.row_max.clear();
    if g_n > 0 {
        s.row_max.extend(s.sim.chunks_exact(g_n).map(|row| {
            row.iter().fold(f64::NEG_INFINITY, |m, &v| {
                if v.is_nan() {
                    f64::INFINITY
                } else {
                    m.max(v)
                }
            })
        }));
    }
    let base = out.scores.len();
    out.scores.extend(s.order.iter().map(|&i| dts[i].score));
    out.ranks.extend(0..d_n as u32);
    out.states.resize((base + d_n) * at, FP);
    let states = &mut out.states[base * at..];

    s.ignored.clear();
    s.ignored.resize(g_n, false);
    s.matched.clear();
    s.matched.resize(g_n, false);
    for (a, range) in p.area_ranges.iter().enumerate() {
        for (g, item) in gts.iter().enumerate() {
            s.ignored[g] = item.ignore || range.excludes(item.area);
        }
        // Ignored ground truth last, stable.
        let ignored = &s.ignored;
        s.gt_order.clear();
        s.gt_order.extend((0..g_n).filter(|&g| !ignored[g]));
        let valid = s.gt_order.len();
        s.gt_order.extend((0..g_n).filter(|&g| ignored[g]));
        out.npig[a] += valid as u64;
        if g_n == 0 {
            for (d, &i) in s.order.iter().enumerate() {
                let state = if range.excludes(dts[i].area) {
                    IGNORED
                } else {
                    FP
                };
                states[d * at + a * t_n..d * at + (a + 1) * t_n].fill(state);
            }
            continue;
        }
        for (t, &thr) in p.iou_thrs.iter().enumerate() {
            s.matched.iter_mut().for_each(|m| *m = false);
            let thr = matching_threshold(thr);
            for (d, &i) in s.order.iter().enumerate() {
                let mut best = thr;
                let mut m: Option<usize> = None;
                let row = &s.sim[d * g_n..(d + 1) * g_n];
                // Below `best` everywhere: no match (the loop would skip every column).
                let candidates = if s.row_max[d] < best {
                    &[][..]
                } else {
                    &s.gt_order[..]
                };
                for (gi, &g) in candidates.iter().enumerate() {
                    // Already matched, and not a crowd region.
                    if s.matched[gi] && !gts[g].crowd {
                        continue;
                    }
                    // Matched to a regular annotation, and now on ignored ones: stop.
                    if let Some(mi) = m {
                        if !ignored[s.gt_order[mi]] && ignored[g] {
                            break;
                        }
                    }
                    if row[g] < best {
                        continue;
                    }
                    best = row[g];
                    m = Some(gi);
                }
                let out_of_range = range.excludes(dts[i].area);
                states[d * at + a * t_n + t] = match m {
                    None if out_of_range => IGNORED,
                    None => FP,
                    Some(mi) => {
                        s.matched[mi] = true;
                        let g = s.gt_order[mi];
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
}

/// `[detection x ground truth]` IoU (boxes, masks) or OKS (keypoints, `buf` for the joints'
/// terms) of the detections `order` picks, into `out`.
fn similarity(
    gts: &[GtItem<'_>],
    dts: &[DtItem<'_>],
    order: &[usize],
    p: &Params,
    scale: &OksScale,
    buf: &mut Vec<f64>,
    out: &mut Vec<f64>,
) {
    out.reserve(order.len() * gts.len());
    match p.iou_type {
        IouType::Keypoints => {
            for &i in order {
                for g in gts {
                    out.push(match (&dts[i].geometry, &g.geometry) {
                        (Geometry::Keypoints(dk, _), Geometry::Keypoints(gk, gb)) => {
                            let joints = Joints {
                                gt: gk,
                                gt_box: gb,
                                labelled: g.labelled,
                            };
                            oks(&joints, g.area, dk, scale, buf)
                        }
                        _ => 0.0,
                    });
                }
            }
        }
        IouType::Bbox | IouType::Segm => {
            for &i in order {
                for g in gts {
                    out.push(match (&dts[i].geometry, &g.geometry) {
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
}

/// The similarity a match needs at IoU threshold `thr`: pycocotools starts matching from
/// `min(thr, 1 - 1e-10)`.
fn matching_threshold(thr: f64) -> f64 {
    thr.min(1.0 - 1e-10)
}

/// How many of the keypoints `[x, y, v, …]` have a visibility above 0.
fn labelled_joints(k: &[f64]) -> usize {
    k.iter().skip(2).step_by(3).filter(|&&v| v > 0.0).count()
}

/// A ground truth's keypoints, `labelled` of them with a visibility above 0.
struct Joints<'a> {
    gt: &'a [f64],
    gt_box: &'a [f64; 4],
    labelled: usize,
}

/// What OKS needs of the parameters: each joint's (2σ)², and the smallest joint exponent
/// past which a pair's OKS is surely below every IoU threshold, so never matches, whatever
/// its exact value (each of its terms exp(-e) is then below 0.99 of the lowest threshold, and
/// so is their mean); no cut where the lowest threshold is not above 0 (every pair may match).
#[derive(Default)]
struct OksScale {
    vars: Vec<f64>,
    cut: Option<f64>,
}

impl OksScale {
    fn new(p: &Params) -> Self {
        let lowest = p
            .iou_thrs
            .iter()
            .map(|&t| matching_threshold(t))
            .fold(f64::INFINITY, f64::min);
        OksScale {
            vars: p
                .kpt_oks_sigmas
                .iter()
                .map(|s| (s * 2.0) * (s * 2.0))
                .collect(),
            cut: (lowest > 0.0 && lowest.is_finite()).then(|| -(0.99 * lowest).ln()),
        }
    }
}

/// `computeOks` for one pair: the mean over labelled joints of exp(-d² / (2 (2σ)² (area + ε))).
/// Without labelled joints, the distance is to the box twice the annotation's box, over all
/// joints. A pair whose every exponent is past the scale's cut reads 0: it cannot match,
/// and its exponentials are not computed.
fn oks(joints: &Joints<'_>, area: f64, dt: &[f64], scale: &OksScale, buf: &mut Vec<f64>) -> f64 {
    let gt = joints.gt;
    let [bx, by, bw, bh] = *joints.gt_box;
    let (x0, x1) = (bx - bw, bx + bw * 2.0);
    let (y0, y1) = (by - bh, by + bh * 2.0);
    buf.clear();
    let mut lowest = f64::INFINITY;
    let mut nan = false;
    for (j, &var) in scale.vars.iter().enumerate() {
        let (xg, yg, vg) = (gt[3 * j], gt[3 * j + 1], gt[3 * j + 2]);
        let (xd, yd) = (dt[3 * j], dt[3 * j + 1]);
        let (dx, dy) = if joints.labelled > 0 {
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
        lowest = lowest.min(e);
        nan |= e.is_nan();
        buf.push(e);
    }
    if !nan && !buf.is_empty() && scale.cut.is_some_and(|cut| lowest > cut) {
        return 0.0;
    }
    for e in buf.iter_mut() {
        *e = (-*e).exp();
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

fn accumulate(eval: &CategoryEval, p: &Params) -> Accumulated {
    let (t_n, r_n, a_n, m_n) = (
        p.iou_thrs.len(),
        p.rec_thrs.len(),
        p.area_ranges.len(),
        p.max_dets.len(),
    );
    let at = a_n * t_n;
    let mut precision = vec![-1.0; t_n * r_n * a_n * m_n];
    let mut recall = vec![-1.0; t_n * a_n * m_n];
    // All kept detections of the category, images in id order, then sorted by score with a
    // stable sort: np.argsort(-dtScores, kind='mergesort') of the concatenation. Keeping only
    // those of rank < maxDet afterwards gives the same order as sorting them alone.
    let scores = &eval.scores;
    let mut order: Vec<u32> = (0..scores.len() as u32).collect();
    order.sort_by(|&a, &b| {
        scores[b as usize]
            .partial_cmp(&scores[a as usize])
            .unwrap_or(std::cmp::Ordering::Equal)
    });

    let n = order.len();
    // Ranks in score order.
    let ranks: Vec<u32> = order.iter().map(|&e| eval.ranks[e as usize]).collect();
    let max_rank = ranks.iter().copied().max().unwrap_or(0) as usize;

    // The cumulative (tp, fp) at each detection that is not ignored.
    let mut counts: Vec<(u32, u32)> = vec![(0, 0); n + 1];
    let mut curve = vec![0.0; r_n];
    let sorted_thresholds = p.rec_thrs.windows(2).all(|w| w[0] <= w[1]);
    let mut counted: Vec<u32> = Vec::with_capacity(n);
    let mut columns: Vec<u8> = Vec::new();
    for a in 0..a_n {
        let npig = eval.npig[a];
        if npig == 0 {
            continue;
        }
        let npig = npig as f64;
        // Ignored detections only repeat the previous recall and precision, which changes
        // neither the interpolated precision nor the recall: the area range's columns hold,
        // in score order, only the detections it counts at some threshold (most of those
        // outside the range it ignores at all), one column per threshold.
        let row = |e: u32| &eval.states[e as usize * at + a * t_n..][..t_n];
        counted.clear();
        counted.extend(
            (0..n as u32).filter(|&i| row(order[i as usize]).iter().any(|&s| s != IGNORED)),
        );
        let c = counted.len();
        columns.clear();
        columns.resize(t_n * c, FP);
        for (j, &i) in counted.iter().enumerate() {
            for (t, &state) in row(order[i as usize]).iter().enumerate() {
                columns[t * c + j] = state;
            }
        }
        // Per maxDets that keeps fewer than every detection, the places in the columns of
        // those it keeps: its columns are read there only.
        let kept: Vec<Option<Vec<u32>>> = p
            .max_dets
            .iter()
            .map(|&max_det| {
                (max_rank >= max_det).then(|| {
                    (0..c as u32)
                        .filter(|&j| (ranks[counted[j as usize] as usize] as usize) < max_det)
                        .collect()
                })
            })
            .collect();
        for (m, &max_det) in p.max_dets.iter().enumerate() {
            let keeps_all = max_rank < max_det;
            if m > 0 && keeps_all && max_rank < p.max_dets[m - 1] {
                // The same detections as the previous maxDets: the same numbers.
                for t in 0..t_n {
                    recall[(t * a_n + a) * m_n + m] = recall[(t * a_n + a) * m_n + m - 1];
                    for ri in 0..r_n {
                        let at_m = ((t * r_n + ri) * a_n + a) * m_n + m;
                        precision[at_m] = precision[at_m - 1];
                    }
                }
                continue;
            }
            for t in 0..t_n {
                let column = &columns[t * c..(t + 1) * c];
                // With sorted recall thresholds only the true positives are kept (see
                // `precision_at_true_positives`). Without branches on the state (true and
                // false positives mix at random): every detection writes its counts at
                // `len`, which only the kept advance.
                let (mut tp, mut fp, mut len) = (0u32, 0u32, 0usize);
                let mut count = |state: u8| {
                    let is_tp = u32::from(state == TP);
                    let is_fp = u32::from(state == FP);
                    tp += is_tp;
                    fp += is_fp;
                    counts[len] = (tp, fp);
                    len += if sorted_thresholds {
                        is_tp
                    } else {
                        is_tp + is_fp
                    } as usize;
                };
                match &kept[m] {
                    None => column.iter().for_each(|&state| count(state)),
                    Some(kept) => kept.iter().for_each(|&i| count(column[i as usize])),
                }
                let counts = &counts[..len];
                recall[(t * a_n + a) * m_n + m] = if tp + fp > 0 {
                    f64::from(tp) / npig
                } else {
                    0.0
                };
                if sorted_thresholds {
                    precision_at_true_positives(counts, npig, &p.rec_thrs, &mut curve);
                } else {
                    interpolated_precision_unsorted(counts, npig, &p.rec_thrs, &mut curve);
                }
                for (ri, &v) in curve.iter().enumerate() {
                    precision[((t * r_n + ri) * a_n + a) * m_n + m] = v;
                }
            }
        }
    }
    Accumulated {
        precision,
        recall,
        num_gt: eval.npig.first().copied().unwrap_or(0),
    }
}

/// pycocotools' precision at each recall threshold, ascending: with rc = tp / npig and
/// pr = tp / (fp + tp + np.spacing(1)) at each counted detection, pr made non-increasing from
/// the end (its running maximum), then read at np.searchsorted(rc, thr, side='left'), 0 past
/// the end.
///
/// `tps` holds only the true positives' (tp, fp): the index searchsorted finds is a true
/// positive's (rc grows only there), or the first detection's for thresholds <= 0, whose
/// maximum is the same; and a false positive's pr is below the one before it, so it never
/// raises a maximum taken from a true positive at or before it. One backward sweep then gives
/// the numbers: the thresholds in (rc of the previous true positive, rc] read the running
/// maximum there.
fn precision_at_true_positives(tps: &[(u32, u32)], npig: f64, rec_thrs: &[f64], out: &mut [f64]) {
    let rc = |i: usize| f64::from(tps[i].0) / npig;
    let mut ri = rec_thrs.len();
    let last = tps.len().checked_sub(1).map(rc);
    while ri > 0 && last.is_none_or(|l| rec_thrs[ri - 1] > l) {
        ri -= 1;
        out[ri] = 0.0;
    }
    let mut run = f64::NEG_INFINITY;
    for i in (0..tps.len()).rev() {
        if ri == 0 {
            break;
        }
        let (tp, fp) = tps[i];
        let pr = f64::from(tp) / (f64::from(fp) + f64::from(tp) + EPS);
        if pr > run {
            run = pr;
        }
        let lower = if i > 0 { rc(i - 1) } else { f64::NEG_INFINITY };
        while ri > 0 && rec_thrs[ri - 1] > lower {
            ri -= 1;
            out[ri] = run;
        }
    }
}

/// [`precision_at_true_positives`] for recall thresholds in any order, from every counted
/// detection's (tp, fp): a binary search per threshold; past the end, this and all later thresholds read 0 (pycocotools stops there).
fn interpolated_precision_unsorted(
    counts: &[(u32, u32)],
    npig: f64,
    rec_thrs: &[f64],
    out: &mut [f64],
) {
    let mut pr: Vec<f64> = counts
        .iter()
        .map(|&(tp, fp)| f64::from(tp) / (f64::from(fp) + f64::from(tp) + EPS))
        .collect();
    for i in (1..pr.len()).rev() {
        if pr[i] > pr[i - 1] {
            pr[i - 1] = pr[i];
        }
    }
    for (ri, &thr) in rec_thrs.iter().enumerate() {
        let pi = counts.partition_point(|&(tp, _)| f64::from(tp) / npig < thr);
        match pr.get(pi) {
            Some(&v) => out[ri] = v,
            None => {
                out[ri..].fill(0.0);
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The backward sweep over the true positives reads the same precision as the binary
    /// search of each threshold over every detection, on cumulative counts with runs of
    /// equal recall, at pycocotools' thresholds and others (0 and negative included).
    #[test]
    fn sweep_equals_search() {
        let mut next = crate::lcg(7);
        let coco: Vec<f64> = (0..101).map(|i| f64::from(i) / 100.0).collect();
        let ends = vec![-0.5, 0.0, 0.0, 0.01, 0.5, 1.0, 1.5];
        for case in 0..500 {
            let len = next(40) as usize;
            let (mut tp, mut fp) = (0u32, 0u32);
            let counts: Vec<(u32, u32)> = (0..len)
                .map(|_| {
                    if next(3) == 0 {
                        tp += 1;
                    } else {
                        fp += 1;
                    }
                    (tp, fp)
                })
                .collect();
            let npig = (u64::from(tp) + next(5)).max(1) as f64;
            for thrs in [&coco, &ends] {
                let mut swept = vec![-1.0; thrs.len()];
                let mut searched = vec![-1.0; thrs.len()];
                let tps: Vec<(u32, u32)> = counts
                    .iter()
                    .enumerate()
                    .filter(|&(i, &(tp, _))| tp > if i > 0 { counts[i - 1].0 } else { 0 })
                    .map(|(_, &c)| c)
                    .collect();
                precision_at_true_positives(&tps, npig, thrs, &mut swept);
                interpolated_precision_unsorted(&counts, npig, thrs, &mut searched);
                let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(
                    bits(&swept),
                    bits(&searched),
                    "case {case}: {counts:?} / {npig}"
                );
            }
        }
    }

    /// A pair cut short reads 0 only where its full OKS is below the lowest threshold, and
    /// every other pair reads its full OKS to the bit: with labelled joints and without, near
    /// and far, at pycocotools' thresholds and at a low one.
    #[test]
    fn cut_pairs_never_match() {
        let mut next = crate::lcg(11);
        let mut buf = Vec::new();
        let (mut cut_short, mut kept) = (0, 0);
        for thrs in [vec![0.5, 0.75, 0.95], vec![0.05, 0.5], vec![1.5]] {
            let lowest = thrs
                .iter()
                .map(|&t| matching_threshold(t))
                .fold(f64::INFINITY, f64::min);
            let scale = OksScale::new(&Params {
                iou_thrs: thrs,
                ..Params::new(IouType::Keypoints)
            });
            let uncut = OksScale {
                cut: None,
                vars: scale.vars.clone(),
            };
            for case in 0..4000 {
                let spread = [2.0, 20.0, 200.0][case % 3];
                let centre = next(400) as f64;
                let gt: Vec<f64> = (0..scale.vars.len())
                    .flat_map(|_| {
                        let v = if case % 5 == 0 { 0.0 } else { next(3) as f64 };
                        [centre + next(40) as f64, centre + next(40) as f64, v]
                    })
                    .collect();
                let dt: Vec<f64> = gt
                    .chunks(3)
                    .flat_map(|j| {
                        let d = (next(1000) as f64 / 1000.0 - 0.5) * spread;
                        [j[0] + d, j[1] - d / 2.0, 1.0]
                    })
                    .collect();
                let gt_box = [centre, centre, 40.0, 40.0];
                let joints = Joints {
                    gt: &gt,
                    gt_box: &gt_box,
                    labelled: labelled_joints(&gt),
                };
                let area = 100.0 + next(5000) as f64;
                let full = oks(&joints, area, &dt, &uncut, &mut buf);
                let fast = oks(&joints, area, &dt, &scale, &mut buf);
                if fast.to_bits() == full.to_bits() {
                    kept += 1;
                } else {
                    assert_eq!(fast, 0.0, "case {case}");
                    assert!(full < lowest, "case {case}: {full} cut at {lowest}");
                    cut_short += 1;
                }
            }
        }
        // Both ways taken, often.
        assert!(
            cut_short > 2000 && kept > 2000,
            "{cut_short} cut, {kept} kept"
        );
    }

    /// The counting passes order records as a stable sort by key does: file order within a
    /// key, records without a key left out, every category and image count.
    #[test]
    fn select_is_a_stable_sort() {
        let mut next = crate::lcg(5);
        for (k_count, i_count) in [(1, 1), (1, 50), (7, 1), (80, 300), (3, 5000)] {
            let keys: Vec<Option<u64>> = (0..20_000)
                .map(|_| (next(10) > 0).then(|| next(k_count) << 32 | next(i_count)))
                .collect();
            let sel = select(keys.par_iter().copied(), k_count as usize, i_count as usize);
            let mut expected: Vec<(u64, usize)> = keys
                .iter()
                .enumerate()
                .filter_map(|(n, k)| k.map(|k| (k, n)))
                .collect();
            expected.sort_by_key(|&(k, _)| k);
            let got: Vec<(u64, usize)> = sel.iter().map(|s| (s.key, s.n)).collect();
            assert_eq!(got, expected, "{k_count} categories, {i_count} images");
        }
    }
}
