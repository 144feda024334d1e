//! Training on tiny synthetic data: overfitting one batch proves that targets, losses and
//! decoding agree; a resumed run equals an uninterrupted one; a diverging run stops with the
//! task and step named and leaves its checkpoint intact.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Result;
use mustard::checkpoint::{self, RunPaths};
use mustard::config::Config;
use mustard::core::candle_core::{DType, Device};
use mustard::core::optim::{param_groups, AdamW, AdamWConfig, Optimizer};
use mustard::data::synth::{self, SynthConfig};
use mustard::data::{Dataset, Loader, LoaderConfig, Task};
use mustard::evaluate::evaluate;
use mustard::train::{classes_of, resume, train, TrainOptions};
use mustard::{MultiTaskModel, Preset};

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mustard-train-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// The first seed whose first `n` scenes each show a person with at least 8 visible joints.
fn seed_with_people(n: usize, size: u32) -> u64 {
    (0..200)
        .find(|&seed| {
            let cfg = SynthConfig {
                size,
                seed,
                max_objects: 3,
            };
            (0..n as u64).all(|i| {
                synth::render(&cfg, i).unwrap().objects.iter().any(|o| {
                    o.keypoints
                        .as_ref()
                        .is_some_and(|k| k.chunks(3).filter(|j| j[2] == 2.0).count() >= 8)
                })
            })
        })
        .expect("a seed with people")
}

#[test]
fn overfitting_one_batch_reaches_high_box_and_keypoint_ap() -> Result<()> {
    let dir = temp("overfit");
    let size = 96;
    let seed = seed_with_people(2, size);
    synth::write(
        &dir,
        &SynthConfig {
            size,
            seed,
            max_objects: 3,
        },
        2,
        None,
    )?;
    let ds = Arc::new(Dataset::open(&dir.join("instances.json"), None)?);
    let mut config = Config::preset(Preset::Quick, "overfit");
    config.model.tasks = vec![Task::Detection, Task::Pose];
    config.model.classes = classes_of(ds.as_ref());
    let (varmap, model) = MultiTaskModel::build(&config.model, 0, &Device::Cpu)?;
    let loader = Loader::new(
        ds.clone(),
        Arc::new(model.encoder(size)),
        LoaderConfig::eval(2, size),
    )?;
    let batch = loader.epoch(0).next().expect("one batch")?;
    let mut opt = AdamW::new(
        param_groups(&varmap, 0.0),
        AdamWConfig {
            lr: 2e-3,
            ..Default::default()
        },
    )?;
    let mut first = None;
    let mut last = 0.0;
    for step in 0..300 {
        if step == 200 {
            opt.set_learning_rate(2e-4);
        }
        let out = model.forward_t(&batch.images, true)?;
        let loss = model.loss(&out, &batch)?.total;
        last = loss.to_scalar::<f32>()?;
        first.get_or_insert(last);
        opt.step(&loss.backward()?)?;
    }
    let report = evaluate(&model, ds, size, 2, None, false)?;
    let box_ap = report.detection().unwrap().stats()[0];
    let kp_ap = report.pose().unwrap().stats()[0];
    assert!(
        box_ap >= 0.9 && kp_ap >= 0.8,
        "loss {first:?} → {last}; box AP {box_ap}, keypoint AP {kp_ap}\n{}",
        report.summary()
    );
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

fn small_config(dir: &Path, name: &str) -> Result<Config> {
    let data = dir.join("data");
    if !data.join("instances.json").is_file() {
        synth::write(
            &data,
            &SynthConfig {
                size: 64,
                seed: 4,
                max_objects: 3,
            },
            8,
            None,
        )?;
    }
    let mut config = Config::preset(Preset::Quick, name);
    config.data.train = Some(data.join("instances.json"));
    config.train.input_size = 64;
    config.train.batch_size = 2;
    config.train.epochs = 2;
    config.train.max_steps = Some(6);
    config.train.checkpoint_every = 3;
    config.train.validate = false;
    config.train.workers = Some(2);
    Ok(config)
}

fn weights(path: &Path) -> Vec<(String, Vec<f32>)> {
    let mut all: Vec<(String, Vec<f32>)> = mustard::core::io::load_safetensors(path, &Device::Cpu)
        .unwrap()
        .into_iter()
        .filter(|(k, _)| !k.starts_with("state."))
        .map(|(k, v)| {
            (
                k,
                v.flatten_all()
                    .unwrap()
                    .to_dtype(DType::F32)
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap(),
            )
        })
        .collect();
    all.sort_by(|a, b| a.0.cmp(&b.0));
    all
}

#[test]
fn a_resumed_run_equals_an_uninterrupted_one() -> Result<()> {
    let dir = temp("resume");
    let options = |stop_after| TrainOptions {
        runs: dir.join("runs"),
        progress: false,
        stop_after,
        skip_bad: false,
    };
    // With a weight average, which must resume exactly too.
    let mut straight = small_config(&dir, "straight")?;
    straight.train.ema = Some(0.9);
    let straight = train(&straight, &options(None))?;
    assert_eq!(straight.steps, 6);
    // Interrupted after its step-3 checkpoint (mid-epoch: 4 batches per epoch), then resumed.
    let mut config = small_config(&dir, "resumed")?;
    config.train.ema = Some(0.9);
    assert_eq!(train(&config, &options(Some(3)))?.steps, 3);
    // A pipeline says what it does with such a stage.
    let runs = dir.join("runs");
    let state = mustard::train::StageState::of(&runs, "resumed");
    assert_eq!(state, mustard::train::StageState::Interrupted(3));
    assert_eq!(
        state.say("student", "training the student"),
        "resuming the student at step 3"
    );
    assert_eq!(
        mustard::train::StageState::of(&runs, "nothing").say("student", "training the student"),
        "training the student"
    );
    // Resuming uses the run's saved config: nothing but the name is given.
    let resumed = resume("resumed", &options(None))?;
    assert_eq!(resumed.steps, 6);
    let a = weights(&RunPaths::new(&dir.join("runs"), "straight").last());
    let b = weights(&RunPaths::new(&dir.join("runs"), "resumed").last());
    assert_eq!(a.len(), b.len());
    assert!(
        a.iter().any(|(k, _)| k.starts_with("ema."))
            && a.iter().any(|(k, _)| k.starts_with("optimizer."))
    );
    for ((ka, va), (kb, vb)) in a.iter().zip(&b) {
        assert_eq!(ka, kb);
        assert_eq!(va, vb, "{ka} differs after resuming");
    }
    // The trained model is the average: loading the run for use (eval, predict, pseudo-labels)
    // and `init_from` take the `ema.*` tensors, not the raw weights kept for resuming.
    let last = RunPaths::new(&dir.join("runs"), "straight").last();
    let (_, varmap, _) = checkpoint::load_model(&last)?;
    let loaded: std::collections::HashMap<String, Vec<f32>> = varmap
        .data()
        .lock()
        .unwrap()
        .iter()
        .map(|(k, v)| {
            let t = v
                .as_tensor()
                .flatten_all()
                .unwrap()
                .to_dtype(DType::F32)
                .unwrap();
            (k.clone(), t.to_vec1::<f32>().unwrap())
        })
        .collect();
    let tensors = checkpoint::model_tensors_of(&last)?;
    let (mut averaged, mut moved) = (0, 0);
    for (k, v) in &a {
        let Some(name) = k.strip_prefix("ema.") else {
            continue;
        };
        // (`ema.ema.updates` counts the updates; it is no variable.)
        let Some((_, raw)) = a.iter().find(|(n, _)| n == name) else {
            continue;
        };
        moved += usize::from(raw != v);
        assert_eq!(&loaded[name], v, "{name} is loaded from its average");
        let t = tensors[name]
            .flatten_all()?
            .to_dtype(DType::F32)?
            .to_vec1::<f32>()?;
        assert_eq!(&t, v, "{name}: model_tensors_of gives the average");
        averaged += 1;
    }
    assert_eq!(averaged, loaded.len(), "every variable is averaged");
    assert!(
        moved * 2 > averaged,
        "{moved} of {averaged} averages differ from the weights"
    );
    // The same training again continues the run (here: finished, so nothing to do); another
    // config into the same folder is refused rather than overwriting it.
    assert_eq!(train(&config, &options(None))?.steps, 6);
    assert_eq!(
        weights(&RunPaths::new(&dir.join("runs"), "resumed").last()),
        b
    );
    config.train.lr *= 2.0;
    let err = train(&config, &options(None)).unwrap_err().to_string();
    assert!(
        err.contains("already holds a run of another config; pass --resume"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

#[test]
fn a_diverging_run_names_the_task_and_step_and_keeps_its_checkpoint() -> Result<()> {
    let dir = temp("nan");
    let mut config = small_config(&dir, "diverge")?;
    config.train.lr = 1e30;
    config.train.warmup_steps = 0;
    config.train.clip_grad_norm = None;
    config.train.checkpoint_every = 1;
    config.train.max_steps = Some(50);
    let options = TrainOptions {
        runs: dir.join("runs"),
        progress: false,
        stop_after: None,
        skip_bad: false,
    };
    let err = train(&config, &options).unwrap_err();
    let text = err.to_string();
    let last = RunPaths::new(&dir.join("runs"), "diverge").last();
    let mustard::Error::NonFiniteLoss { step, .. } = &err else {
        panic!("{text}")
    };
    assert!(
        text.starts_with("the detection loss is ") || text.contains(" loss is "),
        "{text}"
    );
    assert!(text.ends_with(&format!("at step {step}; training stopped and the last checkpoint ({}) is unchanged — lower the learning rate or check the labels", last.display())), "{text}");
    // The checkpoint on disk is the one of the step before, and it loads.
    let (_, varmap, _) = checkpoint::load_model(&last)?;
    let loaded = checkpoint::load(&last, &varmap)?;
    assert_eq!(loaded.state.step, step - 1);
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

#[test]
fn the_mcn_study_trains_every_variant_over_seeds_and_writes_its_report() -> Result<()> {
    let dir = temp("mcn");
    let mut config = mustard::mcn::McnConfig::preset(Preset::Quick);
    assert_eq!(config.variants, mustard::mcn::singles_and_joint());
    assert_eq!(
        mustard::mcn::McnConfig::preset(Preset::Study)
            .variants
            .len(),
        7
    );
    config.variants = vec![
        vec![Task::Segmentation],
        vec![Task::Pose],
        vec![Task::Segmentation, Task::Pose],
    ];
    config.seeds = 2;
    let base = &mut config.base;
    base.data.synth = mustard::config::SynthData {
        train_images: 8,
        val_images: 4,
        size: 64,
        seed: 1,
    };
    base.train.input_size = 64;
    base.train.batch_size = 4;
    base.train.epochs = 1;
    base.train.workers = Some(2);
    let study = mustard::mcn::study(&config, &dir, false)?;
    let names: Vec<&str> = study.variants.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(names, ["segmentation", "pose", "pose-segmentation"]);
    assert!(study.variants.iter().all(|v| v.reports.len() == 2));
    assert!(dir.join("mcn/pose-segmentation-seed1/done").is_file());
    let pair = &study.variants[2];
    let singles: usize = study.variants[..2].iter().map(|v| v.parameters).sum();
    assert!(pair.parameters < singles, "one backbone instead of two");
    // Two seeds of a differently seeded model differ.
    let miou = pair.metric(Task::Segmentation).unwrap();
    assert_eq!(miou.n, 2);
    let report = std::fs::read_to_string(&study.report)?;
    assert!(
        report.starts_with("# MultiTask-CenterNet study\n"),
        "{report}"
    );
    for row in [
        "| segmentation | mIoU | alone | ",
        "| segmentation | mIoU | with pose | ",
        "| pose | keypoint AP | with segmentation | ",
        "- **MCN's headline** — pose trained with segmentation scores at least as well as pose alone: keypoint AP ",
        "- segmentation trained with pose scores at least as well as segmentation alone: mIoU ",
        "| sum of the single-task models | ",
    ] {
        assert!(report.contains(row), "{row} missing from\n{report}");
    }
    assert!(report.contains(&format!("{miou}")), "{report}");
    // A second run reuses the trained models.
    let again = mustard::mcn::study(&config, &dir, false)?;
    assert!(again.variants.iter().all(|v| v.train_seconds == 0.0));
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
