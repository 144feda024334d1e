use std::fmt;
use std::str::FromStr;

use serde::Serialize;

use crate::numpy::linspace;
use crate::{Error, Result};

/// What is compared between detections and ground truth.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum IouType {
    /// Box IoU.
    Bbox,
    /// Mask IoU.
    Segm,
    /// Object keypoint similarity (OKS).
    Keypoints,
}

impl IouType {
    /// The name pycocotools uses: `bbox`, `segm` or `keypoints`.
    pub fn as_str(self) -> &'static str {
        match self {
            IouType::Bbox => "bbox",
            IouType::Segm => "segm",
            IouType::Keypoints => "keypoints",
        }
    }
}

impl fmt::Display for IouType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for IouType {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "bbox" => Ok(IouType::Bbox),
            "segm" => Ok(IouType::Segm),
            "keypoints" => Ok(IouType::Keypoints),
            _ => Err(Error::params(format!(
                "unknown IoU type {s:?}: expected `bbox`, `segm` or `keypoints`"
            ))),
        }
    }
}

/// An object-area range, inclusive at both ends, compared with the ground truth's `area` field
/// and the detections' area.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AreaRange {
    /// The label the summary prints (`all`, `small`, `medium`, `large`).
    pub label: String,
    /// Smallest area.
    pub min: f64,
    /// Largest area.
    pub max: f64,
}

impl AreaRange {
    /// A labelled range.
    pub fn new(label: impl Into<String>, min: f64, max: f64) -> Self {
        AreaRange {
            label: label.into(),
            min,
            max,
        }
    }

    /// Whether `area` is outside the range (`area < min or area > max`).
    pub(crate) fn excludes(&self, area: f64) -> bool {
        area < self.min || area > self.max
    }
}

/// The standard COCO keypoint sigmas of the 17 person joints, computed as pycocotools does
/// (`np.array([.26, .25, …]) / 10.0`), so that the first is `0.026000000000000002`.
pub const COCO_KEYPOINT_SIGMAS: [f64; 17] = [
    0.26 / 10.0,
    0.25 / 10.0,
    0.25 / 10.0,
    0.35 / 10.0,
    0.35 / 10.0,
    0.79 / 10.0,
    0.79 / 10.0,
    0.72 / 10.0,
    0.72 / 10.0,
    0.62 / 10.0,
    0.62 / 10.0,
    1.07 / 10.0,
    1.07 / 10.0,
    0.87 / 10.0,
    0.87 / 10.0,
    0.89 / 10.0,
    0.89 / 10.0,
];

/// Evaluation parameters, pycocotools' `Params`. [`Params::new`] gives its defaults.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Params {
    /// What is compared.
    pub iou_type: IouType,
    /// Images to evaluate; `None` for all images of the ground truth.
    pub img_ids: Option<Vec<i64>>,
    /// Categories to evaluate; `None` for all categories of the ground truth.
    pub cat_ids: Option<Vec<i64>>,
    /// IoU (or OKS) thresholds.
    pub iou_thrs: Vec<f64>,
    /// Recall thresholds at which precision is sampled.
    pub rec_thrs: Vec<f64>,
    /// Detections kept per image and category; evaluation sorts them.
    pub max_dets: Vec<usize>,
    /// Area ranges.
    pub area_ranges: Vec<AreaRange>,
    /// Per-joint sigmas of OKS (keypoints only).
    pub kpt_oks_sigmas: Vec<f64>,
}

impl Params {
    /// pycocotools' defaults for `iou_type`: IoU thresholds `linspace(.5, .95, 10)`, recall
    /// thresholds `linspace(0, 1, 101)`, max detections `[1, 10, 100]` and areas all / small /
    /// medium / large for boxes and masks; max detections `[20]` and areas all / medium /
    /// large for keypoints, with the COCO person sigmas.
    pub fn new(iou_type: IouType) -> Self {
        // int(np.round((0.95 - .5) / .05)) + 1 == 10 and int(np.round((1.00 - .0) / .01)) + 1 == 101
        let iou_thrs = linspace(0.5, 0.95, 10);
        let rec_thrs = linspace(0.0, 1.0, 101);
        let (all, small, medium, large) = (
            AreaRange::new("all", 0.0, 1e10),
            AreaRange::new("small", 0.0, 1024.0),
            AreaRange::new("medium", 1024.0, 9216.0),
            AreaRange::new("large", 9216.0, 1e10),
        );
        match iou_type {
            IouType::Bbox | IouType::Segm => Params {
                iou_type,
                img_ids: None,
                cat_ids: None,
                iou_thrs,
                rec_thrs,
                max_dets: vec![1, 10, 100],
                area_ranges: vec![all, small, medium, large],
                kpt_oks_sigmas: Vec::new(),
            },
            IouType::Keypoints => Params {
                iou_type,
                img_ids: None,
                cat_ids: None,
                iou_thrs,
                rec_thrs,
                max_dets: vec![20],
                area_ranges: vec![all, medium, large],
                kpt_oks_sigmas: COCO_KEYPOINT_SIGMAS.to_vec(),
            },
        }
    }

    /// Keypoint parameters with the sigmas of another skeleton.
    pub fn keypoints_with_sigmas(sigmas: Vec<f64>) -> Self {
        Params {
            kpt_oks_sigmas: sigmas,
            ..Params::new(IouType::Keypoints)
        }
    }

    /// Checks the parameters and returns them with `max_dets` sorted, as pycocotools'
    /// `evaluate` does.
    pub(crate) fn validated(&self) -> Result<Params> {
        let mut p = self.clone();
        p.max_dets.sort_unstable();
        if p.iou_thrs.is_empty() {
            return Err(Error::params("iou_thrs is empty"));
        }
        if p.max_dets.is_empty() {
            return Err(Error::params("max_dets is empty"));
        }
        if let Some(t) = p
            .iou_thrs
            .iter()
            .chain(&p.rec_thrs)
            .find(|t| !t.is_finite())
        {
            return Err(Error::params(format!("threshold {t} is not finite")));
        }
        if p.max_dets.windows(2).any(|w| w[0] == w[1]) {
            return Err(Error::params(format!(
                "max_dets {:?} repeats a value",
                p.max_dets
            )));
        }
        for (i, a) in p.area_ranges.iter().enumerate() {
            if p.area_ranges[..i].iter().any(|b| b.label == a.label) {
                return Err(Error::params(format!(
                    "area range label {:?} is used twice",
                    a.label
                )));
            }
        }
        match p.iou_type {
            IouType::Bbox | IouType::Segm if p.max_dets.len() < 3 => {
                return Err(Error::params(format!(
                    "the {} summary needs 3 max_dets, found {:?}",
                    p.iou_type, p.max_dets
                )));
            }
            IouType::Keypoints => {
                if p.kpt_oks_sigmas.is_empty() {
                    return Err(Error::params("kpt_oks_sigmas is empty"));
                }
                if let Some(s) = p
                    .kpt_oks_sigmas
                    .iter()
                    .find(|s| !(s.is_finite() && **s > 0.0))
                {
                    return Err(Error::params(format!(
                        "keypoint sigma {s} is not a positive number"
                    )));
                }
            }
            _ => {}
        }
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_pycocotools() {
        let p = Params::new(IouType::Bbox);
        assert_eq!(p.iou_thrs.len(), 10);
        assert_eq!(p.iou_thrs[5], 0.75);
        assert_eq!(p.rec_thrs.len(), 101);
        assert_eq!(p.max_dets, [1, 10, 100]);
        assert_eq!(p.area_ranges[2], AreaRange::new("medium", 1024.0, 9216.0));
        let k = Params::new(IouType::Keypoints);
        assert_eq!(k.max_dets, [20]);
        assert_eq!(k.area_ranges.len(), 3);
        assert_eq!(k.kpt_oks_sigmas[0], 0.026000000000000002);
        assert_eq!(k.kpt_oks_sigmas[3], 0.034999999999999996);
        assert_eq!("segm".parse::<IouType>().unwrap(), IouType::Segm);
        assert_eq!(
            "box".parse::<IouType>().unwrap_err().to_string(),
            "invalid evaluation parameters: unknown IoU type \"box\": expected `bbox`, `segm` or `keypoints`"
        );
    }

    #[test]
    fn validation_sorts_and_rejects() {
        let mut p = Params::new(IouType::Bbox);
        p.max_dets = vec![100, 1, 10];
        assert_eq!(p.validated().unwrap().max_dets, [1, 10, 100]);
        p.max_dets = vec![10, 100];
        assert_eq!(
            p.validated().unwrap_err().to_string(),
            "invalid evaluation parameters: the bbox summary needs 3 max_dets, found [10, 100]"
        );
        let mut k = Params::keypoints_with_sigmas(vec![0.1, 0.0]);
        assert_eq!(
            k.validated().unwrap_err().to_string(),
            "invalid evaluation parameters: keypoint sigma 0 is not a positive number"
        );
        k.kpt_oks_sigmas = vec![0.1];
        k.area_ranges.push(AreaRange::new("all", 0.0, 1.0));
        assert_eq!(
            k.validated().unwrap_err().to_string(),
            "invalid evaluation parameters: area range label \"all\" is used twice"
        );
    }
}
