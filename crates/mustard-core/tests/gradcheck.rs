//! Finite-difference gradient checks (f64, CPU) of every op and loss with a custom or composed
//! backward: the autograd gradient must equal central differences.

use anyhow::Result;
use candle_core::{DType, Device, Module, ModuleT, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use mustard_core::loss::{cross_entropy, focal_loss, reg_l1, soft_cross_entropy};
use mustard_core::nn::{
    BatchNorm2d, BatchNorm2dConfig, Conv2d, Conv2dConfig, ConvTranspose2d, ConvTranspose2dConfig,
};
use mustard_core::ops::{
    batch_norm_train, conv2d, conv_transpose2d, max_pool2d, upsample_bilinear2d,
    upsample_nearest2d, ConvParams, MaxPool2dConfig,
};

/// Deterministic, tie-free values in [−2, 2).
fn values(n: usize, seed: u64) -> Vec<f64> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 11) as f64 / (1u64 << 53) as f64) * 4.0 - 2.0
        })
        .collect()
}

fn tensor(shape: &[usize], seed: u64) -> Tensor {
    let n = shape.iter().product();
    Tensor::from_vec(values(n, seed), shape, &Device::Cpu).unwrap()
}

/// Compares the autograd gradient of the scalar `f(x)` with central differences.
fn check(what: &str, x: &Tensor, f: impl Fn(&Tensor) -> Result<Tensor>) -> Result<()> {
    let var = Var::from_tensor(&x.copy()?)?;
    let analytic = f(var.as_tensor())?
        .backward()?
        .get(var.as_tensor())
        .expect("gradient")
        .flatten_all()?
        .to_vec1::<f64>()?;
    let base = x.flatten_all()?.to_vec1::<f64>()?;
    let eps = 1e-6;
    for i in 0..base.len() {
        let eval = |delta: f64| -> Result<f64> {
            let mut v = base.clone();
            v[i] += delta;
            Ok(f(&Tensor::from_vec(v, x.shape(), x.device())?)?.to_scalar::<f64>()?)
        };
        let numeric = (eval(eps)? - eval(-eps)?) / (2.0 * eps);
        let err = (numeric - analytic[i]).abs() / (1.0f64).max(numeric.abs());
        assert!(
            err < 1e-6,
            "{what}: element {i}: autograd {} vs finite differences {numeric}",
            analytic[i]
        );
    }
    Ok(())
}

/// A fixed random projection so that every output element gets a different weight.
fn project(y: &Tensor, seed: u64) -> Result<Tensor> {
    Ok((y * tensor(y.dims(), seed))?.sum_all()?)
}

#[test]
fn max_pool2d_gradients() -> Result<()> {
    let x = tensor(&[2, 2, 7, 8], 1);
    for cfg in [
        MaxPool2dConfig::resnet_stem(),
        MaxPool2dConfig::new(2, 2),
        MaxPool2dConfig {
            kernel: 3,
            stride: 1,
            padding: 1,
        },
        MaxPool2dConfig::new(3, 3),
    ] {
        check(&format!("max_pool2d {cfg:?}"), &x, |x| {
            project(&max_pool2d(x, cfg)?, 2)
        })?;
    }
    Ok(())
}

#[test]
fn upsample_gradients() -> Result<()> {
    let x = tensor(&[1, 2, 4, 5], 3);
    for (oh, ow) in [(8, 10), (7, 13), (3, 2), (4, 5)] {
        check(&format!("bilinear to {oh}x{ow}"), &x, |x| {
            project(&upsample_bilinear2d(x, oh, ow)?, 4)
        })?;
    }
    for factor in [1, 2, 3] {
        check(&format!("nearest x{factor}"), &x, |x| {
            project(&upsample_nearest2d(x, factor)?, 5)
        })?;
        // The input also feeds another op (as in the FPN's top-down path): both gradients add,
        // whichever of the two the backward pass visits first.
        for up_first in [true, false] {
            check(&format!("nearest x{factor} beside another use"), &x, |x| {
                let up = project(&upsample_nearest2d(x, factor)?, 5)?;
                let other = project(&(x * 3.0)?.exp()?, 6)?;
                Ok(if up_first { up + other } else { other + up }?)
            })?;
        }
    }
    Ok(())
}

#[test]
fn loss_gradients() -> Result<()> {
    let logits = (tensor(&[2, 2, 3, 3], 6) * 2.0)?;
    let mut gt = ((tensor(&[2, 2, 3, 3], 7) + 2.0)? * 0.2)?
        .flatten_all()?
        .to_vec1::<f64>()?;
    gt[4] = 1.0;
    gt[20] = 1.0;
    let gt = Tensor::from_vec(gt, (2, 2, 3, 3), &Device::Cpu)?;
    let presence = Tensor::new(&[1.0f64, 0.0], &Device::Cpu)?;
    check("focal", &logits, |x| Ok(focal_loss(x, &gt, None)?))?;
    check("focal with presence", &logits, |x| {
        Ok(focal_loss(x, &gt, Some(&presence))?)
    })?;

    let ind = Tensor::new(&[[0u32, 4, 8], [3, 3, 7]], &Device::Cpu)?;
    let mask = Tensor::new(&[[1.0f64, 1.0, 0.0], [1.0, 1.0, 1.0]], &Device::Cpu)?;
    let target = tensor(&[2, 3, 2], 8);
    check("reg_l1", &logits, |x| Ok(reg_l1(x, &ind, &mask, &target)?))?;

    let labels = Tensor::new(
        &[
            [[0u32, 1, 255], [1, 1, 0], [255, 0, 1]],
            [[1, 0, 0], [0, 255, 1], [1, 1, 1]],
        ],
        &Device::Cpu,
    )?;
    check("cross_entropy", &logits, |x| {
        Ok(cross_entropy(x, &labels, 255)?)
    })?;
    let flat = tensor(&[3, 4], 9);
    let soft = candle_nn::ops::softmax(&tensor(&[3, 4], 10), 1)?;
    check("soft_cross_entropy", &flat, |x| {
        Ok(soft_cross_entropy(x, &soft)?)
    })?;
    Ok(())
}

#[test]
fn batchnorm_and_conv_gradients() -> Result<()> {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F64, &Device::Cpu);
    let conv = Conv2d::new(
        2,
        3,
        3,
        Conv2dConfig {
            padding: 1,
            stride: 2,
            ..Default::default()
        },
        vb.pp("conv"),
    )?;
    let bn = BatchNorm2d::new(3, BatchNorm2dConfig::default(), vb.pp("bn"))?;
    let x = tensor(&[2, 2, 5, 5], 11);
    check("conv → batchnorm(train)", &x, |x| {
        project(&bn.forward_t(&conv.forward(x)?, true)?, 12)
    })?;
    check("conv → batchnorm(eval)", &x, |x| {
        project(&bn.forward_t(&conv.forward(x)?, false)?, 13)
    })?;
    Ok(())
}

/// The fused training BatchNorm: gradients to the input, γ and β, and values equal to the
/// textbook formula.
#[test]
fn fused_batch_norm_gradients_and_values() -> Result<()> {
    let x = tensor(&[3, 2, 3, 4], 21);
    let gamma = tensor(&[2], 22);
    let beta = tensor(&[2], 23);
    let eps = 1e-5;
    check("batch_norm_train: x", &x, |x| {
        project(&batch_norm_train(x, &gamma, &beta, eps)?.0, 24)
    })?;
    check("batch_norm_train: gamma", &gamma, |g| {
        project(&batch_norm_train(&x, g, &beta, eps)?.0, 25)
    })?;
    check("batch_norm_train: beta", &beta, |b| {
        project(&batch_norm_train(&x, &gamma, b, eps)?.0, 26)
    })?;
    let (y, stats) = batch_norm_train(&x, &gamma, &beta, eps)?;
    let mean = x.mean_keepdim((0, 2, 3))?;
    let var = x.broadcast_sub(&mean)?.sqr()?.mean_keepdim((0, 2, 3))?;
    let want = x
        .broadcast_sub(&mean)?
        .broadcast_div(&(&var + eps)?.sqrt()?)?
        .broadcast_mul(&gamma.reshape((1, 2, 1, 1))?)?
        .broadcast_add(&beta.reshape((1, 2, 1, 1))?)?;
    let diff = (y - want)?.abs()?.max_all()?.to_scalar::<f64>()?;
    assert!(diff < 1e-12, "{diff}");
    let d = (stats.mean - mean.flatten_all()?)?
        .abs()?
        .max_all()?
        .to_scalar::<f64>()?;
    assert!(d < 1e-12, "{d}");
    let d = (stats.var - var.flatten_all()?)?
        .abs()?
        .max_all()?
        .to_scalar::<f64>()?;
    assert!(d < 1e-12, "{d}");
    Ok(())
}

/// Input shape, output channels, kernel, stride, padding, dilation.
type ConvCase = (&'static [usize], usize, usize, usize, usize, usize);

/// The convolution engine: input, weight and bias gradients for strides, paddings, dilations and
/// 1x1 / 3x3 / 7x7 kernels.
#[test]
fn conv_engine_gradients() -> Result<()> {
    let cases: [ConvCase; 6] = [
        (&[2, 3, 5, 6], 2, 3, 1, 1, 1),
        (&[1, 2, 7, 5], 3, 3, 2, 1, 1),
        (&[2, 2, 7, 7], 2, 3, 1, 2, 2),
        (&[1, 3, 4, 5], 2, 1, 1, 0, 1),
        (&[2, 2, 5, 4], 3, 1, 2, 0, 1),
        (&[1, 2, 9, 8], 2, 7, 2, 3, 1),
    ];
    for (i, &(shape, out, k, stride, padding, dilation)) in cases.iter().enumerate() {
        let seed = 100 + 10 * i as u64;
        let x = tensor(shape, seed);
        let w = tensor(&[out, shape[1], k, k], seed + 1);
        let b = tensor(&[out], seed + 2);
        let p = ConvParams {
            padding,
            stride,
            dilation,
            groups: 1,
        };
        let what = format!("conv2d {shape:?} k{k} {p:?}");
        check(&format!("{what} input"), &x, |x| {
            project(&conv2d(x, &w, Some(&b), p)?, seed + 3)
        })?;
        check(&format!("{what} weight"), &w, |w| {
            project(&conv2d(&x, w, Some(&b), p)?, seed + 3)
        })?;
        check(&format!("{what} bias"), &b, |b| {
            project(&conv2d(&x, &w, Some(b), p)?, seed + 3)
        })?;
    }
    Ok(())
}

#[test]
fn conv_transpose_gradients() -> Result<()> {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F64, &Device::Cpu);
    let cfg = ConvTranspose2dConfig {
        padding: 1,
        stride: 2,
        ..Default::default()
    };
    let deconv = ConvTranspose2d::new(3, 2, 4, cfg, vb.pp("deconv"))?;
    let x = tensor(&[2, 3, 3, 4], 201);
    check("ConvTranspose2d k4 s2 p1 input", &x, |x| {
        project(&deconv.forward(x)?, 202)
    })?;
    let w = tensor(&[2, 3, 3, 3], 203);
    let p = ConvParams {
        padding: 1,
        stride: 2,
        dilation: 2,
        groups: 1,
    };
    let x = tensor(&[1, 2, 3, 3], 204);
    check("conv_transpose2d dilation 2 weight", &w, |w| {
        project(&conv_transpose2d(&x, w, None, p, 1)?, 205)
    })?;
    check("conv_transpose2d dilation 2 input", &x, |x| {
        project(&conv_transpose2d(x, &w, None, p, 1)?, 205)
    })?;
    Ok(())
}
