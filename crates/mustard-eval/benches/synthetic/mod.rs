//! A synthetic COCO-val-sized box problem: 5000 images of 640x480, 80 categories, about 36k
//! ground-truth boxes (1% crowd) and 100 detections per image (jittered copies of most boxes,
//! the rest random; scores in steps of 0.001, higher for the copies, with many ties).
//!
//! `bench/eval_speed.py` implements the same generator in Python: both draw from the
//! same LCG in the same order, and every coordinate is a multiple of 1/4, so the two give
//! bit-identical problems.

use mustard_eval::coco::{Category, CocoGt, GtAnnotation, Image, ResultRecord};

pub const IMAGES: i64 = 5000;
pub const CATEGORIES: i64 = 80;
pub const DETECTIONS_PER_IMAGE: usize = 100;

/// Knuth's MMIX LCG; draws use the high 31 bits.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }

    fn quarter(&mut self, offset: u64, n: u64) -> f64 {
        (offset + self.below(n)) as f64 / 4.0
    }

    fn jitter(&mut self) -> f64 {
        (self.below(41) as f64 - 20.0) / 4.0
    }
}

fn gt_annotation(
    id: i64,
    image_id: i64,
    category_id: i64,
    bbox: [f64; 4],
    crowd: bool,
) -> GtAnnotation {
    GtAnnotation {
        id,
        image_id,
        category_id,
        bbox: Some(bbox),
        area: bbox[2] * bbox[3],
        iscrowd: crowd,
        segmentation: None,
        keypoints: None,
        num_keypoints: None,
    }
}

fn record(image_id: i64, category_id: i64, bbox: [f64; 4], score: f64) -> ResultRecord {
    ResultRecord {
        image_id,
        category_id,
        score,
        bbox: Some(bbox),
        segmentation: None,
        keypoints: None,
    }
}

/// The ground truth and the results, in generation order.
pub fn problem() -> (CocoGt, Vec<ResultRecord>) {
    let mut rng = Lcg(20261127);
    let images = (1..=IMAGES)
        .map(|id| Image {
            id,
            width: Some(640),
            height: Some(480),
        })
        .collect();
    let categories = (1..=CATEGORIES)
        .map(|id| Category {
            id,
            name: format!("class{id}"),
            keypoints: Vec::new(),
        })
        .collect();
    let mut annotations = Vec::new();
    let mut records = Vec::new();
    for image_id in 1..=IMAGES {
        let mut boxes = Vec::new();
        for _ in 0..rng.below(15) {
            let category = 1 + rng.below(CATEGORIES as u64) as i64;
            let w = rng.quarter(16, 1200);
            let h = rng.quarter(16, 1200);
            let x = rng.quarter(0, 2400);
            let y = rng.quarter(0, 1800);
            let crowd = rng.below(100) == 0;
            let id = annotations.len() as i64 + 1;
            annotations.push(gt_annotation(id, image_id, category, [x, y, w, h], crowd));
            boxes.push((category, [x, y, w, h]));
        }
        let mut count = 0;
        for (category, [x, y, w, h]) in boxes {
            if rng.below(5) == 0 {
                continue;
            }
            let (dx, dy, dw, dh) = (rng.jitter(), rng.jitter(), rng.jitter(), rng.jitter());
            let category = if rng.below(10) == 0 {
                1 + rng.below(CATEGORIES as u64) as i64
            } else {
                category
            };
            let score = (400 + rng.below(600)) as f64 / 1000.0;
            let bbox = [x + dx, y + dy, (w + dw).max(1.0), (h + dh).max(1.0)];
            records.push(record(image_id, category, bbox, score));
            count += 1;
        }
        while count < DETECTIONS_PER_IMAGE {
            let category = 1 + rng.below(CATEGORIES as u64) as i64;
            let w = rng.quarter(16, 800);
            let h = rng.quarter(16, 800);
            let x = rng.quarter(0, 2400);
            let y = rng.quarter(0, 1800);
            let score = rng.below(700) as f64 / 1000.0;
            records.push(record(image_id, category, [x, y, w, h], score));
            count += 1;
        }
    }
    let gt =
        CocoGt::new("synthetic ground truth", images, categories, annotations).expect("unique ids");
    (gt, records)
}
