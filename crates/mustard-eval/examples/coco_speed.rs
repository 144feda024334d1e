//! Times COCO box evaluation on the synthetic problem of `bench/eval_speed.py`, on the
//! very JSON files that script gives pycocotools:
//!
//! ```text
//! python bench/eval_speed.py /tmp/mustard-eval-speed
//! cargo run --release -p mustard-eval --example coco_speed -- /tmp/mustard-eval-speed
//! ```
//!
//! It checks that the files hold the problem the criterion bench generates, then prints the
//! load and evaluation times and the summary numbers (compare them with the script's).

use std::path::PathBuf;
use std::time::Instant;

use mustard_eval::coco::{evaluate, CocoDt, CocoGt, IouType, Params};

#[path = "../benches/synthetic/mod.rs"]
mod synthetic;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "/tmp/mustard-eval-speed".to_string()),
    );
    let start = Instant::now();
    let gt = CocoGt::from_path(dir.join("gt.json"))?;
    let dt = CocoDt::from_path(&gt, dir.join("results.json"))?;
    let load = start.elapsed();

    let (expected_gt, expected_records) = synthetic::problem();
    let expected_dt = CocoDt::from_records(&gt, expected_records, "generated")?;
    if gt.annotations() != expected_gt.annotations() || dt.detections() != expected_dt.detections()
    {
        return Err("the JSON files differ from the generated problem".into());
    }
    println!(
        "{} images, {} ground-truth boxes, {} detections (identical to the generated problem)",
        gt.images().len(),
        gt.annotations().len(),
        dt.detections().len()
    );

    let params = Params::new(IouType::Bbox);
    let mut times = Vec::new();
    let mut eval = None;
    for _ in 0..5 {
        let start = Instant::now();
        eval = Some(evaluate(&gt, &dt, &params)?);
        times.push(start.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    let eval = eval.ok_or("no evaluation")?;
    println!("{}", eval.summary());
    println!("stats {:?}", eval.stats());
    println!(
        "load {:.2} s; evaluate+accumulate+summarize: median {:.3} s, min {:.3} s ({} threads)",
        load.as_secs_f64(),
        times[times.len() / 2],
        times[0],
        rayon::current_num_threads()
    );
    Ok(())
}
