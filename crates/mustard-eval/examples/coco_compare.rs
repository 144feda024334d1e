//! The mustard side of `bench/eval_compare.py`: reads a ground truth and a results file, runs
//! the COCO evaluation of an IoU type and prints one JSON line, as the script's Python children
//! do: `{"load": seconds, "eval": seconds, "stats": [...]}`.
//!
//! ```text
//! cargo build --release -p mustard-eval --example coco_compare
//! target/release/examples/coco_compare GT.json RESULTS.json bbox|segm|keypoints
//! ```

use std::time::Instant;

use mustard_eval::coco::{evaluate, CocoDt, IouType, Params};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [gt, results, iou_type] = &args[..] else {
        return Err("usage: coco_compare GT.json RESULTS.json bbox|segm|keypoints".into());
    };
    let iou_type: IouType = iou_type.parse()?;
    let start = Instant::now();
    let (gt, dt) = CocoDt::load(gt, results)?;
    let loaded = Instant::now();
    let eval = evaluate(&gt, &dt, &Params::new(iou_type))?;
    let summary = eval.summary();
    let done = Instant::now();
    std::hint::black_box(summary);
    let stats: Vec<String> = eval.stats().iter().map(|s| format!("{s:?}")).collect();
    println!(
        "{{\"load\": {}, \"eval\": {}, \"stats\": [{}]}}",
        (loaded - start).as_secs_f64(),
        (done - loaded).as_secs_f64(),
        stats.join(", ")
    );
    Ok(())
}
