//! Convolution speed per layer, the engine of `mustard_core::ops` (its Winograd kernel, and its
//! im2col kernel with Winograd switched off) against candle's convolution in the same run: 3x3
//! stride-1 convolutions at batch 8 (64 channels at 64x64, 128 at 32x32, 256 at 16x16, 2.42
//! GFLOP each), forward, input gradient and weight gradient. Throughput is in
//! "elements" = FLOPs, so criterion reports FLOP/s. A 2048³ matmul through candle is measured in
//! the same run as the machine's practical GEMM speed at that moment.

use std::time::Duration;

use candle_core::{Device, Tensor};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use mustard_core::ops::{conv2d, conv2d_input_grad, conv2d_weight_grad, set_winograd, ConvParams};

fn layers(c: &mut Criterion) {
    let dev = Device::Cpu;
    let params = ConvParams {
        padding: 1,
        ..Default::default()
    };
    for (ch, hw) in [(64, 64), (128, 32), (256, 16)] {
        let n = 8;
        let x = Tensor::randn(0f32, 1.0, (n, ch, hw, hw), &dev).unwrap();
        let w = Tensor::randn(0f32, 0.05, (ch, ch, 3, 3), &dev).unwrap();
        let g = Tensor::randn(0f32, 1.0, (n, ch, hw, hw), &dev).unwrap();
        let flops = 2 * (n * ch * ch * 9 * hw * hw) as u64;
        let mut group = c.benchmark_group(format!("conv3x3 {n}x{ch}x{hw}x{hw}"));
        group
            .sample_size(10)
            .warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(4))
            .throughput(Throughput::Elements(flops));
        group.bench_function(BenchmarkId::new("forward", "engine"), |b| {
            b.iter(|| conv2d(&x, &w, None, params).unwrap())
        });
        group.bench_function(BenchmarkId::new("forward", "engine im2col"), |b| {
            set_winograd(false);
            b.iter(|| conv2d(&x, &w, None, params).unwrap());
            set_winograd(true);
        });
        group.bench_function(BenchmarkId::new("forward", "candle"), |b| {
            b.iter(|| x.conv2d(&w, 1, 1, 1, 1).unwrap())
        });
        group.bench_function(BenchmarkId::new("input grad", "engine"), |b| {
            b.iter(|| conv2d_input_grad(&g, &w, (hw, hw), params).unwrap())
        });
        group.bench_function(BenchmarkId::new("input grad", "engine im2col"), |b| {
            set_winograd(false);
            b.iter(|| conv2d_input_grad(&g, &w, (hw, hw), params).unwrap());
            set_winograd(true);
        });
        // candle's conv2d backward: a transposed convolution of the output gradient.
        group.bench_function(BenchmarkId::new("input grad", "candle"), |b| {
            b.iter(|| g.conv_transpose2d(&w, 1, 0, 1, 1).unwrap())
        });
        group.bench_function(BenchmarkId::new("weight grad", "engine"), |b| {
            b.iter(|| conv2d_weight_grad(&x, &g, (3, 3), params).unwrap())
        });
        group.bench_function(BenchmarkId::new("weight grad", "engine im2col"), |b| {
            set_winograd(false);
            b.iter(|| conv2d_weight_grad(&x, &g, (3, 3), params).unwrap());
            set_winograd(true);
        });
        // candle's conv2d backward: the batch-transposed input convolved by the gradient.
        group.bench_function(BenchmarkId::new("weight grad", "candle"), |b| {
            b.iter(|| {
                x.transpose(0, 1)
                    .unwrap()
                    .conv2d(&g.transpose(0, 1).unwrap(), 1, 1, 1, 1)
                    .unwrap()
                    .transpose(0, 1)
                    .unwrap()
            })
        });
        group.finish();
    }
}

fn reference(c: &mut Criterion) {
    let n = 2048;
    let a = Tensor::randn(0f32, 1.0, (n, n), &Device::Cpu).unwrap();
    let b = Tensor::randn(0f32, 1.0, (n, n), &Device::Cpu).unwrap();
    let mut group = c.benchmark_group("reference");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4))
        .throughput(Throughput::Elements(2 * (n * n * n) as u64));
    group.bench_function("matmul 2048x2048x2048 candle", |bench| {
        bench.iter(|| a.matmul(&b).unwrap())
    });
    group.finish();
}

/// Training BatchNorm forward + backward at 8x64x64x64: the fused op against the same formula
/// composed from candle ops.
fn batchnorm(c: &mut Criterion) {
    let dev = Device::Cpu;
    let x =
        candle_core::Var::from_tensor(&Tensor::randn(0f32, 1.0, (8, 64, 64, 64), &dev).unwrap())
            .unwrap();
    let gamma = candle_core::Var::ones(64, candle_core::DType::F32, &dev).unwrap();
    let beta = candle_core::Var::zeros(64, candle_core::DType::F32, &dev).unwrap();
    let g = Tensor::randn(0f32, 1.0, (8, 64, 64, 64), &dev).unwrap();
    let mut group = c.benchmark_group("batchnorm train 8x64x64x64 forward+backward");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(4));
    group.bench_function("fused", |b| {
        b.iter(|| {
            let (y, _) = mustard_core::ops::batch_norm_train(&x, &gamma, &beta, 1e-5).unwrap();
            (y * &g).unwrap().sum_all().unwrap().backward().unwrap()
        })
    });
    group.bench_function("composed", |b| {
        b.iter(|| {
            let mean = x.mean_keepdim((0, 2, 3)).unwrap();
            let centred = x.broadcast_sub(&mean).unwrap();
            let var = centred.sqr().unwrap().mean_keepdim((0, 2, 3)).unwrap();
            let inv = (&var + 1e-5).unwrap().sqrt().unwrap().recip().unwrap();
            let y = centred
                .broadcast_mul(&inv)
                .unwrap()
                .broadcast_mul(&gamma.reshape((1, 64, 1, 1)).unwrap())
                .unwrap()
                .broadcast_add(&beta.reshape((1, 64, 1, 1)).unwrap())
                .unwrap();
            (y * &g).unwrap().sum_all().unwrap().backward().unwrap()
        })
    });
    group.finish();
}

criterion_group!(benches, reference, layers, batchnorm);
criterion_main!(benches);
