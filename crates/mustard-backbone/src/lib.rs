//! Backbones and necks of mustard's shared trunk.
//!
//! - [`ResNet`] (ResNet-18/34/50 in the torchvision/timm layout, plus a narrow `tiny` preset)
//!   returns the named [`FeatureMaps`] C2..C5 at strides 4/8/16/32
//!   (He et al., "Deep Residual Learning", <https://arxiv.org/abs/1512.03385>);
//! - [`Fpn`] builds P2..P5 and an optional fused stride-4 map (Lin et al., "Feature Pyramid
//!   Networks", <https://arxiv.org/abs/1612.03144>; the fusion of Panoptic FPN), and
//!   [`DeconvNeck`] is CenterNet's three transposed convolutions to stride 4;
//! - [`weights`] loads torchvision/timm safetensors checkpoints by their key names, from a path
//!   or from the Hugging Face hub (`hf:timm/resnet18.a1_in1k`) through the local cache.
//!
//! The crate depends only on `mustard-core`.
#![warn(missing_docs)]
#![forbid(unsafe_code)]

mod error;
mod neck;
mod resnet;
pub mod weights;

pub use error::{Error, Result};
pub use neck::{DeconvConfig, DeconvNeck, Fpn, FpnConfig, Pyramid};
pub use resnet::{BlockKind, FeatureMaps, ResNet, ResNetConfig, ResNetPreset};

/// Counts the trainable parameters of a model built in `varmap` (BatchNorm running statistics
/// excluded).
pub fn parameter_count(varmap: &mustard_core::candle_nn::VarMap) -> usize {
    mustard_core::optim::trainable_vars(varmap)
        .iter()
        .map(|(_, v)| v.elem_count())
        .sum()
}
