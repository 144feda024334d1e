//! Opening a COCO-format index the size of COCO train2017 (120,000 640x480 JPEGs on disk), as
//! training does (`Dataset::open` + `require_clean`, which reads every file's header), and
//! `mustard data check` (headers), on 2 threads; a full decode of 1,000 of the same images for
//! comparison. The index is generated once under `target/bench-data/`.
//!
//! `MUSTARD_OPEN_IMAGES=N` changes the size of the index.

use std::path::{Path, PathBuf};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use mustard_data::coco::{self, CocoFile, ImageRecord};
use mustard_data::{CheckDepth, Dataset};

fn images() -> usize {
    std::env::var("MUSTARD_OPEN_IMAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(120_000)
}

/// `images/<i>.jpg` (the same 640x480 JPEG) and `instances.json`.
fn index(n: usize) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../target/bench-data")
        .join(format!("open-{n}"));
    let json = dir.join("instances.json");
    if json.is_file() {
        return json;
    }
    std::fs::create_dir_all(dir.join("images")).unwrap();
    // Smooth gradients: a small file (only the header is read when opening).
    let picture = image::RgbImage::from_fn(640, 480, |x, y| {
        image::Rgb([(x / 3) as u8, (y / 2) as u8, ((x + y) / 5) as u8])
    });
    let sample = dir.join("sample.jpg");
    mustard_data::imageio::write_rgb(&sample, &picture).unwrap();
    let bytes = std::fs::read(&sample).unwrap();
    let mut file = CocoFile::default();
    for i in 0..n {
        let name = format!("images/{i:06}.jpg");
        std::fs::write(dir.join(&name), &bytes).unwrap();
        file.images.push(ImageRecord {
            id: i as u64 + 1,
            file_name: name,
            width: 640,
            height: 480,
            seg_file: None,
            depth_file: None,
            depth_scale: None,
            label: None,
            tasks: None,
        });
    }
    coco::write(&file, &json).unwrap();
    json
}

fn open(c: &mut Criterion) {
    let n = images();
    let json = index(n);
    let mut group = c.benchmark_group("open");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(20));
    group.throughput(Throughput::Elements(n as u64));
    group.bench_function(format!("open_for_training_{n}"), |b| {
        b.iter(|| {
            let ds = Dataset::open(&json, None).unwrap();
            let ds = ds.require_clean(false, |_| {}).unwrap();
            assert_eq!(ds.len(), n);
        })
    });
    group.bench_function(format!("check_headers_{n}"), |b| {
        let ds = Dataset::open(&json, None).unwrap();
        b.iter(|| assert!(ds.check_with(CheckDepth::Headers, &|| {}).is_clean()))
    });
    group.finish();
    let small = index(1000);
    let mut group = c.benchmark_group("open");
    group.sample_size(10);
    group.throughput(Throughput::Elements(1000));
    group.bench_function("check_decode_1000", |b| {
        let ds = Dataset::open(&small, None).unwrap();
        b.iter(|| assert!(ds.check_with(CheckDepth::Decode, &|| {}).is_clean()))
    });
    group.finish();
}

criterion_group!(benches, open);
criterion_main!(benches);
