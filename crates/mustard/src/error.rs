use std::path::PathBuf;

/// The result type of the orchestration crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong when training, evaluating or predicting.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// From the core crate.
    #[error(transparent)]
    Core(#[from] mustard_core::Error),
    /// From candle.
    #[error(transparent)]
    Candle(#[from] mustard_core::candle_core::Error),
    /// From the backbone crate.
    #[error(transparent)]
    Backbone(#[from] mustard_backbone::Error),
    /// From the data crate.
    #[error(transparent)]
    Data(#[from] mustard_data::Error),
    /// From the eval crate.
    #[error(transparent)]
    Eval(#[from] mustard_eval::Error),

    /// An error of the pseudo-label store.
    #[error(transparent)]
    Pseudo(#[from] mustard_pseudo::Error),

    /// A configuration that cannot work.
    #[error("{what}: {reason}")]
    Config {
        /// The setting.
        what: String,
        /// Why.
        reason: String,
    },

    /// A config or checkpoint file that cannot be read.
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },

    /// Training diverged.
    #[error("the {task} loss is {value} at step {step}; training stopped and the last checkpoint ({checkpoint}) is unchanged — lower the learning rate or check the labels")]
    NonFiniteLoss {
        /// The task (or `total`).
        task: String,
        /// The value.
        value: f32,
        /// The optimiser step.
        step: u64,
        /// The last good checkpoint.
        checkpoint: String,
    },
}

impl Error {
    pub(crate) fn config(what: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Config {
            what: what.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn file(path: impl Into<PathBuf>, reason: impl std::fmt::Display) -> Self {
        Error::File {
            path: path.into(),
            reason: reason.to_string(),
        }
    }
}
