//! The RLE codec equal to pycocotools 2.0.11's `maskApi`. `tests/fixtures/rle.json` is written
//! by `xtask/fixtures/eval_golden.py` (`cargo xtask fixtures`): masks with their compressed
//! strings, areas and boxes; polygons and boxes rasterised by `frPyObjects`; merges; mask and
//! box IoU matrices with crowd flags.

use std::path::Path;

use mustard_eval::rle::{self, Rle};
use serde_json::Value;

fn fixture() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/rle.json");
    serde_json::from_slice(&std::fs::read(path).expect("rle.json")).expect("rle.json")
}

fn u32_of(v: &Value) -> u32 {
    v.as_u64().expect("integer") as u32
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_f64().expect("number"))
        .collect()
}

fn size(v: &Value) -> (u32, u32) {
    (u32_of(&v["height"]), u32_of(&v["width"]))
}

/// `{"size": [h, w], "counts": "…"}`
fn compressed(v: &Value) -> Rle {
    Rle::from_compressed(
        v["counts"].as_str().expect("counts"),
        u32_of(&v["size"][0]),
        u32_of(&v["size"][1]),
    )
    .expect("valid RLE")
}

#[test]
fn encode_area_and_bbox_match_pycocotools() {
    let fx = fixture();
    for case in fx["masks"].as_array().unwrap() {
        let (h, w) = size(case);
        let bits: Vec<u8> = case["bits"]
            .as_str()
            .unwrap()
            .bytes()
            .map(|b| b - b'0')
            .collect();
        let r = Rle::encode(&bits, h, w).unwrap();
        let counts: Vec<u32> = case["uncompressed"]
            .as_array()
            .unwrap()
            .iter()
            .map(u32_of)
            .collect();
        assert_eq!(r.counts(), counts, "{h}x{w} counts");
        assert_eq!(
            r.to_compressed(),
            case["counts"].as_str().unwrap(),
            "{h}x{w} string"
        );
        assert_eq!(Rle::from_compressed(&r.to_compressed(), h, w).unwrap(), r);
        assert_eq!(r.area(), case["area"].as_u64().unwrap(), "{h}x{w} area");
        assert_eq!(r.to_bbox().to_vec(), floats(&case["bbox"]), "{h}x{w} bbox");
        assert_eq!(r.decode(), bits, "{h}x{w} decode");
    }
}

#[test]
fn polygons_match_fr_py_objects() {
    let fx = fixture();
    for case in fx["polygons"].as_array().unwrap() {
        let (h, w) = size(case);
        let polygons: Vec<Vec<f64>> = case["polygons"]
            .as_array()
            .unwrap()
            .iter()
            .map(floats)
            .collect();
        for (p, expect) in polygons.iter().zip(case["counts"].as_array().unwrap()) {
            let r = Rle::from_polygon(p, h, w).unwrap();
            assert_eq!(
                r.to_compressed(),
                expect.as_str().unwrap(),
                "polygon {p:?} in {h}x{w}"
            );
        }
        let merged = Rle::from_polygons(&polygons, h, w).unwrap();
        assert_eq!(
            merged.to_compressed(),
            case["merged"].as_str().unwrap(),
            "{polygons:?}"
        );
        if polygons.len() == 1 {
            assert_eq!(merged.area(), case["area"].as_u64().unwrap());
            assert_eq!(merged.to_bbox().to_vec(), floats(&case["bbox"]));
        }
    }
}

#[test]
fn boxes_match_fr_bbox() {
    let fx = fixture();
    for case in fx["boxes"].as_array().unwrap() {
        let (h, w) = size(case);
        let b = floats(&case["bbox"]);
        let r = Rle::from_bbox([b[0], b[1], b[2], b[3]], h, w).unwrap();
        assert_eq!(
            r.to_compressed(),
            case["counts"].as_str().unwrap(),
            "box {b:?}"
        );
    }
}

#[test]
fn merges_match_pycocotools() {
    let fx = fixture();
    for case in fx["merges"].as_array().unwrap() {
        let (h, w) = size(case);
        let rles: Vec<Rle> = case["counts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| Rle::from_compressed(c.as_str().unwrap(), h, w).unwrap())
            .collect();
        let intersect = case["intersect"].as_u64() == Some(1);
        let merged = Rle::merge(&rles, intersect).unwrap();
        assert_eq!(
            merged.to_compressed(),
            case["merged"].as_str().unwrap(),
            "intersect {intersect}"
        );
    }
}

#[test]
fn mask_iou_matches_pycocotools() {
    let fx = fixture();
    for case in fx["ious"].as_array().unwrap() {
        let dt: Vec<Rle> = case["dt"]
            .as_array()
            .unwrap()
            .iter()
            .map(compressed)
            .collect();
        let gt: Vec<Rle> = case["gt"]
            .as_array()
            .unwrap()
            .iter()
            .map(compressed)
            .collect();
        let crowd: Vec<bool> = case["iscrowd"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_u64() == Some(1))
            .collect();
        let expected: Vec<f64> = case["iou"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(floats)
            .collect();
        assert_eq!(rle::iou(&dt, &gt, &crowd).unwrap(), expected);
    }
}

#[test]
fn box_iou_matches_pycocotools() {
    let fx = fixture();
    for case in fx["box_ious"].as_array().unwrap() {
        let boxes = |v: &Value| -> Vec<[f64; 4]> {
            v.as_array()
                .unwrap()
                .iter()
                .map(floats)
                .map(|b| [b[0], b[1], b[2], b[3]])
                .collect()
        };
        let (dt, gt) = (boxes(&case["dt"]), boxes(&case["gt"]));
        let crowd: Vec<bool> = case["iscrowd"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_u64() == Some(1))
            .collect();
        let expected: Vec<f64> = case["iou"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(floats)
            .collect();
        let got: Vec<f64> = dt
            .iter()
            .flat_map(|d| {
                gt.iter()
                    .zip(&crowd)
                    .map(move |(g, &c)| rle::bbox_iou(d, g, c))
            })
            .collect();
        assert_eq!(got, expected);
    }
}

#[test]
fn string_codec_handles_large_counts() {
    let fx = fixture();
    for case in fx["strings"].as_array().unwrap() {
        let (h, w) = size(case);
        let counts: Vec<u32> = case["counts"]
            .as_array()
            .unwrap()
            .iter()
            .map(u32_of)
            .collect();
        let r = Rle::new(h, w, counts.clone()).unwrap();
        let s = case["string"].as_str().unwrap();
        assert_eq!(r.to_compressed(), s);
        assert_eq!(Rle::from_compressed(s, h, w).unwrap().counts(), counts);
    }
}
