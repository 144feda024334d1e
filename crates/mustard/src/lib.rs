//! mustard: one model that detects objects, segments scenes, estimates human pose and depth,
//! and classifies images, trained, evaluated and deployed from Rust.
//!
//! This is the thin orchestration crate. It will assemble models from a typed config (backbone,
//! neck and any subset of heads), run training, evaluation and prediction, and the MCN
//! (<https://arxiv.org/abs/2108.05060>) and MuST (<https://arxiv.org/abs/2108.11353>) pipelines.
//! Today it re-exports the crates that exist, so that the command line depends on this crate
//! alone.
#![warn(missing_docs)]

pub use mustard_backbone as backbone;
pub use mustard_core as core;
pub use mustard_data as data;
pub use mustard_eval as eval;
pub use mustard_heads as heads;
