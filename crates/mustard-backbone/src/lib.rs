//! Backbones and necks of mustard's shared trunk.
//!
//! This crate will hold ResNet-18/34/50 (torchvision/timm layout, plus a `tiny` preset) that
//! return the named feature maps C2..C5, the FPN and CenterNet deconv necks, and the loading of
//! torchvision/timm safetensors checkpoints by their key names. It depends only on
//! `mustard-core`. Nothing is implemented yet.
#![warn(missing_docs)]
