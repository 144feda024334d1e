use std::path::PathBuf;

/// The result type of mustard-data.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong reading, checking or writing a dataset. Every variant names the file and,
/// where there is one, the record.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An error of the core crate.
    #[error(transparent)]
    Core(#[from] mustard_core::Error),

    /// A file that is not valid JSON, or whose top level is not a COCO object.
    #[error("{path}: {reason}")]
    Json {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },

    /// A record that does not have the expected fields or values.
    #[error("{path}: {section}[{index}]{}: {reason}", id.map(|i| format!(" (id {i})")).unwrap_or_default())]
    Record {
        /// The file.
        path: PathBuf,
        /// `images`, `annotations` or `categories`.
        section: &'static str,
        /// Position in the section.
        index: usize,
        /// The record's `id`, when it has one.
        id: Option<u64>,
        /// What is wrong.
        reason: String,
    },

    /// An image, label map or depth map that cannot be decoded.
    #[error("{path}: {reason}")]
    Image {
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

    /// A sample's file that passed the header check but cannot be read or decoded when a run
    /// loads it.
    #[error("{reason} (pass --skip-bad to leave out images that cannot be read)")]
    Unreadable {
        /// The file and what is wrong with it.
        reason: String,
    },

    /// A configuration value out of range.
    #[error("{what}: {reason}")]
    InvalidConfig {
        /// The setting.
        what: &'static str,
        /// Why it is invalid.
        reason: String,
    },

    /// The dataset has bad records and the caller did not ask to skip them.
    #[error("{path}: {count} bad record(s); run `mustard data check` for the full report, or pass --skip-bad to train without them\n{report}")]
    BadDataset {
        /// The dataset file.
        path: PathBuf,
        /// Number of problems.
        count: usize,
        /// The first problems, one per line.
        report: String,
    },
}

impl Error {
    /// Whether this says that a file cannot be read or decoded (rather than that a record,
    /// its labels or a setting are wrong): what `--skip-bad` leaves out mid-run.
    pub fn is_unreadable(&self) -> bool {
        matches!(self, Error::Image { .. } | Error::Io { .. })
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn config(what: &'static str, reason: impl Into<String>) -> Self {
        Error::InvalidConfig {
            what,
            reason: reason.into(),
        }
    }
}
