use std::fmt;
use std::str::FromStr;

use candle_core::Device;

use crate::{Error, Result};

/// Which device to run on, as a typed value (`cpu`, `cuda:N`, `metal`).
///
/// Parsing never touches the hardware; [`DeviceSpec::device`] opens it and fails with
/// [`Error::BackendUnavailable`] when this build lacks the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum DeviceSpec {
    /// The CPU (always available).
    #[default]
    Cpu,
    /// A CUDA GPU by ordinal.
    Cuda(usize),
    /// The Metal GPU.
    Metal,
}

impl DeviceSpec {
    /// Opens the device (under a launcher, a CUDA device offset by the process's local rank).
    pub fn device(self) -> Result<Device> {
        match self {
            DeviceSpec::Cpu => Ok(Device::Cpu),
            DeviceSpec::Cuda(ordinal) => {
                if cfg!(feature = "cuda") {
                    let missing = missing_cuda_libraries();
                    if !missing.is_empty() {
                        return Err(Error::GpuLibrariesMissing {
                            device: self.to_string(),
                            missing,
                        });
                    }
                    // Under a launcher each process of a machine takes its own GPU: process
                    // `local_rank` opens `cuda:(N + local_rank)`; with MUSTARD_SHARE_GPU=1
                    // every process opens `cuda:N` (its sums then go through the host).
                    let world = crate::dist::world();
                    let ordinal = if world.size() > 1 && !crate::dist::share_gpu() {
                        ordinal + world.local_rank()
                    } else {
                        ordinal
                    };
                    Ok(Device::new_cuda(ordinal)?)
                } else {
                    Err(Error::BackendUnavailable {
                        device: self.to_string(),
                        feature: "cuda",
                    })
                }
            }
            DeviceSpec::Metal => {
                if cfg!(feature = "metal") {
                    Ok(Device::new_metal(0)?)
                } else {
                    Err(Error::BackendUnavailable {
                        device: self.to_string(),
                        feature: "metal",
                    })
                }
            }
        }
    }
}

/// Memory in use on `device`, in MiB, as the CUDA driver reports it (total − free: this
/// process's tensors and context, and any other process's); `None` on the CPU and Metal.
pub fn device_memory_in_use_mib(device: &Device) -> Result<Option<f64>> {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(cuda) = device {
        let (free, total) = cuda
            .cuda_stream()
            .context()
            .mem_get_info()
            .map_err(candle_core::Error::wrap)?;
        return Ok(Some((total - free) as f64 / (1024.0 * 1024.0)));
    }
    let _ = device;
    Ok(None)
}

/// The CUDA libraries that opening a device loads and that cannot be found (the CUDA libraries
/// are loaded at run time, and the loader panics on a missing one).
#[cfg(feature = "cuda")]
fn missing_cuda_libraries() -> Vec<&'static str> {
    use candle_core::cuda::cudarc;
    let mut missing = Vec::new();
    // SAFETY: each check only opens the library by name and closes it again; no symbol of it
    // is called.
    let found = unsafe {
        [
            (
                cudarc::driver::sys::is_culib_present(),
                "libcuda (the NVIDIA driver)",
            ),
            (cudarc::cublas::sys::is_culib_present(), "libcublas"),
            (cudarc::cublaslt::sys::is_culib_present(), "libcublasLt"),
        ]
    };
    #[cfg(feature = "cudnn")]
    // SAFETY: as above.
    let found = found.into_iter().chain([(
        unsafe { cudarc::cudnn::sys::is_culib_present() },
        "libcudnn",
    )]);
    for (present, name) in found {
        if !present {
            missing.push(name);
        }
    }
    missing
}

#[cfg(not(feature = "cuda"))]
fn missing_cuda_libraries() -> Vec<&'static str> {
    Vec::new()
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Cpu => f.write_str("cpu"),
            DeviceSpec::Cuda(n) => write!(f, "cuda:{n}"),
            DeviceSpec::Metal => f.write_str("metal"),
        }
    }
}

impl FromStr for DeviceSpec {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let invalid = || Error::InvalidDevice {
            input: s.to_string(),
        };
        match s.trim().to_ascii_lowercase().as_str() {
            "cpu" => Ok(DeviceSpec::Cpu),
            "metal" => Ok(DeviceSpec::Metal),
            "cuda" | "gpu" => Ok(DeviceSpec::Cuda(0)),
            other => {
                let ordinal = other.strip_prefix("cuda:").ok_or_else(invalid)?;
                ordinal.parse().map(DeviceSpec::Cuda).map_err(|_| invalid())
            }
        }
    }
}

impl TryFrom<String> for DeviceSpec {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        s.parse()
    }
}

impl From<DeviceSpec> for String {
    fn from(d: DeviceSpec) -> String {
        d.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_every_form() {
        for (input, spec, shown) in [
            ("cpu", DeviceSpec::Cpu, "cpu"),
            ("CPU", DeviceSpec::Cpu, "cpu"),
            ("cuda", DeviceSpec::Cuda(0), "cuda:0"),
            ("cuda:3", DeviceSpec::Cuda(3), "cuda:3"),
            ("metal", DeviceSpec::Metal, "metal"),
        ] {
            let parsed: DeviceSpec = input.parse().unwrap();
            assert_eq!(parsed, spec);
            assert_eq!(parsed.to_string(), shown);
        }
    }

    #[test]
    fn rejects_unknown_devices_with_the_input_in_the_message() {
        for input in ["tpu", "cuda:x", "cuda:-1", ""] {
            let err = input.parse::<DeviceSpec>().unwrap_err();
            assert_eq!(
                err.to_string(),
                format!("invalid device {input:?}: expected `cpu`, `cuda`, `cuda:N` or `metal`")
            );
        }
    }

    #[test]
    fn cpu_always_opens() {
        assert!(DeviceSpec::Cpu.device().unwrap().is_cpu());
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_the_feature_is_a_clear_error() {
        let err = DeviceSpec::Cuda(1).device().unwrap_err();
        assert_eq!(
            err.to_string(),
            "device `cuda:1` needs mustard built with the `cuda` feature (cargo build --release -p mustard-cli --features cuda)"
        );
    }
}
