//! Every custom op on a CUDA device against its CPU kernel, forward and backward, in f64 and
//! in f32 (the training type). Ignored, with the reason printed, in a build without the `cuda`
//! feature; in a build with it, skipped with the reason printed when no device opens, unless
//! `MUSTARD_REQUIRE_CUDA=1` (set by the GPU check) makes that a failure.

mod parity;

use candle_core::{DType, Device};
use mustard_core::DeviceSpec;
use parity::Other;

/// `cuda:0`, opened as every verb opens it (a missing CUDA library is named, not a panic).
fn cuda() -> Option<Device> {
    match DeviceSpec::Cuda(0).device() {
        Ok(device) => Some(device),
        Err(e) if std::env::var_os("MUSTARD_REQUIRE_CUDA").is_some() => {
            panic!("MUSTARD_REQUIRE_CUDA is set but no CUDA device opened: {e}")
        }
        Err(e) => {
            eprintln!("skipped: no CUDA device opened ({e})");
            None
        }
    }
}

#[test]
#[cfg_attr(
    not(feature = "cuda"),
    ignore = "needs --features cuda and an NVIDIA GPU"
)]
fn every_custom_op_on_cuda_matches_the_cpu_kernel_in_f64() {
    if let Some(device) = cuda() {
        parity::every_custom_op(&Other::Device(device), DType::F64, 1.0);
    }
}

#[test]
#[cfg_attr(
    not(feature = "cuda"),
    ignore = "needs --features cuda and an NVIDIA GPU"
)]
fn every_custom_op_on_cuda_matches_the_cpu_kernel_in_f32() {
    if let Some(device) = cuda() {
        // f32 rounding: 1e-6 for the exact ops, 1e-4 for convolutions, 1e-3 for BatchNorm.
        parity::every_custom_op(&Other::Device(device), DType::F32, 1e8);
    }
}

#[test]
#[cfg_attr(
    not(feature = "cuda"),
    ignore = "needs --features cuda and an NVIDIA GPU"
)]
fn max_pool_on_cuda_breaks_ties_as_the_cpu_kernel_does() {
    use mustard_core::ops::{self, MaxPool2dConfig};
    let Some(device) = cuda() else {
        return;
    };
    let x = parity::ties(&[2, 3, 11, 9], 7, DType::F32);
    for (kernel, stride, padding) in [(3, 2, 1), (2, 2, 0), (3, 1, 1)] {
        let config = MaxPool2dConfig {
            kernel,
            stride,
            padding,
        };
        parity::check(
            &format!("max_pool2d with ties k{kernel} s{stride} p{padding}"),
            &[&x],
            |t| ops::max_pool2d(&t[0], config).unwrap(),
            &Other::Device(device.clone()),
            0.0,
        );
    }
}

#[test]
#[cfg_attr(
    not(feature = "cuda"),
    ignore = "needs --features cuda and an NVIDIA GPU"
)]
fn heatmap_peaks_on_cuda_equal_the_cpu_scan() {
    use mustard_core::heatmap::{topk, topk_peaks};
    let Some(device) = cuda() else {
        return;
    };
    // Quantised values (ties), sizes below, at and above the 256-value chunk, an 80-class map.
    for (i, shape) in [[2, 3, 9, 7], [2, 5, 17, 13], [1, 80, 32, 32]]
        .iter()
        .enumerate()
    {
        let heat = parity::input(shape, 30 + i as u64, DType::F32)
            .affine(8.0, 0.0)
            .unwrap()
            .round()
            .unwrap();
        let on_gpu = heat.to_device(&device).unwrap();
        let n: usize = shape[1..].iter().product();
        for k in [1, 7, 100.min(n), n] {
            assert_eq!(
                topk_peaks(&on_gpu, 3, k).unwrap(),
                topk_peaks(&heat, 3, k).unwrap(),
                "{shape:?}, k {k}"
            );
            assert_eq!(
                topk(&on_gpu, k).unwrap(),
                topk(&heat, k).unwrap(),
                "{shape:?}, k {k}"
            );
        }
    }
    // Negative values, both zeros and −∞.
    for (i, shape) in [(2, 3, 9, 7), (2, 5, 17, 13)].into_iter().enumerate() {
        let heat = parity::awkward_map(shape, 40 + i as u64);
        let on_gpu = heat.to_device(&device).unwrap();
        for k in [1, 50, shape.1 * shape.2 * shape.3] {
            assert_eq!(
                topk_peaks(&on_gpu, 3, k).unwrap(),
                topk_peaks(&heat, 3, k).unwrap(),
                "{shape:?}, k {k}"
            );
        }
    }
    // A NaN is named as on the CPU.
    let mut v = vec![0.25f32; 2 * 300];
    v[300 + 257] = f32::NAN;
    let heat = candle_core::Tensor::from_vec(v, (2, 3, 10, 10), &Device::Cpu).unwrap();
    assert_eq!(
        topk_peaks(&heat.to_device(&device).unwrap(), 3, 5)
            .unwrap_err()
            .to_string(),
        "heatmap value of image 1 at channel 2, y 5, x 7 is not finite (NaN)"
    );
}
