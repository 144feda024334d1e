//! The Winograd F(4x4, 3x3) kernel against the engine's im2col kernel (`set_winograd(false)`) on
//! the same inputs: forward with bias and ReLU, input and weight gradients, stride-1 transposed
//! convolution; its f32 error against an f64 reference; and which shapes it serves.
//!
//! The switch is process-wide, so the tests of this file take a lock around it.

use std::sync::Mutex;

use anyhow::Result;
use candle_core::{DType, Tensor, Var};
use std::sync::Arc;

use mustard_core::nn::{Conv2d, Conv2dConfig};
use mustard_core::ops::{
    conv2d, conv2d_cached, conv2d_input_grad, conv2d_relu, conv_transpose2d, set_winograd,
    ConvParams, WeightCache,
};

mod common;

use common::{max_abs, max_abs_diff, tensor};

static SWITCH: Mutex<()> = Mutex::new(());

/// Max |a − b| / max |b|.
fn rel_diff(a: &Tensor, b: &Tensor) -> f64 {
    max_abs_diff(a, b) / max_abs(b)
}

/// `f` with the Winograd kernel on, then off.
fn both<T>(f: impl Fn() -> Result<T>) -> Result<(T, T)> {
    let _guard = SWITCH.lock().unwrap_or_else(|e| e.into_inner());
    set_winograd(true);
    let on = f();
    set_winograd(false);
    let off = f();
    set_winograd(true);
    Ok((on?, off?))
}

fn pad(padding: usize) -> ConvParams {
    ConvParams {
        padding,
        ..Default::default()
    }
}

#[test]
fn forward_and_gradients_match_im2col_in_f64() -> Result<()> {
    // Partial tiles at the right and bottom edges, paddings 0, 1 and 2. The weight gradient
    // takes the Winograd kernel only with 2^21 or more tiles · cin · cout (the first case).
    for (n, cin, (h, w), cout, padding, weight_grad) in [
        (2, 128, (35, 33), 128, 1, true),
        (1, 64, (40, 38), 48, 0, false),
        (2, 64, (22, 26), 64, 2, false),
    ] {
        let x = tensor(&[n, cin, h, w], 1, DType::F64);
        let wt = (tensor(&[cout, cin, 3, 3], 2, DType::F64) * 0.1)?;
        let b = tensor(&[cout], 3, DType::F64);
        let p = pad(padding);
        let run = || -> Result<Vec<Tensor>> {
            let (xv, wv) = (Var::from_tensor(&x)?, Var::from_tensor(&wt)?);
            let y = conv2d_relu(xv.as_tensor(), wv.as_tensor(), Some(&b), p)?;
            let r = tensor(y.dims(), 4, DType::F64);
            let grads = (&y * &r)?.sum_all()?.backward()?;
            Ok(vec![
                y,
                grads.get(xv.as_tensor()).expect("dx").clone(),
                grads.get(wv.as_tensor()).expect("dw").clone(),
            ])
        };
        let (on, off) = both(run)?;
        for (what, a, b) in [
            ("y", &on[0], &off[0]),
            ("dx", &on[1], &off[1]),
            ("dw", &on[2], &off[2]),
        ] {
            let d = rel_diff(a, b);
            assert!(d <= 1e-13, "{cin}->{cout} {h}x{w} p{padding} {what}: {d:e}");
        }
        // What went through the other kernel differs in the last bits.
        assert!(rel_diff(&on[0], &off[0]) > 0.0);
        assert!(rel_diff(&on[1], &off[1]) > 0.0);
        assert_eq!(rel_diff(&on[2], &off[2]) > 0.0, weight_grad);
    }
    Ok(())
}

#[test]
fn input_gradient_and_transposed_convolution_match_im2col() -> Result<()> {
    // 33 columns: below 32, 48 channels are too few for the Winograd kernel.
    let g = tensor(&[2, 64, 27, 33], 11, DType::F64);
    let w = tensor(&[64, 48, 3, 3], 12, DType::F64);
    let (on, off) = both(|| Ok(conv2d_input_grad(&g, &w, (27, 33), pad(1))?))?;
    assert_eq!(on.dims(), [2, 48, 27, 33]);
    assert!(rel_diff(&on, &off) <= 1e-13 && rel_diff(&on, &off) > 0.0);
    // A stride-1 transposed convolution (in, out) = (64, 48) is that same input gradient.
    let (on, off) = both(|| Ok(conv_transpose2d(&g, &w, None, pad(1), 0)?))?;
    assert_eq!(on.dims(), [2, 48, 27, 33]);
    assert!(rel_diff(&on, &off) <= 1e-13 && rel_diff(&on, &off) > 0.0);
    Ok(())
}

/// The same values whatever the thread count: one and three threads split the work differently
/// (tasks of tile-row blocks, or one block at a time with its phases in parallel) and must give
/// bit-identical results. The second case has an output only 6 rows high (two tile rows, the
/// second partial).
#[test]
fn results_do_not_depend_on_the_thread_count() -> Result<()> {
    let _guard = SWITCH.lock().unwrap_or_else(|e| e.into_inner());
    set_winograd(true);
    for (n, cin, (h, w), cout) in [(2, 128, (35, 33), 128), (4, 64, (6, 40), 64)] {
        let x = tensor(&[n, cin, h, w], 41, DType::F32);
        let wt = (tensor(&[cout, cin, 3, 3], 42, DType::F32) * 0.1)?;
        let run = || -> Result<Vec<Tensor>> {
            let (xv, wv) = (Var::from_tensor(&x)?, Var::from_tensor(&wt)?);
            let y = conv2d(xv.as_tensor(), wv.as_tensor(), None, pad(1))?;
            let r = tensor(y.dims(), 43, DType::F32);
            let grads = (&y * &r)?.sum_all()?.backward()?;
            Ok(vec![
                y,
                grads.get(xv.as_tensor()).expect("dx").clone(),
                grads.get(wv.as_tensor()).expect("dw").clone(),
            ])
        };
        let reference = run()?;
        for threads in [1, 3] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()?;
            let other = pool.install(run)?;
            for (a, b) in reference.iter().zip(&other) {
                assert_eq!(
                    rel_diff(a, b),
                    0.0,
                    "{cin}->{cout} {h}x{w}, {threads} threads"
                );
            }
        }
    }
    Ok(())
}

#[test]
fn f32_error_is_bounded() -> Result<()> {
    // A head-sized layer: 128 -> 64 channels at 32x32, against the f64 result.
    let x = tensor(&[1, 128, 32, 32], 21, DType::F64);
    let w = (tensor(&[64, 128, 3, 3], 22, DType::F64) * 0.05)?;
    let exact = conv2d(&x, &w, None, pad(1))?;
    let (x32, w32) = (x.to_dtype(DType::F32)?, w.to_dtype(DType::F32)?);
    let (on, off) = both(|| Ok(conv2d(&x32, &w32, None, pad(1))?))?;
    let (e_on, e_off) = (rel_diff(&on, &exact), rel_diff(&off, &exact));
    // Measured: 8.9e-6 and 4.7e-7 (F(4x4, 3x3) with the points 0, ±1, ±2 loses about four
    // bits to the transforms' cancellations).
    assert!(e_on <= 1.5e-5, "Winograd f32 error {e_on:e}");
    assert!(e_off <= 1e-6, "im2col f32 error {e_off:e}");
    assert!(e_on > 4.0 * e_off, "the two runs used the same kernel");
    Ok(())
}

#[test]
fn shapes_it_does_not_serve_run_im2col() -> Result<()> {
    // Too few channels, a stride, a dilation, 1x1, more channels than 4x the tiles, too
    // narrow, too little work, narrower than 32 with fewer than 64 channels one way: the switch
    // changes nothing, bit for bit. (64 -> 64 at 32x32 is served: 64 tiles · 64 · 64 = 2^18.)
    for (cin, cout, hw, k, stride, dilation) in [
        (8, 64, 32, 3, 1, 1),
        (64, 8, 32, 3, 1, 1),
        (64, 64, 32, 3, 2, 1),
        (64, 64, 32, 3, 1, 2),
        (64, 64, 32, 1, 1, 1),
        (288, 288, 32, 3, 1, 1),
        (160, 160, 12, 3, 1, 1),
        (32, 32, 32, 3, 1, 1),
        (48, 160, 28, 3, 1, 1),
    ] {
        let x = tensor(&[1, cin, hw, hw], 31, DType::F32);
        let w = tensor(&[cout, cin, k, k], 32, DType::F32);
        let p = ConvParams {
            padding: k / 2 * dilation,
            stride,
            dilation,
            groups: 1,
        };
        let (on, off) = both(|| Ok(conv2d(&x, &w, None, p)?))?;
        assert_eq!(
            rel_diff(&on, &off),
            0.0,
            "{cin}->{cout} {k}x{k} s{stride} d{dilation}"
        );
    }
    Ok(())
}

/// The bits of every value (f32 or f64 as f64).
fn bits(t: &Tensor) -> Result<Vec<u64>> {
    Ok(t.flatten_all()?
        .to_dtype(DType::F64)?
        .to_vec1::<f64>()?
        .iter()
        .map(|v| v.to_bits())
        .collect())
}

#[test]
fn a_kept_transformed_weight_gives_the_same_convolution_bit_for_bit() -> Result<()> {
    let _guard = SWITCH.lock().unwrap_or_else(|e| e.into_inner());
    set_winograd(true);
    for dtype in [DType::F32, DType::F64] {
        // 64 channels at 40x36 with partial tiles: the Winograd kernel (36 · 48 · 64 values of
        // transformed weight); and a 1x1 convolution, which keeps nothing.
        let (cin, cout) = (64, 48);
        let x = tensor(&[2, cin, 40, 36], 11, dtype);
        let w = (tensor(&[cout, cin, 3, 3], 12, dtype) * 0.1)?;
        let b = tensor(&[cout], 13, dtype);
        let cache = Arc::new(WeightCache::new());
        assert!(cache.is_empty());
        for relu in [false, true] {
            let direct = if relu {
                conv2d_relu(&x, &w, Some(&b), pad(1))?
            } else {
                conv2d(&x, &w, Some(&b), pad(1))?
            };
            for _ in 0..2 {
                let kept = conv2d_cached(&x, &w, Some(&b), pad(1), relu, &cache)?;
                assert!(bits(&kept)? == bits(&direct)?, "{dtype:?}, relu {relu}");
                assert_eq!(cache.len(), 36 * cout * cin);
            }
        }
        let pointwise = (tensor(&[cout, cin, 1, 1], 14, dtype) * 0.1)?;
        let cache = Arc::new(WeightCache::new());
        let kept = conv2d_cached(&x, &pointwise, None, pad(0), false, &cache)?;
        assert!(bits(&kept)? == bits(&conv2d(&x, &pointwise, None, pad(0))?)?);
        assert!(cache.is_empty());

        // The layer: its copy for inference keeps the transform after the first call and
        // gives the layer's output.
        let layer = Conv2d::from_tensors(
            w.clone(),
            Some(b.clone()),
            Conv2dConfig {
                padding: 1,
                ..Default::default()
            },
        );
        let copy = layer.for_inference()?;
        assert_eq!(copy.cached_values(), 0);
        assert!(bits(&copy.forward_relu(&x)?)? == bits(&layer.forward_relu(&x)?)?);
        assert_eq!(copy.cached_values(), 36 * cout * cin);
        assert_eq!(layer.cached_values(), 0);
    }
    Ok(())
}
