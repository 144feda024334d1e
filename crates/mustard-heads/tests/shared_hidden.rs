//! Head blocks whose hidden maps come from one joined convolution ([`SharedHidden`]) give the
//! outputs of the blocks run one by one, bit for bit, and the same gradients up to the order in
//! which the input's gradient is summed.

use mustard_core::candle_core::{DType, Device, Tensor, Var};
use mustard_core::candle_nn::{VarBuilder, VarMap};
use mustard_core::nn::{Conv2d, Conv2dConfig};
use mustard_heads::{HeadBlock, HeadInit, SharedHidden};

/// Values in [−scale, scale) from a fixed generator, so that every run sees the same numbers.
fn fixed(shape: &[usize], seed: u64, scale: f32) -> Tensor {
    let mut s = seed;
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

/// 64 channels in, 64 hidden, 32x32 maps: large enough that the engine runs Winograd for each
/// block alone and for the joined convolution, so that the outputs can be compared bit for bit.
#[test]
fn joined_hidden_maps_give_each_blocks_outputs_and_gradients() {
    let dev = Device::Cpu;
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
    let outs = [3, 2, 17];
    let blocks: Vec<HeadBlock> = outs
        .iter()
        .enumerate()
        .map(|(i, &o)| {
            HeadBlock::new(64, 64, o, HeadInit::Default, vb.pp(format!("b{i}"))).unwrap()
        })
        .collect();
    let refs: Vec<&HeadBlock> = blocks.iter().collect();
    {
        let data = varmap.data().lock().unwrap();
        let mut names: Vec<&String> = data.keys().collect();
        names.sort();
        for (k, name) in names.into_iter().enumerate() {
            let var = &data[name];
            // About 1/√fan-in for weights, small for biases.
            let scale = if var.rank() == 1 { 0.1 } else { 0.04 };
            var.set(&fixed(var.dims(), 100 + k as u64, scale)).unwrap();
        }
    }
    let x = Var::from_tensor(&fixed(&[2, 64, 32, 32], 1, 1.0)).unwrap();
    let weights: Vec<Tensor> = outs
        .iter()
        .enumerate()
        .map(|(i, &o)| fixed(&[2, o, 32, 32], 2 + i as u64, 1.0))
        .collect();

    let run = |shared: Option<&SharedHidden>| {
        let outputs: Vec<Tensor> = refs
            .iter()
            .map(|b| match shared {
                Some(s) => b.forward_shared(x.as_tensor(), s).unwrap(),
                None => b.forward(x.as_tensor()).unwrap(),
            })
            .collect();
        let mut loss = Tensor::new(0f32, &dev).unwrap();
        for (y, w) in outputs.iter().zip(&weights) {
            loss = (loss + (y * w).unwrap().sum_all().unwrap()).unwrap();
        }
        (outputs, loss.backward().unwrap())
    };
    let (alone, grads_alone) = run(None);
    let shared = SharedHidden::new(&refs, x.as_tensor()).unwrap();
    let (joined, grads_joined) = run(Some(&shared));

    for (i, (a, j)) in alone.iter().zip(&joined).enumerate() {
        assert_eq!(a.dims(), [2, outs[i], 32, 32]);
        assert_eq!(values(a), values(j), "block {i}");
    }
    let mut vars: Vec<(String, Var)> = varmap
        .data()
        .lock()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(vars.len(), 12);
    vars.push(("x".into(), x.clone()));
    for (name, var) in &vars {
        let a = values(grads_alone.get(var.as_tensor()).unwrap());
        let j = values(grads_joined.get(var.as_tensor()).unwrap());
        let scale = a.iter().fold(0f32, |m, v| m.max(v.abs()));
        let diff = a
            .iter()
            .zip(&j)
            .fold(0f32, |m, (p, q)| m.max((p - q).abs()));
        assert!(scale > 0.0, "{name}: no gradient");
        // Both sides carry the Winograd kernel's f32 error, up to 1.5e-5 of the largest value
        // (`mustard-core/tests/winograd.rs`), and x's gradient is summed over the blocks in
        // another order on each side: 1e-5 failed about one draw in five of random values.
        assert!(
            diff <= 3e-5 * scale,
            "{name}: gradients differ by {diff} (largest {scale})"
        );
    }
}

#[test]
fn convolutions_that_differ_are_not_joined() {
    let dev = Device::Cpu;
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
    let conv = |name: &str, cin: usize, k: usize, cfg: Conv2dConfig| {
        Conv2d::new(cin, 8, k, cfg, vb.pp(name)).unwrap()
    };
    let pad1 = Conv2dConfig {
        padding: 1,
        ..Default::default()
    };
    let a = conv("a", 4, 3, pad1);
    let b = conv("b", 4, 3, pad1);
    let joined = Conv2d::concat_out(&[&a, &b])
        .unwrap()
        .expect("same configs join");
    assert_eq!(joined.weight().dims(), [16, 4, 3, 3]);
    assert_eq!(joined.bias().unwrap().dims(), [16]);
    assert!(Conv2d::concat_out(&[&a]).unwrap().is_none());
    assert!(Conv2d::concat_out(&[]).unwrap().is_none());
    for other in [
        conv("c", 5, 3, pad1),
        conv("d", 4, 1, Conv2dConfig::default()),
        conv("e", 4, 3, Conv2dConfig::default()),
        conv("f", 4, 3, Conv2dConfig { stride: 2, ..pad1 }),
        conv(
            "g",
            4,
            3,
            Conv2dConfig {
                bias: false,
                ..pad1
            },
        ),
    ] {
        assert!(
            Conv2d::concat_out(&[&a, &other]).unwrap().is_none(),
            "{:?} {:?}",
            other.weight().dims(),
            other.config()
        );
    }
    // Blocks that cannot share fall back to running alone.
    let x = Tensor::randn(0f32, 1.0, (1, 4, 8, 8), &dev).unwrap();
    let p = HeadBlock::new(4, 8, 2, HeadInit::Default, vb.pp("p")).unwrap();
    let q = HeadBlock::new(5, 8, 2, HeadInit::Default, vb.pp("q")).unwrap();
    let shared = SharedHidden::new(&[&p, &q], &x).unwrap();
    assert_eq!(
        values(&p.forward_shared(&x, &shared).unwrap()),
        values(&p.forward(&x).unwrap())
    );
}
