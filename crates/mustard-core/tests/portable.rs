//! Every custom op's portable path (the composed candle ops that CUDA and Metal run, selected
//! on the CPU with `Kernels::Portable`) against its CPU kernel, forward and backward, in f64,
//! where rounding cannot hide a real difference. (Its own test binary: the kernels are a
//! process-wide setting.)

mod parity;

use candle_core::DType;
use parity::Other;

#[test]
fn every_custom_op_has_the_same_values_and_gradients_on_both_paths() {
    parity::every_custom_op(&Other::Portable, DType::F64, 1.0);
}
