//! The layers every model uses, defined once.
//!
//! [`Conv2d`] and [`ConvTranspose2d`] run the CPU convolution engine of [`crate::ops::conv`]
//! (forward, input and weight gradients), so the backbone and the heads get it without change;
//! the other layers delegate to candle. Constructors take a `VarBuilder` whose key names mirror
//! PyTorch checkpoints (`weight`, `bias`, `running_mean`, `running_var`).

mod batchnorm;
mod conv;
mod linear;

pub use batchnorm::{BatchNorm2d, BatchNorm2dConfig};
pub use conv::{Conv2d, Conv2dConfig, ConvTranspose2d, ConvTranspose2dConfig};
pub use linear::Linear;

/// A tensor's values as they are now, in storage of its own and without gradients: what every
/// layer's `for_inference` holds, so that a later in-place change of the variable (an
/// optimizer step, a loaded checkpoint) does not reach the copy.
pub(crate) fn snapshot(t: &candle_core::Tensor) -> crate::Result<candle_core::Tensor> {
    Ok(t.copy()?.detach())
}

/// PyTorch's default initialisation of conv and linear layers (`kaiming_uniform_(a=√5)` for the
/// weight, and the bias): uniform in ±1/√fan_in.
pub(crate) fn default_init(fan_in: usize) -> candle_nn::Init {
    let bound = 1.0 / (fan_in.max(1) as f64).sqrt();
    candle_nn::Init::Uniform {
        lo: -bound,
        up: bound,
    }
}
