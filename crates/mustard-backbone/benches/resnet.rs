//! ResNet speed: R18 and R50 forward at 1x3x512x512 (eval), R18 forward + backward at
//! 8x3x256x256 (train). GFLOP/s = analytic convolution FLOPs (`ResNet::flops`) / median time.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use mustard_backbone::{ResNet, ResNetConfig};
use mustard_core::candle_core::{DType, Device, Tensor};
use mustard_core::candle_nn::{VarBuilder, VarMap};

fn build(config: &ResNetConfig) -> (VarMap, ResNet) {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let net = ResNet::new(config, vb).expect("resnet");
    (varmap, net)
}

fn forward(c: &mut Criterion) {
    let mut group = c.benchmark_group("resnet");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(2))
        .measurement_time(Duration::from_secs(15));
    for (name, config) in [("r18", ResNetConfig::r18()), ("r50", ResNetConfig::r50())] {
        let (_, net) = build(&config);
        let x = Tensor::randn(0f32, 1.0, (1, 3, 512, 512), &Device::Cpu).unwrap();
        // Throughput in "elements" = FLOPs, so criterion reports FLOP/s.
        group.throughput(Throughput::Elements(net.flops(512, 512)));
        group.bench_function(format!("{name} forward 1x3x512x512 eval"), |b| {
            b.iter(|| net.forward_t(&x, false).unwrap())
        });
    }
    let (_, net) = build(&ResNetConfig::r18());
    let x = Tensor::randn(0f32, 1.0, (8, 3, 256, 256), &Device::Cpu).unwrap();
    // Backward ≈ 2x forward FLOPs (input and weight gradients).
    group.throughput(Throughput::Elements(3 * 8 * net.flops(256, 256)));
    group.bench_function("r18 forward+backward 8x3x256x256 train", |b| {
        b.iter(|| {
            let maps = net.forward_t(&x, true).unwrap();
            maps.c5.sum_all().unwrap().backward().unwrap()
        })
    });
    group.finish();
}

criterion_group!(benches, forward);
criterion_main!(benches);
