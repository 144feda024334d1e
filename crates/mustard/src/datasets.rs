//! Opening a run's datasets: COCO files, class-folder trees, the synthetic default and
//! pseudo-label stores, and the class lists a model is built with.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use mustard_data::synth::{self, SynthConfig};
use mustard_data::{Dataset, Source};
use mustard_pseudo::PseudoSource;

use crate::config::{Classes, Config, NamedClass};
use crate::{Error, Result};

/// The synthetic default, generated once under `runs/synth/` and reused.
pub fn synthetic_datasets(config: &Config, runs: &Path) -> Result<(PathBuf, PathBuf)> {
    // Rank 0 writes; the other processes of a data-parallel run wait for it (and for its
    // error, which they take as their own).
    let world = mustard_core::dist::world();
    let written = write_synthetic(config, runs, world.rank() == 0).map_err(|e| e.to_string());
    mustard_core::dist::agree(world.as_ref(), written).map_err(Error::Process)
}

fn write_synthetic(config: &Config, runs: &Path, write: bool) -> Result<(PathBuf, PathBuf)> {
    let s = &config.data.synth;
    let mut paths = Vec::new();
    for (split, images, seed) in [
        ("train", s.train_images, s.seed),
        ("val", s.val_images, s.seed.wrapping_add(1_000_003)),
    ] {
        let dir = runs
            .join("synth")
            // The version tag changes with the scenes, so that older renderings are not reused.
            .join(format!("{split}-{}px-{images}-seed{}-v3", s.size, s.seed));
        let json = dir.join("instances.json");
        if !json.is_file() && write {
            let config = SynthConfig {
                size: s.size,
                seed,
                max_objects: 6,
            };
            synth::write(&dir, &config, images, None)?;
        }
        paths.push(json);
    }
    Ok((paths[0].clone(), paths[1].clone()))
}

/// Opens a dataset (a COCO file, or an ImageNet-style `root/<class>/<image>` folder tree) and
/// refuses it when bad, unless `skip_bad` (then each skipped record is printed to stderr).
pub fn open_dataset(path: &Path, root: Option<&Path>, skip_bad: bool) -> Result<Dataset> {
    let main = mustard_core::dist::is_main();
    Ok(
        Dataset::open_path(path, root)?.require_clean(skip_bad, |p| {
            if main {
                eprintln!("skipping {p}")
            }
        })?,
    )
}

/// The label spaces of a dataset or pseudo-label store: its detection categories, pose
/// category, segmentation classes and image-level classes.
pub fn classes_of(ds: &dyn Source) -> Classes {
    let cats = ds.categories();
    let detected = &cats[..ds.detection_classes().min(cats.len())];
    let person = mustard_data::coco::person_category(cats);
    let segmentation = ds.segmentation_classes();
    let mut classes = classes_from(detected, ds.label_names());
    classes.person = person;
    classes.joints = mustard_data::coco::num_keypoints(cats);
    classes.pose = person.filter(|&p| p >= detected.len()).map(|p| NamedClass {
        name: cats[p].name.clone(),
        id: cats[p].id,
    });
    if segmentation != classes.segmentation_classes() {
        classes.segmentation = segmentation;
    }
    classes
}

/// The class lists of object categories (all detected) and image-level class names.
pub fn classes_from(cats: &[mustard_data::coco::Category], labels: &[String]) -> Classes {
    Classes {
        categories: cats.iter().map(|c| c.name.clone()).collect(),
        category_ids: cats.iter().map(|c| c.id).collect(),
        person: mustard_data::coco::person_category(cats),
        joints: mustard_data::coco::num_keypoints(cats),
        labels: labels.to_vec(),
        ..Classes::default()
    }
}

/// A run's training source and, when it validates, its validation set.
pub struct TrainData {
    /// What the loader reads.
    pub train: Arc<dyn Source>,
    /// The validation set (`None` when the run does not validate or has none).
    pub val: Option<Arc<Dataset>>,
}

impl TrainData {
    /// Opens the data of `config`: a pseudo-label store, a dataset, or the synthetic default
    /// (written under `runs/synth` on first use).
    pub fn open(config: &Config, runs: &Path) -> Result<Self> {
        let d = &config.data;
        let root = d.root.as_deref();
        let (train, val_path): (Arc<dyn Source>, Option<PathBuf>) = match (&d.pseudo, &d.train) {
            // With `train` too: the store's images read from that file (the same images, in
            // the same order), whose real labels `real_labels` trains on where it has them.
            (Some(store), train) => {
                let images = match train {
                    Some(t) => Some(Arc::new(open_dataset(t, root, d.skip_bad)?)),
                    None => None,
                };
                (
                    Arc::new(PseudoSource::open(store, images)?.with_real_labels(d.real_labels)),
                    d.val.clone(),
                )
            }
            (None, Some(train)) => (
                Arc::new(open_dataset(train, root, d.skip_bad)?),
                d.val.clone(),
            ),
            (None, None) => {
                let (t, v) = synthetic_datasets(config, runs)?;
                (Arc::new(open_dataset(&t, None, false)?), Some(v))
            }
        };
        let val = match &val_path {
            Some(p) if config.train.validate => Some(Arc::new(open_dataset(p, root, d.skip_bad)?)),
            _ => None,
        };
        Ok(Self { train, val })
    }
}
