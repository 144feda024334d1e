use std::path::PathBuf;

/// The result type of mustard-backbone.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong when building a backbone or fetching its weights.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An error of the core crate (shapes, checkpoint contents…).
    #[error(transparent)]
    Core(#[from] mustard_core::Error),

    /// An error raised inside candle.
    #[error(transparent)]
    Candle(#[from] mustard_core::candle_core::Error),

    /// A weight source string that is neither a path nor `hf:<repo>[:<file>]`.
    #[error("invalid weight source {input:?}: {reason}")]
    InvalidSource {
        /// What the user wrote.
        input: String,
        /// Why it is invalid.
        reason: String,
    },

    /// The file is not in the hub cache and downloading is off or failed.
    #[error(
        "hf:{repo}:{file} is not in the cache at {cache} and could not be downloaded: {reason}"
    )]
    Hub {
        /// The repository id.
        repo: String,
        /// The file in the repository.
        file: String,
        /// The cache folder searched.
        cache: PathBuf,
        /// Why the download did not happen.
        reason: String,
    },

    /// A local weight file does not exist.
    #[error("weight file {path} does not exist")]
    NotFound {
        /// The path.
        path: PathBuf,
    },

    /// Training was asked of a copy made for inference.
    #[error(
        "this {what} is a copy made for inference (for_inference), which cannot train: train \
         the model it was made from"
    )]
    InferenceOnly {
        /// The network.
        what: &'static str,
    },

    /// A configuration value is out of range.
    #[error("{what}: {reason}")]
    InvalidConfig {
        /// The setting.
        what: &'static str,
        /// Why it is invalid.
        reason: String,
    },
}
