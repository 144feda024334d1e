//! Bad input is an error that names the file, the record and the field.

use mustard_eval::coco::{evaluate, CocoDt, CocoGt, IouType, Params, ResultRecord};
use mustard_eval::Error;
use serde_json::{json, Value};

fn gt_json() -> Value {
    json!({
        "images": [{"id": 1, "width": 20, "height": 10}, {"id": 2, "width": 20, "height": 10}],
        "categories": [{"id": 1, "name": "a"}, {"id": 3, "name": "b"}],
        "annotations": [
            {"id": 5, "image_id": 1, "category_id": 1, "bbox": [1, 1, 4, 4], "area": 16, "iscrowd": 0,
             "segmentation": [[1, 1, 5, 1, 5, 5, 1, 5]]},
            {"id": 6, "image_id": 2, "category_id": 3, "bbox": [2, 2, 4, 4], "area": 16, "iscrowd": 1,
             "segmentation": {"size": [10, 20], "counts": [22, 4, 174]}},
        ],
    })
}

fn gt() -> CocoGt {
    CocoGt::from_json(gt_json().to_string().as_bytes()).unwrap()
}

fn gt_error(doc: &str) -> String {
    CocoGt::from_json(doc.as_bytes()).unwrap_err().to_string()
}

fn results_error(doc: &str) -> String {
    CocoDt::from_json(&gt(), doc.as_bytes())
        .unwrap_err()
        .to_string()
}

#[test]
fn unknown_image_and_category_name_the_result() {
    assert_eq!(
        results_error(
            r#"[{"image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 0.5},
                {"image_id": 9, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 0.5}]"#
        ),
        "results: result 1: image_id 9 is not an image of the ground truth"
    );
    assert_eq!(
        results_error(r#"[{"image_id": 2, "category_id": 2, "bbox": [0, 0, 1, 1], "score": 0.5}]"#),
        "results: result 0: category_id 2 is not a category of the ground truth"
    );
}

#[test]
fn non_finite_scores_are_rejected() {
    // Python's json.dump writes NaN as a bare word, which is not JSON.
    let e = CocoDt::from_json(
        &gt(),
        br#"[{"image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 0.5},
             {"image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1], "score": NaN}]"#,
    )
    .unwrap_err();
    assert!(
        matches!(&e, Error::Json { location, line: 2, .. } if location == "[1].score"),
        "{e:?}"
    );
    assert_eq!(
        e.to_string(),
        "results: invalid JSON at [1].score (line 2, column 79): `NaN` is not a JSON number (scores and coordinates must be finite)"
    );
    // Results built in memory can hold NaN.
    let record = ResultRecord {
        image_id: 1,
        category_id: 1,
        score: f64::NAN,
        bbox: Some([0.0, 0.0, 1.0, 1.0]),
        segmentation: None,
        keypoints: None,
    };
    assert_eq!(
        CocoDt::from_records(&gt(), vec![record], "model output")
            .unwrap_err()
            .to_string(),
        "model output: result 0: score NaN is not a finite number"
    );
}

#[test]
fn malformed_json_names_the_record() {
    assert_eq!(
        results_error(r#"[{"image_id": 1, "category_id": 1, "bbox": [0, 0, 1], "score": 0.5}]"#),
        "results: invalid JSON at [0].bbox (line 1, column 52): invalid length 3, expected a list of 4 numbers [x, y, w, h] or an empty list"
    );
    assert_eq!(
        results_error(r#"[{"image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1]}]"#),
        "results: invalid JSON at [0] (line 1, column 56): missing field `score`"
    );
    assert_eq!(
        results_error(
            r#"[{"image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 0.5}, {"image_id": "#
        ),
        "results: invalid JSON at [1].image_id (line 1, column 85): EOF while parsing a value"
    );
    assert_eq!(
        results_error(r#"{"image_id": 1}"#),
        "results: invalid JSON at the top level (line 1, column 0): invalid type: map, expected a sequence"
    );
    assert_eq!(
        gt_error(
            r#"{"images": [{"id": 1}], "categories": [], "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1]}]}"#
        ),
        "ground truth: invalid JSON at annotations[0] (line 1, column 122): missing field `area`"
    );
    assert_eq!(
        gt_error(r#"{"images": [{"id": "a"}], "categories": []}"#),
        "ground truth: invalid JSON at images[0].id (line 1, column 22): invalid type: string \"a\", expected i64"
    );
    assert_eq!(
        gt_error(r#"{"images": [], "categories": [], "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "area": 1, "segmentation": {"size": [-1, 2], "counts": "0"}}]}"#),
        "ground truth: invalid JSON at annotations[0].segmentation.size[0] (line 1, column 131): invalid value: integer `-1`, expected u32"
    );
}

#[test]
fn results_missing_what_their_kind_needs() {
    assert_eq!(
        results_error(
            r#"[{"image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 0.5},
                {"image_id": 1, "category_id": 1, "keypoints": [1, 2, 1], "score": 0.5}]"#
        ),
        "results: result 1: `bbox` is missing (result 0 has one)"
    );
    assert_eq!(
        results_error(r#"[{"image_id": 1, "category_id": 1, "score": 0.5}]"#),
        "results: result 0 has none of `bbox`, `segmentation` and `keypoints`"
    );
    assert_eq!(
        results_error(r#"[{"image_id": 1, "category_id": 1, "keypoints": [1, 2], "score": 0.5}]"#),
        "results: result 0: `keypoints` has 2 values, expected a nonzero multiple of 3"
    );
    assert_eq!(
        results_error(r#"[{"image_id": 1, "category_id": 1, "segmentation": {"size": [10, 20], "counts": "0!"}, "score": 0.5}]"#),
        "results: result 0: `segmentation` invalid mask: compressed counts hold '!' at byte 1, outside '0'..='o'"
    );
}

#[test]
fn repeated_ids_are_rejected() {
    let mut doc = gt_json();
    doc["annotations"][1]["id"] = json!(5);
    assert_eq!(
        gt_error(&doc.to_string()),
        "ground truth: annotation id 5 is used twice (annotations 0 and 1)"
    );
    let mut doc = gt_json();
    doc["images"][1]["id"] = json!(1);
    assert_eq!(
        gt_error(&doc.to_string()),
        "ground truth: image id 1 is used twice (images 0 and 1)"
    );
}

#[test]
fn evaluation_checks_what_the_iou_type_needs() {
    let gt = gt();
    let dt = CocoDt::from_json(
        &gt,
        br#"[{"image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 0.5}]"#,
    )
    .unwrap();
    // The ground truth has no keypoints.
    assert_eq!(
        evaluate(&gt, &dt, &Params::new(IouType::Keypoints))
            .unwrap_err()
            .to_string(),
        "ground truth: annotation 0 (id 5): `num_keypoints` is missing"
    );
    // Box results without masks are evaluated as masks of their boxes.
    assert!(evaluate(&gt, &dt, &Params::new(IouType::Segm)).is_ok());

    let mut doc = gt_json();
    doc["annotations"][1]["segmentation"]["counts"] = json!([22, 4, 173]);
    let bad = CocoGt::from_json(doc.to_string().as_bytes()).unwrap();
    let dt = CocoDt::from_json(
        &bad,
        br#"[{"image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 0.5}]"#,
    )
    .unwrap();
    assert_eq!(
        evaluate(&bad, &dt, &Params::new(IouType::Segm))
            .unwrap_err()
            .to_string(),
        "ground truth: annotation 1 (id 6): `segmentation` invalid mask: counts add up to 199, expected height * width = 10 * 20 = 200"
    );
    let mut params = Params::new(IouType::Bbox);
    params.iou_thrs.clear();
    assert_eq!(
        evaluate(&gt, &dt, &params).unwrap_err().to_string(),
        "invalid evaluation parameters: iou_thrs is empty"
    );
}

#[test]
fn files_are_named_in_errors() {
    let missing = std::env::temp_dir().join("mustard-eval-no-such-file.json");
    let e = CocoGt::from_path(&missing).unwrap_err();
    // The message names the file; the OS error is the next link of the chain, not repeated.
    assert_eq!(e.to_string(), missing.display().to_string());
    assert_eq!(
        std::error::Error::source(&e).map(ToString::to_string),
        Some("No such file or directory (os error 2)".to_string())
    );
    let path =
        std::env::temp_dir().join(format!("mustard-eval-errors-{}.json", std::process::id()));
    std::fs::write(
        &path,
        r#"[{"image_id": 7, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 1}]"#,
    )
    .unwrap();
    let e = CocoDt::from_path(&gt(), &path).unwrap_err();
    let expected = format!(
        "{}: result 0: image_id 7 is not an image of the ground truth",
        path.display()
    );
    assert_eq!(e.to_string(), expected);
    // Both files at once: the same errors, the ground truth's first.
    let gt_path = std::env::temp_dir().join(format!(
        "mustard-eval-errors-gt-{}.json",
        std::process::id()
    ));
    std::fs::write(&gt_path, gt_json().to_string()).unwrap();
    let e = CocoDt::load(&gt_path, &path).unwrap_err();
    assert_eq!(e.to_string(), expected);
    let e = CocoDt::load(&missing, &path).unwrap_err();
    assert_eq!(e.to_string(), missing.display().to_string());
    let e = CocoDt::load(&gt_path, &missing).unwrap_err();
    assert_eq!(e.to_string(), missing.display().to_string());
    std::fs::remove_file(&path).unwrap();
    std::fs::remove_file(&gt_path).unwrap();
}
