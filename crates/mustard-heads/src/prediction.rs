/// Joints of one person: `[x, y, score]` each, in input pixels.
pub type Keypoints = Vec<[f32; 3]>;

/// One detected object in input pixels, with an optional payload (e.g. [`Keypoints`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Detection<P = ()> {
    /// `[x1, y1, x2, y2]`.
    pub bbox: [f32; 4],
    /// Confidence in `[0, 1]`.
    pub score: f32,
    /// Class index.
    pub class: usize,
    /// Task-specific extras.
    pub payload: P,
}
