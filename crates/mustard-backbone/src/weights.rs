//! Where backbone weights come from: a local safetensors file or the Hugging Face hub.
//!
//! `hf:<org>/<repo>` (file `model.safetensors`) or `hf:<org>/<repo>:<file>` resolves through the
//! hub cache (`$HF_HOME/hub`, `~/.cache/huggingface/hub`, or a folder given by the caller): a file
//! already in the cache is used without any network access; otherwise it is downloaded, unless
//! `HF_HUB_OFFLINE=1` or [`Resolver::offline`] forbid it.

use std::path::{Path, PathBuf};

use hf_hub::{Cache, Repo};
use mustard_core::candle_core::Device;
use mustard_core::candle_nn::VarMap;
use mustard_core::io::{load_weights, LoadOptions, LoadReport};

use crate::{Error, Result};

/// A parsed weight source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WeightSource {
    /// A file on disk.
    Path(PathBuf),
    /// A file in a hub model repository.
    Hub {
        /// `org/name`.
        repo: String,
        /// File within the repository.
        file: String,
    },
}

impl std::str::FromStr for WeightSource {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let Some(rest) = s.strip_prefix("hf:") else {
            return Ok(WeightSource::Path(PathBuf::from(s)));
        };
        let (repo, file) = match rest.split_once(':') {
            Some((repo, file)) => (repo, file),
            None => (rest, "model.safetensors"),
        };
        let valid = |p: &str| !p.is_empty() && !p.contains(char::is_whitespace);
        let parts: Vec<&str> = repo.split('/').collect();
        if parts.len() != 2 || !parts.iter().all(|p| valid(p)) || !valid(file) {
            return Err(Error::InvalidSource {
                input: s.into(),
                reason: "expected hf:<org>/<repo> or hf:<org>/<repo>:<file>".into(),
            });
        }
        Ok(WeightSource::Hub {
            repo: repo.into(),
            file: file.into(),
        })
    }
}

/// Resolves weight sources to local files.
#[derive(Debug, Clone)]
pub struct Resolver {
    cache_dir: PathBuf,
    offline: bool,
}

impl Default for Resolver {
    fn default() -> Self {
        let offline = std::env::var("HF_HUB_OFFLINE")
            .is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
        Self {
            cache_dir: Cache::from_env().path().clone(),
            offline,
        }
    }
}

impl Resolver {
    /// A resolver using the given hub cache folder.
    pub fn with_cache_dir(cache_dir: impl Into<PathBuf>) -> Self {
        Self {
            cache_dir: cache_dir.into(),
            ..Default::default()
        }
    }

    /// Forbids downloads: only cached files resolve.
    pub fn offline(mut self, offline: bool) -> Self {
        self.offline = offline;
        self
    }

    /// The hub cache folder.
    pub fn cache_dir(&self) -> &Path {
        &self.cache_dir
    }

    /// The local file of `source`, downloading it into the cache when allowed.
    pub fn resolve(&self, source: &WeightSource) -> Result<PathBuf> {
        match source {
            WeightSource::Path(p) if p.is_file() => Ok(p.clone()),
            WeightSource::Path(p) => Err(Error::NotFound { path: p.clone() }),
            WeightSource::Hub { repo, file } => {
                let hub_err = |reason: String| Error::Hub {
                    repo: repo.clone(),
                    file: file.clone(),
                    cache: self.cache_dir.clone(),
                    reason,
                };
                let cache = Cache::new(self.cache_dir.clone());
                if let Some(path) = cache.repo(Repo::model(repo.clone())).get(file) {
                    return Ok(path);
                }
                if self.offline {
                    return Err(hub_err("offline mode (HF_HUB_OFFLINE) is on".into()));
                }
                let api = hf_hub::api::sync::ApiBuilder::from_cache(cache)
                    .with_progress(true)
                    .build()
                    .map_err(|e| hub_err(e.to_string()))?;
                api.model(repo.clone())
                    .get(file)
                    .map_err(|e| hub_err(e.to_string()))
            }
        }
    }
}

/// Loads a checkpoint into the variables of `varmap` (see [`mustard_core::io::load_weights`]).
pub fn load_into(varmap: &VarMap, path: &Path, options: &LoadOptions) -> Result<LoadReport> {
    let tensors = mustard_core::io::load_safetensors(path, &Device::Cpu)?;
    Ok(load_weights(varmap, &tensors, options, path)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_paths_and_hub_ids() {
        assert_eq!(
            "w/r18.safetensors".parse::<WeightSource>().unwrap(),
            WeightSource::Path("w/r18.safetensors".into())
        );
        assert_eq!(
            "hf:timm/resnet18.a1_in1k".parse::<WeightSource>().unwrap(),
            WeightSource::Hub {
                repo: "timm/resnet18.a1_in1k".into(),
                file: "model.safetensors".into()
            }
        );
        assert_eq!(
            "hf:org/repo:sub/w.safetensors"
                .parse::<WeightSource>()
                .unwrap(),
            WeightSource::Hub {
                repo: "org/repo".into(),
                file: "sub/w.safetensors".into()
            }
        );
        assert_eq!(
            "hf:resnet18".parse::<WeightSource>().unwrap_err().to_string(),
            "invalid weight source \"hf:resnet18\": expected hf:<org>/<repo> or hf:<org>/<repo>:<file>"
        );
    }

    #[test]
    fn a_cached_file_resolves_offline_and_a_missing_one_is_a_clear_error() {
        let cache = std::env::temp_dir().join(format!("mustard-hub-{}", std::process::id()));
        let repo = cache.join("models--timm--resnet18.a1_in1k");
        let commit = "0123456789abcdef0123456789abcdef01234567";
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::create_dir_all(repo.join("snapshots").join(commit)).unwrap();
        std::fs::write(repo.join("refs/main"), commit).unwrap();
        let file = repo
            .join("snapshots")
            .join(commit)
            .join("model.safetensors");
        std::fs::write(&file, b"weights").unwrap();

        let resolver = Resolver::with_cache_dir(&cache).offline(true);
        let source: WeightSource = "hf:timm/resnet18.a1_in1k".parse().unwrap();
        assert_eq!(resolver.resolve(&source).unwrap(), file);

        let missing: WeightSource = "hf:timm/resnet50.a1_in1k".parse().unwrap();
        assert_eq!(
            resolver.resolve(&missing).unwrap_err().to_string(),
            format!(
                "hf:timm/resnet50.a1_in1k:model.safetensors is not in the cache at {} and could not be downloaded: offline mode (HF_HUB_OFFLINE) is on",
                cache.display()
            )
        );
        let local = WeightSource::Path(cache.join("nope.safetensors"));
        assert_eq!(
            resolver.resolve(&local).unwrap_err().to_string(),
            format!(
                "weight file {} does not exist",
                cache.join("nope.safetensors").display()
            )
        );
        std::fs::remove_dir_all(&cache).unwrap();
    }
}
