//! Helpers shared by the integration tests of this crate.

use anyhow::Result;
use mustard::core::candle_core::{Device, Tensor};

/// Sets every variable to deterministic values of a trained network's size: weights of about
/// 1/√fan-in, biases and BatchNorm statistics and affine parameters away from their initial
/// 0 and 1 (a fresh model's heads output near-constants, which would hide a wrong layer).
pub fn randomise(varmap: &mustard::core::candle_nn::VarMap) -> Result<()> {
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
