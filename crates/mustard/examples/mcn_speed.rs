//! Times the MCN multi-task network (`Config::preset(Full)`: ResNet-18 + FPN(128, fused
//! stride-4 map) with the detection, segmentation and pose heads) for the side-by-side
//! comparison with PyTorch eager of `cargo xtask bench` (`bench/mcn_speed.py` is the other side).
//!
//! - `--case forward`: `forward_t(x, false)` on a 1x3x512x512 input, run by the model's
//!   inference copy (`MultiTaskModel::for_inference`, made before the timed loop) as evaluation
//!   and prediction run it; `--per-call-fold` times the model itself (BatchNorm folded and
//!   weights transformed on every call);
//! - `--case train`: one training step at 8x3x256x256 as the training loop takes it: forward,
//!   losses (on 8 encoded synthetic scenes), reading the per-task values, backward,
//!   `clip_grad_norm(10)`, AdamW (lr 5e-4, weight decay 1e-4 except biases and 1-D parameters);
//! - `--case params`: only the parameter count;
//! - `--case steps --device D`: `--iterations` training steps (default batch 16 at 256 px) of the
//!   network with all five heads, on the CPU and on `D`, from the same initial weights on the
//!   same batches (four fixed batches of synthetic scenes, in turn); prints both loss curves and
//!   the largest relative difference between them.
//!
//! `--model quick` times the quick presets' network instead (the tiny ResNet + FPN(32) with all
//! five heads, the quick MuST student); `--tasks detection,pose` keeps only those heads. `--batch N` and `--size S` change the input (defaults: 1x512 forward, 8x256 training step);
//! `--device cuda[:N]` runs on a GPU (a `--features cuda` build): every phase then waits for the
//! device before its timer is read, and the largest device memory in use after a phase is
//! reported beside the CPU's peak resident memory.
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
use mustard::core::candle_nn::VarMap;
use mustard::core::optim::{
    clip_grad_norm, param_groups, trainable_vars, AdamW, AdamWConfig, Optimizer,
};
use mustard::core::DeviceSpec;
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
    device: DeviceSpec,
    batch: Option<usize>,
    size: Option<usize>,
    quick: bool,
    tasks: Option<Vec<Task>>,
    per_call_fold: bool,
}

fn parse() -> Result<Args> {
    let mut args = Args {
        case: "forward".into(),
        iterations: 5,
        warmup: 1,
        default_malloc: false,
        device: DeviceSpec::Cpu,
        batch: None,
        size: None,
        quick: false,
        tasks: None,
        per_call_fold: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = || it.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--case" => args.case = value()?,
            "--iterations" => args.iterations = value()?.parse()?,
            "--warmup" => args.warmup = value()?.parse()?,
            "--device" => args.device = value()?.parse()?,
            "--per-call-fold" => args.per_call_fold = true,
            "--batch" => args.batch = Some(value()?.parse()?),
            "--size" => args.size = Some(value()?.parse()?),
            "--tasks" => {
                args.tasks = Some(
                    value()?
                        .split(',')
                        .map(|t| t.parse::<Task>().map_err(anyhow::Error::msg))
                        .collect::<Result<_>>()?,
                )
            }
            "--model" => match value()?.as_str() {
                "quick" => args.quick = true,
                "full" => args.quick = false,
                other => bail!("unknown model {other} (quick or full)"),
            },
            // The im2col kernel for every convolution, to compare with the Winograd kernel.
            "--no-winograd" => mustard_core::ops::set_winograd(false),
            // The allocator's default behaviour (freed activations go back to the kernel).
            "--default-malloc" => args.default_malloc = true,
            _ => bail!(
                "unknown argument {a} (--case forward|train|params, --model full|quick, --tasks a,b, --iterations K, --warmup W, --device D, --batch N, --size S, --no-winograd, --default-malloc, --per-call-fold)"
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
            score: 1.0,
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

/// Scenes `first..first + b` encoded for `model`.
fn batch(model: &MultiTaskModel, first: u64, b: usize, size: u32) -> Result<Batch> {
    let encoder = model.encoder(size);
    let items = (first..first + b as u64)
        .map(|i| Ok(encoder.encode(scene_sample(size, i)?)?))
        .collect::<Result<Vec<_>>>()?;
    Ok(encoder.collate(items)?)
}

/// The total loss of each of `steps` training steps of `config`'s untrained model on `device`
/// (clipping at 10 and AdamW at the preset's constant lr), on four fixed batches in turn.
fn loss_curve(
    config: &Config,
    device: DeviceSpec,
    steps: usize,
    b: usize,
    size: usize,
) -> Result<Vec<f32>> {
    let mut config = config.clone();
    config.device = device;
    let (varmap, model) = mustard::bench::untrained(&config)?;
    let vars = trainable_vars(&varmap);
    let batches = (0..4)
        .map(|k| Ok(batch(&model, (k * b) as u64, b, size as u32)?.to_device(model.device())?))
        .collect::<Result<Vec<_>>>()?;
    let mut optimizer = adamw(&varmap, &config)?;
    let mut curve = Vec::with_capacity(steps);
    for step in 0..steps {
        let batch = &batches[step % batches.len()];
        let out = model.forward_t(&batch.images, true)?;
        let losses = model.loss(&out, batch)?;
        curve.push(losses.total.to_dtype(DType::F32)?.to_scalar::<f32>()?);
        let mut grads = losses.total.backward()?;
        clip_grad_norm(&mut grads, &vars, 10.0)?;
        optimizer.step(&grads)?;
    }
    Ok(curve)
}

/// AdamW as the training loop sets it up: the preset's lr, weight decay except on biases and
/// 1-D parameters.
fn adamw(varmap: &VarMap, config: &Config) -> Result<AdamW> {
    Ok(AdamW::new(
        param_groups(varmap, config.train.weight_decay),
        AdamWConfig {
            lr: config.train.lr,
            ..Default::default()
        },
    )?)
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
    let mut config = if args.quick {
        // The quick MuST student: the tiny network with all five heads.
        Config::quick("mcn-speed")
    } else {
        let mut config = Config::preset(Preset::Full, "mcn-speed");
        config.model.tasks = vec![Task::Detection, Task::Segmentation, Task::Pose];
        config
    };
    if let Some(tasks) = &args.tasks {
        config.model.tasks = tasks.clone();
    }
    config.device = args.device;
    let device = args.device.device()?;
    // The timer of a phase is read once the device has finished it; the largest memory in use
    // on the device after a phase is kept.
    let mut device_peak = None::<f64>;
    let mut wait = |device: &Device| -> Result<Instant> {
        device.synchronize()?;
        if let Some(mib) = mustard::core::device_memory_in_use_mib(device)? {
            device_peak = Some(device_peak.map_or(mib, |p| p.max(mib)));
        }
        Ok(Instant::now())
    };
    let (varmap, model) = mustard::bench::untrained(&config)?;
    let vars = trainable_vars(&varmap);
    let parameters: usize = vars.iter().map(|(_, v)| v.elem_count()).sum();
    let mut result = serde_json::json!({
        "impl": "mustard",
        "version": env!("CARGO_PKG_VERSION"),
        "case": args.case,
        "threads": mustard::core::candle_core::utils::get_num_threads(),
        "device": args.device.to_string(),
        "parameters": parameters,
    });
    let mut times = Vec::new();
    match args.case.as_str() {
        "params" => {}
        "forward" => {
            let (b, size) = (args.batch.unwrap_or(1), args.size.unwrap_or(512));
            result["shape"] = serde_json::json!([b, 3, size, size]);
            let x = Tensor::randn(0f32, 1.0, (b, 3, size, size), &device)?;
            // What evaluation and prediction run: the inference copy (BatchNorm folded once,
            // transformed weights kept), made outside the timed loop as they make it once.
            let model = if args.per_call_fold {
                model
            } else {
                model.for_inference()?
            };
            for it in 0..args.warmup + args.iterations {
                let t0 = wait(&device)?;
                let out = model.forward_t(&x, false)?;
                let dt = (wait(&device)? - t0).as_secs_f64();
                std::hint::black_box(out);
                if it >= args.warmup {
                    times.push(dt);
                }
            }
        }
        "train" => {
            let (b, size) = (args.batch.unwrap_or(8), args.size.unwrap_or(256));
            result["shape"] = serde_json::json!([b, 3, size, size]);
            let batch = batch(&model, 0, b, size as u32)?.to_device(&device)?;
            let mut optimizer = adamw(&varmap, &config)?;
            let mut values = serde_json::Map::new();
            // forward, losses, backward, clipping + AdamW
            let mut phases = [(); 4].map(|_| Vec::new());
            for it in 0..args.warmup + args.iterations {
                let t0 = wait(&device)?;
                let out = model.forward_t(&batch.images, true)?;
                let t1 = wait(&device)?;
                let losses = model.loss(&out, &batch)?;
                for (task, loss) in &losses.per_task {
                    let v = loss.to_dtype(DType::F32)?.to_scalar::<f32>()?;
                    values.insert(task.to_string(), v.into());
                }
                let t2 = wait(&device)?;
                let mut grads = losses.total.backward()?;
                let t3 = wait(&device)?;
                clip_grad_norm(&mut grads, &vars, 10.0)?;
                optimizer.step(&grads)?;
                let t4 = wait(&device)?;
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
        "steps" => {
            let (b, size) = (args.batch.unwrap_or(16), args.size.unwrap_or(256));
            result["shape"] = serde_json::json!([b, 3, size, size]);
            config.model.tasks = Task::ALL.to_vec();
            let cpu = loss_curve(&config, DeviceSpec::Cpu, args.iterations, b, size)?;
            let other = loss_curve(&config, args.device, args.iterations, b, size)?;
            let worst = cpu
                .iter()
                .zip(&other)
                .map(|(a, z)| {
                    let d = ((a - z).abs() / a.abs().max(1e-12)) as f64;
                    // A loss that stopped being finite on either side is the largest difference.
                    if d.is_finite() {
                        d
                    } else {
                        f64::INFINITY
                    }
                })
                .fold(0.0, f64::max);
            result["cpu_loss"] = cpu.into();
            result["device_loss"] = other.into();
            result["largest_relative_difference"] = worst.into();
        }
        other => bail!("unknown case {other} (forward, train, steps or params)"),
    }
    if !times.is_empty() {
        result["times_ms"] = times.iter().map(|t| t * 1e3).collect::<Vec<_>>().into();
        let m = median(times);
        result["median_ms"] = (m * 1e3).into();
        result["images_per_s"] = (result["shape"][0].as_f64().unwrap_or(1.0) / m).into();
    }
    result["peak_memory_mib"] = mustard::bench::peak_memory_mib().into();
    result["device_memory_mib"] = device_peak.into();
    println!("{result}");
    Ok(())
}
