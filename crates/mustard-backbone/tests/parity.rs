//! Parity with PyTorch/timm: `xtask/fixtures/backbone_golden.py` (`cargo xtask fixtures`) builds
//! small random-initialised timm ResNets (BasicBlock [1,1,1,1] and Bottleneck [2,1,1,1]), a
//! reference FPN with the fused stride-4 map and a CenterNet deconv neck, and stores weights,
//! input and every output in `tests/fixtures/{basic,bottleneck}.safetensors`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::Result;
use mustard_backbone::{BlockKind, DeconvConfig, DeconvNeck, Fpn, FpnConfig, ResNet, ResNetConfig};
use mustard_core::candle_core::{DType, Device, Tensor};
use mustard_core::candle_nn::{VarBuilder, VarMap};
use mustard_core::io::{load_weights, LoadOptions};

const TOL: f32 = 1e-4;

fn fixture(name: &str) -> (PathBuf, HashMap<String, Tensor>) {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/{name}.safetensors"));
    let tensors = mustard_core::io::load_safetensors(&path, &Device::Cpu).expect("fixture");
    (path, tensors)
}

/// The fixture entries under `prefix.`, with the prefix removed.
fn section(fx: &HashMap<String, Tensor>, prefix: &str) -> HashMap<String, Tensor> {
    fx.iter()
        .filter_map(|(k, v)| {
            k.strip_prefix(&format!("{prefix}."))
                .map(|k| (k.to_string(), v.clone()))
        })
        .collect()
}

fn assert_close(what: &str, got: &Tensor, expected: &Tensor) {
    assert_eq!(got.dims(), expected.dims(), "{what}: shape");
    let d = (got - expected)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(d <= TOL, "{what}: max |Δ| = {d:e} > {TOL:e}");
}

struct Models {
    varmap: VarMap,
    resnet: ResNet,
    fpn: Fpn,
    deconv: DeconvNeck,
}

fn build(
    config: &ResNetConfig,
    fpn_d: usize,
    fx: &HashMap<String, Tensor>,
    path: &Path,
) -> Result<Models> {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let resnet = ResNet::new(config, vb.pp("backbone"))?;
    let fpn = Fpn::new(
        &FpnConfig {
            in_channels: config.out_channels(),
            out_channels: fpn_d,
            fuse: true,
        },
        vb.pp("fpn"),
    )?;
    let deconv = DeconvNeck::new(
        &DeconvConfig {
            in_channels: config.out_channels()[3],
            widths: vec![16; 3],
        },
        vb.pp("deconv"),
    )?;
    for (file_prefix, model_prefix) in [
        ("weights", "backbone."),
        ("fpn", "fpn."),
        ("deconv", "deconv."),
    ] {
        let options = LoadOptions {
            strict: true,
            prefix: model_prefix.into(),
            skip: vec![],
        };
        let report = load_weights(&varmap, &section(fx, file_prefix), &options, path)?;
        assert!(report.is_complete(), "{report}");
    }
    Ok(Models {
        varmap,
        resnet,
        fpn,
        deconv,
    })
}

fn check(name: &str, config: ResNetConfig, fpn_d: usize) -> Result<()> {
    let (path, fx) = fixture(name);
    let m = build(&config, fpn_d, &fx, &path)?;
    let x = &fx["input"];

    let maps = m.resnet.forward_t(x, false)?;
    for (i, c) in maps.levels().iter().enumerate() {
        assert_close(
            &format!("{name} eval c{}", i + 2),
            c,
            &fx[&format!("eval.c{}", i + 2)],
        );
    }
    let logits = m.resnet.classify(&maps.c5)?.expect("classifier");
    assert_close(&format!("{name} eval logits"), &logits, &fx["eval.logits"]);
    let pyramid = m.fpn.forward_t(&maps, false)?;
    for (level, p) in [
        ("p2", &pyramid.p2),
        ("p3", &pyramid.p3),
        ("p4", &pyramid.p4),
        ("p5", &pyramid.p5),
    ] {
        assert_close(
            &format!("{name} eval {level}"),
            p,
            &fx[&format!("eval.{level}")],
        );
    }
    assert_close(
        &format!("{name} eval fused"),
        pyramid.dense(),
        &fx["eval.fused"],
    );
    assert_close(
        &format!("{name} eval deconv"),
        &m.deconv.forward_t(&maps.c5, false)?,
        &fx["eval.deconv"],
    );

    // Train mode: batch statistics, running statistics updated with momentum 0.1.
    let maps = m.resnet.forward_t(x, true)?;
    for (i, c) in maps.levels().iter().enumerate() {
        assert_close(
            &format!("{name} train c{}", i + 2),
            c,
            &fx[&format!("train.c{}", i + 2)],
        );
    }
    let pyramid = m.fpn.forward_t(&maps, true)?;
    assert_close(
        &format!("{name} train fused"),
        pyramid.dense(),
        &fx["train.fused"],
    );
    let data = m.varmap.data().lock().unwrap();
    assert_close(
        &format!("{name} bn1 running mean"),
        data["backbone.bn1.running_mean"].as_tensor(),
        &fx["train.bn1.running_mean"],
    );
    assert_close(
        &format!("{name} bn1 running var"),
        data["backbone.bn1.running_var"].as_tensor(),
        &fx["train.bn1.running_var"],
    );
    Ok(())
}

#[test]
fn basic_block_resnet_fpn_and_deconv_match_pytorch() -> Result<()> {
    let config = ResNetConfig {
        block: BlockKind::Basic,
        layers: [1, 1, 1, 1],
        widths: [8, 16, 32, 64],
        stem_width: 64,
        num_classes: Some(10),
        ..ResNetConfig::tiny()
    };
    check("basic", config, 16)
}

#[test]
fn bottleneck_resnet_fpn_and_deconv_match_pytorch() -> Result<()> {
    let config = ResNetConfig {
        block: BlockKind::Bottleneck,
        layers: [2, 1, 1, 1],
        widths: [4, 8, 16, 32],
        stem_width: 64,
        num_classes: Some(10),
        ..ResNetConfig::tiny()
    };
    check("bottleneck", config, 8)
}

#[test]
fn a_checkpoint_for_another_architecture_lists_every_problem() -> Result<()> {
    let (path, fx) = fixture("basic");
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    // The fixture's network with a wider layer4 and no classifier.
    let config = ResNetConfig {
        layers: [1, 1, 1, 1],
        widths: [8, 16, 32, 128],
        stem_width: 64,
        ..ResNetConfig::tiny()
    };
    ResNet::new(&config, vb)?;
    let options = LoadOptions {
        strict: true,
        ..Default::default()
    };
    let err = load_weights(&varmap, &section(&fx, "weights"), &options, &path)
        .unwrap_err()
        .to_string();
    let head = format!(
        "{}: checkpoint does not fit the model: 0 tensors loaded; unexpected keys: fc.bias, fc.weight; \
         shape mismatch for layer4.0.bn1.bias: expected [128], found [64]; ",
        path.display()
    );
    assert!(err.starts_with(&head), "{err}");
    assert!(err.contains("; shape mismatch for layer4.0.conv2.weight: expected [128, 128, 3, 3], found [64, 64, 3, 3]"), "{err}");
    assert!(err.contains("; shape mismatch for layer4.0.downsample.0.weight: expected [128, 32, 1, 1], found [64, 32, 1, 1]"), "{err}");
    // Lenient loading with the classifier skipped loads the rest and reports the conflicts.
    let lenient = LoadOptions {
        strict: false,
        skip: vec!["fc.".into()],
        ..Default::default()
    };
    let report = load_weights(&varmap, &section(&fx, "weights"), &lenient, &path)?;
    let counters = section(&fx, "weights")
        .keys()
        .filter(|k| k.ends_with("num_batches_tracked"))
        .count();
    assert_eq!(counters, 13);
    assert_eq!(
        (report.loaded, report.mismatched.len()),
        (section(&fx, "weights").len() - 2 - counters - 15, 15)
    );
    assert!(report.unexpected.is_empty() && report.missing.is_empty());
    Ok(())
}
