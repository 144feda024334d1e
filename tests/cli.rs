//! End-to-end tests of the `mustard` command on tiny synthetic datasets.

use std::path::Path;
use std::process::Command;

mod common;
use common::{mustard, s, temp, text};

#[test]
fn synth_then_check_is_clean_and_a_corrupt_dataset_fails_with_the_record() {
    let dir = temp("synth");
    let out = mustard(&[
        "synth",
        "--out",
        s(&dir),
        "--images",
        "5",
        "--size",
        "64",
        "--seed",
        "3",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.starts_with("wrote 5 images of 64x64 in "),
        "{stdout}"
    );
    let json = dir.join("instances.json");
    assert!(
        stdout.contains(&format!("  instances            {}", json.display())),
        "{stdout}"
    );

    let out = mustard(&["data", "check", s(&json)]);
    assert!(out.status.success(), "{}", text(&out.stdout));
    let report = text(&out.stdout);
    assert!(
        report.starts_with(&format!("{}: 5 images, ", json.display())),
        "{report}"
    );
    assert!(report.contains("  depth           5 images\n"), "{report}");
    assert!(report.ends_with("no problems found\n"), "{report}");

    // The same dataset as two files (boxes and masks apart from joints, as COCO ships
    // instances and person_keypoints) reads as one: `--data a.json,b.json`.
    let full: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let mut boxes = full.clone();
    let mut joints = full.clone();
    for a in boxes["annotations"].as_array_mut().unwrap() {
        a.as_object_mut().unwrap().remove("keypoints");
        a.as_object_mut().unwrap().remove("num_keypoints");
    }
    for c in boxes["categories"].as_array_mut().unwrap() {
        c.as_object_mut().unwrap().remove("keypoints");
        c.as_object_mut().unwrap().remove("skeleton");
    }
    joints["annotations"] = joints["annotations"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a.get("keypoints").is_some())
        .map(|a| {
            let mut a = a.clone();
            a.as_object_mut().unwrap().remove("segmentation");
            a
        })
        .collect();
    let (a, b) = (dir.join("boxes.json"), dir.join("joints.json"));
    std::fs::write(&a, serde_json::to_vec(&boxes).unwrap()).unwrap();
    std::fs::write(&b, serde_json::to_vec(&joints).unwrap()).unwrap();
    let both = format!("{},{}", a.display(), b.display());
    let out = mustard(&["data", "check", &both]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout).replace(&both, "X"),
        report.replace(&json.display().to_string(), "X"),
        "the two files read as the one they came from"
    );
    // Two files that disagree are refused, naming both and what differs.
    joints["images"][0]["width"] = 65.into();
    std::fs::write(&b, serde_json::to_vec(&joints).unwrap()).unwrap();
    let out = mustard(&["data", "check", &both]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr),
        format!(
            "error: {b}: 1 conflict(s) between the annotation files: {b} vs {a}: image 1: width \"65\" here, \"64\" before\n",
            a = a.display(),
            b = b.display()
        )
    );

    // Corrupt one image file: the check names it and fails.
    std::fs::write(dir.join("images/000002.png"), b"not a png").unwrap();
    let out = mustard(&["data", "check", s(&json)]);
    assert_eq!(out.status.code(), Some(1));
    let report = text(&out.stdout);
    let line = format!(
        "  image 2 [{}]: file_name cannot be decoded: ",
        dir.join("images/000002.png").display()
    );
    assert!(
        report.contains("1 problem(s):\n") && report.contains(&line),
        "{report}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn synth_writes_the_must_splits() {
    let dir = temp("splits");
    let args = [
        "synth",
        "--out",
        s(&dir),
        "--size",
        "32",
        "--splits",
        "--per-task",
        "1",
        "--unlabeled",
        "2",
        "--test",
        "1",
    ];
    let out = mustard(&args);
    assert!(out.status.success(), "{}", text(&out.stderr));
    for name in [
        "train_detection",
        "train_pose",
        "train_segmentation",
        "train_depth",
        "train_classification",
        "unlabeled",
        "test_detection",
        "test_pose",
        "test_segmentation",
        "test_depth",
        "test_classification",
    ] {
        assert!(dir.join(format!("{name}.json")).is_file(), "{name}.json");
    }
    assert!(text(&out.stdout).starts_with("wrote 8 images of 32x32"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_input_is_a_clear_error_and_a_non_zero_exit() {
    let dir = temp("bad");
    std::fs::create_dir_all(&dir).unwrap();
    let json = dir.join("broken.json");
    std::fs::write(
        &json,
        br#"{"images": [{"id": 1, "file_name": "a.png", "width": "wide", "height": 3}]}"#,
    )
    .unwrap();
    let out = mustard(&["data", "check", s(&json)]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr),
        format!(
            "error: {}: images[0] (id 1): invalid type: string \"wide\", expected u32\n",
            json.display()
        )
    );
    let out = mustard(&["data", "check", s(&dir.join("none.json"))]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr),
        format!(
            "error: {}: No such file or directory (os error 2)\n",
            dir.join("none.json").display()
        )
    );
    let out = mustard(&["synth", "--out", s(&dir), "--images", "0"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr),
        format!(
            "error: writing the synthetic dataset to {}: synth: nothing to generate: 0 images\n",
            dir.display()
        )
    );
    // A GPU device on a CPU build says how to build for it, on every verb that takes one.
    for args in [
        &["train", "--runs", s(&dir), "--device", "cuda:1"][..],
        &["mcn", "--runs", s(&dir), "--device", "cuda:1"][..],
        &["must", "--runs", s(&dir), "--device", "cuda:1"][..],
    ] {
        let out = mustard(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(
            text(&out.stderr).ends_with(
                "device `cuda:1` needs mustard built with the `cuda` feature \
                 (cargo build --release -p mustard-cli --features cuda)\n"
            ),
            "{args:?}: {}",
            text(&out.stderr)
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn train_then_evaluate_through_the_command_line() {
    let dir = temp("train");
    let data = dir.join("data");
    let out = mustard(&[
        "synth",
        "--out",
        s(&data),
        "--images",
        "8",
        "--size",
        "64",
        "--seed",
        "2",
        "--max-objects",
        "3",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let json = data.join("instances.json");
    let runs = dir.join("runs");
    let args = [
        "train",
        "--runs",
        s(&runs),
        "--name",
        "tiny",
        "--data",
        s(&json),
        "--val",
        s(&json),
        "--input-size",
        "64",
        "--batch-size",
        "4",
        "--epochs",
        "6",
        "--lr",
        "0.003",
        "--workers",
        "2",
    ];
    let out = mustard(&args);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.starts_with("trained 12 steps in "), "{stdout}");
    assert!(stdout.contains("detection (COCO box AP, equal to pycocotools):\n Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ] = "), "{stdout}");
    let run = runs.join("tiny");
    for file in [
        "config.toml",
        "metrics.csv",
        "results.png",
        "weights/last.safetensors",
        "weights/best.safetensors",
    ] {
        assert!(run.join(file).is_file(), "{file}");
    }
    let csv = std::fs::read_to_string(run.join("metrics.csv")).unwrap();
    let rows: Vec<Vec<&str>> = csv.lines().map(|l| l.split(',').collect()).collect();
    assert_eq!(
        rows[0][..6],
        ["epoch", "step", "lr", "seconds", "loss", "loss_detection"]
    );
    assert_eq!(rows.len(), 7, "{csv}");
    let loss = |r: &Vec<&str>| r[4].parse::<f64>().unwrap();
    let (first, last) = (
        loss(&rows[1]) + loss(&rows[2]),
        loss(&rows[5]) + loss(&rows[6]),
    );
    assert!(last < first, "the loss decreases: {csv}");

    // The same run killed (SIGKILL) after its first checkpoint and resumed with --resume ends
    // with exactly the same weights, optimiser state and loop position.
    let mut killed_args: Vec<&str> = args.to_vec();
    killed_args[4] = "killed";
    killed_args.extend(["--checkpoint-every", "1"]);
    let killed = runs.join("killed");
    let mut child = Command::new(env!("CARGO_BIN_EXE_mustard"))
        .args(&killed_args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while !killed.join("weights/last.safetensors").is_file()
        && started.elapsed() < std::time::Duration::from_secs(60)
    {
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let out = mustard(&["train", "--resume", "--runs", s(&runs), "--name", "killed"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let load = |p: &Path| {
        mustard::core::io::load_safetensors(p, &mustard::core::candle_core::Device::Cpu).unwrap()
    };
    let (want, got) = (
        load(&run.join("weights/last.safetensors")),
        load(&killed.join("weights/last.safetensors")),
    );
    assert_eq!(want.len(), got.len());
    for (name, w) in &want {
        let g = &got[name];
        let (w, g) = (
            w.flatten_all()
                .unwrap()
                .to_dtype(mustard::core::candle_core::DType::F64)
                .unwrap()
                .to_vec1::<f64>()
                .unwrap(),
            g.flatten_all()
                .unwrap()
                .to_dtype(mustard::core::candle_core::DType::F64)
                .unwrap()
                .to_vec1::<f64>()
                .unwrap(),
        );
        assert_eq!(w, g, "{name} differs after kill and resume");
    }

    // The same command again continues the run (finished: nothing to train); the same name
    // with another config is refused; the checkpoint evaluates.
    let out = mustard(&args);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains(&format!("{} holds this run at step ", run.display())),
        "{}",
        text(&out.stderr)
    );
    let mut other = args.to_vec();
    assert_eq!(other[15], "--lr");
    other[16] = "0.5";
    let out = mustard(&other);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr),
        format!(
            "error: name: {} already holds a run of another config; pass --resume to continue it with its own config, or choose another --name\n",
            run.display()
        )
    );
    let report = dir.join("report.json");
    let out = mustard(&[
        "eval",
        "--checkpoint",
        s(&run),
        "--data",
        s(&json),
        "--out",
        s(&report),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).starts_with("8 images\ndetection (COCO box AP"),
        "{}",
        text(&out.stdout)
    );
    let numbers: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(numbers["images"], 8);
    assert!(numbers["segmentation"]["mean_iou"].as_f64().unwrap() > 0.0);
    // Per-class numbers: printed under each task's summary, in the JSON, and as pictures in
    // the run's eval/ folder.
    let stdout = text(&out.stdout);
    let categories: Vec<&serde_json::Value> = numbers["detection"]["per_category"]
        .as_array()
        .unwrap()
        .iter()
        .collect();
    assert_eq!(categories.len(), 4, "circle, square, triangle, person");
    let ap = |v: &serde_json::Value| v.as_f64().map_or("–".to_string(), |v| format!("{v:.3}"));
    for c in &categories {
        let line = format!(
            " {:<8}  {:>6}  {:>6}  {:>6}  {:>9}\n",
            c["name"].as_str().unwrap(),
            ap(&c["ap"]),
            ap(&c["ap50"]),
            ap(&c["ap75"]),
            c["num_gt"].as_u64().unwrap()
        );
        assert!(stdout.contains(&line), "{line:?} in\n{stdout}");
    }
    let confusion = &numbers["segmentation"]["confusion"];
    assert_eq!(
        confusion["classes"],
        serde_json::json!(["background", "circle", "square", "triangle", "person"])
    );
    let rows = confusion["rows_true_columns_predicted"].as_array().unwrap();
    let pixels: u64 = rows
        .iter()
        .flat_map(|r| r.as_array().unwrap())
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(
        pixels,
        8 * 64 * 64,
        "every pixel of the 8 images, at their original size"
    );
    let iou = numbers["segmentation"]["per_class_iou"][0]
        .as_f64()
        .unwrap();
    let support: u64 = rows[0]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert!(
        stdout.contains(&format!(" background  {iou:>8.4}  {support:>10}\n")),
        "{stdout}"
    );
    let eval_dir = run.join("eval");
    for file in [
        "PR_curve_bbox.png",
        "PR_curve_keypoints.png",
        "confusion_matrix_segmentation.png",
        "confusion_matrix_classification.png",
    ] {
        let path = eval_dir.join(file);
        assert!(
            stdout.contains(&format!("wrote {}\n", path.display())),
            "{stdout}"
        );
        let (w, h) = image::image_dimensions(&path).unwrap();
        assert!(w >= 300 && h >= 300, "{file}: {w}x{h}");
    }
    // The end of training drew the last validation's pictures into the run folder.
    assert!(run.join("PR_curve_bbox.png").is_file());

    // Export to ONNX: the trained model, evaluated by another runtime (tract), gives mustard's
    // outputs on 20 reference images, for every head.
    let onnx_file = dir.join("tiny.onnx");
    let out = mustard(&[
        "export",
        "--checkpoint",
        s(&run),
        "--out",
        s(&onnx_file),
        "--dynamic-batch",
        "--reference",
        "20",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(
        lines[0].starts_with(&format!("wrote {} (", onnx_file.display()))
            && lines[0].ends_with(" nodes, opset 17): input images batchx3x64x64"),
        "{stdout}"
    );
    assert_eq!(lines[1], "  output detection.hm batchx4x16x16");
    assert_eq!(lines[10], "  output segmentation.logits batchx5x64x64");
    assert_eq!(lines[12], "  output classification.logits batchx4");
    let reference = dir.join("tiny.reference.safetensors");
    let tensors =
        mustard::core::io::load_safetensors(&reference, &mustard::core::candle_core::Device::Cpu)
            .unwrap();
    let images = &tensors["images"];
    assert_eq!(images.dims(), [20, 3, 64, 64]);
    {
        use tract_onnx::prelude::*;
        let model = onnx()
            .model_for_path(&onnx_file)
            .unwrap()
            .with_input_fact(0, f32::fact([20, 3, 64, 64]).into())
            .unwrap()
            .into_optimized()
            .unwrap()
            .into_runnable()
            .unwrap();
        let input: Tensor = tract_ndarray::Array4::from_shape_vec(
            (20, 3, 64, 64),
            images.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        )
        .unwrap()
        .into();
        let results = model.run(tvec!(input.into())).unwrap();
        let names: Vec<&str> = lines[1..13]
            .iter()
            .map(|l| l.split_whitespace().nth(1).unwrap())
            .collect();
        assert_eq!(results.len(), names.len());
        for (name, got) in names.iter().zip(results.iter()) {
            let got = got.clone().into_tensor();
            let got = got.to_plain_array_view::<f32>().unwrap();
            let want = tensors[*name]
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            let scale = want.iter().fold(1f32, |m, v| m.max(v.abs()));
            let worst = got
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(worst <= 1e-4 * scale, "{name}: max |Δ| {worst:e}");
        }
    }
    let meta = std::fs::read(&onnx_file).unwrap();
    let has = |needle: &str| meta.windows(needle.len()).any(|w| w == needle.as_bytes());
    assert!(
        has("mustard.preprocessing") && has("\"mean\":[0.485"),
        "the metadata"
    );
    for (flag, value, message) in [
        (
            "--input-size",
            "100",
            "error: input_size: 100 must be a positive multiple of 32",
        ),
        (
            "--opset",
            "11",
            "error: opset: 11 is not supported: choose 13 to 21",
        ),
    ] {
        let out = mustard(&[
            "export",
            "--checkpoint",
            s(&run),
            "--out",
            s(&onnx_file),
            flag,
            value,
        ]);
        assert_eq!(out.status.code(), Some(1));
        assert_eq!(text(&out.stderr).trim_end(), message);
    }

    // Prediction on a folder of images: JSON and pictures.
    let pictures = dir.join("pred");
    let out = mustard(&[
        "predict",
        "--checkpoint",
        s(&run.join("weights/last.safetensors")),
        "--input",
        s(&data.join("images")),
        "--out",
        s(&pictures),
        "--save-heatmaps",
        "--gt",
        s(&json),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.starts_with("Speed: ")
            && stdout
                .contains("per image at shape (1, 3, 64, 64)\nwrote 19 files for 8 images to "),
        "{stdout}"
    );
    let detections: Vec<serde_json::Value> =
        serde_json::from_slice(&std::fs::read(pictures.join("detections.json")).unwrap()).unwrap();
    assert_eq!(detections.len(), 8 * 100, "top-100 boxes per image");
    assert_eq!(detections[0]["file_name"], "000001.png");
    let picture = image::open(pictures.join("000001.png")).unwrap();
    assert_eq!(
        (picture.width(), picture.height()),
        (128, 64),
        "the image and its depth map side by side"
    );
    // Predicted heatmaps (objects, joints) above the targets encoded from the ground truth.
    let heat = image::open(pictures.join("000001_heatmaps.png")).unwrap();
    assert_eq!((heat.width(), heat.height()), (128, 128));
    let heat = heat.to_rgb8();
    // Object centres are exact peaks (1.0): the hottest colour of the map.
    let peaks = (64..128)
        .flat_map(|y| (0..128).map(move |x| (x, y)))
        .filter(|&(x, y)| heat.get_pixel(x, y).0 == [220, 30, 20])
        .count();
    assert!(peaks >= 16, "the target heatmaps have peaks: {peaks}");
    let out = mustard(&[
        "predict",
        "--checkpoint",
        s(&run),
        "--input",
        s(&dir.join("nothing")),
        "--out",
        s(&pictures),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).starts_with(&format!("error: {}: ", dir.join("nothing").display())),
        "{}",
        text(&out.stderr)
    );
    // A JPEG cut short is refused, naming it, rather than predicted on its grey fill.
    let cut = dir.join("cut");
    std::fs::create_dir_all(&cut).unwrap();
    let jpeg = cut.join("cut.jpg");
    image::open(data.join("images/000001.png"))
        .unwrap()
        .save(&jpeg)
        .unwrap();
    let bytes = std::fs::read(&jpeg).unwrap();
    std::fs::write(&jpeg, &bytes[..bytes.len() / 2]).unwrap();
    let out = mustard(&[
        "predict",
        "--checkpoint",
        s(&run),
        "--input",
        s(&jpeg),
        "--out",
        s(&dir.join("cut-out")),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr),
        format!(
            "error: {}: truncated: the JPEG data ends before its end-of-image marker\n",
            jpeg.display()
        )
    );
    // A weights file outside its run folder: the error says what was looked for and why.
    let loose = dir.join("loose");
    std::fs::create_dir_all(&loose).unwrap();
    let weights = loose.join("last.safetensors");
    std::fs::copy(run.join("weights/last.safetensors"), &weights).unwrap();
    let out = mustard(&[
        "predict",
        "--checkpoint",
        s(&weights),
        "--input",
        s(&data.join("images")),
        "--out",
        s(&pictures),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr),
        format!(
            "error: {}: not found: the model of {} is rebuilt from the config.toml of its run folder \
             (runs/<name>/config.toml beside weights/); pass the run folder or a file of its weights/\n",
            dir.join("config.toml").display(),
            weights.display()
        )
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn eval_scores_a_coco_results_file_like_pycocotools() {
    let dir = temp("results");
    let data = dir.join("data");
    assert!(
        mustard(&["synth", "--out", s(&data), "--images", "3", "--size", "64"])
            .status
            .success()
    );
    let json = data.join("instances.json");
    // Perfect detections: every ground-truth box with score 1.
    let gt: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let results: Vec<serde_json::Value> = gt["annotations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| serde_json::json!({"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 1.0}))
        .collect();
    let res = dir.join("results.json");
    std::fs::write(&res, serde_json::to_vec(&results).unwrap()).unwrap();
    let plots = dir.join("plots");
    let out = mustard(&[
        "eval",
        "--gt",
        s(&json),
        "--results",
        s(&res),
        "--plots",
        s(&plots),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.ends_with(&format!(
            "wrote {}\n",
            plots.join("PR_curve_bbox.png").display()
        )),
        "{stdout}"
    );
    let categories: Vec<&str> = stdout
        .lines()
        .skip_while(|l| !l.starts_with(" category "))
        .skip(1)
        .take_while(|l| !l.starts_with("wrote "))
        .collect();
    assert!(!categories.is_empty(), "{stdout}");
    for line in categories {
        let cells: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(cells[1..4], ["1.000", "1.000", "1.000"], "{line}");
    }
    assert!(
        stdout.starts_with(
            " Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ] = 1.000\n"
        ),
        "{stdout}"
    );
    // A box of negative width is scored as pycocotools scores it, with a warning naming it;
    // a score that is not a number is refused.
    std::fs::write(
        &res,
        br#"[{"image_id": 1, "category_id": 1, "bbox": [4, 4, -3, 2], "score": 0.5}]"#,
    )
    .unwrap();
    let out = mustard(&["eval", "--gt", s(&json), "--results", s(&res)]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stderr),
        format!(
            "warning: {}: result 0: bbox [4.0, 4.0, -3.0, 2.0] has a negative width; it is scored as given, as pycocotools does\n",
            res.display()
        )
    );
    std::fs::write(
        &res,
        br#"[{"image_id": 1, "category_id": 1, "bbox": [4, 4, 3, 2], "score": NaN}]"#,
    )
    .unwrap();
    let out = mustard(&["eval", "--gt", s(&json), "--results", s(&res)]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr),
        format!(
            "error: {}: invalid JSON at [0].score (line 1, column 67): `NaN` is not a JSON number (scores and coordinates must be finite)\n",
            res.display()
        )
    );
    // A result on an unknown image is refused with the record named.
    std::fs::write(
        &res,
        br#"[{"image_id": 99, "category_id": 1, "bbox": [0, 0, 1, 1], "score": 0.5}]"#,
    )
    .unwrap();
    let out = mustard(&["eval", "--gt", s(&json), "--results", s(&res)]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).starts_with("error: ") && text(&out.stderr).contains("99"),
        "{}",
        text(&out.stderr)
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bench_prints_the_speed_line() {
    let out = mustard(&[
        "bench",
        "--input-size",
        "64",
        "--iterations",
        "2",
        "--warmup",
        "1",
        "--tasks",
        "detection,segmentation",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines[0],
        "tiny ResNet backbone, FPN neck (32 channels, levels fused at stride 4), tasks detection,segmentation"
    );
    assert!(lines[1].starts_with("Speed: "), "{stdout}");
    assert!(
        lines[1].contains(" ms inference, ")
            && lines[1].contains(" per image at shape (1, 3, 64, 64); "),
        "{stdout}"
    );
    assert!(lines[1].contains(" images/s; "), "{stdout}");
    // Parameters of the tiny two-task model are fixed by the architecture.
    let params: usize = lines[1]
        .split("; ")
        .find_map(|p| p.strip_suffix(" parameters"))
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(params, 456_637);
    if cfg!(target_os = "linux") {
        assert!(lines[1].contains("; peak memory "), "{stdout}");
    }
}

#[test]
fn synthetic_training_renders_at_the_input_size_with_the_requested_splits() {
    let runs = temp("synth-train").join("runs");
    let out = mustard(&[
        "train",
        "--runs",
        s(&runs),
        "--name",
        "cls",
        "--tasks",
        "classification",
        "--input-size",
        "64",
        "--synth-images",
        "8",
        "--synth-val-images",
        "4",
        "--batch-size",
        "4",
        "--epochs",
        "1",
        "--no-val",
        "--conv",
        "direct",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.starts_with("trained 2 steps in "), "{stdout}");
    let config = std::fs::read_to_string(runs.join("cls/config.toml")).unwrap();
    for line in [
        "train_images = 8\n",
        "val_images = 4\n",
        "size = 64\n",
        "input_size = 64\n",
        // The convolution kernel is part of the run's settings.
        "[numerics]\nconv = \"direct\"\n",
    ] {
        assert!(config.contains(line), "{line}{config}");
    }
    let synth = runs.join("synth");
    for dir in ["train-64px-8-seed0-v3", "val-64px-4-seed0-v3"] {
        assert!(synth.join(dir).join("instances.json").is_file(), "{dir}");
    }
}

#[test]
fn a_folder_dataset_checks_trains_and_evaluates() {
    let dir = temp("folders");
    let data = dir.join("data");
    let out = mustard(&["synth", "--out", s(&data), "--images", "8", "--size", "64"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // The synthetic label maps and depth maps as a folder dataset: label value k is class k.
    let coco: serde_json::Value =
        serde_json::from_slice(&std::fs::read(data.join("instances.json")).unwrap()).unwrap();
    let mut names = vec!["background".to_string()];
    names.extend(
        coco["categories"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap().to_string()),
    );
    let spec = data.join("folders.toml");
    std::fs::write(
        &spec,
        format!(
            "images = \"images\"\nlabels = \"semantic\"\nclass_names = {names:?}\ndepth = \"depth\"\ndepth_scale = 0.001\n"
        ),
    )
    .unwrap();
    let out = mustard(&["data", "check", s(&spec)]);
    assert!(out.status.success(), "{}", text(&out.stdout));
    let report = text(&out.stdout);
    assert!(
        report.starts_with(&format!("{}: 8 images, 0 annotations", spec.display()))
            && report.contains("  segmentation    8 images\n")
            && report.contains("  depth           8 images\n")
            && report.ends_with("no problems found\n"),
        "{report}"
    );
    let runs = dir.join("runs");
    let out = mustard(&[
        "train",
        "--runs",
        s(&runs),
        "--name",
        "folders",
        "--data",
        s(&spec),
        "--tasks",
        "segmentation,depth",
        "--no-val",
        "--input-size",
        "64",
        "--batch-size",
        "4",
        "--max-steps",
        "3",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let config: mustard::Config =
        mustard::config::read_toml(&runs.join("folders/config.toml")).unwrap();
    assert_eq!(config.model.classes.segmentation_classes(), names);
    let out = mustard(&[
        "eval",
        "--checkpoint",
        s(&runs.join("folders")),
        "--data",
        s(&spec),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.starts_with("8 images\n") && stdout.contains("mIoU") && stdout.contains("AbsRel"),
        "{stdout}"
    );
    // It pseudo-labels, and serves `must` as a teacher's labelled set and test set.
    let out = mustard(&[
        "pseudo-label",
        "--teacher",
        s(&runs.join("folders")),
        "--images",
        s(&spec),
        "--out",
        s(&dir.join("labels")),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("8 images\n"),
        "{}",
        text(&out.stdout)
    );
    let out = mustard(&[
        "must",
        "--runs",
        s(&runs),
        "--labelled",
        &format!("segmentation={}", spec.display()),
        "--unlabelled",
        s(&data.join("images")),
        "--test",
        s(&spec),
        "--transfer",
        "none",
        "--input-size",
        "64",
        "--batch-size",
        "4",
        "--teacher-epochs",
        "1",
        "--student-epochs",
        "1",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("\n| segmentation | mIoU | "),
        "{}",
        text(&out.stdout)
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn training_stops_early_when_validation_stops_improving() {
    let dir = temp("patience");
    let runs = dir.join("runs");
    let args = [
        "train",
        "--runs",
        s(&runs),
        "--name",
        "early",
        "--tasks",
        "segmentation",
        "--synth-images",
        "64",
        "--synth-val-images",
        "16",
        "--input-size",
        "64",
        "--epochs",
        "40",
        "--patience",
        "3",
        "--workers",
        "2",
    ];
    let out = mustard(&args);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let csv = std::fs::read_to_string(runs.join("early/metrics.csv")).unwrap();
    let scores: Vec<f64> = csv
        .lines()
        .skip(1)
        .map(|l| l.rsplit(',').next().unwrap().parse().unwrap())
        .collect();
    // The run names its best epoch; the three epochs after it score no better (in the log's
    // five decimals), and the run stops there, well before its 40 epochs.
    let stderr = text(&out.stderr);
    let line = stderr
        .lines()
        .find(|l| l.starts_with("stopping early: "))
        .unwrap_or_else(|| panic!("{stderr}"));
    let best_epoch: usize = line
        .trim_end_matches(')')
        .rsplit(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let best = scores[best_epoch - 1];
    let printed = line
        .strip_prefix("stopping early: the validation score has not improved for 3 epochs (best ")
        .and_then(|rest| rest.strip_suffix(&format!(" after epoch {best_epoch})")))
        .unwrap_or_else(|| panic!("{line}"));
    assert!(
        (printed.parse::<f64>().unwrap() - best).abs() <= 6e-5,
        "{line}"
    );
    assert_eq!(scores.len(), best_epoch + 3, "{csv}");
    assert!(scores.len() < 40, "{csv}");
    assert!(scores.iter().all(|&v| v <= best), "{csv}");
    let stdout = text(&out.stdout);
    assert!(
        stdout.ends_with(&format!(
            "best validation score {printed} after epoch {best_epoch} (stopped early: no improvement since): best.safetensors\n"
        )),
        "{stdout}"
    );
    // A resumed run that already stopped trains no further.
    let steps = stdout.split_whitespace().nth(1).unwrap().to_string();
    let out = mustard(&["train", "--resume", "--runs", s(&runs), "--name", "early"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).starts_with(&format!("trained {steps} steps in ")),
        "{}",
        text(&out.stdout)
    );
    // Early stopping without validation is refused before anything is written.
    let out = mustard(&[
        "train",
        "--runs",
        s(&runs),
        "--name",
        "noval",
        "--patience",
        "2",
        "--no-val",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        text(&out.stderr).trim_end(),
        "error: train.patience: early stopping needs validation (train.validate = true, no --no-val)"
    );
    assert!(!runs.join("noval").exists());
    let _ = std::fs::remove_dir_all(&dir);
}

/// A build without the `distributed` feature that a launcher started as one of several
/// processes refuses, naming what it saw, instead of N copies writing one run folder.
#[cfg(not(feature = "distributed"))]
#[test]
fn a_build_without_the_distributed_feature_refuses_to_run_as_several_processes() {
    for (variable, n) in [
        ("OMPI_COMM_WORLD_SIZE", "2"),
        ("PMI_SIZE", "4"),
        ("SLURM_STEP_NUM_TASKS", "3"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_mustard"))
            .args(["train", "--runs", "/nonexistent/runs"])
            .env(variable, n)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        assert_eq!(
            text(&out.stderr),
            format!(
                "error: this mustard was built without the `distributed` feature, but it was started as one of {n} processes ({variable}={n}); rebuild it with `cargo build --release -p mustard-cli --features distributed`, or start one process\n"
            )
        );
        assert!(out.stdout.is_empty());
    }
    // One process under a launcher runs.
    let out = Command::new(env!("CARGO_BIN_EXE_mustard"))
        .args(["data", "check", "/nonexistent.json"])
        .env("OMPI_COMM_WORLD_SIZE", "1")
        .output()
        .unwrap();
    assert!(
        !text(&out.stderr).contains("distributed"),
        "{}",
        text(&out.stderr)
    );
}
