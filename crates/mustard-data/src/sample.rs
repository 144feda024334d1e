use image::{GrayImage, RgbImage};

use crate::augment::Affine;
use crate::imageio::DepthMap;
use crate::TaskSet;

/// The image-level label of a sample.
#[derive(Debug, Clone, PartialEq)]
pub enum Label {
    /// A class index.
    Class(u32),
    /// A probability per class (pseudo-labels).
    Soft(Vec<f32>),
}

/// One object of a sample, in the sample's pixel coordinates.
#[derive(Debug, Clone, PartialEq)]
pub struct Object {
    /// `[x1, y1, x2, y2]`.
    pub bbox: [f32; 4],
    /// Index of the category in the dataset's `categories`.
    pub class: usize,
    /// A crowd region (ignored by detection).
    pub crowd: bool,
    /// `[x, y, v]` per joint for pose categories.
    pub keypoints: Option<Vec<[f32; 3]>>,
    /// Confidence: 1 for a real label, the teacher's score for a pseudo-label.
    pub score: f32,
}

/// A decoded (and possibly augmented) image with every label it carries.
#[derive(Debug, Clone)]
pub struct Sample {
    /// The image record's id.
    pub image_id: u64,
    /// The pixels.
    pub image: RgbImage,
    /// Objects (detection and pose labels).
    pub objects: Vec<Object>,
    /// Semantic train ids (0 background, 255 ignore).
    pub semantic: Option<GrayImage>,
    /// Depth in metres (0 = unknown).
    pub depth: Option<DepthMap>,
    /// Image-level label.
    pub label: Option<Label>,
    /// Which tasks this sample is labelled for.
    pub tasks: TaskSet,
    /// Maps original-image pixel coordinates to this sample's coordinates.
    pub transform: Affine,
    /// `(width, height)` of the original image.
    pub original_size: (u32, u32),
}

impl Sample {
    /// `(width, height)` of the sample.
    pub fn size(&self) -> (u32, u32) {
        self.image.dimensions()
    }
}
