//! mustard: one model that detects objects, segments scenes, estimates human pose and depth,
//! and classifies images, trained, evaluated and deployed from Rust.
//!
//! This is the thin orchestration crate: it assembles a [`MultiTaskModel`] (backbone preset +
//! neck + any subset of heads) from a typed [`Config`] saved as TOML beside every checkpoint,
//! encodes batches for it ([`targets`], with the per-task table in [`tasks`]), trains it
//! ([`Trainer`], driven by [`train`]) with exact resume, and evaluates it through mustard-eval
//! ([`evaluate`]). MultiTask-CenterNet:
//! <https://arxiv.org/abs/2108.05060>; MuST: <https://arxiv.org/abs/2108.11353>.
#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod baseline;
pub mod bench;
pub mod charts;
pub mod checkpoint;
pub mod config;
pub mod datasets;
pub mod draw;
mod error;
pub mod evaluate;
pub mod export;
pub mod init;
pub mod label_quality;
pub mod log;
pub mod mcn;
pub mod model;
pub mod must;
pub mod predict;
mod presets;
pub mod pseudo;
pub mod stats;
pub mod targets;
pub mod tasks;
pub mod train;
pub mod trainer;

pub use config::{Config, Preset};
pub use error::{Error, Problem, Result, TomlError};
pub use model::MultiTaskModel;
pub use trainer::Trainer;

pub use mustard_backbone as backbone;
pub use mustard_core as core;
pub use mustard_data as data;
pub use mustard_eval as eval;
pub use mustard_heads as heads;
pub use mustard_pseudo as pseudo_labels;
