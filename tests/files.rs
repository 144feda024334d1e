//! Real files that must never stop a long run: files cut short caught by the header check,
//! images broken inside left out mid-run with `--skip-bad` (train, eval, pseudo-label), every
//! common image format, and folders of images with sub-folders and repeated names.

use std::path::{Path, PathBuf};

mod common;
use common::{mustard, s, temp, text};

/// A synthetic dataset of `n` 64-pixel images whose image 5 is re-encoded as a JPEG.
fn dataset(dir: &Path, n: usize) -> PathBuf {
    let out = mustard(&[
        "synth",
        "--out",
        s(dir),
        "--images",
        &n.to_string(),
        "--size",
        "64",
        "--seed",
        "3",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let json = dir.join("instances.json");
    let png = dir.join("images/000005.png");
    image::open(&png)
        .unwrap()
        .to_rgb8()
        .save(dir.join("images/000005.jpg"))
        .unwrap();
    std::fs::remove_file(&png).unwrap();
    let mut file: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    for image in file["images"].as_array_mut().unwrap() {
        if image["file_name"] == "images/000005.png" {
            image["file_name"] = "images/000005.jpg".into();
        }
    }
    std::fs::write(&json, serde_json::to_vec(&file).unwrap()).unwrap();
    json
}

/// Cuts a file to half its length.
fn cut(path: &Path) {
    let bytes = std::fs::read(path).unwrap();
    std::fs::write(path, &bytes[..bytes.len() / 2]).unwrap();
}

/// Breaks a PNG or JPEG inside while keeping its header and its end (the IEND chunk, the
/// end-of-image marker): the header check passes and decoding fails.
fn break_inside(path: &Path) {
    let bytes = std::fs::read(path).unwrap();
    let n = bytes.len();
    let broken = if path.extension().is_some_and(|e| e == "png") {
        // Half the pixel data, then the IEND chunk.
        [&bytes[..n / 2], &bytes[n - 12..]].concat()
    } else {
        // A second start-of-frame marker in the middle of the scan data.
        let sos = bytes.windows(2).position(|w| w == [0xFF, 0xDA]).unwrap();
        let mut b = bytes.clone();
        b[sos + 40..sos + 42].copy_from_slice(&[0xFF, 0xC0]);
        b
    };
    std::fs::write(path, broken).unwrap();
}

#[test]
fn files_cut_short_are_bad_records_of_the_header_check() {
    let dir = temp("cut");
    let json = dataset(&dir, 6);
    let (png, jpg) = (dir.join("images/000003.png"), dir.join("images/000005.jpg"));
    cut(&png);
    cut(&jpg);
    let out = mustard(&["data", "check", s(&json)]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let report = text(&out.stdout);
    for line in [
        format!(
            "  image 3 [{}]: file_name cannot be decoded: truncated: the PNG data ends before its IEND chunk\n",
            png.display()
        ),
        format!(
            "  image 5 [{}]: file_name cannot be decoded: truncated: the JPEG data ends before its end-of-image marker\n",
            jpg.display()
        ),
    ] {
        assert!(report.contains(&line), "{line}\n{report}");
    }
    assert!(report.contains("2 problem(s):\n"), "{report}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn images_broken_inside_stop_a_run_naming_them_or_are_left_out_with_skip_bad() {
    let dir = temp("inside");
    let json = dataset(&dir, 8);
    let (png, jpg) = (dir.join("images/000003.png"), dir.join("images/000005.jpg"));
    break_inside(&png);
    break_inside(&jpg);
    // The header check passes: the files are only found when decoded.
    let out = mustard(&["data", "check", s(&json)]);
    assert!(out.status.success(), "{}", text(&out.stdout));
    let out = mustard(&["data", "check", "--deep", s(&json)]);
    assert_eq!(out.status.code(), Some(1));

    let runs = dir.join("runs");
    let train = |name: &str, extra: &[&str]| {
        let mut args = vec![
            "train",
            "--runs",
            s(&runs),
            "--name",
            name,
            "--data",
            s(&json),
            "--tasks",
            "detection",
            "--no-val",
            "--input-size",
            "64",
            "--batch-size",
            "4",
            "--epochs",
            "2",
            "--workers",
            "2",
        ];
        args.extend_from_slice(extra);
        mustard(&args)
    };
    let out = train("strict", &["--checkpoint-every", "1"]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    let line = err
        .lines()
        .find(|l| l.starts_with("error: "))
        .unwrap_or_default();
    assert!(
        (line.starts_with(&format!("error: {}: ", png.display()))
            || line.starts_with(&format!("error: {}: ", jpg.display())))
            && line.ends_with(" (pass --skip-bad to leave out images that cannot be read)"),
        "{err}"
    );
    // The run stops at the batch that needs the file and says where it resumes from.
    let stopped = err
        .split("\ntraining stopped before step ")
        .nth(1)
        .unwrap_or_else(|| panic!("{err}"));
    let step: u64 = stopped.split(';').next().unwrap().parse().unwrap();
    let last = runs.join("strict/weights/last.safetensors");
    if step == 1 {
        assert_eq!(stopped, "1; no checkpoint was written yet\n", "{err}");
    } else {
        assert_eq!(
            stopped,
            format!(
                "{step}; the run resumes from its last checkpoint ({}), with --resume or by running the same command again\n",
                last.display()
            )
        );
        // Resumed with --skip-bad, it leaves the files out from there on.
        let out = mustard(&[
            "train",
            "--runs",
            s(&runs),
            "--name",
            "strict",
            "--resume",
            "--skip-bad",
        ]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert!(text(&out.stdout).starts_with("trained 4 steps in "));
    }
    let out = train("skip", &["--skip-bad"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    for path in [&png, &jpg] {
        let named = err
            .lines()
            .filter(|l| l.starts_with(&format!("left out {}: ", path.display())))
            .count();
        assert_eq!(named, 1, "named once over two epochs: {err}");
    }
    let stdout = text(&out.stdout);
    assert!(
        stdout
            .contains("left out 2 training images that cannot be read (--skip-bad; named above)\n"),
        "{stdout}"
    );
    // 6 readable images, batch 4: two batches an epoch, one of them short.
    assert!(stdout.starts_with("trained 4 steps in "), "{stdout}");
    let csv = std::fs::read_to_string(runs.join("skip/metrics.csv")).unwrap();
    let rows: Vec<Vec<&str>> = csv.lines().map(|l| l.split(',').collect()).collect();
    let col = rows[0].iter().position(|c| *c == "skipped").unwrap();
    assert_eq!(rows[1][col], "2", "{csv}");
    assert_eq!(rows[2][col], "2", "{csv}");

    // Evaluation leaves them out of every metric, ground truth included.
    let run = runs.join("skip");
    let out = mustard(&["eval", "--checkpoint", s(&run), "--data", s(&json)]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains(" (pass --skip-bad to leave out images that cannot be read)"),
        "{}",
        text(&out.stderr)
    );
    let out = mustard(&[
        "eval",
        "--checkpoint",
        s(&run),
        "--data",
        s(&json),
        "--skip-bad",
        "--no-plots",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.starts_with("6 images\nleft out 2 images that cannot be read (--skip-bad): "),
        "{stdout}"
    );

    // Pseudo-labelling stores them with no task labelled.
    let store = dir.join("labels");
    let args = [
        "pseudo-label",
        "--teacher",
        s(&run),
        "--images",
        s(&json),
        "--out",
        s(&store),
        "--shard-size",
        "4",
    ];
    let out = mustard(&args);
    assert_eq!(out.status.code(), Some(1));
    let mut with_skip = args.to_vec();
    with_skip.push("--skip-bad");
    let out = mustard(&with_skip);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("left out 2 images that cannot be read (--skip-bad; stored with no task labelled, named above)\n"),
        "{stdout}"
    );
    assert!(stdout.contains("is complete:"), "{stdout}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn predict_reads_every_format_walks_sub_folders_and_never_overwrites() {
    let dir = temp("formats");
    let json = dataset(&dir, 6);
    let runs = dir.join("runs");
    let out = mustard(&[
        "train",
        "--runs",
        s(&runs),
        "--name",
        "m",
        "--data",
        s(&json),
        "--tasks",
        "detection",
        "--no-val",
        "--input-size",
        "64",
        "--batch-size",
        "2",
        "--max-steps",
        "1",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let input = dir.join("in");
    std::fs::create_dir_all(input.join("sub")).unwrap();
    let picture = image::open(dir.join("images/000001.png"))
        .unwrap()
        .to_rgb8();
    for name in [
        "a.jpg",
        "a.png",
        "sub/a.png",
        "sub/b.webp",
        "sub/c.bmp",
        "sub/d.tiff",
        "sub/e.gif",
    ] {
        let path = input.join(name);
        if name.ends_with(".gif") || name.ends_with(".webp") {
            image::DynamicImage::ImageRgb8(picture.clone())
                .to_rgba8()
                .save(&path)
                .unwrap();
        } else {
            picture.save(&path).unwrap();
        }
    }
    std::fs::write(input.join("notes.txt"), "not a picture").unwrap();
    std::fs::write(input.join(".hidden"), "ignored").unwrap();
    let pictures = dir.join("out");
    let out = mustard(&[
        "predict",
        "--checkpoint",
        s(&runs.join("m")),
        "--input",
        s(&input),
        "--out",
        s(&pictures),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("left out 1 file that is not an image: notes.txt\n"),
        "{}",
        text(&out.stderr)
    );
    assert!(
        text(&out.stdout).contains(&format!(
            "wrote 8 files for 7 images to {}\n",
            pictures.display()
        )),
        "{}",
        text(&out.stdout)
    );
    for file in [
        "a.jpg.png",
        "a.png.png",
        "sub/a.png",
        "sub/b.png",
        "sub/c.png",
        "sub/d.png",
        "sub/e.png",
    ] {
        let path = pictures.join(file);
        assert_eq!(image::image_dimensions(&path).unwrap(), (64, 64), "{file}");
    }
    let records: serde_json::Value =
        serde_json::from_slice(&std::fs::read(pictures.join("detections.json")).unwrap()).unwrap();
    let mut names: Vec<&str> = records
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["file_name"].as_str().unwrap())
        .collect();
    names.dedup();
    assert_eq!(
        names,
        [
            "a.jpg",
            "a.png",
            "sub/a.png",
            "sub/b.webp",
            "sub/c.bmp",
            "sub/d.tiff",
            "sub/e.gif"
        ]
    );
    // A single file of any format is read whatever its extension says.
    let out = mustard(&[
        "predict",
        "--checkpoint",
        s(&runs.join("m")),
        "--input",
        s(&input.join("sub/b.webp")),
        "--out",
        s(&dir.join("one")),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(dir.join("one/b.png").is_file());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn must_leaves_out_images_broken_inside_with_skip_bad() {
    let dir = temp("must-skip");
    let data = dir.join("data");
    let out = mustard(&[
        "synth",
        "--out",
        s(&data),
        "--splits",
        "--per-task",
        "8",
        "--unlabeled",
        "8",
        "--test",
        "4",
        "--size",
        "64",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // One image of the teacher's labelled set and one of the unlabelled set broken inside.
    let image_of = |split: &str, k: usize| -> PathBuf {
        let file: serde_json::Value =
            serde_json::from_slice(&std::fs::read(data.join(split)).unwrap()).unwrap();
        data.join(file["images"][k]["file_name"].as_str().unwrap())
    };
    let (labelled, unlabelled) = (
        image_of("train_classification.json", 2),
        image_of("unlabeled.json", 5),
    );
    break_inside(&labelled);
    break_inside(&unlabelled);
    let runs = dir.join("runs");
    let file = |name: &str| data.join(name).display().to_string();
    let args = |extra: &[&str]| {
        let mut a: Vec<String> = [
            "must",
            "--runs",
            s(&runs),
            "--labelled",
            &format!("classification={}", file("train_classification.json")),
            "--unlabelled",
            &file("unlabeled.json"),
            "--test",
            &format!("classification={}", file("test_classification.json")),
            "--input-size",
            "64",
            "--batch-size",
            "4",
            "--teacher-epochs",
            "1",
            "--student-epochs",
            "1",
            "--shard-size",
            "4",
        ]
        .iter()
        .map(|a| a.to_string())
        .collect();
        a.extend(extra.iter().map(|e| e.to_string()));
        a
    };
    let run = |a: Vec<String>| {
        let refs: Vec<&str> = a.iter().map(String::as_str).collect();
        mustard(&refs)
    };
    let out = run(args(&[]));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains(&format!("error: {}: ", labelled.display())),
        "{}",
        text(&out.stderr)
    );
    // The same command with --skip-bad resumes the teacher and goes on to the end.
    let out = run(args(&["--skip-bad"]));
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    for path in [&labelled, &unlabelled] {
        assert!(
            err.contains(&format!("left out {}: ", path.display())),
            "{}: {err}",
            path.display()
        );
    }
    assert!(runs.join("must/report.md").is_file());
    let _ = std::fs::remove_dir_all(&dir);
}
