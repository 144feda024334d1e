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

/// Largest difference allowed between the two runtimes, relative to each output's largest
/// magnitude (at least 1).
const TOLERANCE: f32 = 1e-4;

/// Sets every variable to deterministic values of a trained network's size: weights of about
/// 1/√fan-in, biases and BatchNorm statistics and affine parameters away from their initial
/// 0 and 1 (a fresh model's heads output near-constants, which would hide a wrong layer).
fn randomise(varmap: &mustard::core::candle_nn::VarMap) -> Result<()> {
    let data = varmap.data().lock().unwrap();
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    for (k, name) in names.into_iter().enumerate() {
        let var = &data[name];
        let n = var.elem_count();
        let fan_in = (n / var.dims().first().copied().unwrap_or(1).max(1)).max(1) as f32;
        let wave = |scale: f32, offset: f32| -> Vec<f32> {
            (0..n)
                .map(|i| {
                    let u = ((i as u64 * 7919 + k as u64 * 104_729) % 1000) as f32 / 1000.0;
                    offset + scale * (u - 0.5)
                })
                .collect()
        };
        let values = if name.ends_with("running_var") {
            wave(1.0, 1.0)
        } else if name.ends_with("running_mean") {
            wave(0.4, 0.0)
        } else if var.rank() == 1 {
            // BatchNorm scales (around 1) and shifts, and every bias.
            if name.contains("bn")
                || name.contains("downsample.1")
                || name.contains("deconv_layers")
            {
                if name.ends_with("weight") {
                    wave(0.5, 1.0)
                } else {
                    wave(0.2, 0.0)
                }
            } else {
                wave(0.2, 0.0)
            }
        } else {
            wave(3.4 / fan_in.sqrt(), 0.0)
        };
        var.set(&Tensor::from_vec(values, var.shape(), &Device::Cpu)?.to_dtype(var.dtype())?)?;
    }
    Ok(())
}

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
