use std::path::PathBuf;

use candle_core::Shape;

/// The result type of mustard-core.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in mustard-core. Each variant names the operation and the
/// values involved, so that the message alone tells what to fix.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An error raised inside candle.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),

    /// Two inputs of one operation have incompatible shapes.
    #[error("{op}: shape mismatch between {lhs_name} {lhs:?} and {rhs_name} {rhs:?}")]
    ShapeMismatch {
        /// The operation.
        op: &'static str,
        /// Name of the first input.
        lhs_name: &'static str,
        /// Shape of the first input.
        lhs: Shape,
        /// Name of the second input.
        rhs_name: &'static str,
        /// Shape of the second input.
        rhs: Shape,
    },

    /// An input has a shape the operation cannot take.
    #[error("{op}: {name} has shape {shape:?}, expected {expected}")]
    UnexpectedShape {
        /// The operation.
        op: &'static str,
        /// Name of the input.
        name: &'static str,
        /// Its shape.
        shape: Shape,
        /// What the operation expects, in words.
        expected: String,
    },

    /// Top-K asked for more elements than the map holds.
    #[error("{op}: k = {k} is larger than the {available} elements of a map of shape {shape:?}")]
    TopKTooLarge {
        /// The operation.
        op: &'static str,
        /// The requested number of elements.
        k: usize,
        /// The number of elements available.
        available: usize,
        /// The shape of the map.
        shape: Shape,
    },

    /// A configuration value is out of range.
    #[error("{what}: {reason}")]
    InvalidConfig {
        /// The setting, e.g. `max_pool2d padding`.
        what: &'static str,
        /// Why it is invalid.
        reason: String,
    },

    /// A collective operation between the processes of a data-parallel run failed.
    #[error("{op} between the {processes} processes failed: {reason}")]
    Collective {
        /// The operation (`all-reduce`, `broadcast`, …).
        op: &'static str,
        /// The number of processes.
        processes: usize,
        /// What went wrong.
        reason: String,
    },

    /// A launcher started several processes but this build cannot train together.
    #[error("this mustard was built without the `distributed` feature, but it was started as one of {processes} processes ({variable}={processes}); rebuild it with `cargo build --release -p mustard-cli --features distributed`, or start one process")]
    NotDistributed {
        /// The number of processes the launcher started.
        processes: usize,
        /// The environment variable that says so.
        variable: &'static str,
    },

    /// A device string could not be parsed.
    #[error("invalid device {input:?}: expected `cpu`, `cuda`, `cuda:N` or `metal`")]
    InvalidDevice {
        /// What the user wrote.
        input: String,
    },

    /// The device exists in the syntax but this build lacks its backend.
    #[error("device `{device}` needs mustard built with the `{feature}` feature (cargo build --release -p mustard-cli --features {feature})")]
    BackendUnavailable {
        /// The requested device.
        device: String,
        /// The cargo feature that enables it.
        feature: &'static str,
    },

    /// A GPU build could not find the libraries it loads when a device opens.
    #[error(
        "device `{device}` cannot be opened: {}",
        missing_gpu_libraries(missing)
    )]
    GpuLibrariesMissing {
        /// The requested device.
        device: String,
        /// The libraries not found.
        missing: Vec<&'static str>,
    },

    /// A tensor holds NaN or infinite values where finite ones are required.
    #[error("{what} is not finite ({value})")]
    NonFinite {
        /// What was checked, e.g. `loss of task detection at step 12`.
        what: String,
        /// The offending value.
        value: f64,
    },

    /// A saved state does not fit the object it is loaded into.
    #[error("{path}: {reason}")]
    State {
        /// The file.
        path: PathBuf,
        /// What does not fit: missing keys, shapes…
        reason: String,
    },

    /// A file could not be read or written.
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
    /// A shape error for an input with a wrong rank or size.
    pub(crate) fn shape(
        op: &'static str,
        name: &'static str,
        shape: &Shape,
        expected: impl Into<String>,
    ) -> Self {
        Error::UnexpectedShape {
            op,
            name,
            shape: shape.clone(),
            expected: expected.into(),
        }
    }

    /// A configuration error.
    pub(crate) fn config(what: &'static str, reason: impl Into<String>) -> Self {
        Error::InvalidConfig {
            what,
            reason: reason.into(),
        }
    }
}

/// An error and each of its causes, joined by `: ` — for messages that embed an error as text
/// (a report line), where the cause chain would otherwise be lost.
pub fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(e) = cause {
        text.push_str(": ");
        text.push_str(&e.to_string());
        cause = e.source();
    }
    text
}

/// What is missing, and where to look: the driver comes with the machine, the CUDA libraries
/// with a PyTorch install (or a CUDA toolkit).
fn missing_gpu_libraries(missing: &[&str]) -> String {
    let (driver, libraries): (Vec<&str>, Vec<&str>) =
        missing.iter().partition(|m| m.starts_with("libcuda "));
    let mut parts = Vec::new();
    if !driver.is_empty() {
        parts.push(format!(
            "{} not found (this machine has no NVIDIA driver, or its folder is not on the library path)",
            driver.join(", ")
        ));
    }
    if !libraries.is_empty() {
        parts.push(format!(
            "{} not found; put the folders holding them on LD_LIBRARY_PATH (a PyTorch install has them under site-packages/nvidia/*/lib)",
            libraries.join(", ")
        ));
    }
    parts.join("; ")
}

#[cfg(test)]
mod tests {
    #[test]
    fn missing_gpu_libraries_say_where_each_comes_from() {
        let e = |missing: Vec<&'static str>| {
            super::Error::GpuLibrariesMissing {
                device: "cuda:0".into(),
                missing,
            }
            .to_string()
        };
        assert_eq!(
            e(vec!["libcuda (the NVIDIA driver)"]),
            "device `cuda:0` cannot be opened: libcuda (the NVIDIA driver) not found (this \
             machine has no NVIDIA driver, or its folder is not on the library path)"
        );
        assert_eq!(
            e(vec!["libcublas", "libcublasLt"]),
            "device `cuda:0` cannot be opened: libcublas, libcublasLt not found; put the folders \
             holding them on LD_LIBRARY_PATH (a PyTorch install has them under \
             site-packages/nvidia/*/lib)"
        );
        assert_eq!(
            e(vec!["libcuda (the NVIDIA driver)", "libcudnn"]),
            "device `cuda:0` cannot be opened: libcuda (the NVIDIA driver) not found (this \
             machine has no NVIDIA driver, or its folder is not on the library path); libcudnn \
             not found; put the folders holding them on LD_LIBRARY_PATH (a PyTorch install has \
             them under site-packages/nvidia/*/lib)"
        );
    }

    #[test]
    fn a_chain_lists_every_cause_once() {
        let e = super::Error::Io {
            path: "a/b.png".into(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "gone"),
        };
        assert_eq!(e.to_string(), "a/b.png");
        assert_eq!(super::chain(&e), "a/b.png: gone");
    }
}
