//! Every custom op run two ways and compared, forward and backward: the CPU kernel against the
//! portable path (the composed candle ops that CUDA and Metal run, selected on the CPU with
//! `Kernels::Portable`), or the CPU kernel against another device.

// Each test binary that includes this module uses one of the two comparisons.
#![allow(dead_code)]

use candle_core::{DType, Device, Tensor, Var};
use mustard_core::loss;
use mustard_core::ops::{self, ConvParams, Kernels, MaxPool2dConfig};

/// What the CPU kernel is compared with.
pub enum Other {
    /// The portable path on the CPU.
    Portable,
    /// The same op on this device (whatever path it takes there).
    Device(Device),
}

/// A deterministic CPU tensor of `shape` with values in (−1, 1), no two equal.
pub fn input(shape: &[usize], seed: u64, dtype: DType) -> Tensor {
    let n: usize = shape.iter().product();
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let values: Vec<f64> = (0..n)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
        })
        .collect();
    Tensor::from_vec(values, shape, &Device::Cpu)
        .unwrap()
        .to_dtype(dtype)
        .unwrap()
}

/// Values on a grid of 0.5 with ReLU-like zeros: many equal maxima in a pooling window.
pub fn ties(shape: &[usize], seed: u64, dtype: DType) -> Tensor {
    input(shape, seed, dtype)
        .affine(2.0, 0.0)
        .unwrap()
        .round()
        .unwrap()
        .affine(0.5, 0.0)
        .unwrap()
        .relu()
        .unwrap()
}

/// f32 heatmap values with ties, negatives, both zeros and −∞ (what a top-K must rank).
pub fn awkward_map(shape: (usize, usize, usize, usize), seed: u64) -> Tensor {
    let mut s = seed;
    let n = shape.0 * shape.1 * shape.2 * shape.3;
    let v: Vec<f32> = (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            match (s >> 33) % 40 {
                0 => -0.0,
                1 => 0.0,
                2 => f32::NEG_INFINITY,
                r => (r as f32 - 12.0) / 8.0,
            }
        })
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

/// Runs `op` on `inputs` (as variables on the run's device) and returns the output and the
/// gradients of `sum(output · probe)` with respect to every input, as f64 on the CPU.
fn run(
    inputs: &[&Tensor],
    device: &Device,
    op: &dyn Fn(&[Tensor]) -> Tensor,
) -> (Vec<f64>, Vec<Vec<f64>>) {
    let vars: Vec<Var> = inputs
        .iter()
        .map(|t| Var::from_tensor(&t.to_device(device).unwrap()).unwrap())
        .collect();
    let tensors: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let y = op(&tensors);
    let probe = input(y.dims(), 99, y.dtype()).to_device(device).unwrap();
    let grads = (&y * &probe)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let flat = |t: &Tensor| {
        t.flatten_all()
            .unwrap()
            .to_dtype(DType::F64)
            .unwrap()
            .to_vec1::<f64>()
            .unwrap()
    };
    let g = vars
        .iter()
        .map(|v| flat(grads.get(v).expect("a gradient for every input")))
        .collect();
    (flat(&y), g)
}

/// The op's output and input gradients on the CPU kernel and on `other`, each within
/// `tolerance` of the CPU's largest magnitude.
pub fn check(
    name: &str,
    inputs: &[&Tensor],
    op: impl Fn(&[Tensor]) -> Tensor,
    other: &Other,
    tolerance: f64,
) {
    Kernels::Fast.apply();
    let cpu = run(inputs, &Device::Cpu, &op);
    let theirs = match other {
        Other::Portable => {
            Kernels::Portable.apply();
            let r = run(inputs, &Device::Cpu, &op);
            Kernels::Fast.apply();
            r
        }
        Other::Device(device) => run(inputs, device, &op),
    };
    let close = |what: &str, a: &[f64], b: &[f64]| {
        assert_eq!(a.len(), b.len(), "{name} {what}");
        let scale = a.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-300);
        let err = a.iter().zip(b).fold(0f64, |m, (x, y)| m.max((x - y).abs())) / scale;
        assert!(err <= tolerance, "{name} {what}: {err:e} relative");
        err
    };
    let mut worst = close("output", &cpu.0, &theirs.0);
    for (k, (a, b)) in cpu.1.iter().zip(&theirs.1).enumerate() {
        worst = worst.max(close(&format!("gradient of input {k}"), a, b));
    }
    eprintln!("{name}: largest difference {worst:.1e} relative (bound {tolerance:.0e})");
}

/// Every custom op of `mustard_core::ops` and the two dense losses in `dtype`, each bound
/// `tolerance` times the op's own factor (f64 bounds: 1e-14 for exact ops, up to 1e-11 for
/// reductions).
pub fn every_custom_op(other: &Other, dtype: DType, tolerance: f64) {
    let x = input(&[2, 3, 9, 10], 1, dtype);
    check(
        "relu",
        &[&x],
        |t| ops::relu(&t[0]).unwrap(),
        other,
        tolerance * 1e-14,
    );
    for (kernel, stride, padding) in [(3, 2, 1), (2, 2, 0), (3, 1, 1)] {
        let config = MaxPool2dConfig {
            kernel,
            stride,
            padding,
        };
        check(
            &format!("max_pool2d k{kernel} s{stride} p{padding}"),
            &[&x],
            |t| ops::max_pool2d(&t[0], config).unwrap(),
            other,
            tolerance * 1e-14,
        );
    }
    for (h, w) in [(36, 40), (13, 7)] {
        check(
            &format!("upsample_bilinear2d to {h}x{w}"),
            &[&x],
            |t| ops::upsample_bilinear2d(&t[0], h, w).unwrap(),
            other,
            tolerance * 1e-12,
        );
    }
    let (gamma, beta) = (input(&[3], 2, dtype), input(&[3], 3, dtype));
    check(
        "batch_norm_train",
        &[&x, &gamma, &beta],
        |t| ops::batch_norm_train(&t[0], &t[1], &t[2], 1e-5).unwrap().0,
        other,
        tolerance * 1e-11,
    );
    let bias = input(&[4], 5, dtype);
    for (k, stride, padding) in [(3, 1, 1), (3, 2, 1), (1, 1, 0), (7, 2, 3)] {
        let w = input(&[4, 3, k, k], 4, dtype);
        let params = ConvParams {
            padding,
            stride,
            ..ConvParams::default()
        };
        check(
            &format!("conv2d k{k} s{stride} p{padding}"),
            &[&x, &w, &bias],
            |t| ops::conv2d(&t[0], &t[1], Some(&t[2]), params).unwrap(),
            other,
            tolerance * 1e-12,
        );
        check(
            &format!("conv2d_relu k{k} s{stride} p{padding}"),
            &[&x, &w, &bias],
            |t| ops::conv2d_relu(&t[0], &t[1], Some(&t[2]), params).unwrap(),
            other,
            tolerance * 1e-12,
        );
    }
    let wt = input(&[3, 4, 4, 4], 6, dtype);
    let params = ConvParams {
        padding: 1,
        stride: 2,
        ..ConvParams::default()
    };
    check(
        "conv_transpose2d k4 s2 p1",
        &[&x, &wt, &bias],
        |t| ops::conv_transpose2d(&t[0], &t[1], Some(&t[2]), params, 0).unwrap(),
        other,
        tolerance * 1e-12,
    );
    every_loss(other, dtype, tolerance);
}

/// The two dense losses, whose fast path is one kernel each (`ops::loss`): the focal loss on
/// logits reaching both probability clamps, targets at 1, inside (0, 1) and at 0, with and
/// without a presence mask; the pixel cross-entropy with ignored pixels, and on `(N, C)` logits
/// with `u32::MAX` ignored. The targets are constants (no gradient).
fn every_loss(other: &Other, dtype: DType, tolerance: f64) {
    let logits = (input(&[2, 3, 9, 10], 7, dtype) * 12.0).unwrap();
    let heat: Vec<f64> = input(&[2, 3, 9, 10], 8, DType::F64)
        .flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap()
        .into_iter()
        .map(|v| if v > 0.8 { 1.0 } else { v.max(0.0) })
        .collect();
    let heat = Tensor::from_vec(heat, (2, 3, 9, 10), &Device::Cpu)
        .unwrap()
        .to_dtype(dtype)
        .unwrap();
    let presence = Tensor::new(&[1f64, 0.0], &Device::Cpu)
        .unwrap()
        .to_dtype(dtype)
        .unwrap();
    for with_presence in [false, true] {
        check(
            &format!("focal_loss, presence {with_presence}"),
            &[&logits],
            |t| {
                let on = |c: &Tensor| c.to_device(t[0].device()).unwrap();
                let p = with_presence.then(|| on(&presence));
                loss::focal_loss(&t[0], &on(&heat), p.as_ref()).unwrap()
            },
            other,
            tolerance * 1e-12,
        );
    }
    // Classes from the inputs' signs and magnitudes; every fifth pixel ignored.
    let labels = |n: usize, ignore: u32, classes: u32| {
        let v: Vec<u32> = (0..n as u32)
            .map(|i| {
                if i % 5 == 4 {
                    ignore
                } else {
                    (i * 7 + i / 3) % classes
                }
            })
            .collect();
        v
    };
    let pixels = (input(&[2, 4, 9, 10], 9, dtype) * 3.0).unwrap();
    let pixel_labels = Tensor::from_vec(labels(180, 255, 4), (2, 9, 10), &Device::Cpu).unwrap();
    let rows = (input(&[6, 5], 10, dtype) * 3.0).unwrap();
    let row_labels = Tensor::from_vec(labels(6, u32::MAX, 5), 6, &Device::Cpu).unwrap();
    for (name, x, y, ignore) in [
        ("cross_entropy (N, C, H, W)", &pixels, &pixel_labels, 255),
        ("cross_entropy (N, C)", &rows, &row_labels, u32::MAX),
    ] {
        check(
            name,
            &[x],
            |t| loss::cross_entropy(&t[0], &y.to_device(t[0].device()).unwrap(), ignore).unwrap(),
            other,
            tolerance * 1e-12,
        );
    }
}
