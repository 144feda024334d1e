//! The typed configuration of a run, saved as `config.toml` beside every checkpoint.

use std::path::{Path, PathBuf};

use mustard_backbone::ResNetPreset;
use mustard_core::ops::{ConvAlgorithm, Kernels};
use mustard_core::DeviceSpec;
use mustard_data::{Task, TaskMap};
use serde::{Deserialize, Serialize};

use crate::error::Problems;
use crate::{Error, Result};

/// A whole run: model, data and training.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Run name: the folder under `runs/`.
    pub name: String,
    /// Seed of initialisation, data order and augmentation.
    pub seed: u64,
    /// Where to run.
    pub device: DeviceSpec,
    /// Settings that change results in the last bits; applied when the run starts.
    #[serde(default)]
    pub numerics: Numerics,
    /// The network.
    pub model: ModelConfig,
    /// The datasets.
    pub data: DataConfig,
    /// The optimisation.
    pub train: TrainConfig,
}

/// The neck between backbone and heads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum NeckConfig {
    /// FPN, with the fused stride-4 map when `fuse`.
    Fpn {
        /// Channels of every level.
        channels: usize,
        /// Sum all levels at stride 4.
        fuse: bool,
    },
    /// CenterNet's transposed convolutions.
    Deconv {
        /// Channels per stage.
        widths: Vec<usize>,
    },
}

impl std::fmt::Display for NeckConfig {
    /// `FPN neck (128 channels, levels fused at stride 4)`, `deconv neck (256, 128, 64)`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NeckConfig::Fpn { channels, fuse } => write!(
                f,
                "FPN neck ({channels} channels{})",
                if *fuse {
                    ", levels fused at stride 4"
                } else {
                    ""
                }
            ),
            NeckConfig::Deconv { widths } => {
                let widths: Vec<String> = widths.iter().map(ToString::to_string).collect();
                write!(f, "deconv neck ({})", widths.join(", "))
            }
        }
    }
}

/// Per-task loss weights (a task without an entry weighs 1).
pub type LossWeights = TaskMap<f64>;

/// Every task at weight 1.
pub fn default_loss_weights() -> LossWeights {
    Task::ALL.into_iter().map(|t| (t, 1.0)).collect()
}

/// The weight of `task` in `weights` (1 when it has no entry).
pub fn loss_weight(weights: &LossWeights, task: Task) -> f64 {
    weights.get(task).copied().unwrap_or(1.0)
}

/// Settings that change results in the last bits, saved with the run so that it is reproducible
/// from its config and seed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Numerics {
    /// The kernel of 3x3 stride-1 convolutions.
    pub conv: ConvAlgorithm,
    /// The CPU kernels of the custom ops (`fast`), or the composed candle ops every other
    /// device runs (`portable`: what a GPU computes, on the CPU).
    #[serde(skip_serializing_if = "is_fast")]
    pub kernels: Kernels,
    /// The float type of the weights and of the arithmetic of training and evaluation.
    #[serde(skip_serializing_if = "is_f32")]
    pub precision: Precision,
}

fn is_fast(k: &Kernels) -> bool {
    *k == Kernels::Fast
}

fn is_f32(p: &Precision) -> bool {
    *p == Precision::F32
}

/// The float type a model computes in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    /// Single precision: what every preset trains in.
    #[default]
    F32,
    /// Double precision: several times slower; for checking two computations against each
    /// other without f32 rounding (N processes against one, a GPU against the CPU).
    F64,
}

impl Precision {
    /// The candle dtype.
    pub fn dtype(self) -> mustard_core::candle_core::DType {
        match self {
            Precision::F32 => mustard_core::candle_core::DType::F32,
            Precision::F64 => mustard_core::candle_core::DType::F64,
        }
    }
}

impl std::str::FromStr for Precision {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "f32" => Ok(Precision::F32),
            "f64" => Ok(Precision::F64),
            _ => Err(format!("{s:?}: expected f32 or f64")),
        }
    }
}

impl Numerics {
    /// Makes these the settings of the process (every run applies its own when it starts).
    pub fn apply(self) {
        self.conv.apply();
        self.kernels.apply();
    }
}

/// What the heads predict, filled from the training dataset and saved with the model so that
/// evaluation and prediction rebuild it without the data. Each task has its own label space
/// (a MuST student's heads each keep their teacher's).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Classes {
    /// Detection categories, in head order.
    pub categories: Vec<String>,
    /// Their dataset ids.
    pub category_ids: Vec<u64>,
    /// Index of the pose category among the training data's object categories: one of
    /// `categories`, or `categories.len()` when people are posed but not detected (then
    /// `pose` names it).
    pub person: Option<usize>,
    /// Joints per person.
    pub joints: usize,
    /// The pose category when it is not a detection category.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pose: Option<NamedClass>,
    /// Segmentation classes by label-map value; empty: background, then `categories`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub segmentation: Vec<String>,
    /// Image-level class names.
    pub labels: Vec<String>,
}

/// A category's name and dataset id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamedClass {
    /// Name.
    pub name: String,
    /// Dataset id.
    pub id: u64,
}

impl Classes {
    /// The segmentation classes by label-map value.
    pub fn segmentation_classes(&self) -> Vec<String> {
        if self.segmentation.is_empty() {
            std::iter::once("background".to_string())
                .chain(self.categories.iter().cloned())
                .collect()
        } else {
            self.segmentation.clone()
        }
    }

    /// The pose category's name and dataset id.
    pub fn pose_category(&self) -> Option<NamedClass> {
        let person = self.person?;
        match self.categories.get(person) {
            Some(name) => Some(NamedClass {
                name: name.clone(),
                id: self.category_ids[person],
            }),
            None => self.pose.clone(),
        }
    }
}

/// The network.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Backbone preset.
    pub backbone: ResNetPreset,
    /// Backbone weights: a safetensors path or `hf:<org>/<repo>[:<file>]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pretrained: Option<String>,
    /// Start the backbone and neck from this mustard checkpoint (a run folder or a weights
    /// file), e.g. to fine-tune a MuST student on a new task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_from: Option<PathBuf>,
    /// The neck.
    pub neck: NeckConfig,
    /// Hidden channels of the head blocks.
    pub head_conv: usize,
    /// The tasks with a head.
    pub tasks: Vec<Task>,
    /// Per-task loss weights.
    #[serde(default = "default_loss_weights")]
    pub loss_weights: LossWeights,
    /// Train depth with the scale-and-shift-invariant loss (relative depth labels).
    #[serde(default)]
    pub relative_depth: bool,
    /// How detection's heatmap targets use each box's score (a teacher's confidence for a
    /// pseudo-label, 1 for a real one): `hard` (CenterNet's), `soft` (the centre peaks at the
    /// score, quality focal loss) or `weighted` (each positive weighted by its score);
    /// docs/STUDY.md measures them.
    #[serde(default, skip_serializing_if = "is_hard")]
    pub centre_targets: mustard_heads::detection::CentreTargets,
    /// Filled from the dataset at training time.
    #[serde(default)]
    pub classes: Classes,
}

/// The synthetic dataset used when no data is given.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SynthData {
    /// Training images.
    pub train_images: usize,
    /// Validation images.
    pub val_images: usize,
    /// Image side.
    pub size: u32,
    /// Seed of the scenes.
    pub seed: u64,
}

/// The datasets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// Training COCO file (the synthetic default when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train: Option<PathBuf>,
    /// Validation COCO file (the synthetic default's when absent and `train` is absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val: Option<PathBuf>,
    /// Image folder (default: each file's folder).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root: Option<PathBuf>,
    /// Leave bad records out instead of refusing the dataset.
    #[serde(default)]
    pub skip_bad: bool,
    /// Train on a pseudo-label store (`mustard pseudo-label --out DIR`) instead of `train`; with
    /// `train` too, the store's images are read from that file (the same images in the same
    /// order, checked), whose real labels `real_labels` takes where it has them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pseudo: Option<PathBuf>,
    /// With `pseudo`: where an image of the store also carries real labels for a task, train
    /// on those instead of the teacher's.
    #[serde(default)]
    pub real_labels: bool,
    /// The synthetic default.
    pub synth: SynthData,
}

/// The optimisation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Network input side (a multiple of 32).
    pub input_size: u32,
    /// Images per step.
    pub batch_size: usize,
    /// Passes over the training set.
    pub epochs: usize,
    /// Stop after this many steps (for smoke runs); `None` runs all epochs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_steps: Option<u64>,
    /// AdamW learning rate.
    pub lr: f64,
    /// AdamW weight decay (not on biases and BatchNorm).
    pub weight_decay: f64,
    /// Linear warm-up steps, then cosine decay to 1% of `lr`.
    pub warmup_steps: u64,
    /// Clip gradients to this global norm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clip_grad_norm: Option<f64>,
    /// Write `last.safetensors` every this many steps (and at every epoch end).
    pub checkpoint_every: u64,
    /// Augment training images (scale, crop, flip, colour).
    pub augment: bool,
    /// Multiplies the random scale, shift and colour ranges of the augmentation (1: CenterNet's
    /// ±40% scale, ±10% shift, ±40% colour). Short runs learn faster with milder augmentation.
    #[serde(default = "default_augment_strength")]
    pub augment_strength: f64,
    /// Loader threads (`None`: all cores).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workers: Option<usize>,
    /// Validate at every epoch end.
    pub validate: bool,
    /// Keep an exponential moving average of the weights with this decay (ramped up over the
    /// first ~`ema_ramp` steps); validation, `best.safetensors` and every use of the trained
    /// model (eval, predict, pseudo-labels, `init_from`) then use the average.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ema: Option<f64>,
    /// Steps over which the average's decay ramps up.
    #[serde(default = "default_ema_ramp")]
    pub ema_ramp: f64,
    /// Stop when the validation score (the mean of the headline metrics, which also picks
    /// `best.safetensors`) has not improved for this many validated epochs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patience: Option<u64>,
    /// In data-parallel training, BatchNorm's statistics over every process's share of the
    /// batch (the run of one process, up to the order of sums); false: each process normalises
    /// by its own share, as PyTorch DDP without SyncBatchNorm does (faster, and different).
    #[serde(default = "default_true")]
    pub sync_batch_norm: bool,
}

fn default_true() -> bool {
    true
}

fn default_augment_strength() -> f64 {
    1.0
}

fn default_ema_ramp() -> f64 {
    200.0
}

/// Named starting points for configs (their values are in `presets.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "snake_case")]
pub enum Preset {
    /// Tiny model, small synthetic set: minutes on 2 CPU cores.
    Quick,
    /// ResNet-18 + FPN at 256 px on a larger synthetic set: a GPU or a long CPU run.
    Full,
    /// The quick model at 128 px, where every task (pose included) is measurable; `mcn` and
    /// `must` run every model with 3 seeds (docs/STUDY.md gives their wall times).
    Study,
}

impl Config {
    /// A config for `preset` with every task.
    pub fn preset(preset: Preset, name: &str) -> Self {
        match preset {
            Preset::Quick => Config::quick(name),
            Preset::Full => Config::full(name),
            Preset::Study => Config::study(name),
        }
    }

    /// Checks every value that would fail later, reporting all problems at once.
    pub fn validate(&self) -> Result<()> {
        let mut p = Problems::default();
        let t = &self.train;
        p.check(
            t.input_size == 0 || t.input_size % 32 != 0,
            "train.input_size",
            || format!("{} must be a positive multiple of 32", t.input_size),
        );
        p.check(
            t.batch_size == 0 || t.epochs == 0 || t.checkpoint_every == 0,
            "train",
            || "batch_size, epochs and checkpoint_every must be at least 1".into(),
        );
        let full_scale = mustard_data::augment::AugmentConfig::train(t.input_size).scale;
        p.check(
            !(t.augment_strength >= 0.0 && t.augment_strength * full_scale < 1.0),
            "train.augment_strength",
            || {
                format!(
                    "{} must be in [0, {}) (the scale range 1 ± {full_scale}·strength stays positive)",
                    t.augment_strength,
                    1.0 / full_scale
                )
            },
        );
        p.check(!(t.lr.is_finite() && t.lr > 0.0), "train.lr", || {
            format!("{} must be positive", t.lr)
        });
        p.check(
            t.patience.is_some() && !t.validate,
            "train.patience",
            || "early stopping needs validation (train.validate = true, no --no-val)".into(),
        );
        p.check(self.model.tasks.is_empty(), "model.tasks", || {
            "at least one task is needed".into()
        });
        p.check(
            self.name.is_empty() || self.name.contains(['/', '\\']) || self.name == "..",
            "name",
            || format!("{:?} must be a plain folder name", self.name),
        );
        if let NeckConfig::Deconv { widths } = &self.model.neck {
            p.check(widths.len() != 3, "model.neck.widths", || {
                format!("{widths:?}: three stages are needed to reach stride 4")
            });
        }
        p.finish()
    }

    /// Reads a TOML config.
    pub fn read(path: &Path) -> Result<Self> {
        let config: Config = read_toml(path)?;
        config.validate()?;
        Ok(config)
    }

    /// Writes the config as TOML, atomically.
    pub fn write(&self, path: &Path) -> Result<()> {
        write_toml(self, path)
    }
}

/// Reads a TOML file into `T`.
pub fn read_toml<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    toml::from_str(&text).map_err(|e| Error::toml(path, e))
}

/// Writes `value` as TOML to `path`, atomically.
pub fn write_toml<T: Serialize>(value: &T, path: &Path) -> Result<()> {
    let text = toml::to_string_pretty(value).map_err(|e| Error::toml(path, e))?;
    mustard_core::io::write_bytes(path, text.as_bytes())?;
    Ok(())
}

fn is_hard(t: &mustard_heads::detection::CentreTargets) -> bool {
    *t == mustard_heads::detection::CentreTargets::Hard
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_round_trip_through_toml_and_bad_ones_are_named() {
        let dir = std::env::temp_dir().join(format!("mustard-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("config.toml");
        let config = Config::preset(Preset::Quick, "quick");
        config.write(&path).unwrap();
        assert_eq!(Config::read(&path).unwrap(), config);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("backbone = \"tiny\""), "{text}");
        std::fs::write(&path, text.replace("input_size = 96", "input_size = 100")).unwrap();
        assert_eq!(
            Config::read(&path).unwrap_err().to_string(),
            "train.input_size: 100 must be a positive multiple of 32"
        );
        std::fs::write(
            &path,
            text.replace("input_size = 96", "input_size = 100")
                .replace("lr = 0.001", "lr = -1.0"),
        )
        .unwrap();
        assert_eq!(
            Config::read(&path).unwrap_err().to_string(),
            "train.input_size: 100 must be a positive multiple of 32; train.lr: -1 must be positive"
        );
        std::fs::write(&path, text.replace("seed = 0\n", "seed = 0\nsede = 1\n")).unwrap();
        let err = Config::read(&path).unwrap_err();
        assert_eq!(err.to_string(), path.display().to_string());
        let cause = std::error::Error::source(&err).unwrap().to_string();
        assert!(cause.contains("unknown field `sede`"), "{cause}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
