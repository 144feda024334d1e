//! Times the MCN multi-task network (`Config::preset(Full)`: ResNet-18 + FPN(128, fused
//! stride-4 map) with the detection, segmentation and pose heads) for the side-by-side
//! comparison with PyTorch eager of `cargo xtask bench` (`bench/mcn_speed.py` is the other side).
//!
//! - `--case forward`: `forward_t(x, false)` on a 1x3x512x512 input (evaluation mode);
//! - `--case train`: one training step at 8x3x256x256 as the training loop takes it: forward,
//!   losses (on 8 encoded synthetic scenes), reading the per-task values, backward,
//!   `clip_grad_norm(10)`, AdamW (lr 5e-4, weight decay 1e-4 except biases and 1-D parameters);
//! - `--case params`: only the parameter count.
//!
//! One case per process, so that the peak resident memory (`VmHWM`) is that case's. The thread
//! count is candle's and rayon's (`RAYON_NUM_THREADS`). Prints one JSON line.
//!
//! ```text
//! RAYON_NUM_THREADS=2 cargo run --release -p mustard --example mcn_speed -- --case forward --iterations 5
//! ```

use std::time::Instant;

use anyhow::{bail, Context, Result};
use mustard::core::candle_core::{DType, Device, Tensor};
use mustard::core::optim::{
    clip_grad_norm, param_groups, trainable_vars, AdamW, AdamWConfig, Optimizer,
};
use mustard::data::augment::Affine;
use mustard::data::synth::{self, SynthConfig};
use mustard::data::{BatchEncoder, Sample, Task, TaskSet};
use mustard::data::{Label, Object};
use mustard::targets::Batch;
use mustard::{Config, MultiTaskModel, Preset};

struct Args {
    case: String,
    iterations: usize,
    warmup: usize,
    default_malloc: bool,
}

fn parse() -> Result<Args> {
    let mut args = Args {
        case: "forward".into(),
        iterations: 5,
        warmup: 1,
        default_malloc: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = || it.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--case" => args.case = value()?,
            "--iterations" => args.iterations = value()?.parse()?,
            "--warmup" => args.warmup = value()?.parse()?,
            // The im2col kernel for every convolution, to compare with the Winograd kernel.
            "--no-winograd" => mustard_core::ops::set_winograd(false),
            // The allocator's default behaviour (freed activations go back to the kernel).
            "--default-malloc" => args.default_malloc = true,
            _ => bail!(
                "unknown argument {a} (--case forward|train|params, --iterations K, --warmup W, --no-winograd, --default-malloc)"
            ),
        }
    }
    Ok(args)
}

/// Synthetic scene `index` at `size` px as a sample labelled for every task.
fn scene_sample(size: u32, index: u64) -> Result<Sample> {
    let cfg = SynthConfig {
        size,
        seed: 0,
        max_objects: 6,
    };
    let scene = synth::render(&cfg, index)?;
    let objects = scene
        .objects
        .iter()
        .map(|o| Object {
            bbox: [
                o.bbox[0] as f32,
                o.bbox[1] as f32,
                (o.bbox[0] + o.bbox[2]) as f32,
                (o.bbox[1] + o.bbox[3]) as f32,
            ],
            class: o.class,
            crowd: false,
            keypoints: o.keypoints.as_ref().map(|k| {
                k.chunks(3)
                    .map(|j| [j[0] as f32, j[1] as f32, j[2] as f32])
                    .collect()
            }),
        })
        .collect();
    Ok(Sample {
        image_id: index + 1,
        image: scene.image,
        objects,
        semantic: Some(scene.semantic),
        depth: Some(scene.depth),
        label: Some(Label::Class(scene.label)),
        tasks: TaskSet::all(),
        transform: Affine::IDENTITY,
        original_size: (size, size),
    })
}

fn batch(model: &MultiTaskModel, b: usize, size: u32) -> Result<Batch> {
    let encoder = model.encoder(size);
    let items = (0..b as u64)
        .map(|i| Ok(encoder.encode(scene_sample(size, i)?)?))
        .collect::<Result<Vec<_>>>()?;
    Ok(encoder.collate(items)?)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn main() -> Result<()> {
    let args = parse()?;
    // As the CLI does.
    if !args.default_malloc {
        mustard_core::memory::retain_freed_memory();
    }
    let mut config = Config::preset(Preset::Full, "mcn-speed");
    config.model.tasks = vec![Task::Detection, Task::Segmentation, Task::Pose];
    let (varmap, model) = mustard::bench::untrained(&config)?;
    let vars = trainable_vars(&varmap);
    let parameters: usize = vars.iter().map(|(_, v)| v.elem_count()).sum();
    let mut result = serde_json::json!({
        "impl": "mustard",
        "version": env!("CARGO_PKG_VERSION"),
        "case": args.case,
        "threads": mustard::core::candle_core::utils::get_num_threads(),
        "parameters": parameters,
    });
    let mut times = Vec::new();
    match args.case.as_str() {
        "params" => {}
        "forward" => {
            result["shape"] = serde_json::json!([1, 3, 512, 512]);
            let x = Tensor::randn(0f32, 1.0, (1, 3, 512, 512), &Device::Cpu)?;
            for it in 0..args.warmup + args.iterations {
                let t0 = Instant::now();
                let out = model.forward_t(&x, false)?;
                let dt = t0.elapsed().as_secs_f64();
                std::hint::black_box(out);
                if it >= args.warmup {
                    times.push(dt);
                }
            }
        }
        "train" => {
            let (b, size) = (8, 256);
            result["shape"] = serde_json::json!([b, 3, size, size]);
            let batch = batch(&model, b, size)?;
            let mut optimizer = AdamW::new(
                param_groups(&varmap, config.train.weight_decay),
                AdamWConfig {
                    lr: config.train.lr,
                    ..Default::default()
                },
            )?;
            let mut values = serde_json::Map::new();
            // forward, losses, backward, clipping + AdamW
            let mut phases = [(); 4].map(|_| Vec::new());
            for it in 0..args.warmup + args.iterations {
                let t0 = Instant::now();
                let out = model.forward_t(&batch.images, true)?;
                let t1 = Instant::now();
                let losses = model.loss(&out, &batch)?;
                for (task, loss) in &losses.per_task {
                    let v = loss.to_dtype(DType::F32)?.to_scalar::<f32>()?;
                    values.insert(task.to_string(), v.into());
                }
                let t2 = Instant::now();
                let mut grads = losses.total.backward()?;
                let t3 = Instant::now();
                clip_grad_norm(&mut grads, &vars, 10.0)?;
                optimizer.step(&grads)?;
                let t4 = Instant::now();
                if it >= args.warmup {
                    times.push((t4 - t0).as_secs_f64());
                    for (p, (a, z)) in
                        phases
                            .iter_mut()
                            .zip([(t0, t1), (t1, t2), (t2, t3), (t3, t4)])
                    {
                        p.push((z - a).as_secs_f64() * 1e3);
                    }
                }
            }
            result["loss"] = values.into();
            let names = ["forward", "loss", "backward", "optimizer"];
            result["phases_ms"] = names
                .iter()
                .zip(phases)
                .map(|(n, p)| (n.to_string(), median(p).into()))
                .collect::<serde_json::Map<_, _>>()
                .into();
        }
        other => bail!("unknown case {other} (forward, train or params)"),
    }
    if !times.is_empty() {
        result["times_ms"] = times.iter().map(|t| t * 1e3).collect::<Vec<_>>().into();
        result["median_ms"] = (median(times) * 1e3).into();
    }
    result["peak_memory_mib"] = mustard::bench::peak_memory_mib().into();
    println!("{result}");
    Ok(())
}
