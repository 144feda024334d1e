use std::fmt;
use std::path::Path;

use rayon::prelude::*;
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;

use super::{CocoGt, Segmentation};
use crate::{fastjson, json, Error, Result};

/// One record of a COCO results file: `{"image_id", "category_id", "score"}` with a `bbox`, a
/// `segmentation` or `keypoints` (or several of them). Other fields are ignored.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct ResultRecord {
    /// Image id; must be an image of the ground truth.
    pub image_id: i64,
    /// Category id; must be a category of the ground truth.
    pub category_id: i64,
    /// Confidence; must be finite.
    pub score: f64,
    /// `[x, y, w, h]`. An empty list counts as absent.
    #[serde(default, deserialize_with = "optional_box")]
    pub bbox: Option<[f64; 4]>,
    /// Mask.
    #[serde(default)]
    pub segmentation: Option<Segmentation>,
    /// `[x0, y0, v0, x1, y1, v1, …]`.
    #[serde(default)]
    pub keypoints: Option<Vec<f64>>,
}

fn optional_box<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<[f64; 4]>, D::Error> {
    struct BoxVisitor;
    impl<'de> Visitor<'de> for BoxVisitor {
        type Value = Option<[f64; 4]>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a list of 4 numbers [x, y, w, h] or an empty list")
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut values = Vec::with_capacity(4);
            while let Some(v) = seq.next_element::<f64>()? {
                if values.len() == 4 {
                    return Err(de::Error::invalid_length(5, &self));
                }
                values.push(v);
            }
            match values[..] {
                [] => Ok(None),
                [x, y, w, h] => Ok(Some([x, y, w, h])),
                _ => Err(de::Error::invalid_length(values.len(), &self)),
            }
        }
    }
    deserializer.deserialize_any(BoxVisitor)
}

/// The records of a results document, in file order and in pieces: the fast reader, or serde
/// where it gives up (then serde's value, one piece, or its error).
fn read_records(bytes: &[u8], origin: &str) -> Result<Vec<Vec<ResultRecord>>> {
    match fastjson::results(bytes) {
        Some(pieces) => Ok(pieces),
        None => json::parse(bytes, origin).map(|records| vec![records]),
    }
}

/// The records of a results file, in pieces, and the file's name for errors. The fast reader
/// reads the file a block at a time; where it gives up, serde reads it whole.
fn records_from_path(path: &Path) -> Result<(Vec<Vec<ResultRecord>>, String)> {
    let origin = path.display().to_string();
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(io)?;
    let pieces = match fastjson::results_from_reader(&mut file, READ_BLOCK).map_err(io)? {
        Some(pieces) => pieces,
        None => {
            drop(file);
            let bytes = json::read(path)?;
            vec![json::parse(&bytes, &origin)?]
        }
    };
    Ok((pieces, origin))
}

/// How much of a results file is read at a time.
const READ_BLOCK: usize = 64 << 20;

/// A mask's area and bounding box.
type MaskExtent = (u64, [f64; 4]);

/// How a results file is read; pycocotools' `loadRes` decides it from the first record, and
/// the kind decides the area of every detection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResultKind {
    /// The first record has a non-empty `bbox`: area = w * h (even for masks or keypoints).
    Bbox,
    /// The first record has a `segmentation` and no box: area = mask area, box = mask box
    /// unless given.
    Segm,
    /// The first record has only `keypoints`: box and area from the keypoints' extent.
    Keypoints,
}

/// A detection, with the box and area pycocotools' `loadRes` gives it.
#[derive(Clone, Debug, PartialEq)]
pub struct Detection {
    /// Image id.
    pub image_id: i64,
    /// Category id.
    pub category_id: i64,
    /// Confidence.
    pub score: f64,
    /// `[x, y, w, h]`.
    pub bbox: [f64; 4],
    /// The area compared with the area ranges (see [`ResultKind`]).
    pub area: f64,
    /// Mask; for [`ResultKind::Bbox`] results without one, segm evaluation uses the box.
    pub segmentation: Option<Segmentation>,
    /// Keypoints.
    pub keypoints: Option<Vec<f64>>,
}

/// Detections to evaluate against a [`CocoGt`], the counterpart of `COCO.loadRes`.
#[derive(Clone, Debug)]
pub struct CocoDt {
    origin: String,
    kind: ResultKind,
    detections: Vec<Detection>,
    warnings: Vec<String>,
}

impl CocoDt {
    /// Parses a results json document (a list of [`ResultRecord`]) held in memory; errors name
    /// it `results`.
    pub fn from_json(gt: &CocoGt, bytes: &[u8]) -> Result<CocoDt> {
        CocoDt::from_pieces(gt, read_records(bytes, "results")?, "results".into())
    }

    /// Reads and parses a results json file; errors name the file.
    pub fn from_path(gt: &CocoGt, path: impl AsRef<Path>) -> Result<CocoDt> {
        let (pieces, origin) = records_from_path(path.as_ref())?;
        CocoDt::from_pieces(gt, pieces, origin)
    }

    /// Reads a ground truth and a results file at once (the two parsed side by side), as
    /// [`CocoGt::from_path`] then [`CocoDt::from_path`] do, with the same errors.
    pub fn load(gt: impl AsRef<Path>, results: impl AsRef<Path>) -> Result<(CocoGt, CocoDt)> {
        let (gt, results) = (gt.as_ref(), results.as_ref());
        let (gt, records) = rayon::join(|| CocoGt::from_path(gt), || records_from_path(results));
        let gt = gt?;
        let (pieces, origin) = records?;
        let dt = CocoDt::from_pieces(&gt, pieces, origin)?;
        Ok((gt, dt))
    }

    /// Results built in memory; `origin` names them in errors.
    ///
    /// Every record is checked: its image and category must be in `gt`, its score finite, and
    /// it must hold what its [`ResultKind`] needs. An empty list gives no detections.
    pub fn from_records(
        gt: &CocoGt,
        records: Vec<ResultRecord>,
        origin: impl Into<String>,
    ) -> Result<CocoDt> {
        CocoDt::from_pieces(gt, vec![records], origin.into())
    }

    /// [`CocoDt::from_records`] of the records of `pieces` in order; each piece is freed once
    /// its detections are made, so that records and detections are not all held at once.
    fn from_pieces(gt: &CocoGt, pieces: Vec<Vec<ResultRecord>>, origin: String) -> Result<CocoDt> {
        let kind = match pieces.iter().flatten().next() {
            None => ResultKind::Bbox,
            Some(r) if r.bbox.is_some() => ResultKind::Bbox,
            Some(r) if r.segmentation.is_some() => ResultKind::Segm,
            Some(r) if r.keypoints.is_some() => ResultKind::Keypoints,
            Some(_) => return Err(Error::UnknownResultKind { origin }),
        };
        // The masks' areas and boxes, the costly part, computed in parallel beforehand; used
        // (and their errors reported) in record order below.
        let mut masks: Vec<Option<Result<MaskExtent>>> = if kind == ResultKind::Segm {
            pieces
                .par_iter()
                .flat_map(|piece| piece.par_iter())
                .map(|r| {
                    let size = gt.image(r.image_id).and_then(|i| i.size());
                    r.segmentation.as_ref().map(|s| s.area_and_bbox(size))
                })
                .collect()
        } else {
            Vec::new()
        };
        let mut detections = Vec::with_capacity(pieces.iter().map(Vec::len).sum());
        let mut warnings = Vec::new();
        for (index, r) in pieces.into_iter().flatten().enumerate() {
            let invalid = |field: &'static str, reason: String| Error::InvalidRecord {
                origin: origin.clone(),
                record: format!("result {index}"),
                field,
                reason,
            };
            if gt.image(r.image_id).is_none() {
                return Err(Error::UnknownImage {
                    origin,
                    index,
                    image_id: r.image_id,
                });
            }
            if gt.category(r.category_id).is_none() {
                return Err(Error::UnknownCategory {
                    origin,
                    index,
                    category_id: r.category_id,
                });
            }
            if !r.score.is_finite() {
                return Err(Error::NonFiniteScore {
                    origin,
                    index,
                    score: r.score,
                });
            }
            if let Some(b) = r.bbox {
                if b.iter().any(|v| !v.is_finite()) {
                    return Err(invalid("bbox", format!("{b:?} is not finite")));
                }
                if b[2] < 0.0 || b[3] < 0.0 {
                    let side = if b[2] < 0.0 { "width" } else { "height" };
                    warnings.push(format!(
                        "result {index}: bbox {b:?} has a negative {side}; it is scored as given, as pycocotools does"
                    ));
                }
            }
            if let Some(k) = &r.keypoints {
                if k.iter().any(|v| !v.is_finite()) {
                    return Err(invalid(
                        "keypoints",
                        "holds a value that is not finite".into(),
                    ));
                }
            }
            let (bbox, area) = match kind {
                ResultKind::Bbox => {
                    let b = r.bbox.ok_or_else(|| {
                        invalid("bbox", "is missing (result 0 has one)".to_string())
                    })?;
                    (b, b[2] * b[3])
                }
                ResultKind::Segm => {
                    let mask = masks[index].take().ok_or_else(|| {
                        invalid("segmentation", "is missing (result 0 has one)".to_string())
                    })?;
                    let (area, mask_box) =
                        mask.map_err(|e| invalid("segmentation", e.to_string()))?;
                    (r.bbox.unwrap_or(mask_box), area as f64)
                }
                ResultKind::Keypoints => {
                    let k = r.keypoints.as_deref().ok_or_else(|| {
                        invalid("keypoints", "is missing (result 0 has them)".to_string())
                    })?;
                    keypoint_extent(k).map_err(|reason| invalid("keypoints", reason))?
                }
            };
            detections.push(Detection {
                image_id: r.image_id,
                category_id: r.category_id,
                score: r.score,
                bbox,
                area,
                segmentation: r.segmentation,
                keypoints: r.keypoints,
            });
        }
        Ok(CocoDt {
            origin,
            kind,
            detections,
            warnings,
        })
    }

    /// What was accepted but is probably a mistake (a box of negative width or height), one
    /// line per result.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// The file they were read from, or the name given to [`CocoDt::from_records`].
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// How the records were read.
    pub fn kind(&self) -> ResultKind {
        self.kind
    }

    /// Detections, in file order.
    pub fn detections(&self) -> &[Detection] {
        &self.detections
    }
}

/// Box `[x0, y0, x1 - x0, y1 - y0]` and area `(x1 - x0) * (y1 - y0)` of all keypoints,
/// visible or not, as `loadRes` computes them.
fn keypoint_extent(k: &[f64]) -> std::result::Result<([f64; 4], f64), String> {
    if k.is_empty() || k.len() % 3 != 0 {
        return Err(format!(
            "has {} values, expected a nonzero multiple of 3",
            k.len()
        ));
    }
    let xs = k.iter().step_by(3);
    let ys = k.iter().skip(1).step_by(3);
    let (x0, x1) = xs.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &x| {
        (lo.min(x), hi.max(x))
    });
    let (y0, y1) = ys.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &y| {
        (lo.min(y), hi.max(y))
    });
    Ok(([x0, y0, x1 - x0, y1 - y0], (x1 - x0) * (y1 - y0)))
}
