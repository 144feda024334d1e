//! Atomic file writing: write to a temporary file beside the target, then rename, so that a
//! killed process never leaves a half-written checkpoint.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::Tensor;

use crate::{Error, Result};

/// The temporary path used while `path` is being written.
pub fn temp_path(path: &Path) -> PathBuf {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(format!(".tmp{}", std::process::id()));
    path.with_file_name(name)
}

/// Writes a file atomically: `write` fills a temporary file, which is then renamed onto `path`.
/// On error the temporary file is removed and `path` is left as it was.
pub fn write_atomic<F>(path: &Path, write: F) -> Result<()>
where
    F: FnOnce(&Path) -> Result<()>,
{
    let io_err = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(io_err)?;
    }
    let tmp = temp_path(path);
    if let Err(e) = write(&tmp) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    // Make the bytes durable before the rename makes them visible.
    std::fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(io_err)?;
    std::fs::rename(&tmp, path).map_err(io_err)
}

/// Writes `bytes` to `path` atomically.
pub fn write_bytes(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomic(path, |tmp| {
        std::fs::write(tmp, bytes).map_err(|source| Error::Io {
            path: tmp.to_path_buf(),
            source,
        })
    })
}

/// Saves named tensors as safetensors, atomically.
pub fn save_safetensors(tensors: &HashMap<String, Tensor>, path: &Path) -> Result<()> {
    write_atomic(path, |tmp| {
        Ok(candle_core::safetensors::save(tensors, tmp)?)
    })
}

/// Loads named tensors from a safetensors file onto `device`.
pub fn load_safetensors(
    path: &Path,
    device: &candle_core::Device,
) -> Result<HashMap<String, Tensor>> {
    if !path.exists() {
        return Err(Error::Io {
            path: path.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
        });
    }
    candle_core::safetensors::load(path, device).map_err(|e| Error::State {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// How [`load_weights`] maps a checkpoint onto a model.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Fail unless every model variable is loaded and every file entry is used.
    pub strict: bool,
    /// Prepended to every file key to get the model's name (e.g. `backbone.`).
    pub prefix: String,
    /// File keys starting with any of these are skipped (e.g. `fc.` when no classifier is built).
    pub skip: Vec<String>,
}

/// A shape that differs between the model and the checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShapeConflict {
    /// The model's variable name.
    pub key: String,
    /// The model's shape.
    pub expected: Vec<usize>,
    /// The checkpoint's shape.
    pub found: Vec<usize>,
}

/// What [`load_weights`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// Variables set from the file.
    pub loaded: usize,
    /// Model variables the file lacks.
    pub missing: Vec<String>,
    /// File entries the model has no variable for.
    pub unexpected: Vec<String>,
    /// Entries whose shapes differ.
    pub mismatched: Vec<ShapeConflict>,
}

impl LoadReport {
    /// Whether everything matched.
    pub fn is_complete(&self) -> bool {
        self.missing.is_empty() && self.unexpected.is_empty() && self.mismatched.is_empty()
    }
}

impl std::fmt::Display for LoadReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} tensors loaded", self.loaded)?;
        if !self.missing.is_empty() {
            write!(f, "; missing keys: {}", self.missing.join(", "))?;
        }
        if !self.unexpected.is_empty() {
            write!(f, "; unexpected keys: {}", self.unexpected.join(", "))?;
        }
        for m in &self.mismatched {
            write!(
                f,
                "; shape mismatch for {}: expected {:?}, found {:?}",
                m.key, m.expected, m.found
            )?;
        }
        Ok(())
    }
}

/// Loads named tensors (a torchvision/timm-style checkpoint) into the variables of `varmap`.
///
/// Entries ending in `num_batches_tracked` are accepted and ignored. With `strict`, any missing,
/// unexpected or mismatched entry is an error listing all of them and nothing is changed;
/// otherwise every matching entry is loaded and the report says what was not.
pub fn load_weights(
    varmap: &candle_nn::VarMap,
    tensors: &HashMap<String, Tensor>,
    options: &LoadOptions,
    source: &Path,
) -> Result<LoadReport> {
    let data = varmap.data().lock().expect("VarMap lock poisoned");
    let mut report = LoadReport::default();
    let mut updates = Vec::new();
    let mut used = std::collections::HashSet::new();
    let mut file_keys: Vec<&String> = tensors.keys().collect();
    file_keys.sort();
    for key in file_keys {
        if key.ends_with("num_batches_tracked")
            || options.skip.iter().any(|s| key.starts_with(s.as_str()))
        {
            continue;
        }
        let name = format!("{}{key}", options.prefix);
        match data.get(&name) {
            None => report.unexpected.push(key.clone()),
            Some(var) => {
                let t = &tensors[key];
                used.insert(name.clone());
                if t.dims() != var.dims() {
                    report.mismatched.push(ShapeConflict {
                        key: name,
                        expected: var.dims().to_vec(),
                        found: t.dims().to_vec(),
                    });
                } else {
                    updates.push((var.clone(), t.clone()));
                }
            }
        }
    }
    let mut missing: Vec<String> = data
        .keys()
        .filter(|k| k.starts_with(options.prefix.as_str()) && !used.contains(*k))
        .cloned()
        .collect();
    missing.sort();
    report.missing = missing;
    if options.strict && !report.is_complete() {
        return Err(Error::State {
            path: source.to_path_buf(),
            reason: format!("checkpoint does not fit the model: {report}"),
        });
    }
    for (var, t) in updates {
        var.set(&t.to_device(var.device())?.to_dtype(var.dtype())?)?;
        report.loaded += 1;
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device};
    use candle_nn::{VarBuilder, VarMap};

    use super::*;

    #[test]
    fn load_weights_reports_missing_unexpected_and_mismatched_keys() {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        vb.get((2, 3), "net.conv1.weight").unwrap();
        vb.get(2, "net.bn1.running_mean").unwrap();
        vb.get(4, "net.bn1.weight").unwrap();
        let mut file = HashMap::new();
        file.insert(
            "conv1.weight".to_string(),
            Tensor::ones((2, 3), DType::F16, &Device::Cpu).unwrap(),
        );
        file.insert(
            "bn1.num_batches_tracked".to_string(),
            Tensor::new(&[3i64], &Device::Cpu).unwrap(),
        );
        file.insert(
            "bn1.weight".to_string(),
            Tensor::ones(5, DType::F32, &Device::Cpu).unwrap(),
        );
        file.insert(
            "fc.weight".to_string(),
            Tensor::ones(1, DType::F32, &Device::Cpu).unwrap(),
        );
        let options = LoadOptions {
            strict: true,
            prefix: "net.".into(),
            skip: vec![],
        };
        let err = load_weights(&varmap, &file, &options, Path::new("r18.safetensors")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "r18.safetensors: checkpoint does not fit the model: 0 tensors loaded; missing keys: net.bn1.running_mean; \
             unexpected keys: fc.weight; shape mismatch for net.bn1.weight: expected [4], found [5]"
        );
        let before = varmap.data().lock().unwrap()["net.conv1.weight"]
            .as_tensor()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert_ne!(before, 6.0, "a strict failure changes nothing");
        let lenient = LoadOptions {
            strict: false,
            skip: vec!["fc.".into()],
            ..options
        };
        let report = load_weights(&varmap, &file, &lenient, Path::new("r18.safetensors")).unwrap();
        assert_eq!(report.loaded, 1);
        assert!(report.unexpected.is_empty());
        let after = varmap.data().lock().unwrap()["net.conv1.weight"]
            .as_tensor()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert_eq!(after, 6.0);
    }

    #[test]
    fn a_failed_write_leaves_the_old_file_and_no_temporary() {
        let dir = std::env::temp_dir().join(format!("mustard-io-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("state.bin");
        std::fs::write(&path, b"old").unwrap();
        let err = write_atomic(&path, |tmp| {
            std::fs::write(tmp, b"half").unwrap();
            Err(Error::config("test", "interrupted"))
        })
        .unwrap_err();
        assert_eq!(err.to_string(), "test: interrupted");
        assert_eq!(std::fs::read(&path).unwrap(), b"old");
        assert!(!temp_path(&path).exists());
        write_atomic(&path, |tmp| {
            std::fs::write(tmp, b"new").map_err(|source| Error::Io {
                path: tmp.into(),
                source,
            })
        })
        .unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
