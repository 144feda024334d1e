//! Metrics of mustard, equal to the references.
//!
//! - COCO AP ([`coco`]): box, mask and keypoint AP equal to pycocotools' `COCOeval`
//!   (Lin et al., "Microsoft COCO: Common Objects in Context", <https://arxiv.org/abs/1405.0312>).
//!   [`CocoGt`] and [`CocoDt`] load the ground truth and the results, [`evaluate`] returns a
//!   [`CocoEval`] with the 12 (keypoints: 10) summary numbers, the lines `summarize()` prints,
//!   AP per category and the precision / recall arrays. It runs in parallel over (category,
//!   image) pairs and then over categories.
//! - Run-length encoded masks ([`rle`]), equal to pycocotools' `maskApi`.
//! - Semantic segmentation ([`semseg`]): a streamed [`ConfusionMatrix`] giving per-class IoU,
//!   mIoU and pixel accuracy.
//! - Depth ([`depth`]): AbsRel, RMSE, δ < 1.25 / 1.25² / 1.25³, with median or least-squares
//!   alignment.
//! - Classification ([`classification`]): top-1 and top-5 accuracy.
//!
//! The crate is pure Rust and depends on nothing of ours. Malformed input is an [`Error`]
//! naming the file, the record and the field; no input makes it panic.
//!
//! # Reproduced pycocotools behaviour
//!
//! These are kept on purpose, so that numbers equal pycocotools 2.0 (tests compare them with
//! values from `xtask/fixtures/eval_golden.py`):
//!
//! - IoU thresholds are `np.linspace(.5, .95, 10)` (`start + i * step`, so the ninth is
//!   `0.8999999999999999`); recall thresholds `np.linspace(0, 1, 101)`; the keypoint sigmas are
//!   `np.array([.26, …]) / 10`. `AP50`/`AP75` select thresholds by exact equality.
//! - Area ranges are `[0, 1e10]`, `[0, 32²]`, `[32², 96²]`, `[96², 1e10]`, inclusive at both
//!   ends, compared with the ground truth's `area` field (not its box) and with the detection's
//!   area as `loadRes` sets it: `w * h` whenever the first result has a non-empty `bbox` (even
//!   for mask or keypoint results), the mask area for mask results without boxes, and the
//!   extent of all keypoints (visible or not) for keypoint results without boxes.
//! - `iscrowd` overrides `ignore`: the `ignore` field is never read. For keypoints an
//!   annotation with `num_keypoints == 0` is ignored too.
//! - Crowd IoU is intersection over the detection's area, and a crowd region may match any
//!   number of detections. Mask IoU is -1 for masks of different sizes and 0 when the masks'
//!   boxes do not overlap.
//! - Detections are sorted by score with a stable sort (ties keep file order) and cut to the
//!   largest `maxDets` per image and category before matching; matching for the smaller
//!   `maxDets` reuses that matching.
//! - Ground truth is sorted with ignored annotations last (stable); matching per threshold `t`
//!   starts from `min(t, 1 - 1e-10)`, skips annotations already matched unless crowd, stops
//!   at the first ignored annotation once a regular one is matched, and takes the last of
//!   equal IoUs (`>=`).
//! - A match with a ground-truth annotation of id 0 counts as no match (pycocotools stores the
//!   matched id and tests it for nonzero).
//! - Unmatched detections outside the area range are ignored; detections matched to ignored
//!   annotations are ignored.
//! - Accumulation concatenates the images' kept detections in image-id order and sorts them with
//!   a stable sort; precision is `tp / (tp + fp + np.spacing(1))`, made monotone from the right,
//!   and sampled at `np.searchsorted(recall, recThrs, side='left')`; thresholds past the last
//!   recall get precision 0.
//! - Categories (or area ranges) without ground truth keep precision and recall -1, and
//!   summary means skip -1 values (a mean with none is -1). Means use numpy's pairwise sum in
//!   numpy's order (IoU threshold, recall threshold, category).
//! - The first box/mask summary number asks for `maxDets=100` and the keypoint ones for
//!   `maxDets=20`, whatever the parameters say (-1 when absent); the others use the
//!   parameters' `maxDets`.
//! - Summary lines are formatted as `summarize()` prints them.
//! - Results on images of the ground truth but outside `img_ids` (or categories outside
//!   `cat_ids`) are dropped; ground-truth annotations of unknown images or categories are never
//!   evaluated.
//!
//! Where pycocotools fails or loops instead, this crate returns an error: results on unknown
//! images or categories (pycocotools drops unknown categories silently), non-finite scores,
//! repeated ids, RLE counts that do not add up to `height * width`, masks of more than
//! 2³² - 1 pixels. An empty results list is accepted and scores 0.
#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod classification;
pub mod coco;
pub mod depth;
mod error;
mod fastjson;
mod json;
mod numpy;
pub mod rle;
pub mod semseg;

pub use classification::ClassificationAccuracy;
pub use coco::{evaluate, CocoDt, CocoEval, CocoGt, IouType, Params};
pub use depth::{depth_metrics, DepthAccumulator, DepthAlignment, DepthConfig, DepthMetrics};
pub use error::{Error, Result};
pub use rle::Rle;
pub use semseg::{ConfusionMatrix, SegmentationMetrics};

/// The random draws of the unit tests: Knuth's MMIX LCG from `seed`, each call a number
/// below its argument (from the high 31 bits).
#[cfg(test)]
pub(crate) fn lcg(seed: u64) -> impl FnMut(u64) -> u64 {
    let mut state = seed;
    move |n| {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 33) % n
    }
}
