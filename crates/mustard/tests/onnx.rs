//! `mustard export`'s ONNX graphs evaluated by another runtime (tract, a pure-Rust ONNX
//! runtime): every output of every head equals mustard's own forward pass on 20 images, for
//! the tiny backbone with the fused FPN and for ResNet-18 with CenterNet's deconvolution neck.

use std::sync::Arc;

use anyhow::Result;
use mustard::config::{Config, NeckConfig};
use mustard::core::candle_core::{DType, Device, Tensor};
use mustard::data::synth::{self, SynthConfig};
use mustard::data::{Dataset, Task};
use mustard::export::{onnx_model, ExportOptions};
use mustard::train::classes_of;
use mustard::{MultiTaskModel, Preset};
use tract_onnx::prelude::*;

mod common;

use common::randomise;

/// Largest difference allowed between the two runtimes, relative to each output's largest
/// magnitude (at least 1).
const TOLERANCE: f32 = 1e-4;

fn check(config: &Config, images: &Tensor) -> Result<()> {
    let (varmap, model) = MultiTaskModel::build(&config.model, 5, &Device::Cpu)?;
    randomise(&varmap)?;
    let options = ExportOptions {
        input_size: Some(64),
        dynamic_batch: true,
        opset: 17,
        reference: None,
    };
    let (bytes, exported) = onnx_model(config, &model, &options)?;
    let n = images.dim(0)?;
    let onnx = onnx()
        .model_for_read(&mut bytes.as_slice())?
        .with_input_fact(0, f32::fact([n, 3, 64, 64]).into())?
        .into_optimized()?
        .into_runnable()?;
    let input: tract_onnx::prelude::Tensor = tract_ndarray::Array4::from_shape_vec(
        (n, 3, 64, 64),
        images.flatten_all()?.to_vec1::<f32>()?,
    )?
    .into();
    let results = onnx.run(tvec!(input.into()))?;
    let expected = model.forward_t(images, false)?;
    let mut names = Vec::new();
    for (task, out) in expected.0.iter() {
        for (name, t) in out.named() {
            names.push((format!("{}.{name}", task.name()), t.clone()));
        }
    }
    assert_eq!(
        exported
            .outputs
            .iter()
            .map(|(n, _)| n.clone())
            .collect::<Vec<_>>(),
        names.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>()
    );
    assert_eq!(results.len(), names.len());
    for ((name, want), got) in names.iter().zip(results.iter()) {
        let got = got.clone().into_tensor();
        let got = got.to_plain_array_view::<f32>()?;
        assert_eq!(got.shape(), want.dims(), "{name}");
        let want = want.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        let scale = want.iter().fold(1f32, |m, v| m.max(v.abs()));
        let worst = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        eprintln!(
            "{:?} {name}: max |Δ| {worst:.2e} (scale {scale:.2})",
            config.model.backbone
        );
        assert!(
            worst <= TOLERANCE * scale,
            "{name}: max |Δ| {worst:e}, scale {scale}"
        );
    }
    Ok(())
}

#[test]
fn exported_graphs_compute_what_mustard_computes() -> Result<()> {
    let dir = std::env::temp_dir().join(format!("mustard-onnx-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    synth::write(
        &dir,
        &SynthConfig {
            size: 64,
            seed: 4,
            max_objects: 4,
        },
        20,
        None,
    )?;
    let ds = Arc::new(Dataset::open(&dir.join("instances.json"), None)?);
    let mut config = Config::preset(Preset::Quick, "onnx");
    config.model.tasks = Task::ALL.to_vec();
    config.model.classes = classes_of(ds.as_ref());
    config.train.input_size = 64;
    // Twenty synthetic images, normalised as the loader does.
    let (varmap, model) = MultiTaskModel::build(&config.model, 5, &Device::Cpu)?;
    drop(varmap);
    let encoder = Arc::new(model.encoder_for(ds.as_ref(), 64));
    let loader = mustard::data::Loader::new(
        ds.clone(),
        encoder,
        mustard::data::LoaderConfig::eval(20, 64),
    )?;
    let batch = loader.epoch(0).next().unwrap()?;
    assert_eq!(batch.images.dims(), [20, 3, 64, 64]);

    check(&config, &batch.images)?;
    config.model.backbone = mustard::backbone::ResNetPreset::R18;
    config.model.neck = NeckConfig::Deconv {
        widths: vec![64, 64, 64],
    };
    check(&config, &batch.images)?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
