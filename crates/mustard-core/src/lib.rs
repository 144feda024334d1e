//! Tensors and kernels for mustard.
//!
//! Everything the models need that candle 0.11 lacks or gets wrong, defined once:
//!
//! - [`Error`] / [`Result`], and [`DeviceSpec`] to pick a device from a typed value;
//! - custom ops with a correct backward pass: [`ops::max_pool2d`] (kernel, stride and padding),
//!   [`ops::upsample_bilinear2d`] (PyTorch `align_corners=False`) and
//!   [`ops::upsample_nearest2d`];
//! - the layers every model uses ([`nn::Conv2d`], [`nn::ConvTranspose2d`], [`nn::BatchNorm2d`],
//!   [`nn::Linear`]), so the convolution engine can be replaced in one place;
//! - CenterNet heatmap utilities ([`heatmap`]): 3x3 NMS, top-K, `gaussian_radius` and Gaussian
//!   drawing ("Objects as Points", <https://arxiv.org/abs/1904.07850>);
//! - losses ([`loss`]): penalty-reduced focal loss, RegL1, cross-entropy with ignore index,
//!   soft-target cross-entropy;
//! - optimisation ([`optim`]): SGD with momentum/Nesterov, AdamW, parameter groups, saveable
//!   state, learning-rate schedules, gradient clipping and weight EMA.
#![warn(missing_docs)]
#![warn(clippy::undocumented_unsafe_blocks)]

mod device;
pub mod dist;
mod error;
pub mod heatmap;
pub mod io;
pub mod loss;
pub mod memory;
pub mod nn;
pub mod onnx;
pub mod ops;
pub mod optim;
pub mod rng;

pub use device::{device_memory_in_use_mib, DeviceSpec};
pub use error::{chain as error_chain, Error, Result};

/// Re-exported so that dependent crates use the same candle as the core.
pub use candle_core;
/// Re-exported so that dependent crates use the same candle-nn as the core.
pub use candle_nn;
