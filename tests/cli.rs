//! End-to-end tests of the `mustard` command on tiny synthetic datasets.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn mustard(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mustard"))
        .args(args)
        .output()
        .expect("the mustard binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mustard-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

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
        stdout.contains(&format!("  instances       {}", json.display())),
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
        "test",
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
    std::fs::remove_dir_all(&dir).unwrap();
}
