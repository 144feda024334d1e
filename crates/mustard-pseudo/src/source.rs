//! The student's data source: the unlabelled images paired with their pseudo-labels, read
//! through the same [`Loader`](mustard_data::Loader) as labelled data.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use mustard_data::coco::Category;
use mustard_data::{Dataset, Label, Sample, Source, Task};

use crate::store::{fingerprint, ShardIndex, Store};
use crate::{Error, Result};

/// Opens the images a store labels: a folder of images, or any dataset file `--data` takes.
pub fn open_images(path: &Path, root: Option<&Path>) -> Result<Dataset> {
    Ok(if path.is_dir() {
        Dataset::from_images(path)?
    } else {
        // Any dataset file `--data` takes (COCO, several files, a folder description, a list).
        Dataset::open_path(path, root)?
    })
}

/// Every image of a complete store with its pseudo-labels as a [`Source`].
pub struct PseudoSource {
    store: Store,
    images: Arc<Dataset>,
    shards: Vec<ShardIndex>,
    flip_pairs: Vec<(usize, usize)>,
    real_labels: bool,
    path: PathBuf,
}

impl PseudoSource {
    /// Opens the store in `dir` over `images` (the dataset it was made from; `None` reopens the
    /// manifest's source). Every shard is verified against its checksum; an incomplete store is
    /// refused, naming the first missing or broken shard.
    pub fn open(dir: &Path, images: Option<Arc<Dataset>>) -> Result<Self> {
        let store = Store::open(dir)?;
        let m = store.manifest();
        let images = match images {
            Some(ds) => ds,
            None => Arc::new(open_images(&m.source, None)?),
        };
        if fingerprint(&images) != m.fingerprint || images.len() != m.images {
            return Err(Error::Store {
                path: dir.join("manifest.json"),
                reason: format!(
                    "the store labels a different image list than {} ({} images)",
                    images.path().display(),
                    images.len()
                ),
            });
        }
        let shards = (0..m.shards())
            .map(|k| ShardIndex::open(&store, k))
            .collect::<Result<Vec<_>>>()?;
        let flip_pairs = m
            .categories
            .iter()
            .find(|c| c.keypoints.is_some())
            .map(Category::flip_pairs)
            .unwrap_or_default();
        Ok(PseudoSource {
            path: dir.to_path_buf(),
            store,
            images,
            shards,
            flip_pairs,
            real_labels: false,
        })
    }

    /// Where an image carries real labels for a task, train on those instead of the teacher's
    /// (objects come from the real labels when the image is labelled for detection or pose).
    pub fn with_real_labels(mut self, yes: bool) -> Self {
        self.real_labels = yes;
        self
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    fn labelled(&self, i: usize) -> Result<Sample> {
        let m = self.store.manifest();
        let k = i / m.shard_size;
        let index = &self.shards[k];
        let mut file = std::fs::File::open(&index.path).map_err(|e| Error::io(&index.path, e))?;
        let labels = index.labels(&mut file, i - index.first, m)?;
        let mut sample = self.images.load(i)?;
        if sample.image_id != index.ids[i - index.first] {
            return Err(Error::Store {
                path: index.path.clone(),
                reason: format!(
                    "image {i} has id {} in the shard and {} in {}",
                    index.ids[i - index.first],
                    sample.image_id,
                    self.images.path().display()
                ),
            });
        }
        let real = if self.real_labels {
            sample.tasks
        } else {
            Default::default()
        };
        let has_real = |t: Task| real.contains(t);
        if !(has_real(Task::Detection) || has_real(Task::Pose)) {
            sample.objects = labels.objects(m.person());
        }
        if !has_real(Task::Segmentation) {
            sample.semantic = labels.semantic;
        }
        if !has_real(Task::Depth) {
            sample.depth = labels.depth;
        }
        if !has_real(Task::Classification) {
            sample.label = labels.classes.map(Label::Soft);
        }
        let mut tasks = labels.tasks;
        for t in real.iter() {
            tasks.insert(t);
        }
        sample.tasks = tasks;
        Ok(sample)
    }
}

impl Source for PseudoSource {
    fn path(&self) -> &Path {
        &self.path
    }
    fn len(&self) -> usize {
        self.store.manifest().images
    }
    fn load(&self, i: usize) -> mustard_data::Result<Sample> {
        self.labelled(i).map_err(|e| match e {
            Error::Data(e) => e,
            other => mustard_data::Error::Json {
                path: self.path.clone(),
                reason: other.to_string(),
            },
        })
    }
    fn categories(&self) -> &[Category] {
        &self.store.manifest().categories
    }
    fn label_names(&self) -> &[String] {
        &self.store.manifest().label_names
    }
    fn detection_classes(&self) -> usize {
        let m = self.store.manifest();
        m.detection_categories.unwrap_or(m.categories.len())
    }
    fn segmentation_classes(&self) -> Vec<String> {
        let m = self.store.manifest();
        mustard_data::coco::segmentation_classes_of(&m.seg_classes, &m.categories)
    }
    fn flip_pairs(&self) -> &[(usize, usize)] {
        &self.flip_pairs
    }
}
