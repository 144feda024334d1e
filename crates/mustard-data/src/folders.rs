//! Datasets laid out as folders rather than one COCO file: an image folder with label maps
//! (COCO-Stuff, ADE20K, Cityscapes, Pascal VOC) and/or depth maps (NYU v2, KITTI) beside it,
//! paired by file stem, described by a small TOML file that `--data` names:
//!
//! ```toml
//! # ade20k.toml, beside ADEChallengeData2016/
//! images = "ADEChallengeData2016/images/validation"
//! labels = "ADEChallengeData2016/annotations/validation"
//! classes = "objectInfo150.txt"   # one name per line (or `class_names = [...]`)
//! reduce_zero = true              # value 0 = "other" (ignored), value v = class v - 1
//! ```
//!
//! With `coco = "annotations/instances_val2017.json"` the images come from a COCO file (its
//! `file_name`s under `images`), and label or depth maps found by stem are added to it; with
//! `panoptic = "annotations/panoptic_val2017.json"` and `panoptic_maps` a COCO panoptic set
//! reads as semantic segmentation (every category, things and stuff) and thing boxes.
//!
//! Every path is relative to the TOML file. Label values become class indices through
//! `reduce_zero`, `ids` (Cityscapes' label id → train id) and `ignore`; every other value is
//! ignored (255) when it is not a class. Depth maps are 16-bit PNGs: `depth_scale` metres per
//! unit (NYU: 0.001, KITTI: 1/256), `depth_invalid` marks pixels without a measurement (0).
//! The folder becomes an in-memory COCO index ([`crate::Dataset`]), so training, `eval`,
//! `data check` and `must` read it like any COCO file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::coco::{CocoFile, ImageRecord};
use crate::{imageio, Error, Result};

/// The TOML description of a folder dataset.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FolderSpec {
    /// A COCO file of these images (or several of one dataset, `a.json,b.json`), relative to
    /// the description; its `file_name`s are under `images`. Without it every JPEG or PNG file
    /// under `images` is an image.
    #[serde(default)]
    pub coco: Option<String>,
    /// A COCO panoptic file (`panoptic_val2017.json`): its images, its thing segments as
    /// instance boxes, and with `panoptic_maps` every category (things and stuff) as semantic
    /// segmentation.
    #[serde(default)]
    pub panoptic: Option<PathBuf>,
    /// The folder of the panoptic PNGs (segment id = R + 256·G + 256²·B).
    #[serde(default)]
    pub panoptic_maps: Option<PathBuf>,
    /// The image folder (JPEG or PNG files, searched recursively).
    pub images: PathBuf,
    /// The label-map folder: `<stem><label_suffix>.png` per image, 8- or 16-bit grey or palette.
    #[serde(default)]
    pub labels: Option<PathBuf>,
    /// Appended to an image's stem to name its label map (Cityscapes: `_gtFine_labelIds`, with
    /// `label_strip` = `_leftImg8bit`).
    #[serde(default)]
    pub label_suffix: String,
    /// Removed from the end of an image's stem before the suffixes are added.
    #[serde(default)]
    pub label_strip: String,
    /// A text file of class names, one per line, in label-value (or train-id) order.
    #[serde(default)]
    pub classes: Option<PathBuf>,
    /// The class names inline, instead of `classes`.
    #[serde(default)]
    pub class_names: Vec<String>,
    /// Label value 0 is ignored and value v is class v − 1 (ADE20K).
    #[serde(default)]
    pub reduce_zero: bool,
    /// Label value → class index (Cityscapes' `labelIds` → train ids); values not listed are
    /// ignored. Keys are the values as strings (TOML keys), e.g. `ids = { "7" = 0, "8" = 1 }`.
    #[serde(default)]
    pub ids: BTreeMap<String, u8>,
    /// A label value that marks unlabelled pixels (Pascal VOC's 255 border, COCO-Stuff's 255).
    #[serde(default)]
    pub ignore: Option<u16>,
    /// The depth-map folder: `<stem><depth_suffix>.png` per image, 16-bit.
    #[serde(default)]
    pub depth: Option<PathBuf>,
    /// Appended to an image's stem (after `label_strip`) to name its depth map.
    #[serde(default)]
    pub depth_suffix: String,
    /// Metres per depth unit.
    #[serde(default = "millimetres")]
    pub depth_scale: f64,
    /// The depth value of pixels without a measurement (only 0 is supported, as in NYU v2 and
    /// KITTI).
    #[serde(default)]
    pub depth_invalid: u16,
}

fn millimetres() -> f64 {
    0.001
}

/// A folder dataset: its COCO index and the map from label values to class indices.
#[derive(Debug, Clone)]
pub struct Folders {
    /// The index: one record per image, `seg_file`/`depth_file` where a map exists.
    pub file: CocoFile,
    /// Where the index's relative paths start (the TOML file's folder).
    pub root: PathBuf,
    /// Label value → class index or 255 (ignored), for every 16-bit value; None without a
    /// `labels` folder (a COCO file's own `seg_file`s then hold class indices).
    pub lut: Option<Vec<u8>>,
    /// Per image id of a panoptic dataset: segment id → segmentation class.
    pub panoptic: Option<Panoptic>,
}

/// The segments of every image of a panoptic dataset: segment id → class index.
pub type Panoptic = std::collections::HashMap<u64, Vec<(u32, u8)>>;

#[derive(Deserialize)]
struct PanopticFile {
    images: Vec<ImageRecord>,
    annotations: Vec<PanopticImage>,
    categories: Vec<PanopticCategory>,
}

#[derive(Deserialize)]
struct PanopticImage {
    image_id: u64,
    file_name: String,
    segments_info: Vec<Segment>,
}

#[derive(Deserialize)]
struct Segment {
    id: u32,
    category_id: u64,
    #[serde(default)]
    iscrowd: u8,
    bbox: [f64; 4],
    area: f64,
}

#[derive(Deserialize)]
struct PanopticCategory {
    id: u64,
    name: String,
    #[serde(default)]
    isthing: u8,
    #[serde(default)]
    supercategory: Option<String>,
}

/// A COCO panoptic file as an index: thing segments become boxes (annotation id = image id ·
/// 2²⁴ + segment id), every category a segmentation class (in the file's order), the PNGs the
/// label maps.
fn panoptic(spec: &FolderSpec, root: &Path, json: &Path) -> Result<(CocoFile, Panoptic)> {
    let path = root.join(json);
    let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
    let file: PanopticFile = serde_json::from_slice(&bytes).map_err(|e| Error::Json {
        path: path.clone(),
        reason: format!("not a COCO panoptic file: {e}"),
    })?;
    if file.categories.len() > 255 {
        return Err(Error::Json {
            path,
            reason: format!("{} categories: at most 255", file.categories.len()),
        });
    }
    let class_of: std::collections::HashMap<u64, usize> = file
        .categories
        .iter()
        .enumerate()
        .map(|(k, c)| (c.id, k))
        .collect();
    let images_dir = root.join(&spec.images);
    let relative = |p: &Path| relative_to(root, p);
    let maps = spec.panoptic_maps.as_ref().map(|m| root.join(m));
    let mut out = CocoFile {
        seg_classes: if maps.is_some() {
            file.categories.iter().map(|c| c.name.clone()).collect()
        } else {
            Vec::new()
        },
        categories: file
            .categories
            .iter()
            .filter(|c| c.isthing == 1)
            .map(|c| crate::coco::Category {
                id: c.id,
                name: c.name.clone(),
                supercategory: c.supercategory.clone(),
                keypoints: None,
                skeleton: None,
            })
            .collect(),
        ..CocoFile::default()
    };
    let mut segments = Panoptic::new();
    let by_image: std::collections::HashMap<u64, &PanopticImage> =
        file.annotations.iter().map(|a| (a.image_id, a)).collect();
    for mut r in file.images {
        r.file_name = relative(&images_dir.join(&r.file_name));
        if let Some(a) = by_image.get(&r.id) {
            let mut table = Vec::with_capacity(a.segments_info.len());
            for s in &a.segments_info {
                let Some(&class) = class_of.get(&s.category_id) else {
                    return Err(Error::Json {
                        path: path.clone(),
                        reason: format!(
                            "image {}: segment {} has category {}, which the file does not list",
                            r.id, s.id, s.category_id
                        ),
                    });
                };
                table.push((s.id, class as u8));
                if file.categories[class].isthing == 1 {
                    out.annotations.push(crate::coco::Annotation {
                        id: (r.id << 24) + u64::from(s.id),
                        image_id: r.id,
                        category_id: s.category_id,
                        bbox: Some(s.bbox),
                        area: Some(s.area),
                        iscrowd: s.iscrowd,
                        segmentation: None,
                        keypoints: None,
                        num_keypoints: None,
                    });
                }
            }
            if let Some(maps) = &maps {
                r.seg_file = Some(relative(&maps.join(&a.file_name)));
                segments.insert(r.id, table);
            }
        }
        out.images.push(r);
    }
    Ok((out, segments))
}

/// Whether `path` names a folder-dataset description (a `.toml` file).
pub fn is_spec(path: &Path) -> bool {
    path.extension().and_then(|e| e.to_str()) == Some("toml")
}

/// Reads a folder-dataset description and lists its images and maps (headers only).
pub fn open(spec_path: &Path) -> Result<Folders> {
    let text = std::fs::read_to_string(spec_path).map_err(|e| Error::io(spec_path, e))?;
    let spec: FolderSpec = toml::from_str(&text).map_err(|e| Error::Json {
        path: spec_path.to_path_buf(),
        reason: format!("not a folder-dataset description: {e}"),
    })?;
    let root = spec_path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let bad = |reason: String| Error::Json {
        path: spec_path.to_path_buf(),
        reason,
    };
    if spec.depth_invalid != 0 {
        return Err(bad(format!(
            "depth_invalid = {}: only 0 marks missing depth",
            spec.depth_invalid
        )));
    }
    if !(spec.depth_scale.is_finite() && spec.depth_scale > 0.0) {
        return Err(bad(format!(
            "depth_scale = {} must be a positive number",
            spec.depth_scale
        )));
    }
    let classes = match &spec.classes {
        Some(file) => {
            let path = root.join(file);
            let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_string)
                .collect()
        }
        None => spec.class_names.clone(),
    };
    if spec.labels.is_some() && classes.is_empty() {
        return Err(bad(
            "labels need their class names: `classes` (a file) or `class_names`".into(),
        ));
    }
    if classes.len() > 255 {
        return Err(bad(format!(
            "{} classes: at most 255 (value 255 means ignored)",
            classes.len()
        )));
    }
    let lut = match spec.labels {
        Some(_) => Some(lookup(&spec, classes.len()).map_err(bad)?),
        None => None,
    };

    if let Some(json) = &spec.panoptic {
        let (file, segments) = panoptic(&spec, &root, json)?;
        let has_maps = spec.panoptic_maps.is_some();
        return Ok(Folders {
            file,
            root,
            lut: None,
            panoptic: has_maps.then_some(segments),
        });
    }
    let images_dir = root.join(&spec.images);
    let relative = |p: &Path| relative_to(&root, p);
    let mut file = match &spec.coco {
        Some(files) => {
            let list: Vec<String> = files
                .split(',')
                .map(|f| root.join(f).to_string_lossy().into_owned())
                .collect();
            let mut file = crate::coco::read(Path::new(&list.join(",")))?;
            for r in &mut file.images {
                r.file_name = relative(&images_dir.join(&r.file_name));
                for name in [&mut r.seg_file, &mut r.depth_file].into_iter().flatten() {
                    *name = relative(&images_dir.join(&*name));
                }
            }
            file
        }
        None => CocoFile::default(),
    };
    let mut images = Vec::new();
    if spec.coco.is_none() {
        images = crate::dataset::image_files(&images_dir)?;
        if images.is_empty() {
            return Err(bad(format!(
                "no JPEG or PNG files under {}",
                images_dir.display()
            )));
        }
    }
    if spec.coco.is_some() {
        // The index's records, given label and depth maps found by stem.
        for r in &mut file.images {
            let image = root.join(&r.file_name);
            let (seg, depth) = maps(&spec, &root, &images_dir, &image);
            let mut add = |task: crate::Task| {
                if let Some(tasks) = &mut r.tasks {
                    if !tasks.contains(&task) {
                        tasks.push(task);
                    }
                }
            };
            if let Some(s) = seg {
                add(crate::Task::Segmentation);
                r.seg_file = Some(relative(&s));
            }
            if let Some(d) = depth {
                add(crate::Task::Depth);
                r.depth_file = Some(relative(&d));
                r.depth_scale = Some(spec.depth_scale);
            }
        }
        if !classes.is_empty() {
            file.seg_classes = classes;
        }
        return Ok(Folders {
            file,
            root,
            lut,
            panoptic: None,
        });
    }
    let mut records = Vec::with_capacity(images.len());
    for (k, image) in images.iter().enumerate() {
        let (width, height) = imageio::dimensions(image)?;
        let (seg, depth) = maps(&spec, &root, &images_dir, image);
        let seg_file = seg.as_deref().map(relative);
        let depth_file = depth.as_deref().map(relative);
        records.push(ImageRecord {
            id: k as u64 + 1,
            file_name: relative(image),
            width,
            height,
            depth_scale: depth_file.as_ref().map(|_| spec.depth_scale),
            seg_file,
            depth_file,
            label: None,
            tasks: None,
        });
    }
    Ok(Folders {
        file: CocoFile {
            info: None,
            images: records,
            annotations: Vec::new(),
            categories: Vec::new(),
            label_names: Vec::new(),
            seg_classes: classes,
        },
        root,
        lut,
        panoptic: None,
    })
}

/// The label map and depth map of `image` that exist, paired by stem; maps mirror the image
/// folder's sub-folders (Cityscapes: one per city).
fn maps(
    spec: &FolderSpec,
    root: &Path,
    images_dir: &Path,
    image: &Path,
) -> (Option<PathBuf>, Option<PathBuf>) {
    let stem = image
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or_default();
    let stem = stem.strip_suffix(spec.label_strip.as_str()).unwrap_or(stem);
    let sub = image
        .parent()
        .and_then(|p| p.strip_prefix(images_dir).ok())
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let map = |dir: &Option<PathBuf>, suffix: &str| -> Option<PathBuf> {
        let file = root
            .join(dir.as_ref()?)
            .join(&sub)
            .join(format!("{stem}{suffix}.png"));
        file.is_file().then_some(file)
    };
    (
        map(&spec.labels, &spec.label_suffix),
        map(&spec.depth, &spec.depth_suffix),
    )
}

/// `p` as a path relative to the description's folder (unchanged when outside it).
fn relative_to(root: &Path, p: &Path) -> String {
    p.strip_prefix(root)
        .unwrap_or(p)
        .to_string_lossy()
        .into_owned()
}

/// The label value → class map of `spec` over every 16-bit value.
fn lookup(spec: &FolderSpec, classes: usize) -> std::result::Result<Vec<u8>, String> {
    let mut lut = vec![255u8; 1 << 16];
    if !spec.ids.is_empty() {
        if spec.reduce_zero {
            return Err("give `ids` or `reduce_zero`, not both".into());
        }
        for (value, &class) in &spec.ids {
            let v: u16 = value
                .parse()
                .map_err(|_| format!("ids: key {value:?} is not a label value (0–65535)"))?;
            if class != 255 && usize::from(class) >= classes {
                return Err(format!(
                    "ids: value {v} maps to class {class}, but there are {classes} classes"
                ));
            }
            lut[usize::from(v)] = class;
        }
    } else {
        for (v, slot) in lut.iter_mut().enumerate() {
            let class = if spec.reduce_zero {
                v.checked_sub(1)
            } else {
                Some(v)
            };
            if let Some(c) = class.filter(|&c| c < classes) {
                *slot = c as u8;
            }
        }
    }
    if let Some(ignore) = spec.ignore {
        lut[usize::from(ignore)] = 255;
    }
    Ok(lut)
}

/// Maps raw label values to class indices (255 = ignored).
pub fn apply(lut: &[u8], values: &imageio::LabelValues) -> image::GrayImage {
    let (w, h) = values.dimensions();
    image::GrayImage::from_raw(
        w,
        h,
        values
            .as_raw()
            .iter()
            .map(|&v| lut[usize::from(v)])
            .collect(),
    )
    .expect("one value per pixel")
}

/// The class of every pixel of a panoptic PNG (segment id = R + 256·G + 256²·B): its segment's
/// class, 255 for id 0 (void) and for ids the image's segments do not list.
pub fn panoptic_classes(png: &image::RgbImage, segments: &[(u32, u8)]) -> image::GrayImage {
    let (w, h) = png.dimensions();
    image::GrayImage::from_fn(w, h, |x, y| {
        let [r, g, b] = png.get_pixel(x, y).0;
        let id = u32::from(r) + 256 * u32::from(g) + 65536 * u32::from(b);
        let class = segments
            .iter()
            .find(|(s, _)| *s == id)
            .map_or(255, |&(_, c)| c);
        image::Luma([class])
    })
}
