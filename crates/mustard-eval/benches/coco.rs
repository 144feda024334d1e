//! COCO box evaluation of a COCO-val-sized synthetic problem (see `synthetic/mod.rs`).
//! `examples/coco_speed.rs` times the same problem read from the JSON files that
//! `bench/eval_speed.py` writes, next to pycocotools.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use mustard_eval::coco::{evaluate, CocoDt, IouType, Params};

mod synthetic;

fn coco_bbox(c: &mut Criterion) {
    let (gt, records) = synthetic::problem();
    let dt = CocoDt::from_records(&gt, records, "synthetic results").expect("valid results");
    let params = Params::new(IouType::Bbox);
    let mut group = c.benchmark_group("coco");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(10));
    group.bench_function("bbox 5000 images x 100 detections", |b| {
        b.iter(|| evaluate(&gt, &dt, &params).expect("evaluation"))
    });
    group.finish();
}

criterion_group!(benches, coco_bbox);
criterion_main!(benches);
