use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::path::{Component, Path, PathBuf};

use image::{GrayImage, Luma};
use rayon::prelude::*;

use crate::augment::Affine;
use crate::coco::{self, Annotation, Category, CocoFile, ImageRecord};
use crate::imageio::Kind;
use crate::{imageio, Error, Label, Object, Result, Sample, Task, TaskSet};

/// Slack, in pixels, allowed for boxes that end past the image border (rounding in exports).
const BORDER_SLACK: f64 = 1.0;

/// One bad record found by [`Dataset::check`].
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    /// The record, e.g. `image 12` or `annotation 57 (image 12)`.
    pub record: String,
    /// The file involved, when there is one.
    pub file: Option<PathBuf>,
    /// What is wrong.
    pub message: String,
    /// Index of the image record affected (the whole image is skipped).
    image: Option<usize>,
    /// Index of the annotation affected (only it is skipped).
    annotation: Option<usize>,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.file {
            Some(file) => write!(f, "{} [{}]: {}", self.record, file.display(), self.message),
            None => write!(f, "{}: {}", self.record, self.message),
        }
    }
}

/// What [`Dataset::check`] found: counts, then every bad record.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CheckReport {
    /// The dataset file.
    pub path: PathBuf,
    /// Image records.
    pub images: usize,
    /// Annotation records.
    pub annotations: usize,
    /// Images labelled per task.
    pub per_task: BTreeMap<Task, usize>,
    /// Annotations per category name, in category order.
    pub per_category: Vec<(String, usize)>,
    /// Every bad record.
    pub problems: Vec<Problem>,
}

impl CheckReport {
    /// Whether nothing is wrong.
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }
}

impl fmt::Display for CheckReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{}: {} images, {} annotations",
            self.path.display(),
            self.images,
            self.annotations
        )?;
        for task in Task::ALL {
            writeln!(
                f,
                "  {:<15} {} images",
                task.name(),
                self.per_task.get(&task).copied().unwrap_or(0)
            )?;
        }
        for (name, n) in &self.per_category {
            writeln!(f, "  category {name:<15} {n} annotations")?;
        }
        if self.problems.is_empty() {
            writeln!(f, "no problems found")
        } else {
            writeln!(f, "{} problem(s):", self.problems.len())?;
            for p in &self.problems {
                writeln!(f, "  {p}")?;
            }
            Ok(())
        }
    }
}

/// A COCO-format dataset: the parsed file and its image folder.
#[derive(Debug, Clone)]
pub struct Dataset {
    path: PathBuf,
    root: PathBuf,
    file: CocoFile,
    category_index: HashMap<u64, usize>,
    anns_by_image: Vec<Vec<usize>>,
    flip_pairs: Vec<(usize, usize)>,
    has_instance_masks: bool,
    usable: Vec<usize>,
    skipped_annotations: HashSet<usize>,
    /// Label value → class index for folder datasets ([`crate::folders`]), whose label maps
    /// are read as raw values; None: `seg_file` values are class indices.
    label_lut: Option<std::sync::Arc<[u8]>>,
    /// Segment id → class per image of a COCO panoptic dataset, whose `seg_file`s are the
    /// RGB-encoded panoptic PNGs.
    panoptic: Option<std::sync::Arc<crate::folders::Panoptic>>,
    /// The files of an image folder that are not images ([`Dataset::from_images`]).
    not_images: Vec<PathBuf>,
}

/// Whether `path` names an image file of a format mustard reads (by its extension).
fn is_image_file(path: &Path) -> bool {
    path.is_file() && imageio::has_image_extension(path)
}

/// Whether `path` names a classification list: a `.csv` file, or a `.json` file whose top
/// level is an array (a COCO file's is an object).
fn is_list(path: &Path) -> bool {
    match path.extension().and_then(|e| e.to_str()) {
        Some("csv") => true,
        Some("json") => {
            use std::io::Read;
            let mut head = [0u8; 64];
            let n = std::fs::File::open(path)
                .and_then(|mut f| f.read(&mut head))
                .unwrap_or(0);
            head[..n]
                .iter()
                .find(|b| !b.is_ascii_whitespace())
                .is_some_and(|&b| b == b'[')
        }
        _ => false,
    }
}

/// The image files under `dir` (by extension, [`imageio::IMAGE_EXTENSIONS`]), sub-folders
/// included, in sorted order.
pub(crate) fn image_files(dir: &Path) -> Result<Vec<PathBuf>> {
    Ok(walk_images(dir)?.0)
}

/// The image files under `dir`, sub-folders included, in sorted order, and the other files
/// found there (hidden files and folders, whose names start with a dot, are not looked at).
pub fn walk_images(dir: &Path) -> Result<(Vec<PathBuf>, Vec<PathBuf>)> {
    fn walk(dir: &Path, images: &mut Vec<PathBuf>, others: &mut Vec<PathBuf>) -> Result<()> {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| Error::io(dir, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                !p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'))
            })
            .collect();
        entries.sort();
        for p in entries {
            if p.is_dir() {
                walk(&p, images, others)?;
            } else if is_image_file(&p) {
                images.push(p);
            } else {
                others.push(p);
            }
        }
        Ok(())
    }
    let (mut images, mut others) = (Vec::new(), Vec::new());
    walk(dir, &mut images, &mut others)?;
    Ok((images, others))
}

/// `path` relative to `root` (`path` itself outside it), `/` between folders: how a file of an
/// image folder is named in records.
pub fn relative_name(root: &Path, path: &Path) -> String {
    path.strip_prefix(root)
        .unwrap_or(path)
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join("/")
}

/// Whether a relative path stays inside its root.
fn stays_inside(name: &str) -> bool {
    let p = Path::new(name);
    !name.is_empty()
        && p.components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
}

/// How far [`Dataset::check_with`] reads each image, label map and depth map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckDepth {
    /// The header only: the file exists, its format and colour type fit, its dimensions match
    /// the record. Milliseconds per thousand images.
    Headers,
    /// A full decode (what training will do): also finds files corrupt past their header.
    Decode,
}

impl Dataset {
    /// Opens a COCO file, or several of one dataset as `a.json,b.json` ([`coco::merge`]);
    /// images are looked up under `root` (default: the (first) file's folder).
    pub fn open(json: &Path, root: Option<&Path>) -> Result<Self> {
        let file = coco::read(json)?;
        let first = coco::several(json)
            .and_then(|f| f.into_iter().next())
            .unwrap_or_else(|| json.to_path_buf());
        let root = match root {
            Some(r) => r.to_path_buf(),
            None => first.parent().map(Path::to_path_buf).unwrap_or_default(),
        };
        Ok(Self::from_file(file, json, root))
    }

    /// Opens `path`: a COCO file (images under `root`, default: its folder), or an
    /// ImageNet-style tree of class folders ([`Dataset::from_class_folders`]).
    pub fn open_path(path: &Path, root: Option<&Path>) -> Result<Self> {
        if crate::folders::is_spec(path) {
            Self::from_folders(path)
        } else if is_list(path) {
            Self::from_list(path, root)
        } else if path.is_dir() {
            Self::from_class_folders(path)
        } else {
            Self::open(path, root)
        }
    }

    /// A classification list: a CSV file of `file,label` lines (a `file,label` header line is
    /// skipped) or a JSON array of `{"file": …, "label": …}`. Files are relative to `root`
    /// (default: the list's folder); classes are the labels in sorted order (numerically when
    /// every label is a number), and become `label_names`.
    pub fn from_list(path: &Path, root: Option<&Path>) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let bad = |line: usize, reason: String| Error::Json {
            path: path.to_path_buf(),
            reason: format!(
                "{}: {reason}",
                if line == 0 {
                    "list".to_string()
                } else {
                    format!("line {line}")
                }
            ),
        };
        let mut rows: Vec<(usize, String, String)> = Vec::new();
        if text.trim_start().starts_with('[') {
            #[derive(serde::Deserialize)]
            #[serde(deny_unknown_fields)]
            struct Row {
                file: String,
                label: serde_json::Value,
            }
            let list: Vec<Row> = serde_json::from_str(&text).map_err(|e| {
                bad(
                    0,
                    format!("expected a JSON array of {{\"file\", \"label\"}}: {e}"),
                )
            })?;
            for (k, r) in list.into_iter().enumerate() {
                let label = match r.label {
                    serde_json::Value::String(s) => s,
                    serde_json::Value::Number(n) => n.to_string(),
                    other => {
                        return Err(bad(
                            0,
                            format!("entry {k}: label {other} is not a name or number"),
                        ))
                    }
                };
                rows.push((k + 1, r.file, label));
            }
        } else {
            for (k, line) in text.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || (k == 0 && line.eq_ignore_ascii_case("file,label")) {
                    continue;
                }
                let Some((file, label)) = line.rsplit_once(',') else {
                    return Err(bad(k + 1, format!("{line:?} is not `file,label`")));
                };
                rows.push((k + 1, file.trim().to_string(), label.trim().to_string()));
            }
        }
        if rows.is_empty() {
            return Err(bad(0, "no `file,label` entries".into()));
        }
        let mut classes: Vec<String> = rows.iter().map(|r| r.2.clone()).collect();
        classes.sort();
        classes.dedup();
        if classes.iter().all(|c| c.parse::<u64>().is_ok()) {
            classes.sort_by_key(|c| c.parse::<u64>().unwrap_or(u64::MAX));
        }
        let root = match root {
            Some(r) => r.to_path_buf(),
            None => path.parent().map(Path::to_path_buf).unwrap_or_default(),
        };
        let index: HashMap<&str, u32> = classes
            .iter()
            .enumerate()
            .map(|(k, c)| (c.as_str(), k as u32))
            .collect();
        let mut file = CocoFile {
            label_names: classes.clone(),
            ..CocoFile::default()
        };
        for (line, name, label) in rows {
            if name.is_empty() || label.is_empty() || !stays_inside(&name) {
                return Err(bad(
                    line,
                    format!("{name:?},{label:?}: a file inside the root and a label are needed"),
                ));
            }
            let image = root.join(&name);
            let (width, height) = imageio::dimensions(&image)
                .map_err(|e| bad(line, mustard_core::error_chain(&e)))?;
            file.images.push(ImageRecord {
                id: file.images.len() as u64 + 1,
                file_name: name,
                width,
                height,
                seg_file: None,
                depth_file: None,
                depth_scale: None,
                label: Some(index[label.as_str()]),
                tasks: Some(vec![Task::Classification]),
            });
        }
        Ok(Self::from_file(file, path, root))
    }

    /// An ImageNet-style classification tree: `root/<class>/<image>.{jpg,jpeg,png}`. Classes are
    /// the folder names in sorted order (they become `label_names`); every image is labelled for
    /// classification only.
    pub fn from_class_folders(root: &Path) -> Result<Self> {
        let read_dir = |dir: &Path| -> Result<Vec<PathBuf>> {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
                .map_err(|e| Error::io(dir, e))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .collect();
            entries.sort();
            Ok(entries)
        };
        let classes: Vec<PathBuf> = read_dir(root)?.into_iter().filter(|p| p.is_dir()).collect();
        if classes.is_empty() {
            return Err(Error::Json {
                path: root.to_path_buf(),
                reason: "no class folders (expected root/<class>/<image>)".into(),
            });
        }
        let mut file = CocoFile::default();
        for (label, dir) in classes.iter().enumerate() {
            let class = dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            file.label_names.push(class.clone());
            for image in read_dir(dir)? {
                if !is_image_file(&image) {
                    continue;
                }
                let (width, height) = imageio::dimensions(&image)?;
                let name = image
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                file.images.push(ImageRecord {
                    id: file.images.len() as u64 + 1,
                    file_name: format!("{class}/{name}"),
                    width,
                    height,
                    seg_file: None,
                    depth_file: None,
                    depth_scale: None,
                    label: Some(label as u32),
                    tasks: Some(vec![Task::Classification]),
                });
            }
        }
        if file.images.is_empty() {
            return Err(Error::Json {
                path: root.to_path_buf(),
                reason: format!(
                    "no images ({}) in its {} class folder(s) (expected root/<class>/<image>)",
                    imageio::image_extensions_list(),
                    classes.len()
                ),
            });
        }
        Ok(Self::from_file(file, root, root.to_path_buf()))
    }

    /// A folder of unlabelled images (any of [`imageio::IMAGE_EXTENSIONS`], sub-folders
    /// included, in sorted order): no categories and no task labels, as the unlabelled set of
    /// MuST. The other files found there are kept in [`Dataset::not_images`].
    pub fn from_images(root: &Path) -> Result<Self> {
        let (paths, others) = walk_images(root)?;
        if paths.is_empty() {
            return Err(Error::Json {
                path: root.to_path_buf(),
                reason: format!(
                    "no images ({}) in this folder or its sub-folders",
                    imageio::image_extensions_list()
                ),
            });
        }
        let mut file = CocoFile::default();
        for image in paths {
            // A file whose header cannot be read stays in (as 0x0): loading it fails naming the
            // file, and a run with --skip-bad leaves it out there, so that the images keep
            // their positions whatever is skipped.
            let (width, height) = imageio::dimensions(&image).unwrap_or((0, 0));
            let name = relative_name(root, &image);
            file.images.push(ImageRecord {
                id: file.images.len() as u64 + 1,
                file_name: name,
                width,
                height,
                seg_file: None,
                depth_file: None,
                depth_scale: None,
                label: None,
                tasks: Some(Vec::new()),
            });
        }
        let mut ds = Self::from_file(file, root, root.to_path_buf());
        ds.not_images = others;
        Ok(ds)
    }

    /// The files of the folder [`Dataset::from_images`] opened that are not images (by their
    /// extension), left out.
    pub fn not_images(&self) -> &[PathBuf] {
        &self.not_images
    }

    /// A dataset from an already parsed file.
    pub fn from_file(file: CocoFile, json: &Path, root: PathBuf) -> Self {
        let category_index = file
            .categories
            .iter()
            .enumerate()
            .map(|(i, c)| (c.id, i))
            .collect();
        // With duplicate image ids the first record owns the annotations (the others are reported).
        let mut image_index: HashMap<u64, usize> = HashMap::new();
        for (i, r) in file.images.iter().enumerate() {
            image_index.entry(r.id).or_insert(i);
        }
        let mut anns_by_image = vec![Vec::new(); file.images.len()];
        for (a, ann) in file.annotations.iter().enumerate() {
            if let Some(&i) = image_index.get(&ann.image_id) {
                anns_by_image[i].push(a);
            }
        }
        let flip_pairs = file
            .categories
            .iter()
            .find(|c| c.keypoints.is_some())
            .map(Category::flip_pairs)
            .unwrap_or_default();
        // With its own segmentation classes, a file labels segmentation by label maps only.
        let has_instance_masks = file.seg_classes.is_empty()
            && file.annotations.iter().any(|a| a.segmentation.is_some());
        let usable = (0..file.images.len()).collect();
        Self {
            path: json.to_path_buf(),
            root,
            file,
            category_index,
            anns_by_image,
            flip_pairs,
            has_instance_masks,
            usable,
            skipped_annotations: HashSet::new(),
            label_lut: None,
            panoptic: None,
            not_images: Vec::new(),
        }
    }

    /// Opens a folder dataset from its TOML description ([`crate::folders`]).
    pub fn from_folders(spec: &Path) -> Result<Self> {
        let f = crate::folders::open(spec)?;
        let mut ds = Self::from_file(f.file, spec, f.root);
        ds.label_lut = f.lut.map(Into::into);
        ds.panoptic = f.panoptic.map(std::sync::Arc::new);
        Ok(ds)
    }

    /// The dataset file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The image folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The parsed file.
    pub fn file(&self) -> &CocoFile {
        &self.file
    }

    /// The categories; `Object::class` indexes this list.
    pub fn categories(&self) -> &[Category] {
        &self.file.categories
    }

    /// Joints per pose instance (0 without a pose category).
    pub fn num_keypoints(&self) -> usize {
        coco::num_keypoints(&self.file.categories)
    }

    /// Left/right joint pairs for horizontal flips.
    pub fn flip_pairs(&self) -> &[(usize, usize)] {
        &self.flip_pairs
    }

    /// Number of usable images.
    pub fn len(&self) -> usize {
        self.usable.len()
    }

    /// Whether there are no usable images.
    pub fn is_empty(&self) -> bool {
        self.usable.is_empty()
    }

    /// The record of usable image `i`.
    pub fn image(&self, i: usize) -> &ImageRecord {
        &self.file.images[self.usable[i]]
    }

    fn tasks_of_record(&self, r: &ImageRecord) -> TaskSet {
        if let Some(tasks) = &r.tasks {
            return tasks.iter().copied().collect();
        }
        let mut set = TaskSet::EMPTY;
        if !self.file.categories.is_empty() {
            set.insert(Task::Detection);
        }
        if self.file.categories.iter().any(|c| c.keypoints.is_some()) {
            set.insert(Task::Pose);
        }
        if r.seg_file.is_some() || self.has_instance_masks {
            set.insert(Task::Segmentation);
        }
        if r.depth_file.is_some() {
            set.insert(Task::Depth);
        }
        if r.label.is_some() {
            set.insert(Task::Classification);
        }
        set
    }

    /// The tasks usable image `i` is labelled for.
    pub fn tasks(&self, i: usize) -> TaskSet {
        self.tasks_of_record(self.image(i))
    }

    fn file_path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// Scans every record, decoding every image, label map and depth map (in parallel), and
    /// reports counts and every bad record: [`Dataset::check_with`] at [`CheckDepth::Decode`].
    pub fn check(&self) -> CheckReport {
        self.check_with(CheckDepth::Decode, &|| {})
    }

    /// Scans every record at `depth`, calling `progress` once per image record checked (from
    /// the worker threads), and reports counts and every bad record.
    pub fn check_with(&self, depth: CheckDepth, progress: &(dyn Fn() + Sync)) -> CheckReport {
        let f = &self.file;
        let mut report = CheckReport {
            path: self.path.clone(),
            images: f.images.len(),
            annotations: f.annotations.len(),
            ..Default::default()
        };
        for r in &f.images {
            for t in self.tasks_of_record(r).iter() {
                *report.per_task.entry(t).or_default() += 1;
            }
        }
        let mut per_category = vec![0usize; f.categories.len()];
        let mut problems = Vec::new();
        let mut seen = HashMap::new();
        for (i, c) in f.categories.iter().enumerate() {
            if let Some(first) = seen.insert(c.id, i) {
                problems.push(Problem {
                    record: format!("category {}", c.id),
                    file: None,
                    message: format!("duplicate id (also categories[{first}])"),
                    image: None,
                    annotation: None,
                });
            }
        }
        let mut seen = HashMap::new();
        for (i, r) in f.images.iter().enumerate() {
            if let Some(first) = seen.insert(r.id, i) {
                problems.push(Problem {
                    record: format!("image {}", r.id),
                    file: None,
                    message: format!("duplicate id (also images[{first}])"),
                    image: Some(i),
                    annotation: None,
                });
            }
        }
        // Images: paths, decoding and sizes, in parallel.
        let image_problems: Vec<Problem> = f
            .images
            .par_iter()
            .enumerate()
            .flat_map_iter(|(i, r)| {
                let problems = self.check_image(i, r, depth);
                progress();
                problems
            })
            .collect();
        problems.extend(image_problems);
        let image_index: HashMap<u64, usize> = f
            .images
            .iter()
            .enumerate()
            .map(|(i, r)| (r.id, i))
            .collect();
        let mut seen = HashMap::new();
        for (a, ann) in f.annotations.iter().enumerate() {
            let record = format!("annotation {} (image {})", ann.id, ann.image_id);
            let mut bad = |message: String| {
                problems.push(Problem {
                    record: record.clone(),
                    file: None,
                    message,
                    image: None,
                    annotation: Some(a),
                });
            };
            if let Some(first) = seen.insert(ann.id, a) {
                bad(format!("duplicate id (also annotations[{first}])"));
            }
            let Some(&img) = image_index.get(&ann.image_id) else {
                bad(format!("image id {} does not exist", ann.image_id));
                continue;
            };
            let Some(&cat) = self.category_index.get(&ann.category_id) else {
                bad(format!("category id {} does not exist", ann.category_id));
                continue;
            };
            per_category[cat] += 1;
            let r = &f.images[img];
            if let Some(message) = check_annotation(ann, &f.categories[cat], r) {
                bad(message);
            }
        }
        report.per_category = f
            .categories
            .iter()
            .map(|c| c.name.clone())
            .zip(per_category)
            .collect();
        report.problems = problems;
        report
    }

    fn check_image(&self, i: usize, r: &ImageRecord, depth: CheckDepth) -> Vec<Problem> {
        let mut out = Vec::new();
        let mut bad = |file: Option<PathBuf>, message: String| {
            out.push(Problem {
                record: format!("image {}", r.id),
                file,
                message,
                image: Some(i),
                annotation: None,
            });
        };
        if let Some(l) = r.label {
            if l as usize >= self.file.label_names.len() {
                bad(
                    None,
                    format!(
                        "label {l} is not below the {} label_names",
                        self.file.label_names.len()
                    ),
                );
            }
        }
        if r.depth_scale.is_some_and(|s| !(s.is_finite() && s > 0.0)) {
            bad(
                None,
                format!("depth_scale {:?} must be positive", r.depth_scale),
            );
        }
        let files = [
            ("file_name", Some(&r.file_name), Kind::Image),
            (
                "seg_file",
                r.seg_file.as_ref(),
                if self.panoptic.is_some() {
                    Kind::Image
                } else if self.label_lut.is_some() {
                    Kind::LabelValues
                } else {
                    Kind::Labels
                },
            ),
            ("depth_file", r.depth_file.as_ref(), Kind::Depth),
        ];
        for (field, name, kind) in files {
            let Some(name) = name else { continue };
            if !stays_inside(name) {
                bad(
                    Some(PathBuf::from(name)),
                    format!("{field} escapes the image root (absolute path or `..`)"),
                );
                continue;
            }
            let path = self.file_path(name);
            if !path.is_file() {
                bad(Some(path), format!("{field} does not exist"));
                continue;
            }
            let decoded = match depth {
                CheckDepth::Headers => imageio::header(&path, kind),
                CheckDepth::Decode => imageio::decode(&path, kind),
            };
            match decoded {
                Err(Error::Image { reason, .. }) => {
                    bad(Some(path), format!("{field} cannot be decoded: {reason}"))
                }
                Err(e) => bad(
                    Some(path),
                    format!("{field} cannot be read: {}", mustard_core::error_chain(&e)),
                ),
                Ok((w, h)) if (w, h) != (r.width, r.height) => bad(
                    Some(path),
                    format!(
                        "{field} is {w}x{h}, the record says {}x{}",
                        r.width, r.height
                    ),
                ),
                Ok(_) => {}
            }
        }
        out
    }

    /// Checks the dataset; with problems, fails with the report unless `skip_bad`, in which case
    /// each bad record is passed to `log` and left out (a bad image with all its annotations, a
    /// bad annotation alone).
    ///
    /// Files are checked from their headers ([`CheckDepth::Headers`]): opening a dataset never
    /// decodes its images; a file that is corrupt past its header fails when it is loaded,
    /// naming it (`mustard data check --deep` finds them all beforehand).
    pub fn require_clean(mut self, skip_bad: bool, mut log: impl FnMut(&Problem)) -> Result<Self> {
        let report = self.check_with(CheckDepth::Headers, &|| {});
        if report.is_clean() {
            return Ok(self);
        }
        if !skip_bad {
            let shown: Vec<String> = report
                .problems
                .iter()
                .take(20)
                .map(|p| format!("  {p}"))
                .collect();
            let more = report.problems.len().saturating_sub(20);
            let mut text = shown.join("\n");
            if more > 0 {
                text.push_str(&format!("\n  … and {more} more"));
            }
            return Err(Error::BadDataset {
                path: self.path.clone(),
                count: report.problems.len(),
                report: text,
            });
        }
        let mut bad_images = HashSet::new();
        for p in &report.problems {
            log(p);
            if let Some(i) = p.image {
                bad_images.insert(i);
            }
            if let Some(a) = p.annotation {
                self.skipped_annotations.insert(a);
            }
        }
        self.usable.retain(|i| !bad_images.contains(i));
        Ok(self)
    }

    /// Decodes usable image `i` with all its labels (no augmentation).
    pub fn load(&self, i: usize) -> Result<Sample> {
        let r = self.image(i);
        let rec = self.usable[i];
        let tasks = self.tasks_of_record(r);
        let path = self.file_path(&r.file_name);
        let image = imageio::read_rgb(&path)?;
        let (w, h) = image.dimensions();
        if (w, h) != (r.width, r.height) {
            return Err(Error::Image {
                path,
                reason: format!("image is {w}x{h}, the record says {}x{}", r.width, r.height),
            });
        }
        let anns: Vec<&Annotation> = self.anns_by_image[rec]
            .iter()
            .filter(|a| !self.skipped_annotations.contains(a))
            .map(|&a| &self.file.annotations[a])
            .collect();
        let record_err = |a: &Annotation, reason: String| Error::Record {
            path: self.path.clone(),
            section: "annotations",
            index: 0,
            id: Some(a.id),
            reason,
        };
        let mut objects = Vec::new();
        for a in &anns {
            let Some(&class) = self.category_index.get(&a.category_id) else {
                return Err(record_err(
                    a,
                    format!("category id {} does not exist", a.category_id),
                ));
            };
            let keypoints = match &a.keypoints {
                Some(k) if k.len() % 3 == 0 => Some(
                    k.chunks(3)
                        .map(|c| [c[0] as f32, c[1] as f32, c[2] as f32])
                        .collect::<Vec<_>>(),
                ),
                Some(k) => {
                    return Err(record_err(
                        a,
                        format!("keypoints has {} values, not a multiple of 3", k.len()),
                    ))
                }
                None => None,
            };
            let bbox = match (a.bbox, &a.segmentation, &keypoints) {
                (Some([x, y, bw, bh]), _, _) => {
                    Some([x as f32, y as f32, (x + bw) as f32, (y + bh) as f32])
                }
                (None, Some(seg), _) => {
                    let rle = seg
                        .to_rle(r.height, r.width)
                        .map_err(|e| record_err(a, e))?;
                    let [x, y, bw, bh] = rle.to_bbox();
                    Some([x as f32, y as f32, (x + bw) as f32, (y + bh) as f32])
                }
                (None, None, Some(kps)) => box_from_keypoints(kps),
                (None, None, None) => None,
            };
            if let Some(bbox) = bbox {
                objects.push(Object {
                    bbox,
                    class,
                    crowd: a.iscrowd != 0,
                    keypoints,
                    score: 1.0,
                });
            }
        }
        let semantic = if !tasks.contains(Task::Segmentation) {
            None
        } else if let Some(name) = &r.seg_file {
            let path = self.file_path(name);
            Some(match (&self.panoptic, &self.label_lut) {
                (Some(p), _) => crate::folders::panoptic_classes(
                    &imageio::read_rgb(&path)?,
                    p.get(&r.id).map_or(&[][..], Vec::as_slice),
                ),
                (None, Some(lut)) => {
                    crate::folders::apply(lut, &imageio::read_label_values(&path)?)
                }
                (None, None) => imageio::read_labels(&path)?,
            })
        } else {
            Some(self.rasterise(&anns, r)?)
        };
        let depth = match (&r.depth_file, tasks.contains(Task::Depth)) {
            (Some(name), true) => Some(imageio::read_depth(
                &self.file_path(name),
                r.depth_scale.unwrap_or(0.001),
            )?),
            _ => None,
        };
        let label = r
            .label
            .filter(|_| tasks.contains(Task::Classification))
            .map(Label::Class);
        Ok(Sample {
            image_id: r.id,
            image,
            objects,
            semantic,
            depth,
            label,
            tasks,
            transform: Affine::IDENTITY,
            original_size: (w, h),
        })
    }

    /// A semantic map from instance masks: larger objects first so smaller ones stay visible;
    /// crowd regions are ignored (255).
    fn rasterise(&self, anns: &[&Annotation], r: &ImageRecord) -> Result<GrayImage> {
        let mut map = GrayImage::new(r.width, r.height);
        let mut masks = Vec::new();
        for a in anns {
            let Some(seg) = &a.segmentation else { continue };
            let rle = seg
                .to_rle(r.height, r.width)
                .map_err(|reason| Error::Record {
                    path: self.path.clone(),
                    section: "annotations",
                    index: 0,
                    id: Some(a.id),
                    reason,
                })?;
            let value = if a.iscrowd != 0 {
                255
            } else {
                self.category_index[&a.category_id] as u8 + 1
            };
            masks.push((rle.area(), value, rle));
        }
        masks.sort_by_key(|m| std::cmp::Reverse(m.0));
        for (_, value, rle) in masks {
            for (p, &m) in map.pixels_mut().zip(rle.decode_row_major().iter()) {
                if m != 0 {
                    *p = Luma([value]);
                }
            }
        }
        Ok(map)
    }
}

/// The extent of the labelled joints, when there are any.
fn box_from_keypoints(kps: &[[f32; 3]]) -> Option<[f32; 4]> {
    let labelled: Vec<&[f32; 3]> = kps.iter().filter(|k| k[2] > 0.0).collect();
    if labelled.is_empty() {
        return None;
    }
    let fold =
        |f: fn(f32, f32) -> f32, i: usize, init: f32| labelled.iter().map(|k| k[i]).fold(init, f);
    Some([
        fold(f32::min, 0, f32::INFINITY),
        fold(f32::min, 1, f32::INFINITY),
        fold(f32::max, 0, f32::NEG_INFINITY),
        fold(f32::max, 1, f32::NEG_INFINITY),
    ])
}

/// The first problem of one annotation against its category and image, if any.
fn check_annotation(ann: &Annotation, cat: &Category, r: &ImageRecord) -> Option<String> {
    if let Some(b) = ann.bbox {
        let [x, y, w, h] = b;
        if b.iter().any(|v| !v.is_finite()) {
            return Some(format!("bbox {b:?} is not finite"));
        }
        if x < 0.0 || y < 0.0 || w < 0.0 || h < 0.0 {
            return Some(format!("bbox {b:?} has a negative value"));
        }
        if x + w > r.width as f64 + BORDER_SLACK || y + h > r.height as f64 + BORDER_SLACK {
            return Some(format!(
                "bbox {b:?} extends outside the {}x{} image",
                r.width, r.height
            ));
        }
    }
    if let Some(k) = &ann.keypoints {
        let joints = cat.keypoints.as_ref().map_or(0, Vec::len);
        if k.len() != 3 * joints {
            return Some(format!(
                "keypoints has {} values, category {} has {joints} joints (expected {})",
                k.len(),
                cat.name,
                3 * joints
            ));
        }
        if k.iter().any(|v| !v.is_finite()) {
            return Some("keypoints are not finite".into());
        }
    }
    if let Some(seg) = &ann.segmentation {
        if let Err(e) = seg.to_rle(r.height, r.width) {
            return Some(format!("segmentation: {e}"));
        }
    }
    if ann.area.is_some_and(|a| !a.is_finite() || a < 0.0) {
        return Some(format!(
            "area {:?} must be finite and non-negative",
            ann.area
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_that_escape_the_root_are_refused() {
        for ok in ["a.png", "sub/b.jpg", "./c.png"] {
            assert!(stays_inside(ok), "{ok}");
        }
        for bad in ["../a.png", "/etc/passwd", "sub/../../x.png", ""] {
            assert!(!stays_inside(bad), "{bad}");
        }
    }

    #[test]
    fn class_folders_become_image_labels() {
        let root = std::env::temp_dir().join(format!("mustard-folders-{}", std::process::id()));
        for (class, n) in [("dog", 2), ("cat", 1)] {
            std::fs::create_dir_all(root.join(class)).unwrap();
            for i in 0..n {
                image::RgbImage::new(5, 3)
                    .save(root.join(class).join(format!("{i}.png")))
                    .unwrap();
            }
        }
        std::fs::write(root.join("dog/notes.txt"), "not an image").unwrap();
        let ds = Dataset::from_class_folders(&root).unwrap();
        assert_eq!(ds.file().label_names, ["cat", "dog"]);
        assert_eq!(ds.len(), 3);
        let names: Vec<(&str, Option<u32>)> = ds
            .file()
            .images
            .iter()
            .map(|r| (r.file_name.as_str(), r.label))
            .collect();
        assert_eq!(
            names,
            [
                ("cat/0.png", Some(0)),
                ("dog/0.png", Some(1)),
                ("dog/1.png", Some(1))
            ]
        );
        assert!(ds.check().is_clean());
        let s = ds.load(2).unwrap();
        assert_eq!(
            (s.label.clone(), s.tasks.iter().collect::<Vec<_>>()),
            (Some(Label::Class(1)), vec![Task::Classification])
        );
        assert_eq!(s.size(), (5, 3));
        std::fs::remove_dir_all(&root).unwrap();
    }

    /// Regression: a folder of folders without images (a dataset's root instead of its image
    /// tree) was accepted as an empty, "clean" classification set.
    #[test]
    fn class_folders_without_images_are_refused() {
        let root = std::env::temp_dir().join(format!("mustard-no-images-{}", std::process::id()));
        std::fs::create_dir_all(root.join("train/images")).unwrap();
        std::fs::write(root.join("train/instances.json"), "{}").unwrap();
        let err = Dataset::from_class_folders(&root).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "{}: no images (.jpg, .jpeg, .png, .webp, .bmp, .tif, .tiff, .gif) in its 1 class folder(s) (expected root/<class>/<image>)",
                root.display()
            )
        );
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn boxes_come_from_keypoints_when_absent() {
        let kps = [[3.0, 4.0, 2.0], [10.0, 1.0, 1.0], [50.0, 50.0, 0.0]];
        assert_eq!(box_from_keypoints(&kps), Some([3.0, 1.0, 10.0, 4.0]));
        assert_eq!(box_from_keypoints(&[[1.0, 1.0, 0.0]]), None);
    }
}
