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
