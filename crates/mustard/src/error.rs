use std::path::PathBuf;

/// The result type of the orchestration crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong when training, evaluating or predicting.
///
/// Messages name the thing (file, setting, task, shapes) and never repeat their cause: the
/// cause is the next link of [`std::error::Error::source`], which the command line prints after
/// a `: `.
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

    /// Settings that cannot work, every problem of one validation pass.
    #[error("{}", problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Config {
        /// Each setting and why it cannot work.
        problems: Vec<Problem>,
    },

    /// A file that cannot be read or written.
    #[error("{path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },

    /// A config file that is not valid TOML or has unknown or missing settings.
    #[error("{path}")]
    Toml {
        /// The file.
        path: PathBuf,
        /// The parser's error.
        #[source]
        source: TomlError,
    },

    /// A file that exists but is not what it should be (no checkpoint, wrong layout…).
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// A tensor or map that does not have the shape its consumer needs.
    #[error("{what}: shape {found:?}, expected {expected}")]
    Shape {
        /// The tensor or map.
        what: String,
        /// Its shape.
        found: Vec<usize>,
        /// The shape needed, in words.
        expected: String,
    },

    /// A process of a data-parallel run failed before training (its data, its device): every
    /// process ends with its error.
    #[error("{0}")]
    Process(String),

    /// A training image could not be read mid-run.
    #[error("{reason}\ntraining stopped before step {step}; {resume}")]
    DataStopped {
        /// The loader's error (the file and why).
        reason: String,
        /// The step that needed the image.
        step: u64,
        /// Where the run resumes from.
        resume: String,
    },

    /// Training diverged.
    #[error("the {task} loss is {value} at step {step}; training stopped and the last checkpoint ({checkpoint}) is unchanged — lower the learning rate or check the labels")]
    NonFiniteLoss {
        /// The task (or `gradient norm`).
        task: String,
        /// The value.
        value: f32,
        /// The optimiser step.
        step: u64,
        /// The last good checkpoint.
        checkpoint: String,
    },
}

/// A TOML parse or write error, trimmed of the parser's trailing newline.
#[derive(Debug)]
pub struct TomlError(pub String);

impl std::fmt::Display for TomlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0.trim_end())
    }
}

impl std::error::Error for TomlError {}

/// One setting that cannot work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The setting, e.g. `train.input_size`.
    pub what: String,
    /// Why.
    pub reason: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.what, self.reason)
    }
}

/// Collects every problem of a validation pass before failing.
#[derive(Debug, Default)]
pub(crate) struct Problems(Vec<Problem>);

impl Problems {
    /// Records a problem.
    pub(crate) fn push(&mut self, what: impl Into<String>, reason: impl Into<String>) {
        self.0.push(Problem {
            what: what.into(),
            reason: reason.into(),
        });
    }

    /// Records a problem when `bad`.
    pub(crate) fn check(&mut self, bad: bool, what: &str, reason: impl FnOnce() -> String) {
        if bad {
            self.push(what, reason());
        }
    }

    /// Adds the problems of a nested validation.
    pub(crate) fn extend(&mut self, result: Result<()>) -> Result<()> {
        match result {
            Ok(()) => Ok(()),
            Err(Error::Config { problems }) => {
                self.0.extend(problems);
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// `Ok` when nothing was recorded, else every problem at once.
    pub(crate) fn finish(self) -> Result<()> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(Error::Config { problems: self.0 })
        }
    }
}

impl Error {
    /// One setting that cannot work.
    pub(crate) fn config(what: impl Into<String>, reason: impl Into<String>) -> Self {
        let mut p = Problems::default();
        p.push(what, reason);
        Error::Config { problems: p.0 }
    }

    /// A file that cannot be read or written.
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// A file that is not what it should be.
    pub(crate) fn file(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Error::File {
            path: path.into(),
            reason: reason.into(),
        }
    }

    /// A TOML file that cannot be parsed or written.
    pub(crate) fn toml(path: impl Into<PathBuf>, error: impl std::fmt::Display) -> Self {
        Error::Toml {
            path: path.into(),
            source: TomlError(error.to_string()),
        }
    }
}
