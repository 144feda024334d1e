use candle_core::{DType, Device, Var};
use candle_nn::{VarBuilder, VarMap};

use super::*;

/// A small model with a weight, a bias and a BatchNorm buffer: loss = Σ (x·w + b − t)².
fn model() -> (VarMap, Tensor, Tensor) {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let w = vb
        .get_with_hints((3, 2), "layer.weight", candle_nn::Init::Const(0.5))
        .unwrap();
    let b = vb
        .get_with_hints(2, "layer.bias", candle_nn::Init::Const(-0.25))
        .unwrap();
    vb.get_with_hints(2, "bn.running_mean", candle_nn::Init::Const(0.0))
        .unwrap();
    (varmap, w, b)
}

fn grads(step: u64, w: &Tensor, b: &Tensor) -> GradStore {
    let x = Tensor::new(&[[1.0f32, 2.0, -1.0], [0.5, -0.5, 3.0]], &Device::Cpu).unwrap();
    let x = (x * (1.0 + step as f64 * 0.1)).unwrap();
    let t = Tensor::new(&[[1.0f32, 0.0], [0.0, 1.0]], &Device::Cpu).unwrap();
    let pred = x.matmul(w).unwrap().broadcast_add(b).unwrap();
    (pred - t)
        .unwrap()
        .sqr()
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap()
}

fn values(varmap: &VarMap) -> Vec<(String, Vec<f32>)> {
    trainable_vars(varmap)
        .into_iter()
        .map(|(n, v)| {
            (
                n,
                v.as_tensor()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap(),
            )
        })
        .collect()
}

fn make(kind: &str, varmap: &VarMap) -> Box<dyn Optimizer> {
    let groups = param_groups(varmap, 0.05);
    match kind {
        "sgd" => Box::new(
            Sgd::new(
                groups,
                SgdConfig {
                    lr: 0.01,
                    momentum: 0.9,
                    nesterov: true,
                    ..Default::default()
                },
            )
            .unwrap(),
        ),
        _ => Box::new(
            AdamW::new(
                groups,
                AdamWConfig {
                    lr: 0.01,
                    ..Default::default()
                },
            )
            .unwrap(),
        ),
    }
}

#[test]
fn buffers_are_not_parameters() {
    let (varmap, _, _) = model();
    let groups = param_groups(&varmap, 0.05);
    let names = |g: &ParamGroup| g.params.iter().map(|p| p.0.clone()).collect::<Vec<_>>();
    assert_eq!(names(&groups[0]), ["layer.weight"]);
    assert_eq!(groups[0].weight_decay, 0.05);
    assert_eq!(names(&groups[1]), ["layer.bias"]);
    assert_eq!(groups[1].weight_decay, 0.0);
}

#[test]
fn resume_gives_the_same_parameters_as_an_uninterrupted_run() {
    let dir = std::env::temp_dir().join(format!("mustard-resume-{}", std::process::id()));
    for kind in ["sgd", "adamw"] {
        let schedule = LrSchedule {
            base_lr: 0.01,
            warmup_steps: 3,
            warmup_factor: 0.1,
            kind: ScheduleKind::Constant,
        };
        // 10 steps straight.
        let (straight, w, b) = model();
        let mut opt = make(kind, &straight);
        for step in 0..10 {
            opt.set_learning_rate(schedule.lr_at(step));
            opt.step(&grads(step, &w, &b)).unwrap();
        }
        // 5 steps, save weights and optimiser state, load both into a fresh model, 5 more.
        let (first, w, b) = model();
        let mut opt1 = make(kind, &first);
        for step in 0..5 {
            opt1.set_learning_rate(schedule.lr_at(step));
            opt1.step(&grads(step, &w, &b)).unwrap();
        }
        let (weights, state) = (
            dir.join(format!("{kind}.safetensors")),
            dir.join(format!("{kind}.optim.safetensors")),
        );
        crate::io::save_safetensors(
            &first
                .data()
                .lock()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), v.as_tensor().clone()))
                .collect(),
            &weights,
        )
        .unwrap();
        opt1.save(&state).unwrap();
        let (mut resumed, w, b) = model();
        resumed.load(&weights).unwrap();
        let mut opt2 = make(kind, &resumed);
        opt2.load(&state, &Device::Cpu).unwrap();
        assert_eq!(opt2.steps(), 5);
        for step in opt2.steps()..10 {
            opt2.set_learning_rate(schedule.lr_at(step));
            opt2.step(&grads(step, &w, &b)).unwrap();
        }
        assert_eq!(values(&resumed), values(&straight), "{kind}");
        assert_ne!(
            values(&resumed),
            values(&model().0),
            "{kind}: the parameters moved"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn loading_a_foreign_state_names_the_file_and_the_keys() {
    let (varmap, w, b) = model();
    let mut opt = make("adamw", &varmap);
    opt.step(&grads(0, &w, &b)).unwrap();
    let mut state = opt.state().unwrap();
    state.insert(
        "other.weight.exp_avg".into(),
        Tensor::zeros(2, DType::F32, &Device::Cpu).unwrap(),
    );
    let path = Path::new("run/optim.safetensors");
    let err = make("adamw", &varmap)
        .load_state(state.clone(), path)
        .unwrap_err();
    assert_eq!(err.to_string(), "run/optim.safetensors: optimizer state has entries for unknown parameters: other.weight.exp_avg");
    state.remove("other.weight.exp_avg");
    state.insert(
        "layer.bias.exp_avg".into(),
        Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap(),
    );
    let err = make("adamw", &varmap)
        .load_state(state.clone(), path)
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "run/optim.safetensors: `layer.bias.exp_avg` has shape [3], the parameter has [2]"
    );
    state.remove("step");
    let err = make("adamw", &varmap).load_state(state, path).unwrap_err();
    assert_eq!(
        err.to_string(),
        "run/optim.safetensors: optimizer state has no `step` entry"
    );
    let missing = Path::new("/nonexistent/optim.safetensors");
    let err = make("sgd", &varmap)
        .load(missing, &Device::Cpu)
        .unwrap_err();
    // The message names the file; the reason is its cause (`source()`), printed after it.
    assert_eq!(err.to_string(), "/nonexistent/optim.safetensors");
    assert_eq!(
        crate::error_chain(&err),
        "/nonexistent/optim.safetensors: no such file"
    );
}

#[test]
fn clipping_scales_to_the_global_norm() {
    let (varmap, w, b) = model();
    let vars = trainable_vars(&varmap);
    let mut g = grads(0, &w, &b);
    let norm = clip_grad_norm(&mut g, &vars, f64::INFINITY).unwrap();
    let sq: f64 = vars
        .iter()
        .map(|(_, v)| {
            g.get(v.as_tensor())
                .unwrap()
                .to_dtype(DType::F64)
                .unwrap()
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f64>()
                .unwrap()
        })
        .sum();
    assert!((norm - sq.sqrt()).abs() < 1e-9);
    let clipped = clip_grad_norm(&mut g, &vars, 1.0).unwrap();
    assert_eq!(clipped, norm);
    let after = clip_grad_norm(&mut g, &vars, f64::INFINITY).unwrap();
    assert!((after - norm / (norm + 1e-6)).abs() < 1e-6, "{after}");
}

#[test]
fn ema_averages_with_the_ramped_decay_and_round_trips() {
    let (varmap, _, _) = model();
    let mut ema = Ema::new(&varmap, 0.5, None).unwrap();
    let var: Var = varmap.data().lock().unwrap()["layer.bias"].clone();
    var.set(&Tensor::new(&[1.0f32, 3.0], &Device::Cpu).unwrap())
        .unwrap();
    ema.update(&varmap).unwrap();
    // 0.5 · (−0.25) + 0.5 · value
    assert_eq!(
        ema.tensors()["layer.bias"].to_vec1::<f32>().unwrap(),
        [0.375, 1.375]
    );
    let ramped = Ema::new(&varmap, 0.9999, Some(2000.0)).unwrap();
    assert!((ramped.current_decay() - 0.9999 * (1.0 - (-1.0f64 / 2000.0).exp())).abs() < 1e-15);
    let path = std::env::temp_dir().join(format!("mustard-ema-{}.safetensors", std::process::id()));
    ema.save(&path).unwrap();
    let mut loaded = Ema::new(&varmap, 0.5, None).unwrap();
    loaded.load(&path, &Device::Cpu).unwrap();
    assert_eq!(loaded.updates(), 1);
    assert_eq!(
        loaded.tensors()["layer.bias"].to_vec1::<f32>().unwrap(),
        [0.375, 1.375]
    );
    loaded.copy_to(&varmap).unwrap();
    assert_eq!(var.as_tensor().to_vec1::<f32>().unwrap(), [0.375, 1.375]);
    std::fs::remove_file(&path).unwrap();
}
