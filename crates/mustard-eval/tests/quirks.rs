//! One small case per pycocotools behaviour the crate reproduces on purpose. The expected
//! `stats` are pycocotools 2.0.11's for the same input (the inputs are spelled out here, so
//! the numbers can be checked by hand too: a lone true positive has precision
//! 1 / (1 + ε) = 0.9999999999999998, and AP is the mean of 1010 such values).

use mustard_eval::coco::{evaluate, CocoDt, CocoGt, IouType, Params};
use serde_json::{json, Value};

fn stats(gt: Value, results: Value, params: Params) -> Vec<f64> {
    let gt = CocoGt::from_json(gt.to_string().as_bytes()).unwrap();
    let dt = CocoDt::from_json(&gt, results.to_string().as_bytes()).unwrap();
    evaluate(&gt, &dt, &params).unwrap().stats()
}

fn one_image(annotations: Value) -> Value {
    json!({
        "images": [{"id": 1, "width": 200, "height": 200}],
        "categories": [{"id": 1, "name": "a"}],
        "annotations": annotations,
    })
}

fn det(bbox: [f64; 4], score: f64) -> Value {
    json!({"image_id": 1, "category_id": 1, "bbox": bbox, "score": score})
}

const PERFECT: [f64; 12] = [
    0.9999999999999998,
    0.9999999999999999,
    0.9999999999999999,
    0.9999999999999998,
    -1.0,
    -1.0,
    1.0,
    1.0,
    1.0,
    1.0,
    -1.0,
    -1.0,
];

#[test]
fn ground_truth_id_zero_counts_as_no_match() {
    let gt = |id: i64| {
        one_image(
            json!([{"id": id, "image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20],
                          "area": 400, "iscrowd": 0}]),
        )
    };
    let results = json!([det([10.0, 10.0, 20.0, 20.0], 0.9)]);
    let bbox = Params::new(IouType::Bbox);
    assert_eq!(stats(gt(1), results.clone(), bbox.clone()), PERFECT);
    assert_eq!(
        stats(gt(0), results, bbox),
        [0.0, 0.0, 0.0, 0.0, -1.0, -1.0, 0.0, 0.0, 0.0, 0.0, -1.0, -1.0]
    );
}

#[test]
fn match_with_id_zero_outside_the_area_range_is_ignored() {
    // Annotation 0 has area 500 (small) but its detection's box is 50x50 = 2500 (medium): for
    // `small` the match holds no id, the detection is outside the range and so ignored, and
    // the second detection alone gives precision 1 up to recall 0.5: APs = 51 / 101.
    let gt = one_image(json!([
        {"id": 0, "image_id": 1, "category_id": 1, "bbox": [0, 0, 50, 50], "area": 500, "iscrowd": 0},
        {"id": 7, "image_id": 1, "category_id": 1, "bbox": [100, 100, 20, 20], "area": 400, "iscrowd": 0},
    ]));
    let results = json!([
        det([0.0, 0.0, 50.0, 50.0], 0.9),
        det([100.0, 100.0, 20.0, 20.0], 0.8)
    ]);
    assert_eq!(
        stats(gt, results, Params::new(IouType::Bbox)),
        [
            0.2524752475247525,
            0.2524752475247525,
            0.2524752475247525,
            0.5049504950495048,
            -1.0,
            -1.0,
            0.0,
            0.5,
            0.5,
            0.5,
            -1.0,
            -1.0
        ]
    );
}

#[test]
fn iou_threshold_one_matches_above_one_minus_1e_10() {
    // IoU 1 - 1e-11 matches at threshold 1.0 because matching starts from min(t, 1 - 1e-10).
    let gt = one_image(json!([{"id": 1, "image_id": 1, "category_id": 1,
                               "bbox": [0, 0, 100000, 100000], "area": 1e10, "iscrowd": 0}]));
    let results = json!([det([0.0, 0.0, 100000.0, 100000.0 - 0.000001], 0.9)]);
    let params = Params {
        iou_thrs: vec![1.0],
        ..Params::new(IouType::Bbox)
    };
    assert_eq!(
        stats(gt, results, params),
        [
            0.9999999999999999,
            -1.0,
            -1.0,
            -1.0,
            -1.0,
            0.9999999999999999,
            1.0,
            1.0,
            1.0,
            -1.0,
            -1.0,
            1.0
        ]
    );
}

#[test]
fn iscrowd_overrides_the_ignore_field() {
    // `"ignore": 1` without `iscrowd` is evaluated like any annotation.
    let gt = one_image(
        json!([{"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20],
                               "area": 400, "iscrowd": 0, "ignore": 1}]),
    );
    let results = json!([det([10.0, 10.0, 20.0, 20.0], 0.9)]);
    assert_eq!(stats(gt, results, Params::new(IouType::Bbox)), PERFECT);
}

#[test]
fn area_ranges_include_both_bounds() {
    // Area exactly 32²: counted as small and as medium.
    let gt = one_image(
        json!([{"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 32, 32],
                               "area": 1024, "iscrowd": 0}]),
    );
    let results = json!([det([10.0, 10.0, 32.0, 32.0], 0.9)]);
    let s = stats(gt, results, Params::new(IouType::Bbox));
    assert_eq!(
        (s[3], s[4], s[5]),
        (0.9999999999999998, 0.9999999999999998, -1.0)
    );
    assert_eq!((s[9], s[10], s[11]), (1.0, 1.0, -1.0));
}

#[test]
fn tied_scores_keep_file_order() {
    let gt = one_image(
        json!([{"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20],
                               "area": 400, "iscrowd": 0}]),
    );
    let fp = det([150.0, 150.0, 20.0, 20.0], 0.5);
    let tp = det([10.0, 10.0, 20.0, 20.0], 0.5);
    let bbox = Params::new(IouType::Bbox);
    assert_eq!(
        stats(gt.clone(), json!([fp, tp]), bbox.clone()),
        [0.5, 0.5, 0.5, 0.5, -1.0, -1.0, 0.0, 1.0, 1.0, 1.0, -1.0, -1.0]
    );
    assert_eq!(stats(gt, json!([tp, fp]), bbox), PERFECT);
}

#[test]
fn empty_results_score_zero() {
    // pycocotools cannot load an empty list; here it is a valid submission with AP 0.
    let gt = one_image(
        json!([{"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 20],
                               "area": 400, "iscrowd": 0}]),
    );
    assert_eq!(
        stats(gt, json!([]), Params::new(IouType::Bbox)),
        [0.0, 0.0, 0.0, 0.0, -1.0, -1.0, 0.0, 0.0, 0.0, 0.0, -1.0, -1.0]
    );
}

#[test]
fn category_without_ground_truth_is_left_out_of_the_means() {
    let mut gt = one_image(json!([{"id": 1, "image_id": 1, "category_id": 1,
                                   "bbox": [10, 10, 20, 20], "area": 400, "iscrowd": 0}]));
    gt["categories"] = json!([{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]);
    let results = json!([
        det([10.0, 10.0, 20.0, 20.0], 0.9),
        {"image_id": 1, "category_id": 2, "bbox": [10, 10, 20, 20], "score": 0.95},
    ]);
    let gt = CocoGt::from_json(gt.to_string().as_bytes()).unwrap();
    let dt = CocoDt::from_json(&gt, results.to_string().as_bytes()).unwrap();
    let eval = evaluate(&gt, &dt, &Params::new(IouType::Bbox)).unwrap();
    assert_eq!(eval.stats(), PERFECT);
    assert_eq!(eval.per_category[1].ap, None);
    assert_eq!(eval.precision_at(0, 0, 1, 0, 2), Some(-1.0));
    assert_eq!(eval.recall_at(0, 1, 0, 2), Some(-1.0));
    assert_eq!(eval.per_category[0].num_gt, 1);
}
