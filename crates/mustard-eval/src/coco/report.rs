//! The results of an evaluation: pycocotools' `eval` dictionary, `stats` and the lines
//! `summarize()` prints.

use serde::Serialize;
use serde_json::{json, Value};

use super::{CocoGt, IouType, Params};
use crate::numpy;

/// A dense row-major array of `f64`, as numpy stores `eval['precision']`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct NdArray {
    /// Dimensions.
    pub shape: Vec<usize>,
    /// Values, last dimension fastest.
    pub data: Vec<f64>,
}

impl NdArray {
    pub(crate) fn filled(shape: Vec<usize>, value: f64) -> Self {
        let n = shape.iter().product();
        NdArray {
            shape,
            data: vec![value; n],
        }
    }

    /// The value at `index` (one entry per dimension); `None` when out of bounds.
    pub fn get(&self, index: &[usize]) -> Option<f64> {
        if index.len() != self.shape.len() {
            return None;
        }
        let mut flat = 0;
        for (&i, &n) in index.iter().zip(&self.shape) {
            if i >= n {
                return None;
            }
            flat = flat * n + i;
        }
        self.data.get(flat).copied()
    }
}

/// One of the summary numbers (pycocotools' `stats[i]`) with its printed line.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Stat {
    /// Short name: `AP`, `AP50`, `AP75`, `APs`, `APm`, `APl`, `AR1`, `AR10`, `AR100`, `ARs`,
    /// `ARm`, `ARl` (boxes, masks); `AP`, `AP50`, `AP75`, `APm`, `APl`, `AR`, `AR50`, `AR75`,
    /// `ARm`, `ARl` (keypoints). `AR1`… follow the actual `max_dets`.
    pub name: String,
    /// The line `summarize()` prints, e.g.
    /// ` Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ] = 0.372`.
    pub line: String,
    /// The value; -1 when nothing was evaluated.
    pub value: f64,
}

/// Per-category AP: the mean of `precision[:, :, k, 0, -1]` over the values that are not -1.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CategoryAp {
    /// Category id.
    pub id: i64,
    /// Category name (empty for an id the ground truth does not list).
    pub name: String,
    /// Ground truth of the category that is not ignored, in the first area range.
    pub num_gt: u64,
    /// AP over all IoU thresholds; `None` without ground truth.
    pub ap: Option<f64>,
    /// AP at IoU 0.5; `None` without ground truth or without that threshold.
    pub ap50: Option<f64>,
    /// AP at IoU 0.75; `None` without ground truth or without that threshold.
    pub ap75: Option<f64>,
}

impl CategoryAp {
    pub(crate) fn new(
        id: i64,
        gt: &CocoGt,
        k: usize,
        num_gt: u64,
        precision: &NdArray,
        p: &Params,
    ) -> Self {
        let ap_at = |thr: Option<f64>| {
            if p.area_ranges.is_empty() {
                return None;
            }
            let m = p.max_dets.len() - 1;
            let mut values = Vec::new();
            for (t, &x) in p.iou_thrs.iter().enumerate() {
                if thr.is_some_and(|thr| thr != x) {
                    continue;
                }
                for r in 0..p.rec_thrs.len() {
                    values.extend(precision.get(&[t, r, k, 0, m]).filter(|&v| v > -1.0));
                }
            }
            numpy::mean(&values)
        };
        CategoryAp {
            id,
            name: gt.category(id).map(|c| c.name.clone()).unwrap_or_default(),
            num_gt,
            ap: ap_at(None),
            ap50: ap_at(Some(0.5)),
            ap75: ap_at(Some(0.75)),
        }
    }
}

/// The outcome of [`evaluate`](super::evaluate): everything pycocotools' `COCOeval` holds after
/// `accumulate()` and `summarize()`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CocoEval {
    /// The parameters used, with `max_dets` sorted and `img_ids` / `cat_ids` the sorted ids
    /// evaluated.
    pub params: Params,
    /// `eval['precision']`, shape `[T, R, K, A, M]` (IoU thresholds, recall thresholds,
    /// categories, area ranges, max detections); -1 where a category has no ground truth.
    pub precision: NdArray,
    /// `eval['recall']`, shape `[T, K, A, M]`; -1 where a category has no ground truth.
    pub recall: NdArray,
    /// The summary numbers (`stats`): 12 for boxes and masks, 10 for keypoints.
    pub stats: Vec<Stat>,
    /// AP per category, in id order.
    pub per_category: Vec<CategoryAp>,
}

/// One `_summarize(ap, iouThr, areaRng, maxDets)` call.
struct Spec {
    name: String,
    ap: bool,
    iou: Option<f64>,
    area: &'static str,
    max_dets: usize,
}

fn spec(
    name: impl Into<String>,
    ap: bool,
    iou: Option<f64>,
    area: &'static str,
    max_dets: usize,
) -> Spec {
    Spec {
        name: name.into(),
        ap,
        iou,
        area,
        max_dets,
    }
}

fn specs(p: &Params) -> Vec<Spec> {
    match p.iou_type {
        IouType::Bbox | IouType::Segm => {
            let md = &p.max_dets;
            vec![
                // pycocotools asks for maxDets=100 here, whatever params.maxDets holds.
                spec("AP", true, None, "all", 100),
                spec("AP50", true, Some(0.5), "all", md[2]),
                spec("AP75", true, Some(0.75), "all", md[2]),
                spec("APs", true, None, "small", md[2]),
                spec("APm", true, None, "medium", md[2]),
                spec("APl", true, None, "large", md[2]),
                spec(format!("AR{}", md[0]), false, None, "all", md[0]),
                spec(format!("AR{}", md[1]), false, None, "all", md[1]),
                spec(format!("AR{}", md[2]), false, None, "all", md[2]),
                spec("ARs", false, None, "small", md[2]),
                spec("ARm", false, None, "medium", md[2]),
                spec("ARl", false, None, "large", md[2]),
            ]
        }
        IouType::Keypoints => vec![
            spec("AP", true, None, "all", 20),
            spec("AP50", true, Some(0.5), "all", 20),
            spec("AP75", true, Some(0.75), "all", 20),
            spec("APm", true, None, "medium", 20),
            spec("APl", true, None, "large", 20),
            spec("AR", false, None, "all", 20),
            spec("AR50", false, Some(0.5), "all", 20),
            spec("AR75", false, Some(0.75), "all", 20),
            spec("ARm", false, None, "medium", 20),
            spec("ARl", false, None, "large", 20),
        ],
    }
}

impl CocoEval {
    pub(crate) fn new(
        params: Params,
        precision: NdArray,
        recall: NdArray,
        per_category: Vec<CategoryAp>,
    ) -> CocoEval {
        let mut eval = CocoEval {
            params,
            precision,
            recall,
            stats: Vec::new(),
            per_category,
        };
        eval.stats = specs(&eval.params)
            .into_iter()
            .map(|s| eval.summarize(s))
            .collect();
        eval
    }

    /// `_summarize`: the mean of the selected precision (or recall) values that are not -1,
    /// in numpy's order and with numpy's pairwise sum; -1 when there are none.
    fn summarize(&self, s: Spec) -> Stat {
        let p = &self.params;
        let ts: Vec<usize> = (0..p.iou_thrs.len())
            .filter(|&t| s.iou.is_none_or(|thr| thr == p.iou_thrs[t]))
            .collect();
        let a = p.area_ranges.iter().position(|r| r.label == s.area);
        let m = p.max_dets.iter().position(|&d| d == s.max_dets);
        let mut values = Vec::new();
        if let (Some(a), Some(m)) = (a, m) {
            let k_n = self.recall.shape[1];
            for &t in &ts {
                if s.ap {
                    for r in 0..p.rec_thrs.len() {
                        for k in 0..k_n {
                            values
                                .extend(self.precision.get(&[t, r, k, a, m]).filter(|&v| v > -1.0));
                        }
                    }
                } else {
                    for k in 0..k_n {
                        values.extend(self.recall.get(&[t, k, a, m]).filter(|&v| v > -1.0));
                    }
                }
            }
        }
        let value = numpy::mean(&values).unwrap_or(-1.0);
        let (title, kind) = if s.ap {
            ("Average Precision", "(AP)")
        } else {
            ("Average Recall", "(AR)")
        };
        let iou = match s.iou {
            None => format!(
                "{:.2}:{:.2}",
                p.iou_thrs[0],
                p.iou_thrs[p.iou_thrs.len() - 1]
            ),
            Some(thr) => format!("{thr:.2}"),
        };
        let line = format!(
            " {title:<18} {kind} @[ IoU={iou:<9} | area={:>6} | maxDets={:>3} ] = {value:.3}",
            s.area, s.max_dets
        );
        Stat {
            name: s.name,
            line,
            value,
        }
    }

    /// The summary numbers, pycocotools' `stats`.
    pub fn stats(&self) -> Vec<f64> {
        self.stats.iter().map(|s| s.value).collect()
    }

    /// The lines pycocotools' `summarize()` prints, joined by newlines (no trailing newline).
    pub fn summary(&self) -> String {
        self.stats
            .iter()
            .map(|s| s.line.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// `precision[t, r, k, a, m]`.
    pub fn precision_at(&self, t: usize, r: usize, k: usize, a: usize, m: usize) -> Option<f64> {
        self.precision.get(&[t, r, k, a, m])
    }

    /// The precision–recall curve: the interpolated precision at each recall threshold
    /// (`precision[t, :, k, a, m]`, 101 points by default) at area range `all` and the most
    /// detections, averaged over the IoU thresholds (`iou`: the one equal to it, `None`: all)
    /// and over `category` (an index into `params.cat_ids`; `None`: every category with ground
    /// truth). Its mean is the matching AP. `None` when nothing selected has ground truth.
    pub fn precision_curve(&self, category: Option<usize>, iou: Option<f64>) -> Option<Vec<f64>> {
        let p = &self.params;
        let a = p.area_ranges.iter().position(|r| r.label == "all")?;
        let m = p.max_dets.len().checked_sub(1)?;
        let ts: Vec<usize> = (0..p.iou_thrs.len())
            .filter(|&t| iou.is_none_or(|thr| thr == p.iou_thrs[t]))
            .collect();
        let ks: Vec<usize> = match category {
            Some(k) => vec![k],
            None => (0..self.recall.shape.get(1).copied().unwrap_or(0)).collect(),
        };
        let curve: Option<Vec<f64>> = (0..p.rec_thrs.len())
            .map(|r| {
                let mut values = Vec::new();
                for &t in &ts {
                    for &k in &ks {
                        values.extend(self.precision.get(&[t, r, k, a, m]).filter(|&v| v > -1.0));
                    }
                }
                numpy::mean(&values)
            })
            .collect();
        curve.filter(|c| !c.is_empty())
    }

    /// `recall[t, k, a, m]`.
    pub fn recall_at(&self, t: usize, k: usize, a: usize, m: usize) -> Option<f64> {
        self.recall.get(&[t, k, a, m])
    }

    /// Every number as JSON: `iou_type`, `params`, `stats` (name, line, value),
    /// `per_category`, and `precision` / `recall` as `{shape, data}`.
    pub fn to_json(&self) -> Value {
        json!({
            "iou_type": self.params.iou_type,
            "params": self.params,
            "stats": self.stats,
            "per_category": self.per_category,
            "precision": self.precision,
            "recall": self.recall,
        })
    }
}
