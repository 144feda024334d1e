//! COCO detection, instance-segmentation and keypoint AP, equal to pycocotools' `COCOeval`.
//!
//! Load a [`CocoGt`] and a [`CocoDt`], pick [`Params`] for an [`IouType`] and call
//! [`evaluate`]; the [`CocoEval`] it returns holds the summary numbers and lines, AP per
//! category and the precision/recall arrays. The crate docs list the reference's quirks that
//! are reproduced.
//!
//! ```
//! use mustard_eval::coco::{evaluate, CocoDt, CocoGt, IouType, Params};
//!
//! let gt = CocoGt::from_json(
//!     br#"{"images": [{"id": 1}], "categories": [{"id": 1, "name": "cat"}],
//!          "annotations": [{"id": 1, "image_id": 1, "category_id": 1,
//!                           "bbox": [10, 10, 20, 20], "area": 400}]}"#,
//! )?;
//! let dt = CocoDt::from_json(
//!     &gt,
//!     br#"[{"image_id": 1, "category_id": 1, "bbox": [12, 10, 20, 20], "score": 0.9}]"#,
//! )?;
//! let eval = evaluate(&gt, &dt, &Params::new(IouType::Bbox))?;
//! // IoU 360 / 440 = 0.82: a match at the thresholds 0.50 to 0.80.
//! assert_eq!(
//!     eval.stats[0].line,
//!     " Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ] = 0.700"
//! );
//! assert_eq!(eval.stats[0].name, "AP");
//! # Ok::<(), mustard_eval::Error>(())
//! ```

mod evaluate;
mod gt;
mod ids;
mod params;
mod report;
mod results;
mod segmentation;

pub use evaluate::evaluate;
pub use gt::{Category, CocoGt, GtAnnotation, Image};
pub use params::{AreaRange, IouType, Params, COCO_KEYPOINT_SIGMAS};
pub use report::{CategoryAp, CocoEval, NdArray, Stat};
pub use results::{CocoDt, Detection, ResultKind, ResultRecord};
pub use segmentation::Segmentation;
