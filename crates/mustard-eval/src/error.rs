use std::path::PathBuf;

/// The result type of mustard-eval.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in mustard-eval. Each variant names the file (or the in-memory
/// source), the record and the field involved, so that the message alone tells what to fix.
///
/// Records are numbered from 0, as in the JSON arrays they come from.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read.
    #[error("{path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error (the next link of the error's chain).
        #[source]
        source: std::io::Error,
    },

    /// A document is not valid JSON, or does not have the expected structure.
    #[error("{origin}: invalid JSON at {location} (line {line}, column {column}): {message}")]
    Json {
        /// The file, or `ground truth` / `results` for in-memory input.
        origin: String,
        /// Where in the document, e.g. `annotations[12].bbox` or `[7].score`.
        location: String,
        /// 1-based line of the error.
        line: usize,
        /// 1-based column (in bytes) of the error.
        column: usize,
        /// What is wrong.
        message: String,
    },

    /// A record parsed but holds a value the evaluation cannot use.
    #[error("{origin}: {record}: `{field}` {reason}")]
    InvalidRecord {
        /// The file, or `ground truth` / `results` for in-memory input.
        origin: String,
        /// The record, e.g. `annotation 12 (id 345)` or `result 7`.
        record: String,
        /// The field.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },

    /// A result refers to an image that is not in the ground truth.
    #[error("{origin}: result {index}: image_id {image_id} is not an image of the ground truth")]
    UnknownImage {
        /// The results file.
        origin: String,
        /// The record's index in the results array.
        index: usize,
        /// The unknown image id.
        image_id: i64,
    },

    /// A result refers to a category that is not in the ground truth.
    #[error(
        "{origin}: result {index}: category_id {category_id} is not a category of the ground truth"
    )]
    UnknownCategory {
        /// The results file.
        origin: String,
        /// The record's index in the results array.
        index: usize,
        /// The unknown category id.
        category_id: i64,
    },

    /// A result has a NaN or infinite score.
    #[error("{origin}: result {index}: score {score} is not a finite number")]
    NonFiniteScore {
        /// The results file.
        origin: String,
        /// The record's index in the results array.
        index: usize,
        /// The score.
        score: f64,
    },

    /// Two images, categories or annotations of the ground truth share an id.
    #[error("{origin}: {what} id {id} is used twice ({what}s {first} and {second})")]
    DuplicateId {
        /// The ground-truth file.
        origin: String,
        /// `image`, `category` or `annotation`.
        what: &'static str,
        /// The repeated id.
        id: i64,
        /// Index of the first record with this id.
        first: usize,
        /// Index of the second record with this id.
        second: usize,
    },

    /// The first result has none of the fields that tell what kind of results the file holds.
    #[error("{origin}: result 0 has none of `bbox`, `segmentation` and `keypoints`")]
    UnknownResultKind {
        /// The results file.
        origin: String,
    },

    /// Evaluation parameters that cannot be used.
    #[error("invalid evaluation parameters: {reason}")]
    InvalidParams {
        /// What is wrong.
        reason: String,
    },

    /// A run-length encoded mask or a polygon that cannot be converted.
    #[error("invalid mask: {reason}")]
    InvalidMask {
        /// What is wrong.
        reason: String,
    },

    /// Input of a dense metric (segmentation, depth, classification) that does not fit.
    #[error("{op}: {reason}")]
    InvalidInput {
        /// The function, e.g. `ConfusionMatrix::update`.
        op: &'static str,
        /// What is wrong.
        reason: String,
    },
}

impl Error {
    pub(crate) fn mask(reason: impl Into<String>) -> Self {
        Error::InvalidMask {
            reason: reason.into(),
        }
    }

    pub(crate) fn params(reason: impl Into<String>) -> Self {
        Error::InvalidParams {
            reason: reason.into(),
        }
    }

    pub(crate) fn input(op: &'static str, reason: impl Into<String>) -> Self {
        Error::InvalidInput {
            op,
            reason: reason.into(),
        }
    }
}
