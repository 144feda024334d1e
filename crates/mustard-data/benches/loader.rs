//! Loader throughput: 512x512 JPEGs → decode → CenterNet augmentation → target encoding
//! (image to normalised CHW floats, Gaussian heatmaps, box sizes and offsets at stride 4),
//! on 2 threads.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use mustard_core::heatmap::{draw_gaussian, object_radius};
use mustard_data::coco;
use mustard_data::synth::{self, SynthConfig};
use mustard_data::{BatchEncoder, Dataset, Loader, LoaderConfig, Sample};

const IMAGES: usize = 64;

/// Detection targets as the CenterNet heads will want them.
struct Targets {
    classes: usize,
}

impl BatchEncoder for Targets {
    type Item = (Vec<f32>, Vec<f32>, Vec<[f32; 4]>);
    type Batch = Vec<Self::Item>;

    fn encode(&self, s: Sample) -> mustard_data::Result<Self::Item> {
        let (w, h) = s.size();
        let mut chw = vec![0f32; 3 * (w * h) as usize];
        for (i, p) in s.image.pixels().enumerate() {
            for c in 0..3 {
                chw[c * (w * h) as usize + i] = (p.0[c] as f32 / 255.0 - 0.45) / 0.27;
            }
        }
        let (ow, oh) = (w as usize / 4, h as usize / 4);
        let mut hm = vec![0f32; self.classes * ow * oh];
        let mut regs = Vec::new();
        for o in &s.objects {
            let [x1, y1, x2, y2] = o.bbox.map(|v| v / 4.0);
            let (bw, bh) = ((x2 - x1) as f64, (y2 - y1) as f64);
            let (cx, cy) = ((x1 + x2) / 2.0, (y1 + y2) / 2.0);
            let plane = &mut hm[o.class * ow * oh..(o.class + 1) * ow * oh];
            draw_gaussian(
                plane,
                (oh, ow),
                (cx as i64, cy as i64),
                object_radius(bh, bw),
            )?;
            regs.push([bw as f32, bh as f32, cx.fract(), cy.fract()]);
        }
        Ok((chw, hm, regs))
    }

    fn collate(&self, items: Vec<Self::Item>) -> mustard_data::Result<Self::Batch> {
        Ok(items)
    }
}

fn jpeg_dataset(dir: &Path) -> std::path::PathBuf {
    synth::write(
        dir,
        &SynthConfig {
            size: 512,
            seed: 3,
            max_objects: 6,
        },
        IMAGES,
        None,
    )
    .unwrap();
    let json = dir.join("instances.json");
    let mut file = coco::read(&json).unwrap();
    for r in &mut file.images {
        let png = dir.join(&r.file_name);
        let jpg = png.with_extension("jpg");
        image::open(&png).unwrap().to_rgb8().save(&jpg).unwrap();
        r.file_name = r.file_name.replace(".png", ".jpg");
    }
    let out = dir.join("jpeg.json");
    coco::write(&file, &out).unwrap();
    out
}

fn throughput(c: &mut Criterion) {
    let dir = std::env::temp_dir().join(format!("mustard-loader-bench-{}", std::process::id()));
    let json = jpeg_dataset(&dir);
    let dataset = Arc::new(Dataset::open(&json, None).unwrap());
    let mut group = c.benchmark_group("loader");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(20));
    group.throughput(Throughput::Elements(IMAGES as u64));
    let config = LoaderConfig {
        threads: Some(2),
        ..LoaderConfig::train(16, 512, 0)
    };
    let loader = Loader::new(dataset, Arc::new(Targets { classes: 4 }), config).unwrap();
    let mut epoch = 0;
    group.bench_function(
        "512x512 jpeg, augment + detection targets, 2 threads",
        |b| {
            b.iter(|| {
                epoch += 1;
                loader.epoch(epoch).map(|b| b.unwrap().len()).sum::<usize>()
            })
        },
    );
    group.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, throughput);
criterion_main!(benches);
