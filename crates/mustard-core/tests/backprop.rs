//! Gradient accumulation of the patched candle-core (`third_party/candle-core/PATCHED.md`): the
//! first gradient reaching a node is stored, the following ones are added.

use mustard_core::candle_core::{Device, Tensor, Var};

#[test]
fn fan_in_transpose_and_broadcast_gradients_are_summed() {
    let dev = Device::Cpu;
    let x = Var::from_tensor(&Tensor::new(&[[1f64, -2.0, 3.0], [0.5, 4.0, -1.0]], &dev).unwrap())
        .unwrap();
    let b = Var::from_tensor(&Tensor::new(&[10f64, 20.0, 30.0], &dev).unwrap()).unwrap();
    let xt = x.as_tensor();
    // f = Σ x² + Σ 3x + Σ (xᵀ)·2 + Σ (x + b)  (x used four times, b broadcast over rows)
    let f = (xt.sqr().unwrap().sum_all().unwrap()
        + (xt * 3.0).unwrap().sum_all().unwrap()
        + (xt.t().unwrap() * 2.0).unwrap().sum_all().unwrap()
        + xt.broadcast_add(b.as_tensor()).unwrap().sum_all().unwrap())
    .unwrap();
    let grads = f.backward().unwrap();
    // ∂f/∂x = 2x + 3 + 2 + 1; ∂f/∂b = number of rows.
    let gx = grads.get(xt).unwrap().to_vec2::<f64>().unwrap();
    assert_eq!(gx, vec![vec![8.0, 2.0, 12.0], vec![7.0, 14.0, 4.0]]);
    let gb = grads.get(b.as_tensor()).unwrap().to_vec1::<f64>().unwrap();
    assert_eq!(gb, vec![2.0, 2.0, 2.0]);
    // The stored gradients are contiguous.
    assert!(grads.get(xt).unwrap().is_contiguous());
}

#[test]
fn a_gradient_used_once_is_returned_as_computed() {
    let dev = Device::Cpu;
    let x = Var::from_tensor(&Tensor::new(&[[1f32, 2.0], [3.0, 4.0]], &dev).unwrap()).unwrap();
    // Only a transpose between x and the loss: the gradient of x is a transposed view made
    // contiguous.
    let w = Tensor::new(&[[1f32, 10.0], [100.0, 1000.0]], &dev).unwrap();
    let f = (x.as_tensor().t().unwrap() * &w)
        .unwrap()
        .sum_all()
        .unwrap();
    let g = f.backward().unwrap();
    let gx = g.get(x.as_tensor()).unwrap();
    assert!(gx.is_contiguous());
    assert_eq!(
        gx.to_vec2::<f32>().unwrap(),
        vec![vec![1.0, 100.0], vec![10.0, 1000.0]]
    );
}

/// Narrowed parts of one tensor, overlapping, along a middle dimension, with the tensor also
/// used whole before and after them: each part's gradient lands in its place, the whole use's
/// everywhere.
#[test]
fn narrowed_parts_add_their_gradients_in_place() {
    let dev = Device::Cpu;
    let x = Var::from_tensor(
        &Tensor::arange(0f64, 24.0, &dev)
            .unwrap()
            .reshape((2, 4, 3))
            .unwrap(),
    )
    .unwrap();
    let xt = x.as_tensor();
    let weights = Tensor::arange(1f64, 25.0, &dev)
        .unwrap()
        .reshape((2, 4, 3))
        .unwrap();
    // f = Σ x·w (whole) + Σ 2·x[:, 0..2] + Σ x[:, 1..4]² + Σ 10·x[:, 3..4]
    let whole = (xt * &weights).unwrap().sum_all().unwrap();
    let a = (xt.narrow(1, 0, 2).unwrap() * 2.0)
        .unwrap()
        .sum_all()
        .unwrap();
    let b = xt
        .narrow(1, 1, 3)
        .unwrap()
        .sqr()
        .unwrap()
        .sum_all()
        .unwrap();
    let c = (xt.narrow(1, 3, 1).unwrap() * 10.0)
        .unwrap()
        .sum_all()
        .unwrap();
    let f = (((a + b).unwrap() + whole).unwrap() + c).unwrap();
    let grads = f.backward().unwrap();
    let gx = grads.get(xt).unwrap();
    assert!(gx.is_contiguous());
    let xv = xt.flatten_all().unwrap().to_vec1::<f64>().unwrap();
    let got = gx.flatten_all().unwrap().to_vec1::<f64>().unwrap();
    for (i, (&g, &v)) in got.iter().zip(&xv).enumerate() {
        let row = (i / 3) % 4;
        let mut want = (i + 1) as f64;
        if row < 2 {
            want += 2.0;
        }
        if row >= 1 {
            want += 2.0 * v;
        }
        if row == 3 {
            want += 10.0;
        }
        assert_eq!(g, want, "element {i}");
    }
    // The input itself is untouched by the in-place accumulation.
    assert_eq!(
        xt.flatten_all().unwrap().to_vec1::<f64>().unwrap(),
        (0..24).map(f64::from).collect::<Vec<_>>()
    );
}

/// `x` and `a` enter an addition, whose backward stores one tensor as the gradient of both;
/// a narrow of `x` then adds to `x`'s gradient, which must not write into `a`'s. Both orders of
/// the terms, so that either consumer's gradient may arrive first.
#[test]
fn a_narrow_does_not_write_into_a_gradient_it_shares() {
    let dev = Device::Cpu;
    for narrow_first in [false, true] {
        let x = Var::from_tensor(&Tensor::new(&[1f32, 2.0, 3.0, 4.0], &dev).unwrap()).unwrap();
        let a = Var::from_tensor(&Tensor::new(&[0f32, 0.0, 0.0, 0.0], &dev).unwrap()).unwrap();
        let c = Tensor::new(&[5f32, 6.0, 7.0, 8.0], &dev).unwrap();
        let (xt, at) = (x.as_tensor(), a.as_tensor());
        let sum = ((at + xt).unwrap() * &c).unwrap().sum_all().unwrap();
        let part = xt.narrow(0, 1, 2).unwrap().sum_all().unwrap();
        let f = if narrow_first { part + sum } else { sum + part }.unwrap();
        let grads = f.backward().unwrap();
        assert_eq!(
            grads.get(xt).unwrap().to_vec1::<f32>().unwrap(),
            vec![5.0, 7.0, 8.0, 8.0],
            "narrow first: {narrow_first}"
        );
        assert_eq!(
            grads.get(at).unwrap().to_vec1::<f32>().unwrap(),
            vec![5.0, 6.0, 7.0, 8.0],
            "narrow first: {narrow_first}"
        );
    }
}
