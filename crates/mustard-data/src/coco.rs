//! The COCO dataset file, read and written record by record.
//!
//! Standard fields follow the COCO format (<https://cocodataset.org/#format-data>). mustard adds
//! optional, documented fields to image records so that one file can describe every task:
//!
//! | field | meaning |
//! | --- | --- |
//! | `seg_file` | an 8-bit PNG label map (train ids, 255 = ignore), relative to the image root |
//! | `depth_file` | a 16-bit PNG depth map, relative to the image root; 0 = no depth |
//! | `depth_scale` | metres per depth-map unit (default 0.001: millimetres) |
//! | `label` | the image-level class, an index into the top-level `label_names` |
//! | `tasks` | the tasks this image is labelled for (`detection`, `pose`, `segmentation`, `depth`, `classification`); when absent they are derived from what the record carries |
//!
//! Semantic train ids: by default 0 is background and category `categories[i]` is `i + 1`,
//! whether the map comes from `seg_file` or is rasterised from the instance masks (crowd regions
//! → 255). A top-level `seg_classes` list gives the segmentation its own label space instead
//! (value `i` of a `seg_file` map is `seg_classes[i]`, so stuff classes such as "sky" or "road"
//! that are no object category can be named); then only `seg_file` maps label segmentation.

use std::path::{Path, PathBuf};

use mustard_eval::rle::Rle;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{Error, Result, Task};

/// A whole COCO file.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct CocoFile {
    /// Free-form dataset information.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<Value>,
    /// Image records.
    pub images: Vec<ImageRecord>,
    /// Object annotations.
    #[serde(default)]
    pub annotations: Vec<Annotation>,
    /// Object categories.
    #[serde(default)]
    pub categories: Vec<Category>,
    /// Names of the image-level classes (`label` of an image record indexes this list).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub label_names: Vec<String>,
    /// Names of the segmentation classes by label-map value; empty: background, then the
    /// categories (see the module documentation).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub seg_classes: Vec<String>,
}

/// One image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// Unique id.
    pub id: u64,
    /// Path relative to the image root.
    pub file_name: String,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// 8-bit PNG label map (see the module documentation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seg_file: Option<String>,
    /// 16-bit PNG depth map.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub depth_file: Option<String>,
    /// Metres per depth unit (default 0.001).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub depth_scale: Option<f64>,
    /// Image-level class index into `label_names`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<u32>,
    /// Tasks labelled for this image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tasks: Option<Vec<Task>>,
}

/// RLE counts: a list (uncompressed) or a string (compressed, as COCO json stores it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RleCounts {
    /// Run lengths.
    Uncompressed(Vec<u32>),
    /// LEB128-like string of maskApi's `rleToString`.
    Compressed(String),
}

/// An RLE mask as stored in json.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RleJson {
    /// `[height, width]`.
    pub size: [u32; 2],
    /// The runs.
    pub counts: RleCounts,
}

/// An instance mask.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Segmentation {
    /// Polygons `[x0, y0, x1, y1, …]`.
    Polygons(Vec<Vec<f64>>),
    /// Run-length encoding.
    Rle(RleJson),
}

impl Segmentation {
    /// The mask as an RLE of `height` x `width`.
    pub fn to_rle(&self, height: u32, width: u32) -> std::result::Result<Rle, String> {
        match self {
            Segmentation::Polygons(polys) => {
                Rle::from_polygons(polys, height, width).map_err(|e| e.to_string())
            }
            Segmentation::Rle(r) => {
                let [h, w] = r.size;
                if (h, w) != (height, width) {
                    return Err(format!(
                        "RLE size [{h}, {w}] differs from the image's [{height}, {width}]"
                    ));
                }
                match &r.counts {
                    RleCounts::Uncompressed(c) => Rle::new(h, w, c.clone()),
                    RleCounts::Compressed(s) => Rle::from_compressed(s, h, w),
                }
                .map_err(|e| e.to_string())
            }
        }
    }

    /// The compressed-RLE form of a mask.
    pub fn from_rle(rle: &Rle) -> Self {
        Segmentation::Rle(RleJson {
            size: [rle.height(), rle.width()],
            counts: RleCounts::Compressed(rle.to_compressed()),
        })
    }
}

/// One object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Annotation {
    /// Unique id.
    pub id: u64,
    /// The image.
    pub image_id: u64,
    /// The category id.
    pub category_id: u64,
    /// `[x, y, width, height]` in pixels; when absent, derived from the visible keypoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bbox: Option<[f64; 4]>,
    /// Area in pixels (of the mask when there is one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub area: Option<f64>,
    /// 1 for a crowd region.
    #[serde(default)]
    pub iscrowd: u8,
    /// Instance mask.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segmentation: Option<Segmentation>,
    /// `[x, y, v] × K`; v = 0 not labelled, 1 labelled but occluded, 2 visible.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keypoints: Option<Vec<f64>>,
    /// Number of joints with v > 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_keypoints: Option<u32>,
}

/// An object category.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Category {
    /// Unique id.
    pub id: u64,
    /// Name.
    pub name: String,
    /// Parent category name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub supercategory: Option<String>,
    /// Joint names (pose categories).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keypoints: Option<Vec<String>>,
    /// 1-based joint index pairs to draw.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skeleton: Option<Vec<[u32; 2]>>,
}

/// Index of the pose category (the first with joint names).
pub fn person_category(categories: &[Category]) -> Option<usize> {
    categories.iter().position(|c| c.keypoints.is_some())
}

/// The segmentation classes of `file`, by label-map value.
pub fn segmentation_classes(file: &CocoFile) -> Vec<String> {
    segmentation_classes_of(&file.seg_classes, &file.categories)
}

/// Segmentation classes by label-map value: `seg_classes` when given, else background and then
/// the categories.
pub fn segmentation_classes_of(seg_classes: &[String], categories: &[Category]) -> Vec<String> {
    if seg_classes.is_empty() {
        std::iter::once("background".to_string())
            .chain(categories.iter().map(|c| c.name.clone()))
            .collect()
    } else {
        seg_classes.to_vec()
    }
}

/// Joints of the pose category, 0 without one.
pub fn num_keypoints(categories: &[Category]) -> usize {
    categories
        .iter()
        .find_map(|c| c.keypoints.as_ref().map(Vec::len))
        .unwrap_or(0)
}

impl Category {
    /// Left/right joint pairs for horizontal flips: `left_*` with `right_*` by name.
    pub fn flip_pairs(&self) -> Vec<(usize, usize)> {
        let Some(names) = &self.keypoints else {
            return Vec::new();
        };
        let mut pairs = Vec::new();
        for (i, name) in names.iter().enumerate() {
            if let Some(rest) = name.strip_prefix("left_") {
                if let Some(j) = names
                    .iter()
                    .position(|n| n.strip_prefix("right_") == Some(rest))
                {
                    pairs.push((i, j));
                }
            }
        }
        pairs
    }
}

/// The 17 COCO person joints in order.
pub const COCO_KEYPOINTS: [&str; 17] = [
    "nose",
    "left_eye",
    "right_eye",
    "left_ear",
    "right_ear",
    "left_shoulder",
    "right_shoulder",
    "left_elbow",
    "right_elbow",
    "left_wrist",
    "right_wrist",
    "left_hip",
    "right_hip",
    "left_knee",
    "right_knee",
    "left_ankle",
    "right_ankle",
];

/// The COCO person skeleton (1-based joint pairs).
pub const COCO_SKELETON: [[u32; 2]; 19] = [
    [16, 14],
    [14, 12],
    [17, 15],
    [15, 13],
    [12, 13],
    [6, 12],
    [7, 13],
    [6, 7],
    [6, 8],
    [7, 9],
    [8, 10],
    [9, 11],
    [2, 3],
    [1, 2],
    [1, 3],
    [2, 4],
    [3, 5],
    [4, 6],
    [5, 7],
];

/// Parses a COCO file, naming the section, index and id of the first bad record.
pub fn parse(bytes: &[u8], path: &Path) -> Result<CocoFile> {
    let json_err = |reason: String| Error::Json {
        path: path.to_path_buf(),
        reason,
    };
    let value: Value =
        serde_json::from_slice(bytes).map_err(|e| json_err(format!("not valid JSON: {e}")))?;
    let Value::Object(mut top) = value else {
        return Err(json_err(
            "the top level must be an object with `images`, `annotations` and `categories`".into(),
        ));
    };
    fn section<T: serde::de::DeserializeOwned>(
        top: &mut serde_json::Map<String, Value>,
        name: &'static str,
        required: bool,
        path: &Path,
    ) -> Result<Vec<T>> {
        let items = match top.remove(name) {
            Some(Value::Array(items)) => items,
            Some(_) => {
                return Err(Error::Json {
                    path: path.to_path_buf(),
                    reason: format!("`{name}` must be an array"),
                })
            }
            None if required => {
                return Err(Error::Json {
                    path: path.to_path_buf(),
                    reason: format!("missing `{name}` array"),
                })
            }
            None => Vec::new(),
        };
        items
            .into_iter()
            .enumerate()
            .map(|(index, item)| {
                let id = item.get("id").and_then(Value::as_u64);
                serde_json::from_value(item).map_err(|e| Error::Record {
                    path: path.to_path_buf(),
                    section: name,
                    index,
                    id,
                    reason: e.to_string(),
                })
            })
            .collect()
    }
    let images = section(&mut top, "images", true, path)?;
    let annotations = section(&mut top, "annotations", false, path)?;
    let categories = section(&mut top, "categories", false, path)?;
    let mut names = |field: &str| -> Result<Vec<String>> {
        match top.remove(field) {
            None => Ok(Vec::new()),
            Some(v) => serde_json::from_value(v)
                .map_err(|e| json_err(format!("`{field}` must be a list of strings: {e}"))),
        }
    };
    let label_names = names("label_names")?;
    let seg_classes = names("seg_classes")?;
    Ok(CocoFile {
        info: top.remove("info"),
        images,
        annotations,
        categories,
        label_names,
        seg_classes,
    })
}

/// Reads and parses a COCO file, or several that describe one dataset given as
/// `a.json,b.json` ([`merge`]; a path with a comma that exists as it is stays one file).
pub fn read(path: &Path) -> Result<CocoFile> {
    if let Some(files) = several(path) {
        let parsed = files
            .into_iter()
            .map(|f| Ok((f.clone(), read(&f)?)))
            .collect::<Result<Vec<_>>>()?;
        return merge(parsed);
    }
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    parse(&bytes, path)
}

/// The files of a `a.json,b.json` argument, or None for one file.
pub fn several(path: &Path) -> Option<Vec<PathBuf>> {
    let text = path.to_str()?;
    if !text.contains(',') || path.exists() {
        return None;
    }
    Some(
        text.split(',')
            .filter(|f| !f.is_empty())
            .map(PathBuf::from)
            .collect(),
    )
}

/// Merges COCO files that describe the same images (COCO's `instances_*.json` and
/// `person_keypoints_*.json`, a file of label maps beside a file of boxes): images joined by id,
/// categories by id, annotations by id (the same object in two files becomes one, with the
/// fields of both), `label_names` and `seg_classes` taken from the file that has them.
/// Everything two files say differently is a conflict; all of them are reported at once,
/// naming both files, and nothing is merged.
pub fn merge(files: Vec<(PathBuf, CocoFile)>) -> Result<CocoFile> {
    use std::collections::HashMap;
    let mut files = files.into_iter();
    let Some((first_path, mut merged)) = files.next() else {
        return Err(Error::Json {
            path: PathBuf::new(),
            reason: "no annotation file given".into(),
        });
    };
    let mut conflicts: Vec<String> = Vec::new();
    let mut origin_of_images: HashMap<u64, usize> = HashMap::new();
    for (i, r) in merged.images.iter().enumerate() {
        origin_of_images.entry(r.id).or_insert(i);
    }
    let mut origin_of_anns: HashMap<u64, usize> = HashMap::new();
    for (i, a) in merged.annotations.iter().enumerate() {
        origin_of_anns.entry(a.id).or_insert(i);
    }
    let mut seen = vec![first_path];
    for (path, file) in files {
        let there = seen
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ");
        let mut conflict = |what: String| {
            conflicts.push(format!("{} vs {there}: {what}", path.display()));
        };
        fn join<T: Clone + PartialEq + std::fmt::Debug>(
            mine: &mut Option<T>,
            theirs: Option<T>,
            what: &str,
            conflict: &mut impl FnMut(String),
        ) {
            match (mine.as_ref(), theirs) {
                (_, None) => {}
                (None, t) => *mine = t,
                (Some(m), Some(t)) if *m != t => {
                    conflict(format!("{what}: {t:?} here, {m:?} before"));
                }
                _ => {}
            }
        }
        for r in file.images {
            match origin_of_images.get(&r.id) {
                None => {
                    origin_of_images.insert(r.id, merged.images.len());
                    merged.images.push(r);
                }
                Some(&i) => {
                    let m = &mut merged.images[i];
                    let id = r.id;
                    for (what, a, b) in [
                        ("file_name", m.file_name.clone(), r.file_name.clone()),
                        ("width", m.width.to_string(), r.width.to_string()),
                        ("height", m.height.to_string(), r.height.to_string()),
                    ] {
                        if a != b {
                            conflict(format!("image {id}: {what} {b:?} here, {a:?} before"));
                        }
                    }
                    let at = |f: &str| format!("image {id}: {f}");
                    join(&mut m.seg_file, r.seg_file, &at("seg_file"), &mut conflict);
                    join(
                        &mut m.depth_file,
                        r.depth_file,
                        &at("depth_file"),
                        &mut conflict,
                    );
                    join(
                        &mut m.depth_scale,
                        r.depth_scale,
                        &at("depth_scale"),
                        &mut conflict,
                    );
                    join(&mut m.label, r.label, &at("label"), &mut conflict);
                    m.tasks = match (m.tasks.take(), r.tasks) {
                        (Some(mut a), Some(b)) => {
                            for t in b {
                                if !a.contains(&t) {
                                    a.push(t);
                                }
                            }
                            Some(a)
                        }
                        // Without a list, a record's tasks follow from what it holds.
                        _ => None,
                    };
                }
            }
        }
        for c in file.categories {
            match merged.categories.iter_mut().find(|m| m.id == c.id) {
                None => merged.categories.push(c),
                Some(m) if m.name != c.name => conflict(format!(
                    "category {}: name {:?} here, {:?} before",
                    c.id, c.name, m.name
                )),
                Some(m) => {
                    let at = |f: &str| format!("category {}: {f}", c.id);
                    join(
                        &mut m.supercategory,
                        c.supercategory,
                        &at("supercategory"),
                        &mut conflict,
                    );
                    join(
                        &mut m.keypoints,
                        c.keypoints,
                        &at("keypoints"),
                        &mut conflict,
                    );
                    join(&mut m.skeleton, c.skeleton, &at("skeleton"), &mut conflict);
                }
            }
        }
        for a in file.annotations {
            match origin_of_anns.get(&a.id) {
                None => {
                    origin_of_anns.insert(a.id, merged.annotations.len());
                    merged.annotations.push(a);
                }
                Some(&i) => {
                    let m = &mut merged.annotations[i];
                    let at = |f: &str| format!("annotation {}: {f}", a.id);
                    if (m.image_id, m.category_id, m.iscrowd)
                        != (a.image_id, a.category_id, a.iscrowd)
                    {
                        conflict(format!(
                            "annotation {}: (image_id, category_id, iscrowd) {:?} here, {:?} before; annotation ids must name one object in every file",
                            a.id,
                            (a.image_id, a.category_id, a.iscrowd),
                            (m.image_id, m.category_id, m.iscrowd)
                        ));
                        continue;
                    }
                    join(&mut m.bbox, a.bbox, &at("bbox"), &mut conflict);
                    join(&mut m.area, a.area, &at("area"), &mut conflict);
                    join(
                        &mut m.segmentation,
                        a.segmentation,
                        &at("segmentation"),
                        &mut conflict,
                    );
                    join(
                        &mut m.keypoints,
                        a.keypoints,
                        &at("keypoints"),
                        &mut conflict,
                    );
                    join(
                        &mut m.num_keypoints,
                        a.num_keypoints,
                        &at("num_keypoints"),
                        &mut conflict,
                    );
                }
            }
        }
        for (what, mine, theirs) in [
            ("label_names", &mut merged.label_names, file.label_names),
            ("seg_classes", &mut merged.seg_classes, file.seg_classes),
        ] {
            if mine.is_empty() {
                *mine = theirs;
            } else if !theirs.is_empty() && *mine != theirs {
                conflict(format!("{what}: {theirs:?} here, {mine:?} before"));
            }
        }
        if merged.info.is_none() {
            merged.info = file.info;
        }
        seen.push(path);
    }
    if conflicts.is_empty() {
        return Ok(merged);
    }
    let shown = conflicts.len().min(10);
    let mut reason = format!(
        "{} conflict(s) between the annotation files: {}",
        conflicts.len(),
        conflicts[..shown].join("; ")
    );
    if conflicts.len() > shown {
        reason.push_str(&format!("; and {} more", conflicts.len() - shown));
    }
    Err(Error::Json {
        path: seen.last().cloned().unwrap_or_default(),
        reason,
    })
}

/// Writes a COCO file atomically (temporary file, then rename).
pub fn write(file: &CocoFile, path: &Path) -> Result<()> {
    let bytes = serde_json::to_vec(file).map_err(|e| Error::Json {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    mustard_core::io::write_bytes(path, &bytes)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// COCO's split of one dataset into `instances` (boxes, masks, the person category without
    /// joints) and `person_keypoints` (the same people with joints), merged back into one.
    #[test]
    fn files_of_one_dataset_merge_and_every_conflict_is_named() {
        let instances = r#"{
            "images": [{"id": 1, "file_name": "1.jpg", "width": 8, "height": 6},
                       {"id": 2, "file_name": "2.jpg", "width": 8, "height": 6}],
            "annotations": [
                {"id": 10, "image_id": 1, "category_id": 1, "bbox": [1, 1, 2, 3], "area": 6,
                 "segmentation": [[1, 1, 3, 1, 3, 4]]},
                {"id": 11, "image_id": 2, "category_id": 3, "bbox": [0, 0, 4, 4], "area": 16}],
            "categories": [{"id": 1, "name": "person", "supercategory": "person"},
                           {"id": 3, "name": "car"}]
        }"#;
        let keypoints = r#"{
            "images": [{"id": 1, "file_name": "1.jpg", "width": 8, "height": 6}],
            "annotations": [
                {"id": 10, "image_id": 1, "category_id": 1, "bbox": [1, 1, 2, 3],
                 "keypoints": [2, 2, 2, 0, 0, 0], "num_keypoints": 1}],
            "categories": [{"id": 1, "name": "person", "keypoints": ["nose", "neck"],
                            "skeleton": [[1, 2]]}]
        }"#;
        let parse = |text: &str, name: &str| {
            (
                PathBuf::from(name),
                parse(text.as_bytes(), Path::new(name)).unwrap(),
            )
        };
        let merged = merge(vec![
            parse(instances, "instances.json"),
            parse(keypoints, "person_keypoints.json"),
        ])
        .unwrap();
        assert_eq!(merged.images.len(), 2);
        assert_eq!(merged.annotations.len(), 2, "one person, not two");
        let person = &merged.annotations[0];
        assert_eq!(person.bbox, Some([1.0, 1.0, 2.0, 3.0]));
        assert_eq!(person.area, Some(6.0));
        assert!(person.segmentation.is_some());
        assert_eq!(
            person.keypoints.as_deref(),
            Some(&[2.0, 2.0, 2.0, 0.0, 0.0, 0.0][..])
        );
        assert_eq!(person.num_keypoints, Some(1));
        let cats: Vec<_> = merged
            .categories
            .iter()
            .map(|c| (c.id, c.name.as_str()))
            .collect();
        assert_eq!(cats, [(1, "person"), (3, "car")]);
        assert_eq!(num_keypoints(&merged.categories), 2);
        assert_eq!(
            merged.categories[0].supercategory.as_deref(),
            Some("person")
        );

        // What the files say differently is refused, every conflict named.
        let other = r#"{
            "images": [{"id": 1, "file_name": "one.jpg", "width": 8, "height": 5}],
            "annotations": [{"id": 11, "image_id": 1, "category_id": 3, "bbox": [0, 0, 1, 1]}],
            "categories": [{"id": 3, "name": "truck"}]
        }"#;
        let err = merge(vec![
            parse(instances, "instances.json"),
            parse(other, "other.json"),
        ])
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "other.json: 4 conflict(s) between the annotation files: \
             other.json vs instances.json: image 1: file_name \"one.jpg\" here, \"1.jpg\" before; \
             other.json vs instances.json: image 1: height \"5\" here, \"6\" before; \
             other.json vs instances.json: category 3: name \"truck\" here, \"car\" before; \
             other.json vs instances.json: annotation 11: (image_id, category_id, iscrowd) (1, 3, 0) \
             here, (2, 3, 0) before; annotation ids must name one object in every file"
        );
    }

    const FILE: &str = r#"{
        "images": [{"id": 1, "file_name": "a.png", "width": 4, "height": 3, "label": 0, "tasks": ["detection", "pose"]}],
        "annotations": [
            {"id": 7, "image_id": 1, "category_id": 2, "bbox": [0.5, 1, 2, 1.5], "area": 3, "iscrowd": 0,
             "segmentation": [[0, 0, 2, 0, 2, 2]]},
            {"id": 8, "image_id": 1, "category_id": 2, "bbox": [0, 0, 4, 3], "iscrowd": 1,
             "segmentation": {"size": [3, 4], "counts": [1, 2, 9]}},
            {"id": 9, "image_id": 1, "category_id": 2, "segmentation": {"size": [3, 4], "counts": "12"}}
        ],
        "categories": [{"id": 2, "name": "person", "keypoints": ["nose", "left_eye", "right_eye"], "skeleton": [[1, 2]]}],
        "label_names": ["indoor"]
    }"#;

    #[test]
    fn reads_every_segmentation_form_and_round_trips() {
        let path = Path::new("mem.json");
        let file = parse(FILE.as_bytes(), path).unwrap();
        assert_eq!(
            file.images[0].tasks,
            Some(vec![Task::Detection, Task::Pose])
        );
        assert_eq!(file.annotations[0].bbox, Some([0.5, 1.0, 2.0, 1.5]));
        assert!(matches!(
            file.annotations[0].segmentation,
            Some(Segmentation::Polygons(_))
        ));
        assert!(matches!(
            &file.annotations[1].segmentation,
            Some(Segmentation::Rle(RleJson { size: [3, 4], counts: RleCounts::Uncompressed(c) })) if c == &[1, 2, 9]
        ));
        assert!(matches!(
            &file.annotations[2].segmentation,
            Some(Segmentation::Rle(RleJson { counts: RleCounts::Compressed(s), .. })) if s == "12"
        ));
        let rle = file.annotations[1]
            .segmentation
            .as_ref()
            .unwrap()
            .to_rle(3, 4)
            .unwrap();
        assert_eq!(rle.area(), 2);
        assert_eq!(file.categories[0].flip_pairs(), vec![(1, 2)]);
        let again = parse(&serde_json::to_vec(&file).unwrap(), path).unwrap();
        assert_eq!(again, file);
    }

    #[test]
    fn errors_name_the_record() {
        let path = Path::new("bad.json");
        let err = |s: &str| parse(s.as_bytes(), path).unwrap_err().to_string();
        assert_eq!(
            err(
                r#"{"images": [{"id": 1, "file_name": "a.png", "width": 4, "height": 3}, {"id": 5, "file_name": "b.png", "width": -1, "height": 3}]}"#
            ),
            "bad.json: images[1] (id 5): invalid value: integer `-1`, expected u32"
        );
        assert_eq!(
            err(r#"{"images": [], "annotations": [{"id": 3, "image_id": 1}]}"#),
            "bad.json: annotations[0] (id 3): missing field `category_id`"
        );
        assert_eq!(err(r#"[1, 2]"#), "bad.json: the top level must be an object with `images`, `annotations` and `categories`");
        assert_eq!(
            err(r#"{"annotations": []}"#),
            "bad.json: missing `images` array"
        );
        assert!(err(r#"{"images": [}"#).starts_with("bad.json: not valid JSON: "));
        let rle = Segmentation::Rle(RleJson {
            size: [3, 4],
            counts: RleCounts::Uncompressed(vec![1, 2]),
        });
        assert_eq!(
            rle.to_rle(3, 4).unwrap_err(),
            "invalid mask: counts add up to 3, expected height * width = 3 * 4 = 12"
        );
        assert_eq!(
            rle.to_rle(4, 4).unwrap_err(),
            "RLE size [3, 4] differs from the image's [4, 4]"
        );
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut rng = mustard_core::rng::Rng::new(3);
        let alphabet =
            br#"{}[]":,0123456789.-eE truefalsnl"imagesannotationscategoriescountssizeidbbox"#;
        for len in 0..2000 {
            let bytes: Vec<u8> = (0..len % 200)
                .map(|_| alphabet[rng.below(alphabet.len())])
                .collect();
            let _ = parse(&bytes, Path::new("fuzz.json"));
            // Also mutate a valid file.
            let mut valid = FILE.as_bytes().to_vec();
            let i = rng.below(valid.len());
            valid[i] = alphabet[rng.below(alphabet.len())];
            if let Ok(file) = parse(&valid, Path::new("fuzz.json")) {
                for a in &file.annotations {
                    if let Some(s) = &a.segmentation {
                        let _ = s.to_rle(3, 4);
                    }
                }
            }
        }
    }
}
