//! Every custom op's portable path (the composed candle ops that CUDA and Metal run, selected
//! on the CPU with `Kernels::Portable`) against its CPU kernel, forward and backward, in f64,
//! where rounding cannot hide a real difference. (Its own test binary: the kernels are a
//! process-wide setting.)

use candle_core::{DType, Device, Tensor, Var};
use mustard_core::ops::{self, ConvParams, Kernels, MaxPool2dConfig};

/// A deterministic tensor of `shape` with values in (−1, 1), no two equal.
fn input(shape: &[usize], seed: u64) -> Var {
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
    Var::from_tensor(&Tensor::from_vec(values, shape, &Device::Cpu).unwrap()).unwrap()
}

/// The op's output and the gradients of `sum(output · probe)` on both paths, compared.
fn check(name: &str, vars: &[&Var], op: impl Fn() -> Tensor, tolerance: f64) {
    let mut runs = Vec::new();
    for kernels in [Kernels::Fast, Kernels::Portable] {
        kernels.apply();
        let y = op();
        let probe = input(y.dims(), 99).as_tensor().clone();
        let grads = (&y * &probe)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let g: Vec<Vec<f64>> = vars
            .iter()
            .map(|v| flat(grads.get(v).expect("a gradient for every input")))
            .collect();
        runs.push((flat(&y), g));
    }
    Kernels::Fast.apply();
    let close = |what: &str, a: &[f64], b: &[f64]| {
        assert_eq!(a.len(), b.len(), "{name} {what}");
        let scale = b.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-300);
        let err = a.iter().zip(b).fold(0f64, |m, (x, y)| m.max((x - y).abs())) / scale;
        assert!(err <= tolerance, "{name} {what}: {err:e} relative");
    };
    close("output", &runs[0].0, &runs[1].0);
    for (k, (a, b)) in runs[0].1.iter().zip(&runs[1].1).enumerate() {
        close(&format!("gradient of input {k}"), a, b);
    }
}

#[test]
fn every_custom_op_has_the_same_values_and_gradients_on_both_paths() {
    let x = input(&[2, 3, 9, 10], 1);
    check("relu", &[&x], || ops::relu(x.as_tensor()).unwrap(), 1e-14);
    for (kernel, stride, padding) in [(3, 2, 1), (2, 2, 0), (3, 1, 1)] {
        check(
            &format!("max_pool2d k{kernel} s{stride} p{padding}"),
            &[&x],
            || {
                ops::max_pool2d(
                    x.as_tensor(),
                    MaxPool2dConfig {
                        kernel,
                        stride,
                        padding,
                    },
                )
                .unwrap()
            },
            1e-14,
        );
    }
    check(
        "upsample_bilinear2d",
        &[&x],
        || ops::upsample_bilinear2d(x.as_tensor(), 36, 40).unwrap(),
        1e-12,
    );
    check(
        "upsample_bilinear2d (odd sizes)",
        &[&x],
        || ops::upsample_bilinear2d(x.as_tensor(), 13, 7).unwrap(),
        1e-12,
    );
    let (gamma, beta) = (input(&[3], 2), input(&[3], 3));
    check(
        "batch_norm_train",
        &[&x, &gamma, &beta],
        || {
            ops::batch_norm_train(x.as_tensor(), gamma.as_tensor(), beta.as_tensor(), 1e-5)
                .unwrap()
                .0
        },
        1e-11,
    );
    let bias = input(&[4], 5);
    for (k, stride, padding) in [(3, 1, 1), (3, 2, 1), (1, 1, 0), (7, 2, 3)] {
        let w = input(&[4, 3, k, k], 4);
        let params = ConvParams {
            padding,
            stride,
            ..ConvParams::default()
        };
        check(
            &format!("conv2d k{k} s{stride} p{padding}"),
            &[&x, &w, &bias],
            || ops::conv2d(x.as_tensor(), w.as_tensor(), Some(bias.as_tensor()), params).unwrap(),
            1e-12,
        );
        check(
            &format!("conv2d_relu k{k} s{stride} p{padding}"),
            &[&x, &w, &bias],
            || {
                ops::conv2d_relu(x.as_tensor(), w.as_tensor(), Some(bias.as_tensor()), params)
                    .unwrap()
            },
            1e-12,
        );
    }
    let wt = input(&[3, 4, 4, 4], 6);
    check(
        "conv_transpose2d k4 s2 p1",
        &[&x, &wt, &bias],
        || {
            ops::conv_transpose2d(
                x.as_tensor(),
                wt.as_tensor(),
                Some(bias.as_tensor()),
                ConvParams {
                    padding: 1,
                    stride: 2,
                    ..ConvParams::default()
                },
                0,
            )
            .unwrap()
        },
        1e-12,
    );
    assert_eq!(x.dtype(), DType::F64);
}
