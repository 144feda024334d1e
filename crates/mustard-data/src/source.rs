//! Anything the [`Loader`](crate::Loader) can read samples from: a labelled [`Dataset`], or a
//! pseudo-label store that pairs unlabelled images with teacher labels.

use std::path::Path;

use crate::coco::Category;
use crate::{Dataset, Result, Sample};

/// A numbered collection of samples with the class lists that describe their labels.
pub trait Source: Send + Sync + 'static {
    /// Where the samples come from (named in errors).
    fn path(&self) -> &Path;
    /// Number of samples.
    fn len(&self) -> usize;
    /// Whether there are no samples.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Decodes sample `i` with all its labels (no augmentation).
    fn load(&self, i: usize) -> Result<Sample>;
    /// The object categories (class index = position).
    fn categories(&self) -> &[Category];
    /// Names of the image-level classes.
    fn label_names(&self) -> &[String];
    /// How many of [`Source::categories`], from the first, are detection classes; the others
    /// label another task only (a pose teacher's people beside a detector of other things).
    fn detection_classes(&self) -> usize {
        self.categories().len()
    }
    /// Names of the segmentation classes, by label-map value.
    fn segmentation_classes(&self) -> Vec<String>;
    /// Joint pairs swapped by a horizontal flip.
    fn flip_pairs(&self) -> &[(usize, usize)];
    /// Joints of the pose category (0 without one).
    fn num_keypoints(&self) -> usize {
        crate::coco::num_keypoints(self.categories())
    }
}

impl Source for Dataset {
    fn path(&self) -> &Path {
        Dataset::path(self)
    }
    fn len(&self) -> usize {
        Dataset::len(self)
    }
    fn load(&self, i: usize) -> Result<Sample> {
        Dataset::load(self, i)
    }
    fn categories(&self) -> &[Category] {
        Dataset::categories(self)
    }
    fn label_names(&self) -> &[String] {
        &self.file().label_names
    }
    fn segmentation_classes(&self) -> Vec<String> {
        crate::coco::segmentation_classes(self.file())
    }
    fn flip_pairs(&self) -> &[(usize, usize)] {
        Dataset::flip_pairs(self)
    }
}

/// A contiguous slice of another source (sample `i` is `inner`'s sample `range.start + i`).
pub struct Subset {
    inner: std::sync::Arc<dyn Source>,
    range: std::ops::Range<usize>,
}

impl Subset {
    /// Samples `range` of `inner` (clipped to its length).
    pub fn new(inner: std::sync::Arc<dyn Source>, range: std::ops::Range<usize>) -> Self {
        let end = range.end.min(inner.len());
        Subset {
            range: range.start.min(end)..end,
            inner,
        }
    }
}

impl Source for Subset {
    fn path(&self) -> &Path {
        self.inner.path()
    }
    fn len(&self) -> usize {
        self.range.len()
    }
    fn load(&self, i: usize) -> Result<Sample> {
        self.inner.load(self.range.start + i)
    }
    fn categories(&self) -> &[Category] {
        self.inner.categories()
    }
    fn label_names(&self) -> &[String] {
        self.inner.label_names()
    }
    fn detection_classes(&self) -> usize {
        self.inner.detection_classes()
    }
    fn segmentation_classes(&self) -> Vec<String> {
        self.inner.segmentation_classes()
    }
    fn flip_pairs(&self) -> &[(usize, usize)] {
        self.inner.flip_pairs()
    }
}
