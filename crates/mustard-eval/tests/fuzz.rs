//! Truncated, mutated and random input: parsers and evaluation return errors (or results),
//! never panic or hang. Random input comes from a fixed-seed LCG.

use std::path::Path;

use mustard_eval::coco::{evaluate, CocoDt, CocoGt, IouType, Params};
use mustard_eval::rle::{self, Rle};
use mustard_eval::Error;

/// Knuth's MMIX LCG; the high bits are used.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name),
    )
    .expect(name)
}

/// (ground truth, results, IoU type) of fixture cases.
const CASES: [(&str, &str, IouType); 3] = [
    ("bbox_ties.gt.json", "bbox_ties.results.json", IouType::Bbox),
    ("segm.gt.json", "segm.results.json", IouType::Segm),
    (
        "keypoints_custom.gt.json",
        "keypoints_custom_with_bbox.results.json",
        IouType::Keypoints,
    ),
];

fn params(iou_type: IouType) -> Params {
    match iou_type {
        IouType::Keypoints => Params::keypoints_with_sigmas(vec![0.025, 0.03, 0.035, 0.04, 0.05]),
        t => Params::new(t),
    }
}

#[test]
fn every_truncated_document_is_a_json_error() {
    let mut rng = Lcg(1);
    for (gt_name, dt_name, _) in CASES {
        let gt_bytes = fixture(gt_name);
        let dt_bytes = fixture(dt_name);
        let gt = CocoGt::from_json(&gt_bytes).unwrap();
        for _ in 0..200 {
            let cut = rng.below(gt_bytes.len());
            let e = CocoGt::from_json(&gt_bytes[..cut]).unwrap_err();
            assert!(matches!(e, Error::Json { .. }), "{gt_name}[..{cut}]: {e}");
            let cut = rng.below(dt_bytes.len());
            let e = CocoDt::from_json(&gt, &dt_bytes[..cut]).unwrap_err();
            assert!(matches!(e, Error::Json { .. }), "{dt_name}[..{cut}]: {e}");
        }
    }
}

#[test]
fn random_bytes_are_errors() {
    let mut rng = Lcg(2);
    let gt = CocoGt::from_json(&fixture("bbox_ties.gt.json")).unwrap();
    let alphabet = b"{}[]:,\"0123456789.-eE truenalsfNI\\x\n\xff";
    for _ in 0..2000 {
        let len = rng.below(64);
        let bytes: Vec<u8> = (0..len)
            .map(|_| alphabet[rng.below(alphabet.len())])
            .collect();
        assert!(CocoGt::from_json(&bytes).is_err(), "{bytes:?}");
        // A random document may be an empty list, which is valid results.
        if let Ok(dt) = CocoDt::from_json(&gt, &bytes) {
            assert!(dt.detections().is_empty(), "{bytes:?}");
        }
        let s = String::from_utf8_lossy(&bytes);
        let _ = Rle::from_compressed(&s, 3, 4);
    }
}

#[test]
fn mutated_documents_parse_or_fail_and_evaluate_without_panicking() {
    let mut rng = Lcg(3);
    let replacements = b"0123456789-.,[]{}\":eE 9";
    let (mut evaluated, mut rejected) = (0, 0);
    for (gt_name, dt_name, iou_type) in CASES {
        let docs = [fixture(gt_name), fixture(dt_name)];
        for _ in 0..150 {
            let mut mutated = docs.clone();
            for _ in 0..1 + rng.below(3) {
                let doc = &mut mutated[rng.below(2)];
                let at = rng.below(doc.len());
                if rng.below(5) == 0 {
                    doc[at] = replacements[rng.below(replacements.len())];
                } else if let Some(digit) = doc[at..].iter().position(u8::is_ascii_digit) {
                    // Mostly other numbers: ids, sizes, counts, coordinates, scores.
                    doc[at + digit] = b"0123456789-"[rng.below(11)];
                }
            }
            let outcome = CocoGt::from_json(&mutated[0]).and_then(|gt| {
                let dt = CocoDt::from_json(&gt, &mutated[1])?;
                evaluate(&gt, &dt, &params(iou_type))?;
                evaluate(&gt, &dt, &params(IouType::Bbox))
            });
            match outcome {
                Ok(eval) => {
                    assert_eq!(eval.stats().len(), 12);
                    evaluated += 1;
                }
                Err(e) => {
                    assert!(!e.to_string().is_empty());
                    rejected += 1;
                }
            }
        }
    }
    // Both paths were exercised.
    assert!(
        evaluated > 100 && rejected > 100,
        "{evaluated} evaluated, {rejected} rejected"
    );
}

#[test]
fn random_rles_and_polygons_are_valid_masks_or_errors() {
    let mut rng = Lcg(4);
    let mut valid = 0;
    for _ in 0..3000 {
        let (h, w) = (1 + rng.below(12) as u32, 1 + rng.below(12) as u32);
        let len = rng.below(10);
        let s: String = (0..len)
            .map(|_| char::from(b'0' + rng.below(64) as u8))
            .collect();
        let from_string = Rle::from_compressed(&s, h, w);
        let coords: Vec<f64> = (0..rng.below(14))
            .map(|_| match rng.below(10) {
                0 => -1e7,
                1 => 3e8,
                _ => rng.below(300) as f64 / 10.0 - 5.0,
            })
            .collect();
        let from_polygon = Rle::from_polygon(&coords, h, w);
        for r in [from_string, from_polygon].into_iter().flatten() {
            // A mask always covers exactly its pixels, whatever the input.
            let total: u64 = r.counts().iter().map(|&c| u64::from(c)).sum();
            assert_eq!(total, u64::from(h * w), "{s:?} {coords:?}");
            assert_eq!(r.decode().len(), (h * w) as usize);
            let area = r.area();
            assert!(area <= u64::from(h * w));
            let merged = Rle::merge(&[r.clone(), r.clone()], false).unwrap();
            assert_eq!(merged.area(), area);
            let one = std::slice::from_ref(&r);
            let iou = rle::iou(one, one, &[false]).unwrap();
            assert_eq!(iou[0], if area > 0 { 1.0 } else { 0.0 });
            valid += 1;
        }
    }
    assert!(valid > 1000, "{valid} valid masks");
}
