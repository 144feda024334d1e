//! The command line's arguments. Each group of flags is parsed into the library's own types
//! (`Task`, `ResNetPreset`, `Preset`, `IouType`, `DeviceSpec`, `ShardSpec`) and laid over a
//! library config in one `apply`; flags shared by several verbs live in one flattened group.
//! Preset values are not restated here: `runs/<name>/config.toml` shows what a run used.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use mustard::backbone::ResNetPreset;
use mustard::config::Precision;
use mustard::core::ops::{ConvAlgorithm, Kernels};
use mustard::core::DeviceSpec;
use mustard::data::Task;
use mustard::eval::IouType;
use mustard::pseudo_labels::{ShardSpec, Thresholds};
use mustard::{Config, Preset};

/// One model that detects objects, segments scenes, estimates human pose and depth, and
/// classifies images.
#[derive(Debug, Parser)]
#[command(name = "mustard", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Write the synthetic all-task dataset (COCO json, images, label maps, depth maps).
    Synth(SynthArgs),
    /// Inspect datasets.
    Data {
        #[command(subcommand)]
        command: DataCommand,
    },
    /// Train a model (any subset of tasks); with no data given, on the synthetic default.
    Train(TrainArgs),
    /// Evaluate a checkpoint on a dataset, or score a COCO results file against ground truth.
    Eval(EvalArgs),
    /// Run a checkpoint on images: COCO-results JSON and pictures of the predictions.
    Predict(PredictArgs),
    /// Run teacher checkpoints over unlabelled images into a sharded, resumable pseudo-label
    /// store (MuST step 2); `--shard i/N` lets N workers share the work.
    PseudoLabel(PseudoArgs),
    /// MuST: train one teacher per task, pseudo-label the unlabelled set, train the multi-task
    /// student, evaluate them all and run the transfer test; writes runs/must/report.md.
    Must(MustArgs),
    /// Time a model: preprocess / inference / postprocess ms per image, images/s, memory.
    Bench(BenchArgs),
    /// Write a trained model as one ONNX file (every head's raw outputs, the preprocessing and
    /// decoding parameters in its metadata).
    Export(ExportArgs),
    /// The MultiTask-CenterNet study: single-task models against one joint model.
    Mcn {
        /// Model and data size.
        #[arg(long, value_enum, default_value = "quick")]
        preset: Preset,
        /// Folder of the runs (the study writes runs/mcn/).
        #[arg(long, default_value = "runs")]
        runs: PathBuf,
        /// Train every model with this many seeds (default: 1 for quick, 3 for study and full).
        #[arg(long)]
        seeds: Option<usize>,
        /// Also train each pair of tasks (the study and full presets always do).
        #[arg(long)]
        pairs: bool,
        /// Device of every model: cpu, cuda[:N] or metal.
        #[arg(long)]
        device: Option<DeviceSpec>,
    },
}

#[derive(Debug, Subcommand)]
pub enum DataCommand {
    /// Count images and annotations per task and category, and report every bad record.
    Check {
        /// What --data takes: a COCO json file (or several of one dataset, a.json,b.json), a
        /// folder-dataset description (.toml), a classification list (.csv or a JSON array) or
        /// an ImageNet-style folder of class folders.
        dataset: PathBuf,
        /// Image folder (default: the json file's folder).
        #[arg(long)]
        root: Option<PathBuf>,
        /// Decode every image, label map and depth map instead of reading their headers: finds
        /// files that are corrupt past their header, at the cost of a full decode.
        #[arg(long)]
        deep: bool,
    },
    /// Compare a pseudo-label store with the true labels of its images: box and person recall
    /// and precision at each score threshold, segmentation, depth and class agreement.
    Labels {
        /// The store (`mustard pseudo-label --out DIR`).
        store: PathBuf,
        /// A COCO file of the same images with true labels in the store's label spaces (for
        /// `mustard must`'s synthetic data: runs/must/data/…/unlabeled_truth.json).
        #[arg(long)]
        truth: PathBuf,
        /// Image folder of --truth (default: its folder).
        #[arg(long)]
        root: Option<PathBuf>,
    },
}

/// The network, for verbs that build one.
#[derive(Debug, Args)]
pub struct ModelArgs {
    /// Tasks, comma separated (detection, pose, segmentation, depth, classification).
    #[arg(long, value_delimiter = ',')]
    pub tasks: Option<Vec<Task>>,
    /// Backbone preset.
    #[arg(long, value_enum)]
    pub backbone: Option<ResNetPreset>,
}

impl ModelArgs {
    fn apply(&self, config: &mut Config) {
        if let Some(v) = &self.tasks {
            config.model.tasks = v.clone();
        }
        if let Some(v) = self.backbone {
            config.model.backbone = v;
        }
    }
}

/// Sizes and optimisation shared by `train` and `must` (default: the preset's).
#[derive(Debug, Args)]
pub struct OptimArgs {
    /// Input side in pixels (a multiple of 32).
    #[arg(long)]
    pub input_size: Option<u32>,
    /// Images per step.
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Learning rate.
    #[arg(long)]
    pub lr: Option<f64>,
    /// Seed of initialisation, data order and augmentation.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Loader threads (default: all cores).
    #[arg(long)]
    pub workers: Option<usize>,
    /// Kernel of 3x3 stride-1 convolutions: winograd (fast, ~1e-5 relative error in f32) or
    /// direct (im2col + GEMM, ~5e-7); saved in the run's config.
    #[arg(long)]
    pub conv: Option<ConvAlgorithm>,
    /// The custom ops' CPU kernels (fast) or the composed candle ops a GPU runs (portable, to
    /// check on a CPU what CUDA or Metal computes); saved in the run's config.
    #[arg(long)]
    pub kernels: Option<Kernels>,
    /// Device of the run: cpu, cuda[:N] or metal (a GPU build needs `--features cuda` or
    /// `metal`); saved in the run's config (a resumed run may change it).
    #[arg(long)]
    pub device: Option<DeviceSpec>,
    /// Float type of the weights and arithmetic: f32, or f64 (several times slower; to check
    /// computations against each other without f32 rounding); saved in the run's config.
    #[arg(long)]
    pub precision: Option<Precision>,
    /// In data-parallel training (`mpirun`, `srun`), normalise BatchNorm by each process's
    /// share of the batch instead of by the whole batch (faster; not the run of one process);
    /// saved in the run's config.
    #[arg(long)]
    pub per_process_batch_norm: bool,
}

impl OptimArgs {
    /// Lays the given flags over `config`.
    pub fn apply_to(&self, config: &mut Config) {
        let t = &mut config.train;
        t.input_size = self.input_size.unwrap_or(t.input_size);
        t.batch_size = self.batch_size.unwrap_or(t.batch_size);
        t.lr = self.lr.unwrap_or(t.lr);
        t.workers = self.workers.or(t.workers);
        config.seed = self.seed.unwrap_or(config.seed);
        config.numerics.conv = self.conv.unwrap_or(config.numerics.conv);
        config.numerics.kernels = self.kernels.unwrap_or(config.numerics.kernels);
        config.device = self.device.unwrap_or(config.device);
        config.numerics.precision = self.precision.unwrap_or(config.numerics.precision);
        config.train.sync_batch_norm &= !self.per_process_batch_norm;
    }
}

#[derive(Debug, Args)]
pub struct TrainArgs {
    /// A TOML config (see `runs/<name>/config.toml` of any run); flags override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Starting point when no --config is given.
    #[arg(long, value_enum, default_value = "quick")]
    pub preset: Preset,
    /// Run name: the folder under --runs.
    #[arg(long)]
    pub name: Option<String>,
    /// Folder of the runs.
    #[arg(long, default_value = "runs")]
    pub runs: PathBuf,
    /// Continue the run --name from its last checkpoint, with its saved config.
    #[arg(long, requires = "name")]
    pub resume: bool,
    /// Training COCO file (default: the synthetic dataset).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Validation COCO file.
    #[arg(long)]
    pub val: Option<PathBuf>,
    /// Image folder (default: each file's folder).
    #[arg(long)]
    pub root: Option<PathBuf>,
    #[command(flatten)]
    pub model: ModelArgs,
    /// Backbone weights: a safetensors path or hf:<org>/<repo>[:<file>].
    #[arg(long)]
    pub pretrained: Option<String>,
    /// Start the backbone and neck from a mustard checkpoint (file or run folder).
    #[arg(long)]
    pub init_from: Option<PathBuf>,
    /// Train on a pseudo-label store (from `mustard pseudo-label`) instead of --data; with
    /// --data, the store's images are read from that file (the same images, which may carry
    /// real labels for --real-labels).
    #[arg(long)]
    pub pseudo: Option<PathBuf>,
    /// With --pseudo: use an image's real labels where it has them.
    #[arg(long, requires = "pseudo")]
    pub real_labels: bool,
    #[command(flatten)]
    pub optim: OptimArgs,
    /// Epochs.
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Stop after this many steps.
    #[arg(long)]
    pub max_steps: Option<u64>,
    /// Synthetic training images (with no --data).
    #[arg(long)]
    pub synth_images: Option<usize>,
    /// Synthetic validation images (with no --data).
    #[arg(long)]
    pub synth_val_images: Option<usize>,
    /// Leave bad dataset records out, and images that fail to decode mid-run (each is named
    /// once), instead of refusing the dataset or stopping; with --resume, from now on.
    #[arg(long)]
    pub skip_bad: bool,
    /// Do not validate after each epoch.
    #[arg(long)]
    pub no_val: bool,
    /// Write a checkpoint every this many steps.
    #[arg(long)]
    pub checkpoint_every: Option<u64>,
    /// Stop when the validation score (the mean of the headline metrics, which also picks
    /// best.safetensors) has not improved for N epochs.
    #[arg(long, value_name = "N")]
    pub patience: Option<u64>,
}

impl TrainArgs {
    /// The run's config: `--config` or the preset, with every flag laid over it, validated.
    pub fn config(&self) -> anyhow::Result<Config> {
        let mut config = match &self.config {
            Some(path) => Config::read(path)?,
            None => Config::preset(self.preset, "train"),
        };
        if let Some(v) = &self.name {
            config.name = v.clone();
        }
        self.apply_data(&mut config);
        self.model.apply(&mut config);
        self.optim.apply_to(&mut config);
        let (m, t) = (&mut config.model, &mut config.train);
        m.pretrained = self.pretrained.clone().or(m.pretrained.take());
        m.init_from = self.init_from.clone().or(m.init_from.take());
        t.epochs = self.epochs.unwrap_or(t.epochs);
        t.max_steps = self.max_steps.or(t.max_steps);
        t.checkpoint_every = self.checkpoint_every.unwrap_or(t.checkpoint_every);
        t.validate &= !self.no_val;
        t.patience = self.patience.or(t.patience);
        config.validate()?;
        Ok(config)
    }

    fn apply_data(&self, config: &mut Config) {
        let d = &mut config.data;
        if let Some(v) = &self.data {
            d.train = Some(v.clone());
            d.val = None;
        }
        d.val = self.val.clone().or(d.val.take());
        d.root = self.root.clone().or(d.root.take());
        if let Some(v) = &self.pseudo {
            d.pseudo = Some(v.clone());
            if self.data.is_none() {
                d.train = None;
            }
        }
        d.real_labels |= self.real_labels;
        d.skip_bad |= self.skip_bad;
        d.synth.train_images = self.synth_images.unwrap_or(d.synth.train_images);
        d.synth.val_images = self.synth_val_images.unwrap_or(d.synth.val_images);
        // The synthetic scenes are rendered at the input size.
        if let (Some(size), None, None) = (self.optim.input_size, &d.train, &d.pseudo) {
            d.synth.size = size;
        }
    }
}

#[derive(Debug, Args)]
pub struct EvalArgs {
    /// A checkpoint file (runs/<name>/weights/*.safetensors) or a run folder.
    #[arg(long, conflicts_with_all = ["gt", "results"])]
    pub checkpoint: Option<PathBuf>,
    /// Dataset to evaluate the checkpoint on (default: the run's validation set).
    #[arg(long, requires = "checkpoint")]
    pub data: Option<PathBuf>,
    /// Image folder of --data (default: the run's --root, else the file's folder).
    #[arg(long, requires = "data")]
    pub root: Option<PathBuf>,
    /// Leave bad records of --data out, and images that fail to decode (each is named),
    /// instead of refusing the dataset or stopping.
    #[arg(long, requires = "data")]
    pub skip_bad: bool,
    /// Score segmentation and depth at the network's input size against the letterboxed
    /// labels (faster) instead of at each image's original size, as the datasets' official
    /// evaluations do.
    #[arg(long)]
    pub network_resolution: bool,
    /// Evaluate here (default: the run's device): cpu, cuda[:N] or metal (a GPU build needs `--features cuda` or `metal`).
    #[arg(long)]
    pub device: Option<DeviceSpec>,
    /// Ground-truth COCO file (with --results).
    #[arg(long, requires = "results")]
    pub gt: Option<PathBuf>,
    /// COCO results file (with --gt).
    #[arg(long, requires = "gt")]
    pub results: Option<PathBuf>,
    /// What the results are (with --gt).
    #[arg(long, value_enum, default_value = "bbox")]
    pub iou_type: IouType,
    /// Write every number as JSON here.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Write PR_curve_*.png and confusion_matrix_*.png here (default: the checkpoint's run
    /// folder's eval/; with --gt and --results, only when given).
    #[arg(long, conflicts_with = "no_plots")]
    pub plots: Option<PathBuf>,
    /// Write no pictures.
    #[arg(long)]
    pub no_plots: bool,
    /// Folder of the runs (for the synthetic validation set).
    #[arg(long, default_value = "runs")]
    pub runs: PathBuf,
}

/// The formats `mustard export` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExportFormat {
    /// ONNX (<https://onnx.ai>).
    Onnx,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// A checkpoint file (runs/<name>/weights/*.safetensors) or a run folder.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// The format.
    #[arg(long, value_enum, default_value = "onnx")]
    pub format: ExportFormat,
    /// The file to write (default: model.onnx in the checkpoint's run folder).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Input side in pixels, a multiple of 32 (default: the run's input size).
    #[arg(long)]
    pub input_size: Option<u32>,
    /// A symbolic batch dimension instead of 1.
    #[arg(long)]
    pub dynamic_batch: bool,
    /// ONNX opset, 13 to 21.
    #[arg(long, default_value_t = 17)]
    pub opset: i64,
    /// Also write N reference images and mustard's outputs for them beside the file
    /// (<out>.reference.safetensors), to check another runtime against.
    #[arg(long, value_name = "N")]
    pub reference: Option<usize>,
}

#[derive(Debug, Args)]
pub struct PredictArgs {
    /// A checkpoint file (runs/<name>/weights/*.safetensors) or a run folder.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// An image, or a folder of images (JPEG, PNG, WebP, BMP, TIFF, GIF; sub-folders included).
    #[arg(long)]
    pub input: PathBuf,
    /// Output folder.
    #[arg(long)]
    pub out: PathBuf,
    /// Also write the heatmaps as pictures (to compare with the targets).
    #[arg(long)]
    pub save_heatmaps: bool,
    /// Ground-truth COCO file of the inputs: with --save-heatmaps, the target heatmaps are drawn
    /// under the predicted ones (images matched by file name).
    #[arg(long, requires = "save_heatmaps")]
    pub gt: Option<PathBuf>,
    /// Draw boxes and people scoring at least this.
    #[arg(long, default_value_t = 0.3)]
    pub threshold: f32,
    /// Predict here (default: the run's device): cpu, cuda[:N] or metal.
    #[arg(long)]
    pub device: Option<DeviceSpec>,
}

/// Pseudo-label thresholds (default: SPEC §6's, or the `must` preset's).
#[derive(Debug, Args)]
pub struct ThresholdArgs {
    /// Keep boxes scoring at least this.
    #[arg(long)]
    pub det_threshold: Option<f64>,
    /// Keep people (pose teacher) scoring at least this.
    #[arg(long)]
    pub pose_threshold: Option<f64>,
    /// Leave joints whose heatmap score is below this unlabelled.
    #[arg(long)]
    pub keypoint_threshold: Option<f64>,
    /// Ignore pixels whose top class probability is below this.
    #[arg(long)]
    pub seg_threshold: Option<f64>,
    /// Softmax temperature of the soft class labels.
    #[arg(long)]
    pub temperature: Option<f64>,
}

impl ThresholdArgs {
    /// `base` with the values given on the command line.
    pub fn over(&self, base: Thresholds) -> Thresholds {
        Thresholds {
            detection: self.det_threshold.unwrap_or(base.detection),
            pose: self.pose_threshold.unwrap_or(base.pose),
            keypoint: self.keypoint_threshold.unwrap_or(base.keypoint),
            segmentation: self.seg_threshold.unwrap_or(base.segmentation),
            temperature: self.temperature.unwrap_or(base.temperature),
        }
    }
}

#[derive(Debug, Args)]
pub struct PseudoArgs {
    /// A teacher checkpoint (file or run folder); repeat for each task's teacher.
    #[arg(long = "teacher", required = true)]
    pub teachers: Vec<PathBuf>,
    /// The unlabelled images: a folder of images (sub-folders included) or a COCO file.
    #[arg(long)]
    pub images: PathBuf,
    /// Image folder of a COCO file (default: its folder).
    #[arg(long)]
    pub root: Option<PathBuf>,
    /// The store folder.
    #[arg(long)]
    pub out: PathBuf,
    /// This worker's slice: shards i, i+N, i+2N, … (e.g. $SLURM_ARRAY_TASK_ID/N).
    #[arg(long, default_value = "0/1")]
    pub shard: ShardSpec,
    /// Images per shard (fixed when the store is created).
    #[arg(long, default_value_t = 256)]
    pub shard_size: usize,
    /// Images per forward pass.
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    /// Network input size (default: the largest training size of the teachers).
    #[arg(long)]
    pub input_size: Option<u32>,
    /// Run the teachers here (default: their runs' device): cpu, cuda[:N] or metal (a GPU build needs `--features cuda` or `metal`).
    #[arg(long)]
    pub device: Option<DeviceSpec>,
    /// Leave out images that cannot be read or decoded (each is named once and stored with no
    /// task labelled) instead of stopping.
    #[arg(long)]
    pub skip_bad: bool,
    #[command(flatten)]
    pub thresholds: ThresholdArgs,
}

#[derive(Debug, Args)]
pub struct MustArgs {
    /// Model and data size.
    #[arg(long, value_enum, default_value = "quick")]
    pub preset: Preset,
    /// Start from this pipeline config (a `runs/must/config.toml`) instead of the preset; the
    /// flags still override it.
    #[arg(long, conflicts_with = "preset")]
    pub config: Option<PathBuf>,
    /// Folder of the runs (the pipeline writes runs/must/).
    #[arg(long, default_value = "runs")]
    pub runs: PathBuf,
    /// A teacher's labelled COCO file, as TASK=FILE; repeat per task. With --unlabelled and
    /// --test, runs on your data instead of the synthetic default.
    #[arg(long = "labelled", value_name = "TASK=FILE", requires_all = ["unlabelled", "test"])]
    pub labelled: Vec<String>,
    /// An already-trained teacher, as TASK=CHECKPOINT (a run folder or weights file), used
    /// instead of training one on --labelled; repeat per task.
    #[arg(long = "teacher", value_name = "TASK=CHECKPOINT", requires_all = ["unlabelled", "test"])]
    pub teacher: Vec<String>,
    /// The unlabelled images: a folder or a COCO file.
    #[arg(long)]
    pub unlabelled: Option<PathBuf>,
    /// The held-out labelled COCO file of every task (FILE), or of one task (TASK=FILE, in
    /// that teacher's label space); repeat per task.
    #[arg(long, value_name = "[TASK=]FILE")]
    pub test: Vec<String>,
    /// Tasks with a teacher (default: every task, or those given with --labelled).
    #[arg(long, value_delimiter = ',')]
    pub tasks: Option<Vec<Task>>,
    /// Synthetic default: labelled images per task.
    #[arg(long)]
    pub per_task: Option<usize>,
    /// Synthetic default: unlabelled images.
    #[arg(long)]
    pub unlabelled_images: Option<usize>,
    /// Synthetic default: held-out test images.
    #[arg(long)]
    pub test_images: Option<usize>,
    /// Synthetic default: image side.
    #[arg(long)]
    pub size: Option<u32>,
    #[command(flatten)]
    pub optim: OptimArgs,
    /// Epochs of each teacher.
    #[arg(long)]
    pub teacher_epochs: Option<usize>,
    /// Epochs of the student.
    #[arg(long)]
    pub student_epochs: Option<usize>,
    /// A task's weight in the student's loss, as TASK=WEIGHT (e.g. detection=3); repeat per
    /// task. The other tasks keep the preset's weights.
    #[arg(long, value_name = "TASK=WEIGHT")]
    pub student_loss_weight: Vec<String>,
    /// Images per pseudo-label shard.
    #[arg(long)]
    pub shard_size: Option<usize>,
    /// Downstream tasks of the transfer test, comma-separated, or `none`.
    #[arg(long)]
    pub transfer: Option<String>,
    /// Your downstream data for the transfer test, as TASK=TRAIN,TEST (two COCO files no
    /// teacher saw); repeat per task.
    #[arg(long, value_name = "TASK=TRAIN,TEST")]
    pub downstream: Vec<String>,
    /// Labelled images of each synthetic downstream train split.
    #[arg(long)]
    pub transfer_images: Option<usize>,
    /// Fine-tuning epochs of the transfer test.
    #[arg(long)]
    pub transfer_epochs: Option<usize>,
    /// Also fine-tune from each teacher's backbone in the transfer test (yes with
    /// --preset study).
    #[arg(long)]
    pub transfer_from_teachers: bool,
    /// Train every model with this many seeds; the report gives mean ± standard deviation and
    /// says whether the claim holds within the noise (3 with --preset study).
    #[arg(long)]
    pub seeds: Option<usize>,
    /// Leave bad records of every dataset out, and images that fail to decode in any stage
    /// (each is named once), instead of refusing the dataset or stopping.
    #[arg(long)]
    pub skip_bad: bool,
    #[command(flatten)]
    pub thresholds: ThresholdArgs,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// A checkpoint file or run folder (default: an untrained model of --config/--preset).
    #[arg(long, conflicts_with_all = ["config", "tasks", "backbone", "device"])]
    pub checkpoint: Option<PathBuf>,
    /// A TOML config.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Preset of the untrained model.
    #[arg(long, value_enum, default_value = "quick")]
    pub preset: Preset,
    #[command(flatten)]
    pub model: ModelArgs,
    /// Network input side.
    #[arg(long, default_value_t = 512)]
    pub input_size: u32,
    /// Images per forward pass.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Timed iterations.
    #[arg(long, default_value_t = 10)]
    pub iterations: usize,
    /// Untimed iterations first.
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    /// An image to run on (default: a synthetic scene of the input size).
    #[arg(long)]
    pub image: Option<PathBuf>,
    /// Device: cpu, cuda:N or metal.
    #[arg(long)]
    pub device: Option<DeviceSpec>,
}

impl BenchArgs {
    /// The untrained model's config.
    pub fn config(&self) -> anyhow::Result<Config> {
        let mut config = match &self.config {
            Some(p) => Config::read(p)?,
            None => Config::preset(self.preset, "bench"),
        };
        self.model.apply(&mut config);
        config.device = self.device.unwrap_or(config.device);
        Ok(config)
    }
}

#[derive(Debug, Args)]
pub struct SynthArgs {
    /// Output folder.
    #[arg(long)]
    pub out: PathBuf,
    /// Number of images (without --splits).
    #[arg(long, default_value_t = 200)]
    pub images: usize,
    /// Image side in pixels.
    #[arg(long, default_value_t = 256)]
    pub size: u32,
    /// Seed of every random choice.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Most objects per scene.
    #[arg(long, default_value_t = 6)]
    pub max_objects: usize,
    /// Write the MuST splits instead of one file, each task in its own label space
    /// (docs/SYNTHETIC.md): train_<task>.json per task, unlabeled.json and test_<task>.json.
    #[arg(long, conflicts_with = "downstream")]
    pub splits: bool,
    /// Write the downstream family instead (new shapes, backgrounds and image labels, for the
    /// transfer test): train_<task>.json of --per-task images and test_<task>.json of --test
    /// images for detection, segmentation, depth and classification.
    #[arg(long)]
    pub downstream: bool,
    /// Images per single-task split (with --splits or --downstream).
    #[arg(long, default_value_t = 200)]
    pub per_task: usize,
    /// Images of the unlabelled split (with --splits).
    #[arg(long, default_value_t = 400)]
    pub unlabeled: usize,
    /// Images of the test split, shared by the test_<task>.json files (with --splits or
    /// --downstream).
    #[arg(long, default_value_t = 100)]
    pub test: usize,
}
