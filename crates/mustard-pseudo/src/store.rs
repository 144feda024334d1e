//! The pseudo-label store: fixed-size shards of labels, each written atomically as one
//! safetensors file plus a small record with its SHA-256, under a manifest that pins the image
//! list, the teachers and the thresholds.
//!
//! ```text
//! store/
//!   manifest.json                the plan: source images, shard size, tasks, teachers, thresholds
//!   shards/00000.safetensors     labels of images [0, shard_size)
//!   shards/00000.json            record: image range, bytes, sha256, what was kept
//!   stats.json                   totals over all complete shards
//! ```
//!
//! A shard is complete when its record exists and the shard file has the recorded size and
//! checksum. The record is written after the shard, so a process killed at any moment leaves
//! every earlier shard complete and at most the one in flight incomplete; a rerun redoes exactly
//! the incomplete ones. Workers started with `--shard i/N` own shards `i, i + N, i + 2N, …` and
//! never write the same file.

use std::collections::HashMap;
use std::fmt;
use std::io::{Read, Seek, SeekFrom};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use image::GrayImage;
use mustard_data::coco::{self, Category};
use mustard_data::imageio::DepthMap;
use mustard_data::{Dataset, Task, TaskSet};
use safetensors::tensor::{Dtype, TensorView};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::labels::{ImageLabels, PseudoBox, Stats, Thresholds};
use crate::{Error, Result};

/// Version of the on-disk layout.
pub const FORMAT: u32 = 1;

/// One teacher that contributed labels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Teacher {
    /// The tasks it labels.
    pub tasks: Vec<Task>,
    /// Its checkpoint.
    pub checkpoint: PathBuf,
    /// SHA-256 of the checkpoint file.
    pub sha256: String,
}

/// What a store holds and how it was made (`manifest.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`FORMAT`].
    pub format: u32,
    /// The unlabelled images: a COCO file or an image folder.
    pub source: PathBuf,
    /// Number of images.
    pub images: usize,
    /// SHA-256 over the image list (id, file name, size), see [`fingerprint`].
    pub fingerprint: String,
    /// Images per shard.
    pub shard_size: usize,
    /// Tasks labelled, each by one teacher.
    pub tasks: Vec<Task>,
    /// The teachers.
    pub teachers: Vec<Teacher>,
    /// Thresholds used.
    pub thresholds: Thresholds,
    /// Network input size the teachers ran at.
    pub input_size: u32,
    /// Object categories (class index = position): the detection teacher's, then the pose
    /// teacher's category when the detection teacher does not have it.
    pub categories: Vec<Category>,
    /// How many of `categories`, from the first, are the detection teacher's (absent: all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detection_categories: Option<usize>,
    /// The segmentation teacher's classes, by label value (absent: background, then the
    /// categories).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub seg_classes: Vec<String>,
    /// Image-level class names.
    pub label_names: Vec<String>,
}

impl Manifest {
    /// Number of shards.
    pub fn shards(&self) -> usize {
        self.images.div_ceil(self.shard_size.max(1))
    }

    /// Image indices of shard `k`.
    pub fn range(&self, k: usize) -> Range<usize> {
        let start = k * self.shard_size;
        start.min(self.images)..((k + 1) * self.shard_size).min(self.images)
    }

    /// The task set.
    pub fn task_set(&self) -> TaskSet {
        self.tasks.iter().copied().collect()
    }

    /// Index of the pose category.
    pub fn person(&self) -> Option<usize> {
        coco::person_category(&self.categories)
    }

    /// Joints of the pose category.
    pub fn joints(&self) -> usize {
        coco::num_keypoints(&self.categories)
    }
}

/// SHA-256 over `id \t file_name \t width \t height \n` of every usable image.
pub fn fingerprint(ds: &Dataset) -> String {
    let mut h = Sha256::new();
    for i in 0..ds.len() {
        let r = ds.image(i);
        h.update(format!("{}\t{}\t{}\t{}\n", r.id, r.file_name, r.width, r.height).as_bytes());
    }
    hex(&h.finalize())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA-256 of a file, streamed.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

/// `--shard i/N`: worker `i` of `N` owns shards `i, i + N, i + 2N, …`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardSpec {
    /// This worker, `0..count`.
    pub index: usize,
    /// Number of workers.
    pub count: usize,
}

impl ShardSpec {
    /// The only worker.
    pub const ALL: ShardSpec = ShardSpec { index: 0, count: 1 };

    /// Whether this worker owns shard `k`.
    pub fn owns(&self, k: usize) -> bool {
        k % self.count == self.index
    }
}

impl ShardSpec {
    /// `--shard auto` and `--shard auto/N`: this worker of a scheduler's array of workers, from
    /// the environment `get` reads: a Slurm job array (`SLURM_ARRAY_TASK_ID` from
    /// `SLURM_ARRAY_TASK_MIN`, `SLURM_ARRAY_TASK_COUNT`) or a Kubernetes Indexed Job
    /// (`JOB_COMPLETION_INDEX`, with the count given as `auto/N`).
    pub fn auto(
        count: Option<usize>,
        get: impl Fn(&str) -> Option<String>,
    ) -> std::result::Result<Self, String> {
        let number = |name: &str| -> std::result::Result<Option<usize>, String> {
            match get(name) {
                None => Ok(None),
                Some(v) => v
                    .trim()
                    .parse()
                    .map(Some)
                    .map_err(|_| format!("--shard auto: {name}={v:?} is not a number")),
            }
        };
        let (index, count) = if let Some(index) = number("JOB_COMPLETION_INDEX")? {
            let count = count.ok_or(
                "--shard auto: a Kubernetes Indexed Job does not say how many workers it runs: give --shard auto/N (N = the job's completions)",
            )?;
            (index, count)
        } else if let Some(id) = number("SLURM_ARRAY_TASK_ID")? {
            let first = number("SLURM_ARRAY_TASK_MIN")?.unwrap_or(0);
            let tasks = number("SLURM_ARRAY_TASK_COUNT")?.ok_or(
                "--shard auto: SLURM_ARRAY_TASK_ID is set but SLURM_ARRAY_TASK_COUNT is not",
            )?;
            if let Some(n) = count.filter(|&n| n != tasks) {
                return Err(format!(
                    "--shard auto/{n}: the Slurm job array has {tasks} tasks"
                ));
            }
            (id.checked_sub(first).ok_or_else(|| {
                format!("--shard auto: SLURM_ARRAY_TASK_ID {id} is below SLURM_ARRAY_TASK_MIN {first}")
            })?, tasks)
        } else {
            return Err("--shard auto: neither a Slurm job array (SLURM_ARRAY_TASK_ID) nor a Kubernetes Indexed Job (JOB_COMPLETION_INDEX) started this process; give --shard i/N".into());
        };
        if count == 0 || index >= count {
            return Err(format!(
                "--shard auto: worker {index} of {count} (from the environment) is out of range"
            ));
        }
        Ok(ShardSpec { index, count })
    }
}

impl FromStr for ShardSpec {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        if let Some(rest) = s.strip_prefix("auto") {
            let count = match rest.strip_prefix('/') {
                Some(n) => Some(n.trim().parse::<usize>().map_err(|_| {
                    format!("--shard {s:?}: expected auto or auto/N with N the number of workers")
                })?),
                None if rest.is_empty() => None,
                None => return Err(format!("--shard {s:?}: expected auto or auto/N")),
            };
            return ShardSpec::auto(count, |name| std::env::var(name).ok());
        }
        let bad = || format!("--shard {s:?}: expected i/N with 0 <= i < N, e.g. 0/4, or auto");
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let (index, count) = (
            i.trim().parse::<usize>().map_err(|_| bad())?,
            n.trim().parse::<usize>().map_err(|_| bad())?,
        );
        if count == 0 || index >= count {
            return Err(bad());
        }
        Ok(ShardSpec { index, count })
    }
}

impl fmt::Display for ShardSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// The record written beside a complete shard.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardRecord {
    /// Shard number.
    pub shard: usize,
    /// First image index.
    pub first: usize,
    /// Images in the shard.
    pub count: usize,
    /// Size of the shard file.
    pub bytes: u64,
    /// SHA-256 of the shard file.
    pub sha256: String,
    /// What was kept.
    pub stats: Stats,
}

/// The state of one shard on disk.
#[derive(Debug, Clone, PartialEq)]
pub enum ShardState {
    /// Record and file agree.
    Complete(ShardRecord),
    /// Not written yet (or killed before its record).
    Missing,
    /// Present but unusable; it will be redone.
    Broken(String),
}

/// A pseudo-label store on disk.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
    manifest: Manifest,
}

fn store_err(path: &Path, reason: impl fmt::Display) -> Error {
    Error::Store {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

impl Store {
    /// Opens the store in `dir` made for `manifest`, creating it when absent. An existing store
    /// made for another image list, other teachers or thresholds is refused, naming the field.
    pub fn create(dir: &Path, manifest: Manifest) -> Result<Store> {
        let path = dir.join("manifest.json");
        if path.is_file() {
            let store = Store::open(dir)?;
            let (old, new) = (
                serde_json::to_value(&store.manifest).map_err(|e| store_err(&path, e))?,
                serde_json::to_value(&manifest).map_err(|e| store_err(&path, e))?,
            );
            if let Some((key, now, stored)) = first_difference("", &new, &old) {
                return Err(store_err(
                    &path,
                    format!(
                        "this store was made with a different {key} ({now} now, {stored} stored); choose another output folder or delete this one"
                    ),
                ));
            }
            return Ok(store);
        }
        if manifest.shard_size == 0 {
            return Err(store_err(&path, "shard_size must be at least 1"));
        }
        let text = serde_json::to_string_pretty(&manifest).map_err(|e| store_err(&path, e))?;
        mustard_core::io::write_bytes(&path, text.as_bytes())?;
        std::fs::create_dir_all(dir.join("shards")).map_err(|e| Error::io(dir, e))?;
        Ok(Store {
            dir: dir.to_path_buf(),
            manifest,
        })
    }

    /// Opens an existing store.
    pub fn open(dir: &Path) -> Result<Store> {
        let path = dir.join("manifest.json");
        let text = std::fs::read_to_string(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                store_err(
                    &path,
                    "no pseudo-label store here (manifest.json is missing)",
                )
            } else {
                Error::io(&path, e)
            }
        })?;
        let manifest: Manifest = serde_json::from_str(&text).map_err(|e| store_err(&path, e))?;
        if manifest.format != FORMAT {
            return Err(store_err(
                &path,
                format!(
                    "format {} is not supported (this build reads format {FORMAT})",
                    manifest.format
                ),
            ));
        }
        Ok(Store {
            dir: dir.to_path_buf(),
            manifest,
        })
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    /// The file of shard `k`.
    pub fn shard_path(&self, k: usize) -> PathBuf {
        self.dir.join("shards").join(format!("{k:05}.safetensors"))
    }

    /// The record of shard `k`.
    pub fn record_path(&self, k: usize) -> PathBuf {
        self.dir.join("shards").join(format!("{k:05}.json"))
    }

    /// Checks shard `k` against its record (reads the whole file for the checksum).
    pub fn check(&self, k: usize) -> ShardState {
        self.check_with(k, true)
    }

    /// Like [`Store::check`] but trusts the checksum: the record must match and the file must
    /// have the recorded size. For summaries after a run, where re-reading every shard of a
    /// large store would cost as much as writing it.
    pub fn check_recorded(&self, k: usize) -> ShardState {
        self.check_with(k, false)
    }

    fn check_with(&self, k: usize, verify: bool) -> ShardState {
        let record_path = self.record_path(k);
        let Ok(text) = std::fs::read_to_string(&record_path) else {
            return ShardState::Missing;
        };
        let record: ShardRecord = match serde_json::from_str(&text) {
            Ok(r) => r,
            Err(e) => return ShardState::Broken(format!("{}: {e}", record_path.display())),
        };
        let range = self.manifest.range(k);
        if record.shard != k || record.first != range.start || record.count != range.len() {
            return ShardState::Broken(format!(
                "{}: covers images {}..{}, expected {}..{}",
                record_path.display(),
                record.first,
                record.first + record.count,
                range.start,
                range.end
            ));
        }
        let path = self.shard_path(k);
        match std::fs::metadata(&path) {
            Ok(m) if m.len() == record.bytes => {}
            Ok(m) => {
                return ShardState::Broken(format!(
                    "{}: {} bytes, the record says {}",
                    path.display(),
                    m.len(),
                    record.bytes
                ))
            }
            Err(_) => return ShardState::Broken(format!("{} is missing", path.display())),
        }
        if !verify {
            return ShardState::Complete(record);
        }
        match sha256_file(&path) {
            Ok(sum) if sum == record.sha256 => ShardState::Complete(record),
            Ok(_) => ShardState::Broken(format!(
                "{}: checksum differs from its record",
                path.display()
            )),
            Err(e) => ShardState::Broken(mustard_core::error_chain(&e)),
        }
    }

    /// The state of every shard (every file read for its checksum).
    pub fn status(&self) -> Vec<ShardState> {
        (0..self.manifest.shards()).map(|k| self.check(k)).collect()
    }

    /// The state of every shard from its record and file size only ([`Store::check_recorded`]).
    pub fn status_recorded(&self) -> Vec<ShardState> {
        (0..self.manifest.shards())
            .map(|k| self.check_recorded(k))
            .collect()
    }

    /// Removes temporary files a killed process left for the shards `spec` owns.
    pub fn clean_temporaries(&self, spec: ShardSpec) {
        let Ok(entries) = std::fs::read_dir(self.dir.join("shards")) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some((stem, _)) = name.split_once('.') else {
                continue;
            };
            if name.contains(".tmp") && stem.parse::<usize>().is_ok_and(|k| spec.owns(k)) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }

    /// Writes shard `k` (labels of its images in order, with their image ids): the shard file
    /// first, then its record, each atomically.
    pub fn write_shard(
        &self,
        k: usize,
        ids: &[u64],
        labels: &[ImageLabels],
    ) -> Result<ShardRecord> {
        let range = self.manifest.range(k);
        let path = self.shard_path(k);
        if ids.len() != range.len() || labels.len() != range.len() {
            return Err(store_err(
                &path,
                format!(
                    "shard {k} holds {} images, got {} labels",
                    range.len(),
                    labels.len()
                ),
            ));
        }
        let bytes = encode_shard(k, range.start, ids, labels, &self.manifest)
            .map_err(|e| store_err(&path, e))?;
        mustard_core::io::write_bytes(&path, &bytes)?;
        let mut stats = Stats::default();
        for l in labels {
            stats.add(l);
        }
        let record = ShardRecord {
            shard: k,
            first: range.start,
            count: range.len(),
            bytes: bytes.len() as u64,
            sha256: hex(&Sha256::digest(&bytes)),
            stats,
        };
        let record_path = self.record_path(k);
        let text = serde_json::to_string_pretty(&record).map_err(|e| store_err(&record_path, e))?;
        mustard_core::io::write_bytes(&record_path, text.as_bytes())?;
        Ok(record)
    }

    /// The stats of the complete shards, summed.
    pub fn stats_of(&self, states: &[ShardState]) -> Stats {
        let mut total = Stats::default();
        for s in states {
            if let ShardState::Complete(r) = s {
                total.merge(&r.stats);
            }
        }
        total
    }

    /// Sums the stats of the complete shards and writes `stats.json`.
    pub fn write_stats(&self, states: &[ShardState]) -> Result<Stats> {
        let total = self.stats_of(states);
        let path = self.dir.join("stats.json");
        let text = serde_json::to_string_pretty(&total).map_err(|e| store_err(&path, e))?;
        mustard_core::io::write_bytes(&path, text.as_bytes())?;
        Ok(total)
    }

    /// Reads and verifies shard `k` completely.
    pub fn read_shard(&self, k: usize) -> Result<Vec<(u64, ImageLabels)>> {
        let index = ShardIndex::open(self, k)?;
        let mut file = std::fs::File::open(&index.path).map_err(|e| Error::io(&index.path, e))?;
        (0..index.ids.len())
            .map(|j| Ok((index.ids[j], index.labels(&mut file, j, &self.manifest)?)))
            .collect()
    }
}

/// The first field (dotted path) where `new` differs from `old`, with both values; `source`
/// is left out (the same images may be reached through another path).
fn first_difference(
    prefix: &str,
    new: &serde_json::Value,
    old: &serde_json::Value,
) -> Option<(String, String, String)> {
    match (new.as_object(), old.as_object()) {
        (Some(n), Some(o)) => n.iter().find_map(|(k, v)| {
            if prefix.is_empty() && k == "source" {
                return None;
            }
            let key = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            match o.get(k) {
                Some(ov) => first_difference(&key, v, ov),
                None => Some((key, short(v), "nothing".into())),
            }
        }),
        _ if new != old => Some((prefix.to_string(), short(new), short(old))),
        _ => None,
    }
}

fn short(v: &serde_json::Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 80 {
        format!("{}…", s.chars().take(80).collect::<String>())
    } else {
        s
    }
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn box_rows(boxes: &[PseudoBox]) -> Vec<f32> {
    boxes
        .iter()
        .flat_map(|b| {
            [
                b.bbox[0],
                b.bbox[1],
                b.bbox[2],
                b.bbox[3],
                b.score,
                b.class as f32,
            ]
        })
        .collect()
}

/// Metadata stored in a shard file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct ShardMeta {
    shard: usize,
    first: usize,
    ids: Vec<u64>,
}

fn encode_shard(
    k: usize,
    first: usize,
    ids: &[u64],
    labels: &[ImageLabels],
    manifest: &Manifest,
) -> std::result::Result<Vec<u8>, String> {
    let tasks = manifest.task_set();
    let joints = manifest.joints();
    // (name, dtype, shape, bytes), in image order.
    let mut tensors: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    for (j, l) in labels.iter().enumerate() {
        let key = |what: &str| format!("{:08}.{what}", first + j);
        if tasks.contains(Task::Detection) {
            tensors.push((
                key("boxes"),
                Dtype::F32,
                vec![l.boxes.len(), 6],
                f32_bytes(&box_rows(&l.boxes)),
            ));
        }
        if tasks.contains(Task::Pose) {
            tensors.push((
                key("people"),
                Dtype::F32,
                vec![l.people.len(), 6],
                f32_bytes(&box_rows(&l.people)),
            ));
            let mut kps = Vec::with_capacity(l.people.len() * joints * 3);
            for p in &l.people {
                let k = p.keypoints.as_deref().unwrap_or_default();
                if k.len() != joints {
                    return Err(format!(
                        "image {}: a person has {} joints, the store has {joints}",
                        ids[j],
                        k.len()
                    ));
                }
                kps.extend(k.iter().flatten());
            }
            tensors.push((
                key("keypoints"),
                Dtype::F32,
                vec![l.people.len(), joints, 3],
                f32_bytes(&kps),
            ));
        }
        let missing = |task: Task| format!("image {}: no {task} labels", ids[j]);
        if tasks.contains(Task::Segmentation) {
            let s = l
                .semantic
                .as_ref()
                .ok_or_else(|| missing(Task::Segmentation))?;
            tensors.push((
                key("semantic"),
                Dtype::U8,
                vec![s.height() as usize, s.width() as usize],
                s.as_raw().clone(),
            ));
        }
        if tasks.contains(Task::Depth) {
            let d = l.depth.as_ref().ok_or_else(|| missing(Task::Depth))?;
            tensors.push((
                key("depth"),
                Dtype::F32,
                vec![d.height() as usize, d.width() as usize],
                f32_bytes(d.as_raw()),
            ));
        }
        if tasks.contains(Task::Classification) {
            let c = l
                .classes
                .as_ref()
                .ok_or_else(|| missing(Task::Classification))?;
            tensors.push((key("classes"), Dtype::F32, vec![c.len()], f32_bytes(c)));
        }
    }
    let views = tensors
        .iter()
        .map(|(name, dtype, shape, bytes)| {
            TensorView::new(*dtype, shape.clone(), bytes)
                .map(|v| (name.clone(), v))
                .map_err(|e| e.to_string())
        })
        .collect::<std::result::Result<Vec<_>, String>>()?;
    let meta = ShardMeta {
        shard: k,
        first,
        ids: ids.to_vec(),
    };
    let info = HashMap::from([(
        "mustard".to_string(),
        serde_json::to_string(&meta).map_err(|e| e.to_string())?,
    )]);
    safetensors::serialize(views, Some(info)).map_err(|e| e.to_string())
}

/// One tensor entry of a safetensors header.
#[derive(Debug, Deserialize)]
struct TensorEntry {
    dtype: Dtype,
    shape: Vec<usize>,
    data_offsets: (u64, u64),
}

/// Where each tensor of a verified shard lies, for reading single images.
#[derive(Debug, Clone)]
pub(crate) struct ShardIndex {
    pub(crate) path: PathBuf,
    pub(crate) first: usize,
    pub(crate) ids: Vec<u64>,
    /// name → (dtype, shape, absolute byte range).
    entries: HashMap<String, (Dtype, Vec<usize>, Range<u64>)>,
}

impl ShardIndex {
    /// Verifies shard `k` against its record and indexes it.
    pub(crate) fn open(store: &Store, k: usize) -> Result<ShardIndex> {
        let path = store.shard_path(k);
        match store.check(k) {
            ShardState::Complete(_) => {}
            ShardState::Missing => {
                return Err(store_err(
                    &path,
                    format!("shard {k} has not been written; run `mustard pseudo-label` again to finish the store"),
                ))
            }
            ShardState::Broken(why) => {
                return Err(store_err(
                    &path,
                    format!("{why}; run `mustard pseudo-label` again to redo it"),
                ))
            }
        }
        // Only the header is read here; tensors are read one image at a time.
        let mut file = std::fs::File::open(&path).map_err(|e| Error::io(&path, e))?;
        let mut len = [0u8; 8];
        file.read_exact(&mut len).map_err(|e| Error::io(&path, e))?;
        let n = u64::from_le_bytes(len);
        if n > 100 << 20 {
            return Err(store_err(
                &path,
                format!("header of {n} bytes is not plausible"),
            ));
        }
        let mut header = vec![0u8; n as usize];
        file.read_exact(&mut header)
            .map_err(|e| Error::io(&path, e))?;
        let header: HashMap<String, serde_json::Value> =
            serde_json::from_slice(&header).map_err(|e| store_err(&path, e))?;
        let info: ShardMeta = header
            .get("__metadata__")
            .and_then(|m| m.get("mustard"))
            .and_then(serde_json::Value::as_str)
            .and_then(|s| serde_json::from_str(s).ok())
            .ok_or_else(|| store_err(&path, "no shard description in the file's metadata"))?;
        let range = store.manifest.range(k);
        if info.shard != k || info.first != range.start || info.ids.len() != range.len() {
            return Err(store_err(
                &path,
                format!(
                    "holds shard {} with {} images from {}, expected shard {k} with {} from {}",
                    info.shard,
                    info.ids.len(),
                    info.first,
                    range.len(),
                    range.start
                ),
            ));
        }
        let base = 8 + n;
        let mut entries = HashMap::new();
        for (name, entry) in header {
            if name == "__metadata__" {
                continue;
            }
            let t: TensorEntry = serde_json::from_value(entry)
                .map_err(|e| store_err(&path, format!("{name}: {e}")))?;
            entries.insert(
                name,
                (
                    t.dtype,
                    t.shape,
                    base + t.data_offsets.0..base + t.data_offsets.1,
                ),
            );
        }
        Ok(ShardIndex {
            path,
            first: info.first,
            ids: info.ids,
            entries,
        })
    }

    fn read(
        &self,
        file: &mut std::fs::File,
        j: usize,
        what: &str,
        dtype: Dtype,
    ) -> Result<Option<(Vec<usize>, Vec<u8>)>> {
        let name = format!("{:08}.{what}", self.first + j);
        let Some((d, shape, range)) = self.entries.get(&name) else {
            return Ok(None);
        };
        if *d != dtype {
            return Err(store_err(
                &self.path,
                format!("{name} is {d:?}, expected {dtype:?}"),
            ));
        }
        let mut buf = vec![0u8; (range.end - range.start) as usize];
        file.seek(SeekFrom::Start(range.start))
            .and_then(|_| file.read_exact(&mut buf))
            .map_err(|e| Error::io(&self.path, e))?;
        Ok(Some((shape.clone(), buf)))
    }

    fn read_f32(
        &self,
        file: &mut std::fs::File,
        j: usize,
        what: &str,
    ) -> Result<Option<(Vec<usize>, Vec<f32>)>> {
        Ok(self.read(file, j, what, Dtype::F32)?.map(|(shape, b)| {
            (
                shape,
                b.chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
            )
        }))
    }

    /// The labels of image `j` of the shard.
    pub(crate) fn labels(
        &self,
        file: &mut std::fs::File,
        j: usize,
        manifest: &Manifest,
    ) -> Result<ImageLabels> {
        let tasks = manifest.task_set();
        let bad = |what: &str| {
            store_err(
                &self.path,
                format!("image {}: malformed {what}", self.ids[j]),
            )
        };
        let boxes = |rows: Vec<f32>| -> Vec<PseudoBox> {
            rows.chunks_exact(6)
                .map(|r| PseudoBox {
                    bbox: [r[0], r[1], r[2], r[3]],
                    score: r[4],
                    class: r[5] as usize,
                    keypoints: None,
                })
                .collect()
        };
        let mut out = ImageLabels {
            tasks,
            ..Default::default()
        };
        if tasks.contains(Task::Detection) {
            let (_, rows) = self
                .read_f32(file, j, "boxes")?
                .ok_or_else(|| bad("boxes"))?;
            out.boxes = boxes(rows);
        }
        if tasks.contains(Task::Pose) {
            let (_, rows) = self
                .read_f32(file, j, "people")?
                .ok_or_else(|| bad("people"))?;
            let (shape, kps) = self
                .read_f32(file, j, "keypoints")?
                .ok_or_else(|| bad("keypoints"))?;
            let mut people = boxes(rows);
            let joints = shape.get(1).copied().unwrap_or(0);
            if shape.len() != 3 || shape[0] != people.len() || joints != manifest.joints() {
                return Err(bad("keypoints"));
            }
            for (p, k) in people.iter_mut().zip(kps.chunks_exact(joints.max(1) * 3)) {
                p.keypoints = Some(k.chunks_exact(3).map(|c| [c[0], c[1], c[2]]).collect());
            }
            out.people = people;
        }
        if tasks.contains(Task::Segmentation) {
            let (shape, data) = self
                .read(file, j, "semantic", Dtype::U8)?
                .filter(|(s, _)| s.len() == 2)
                .ok_or_else(|| bad("semantic"))?;
            out.semantic = Some(
                GrayImage::from_raw(shape[1] as u32, shape[0] as u32, data)
                    .ok_or_else(|| bad("semantic"))?,
            );
        }
        if tasks.contains(Task::Depth) {
            let (shape, data) = self
                .read_f32(file, j, "depth")?
                .filter(|(s, _)| s.len() == 2)
                .ok_or_else(|| bad("depth"))?;
            out.depth = Some(
                DepthMap::from_raw(shape[1] as u32, shape[0] as u32, data)
                    .ok_or_else(|| bad("depth"))?,
            );
        }
        if tasks.contains(Task::Classification) {
            let (_, data) = self
                .read_f32(file, j, "classes")?
                .ok_or_else(|| bad("classes"))?;
            out.classes = Some(data);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn auto_shards_come_from_slurm_arrays_and_kubernetes_indexed_jobs() {
        let slurm = [
            ("SLURM_ARRAY_TASK_ID", "5"),
            ("SLURM_ARRAY_TASK_MIN", "1"),
            ("SLURM_ARRAY_TASK_COUNT", "8"),
        ];
        assert_eq!(
            ShardSpec::auto(None, env(&slurm)),
            Ok(ShardSpec { index: 4, count: 8 })
        );
        assert_eq!(
            ShardSpec::auto(Some(4), env(&slurm)),
            Err("--shard auto/4: the Slurm job array has 8 tasks".into())
        );
        let k8s = [("JOB_COMPLETION_INDEX", "2")];
        assert_eq!(
            ShardSpec::auto(Some(3), env(&k8s)),
            Ok(ShardSpec { index: 2, count: 3 })
        );
        assert_eq!(
            ShardSpec::auto(None, env(&k8s)),
            Err("--shard auto: a Kubernetes Indexed Job does not say how many workers it runs: give --shard auto/N (N = the job's completions)".into())
        );
        assert_eq!(
            ShardSpec::auto(Some(2), env(&k8s)),
            Err("--shard auto: worker 2 of 2 (from the environment) is out of range".into())
        );
        assert!(ShardSpec::auto(None, env(&[]))
            .unwrap_err()
            .starts_with("--shard auto: neither a Slurm job array"));
    }
}
