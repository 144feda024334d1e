use std::fmt;
use std::path::Path;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

use super::ids::IdIndex;
use super::Segmentation;
use crate::{fastjson, json, Error, Result};

/// An image of the ground truth. Only the id is needed, and the size for polygon masks.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct Image {
    /// Image id.
    pub id: i64,
    /// Width in pixels.
    #[serde(default)]
    pub width: Option<u32>,
    /// Height in pixels.
    #[serde(default)]
    pub height: Option<u32>,
}

impl Image {
    /// `(height, width)` when both are known.
    pub fn size(&self) -> Option<(u32, u32)> {
        Some((self.height?, self.width?))
    }
}

/// A category of the ground truth.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct Category {
    /// Category id.
    pub id: i64,
    /// Name.
    #[serde(default)]
    pub name: String,
    /// Keypoint names (keypoint categories only).
    #[serde(default)]
    pub keypoints: Vec<String>,
}

/// A ground-truth annotation. Fields the evaluation does not read are skipped.
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct GtAnnotation {
    /// Annotation id. pycocotools takes a match with id 0 for no match (see the crate docs).
    pub id: i64,
    /// Image id.
    pub image_id: i64,
    /// Category id.
    pub category_id: i64,
    /// `[x, y, w, h]`; needed by box and keypoint evaluation.
    #[serde(default)]
    pub bbox: Option<[f64; 4]>,
    /// The area that decides the area range (for instances, the mask's area, not the box's).
    pub area: f64,
    /// A crowd region: ignored, and matched by any number of detections. `iscrowd` may be a
    /// number (nonzero is true) or a boolean; absent means false. The `ignore` field is not read
    /// (pycocotools overwrites it with `iscrowd`).
    #[serde(default, deserialize_with = "crowd_flag")]
    pub iscrowd: bool,
    /// Mask; needed by segm evaluation.
    #[serde(default)]
    pub segmentation: Option<Segmentation>,
    /// `[x0, y0, v0, x1, y1, v1, …]`; needed by keypoint evaluation.
    #[serde(default)]
    pub keypoints: Option<Vec<f64>>,
    /// The number of labelled joints; 0 makes the annotation ignored in keypoint evaluation.
    #[serde(default)]
    pub num_keypoints: Option<u64>,
}

fn crowd_flag<'de, D: Deserializer<'de>>(deserializer: D) -> Result<bool, D::Error> {
    struct Flag;
    impl Visitor<'_> for Flag {
        type Value = bool;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("0, 1 or a boolean")
        }
        fn visit_bool<E: de::Error>(self, v: bool) -> Result<bool, E> {
            Ok(v)
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<bool, E> {
            Ok(v != 0)
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<bool, E> {
            Ok(v != 0)
        }
        fn visit_unit<E: de::Error>(self) -> Result<bool, E> {
            Ok(false)
        }
    }
    deserializer.deserialize_any(Flag)
}

#[derive(Deserialize)]
struct Dataset {
    images: Vec<Image>,
    #[serde(default)]
    annotations: Vec<GtAnnotation>,
    categories: Vec<Category>,
}

/// A COCO ground truth (`instances_*.json`, `person_keypoints_*.json`), the counterpart of
/// pycocotools' `COCO`.
///
/// Annotations whose image or category is not listed are kept but never evaluated, as in
/// pycocotools.
#[derive(Clone, Debug)]
pub struct CocoGt {
    origin: String,
    images: Vec<Image>,
    categories: Vec<Category>,
    annotations: Vec<GtAnnotation>,
    image_index: IdIndex,
    category_index: IdIndex,
}

impl CocoGt {
    /// Parses a ground-truth json document held in memory; errors name it `ground truth`.
    pub fn from_json(bytes: &[u8]) -> Result<CocoGt> {
        Self::parse(bytes, "ground truth")
    }

    /// Reads and parses a ground-truth json file; errors name the file.
    pub fn from_path(path: impl AsRef<Path>) -> Result<CocoGt> {
        let path = path.as_ref();
        Self::parse(&json::read(path)?, &path.display().to_string())
    }

    fn parse(bytes: &[u8], origin: &str) -> Result<CocoGt> {
        if let Some(d) = fastjson::ground_truth(bytes) {
            return CocoGt::new(origin, d.images, d.categories, d.annotations);
        }
        let d: Dataset = json::parse(bytes, origin)?;
        CocoGt::new(origin, d.images, d.categories, d.annotations)
    }

    /// A ground truth built in memory. `origin` names it in errors. Image, category and
    /// annotation ids must be unique.
    pub fn new(
        origin: impl Into<String>,
        images: Vec<Image>,
        categories: Vec<Category>,
        annotations: Vec<GtAnnotation>,
    ) -> Result<CocoGt> {
        let origin = origin.into();
        let image_index = index(&origin, "image", images.iter().map(|i| i.id))?;
        let category_index = index(&origin, "category", categories.iter().map(|c| c.id))?;
        index(&origin, "annotation", annotations.iter().map(|a| a.id))?;
        Ok(CocoGt {
            origin,
            images,
            categories,
            annotations,
            image_index,
            category_index,
        })
    }

    /// The file it was read from, or the name given to [`CocoGt::new`].
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// Images, in file order.
    pub fn images(&self) -> &[Image] {
        &self.images
    }

    /// Categories, in file order.
    pub fn categories(&self) -> &[Category] {
        &self.categories
    }

    /// Annotations, in file order.
    pub fn annotations(&self) -> &[GtAnnotation] {
        &self.annotations
    }

    /// The image with this id.
    pub fn image(&self, id: i64) -> Option<&Image> {
        self.image_index.get(id).map(|i| &self.images[i])
    }

    /// The category with this id.
    pub fn category(&self, id: i64) -> Option<&Category> {
        self.category_index.get(id).map(|i| &self.categories[i])
    }
}

fn index(origin: &str, what: &'static str, ids: impl Iterator<Item = i64>) -> Result<IdIndex> {
    let ids: Vec<i64> = ids.collect();
    IdIndex::new(&ids).map_err(|(id, first, second)| Error::DuplicateId {
        origin: origin.to_string(),
        what,
        id,
        first,
        second,
    })
}
