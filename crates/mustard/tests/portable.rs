//! The path a GPU takes, checked on the CPU: one training step of the multi-task model (every
//! head, the FPN neck) with the custom ops' portable path — the composed candle ops that CUDA
//! and Metal run — against the fast CPU kernels, in f32: every loss to 1e-5 relative, every
//! gradient to 3e-3 relative in max-norm and 1e-3 in L2 (measured on a 2-core AMD EPYC: median
//! 7e-5, worst 9.1e-4 and 2.1e-4, in the depth head, whose scale-invariant loss subtracts
//! means). That the two paths are the same computation, op by op, is shown in f64 by
//! `crates/mustard-core/tests/portable.rs` (1e-11 or closer); what remains here is f32
//! rounding through some thirty layers. (Its own test binary: the kernels are a process-wide
//! setting.)

use std::sync::Arc;

use anyhow::Result;
use mustard::config::Config;
use mustard::core::candle_core::{DType, Device, Tensor};
use mustard::core::ops::{ConvAlgorithm, Kernels};
use mustard::data::synth::{self, SynthConfig};
use mustard::data::{Dataset, Loader, LoaderConfig, Task};
use mustard::train::classes_of;
use mustard::{MultiTaskModel, Preset};

/// Every variable's gradient, by name.
type Gradients = Vec<(String, Vec<f32>)>;

/// Each task's loss and every variable's gradient after one forward and backward pass.
fn step(
    model: &MultiTaskModel,
    vars: &[(String, Tensor)],
    batch: &mustard::targets::Batch,
) -> Result<(Vec<(Task, f32)>, Gradients)> {
    let out = model.forward_t(&batch.images, true)?;
    let losses = model.loss(&out, batch)?;
    let per_task = losses
        .per_task
        .iter()
        .map(|(t, l)| Ok((t, l.to_scalar::<f32>()?)))
        .collect::<Result<Vec<_>>>()?;
    let grads = losses.total.backward()?;
    let mut g = Vec::new();
    for (name, var) in vars {
        let grad = grads
            .get(var)
            .map(|t| t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>())
            .transpose()?
            .unwrap_or_default();
        g.push((name.clone(), grad));
    }
    Ok((per_task, g))
}

fn l2(v: &[f32]) -> f32 {
    v.iter().map(|x| x * x).sum::<f32>().sqrt()
}

fn max_abs(v: &[f32]) -> f32 {
    v.iter().fold(0f32, |m, x| m.max(x.abs()))
}

#[test]
fn a_training_step_on_the_portable_path_agrees_with_the_fast_cpu_kernels() -> Result<()> {
    let dir = std::env::temp_dir().join(format!("mustard-portable-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let size = 64;
    synth::write(
        &dir,
        &SynthConfig {
            size,
            seed: 11,
            max_objects: 4,
        },
        4,
        None,
    )?;
    let ds = Arc::new(Dataset::open(&dir.join("instances.json"), None)?);
    let mut config = Config::preset(Preset::Quick, "portable");
    config.model.tasks = Task::ALL.to_vec();
    config.model.classes = classes_of(ds.as_ref());
    let (varmap, model) = MultiTaskModel::build(&config.model, 3, &Device::Cpu)?;
    let loader = Loader::new(
        ds,
        Arc::new(model.encoder(size)),
        LoaderConfig::eval(4, size),
    )?;
    let batch = loader.epoch(0).next().expect("one batch")?;
    let mut vars: Vec<(String, Tensor)> = varmap
        .data()
        .lock()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
        .collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    // The model's variables are tensors of the VarMap: the same values on both paths. BatchNorm
    // running statistics move in a training pass, so each path starts from a copy.
    let start = vars
        .iter()
        .map(|(_, t)| t.copy())
        .collect::<mustard::core::candle_core::Result<Vec<Tensor>>>()?;
    for algorithm in [ConvAlgorithm::Direct, ConvAlgorithm::Winograd] {
        algorithm.apply();
        let mut results = Vec::new();
        for kernels in [Kernels::Fast, Kernels::Portable] {
            kernels.apply();
            {
                let data = varmap.data().lock().unwrap();
                for ((name, _), value) in vars.iter().zip(&start) {
                    data[name].set(value)?;
                }
            }
            results.push(step(&model, &vars, &batch)?);
        }
        Kernels::Fast.apply();
        let ((fast_loss, fast_grads), (port_loss, port_grads)) = (&results[0], &results[1]);
        assert_eq!(fast_loss.len(), 5, "every head has a loss");
        for ((task, a), (_, b)) in fast_loss.iter().zip(port_loss) {
            let rel = (a - b).abs() / b.abs().max(1e-12);
            assert!(
                rel <= 1e-5,
                "{algorithm:?}: {task} loss {a} (fast) vs {b} (portable): {rel:e} relative"
            );
        }
        let (mut checked, mut worst) = (0, 0f32);
        for ((name, a), (_, b)) in fast_grads.iter().zip(port_grads) {
            assert_eq!(a.len(), b.len(), "{name}: a gradient on one path only");
            if b.is_empty() {
                continue;
            }
            let diff: Vec<f32> = a.iter().zip(b).map(|(x, y)| x - y).collect();
            let rel = max_abs(&diff) / max_abs(b).max(1e-20);
            let rel_l2 = l2(&diff) / l2(b).max(1e-20);
            worst = worst.max(rel);
            assert!(
                rel <= 3e-3 && rel_l2 <= 1e-3,
                "{algorithm:?}: gradient of {name}: {rel:e} relative (max-norm), {rel_l2:e} (L2)"
            );
            checked += 1;
        }
        assert!(checked > 100, "{checked} gradients compared");
        eprintln!("{algorithm:?}: {checked} gradients, worst {worst:e} relative (max-norm)");
    }
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
