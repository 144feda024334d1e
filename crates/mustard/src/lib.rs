//! mustard: one model that detects objects, segments scenes, estimates human pose and depth,
//! and classifies images, trained, evaluated and deployed from Rust.
//!
//! This is the thin orchestration crate: it will assemble models from a typed config (backbone,
//! neck and any subset of heads), run training, evaluation and prediction, and the MCN and MuST
//! pipelines. Nothing is implemented yet; the building blocks so far live in [`mustard_core`].
#![warn(missing_docs)]

pub use mustard_core as core;
