//! `mustard export`: a trained model as one ONNX file, for ONNX Runtime, TensorRT, OpenVINO
//! or any other runtime. The graph is the evaluation-mode network (backbone, neck, every head's
//! raw outputs, named `<task>.<map>`), built by the layers themselves
//! ([`MultiTaskModel::onnx`]); the preprocessing and the decoding parameters travel in the
//! file's metadata, so a runtime can prepare images and decode the maps as mustard does.

use std::path::{Path, PathBuf};

use mustard_core::candle_core::{DType, Tensor};
use mustard_core::onnx::{Graph, ValueInfo};
use serde_json::json;

use crate::config::Config;
use crate::model::MultiTaskModel;
use crate::targets::{MEAN, STD};
use crate::{Error, Result};

/// The name of the graph's input.
pub const INPUT: &str = "images";

/// The opsets the exporter writes (`Resize` with an empty `roi` needs 13).
pub const OPSETS: std::ops::RangeInclusive<i64> = 13..=21;

/// How to export.
#[derive(Debug, Clone)]
pub struct ExportOptions {
    /// Input side (a multiple of 32); `None`: the run's `train.input_size`.
    pub input_size: Option<u32>,
    /// A symbolic batch dimension (`batch`) instead of 1.
    pub dynamic_batch: bool,
    /// The ONNX opset.
    pub opset: i64,
    /// Also write `<out>.reference.safetensors`: this many deterministic input images
    /// (`images`) and mustard's outputs for them (named as the graph's), to check a runtime
    /// against (`bench/onnx_check.py`).
    pub reference: Option<usize>,
}

impl Default for ExportOptions {
    fn default() -> Self {
        Self {
            input_size: None,
            dynamic_batch: false,
            opset: 17,
            reference: None,
        }
    }
}

/// What was written.
#[derive(Debug, Clone)]
pub struct Exported {
    /// The ONNX file.
    pub path: PathBuf,
    /// The input side.
    pub input_size: u32,
    /// Each output's name and shape (`None` for the symbolic batch).
    pub outputs: Vec<(String, Vec<Option<usize>>)>,
    /// Nodes in the graph.
    pub nodes: usize,
    /// File size in bytes.
    pub bytes: usize,
    /// The reference inputs and outputs, when asked for.
    pub reference: Option<PathBuf>,
}

/// Where the reference inputs and outputs of the ONNX file `out` go.
pub fn reference_path(out: &Path) -> PathBuf {
    out.with_extension("reference.safetensors")
}

/// Exports the trained model of `checkpoint` (a run folder or weights file; its weight
/// averages when it kept them) to `out`, written atomically.
pub fn export_onnx(checkpoint: &Path, out: &Path, options: &ExportOptions) -> Result<Exported> {
    let (config, _, model) =
        crate::checkpoint::load_model_on(checkpoint, Some(Default::default()))?;
    let (bytes, exported) = onnx_model(&config, &model, options)?;
    mustard_core::io::write_bytes(out, &bytes)?;
    let reference = match options.reference {
        Some(n) => {
            let path = reference_path(out);
            write_reference(&model, exported.input_size as usize, n.max(1), &path)?;
            Some(path)
        }
        None => None,
    };
    Ok(Exported {
        path: out.to_path_buf(),
        reference,
        ..exported
    })
}

/// `n` deterministic images in the normalised range (a fixed linear congruential sequence)
/// and the model's outputs for them, as safetensors.
fn write_reference(model: &MultiTaskModel, size: usize, n: usize, path: &Path) -> Result<()> {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let values: Vec<f32> = (0..n * 3 * size * size)
        .map(|_| {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((state >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
        })
        .collect();
    let images = Tensor::from_vec(values, (n, 3, size, size), model.device())?;
    let out = model.forward_t(&images, false)?;
    let mut tensors = std::collections::HashMap::new();
    for (task, o) in out.0.iter() {
        for (name, t) in o.named() {
            tensors.insert(format!("{}.{name}", task.name()), t.to_dtype(DType::F32)?);
        }
    }
    tensors.insert(INPUT.to_string(), images);
    mustard_core::io::save_safetensors(&tensors, path)?;
    Ok(())
}

/// The serialised ONNX model of `model` (trained with `config`) and what it holds.
pub fn onnx_model(
    config: &Config,
    model: &MultiTaskModel,
    options: &ExportOptions,
) -> Result<(Vec<u8>, Exported)> {
    if !OPSETS.contains(&options.opset) {
        return Err(Error::config(
            "opset",
            format!(
                "{} is not supported: choose {} to {}",
                options.opset,
                OPSETS.start(),
                OPSETS.end()
            ),
        ));
    }
    let size = options.input_size.unwrap_or(config.train.input_size);
    if size == 0 || size % 32 != 0 {
        return Err(Error::config(
            "input_size",
            format!("{size} must be a positive multiple of 32"),
        ));
    }
    let batch = |dynamic: bool| -> std::result::Result<usize, String> {
        if dynamic {
            Err("batch".into())
        } else {
            Ok(1)
        }
    };
    let mut g = Graph::new();
    let s = size as usize;
    let x = g.input(ValueInfo {
        name: INPUT.into(),
        shape: vec![batch(options.dynamic_batch), Ok(3), Ok(s), Ok(s)],
    });
    let outputs = model.onnx(&mut g, &x)?;
    // The shapes of the outputs, from one forward pass on a blank image.
    let probe = Tensor::zeros((1, 3, s, s), DType::F32, model.device())?;
    let forward = model.forward_t(&probe, false)?;
    let mut shapes = Vec::new();
    for (task, out) in forward.0.iter() {
        for (name, t) in out.named() {
            shapes.push((format!("{}.{name}", task.name()), t.dims().to_vec()));
        }
    }
    let mut described = Vec::new();
    for (name, value) in &outputs {
        let dims = shapes
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, d)| d.clone())
            .ok_or_else(|| Error::config("export", format!("no forward output named {name}")))?;
        let mut shape: Vec<std::result::Result<usize, String>> =
            dims.iter().map(|&d| Ok(d)).collect();
        shape[0] = batch(options.dynamic_batch);
        described.push((
            name.clone(),
            shape.iter().map(|d| d.as_ref().ok().copied()).collect(),
        ));
        g.output(
            value,
            ValueInfo {
                name: name.clone(),
                shape,
            },
        );
    }
    let nodes = g.len();
    let bytes = g.to_model(
        "mustard",
        options.opset,
        &metadata(config, size, &described),
    );
    let exported = Exported {
        path: PathBuf::new(),
        input_size: size,
        outputs: described,
        nodes,
        bytes: bytes.len(),
        reference: None,
    };
    Ok((bytes, exported))
}

/// The preprocessing and decoding parameters, as `metadata_props`: plain values and JSON.
fn metadata(
    config: &Config,
    size: u32,
    outputs: &[(String, Vec<Option<usize>>)],
) -> Vec<(String, String)> {
    let classes = &config.model.classes;
    let pose = classes
        .pose_category()
        .map(|p| json!({"name": p.name, "id": p.id}));
    let tasks: Vec<&str> = config.model.tasks.iter().map(|t| t.name()).collect();
    let preprocessing = json!({
        "input": INPUT,
        "layout": "NCHW, RGB",
        "size": [size, size],
        "resize": "letterbox: scale the longer side to size, centre, pad with black (0, 0, 0) before normalising",
        "normalise": "(pixel / 255 - mean) / std, per channel",
        "mean": MEAN,
        "std": STD,
    });
    let decoding = json!({
        "stride": mustard_heads::STRIDE,
        "detection": {
            "outputs": "hm: class logits (sigmoid), wh: box width and height in stride-4 cells, reg: sub-cell offset of the centre",
            "peaks": "3x3 max-pool non-maximum suppression on sigmoid(hm)",
            "top_k": 100,
            "box": "centre (x + reg.x, y + reg.y), size wh, times stride",
            "categories": classes.categories,
            "category_ids": classes.category_ids,
        },
        "pose": {
            "outputs": "hm, wh, reg: the person detector as in detection; hps: joint offsets from the centre (x, y per joint); hm_hp: joint logits (sigmoid); hp_offset: sub-cell offset of joint peaks",
            "top_k": 100,
            "joint_threshold": 0.1,
            "joints": classes.joints,
            "category": pose,
        },
        "segmentation": {
            "outputs": "logits at the input size; argmax over channels",
            "classes": classes.segmentation_classes(),
        },
        "depth": {
            "outputs": "log_depth at the input size; exp gives metres",
            "relative": config.model.relative_depth,
        },
        "classification": {
            "outputs": "logits; softmax over classes",
            "classes": classes.labels,
        },
    });
    let outputs: Vec<_> = outputs
        .iter()
        .map(|(name, shape)| json!({"name": name, "shape": shape}))
        .collect();
    vec![
        ("mustard.tasks".into(), tasks.join(",")),
        ("mustard.input_size".into(), size.to_string()),
        ("mustard.preprocessing".into(), preprocessing.to_string()),
        ("mustard.decoding".into(), decoding.to_string()),
        (
            "mustard.outputs".into(),
            serde_json::Value::from(outputs).to_string(),
        ),
        (
            "mustard.backbone".into(),
            format!("{:?}", config.model.backbone).to_lowercase(),
        ),
    ]
}
