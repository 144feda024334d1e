//! Running teachers over unlabelled images into a pseudo-label store (MuST step 2).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use indicatif::ProgressBar;
use mustard_data::coco::{Category, COCO_KEYPOINTS, COCO_SKELETON};
use mustard_data::imageio::DepthMap;
use mustard_data::{Dataset, Loader, LoaderConfig, Source, Subset, Task, TaskSet};
use mustard_pseudo::labels::{
    keep_boxes, keep_people, labels_to_original, relative_depth, segmentation_labels, soft_labels,
};
use mustard_pseudo::store::{fingerprint, sha256_file, FORMAT};
use mustard_pseudo::{
    ImageLabels, Manifest, ShardSpec, ShardState, Stats, Store, Teacher, Thresholds,
};

use crate::checkpoint::load_model_on;
use crate::config::{Classes, Config};
use crate::error::Problems;
use crate::log::progress_bar;
use crate::targets::Encoder;
use crate::{Error, MultiTaskModel, Result};

/// What [`pseudo_label`] does.
#[derive(Debug, Clone)]
pub struct PseudoOptions {
    /// Teacher checkpoints (a `.safetensors` file or a run folder); each task by one teacher.
    pub teachers: Vec<PathBuf>,
    /// The unlabelled images: a COCO file or a folder of images.
    pub images: PathBuf,
    /// Image root of a COCO file (default: its folder).
    pub root: Option<PathBuf>,
    /// The store folder.
    pub out: PathBuf,
    /// Score and confidence thresholds.
    pub thresholds: Thresholds,
    /// Images per shard.
    pub shard_size: usize,
    /// The slice of shards this process writes.
    pub shard: ShardSpec,
    /// Network input size (default: the largest training size of the teachers).
    pub input_size: Option<u32>,
    /// Images per forward pass.
    pub batch_size: usize,
    /// Draw a progress bar.
    pub progress: bool,
    /// Run the teachers here instead of on the devices of their runs.
    pub device: Option<mustard_core::DeviceSpec>,
    /// Leave out images that cannot be read or decoded: each is named once and stored with no
    /// task labelled (so no student task trains on it), instead of stopping.
    pub skip_bad: bool,
}

impl PseudoOptions {
    /// Defaults for `teachers` over `images` into `out`.
    pub fn new(teachers: Vec<PathBuf>, images: PathBuf, out: PathBuf) -> Self {
        PseudoOptions {
            teachers,
            images,
            root: None,
            out,
            thresholds: Thresholds::default(),
            shard_size: 256,
            shard: ShardSpec::ALL,
            input_size: None,
            batch_size: 8,
            progress: false,
            device: None,
            skip_bad: false,
        }
    }
}

/// What a [`pseudo_label`] call did.
#[derive(Debug, Clone)]
pub struct PseudoSummary {
    /// The store.
    pub store: PathBuf,
    /// Shards written by this call.
    pub written: usize,
    /// Shards this call found complete and skipped.
    pub skipped: usize,
    /// Shards found broken (partial or corrupt) and redone.
    pub redone: usize,
    /// Whether every shard of the store is now complete.
    pub complete: bool,
    /// Totals over the complete shards.
    pub stats: Stats,
    /// Wall time.
    pub seconds: f64,
    /// Images this call left out because they cannot be read (`skip_bad`), each with why.
    pub left_out: Vec<String>,
}

/// A category with the keypoint schema of `joints` joints (COCO's names and skeleton for 17).
fn pose_category(id: u64, name: &str, joints: usize) -> Category {
    let coco = joints == COCO_KEYPOINTS.len();
    Category {
        id,
        name: name.to_string(),
        supercategory: None,
        keypoints: Some(if coco {
            COCO_KEYPOINTS.iter().map(|s| s.to_string()).collect()
        } else {
            (0..joints).map(|j| format!("joint_{j}")).collect()
        }),
        skeleton: coco.then(|| COCO_SKELETON.to_vec()),
    }
}

/// The object categories a store records, and how many of them, from the first, are detection
/// categories: the detection teacher's categories, then the pose teacher's category unless the
/// detection teacher has one of that name (then its people carry the keypoints).
pub fn store_categories(
    detection: Option<&Classes>,
    pose: Option<&Classes>,
) -> (Vec<Category>, usize) {
    let mut cats: Vec<Category> = detection
        .map(|c| {
            c.categories
                .iter()
                .zip(&c.category_ids)
                .enumerate()
                .map(|(i, (name, &id))| {
                    if c.person == Some(i) && c.joints > 0 {
                        pose_category(id, name, c.joints)
                    } else {
                        Category {
                            id,
                            name: name.clone(),
                            supercategory: None,
                            keypoints: None,
                            skeleton: None,
                        }
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    let detected = cats.len();
    if let Some((p, joints)) = pose.and_then(|c| Some((c.pose_category()?, c.joints))) {
        match cats.iter_mut().find(|c| c.name == p.name) {
            Some(c) => *c = pose_category(c.id, &p.name, joints),
            None => cats.push(pose_category(p.id, &p.name, joints)),
        }
    }
    (cats, detected)
}

struct LoadedTeacher {
    path: PathBuf,
    config: Config,
    model: MultiTaskModel,
}

/// Loads the teachers and checks they label distinct tasks (each keeps its own classes).
fn load_teachers(
    paths: &[PathBuf],
    device: Option<mustard_core::DeviceSpec>,
) -> Result<Vec<LoadedTeacher>> {
    if paths.is_empty() {
        return Err(Error::config(
            "teachers",
            "give at least one teacher checkpoint",
        ));
    }
    let mut teachers: Vec<LoadedTeacher> = Vec::new();
    for path in paths {
        let (config, _, model) = load_model_on(path, device)?;
        let model = model.for_inference()?;
        for t in &teachers {
            if let Some(task) = t
                .config
                .model
                .tasks
                .iter()
                .find(|x| config.model.tasks.contains(x))
            {
                return Err(Error::config(
                    "teachers",
                    format!(
                        "{} and {} both label {task}; give one teacher per task",
                        t.path.display(),
                        path.display()
                    ),
                ));
            }
        }
        teachers.push(LoadedTeacher {
            path: path.clone(),
            config,
            model,
        });
    }
    Ok(teachers)
}

impl PseudoOptions {
    /// Checks the thresholds and sizes, reporting all problems at once.
    pub fn validate(&self) -> Result<()> {
        let mut p = Problems::default();
        if let Err(e) = self.thresholds.validate() {
            p.push("thresholds", e);
        }
        p.check(
            self.batch_size == 0 || self.shard_size == 0,
            "pseudo-label",
            || "batch size and shard size must be at least 1".into(),
        );
        p.finish()
    }
}

/// Runs `options.teachers` over the images of shards `options.shard` owns and writes them into
/// the store; complete shards are skipped, partial or corrupt ones redone.
pub fn pseudo_label(options: &PseudoOptions) -> Result<PseudoSummary> {
    let started = Instant::now();
    options.validate()?;
    let teachers = load_teachers(&options.teachers, options.device)?;
    let images: Arc<Dataset> = Arc::new(mustard_pseudo::open_images(
        &options.images,
        options.root.as_deref(),
    )?);
    // Under a launcher the processes split the shards among themselves.
    let world = mustard_core::dist::world();
    let main = world.rank() == 0;
    let shard = if world.size() > 1 {
        if options.shard != ShardSpec::ALL {
            return Err(Error::config(
                "pseudo-label",
                format!(
                    "--shard {} with {} processes: the processes of a launcher split the shards by themselves; give one or the other",
                    options.shard,
                    world.size()
                ),
            ));
        }
        ShardSpec {
            index: world.rank(),
            count: world.size(),
        }
    } else {
        options.shard
    };
    let progress = options.progress && main;
    if progress {
        if let Some(line) = crate::predict::left_out_line(&options.images, images.not_images()) {
            eprintln!("{line}");
        }
    }
    // Rank 0 writes the manifest; the others then open it (and check it is theirs).
    let manifest = manifest(options, &teachers, &images)?;
    let created = if main {
        Some(Store::create(&options.out, manifest.clone()))
    } else {
        None
    };
    world.barrier()?;
    let store = match created {
        Some(store) => store?,
        None => Store::create(&options.out, manifest)?,
    };
    store.clean_temporaries(shard);
    let m = store.manifest().clone();
    let owned: Vec<usize> = (0..m.shards()).filter(|&k| shard.owns(k)).collect();
    let bar = progress_bar(
        progress,
        owned.iter().map(|&k| m.range(k).len() as u64).sum(),
        "pseudo-labels [{bar:30}] {pos}/{len} images {msg} eta {eta}",
    );
    let labeller = Labeller {
        teachers: &teachers,
        source: images.clone(),
        encoder: Arc::new(Encoder::images_only(m.input_size)),
        manifest: &m,
        batch_size: options.batch_size,
        skip_bad: options.skip_bad,
    };
    let mut left_out = Vec::new();
    let (mut written, mut skipped, mut redone) = (0, 0, 0);
    for &k in &owned {
        match store.check(k) {
            ShardState::Complete(_) => {
                skipped += 1;
                bar.inc(m.range(k).len() as u64);
                continue;
            }
            ShardState::Broken(why) => {
                crate::log::say(&bar, options.progress, format!("redoing shard {k}: {why}"));
                redone += 1;
            }
            ShardState::Missing => {}
        }
        bar.set_message(format!("shard {k}"));
        let (ids, labels, skipped) = labeller.shard(k, &bar)?;
        for why in &skipped {
            crate::log::say(&bar, options.progress, format!("left out {why}"));
        }
        left_out.extend(skipped);
        store.write_shard(k, &ids, &labels)?;
        written += 1;
    }
    bar.finish_and_clear();
    // Every process's shards are written before any judges the store.
    world.barrier()?;
    // Shards this call wrote or verified are known good; the others (other workers') are
    // judged by their records, not re-read: a rerun or the student verifies checksums.
    let states = store.status_recorded();
    let complete = states.iter().all(|s| matches!(s, ShardState::Complete(_)));
    // `stats.json` is written once the store is complete, by whoever sees it so: workers that
    // finish at once each write the same totals, and none leaves a partial count behind.
    let stats = if main && complete {
        store.write_stats(&states)?
    } else {
        store.stats_of(&states)
    };
    world.barrier()?;
    Ok(PseudoSummary {
        store: options.out.clone(),
        written,
        skipped,
        redone,
        complete,
        stats,
        seconds: started.elapsed().as_secs_f64(),
        left_out,
    })
}

/// The store's plan: the images, the teachers (with their checkpoints' SHA-256), thresholds,
/// input size and the label spaces.
fn manifest(
    options: &PseudoOptions,
    teachers: &[LoadedTeacher],
    images: &Dataset,
) -> Result<Manifest> {
    let input_size = options.input_size.unwrap_or_else(|| {
        teachers
            .iter()
            .map(|t| t.config.train.input_size)
            .max()
            .unwrap_or(256)
    });
    // Each task's label space from its teacher.
    let space = |task: Task| {
        teachers
            .iter()
            .find(|t| t.config.model.tasks.contains(&task))
            .map(|t| &t.config.model.classes)
    };
    let (categories, detected) = store_categories(space(Task::Detection), space(Task::Pose));
    let label_names = space(Task::Classification)
        .map(|c| c.labels.clone())
        .unwrap_or_default();
    let seg_classes = space(Task::Segmentation)
        .map(Classes::segmentation_classes)
        .unwrap_or_default();
    let mut tasks: Vec<Task> = teachers
        .iter()
        .flat_map(|t| t.config.model.tasks.clone())
        .collect();
    tasks.sort();
    let teachers = teachers
        .iter()
        .map(|t| {
            let file = crate::checkpoint::weights_file(&t.path);
            Ok(Teacher {
                tasks: t.config.model.tasks.clone(),
                checkpoint: t.path.clone(),
                sha256: sha256_file(&file)?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Manifest {
        format: FORMAT,
        source: options.images.clone(),
        images: images.len(),
        fingerprint: fingerprint(images),
        shard_size: options.shard_size,
        tasks,
        teachers,
        thresholds: options.thresholds.clone(),
        input_size,
        categories,
        detection_categories: Some(detected),
        seg_classes,
        label_names,
    })
}

/// The teachers over the images of one shard at a time.
struct Labeller<'a> {
    teachers: &'a [LoadedTeacher],
    source: Arc<Dataset>,
    encoder: Arc<Encoder>,
    manifest: &'a Manifest,
    batch_size: usize,
    skip_bad: bool,
}

impl Labeller<'_> {
    /// The image ids and labels of shard `k`, and why each image left out could not be read
    /// (with `skip_bad`; such an image is stored with no task labelled).
    fn shard(
        &self,
        k: usize,
        bar: &ProgressBar,
    ) -> Result<(Vec<u64>, Vec<ImageLabels>, Vec<String>)> {
        let m = self.manifest;
        let range = m.range(k);
        let source: Arc<dyn Source> = self.source.clone();
        let loader = Loader::new(
            Arc::new(Subset::new(source, range.clone())),
            self.encoder.clone(),
            LoaderConfig {
                threads: None,
                skip_bad: self.skip_bad,
                ..LoaderConfig::eval(self.batch_size, m.input_size)
            },
        )?;
        let ids: Vec<u64> = range.clone().map(|i| self.source.image(i).id).collect();
        let position: std::collections::HashMap<u64, usize> =
            ids.iter().enumerate().map(|(p, &id)| (id, p)).collect();
        // An image left out keeps its place with labels that teach nothing: no box, no person,
        // a label map and depth map of one unknown pixel, zero class probabilities (the image
        // cannot be read, so no student trains on it anyway).
        let tasks = m.task_set();
        let nothing = ImageLabels {
            tasks: TaskSet::EMPTY,
            semantic: tasks
                .contains(Task::Segmentation)
                .then(|| image::GrayImage::from_pixel(1, 1, image::Luma([255]))),
            depth: tasks
                .contains(Task::Depth)
                .then(|| DepthMap::from_pixel(1, 1, image::Luma([0.0]))),
            classes: tasks
                .contains(Task::Classification)
                .then(|| vec![0.0; m.label_names.len()]),
            ..Default::default()
        };
        let mut labels: Vec<ImageLabels> = vec![nothing; range.len()];
        for batch in loader.epoch(0) {
            let batch = batch?;
            let mut per_image: Vec<ImageLabels> = batch
                .meta
                .iter()
                .map(|_| ImageLabels {
                    tasks: m.task_set(),
                    ..Default::default()
                })
                .collect();
            for t in self.teachers {
                label_batch(t, &batch, m, &mut per_image)?;
            }
            bar.inc(per_image.len() as u64);
            for (meta, l) in batch.meta.iter().zip(per_image) {
                let p = position.get(&meta.image_id).ok_or_else(|| {
                    Error::file(
                        self.source.path(),
                        format!("image {} of a batch is not in shard {k}", meta.image_id),
                    )
                })?;
                labels[*p] = l;
            }
        }
        let skipped = loader.skipped();
        bar.inc(skipped.len() as u64);
        Ok((
            ids,
            labels,
            skipped.into_iter().map(|(_, why)| why).collect(),
        ))
    }
}

/// Adds one teacher's labels of `batch` to `out`.
fn label_batch(
    teacher: &LoadedTeacher,
    batch: &crate::targets::Batch,
    m: &Manifest,
    out: &mut [ImageLabels],
) -> Result<()> {
    let model = &teacher.model;
    let th = &m.thresholds;
    let o = model.infer(&batch.images.to_device(model.device())?)?;
    let metas = &batch.meta;
    if let (Some(head), Some(d)) = (model.detection(), o.detection()) {
        for ((dets, meta), l) in head.decode(d)?.iter().zip(metas).zip(out.iter_mut()) {
            l.boxes = keep_boxes(dets, th.detection, &meta.transform, meta.original_size);
        }
    }
    if let (Some(head), Some(p)) = (model.pose(), o.pose()) {
        let person = m
            .person()
            .ok_or_else(|| Error::config("teachers", "the pose teacher has no person category"))?;
        for ((people, meta), l) in head.decode(p)?.iter().zip(metas).zip(out.iter_mut()) {
            l.people = keep_people(people, th, person, &meta.transform, meta.original_size);
        }
    }
    if let Some(logits) = o.segmentation() {
        for ((map, meta), l) in segmentation_labels(logits, th.segmentation)?
            .iter()
            .zip(metas)
            .zip(out.iter_mut())
        {
            l.semantic = Some(labels_to_original(map, &meta.transform, meta.original_size));
        }
    }
    if let (Some(head), Some(d)) = (model.depth(), o.depth()) {
        let (_, _, h, w) = d.dims4()?;
        for ((values, meta), l) in head.decode(d)?.into_iter().zip(metas).zip(out.iter_mut()) {
            let found = vec![values.len()];
            let map =
                DepthMap::from_raw(w as u32, h as u32, values).ok_or_else(|| Error::Shape {
                    what: "the depth teacher's decoded map".into(),
                    found,
                    expected: format!("{h}·{w} values (its output is {h}x{w})"),
                })?;
            l.depth = Some(relative_depth(&map, &meta.transform, meta.original_size));
        }
    }
    if let Some(logits) = o.classification() {
        for (p, l) in soft_labels(logits, th.temperature)?
            .into_iter()
            .zip(out.iter_mut())
        {
            l.classes = Some(p);
        }
    }
    Ok(())
}

/// The tasks of a store, for reports.
pub fn store_tasks(dir: &Path) -> Result<TaskSet> {
    Ok(Store::open(dir)?.manifest().task_set())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::NamedClass;

    fn names(n: &[&str]) -> Vec<String> {
        n.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_store_keeps_each_teachers_categories() {
        let shapes = Classes {
            categories: names(&["circle", "square", "triangle"]),
            category_ids: vec![1, 2, 3],
            ..Classes::default()
        };
        let people = Classes {
            categories: names(&["person"]),
            category_ids: vec![1],
            person: Some(0),
            joints: 17,
            ..Classes::default()
        };
        // Shapes detected, people posed apart: the person comes after the detection categories.
        let (cats, detected) = store_categories(Some(&shapes), Some(&people));
        let summary: Vec<(&str, u64, bool)> = cats
            .iter()
            .map(|c| (c.name.as_str(), c.id, c.keypoints.is_some()))
            .collect();
        assert_eq!(
            summary,
            [
                ("circle", 1, false),
                ("square", 2, false),
                ("triangle", 3, false),
                ("person", 1, true)
            ]
        );
        assert_eq!(detected, 3);
        assert_eq!(cats[3].keypoints.as_ref().unwrap()[0], "nose");
        // The student built from those categories detects the shapes and poses the people.
        let student = crate::datasets::classes_from(&cats[..3], &[]);
        assert_eq!(student.categories, shapes.categories);
        // A detector that has people: the pose teacher's keypoints go to its person category.
        let mut coco = shapes.clone();
        coco.categories.push("person".into());
        coco.category_ids.push(4);
        let (cats, detected) = store_categories(Some(&coco), Some(&people));
        assert_eq!(detected, 4);
        assert_eq!((cats[3].id, cats[3].keypoints.is_some()), (4, true));
        // Only a pose teacher: the person alone, no detection category.
        let (cats, detected) = store_categories(None, Some(&people));
        assert_eq!((cats.len(), detected), (1, 0));
        let posed_apart = Classes {
            person: Some(3),
            pose: Some(NamedClass {
                name: "person".into(),
                id: 1,
            }),
            joints: 17,
            ..shapes.clone()
        };
        // A student used as a pose teacher brings its pose category along.
        let (cats, _) = store_categories(Some(&shapes), Some(&posed_apart));
        assert_eq!((cats.len(), cats[3].name.as_str()), (4, "person"));
    }
}
