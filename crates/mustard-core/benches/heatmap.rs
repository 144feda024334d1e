//! Heatmap decoding and target drawing at CenterNet's sizes: NMS + top-100 over an
//! 80 x 128 x 128 map (COCO classes at 512 px input), and Gaussians for 100 objects.

use candle_core::{Device, Tensor};
use criterion::{criterion_group, criterion_main, Criterion};
use mustard_core::heatmap::{draw_gaussian, nms, object_radius, topk, topk_peaks};
use mustard_core::ops::Kernels;

/// Deterministic pseudo-random values in [0, 1).
fn noise(n: usize) -> Vec<f32> {
    let mut s = 0x9E37_79B9_7F4A_7C15u64;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 24) as f32
        })
        .collect()
}

fn decode(c: &mut Criterion) {
    let heat = Tensor::from_vec(noise(80 * 128 * 128), (1, 80, 128, 128), &Device::Cpu).unwrap();
    c.bench_function("nms3x3 + top100, 1x80x128x128", |b| {
        b.iter(|| topk(&nms(&heat, 3).unwrap(), 100).unwrap())
    });
    c.bench_function("fused nms3x3 + top100 (topk_peaks), 1x80x128x128", |b| {
        b.iter(|| topk_peaks(&heat, 3, 100).unwrap())
    });
    // The device path (what a GPU runs: suppression and chunk maxima as tensor ops, then only
    // the candidate chunks copied), here on the CPU.
    Kernels::Portable.apply();
    c.bench_function("topk_peaks, device path on the CPU, 1x80x128x128", |b| {
        b.iter(|| topk_peaks(&heat, 3, 100).unwrap())
    });
    Kernels::Fast.apply();
}

fn targets(c: &mut Criterion) {
    let r = noise(400);
    let objects: Vec<(usize, i64, i64, usize)> = (0..100)
        .map(|i| {
            let (w, h) = (
                4.0 + 60.0 * r[4 * i] as f64,
                4.0 + 60.0 * r[4 * i + 1] as f64,
            );
            let class = (r[4 * i + 2] * 80.0) as usize;
            let (cx, cy) = (
                (r[4 * i + 3] * 127.0) as i64,
                (r[(4 * i + 7) % 400] * 127.0) as i64,
            );
            (class, cx, cy, object_radius(h, w))
        })
        .collect();
    let mut map = vec![0f32; 80 * 128 * 128];
    c.bench_function("draw 100 gaussians into 80x128x128", |b| {
        b.iter(|| {
            map.iter_mut().for_each(|v| *v = 0.0);
            for &(class, cx, cy, radius) in &objects {
                let plane = &mut map[class * 128 * 128..(class + 1) * 128 * 128];
                draw_gaussian(plane, (128, 128), (cx, cy), radius).unwrap();
            }
        })
    });
}

criterion_group!(benches, decode, targets);
criterion_main!(benches);
