//! Parity of the convolution engine with candle's convolution (values, input, weight and bias
//! gradients) over a table of shapes, in f32 and f64, under two thread counts; fused ReLU and
//! BatchNorm folding; shape errors.

use anyhow::Result;
use candle_core::{DType, Device, Module, ModuleT, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use mustard_core::nn::{BatchNorm2d, BatchNorm2dConfig, Conv2d, Conv2dConfig};
use mustard_core::ops::{
    conv2d, conv2d_input_grad, conv2d_relu, conv2d_weight_grad, conv_transpose2d, ConvParams,
};

mod common;

use common::{max_abs, max_abs_diff, tensor};

/// Max |a − b| relative to max(1, max |b|).
fn rel_diff(a: &Tensor, b: &Tensor) -> f64 {
    max_abs_diff(a, b) / max_abs(b).max(1.0)
}

fn tolerance(dtype: DType) -> f64 {
    match dtype {
        DType::F64 => 1e-10,
        _ => 1e-4,
    }
}

/// `f(x, w, b)`, and the gradients of `Σ f · r` for a fixed random `r`.
fn run(
    x: &Tensor,
    w: &Tensor,
    b: &Tensor,
    f: impl Fn(&Tensor, &Tensor, &Tensor) -> Result<Tensor>,
) -> Result<[Tensor; 4]> {
    let (xv, wv, bv) = (
        Var::from_tensor(x)?,
        Var::from_tensor(w)?,
        Var::from_tensor(b)?,
    );
    let y = f(xv.as_tensor(), wv.as_tensor(), bv.as_tensor())?;
    let r = tensor(y.dims(), 99, y.dtype());
    let grads = (&y * r)?.sum_all()?.backward()?;
    let g = |v: &Var| grads.get(v.as_tensor()).expect("gradient").clone();
    Ok([y.clone(), g(&xv), g(&wv), g(&bv)])
}

/// One convolution case: input `(n, cin, h, w)`, `cout` filters of `k` x `k`.
#[derive(Debug, Clone, Copy)]
struct Case {
    n: usize,
    cin: usize,
    hw: (usize, usize),
    cout: usize,
    k: usize,
    stride: usize,
    padding: usize,
    dilation: usize,
}

const fn case(
    n: usize,
    cin: usize,
    hw: (usize, usize),
    cout: usize,
    k: usize,
    (stride, padding, dilation): (usize, usize, usize),
) -> Case {
    Case {
        n,
        cin,
        hw,
        cout,
        k,
        stride,
        padding,
        dilation,
    }
}

const CASES: &[Case] = &[
    case(1, 1, (7, 9), 1, 1, (1, 0, 1)),
    case(3, 5, (7, 9), 4, 1, (2, 0, 1)),
    case(1, 64, (20, 24), 32, 1, (1, 0, 1)),
    case(2, 3, (7, 9), 6, 3, (1, 1, 1)),
    case(3, 8, (9, 7), 16, 3, (2, 1, 1)),
    case(3, 16, (10, 10), 32, 3, (2, 0, 1)),
    case(1, 4, (11, 13), 5, 3, (1, 2, 2)),
    case(2, 6, (9, 11), 3, 3, (2, 1, 2)),
    case(1, 2, (5, 5), 3, 3, (1, 3, 1)),
    case(2, 3, (15, 17), 8, 7, (2, 3, 1)),
    case(1, 6, (8, 8), 4, 7, (1, 3, 1)),
    case(1, 64, (16, 16), 64, 3, (1, 1, 1)),
    case(3, 32, (33, 31), 48, 3, (1, 1, 1)),
    case(1, 3, (64, 72), 8, 7, (2, 3, 1)),
    case(1, 16, (96, 100), 8, 3, (1, 1, 1)),
    // Paddings 0 and 2 at 3x3 stride 1 (im2col), and a layer the Winograd kernel serves, with
    // partial tiles and several blocks per image.
    case(2, 16, (21, 18), 24, 3, (1, 0, 1)),
    case(2, 24, (19, 22), 16, 3, (1, 2, 1)),
    case(1, 32, (72, 68), 40, 3, (1, 1, 1)),
];

fn conv_params(c: &Case) -> ConvParams {
    ConvParams {
        padding: c.padding,
        stride: c.stride,
        dilation: c.dilation,
        groups: 1,
    }
}

fn check_conv_parity(dtype: DType) -> Result<()> {
    for (i, c) in CASES.iter().enumerate() {
        let x = tensor(&[c.n, c.cin, c.hw.0, c.hw.1], 3 * i as u64 + 1, dtype);
        let w = tensor(&[c.cout, c.cin, c.k, c.k], 3 * i as u64 + 2, dtype);
        let b = tensor(&[c.cout], 3 * i as u64 + 3, dtype);
        let p = conv_params(c);
        let engine = run(&x, &w, &b, |x, w, b| Ok(conv2d(x, w, Some(b), p)?))?;
        let candle = run(&x, &w, &b, |x, w, b| {
            let y = x.conv2d(w, c.padding, c.stride, c.dilation, 1)?;
            Ok(y.broadcast_add(&b.reshape((1, c.cout, 1, 1))?)?)
        })?;
        for (what, e, r) in pairs(&engine, &candle) {
            let d = rel_diff(e, r);
            assert!(
                d <= tolerance(dtype),
                "{c:?} {dtype:?}: {what} differs by {d:e}"
            );
        }
        // The two halves of the backward pass, called directly.
        let g = tensor(engine[0].dims(), 7, dtype);
        let dx = conv2d_input_grad(&g, &w, c.hw, p)?;
        assert_eq!(dx.dims(), x.dims());
        let dw = conv2d_weight_grad(&x, &g, (c.k, c.k), p)?;
        assert_eq!(dw.dims(), w.dims());
        let xv = Var::from_tensor(&x)?;
        let wv = Var::from_tensor(&w)?;
        let y = xv
            .as_tensor()
            .conv2d(wv.as_tensor(), c.padding, c.stride, c.dilation, 1)?;
        let grads = (y * &g)?.sum_all()?.backward()?;
        let d = rel_diff(&dx, grads.get(xv.as_tensor()).expect("dx"));
        assert!(d <= tolerance(dtype), "{c:?}: conv2d_input_grad by {d:e}");
        let d = rel_diff(&dw, grads.get(wv.as_tensor()).expect("dw"));
        assert!(d <= tolerance(dtype), "{c:?}: conv2d_weight_grad by {d:e}");
    }
    Ok(())
}

fn pairs<'a>(
    e: &'a [Tensor; 4],
    r: &'a [Tensor; 4],
) -> Vec<(&'static str, &'a Tensor, &'a Tensor)> {
    [
        "output",
        "input gradient",
        "weight gradient",
        "bias gradient",
    ]
    .into_iter()
    .zip(e.iter().zip(r.iter()))
    .map(|(w, (a, b))| (w, a, b))
    .collect()
}

#[test]
fn conv2d_matches_candle_in_f32() -> Result<()> {
    check_conv_parity(DType::F32)
}

#[test]
fn conv2d_matches_candle_in_f64() -> Result<()> {
    check_conv_parity(DType::F64)
}

/// One and three threads split the work differently from the default pool (row blocks, channel
/// blocks of the input and weight gradients, weight-gradient accumulators).
#[test]
fn conv2d_matches_candle_with_one_and_three_threads() -> Result<()> {
    for threads in [1, 3] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()?;
        pool.install(|| check_conv_parity(DType::F64))?;
    }
    Ok(())
}

#[test]
fn conv_transpose2d_matches_candle() -> Result<()> {
    // (n, cin, hw, cout, k, (stride, padding, dilation), output_padding)
    let cases = [
        (2, 8, (4, 5), 6, 4, (2, 1, 1), 0),
        (1, 3, (5, 5), 4, 3, (1, 0, 1), 0),
        (3, 4, (3, 6), 5, 3, (2, 1, 1), 1),
        (1, 5, (6, 4), 3, 3, (1, 2, 2), 0),
        (2, 16, (8, 8), 16, 4, (2, 1, 1), 0),
    ];
    for dtype in [DType::F32, DType::F64] {
        for (i, &(n, cin, (h, w), cout, k, (s, p, d), op)) in cases.iter().enumerate() {
            let x = tensor(&[n, cin, h, w], 11 + i as u64, dtype);
            let wt = tensor(&[cin, cout, k, k], 21 + i as u64, dtype);
            let b = tensor(&[cout], 31 + i as u64, dtype);
            let params = ConvParams {
                padding: p,
                stride: s,
                dilation: d,
                groups: 1,
            };
            let engine = run(&x, &wt, &b, |x, w, b| {
                Ok(conv_transpose2d(x, w, Some(b), params, op)?)
            })?;
            let candle = run(&x, &wt, &b, |x, w, b| {
                let y = x.conv_transpose2d(w, p, op, s, d)?;
                Ok(y.broadcast_add(&b.reshape((1, cout, 1, 1))?)?)
            })?;
            for (what, e, r) in pairs(&engine, &candle) {
                let diff = rel_diff(e, r);
                assert!(
                    diff <= tolerance(dtype),
                    "case {i} {dtype:?}: {what} differs by {diff:e}"
                );
            }
        }
    }
    Ok(())
}

#[test]
fn fused_relu_equals_relu_after_conv() -> Result<()> {
    let x = tensor(&[2, 4, 9, 8], 41, DType::F64);
    let w = tensor(&[6, 4, 3, 3], 42, DType::F64);
    let b = tensor(&[6], 43, DType::F64);
    let p = ConvParams {
        padding: 1,
        ..Default::default()
    };
    let fused = run(&x, &w, &b, |x, w, b| Ok(conv2d_relu(x, w, Some(b), p)?))?;
    let plain = run(&x, &w, &b, |x, w, b| Ok(conv2d(x, w, Some(b), p)?.relu()?))?;
    for (what, e, r) in pairs(&fused, &plain) {
        assert!(rel_diff(e, r) <= 1e-12, "{what}");
    }
    // Some outputs are negative, so the mask matters.
    let zeros = fused[0].eq(0.0)?.to_dtype(DType::F64)?.sum_all()?;
    assert!(zeros.to_scalar::<f64>()? > 10.0);
    Ok(())
}

#[test]
fn grouped_convolution_falls_back_to_candle() -> Result<()> {
    let x = tensor(&[2, 6, 7, 7], 51, DType::F32);
    let w = tensor(&[4, 3, 3, 3], 52, DType::F32);
    let p = ConvParams {
        padding: 1,
        groups: 2,
        ..Default::default()
    };
    let y = conv2d(&x, &w, None, p)?;
    let r = x.conv2d(&w, 1, 1, 1, 2)?;
    assert!(rel_diff(&y, &r) <= 1e-6);
    Ok(())
}

#[test]
fn conv2d_layer_runs_the_engine_and_folds_batchnorm() -> Result<()> {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F64, &Device::Cpu);
    let cfg = Conv2dConfig {
        padding: 1,
        stride: 2,
        ..Default::default()
    };
    let conv = Conv2d::new(3, 5, 3, cfg, vb.pp("conv"))?;
    let bn = BatchNorm2d::new(5, BatchNorm2dConfig::default(), vb.pp("bn"))?;
    // Non-trivial running statistics and affine parameters.
    for (name, seed, offset) in [
        ("bn.weight", 61, 1.5),
        ("bn.bias", 62, 0.0),
        ("bn.running_mean", 63, 0.0),
        ("bn.running_var", 64, 1.5),
    ] {
        let t = (tensor(&[5], seed, DType::F64) + offset)?;
        varmap.data().lock().unwrap()[name].set(&t)?;
    }
    let x = tensor(&[2, 3, 11, 10], 65, DType::F64);
    let y = conv.forward(&x)?;
    let reference = x
        .conv2d(conv.weight(), 1, 2, 1, 1)?
        .broadcast_add(&conv.bias().expect("bias").reshape((1, 5, 1, 1))?)?;
    assert!(rel_diff(&y, &reference) <= 1e-12);
    let relu = conv.forward_relu(&x)?;
    assert!(rel_diff(&relu, &reference.relu()?) <= 1e-12);
    let folded = conv.fold_batchnorm(&bn)?;
    let expected = bn.forward_t(&y, false)?;
    assert!(rel_diff(&folded.forward(&x)?, &expected) <= 1e-12);
    Ok(())
}

#[test]
fn bad_shapes_are_errors_naming_them() -> Result<()> {
    let f = DType::F32;
    let x = tensor(&[1, 3, 8, 8], 1, f);
    let p = ConvParams::default();
    let err = |r: mustard_core::Result<Tensor>| r.unwrap_err().to_string();
    assert_eq!(
        err(conv2d(&x, &tensor(&[4, 2, 3, 3], 2, f), None, p)),
        "conv2d: input has shape [1, 3, 8, 8], expected 2 channels for weight [4, 2, 3, 3] with \
         groups 1"
    );
    assert_eq!(
        err(conv2d(
            &x,
            &tensor(&[4, 3, 5, 5], 2, f),
            None,
            ConvParams {
                dilation: 3,
                padding: 1,
                ..p
            }
        )),
        "conv2d: input has shape [1, 3, 8, 8], expected H + 2·padding ≥ 13 and W + 2·padding ≥ 13 \
         for weight [4, 3, 5, 5] with padding 1 and dilation 3"
    );
    assert_eq!(
        err(conv2d(
            &tensor(&[1, 3, 2, 9], 1, f),
            &tensor(&[4, 3, 3, 3], 2, f),
            None,
            p
        )),
        "conv2d: input has shape [1, 3, 2, 9], expected H + 2·padding ≥ 3 and W + 2·padding ≥ 3 \
         for weight [4, 3, 3, 3] with padding 0 and dilation 1"
    );
    assert_eq!(
        err(conv2d(&x, &tensor(&[4, 3, 3], 2, f), None, p)),
        "conv2d: weight has shape [4, 3, 3], expected (out, in / groups, kh, kw)"
    );
    assert_eq!(
        err(conv2d(
            &x,
            &tensor(&[4, 3, 3, 3], 2, f),
            Some(&tensor(&[3], 3, f)),
            p
        )),
        "conv2d: bias has shape [3], expected (4,)"
    );
    assert_eq!(
        err(conv2d(&x, &tensor(&[4, 3, 3, 3], 2, DType::F64), None, p)),
        "conv2d: weight dtype F64 differs from input dtype F32"
    );
    assert_eq!(
        err(conv2d(
            &x,
            &tensor(&[4, 3, 3, 3], 2, f),
            None,
            ConvParams { stride: 0, ..p }
        )),
        "conv2d: stride (0), dilation (1) and groups (1) must be at least 1"
    );
    assert_eq!(
        err(conv_transpose2d(
            &x,
            &tensor(&[3, 4, 4, 4], 2, f),
            None,
            ConvParams { stride: 2, ..p },
            2
        )),
        "conv_transpose2d: output_padding 2 must be smaller than the stride 2"
    );
    assert_eq!(
        err(conv_transpose2d(&x, &tensor(&[2, 4, 4, 4], 2, f), None, p, 0)),
        "conv_transpose2d: input has shape [1, 3, 8, 8], expected 2 channels for weight [2, 4, 4, 4]"
    );
    assert_eq!(
        err(conv2d_input_grad(
            &tensor(&[1, 4, 6, 5], 3, f),
            &tensor(&[4, 3, 3, 3], 2, f),
            (8, 8),
            p
        )),
        "conv2d_input_grad: gradient has shape [1, 4, 6, 5], expected 4 channels and the output \
         size of a 8x8 input under a 3x3 kernel with ConvParams { padding: 0, stride: 1, \
         dilation: 1, groups: 1 }"
    );
    // Through the layer, the error reaches the caller as an `Err` with the same message.
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, f, &Device::Cpu);
    let conv = Conv2d::new(2, 4, 3, Conv2dConfig::default(), vb)?;
    assert_eq!(
        conv.forward(&x).unwrap_err().to_string(),
        "conv2d: input has shape [1, 3, 8, 8], expected 2 channels for weight [4, 2, 3, 3] with \
         groups 1"
    );
    Ok(())
}

/// The backward pass computes only the gradients that are needed (an untracked input, a frozen
/// weight); those it computes still match candle.
#[test]
fn untracked_arguments_get_no_gradient_and_the_others_stay_exact() -> Result<()> {
    let dt = DType::F64;
    let x = tensor(&[2, 3, 8, 7], 71, dt);
    let w = tensor(&[4, 3, 3, 3], 72, dt);
    let b = tensor(&[4], 73, dt);
    let p = ConvParams {
        padding: 1,
        ..Default::default()
    };
    let reference = run(&x, &w, &b, |x, w, b| {
        Ok(x.conv2d(w, 1, 1, 1, 1)?
            .broadcast_add(&b.reshape((1, 4, 1, 1))?)?)
    })?;
    // Only the weight is a variable.
    let wv = Var::from_tensor(&w)?;
    let y = conv2d(&x, wv.as_tensor(), Some(&b), p)?;
    let grads = (&y * tensor(y.dims(), 99, dt))?.sum_all()?.backward()?;
    assert!(grads.get(&x).is_none());
    assert!(rel_diff(grads.get(wv.as_tensor()).expect("dw"), &reference[2]) <= 1e-10);
    // Only the input is a variable.
    let xv = Var::from_tensor(&x)?;
    let y = conv2d(xv.as_tensor(), &w, Some(&b), p)?;
    let grads = (&y * tensor(y.dims(), 99, dt))?.sum_all()?.backward()?;
    assert!(grads.get(&w).is_none() && grads.get(&b).is_none());
    assert!(rel_diff(grads.get(xv.as_tensor()).expect("dx"), &reference[1]) <= 1e-10);
    Ok(())
}
