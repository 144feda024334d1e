//! Pseudo-labelling for MuST ("Multi-Task Self-Training for Learning General Representations",
//! <https://arxiv.org/abs/2108.11353>).
//!
//! - [`labels`] turns teacher outputs into pseudo-labels (SPEC §6): soft classes with an optional
//!   temperature, boxes and people above a score threshold, per-pixel argmax with an ignore mask
//!   below a confidence threshold, and depth made relative; [`labels::Stats`] counts what was
//!   kept.
//! - [`store`] keeps them on disk in fixed-size shards, each written atomically with a checksum
//!   under a manifest, so that a killed run loses at most the shard in flight and `--shard i/N`
//!   workers can share one store.
//! - [`PseudoSource`] pairs the unlabelled images with their labels as a
//!   [`Source`](mustard_data::Source), so the student trains through the same loader as
//!   labelled data.
#![warn(missing_docs)]
#![forbid(unsafe_code)]

pub mod labels;
mod source;
pub mod store;

use std::path::{Path, PathBuf};

pub use labels::{ImageLabels, PseudoBox, Stats, Thresholds};
pub use source::{open_images, PseudoSource};
pub use store::{Manifest, ShardSpec, ShardState, Store, Teacher};

/// The result type of mustard-pseudo.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong making or reading pseudo-labels. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An error of the core crate.
    #[error(transparent)]
    Core(#[from] mustard_core::Error),
    /// An error reading the images.
    #[error(transparent)]
    Data(#[from] mustard_data::Error),
    /// A store that is incomplete, corrupt or made for something else.
    #[error("{path}: {reason}")]
    Store {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A file that cannot be read or written.
    #[error("{path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error (the next link of the error's chain).
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        Error::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

impl From<mustard_core::candle_core::Error> for Error {
    fn from(e: mustard_core::candle_core::Error) -> Self {
        Error::Core(e.into())
    }
}
