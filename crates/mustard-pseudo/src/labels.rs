//! Teacher outputs → pseudo-labels (SPEC §6): soft classes, boxes and people above a score
//! threshold, per-pixel argmax with an ignore mask below a confidence threshold, and depth
//! made relative.

use image::{GrayImage, Luma};
use mustard_core::candle_core::{DType, Tensor, D};
use mustard_data::augment::{warp_depth, warp_labels, Affine};
use mustard_data::imageio::DepthMap;
use mustard_data::{Object, Task, TaskSet};
use mustard_heads::{Detection, Keypoints};
use serde::{Deserialize, Serialize};

use crate::Result;

/// The label value of ignored pixels.
pub const IGNORE: u8 = 255;

/// What a teacher's output must reach to become a label. Every field has the SPEC §6 default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Thresholds {
    /// Minimum score of a kept box.
    pub detection: f64,
    /// Minimum score of a kept person (pose teacher).
    pub pose: f64,
    /// Joints of kept people whose heatmap score is below this are left unlabelled (v = 0);
    /// 0 keeps every joint.
    pub keypoint: f64,
    /// Pixels whose top class probability is below this are ignored (255).
    pub segmentation: f64,
    /// Softmax temperature of the soft class labels (1 = the teacher's probabilities).
    pub temperature: f64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            detection: 0.5,
            pose: 0.5,
            keypoint: 0.0,
            segmentation: 0.5,
            temperature: 1.0,
        }
    }
}

impl Thresholds {
    /// Checks the ranges.
    pub fn validate(&self) -> std::result::Result<(), String> {
        for (name, v) in [
            ("detection", self.detection),
            ("pose", self.pose),
            ("keypoint", self.keypoint),
            ("segmentation", self.segmentation),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return Err(format!("threshold {name} = {v} must lie in [0, 1]"));
            }
        }
        if !(self.temperature.is_finite() && self.temperature > 0.0) {
            return Err(format!("temperature {} must be positive", self.temperature));
        }
        Ok(())
    }
}

/// A kept box in original-image pixels.
#[derive(Debug, Clone, PartialEq)]
pub struct PseudoBox {
    /// `[x1, y1, x2, y2]`.
    pub bbox: [f32; 4],
    /// The teacher's score.
    pub score: f32,
    /// Category index.
    pub class: usize,
    /// `[x, y, v]` per joint (people of the pose teacher).
    pub keypoints: Option<Keypoints>,
}

/// Every pseudo-label of one image, in original-image pixels.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ImageLabels {
    /// Tasks labelled (every task a teacher ran for, even when it kept nothing).
    pub tasks: TaskSet,
    /// Boxes of the detection teacher.
    pub boxes: Vec<PseudoBox>,
    /// People of the pose teacher, with keypoints.
    pub people: Vec<PseudoBox>,
    /// Train ids, 255 where the teacher was unsure.
    pub semantic: Option<GrayImage>,
    /// Relative depth (median 1, 0 unknown).
    pub depth: Option<DepthMap>,
    /// Class probabilities.
    pub classes: Option<Vec<f32>>,
}

impl ImageLabels {
    /// The sample objects: the detection teacher's boxes, with the pose teacher's keypoints
    /// attached to the box of the same class it overlaps most (IoU ≥ 0.5); people no box
    /// matches become objects of their own.
    pub fn objects(&self, person: Option<usize>) -> Vec<Object> {
        let mut objects: Vec<Object> = self
            .boxes
            .iter()
            .map(|b| Object {
                bbox: b.bbox,
                class: b.class,
                crowd: false,
                keypoints: None,
                score: b.score,
            })
            .collect();
        for p in &self.people {
            let class = person.unwrap_or(p.class);
            let best = objects
                .iter()
                .enumerate()
                .filter(|(_, o)| o.class == class && o.keypoints.is_none())
                .map(|(i, o)| (i, iou(&o.bbox, &p.bbox)))
                .filter(|&(_, v)| v >= 0.5)
                .max_by(|a, b| a.1.total_cmp(&b.1));
            match best {
                Some((i, _)) => objects[i].keypoints = p.keypoints.clone(),
                None => objects.push(Object {
                    bbox: p.bbox,
                    class,
                    crowd: false,
                    keypoints: p.keypoints.clone(),
                    score: p.score,
                }),
            }
        }
        objects
    }
}

/// Intersection over union of two `[x1, y1, x2, y2]` boxes.
pub fn iou(a: &[f32; 4], b: &[f32; 4]) -> f32 {
    let iw = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let ih = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = iw * ih;
    let union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter;
    if union > 0.0 {
        inter / union
    } else {
        0.0
    }
}

/// Maps a box from network-input pixels to the original image (clipped to it).
fn box_to_original(bbox: [f32; 4], inverse: &Affine, (w, h): (u32, u32)) -> [f32; 4] {
    let (x1, y1) = inverse.apply(bbox[0] as f64, bbox[1] as f64);
    let (x2, y2) = inverse.apply(bbox[2] as f64, bbox[3] as f64);
    [
        x1.min(x2).clamp(0.0, w as f64) as f32,
        y1.min(y2).clamp(0.0, h as f64) as f32,
        x1.max(x2).clamp(0.0, w as f64) as f32,
        y1.max(y2).clamp(0.0, h as f64) as f32,
    ]
}

/// The detections scoring at least `threshold`, in original-image pixels (`transform` maps the
/// original image to the network input). Boxes clipped to nothing are dropped.
pub fn keep_boxes(
    detections: &[Detection],
    threshold: f64,
    transform: &Affine,
    original: (u32, u32),
) -> Vec<PseudoBox> {
    let inv = transform.inverse().unwrap_or(Affine::IDENTITY);
    detections
        .iter()
        .filter(|d| d.score as f64 >= threshold)
        .map(|d| PseudoBox {
            bbox: box_to_original(d.bbox, &inv, original),
            score: d.score,
            class: d.class,
            keypoints: None,
        })
        .filter(|b| b.bbox[2] > b.bbox[0] && b.bbox[3] > b.bbox[1])
        .collect()
}

/// The people scoring at least `thresholds.pose`, with every joint in original-image pixels:
/// visible (v = 2) when its heatmap score reaches `thresholds.keypoint`, else unlabelled.
pub fn keep_people(
    people: &[Detection<Keypoints>],
    thresholds: &Thresholds,
    class: usize,
    transform: &Affine,
    original: (u32, u32),
) -> Vec<PseudoBox> {
    let inv = transform.inverse().unwrap_or(Affine::IDENTITY);
    people
        .iter()
        .filter(|d| d.score as f64 >= thresholds.pose)
        .map(|d| {
            let keypoints = d
                .payload
                .iter()
                .map(|k| {
                    let (x, y) = inv.apply(k[0] as f64, k[1] as f64);
                    let inside =
                        x >= 0.0 && y >= 0.0 && x < original.0 as f64 && y < original.1 as f64;
                    if inside && k[2] as f64 >= thresholds.keypoint {
                        [x as f32, y as f32, 2.0]
                    } else {
                        [0.0, 0.0, 0.0]
                    }
                })
                .collect();
            PseudoBox {
                bbox: box_to_original(d.bbox, &inv, original),
                score: d.score,
                class,
                keypoints: Some(keypoints),
            }
        })
        .filter(|b| b.bbox[2] > b.bbox[0] && b.bbox[3] > b.bbox[1])
        .collect()
}

/// Per image of a `(B, C, H, W)` logit batch: the argmax class of every pixel, or [`IGNORE`]
/// where the top softmax probability is below `threshold`.
pub fn segmentation_labels(logits: &Tensor, threshold: f64) -> Result<Vec<GrayImage>> {
    let (b, _, h, w) = logits.dims4()?;
    let probs = mustard_core::candle_nn::ops::softmax(&logits.to_dtype(DType::F32)?, 1)?;
    let top = probs.max(1)?.reshape((b, h * w))?.to_vec2::<f32>()?;
    let arg = probs.argmax(1)?.reshape((b, h * w))?.to_vec2::<u32>()?;
    Ok(top
        .iter()
        .zip(&arg)
        .map(|(p, a)| {
            let data = p
                .iter()
                .zip(a)
                .map(|(&p, &a)| {
                    if p as f64 >= threshold {
                        a.min(254) as u8
                    } else {
                        IGNORE
                    }
                })
                .collect();
            GrayImage::from_raw(w as u32, h as u32, data).expect("sizes match")
        })
        .collect())
}

/// Per row of a `(B, C)` logit batch: softmax(logits / temperature).
pub fn soft_labels(logits: &Tensor, temperature: f64) -> Result<Vec<Vec<f32>>> {
    let scaled = (logits.to_dtype(DType::F32)? / temperature)?;
    Ok(mustard_core::candle_nn::ops::softmax(&scaled, D::Minus1)?.to_vec2::<f32>()?)
}

/// A label map at network-input size mapped back onto the original image (nearest neighbour;
/// ignored where the input had no pixel).
pub fn labels_to_original(map: &GrayImage, transform: &Affine, (w, h): (u32, u32)) -> GrayImage {
    let inv = transform.inverse().unwrap_or(Affine::IDENTITY);
    warp_labels(map, inv, w, h, IGNORE)
}

/// A depth prediction at network-input size mapped back onto the original image and made
/// relative: divided by its median, so only its shape is kept (the student learns it with a
/// scale-and-shift-invariant loss).
pub fn relative_depth(map: &DepthMap, transform: &Affine, (w, h): (u32, u32)) -> DepthMap {
    let inv = transform.inverse().unwrap_or(Affine::IDENTITY);
    let mut out = warp_depth(map, inv, w, h);
    let mut valid: Vec<f32> = out
        .as_raw()
        .iter()
        .copied()
        .filter(|v| v.is_finite() && *v > 0.0)
        .collect();
    if valid.is_empty() {
        return DepthMap::new(w, h);
    }
    let mid = valid.len() / 2;
    let (_, median, _) = valid.select_nth_unstable_by(mid, f32::total_cmp);
    let median = *median;
    for p in out.pixels_mut() {
        let v = p.0[0];
        *p = Luma([if v.is_finite() && v > 0.0 {
            v / median
        } else {
            0.0
        }]);
    }
    out
}

/// What was kept, summed over images; printed after a run and saved in the store.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// Images labelled.
    pub images: u64,
    /// Boxes kept (detection teacher).
    pub boxes: u64,
    /// People kept (pose teacher).
    pub people: u64,
    /// Joints labelled visible on kept people.
    pub joints: u64,
    /// Pixels of segmentation labels.
    pub pixels: u64,
    /// Of those, pixels ignored for low confidence.
    pub ignored_pixels: u64,
    /// Images with a depth label.
    pub depth_images: u64,
    /// Images with soft class labels.
    pub class_images: u64,
    /// Sum over images of the top class probability.
    pub class_confidence: f64,
}

impl Stats {
    /// Counts one image's labels.
    pub fn add(&mut self, labels: &ImageLabels) {
        self.images += 1;
        self.boxes += labels.boxes.len() as u64;
        self.people += labels.people.len() as u64;
        self.joints += labels
            .people
            .iter()
            .flat_map(|p| p.keypoints.iter().flatten())
            .filter(|k| k[2] > 0.0)
            .count() as u64;
        if let Some(s) = &labels.semantic {
            self.pixels += s.as_raw().len() as u64;
            self.ignored_pixels += s.as_raw().iter().filter(|&&v| v == IGNORE).count() as u64;
        }
        if labels.depth.is_some() {
            self.depth_images += 1;
        }
        if let Some(c) = &labels.classes {
            self.class_images += 1;
            self.class_confidence += c.iter().copied().fold(0f32, f32::max) as f64;
        }
    }

    /// Adds another total.
    pub fn merge(&mut self, other: &Stats) {
        self.images += other.images;
        self.boxes += other.boxes;
        self.people += other.people;
        self.joints += other.joints;
        self.pixels += other.pixels;
        self.ignored_pixels += other.ignored_pixels;
        self.depth_images += other.depth_images;
        self.class_images += other.class_images;
        self.class_confidence += other.class_confidence;
    }

    /// One line per task, for the tasks in `tasks`.
    pub fn describe(&self, tasks: TaskSet) -> String {
        let per_image = |n: u64| n as f64 / self.images.max(1) as f64;
        let mut lines = vec![format!("{} images", self.images)];
        for task in tasks.iter() {
            lines.push(match task {
                Task::Detection => format!(
                    "detection: {} boxes kept ({:.2} per image)",
                    self.boxes,
                    per_image(self.boxes)
                ),
                Task::Pose => format!(
                    "pose: {} people kept ({:.2} per image), {} joints labelled",
                    self.people,
                    per_image(self.people),
                    self.joints
                ),
                Task::Segmentation => format!(
                    "segmentation: {:.1}% of pixels ignored (below the confidence threshold)",
                    100.0 * self.ignored_pixels as f64 / self.pixels.max(1) as f64
                ),
                Task::Depth => format!("depth: {} relative depth maps", self.depth_images),
                Task::Classification => format!(
                    "classification: {} soft labels, mean top probability {:.3}",
                    self.class_images,
                    self.class_confidence / self.class_images.max(1) as f64
                ),
            });
        }
        lines.join("\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mustard_core::candle_core::Device;

    #[test]
    fn segmentation_ignores_unsure_pixels() {
        // Pixel 0: clearly class 2; pixel 1: a near tie (max prob ≈ 0.5 - ε); pixel 2: class 0.
        let logits = Tensor::from_vec(
            vec![0f32, 0.0, 5.0, 1.0, 1.0, 0.9, 3.0, 0.0, 0.0],
            (3, 3),
            &Device::Cpu,
        )
        .unwrap()
        .t()
        .unwrap()
        .reshape((1, 3, 1, 3))
        .unwrap();
        let maps = segmentation_labels(&logits, 0.5).unwrap();
        assert_eq!(maps[0].as_raw(), &vec![2, IGNORE, 0]);
        let all = segmentation_labels(&logits, 0.0).unwrap();
        assert_eq!(all[0].as_raw(), &vec![2, 0, 0]);
    }

    #[test]
    fn soft_labels_follow_the_temperature() {
        let logits = Tensor::new(&[[0f32, 2f32.ln()]], &Device::Cpu).unwrap();
        let p = soft_labels(&logits, 1.0).unwrap();
        assert!((p[0][0] - 1.0 / 3.0).abs() < 1e-6 && (p[0][1] - 2.0 / 3.0).abs() < 1e-6);
        // T = 2 halves the log-odds: probabilities 1/(1+√2) and √2/(1+√2).
        let q = soft_labels(&logits, 2.0).unwrap();
        let r = 2f32.sqrt();
        assert!((q[0][1] - r / (1.0 + r)).abs() < 1e-6, "{q:?}");
    }

    #[test]
    fn boxes_are_thresholded_and_mapped_back() {
        // The original 200x100 image was letterboxed into 64x64: scale 0.32, 16 px offset.
        let t = Affine::scale_translate(0.32, 0.32, 0.0, 16.0);
        let det = |score, bbox| Detection {
            bbox,
            score,
            class: 1,
            payload: (),
        };
        let dets = [
            det(0.9, [3.2, 19.2, 35.2, 35.2]),
            det(0.49, [0.0, 16.0, 10.0, 20.0]),
            det(0.6, [0.0, 0.0, 64.0, 10.0]), // in the padding: clipped to nothing
        ];
        let kept = keep_boxes(&dets, 0.5, &t, (200, 100));
        assert_eq!(kept.len(), 1);
        let b = kept[0].bbox;
        let want = [10.0, 10.0, 110.0, 60.0];
        for i in 0..4 {
            assert!((b[i] - want[i]).abs() < 1e-4, "{b:?}");
        }
        assert_eq!((kept[0].class, kept[0].score), (1, 0.9));
    }

    #[test]
    fn people_keep_joints_by_score() {
        let t = Affine::IDENTITY;
        let person = Detection {
            bbox: [10.0, 10.0, 30.0, 50.0],
            score: 0.7,
            class: 0,
            payload: vec![[12.0, 14.0, 0.8], [20.0, 30.0, 0.05], [-5.0, 30.0, 0.9]],
        };
        let th = Thresholds {
            keypoint: 0.1,
            ..Thresholds::default()
        };
        let kept = keep_people(std::slice::from_ref(&person), &th, 3, &t, (64, 64));
        assert_eq!(kept.len(), 1);
        assert_eq!(kept[0].class, 3);
        assert_eq!(
            kept[0].keypoints.as_ref().unwrap(),
            &vec![[12.0, 14.0, 2.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]
        );
        let strict = Thresholds {
            pose: 0.8,
            ..Thresholds::default()
        };
        assert!(keep_people(&[person], &strict, 3, &t, (64, 64)).is_empty());
    }

    #[test]
    fn people_attach_to_the_matching_box() {
        let labels = ImageLabels {
            boxes: vec![
                PseudoBox {
                    bbox: [0.0, 0.0, 10.0, 20.0],
                    score: 0.9,
                    class: 3,
                    keypoints: None,
                },
                PseudoBox {
                    bbox: [0.0, 0.0, 10.0, 20.0],
                    score: 0.9,
                    class: 0,
                    keypoints: None,
                },
            ],
            people: vec![
                PseudoBox {
                    bbox: [1.0, 0.0, 10.0, 20.0],
                    score: 0.8,
                    class: 3,
                    keypoints: Some(vec![[5.0, 5.0, 2.0]]),
                },
                PseudoBox {
                    bbox: [40.0, 40.0, 50.0, 60.0],
                    score: 0.8,
                    class: 3,
                    keypoints: Some(vec![[45.0, 45.0, 2.0]]),
                },
            ],
            ..Default::default()
        };
        let objects = labels.objects(Some(3));
        assert_eq!(objects.len(), 3);
        assert_eq!(objects[0].keypoints, Some(vec![[5.0, 5.0, 2.0]]));
        assert_eq!(objects[1].keypoints, None);
        assert_eq!(objects[2].bbox, [40.0, 40.0, 50.0, 60.0]);
        assert_eq!(objects[2].keypoints, Some(vec![[45.0, 45.0, 2.0]]));
    }

    #[test]
    fn depth_is_divided_by_its_median_and_padding_stays_unknown() {
        // 4x2 input whose lower row is padding of a 4x1 original.
        let map = DepthMap::from_raw(4, 2, vec![2.0, 4.0, 8.0, 6.0, 9.0, 9.0, 9.0, 9.0]).unwrap();
        let out = relative_depth(&map, &Affine::IDENTITY, (4, 1));
        // Median of [2, 4, 8, 6] by the upper middle element is 6.
        assert_eq!(out.as_raw(), &vec![2.0 / 6.0, 4.0 / 6.0, 8.0 / 6.0, 1.0]);
    }
}
