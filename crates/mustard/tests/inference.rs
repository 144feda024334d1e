//! The inference copy of a model (`MultiTaskModel::for_inference`: BatchNorm folded once,
//! weights copied, transformed weights kept) against the model itself.

use anyhow::Result;
use mustard::bench::untrained;
use mustard::config::{Config, NeckConfig};
use mustard::core::candle_core::{Device, Tensor};
use mustard::core::candle_nn::VarMap;
use mustard::data::Task;
use mustard::{MultiTaskModel, Preset};

mod common;

use common::randomise;

/// Every output of `model` on `x`, by head and name, as the bits of its values.
fn outputs(model: &MultiTaskModel, x: &Tensor) -> Result<Vec<(String, Vec<u32>)>> {
    let out = model.forward_t(x, false)?;
    let mut all = Vec::new();
    for (task, o) in out.0.iter() {
        for (name, t) in o.named() {
            let values = t.flatten_all()?.to_vec1::<f32>()?;
            all.push((
                format!("{}.{name}", task.name()),
                values.iter().map(|v| v.to_bits()).collect(),
            ));
        }
    }
    Ok(all)
}

/// Multiplies every variable by `factor`, in place (what an optimizer step does to the storage
/// a model's layers share with its variables).
fn scale_all(varmap: &VarMap, factor: f64) -> Result<()> {
    for var in varmap.data().lock().unwrap().values() {
        var.set(&(var.as_tensor() * factor)?)?;
    }
    Ok(())
}

/// The first output value where `a` and `b` differ, as `(output, index, a, b)`.
fn first_difference(
    a: &[(String, Vec<u32>)],
    b: &[(String, Vec<u32>)],
) -> Option<(String, usize, f32, f32)> {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).find_map(|((name, x), (other, y))| {
        assert_eq!((name, x.len()), (other, y.len()));
        let i = x.iter().zip(y).position(|(p, q)| p != q)?;
        Some((name.clone(), i, f32::from_bits(x[i]), f32::from_bits(y[i])))
    })
}

#[test]
fn the_inference_copy_gives_the_models_outputs_bit_for_bit_and_keeps_its_weights() -> Result<()> {
    let mut config = Config::preset(Preset::Quick, "inference");
    config.model.tasks = Task::ALL.to_vec();
    check(&config)?;
    // The CenterNet neck: transposed convolutions and BatchNorms copied as they are.
    config.model.neck = NeckConfig::Deconv {
        widths: vec![32, 32, 32],
    };
    check(&config)
}

fn check(config: &Config) -> Result<()> {
    let (varmap, model) = untrained(config)?;
    randomise(&varmap)?;
    // 256 px: the neck's and heads' 3x3 convolutions at 64x64 take the Winograd kernel, whose
    // transformed weights the copy keeps.
    let x = Tensor::randn(0f32, 1.0, (2, 3, 256, 256), &Device::Cpu)?;
    let expected = outputs(&model, &x)?;
    assert_eq!(expected.len(), 12, "every output of the five heads");

    let copy = model.for_inference()?;
    // The first call makes the kept transforms, the second uses them.
    assert_eq!(first_difference(&outputs(&copy, &x)?, &expected), None);
    assert_eq!(first_difference(&outputs(&copy, &x)?, &expected), None);

    let err = copy.forward_t(&x, true).unwrap_err().to_string();
    assert_eq!(
        err,
        "this network is a copy made for inference (for_inference), which cannot train: train \
         the model it was made from"
    );

    // A change of the variables reaches the model, not the copy.
    scale_all(&varmap, 0.5)?;
    let changed = outputs(&model, &x)?;
    assert!(first_difference(&changed, &expected).is_some());
    assert_eq!(first_difference(&outputs(&copy, &x)?, &expected), None);
    let again = model.for_inference()?;
    assert_eq!(first_difference(&outputs(&again, &x)?, &changed), None);
    Ok(())
}
