//! End-to-end tests of MuST through the `mustard` command: the pseudo-label store under kill -9,
//! corruption and parallel `--shard i/N` workers, and the whole `mustard must` pipeline.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use mustard::pseudo_labels::{ImageLabels, ShardState, Store};

mod common;
use common::{mustard, s, temp, text};

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "stdout:\n{}\nstderr:\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// Every label of a complete store, by image id, checking each image appears exactly once.
fn contents(dir: &Path) -> Vec<(u64, ImageLabels)> {
    let store = Store::open(dir).unwrap();
    let mut all = Vec::new();
    for (k, state) in store.status().into_iter().enumerate() {
        assert!(
            matches!(state, ShardState::Complete(_)),
            "shard {k}: {state:?}"
        );
        all.extend(store.read_shard(k).unwrap());
    }
    let mut ids: Vec<u64> = all.iter().map(|(id, _)| *id).collect();
    ids.dedup();
    assert_eq!(ids.len(), all.len(), "an image appears twice");
    all
}

#[test]
fn the_label_store_survives_kill_corruption_and_parallel_workers() {
    let dir = temp("store");
    let images = dir.join("images");
    ok(mustard(&[
        "synth",
        "--out",
        s(&images),
        "--images",
        "64",
        "--size",
        "64",
        "--seed",
        "5",
    ]));
    // One teacher for every task, barely trained: the store's mechanics do not need good labels.
    let runs = dir.join("runs");
    ok(mustard(&[
        "train",
        "--runs",
        s(&runs),
        "--name",
        "teacher",
        "--data",
        s(&images.join("instances.json")),
        "--no-val",
        "--input-size",
        "64",
        "--batch-size",
        "4",
        "--max-steps",
        "2",
    ]));
    let teacher = runs.join("teacher");
    let pseudo = |out: &Path, extra: &[&str]| -> Vec<String> {
        let mut args = vec![
            "pseudo-label".to_string(),
            "--teacher".into(),
            s(&teacher).into(),
            "--images".into(),
            s(&images.join("images")).into(),
            "--out".into(),
            s(out).into(),
            "--shard-size".into(),
            "2".into(),
            "--batch-size".into(),
            "1".into(),
            "--det-threshold".into(),
            "0.05".into(),
            "--pose-threshold".into(),
            "0.05".into(),
        ];
        args.extend(extra.iter().map(|a| a.to_string()));
        args
    };
    let run = |args: Vec<String>| {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        ok(mustard(&refs))
    };

    // An uninterrupted run is the reference.
    let reference = dir.join("reference");
    let stdout = run(pseudo(&reference, &[]));
    assert!(
        stdout.starts_with("shard 0/1: wrote 32 shard(s), 0 already complete, 0 redone, in "),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!(
            "store {} is complete:\n64 images\ndetection: ",
            reference.display()
        )),
        "{stdout}"
    );
    let want = contents(&reference);
    assert_eq!(want.len(), 64);
    assert!(reference.join("stats.json").is_file());

    // kill -9 after the first shard lands, then rerun: nothing lost, nothing twice.
    let store = dir.join("killed");
    let mut child = Command::new(env!("CARGO_BIN_EXE_mustard"))
        .args(pseudo(&store, &[]))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while !store.join("shards/00000.json").is_file() && started.elapsed() < Duration::from_secs(60)
    {
        std::thread::sleep(Duration::from_millis(2));
    }
    let running = child.try_wait().unwrap().is_none();
    child.kill().unwrap();
    child.wait().unwrap();
    let stdout = run(pseudo(&store, &[]));
    let (written, skipped) = {
        let words: Vec<&str> = stdout.split_whitespace().collect();
        (
            words[3].parse::<usize>().unwrap(),
            words[5].parse::<usize>().unwrap(),
        )
    };
    eprintln!("killed while running: {running}; the rerun {stdout}");
    assert_eq!(written + skipped, 32, "{stdout}");
    assert!(skipped >= 1, "{stdout}");
    if running {
        assert!(
            written >= 1,
            "the kill landed mid-run, so something was left: {stdout}"
        );
    }
    assert_eq!(contents(&store), want);
    let leftovers: Vec<_> = std::fs::read_dir(store.join("shards"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // A corrupted shard is found by its checksum and redone; the rest is skipped.
    let shard = store.join("shards/00005.safetensors");
    let mut bytes = std::fs::read(&shard).unwrap();
    let n = bytes.len();
    bytes[n - 3] ^= 0xff;
    std::fs::write(&shard, bytes).unwrap();
    let stdout = run(pseudo(&store, &[]));
    assert!(
        stdout.starts_with("shard 0/1: wrote 1 shard(s), 31 already complete, 1 redone, in "),
        "{stdout}"
    );
    assert_eq!(contents(&store), want);

    // Two workers started at once, each on its slice, fill one store (both running before
    // either is waited for).
    let shared = dir.join("shared");
    let workers: Vec<_> = ["0/2", "1/2"]
        .iter()
        .map(|spec| {
            Command::new(env!("CARGO_BIN_EXE_mustard"))
                .args(pseudo(&shared, &["--shard", spec]))
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for w in workers {
        ok(w.wait_with_output().unwrap());
    }
    assert_eq!(contents(&shared), want);
    assert_eq!(
        std::fs::read_to_string(shared.join("stats.json")).unwrap(),
        std::fs::read_to_string(reference.join("stats.json")).unwrap()
    );

    // Settings that differ from the store's are refused, naming the field.
    let out = mustard(
        &pseudo(&shared, &["--seg-threshold", "0.7"])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    assert!(!out.status.success());
    assert_eq!(
        text(&out.stderr),
        format!(
            "error: {}: this store was made with a different thresholds.segmentation (0.7 now, 0.5 stored); choose another output folder or delete this one\n",
            shared.join("manifest.json").display()
        )
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The rows of the report's main table: (task, teacher, student, initialisation, constant); the
/// constant is `–` for a given teacher whose labelled set the run does not have.
fn table(report: &str) -> Vec<(String, f64, f64, f64, Option<f64>)> {
    report
        .lines()
        .skip_while(|l| !l.starts_with("| task | metric | teacher | student |"))
        .skip(2)
        .take_while(|l| l.starts_with("| "))
        .map(|l| {
            let cells: Vec<&str> = l.trim_matches('|').split('|').map(str::trim).collect();
            (
                cells[0].to_string(),
                cells[2].parse().unwrap(),
                cells[3].parse().unwrap(),
                cells[5].parse().unwrap(),
                (cells[6] != "–").then(|| cells[6].parse().unwrap()),
            )
        })
        .collect()
}

#[test]
fn must_runs_end_to_end_and_a_rerun_reuses_every_stage() {
    let runs = temp("pipeline");
    let args = [
        "must",
        "--runs",
        s(&runs),
        "--per-task",
        MUST_PER_TASK,
        "--unlabelled-images",
        MUST_UNLABELLED,
        "--test-images",
        "32",
        "--size",
        "64",
        "--input-size",
        "64",
        "--teacher-epochs",
        MUST_TEACHER_EPOCHS,
        "--student-epochs",
        MUST_STUDENT_EPOCHS,
        "--transfer-images",
        "16",
        "--transfer-epochs",
        "3",
        "--shard-size",
        "16",
        "--det-threshold",
        MUST_BOX_THRESHOLD,
        "--pose-threshold",
        MUST_BOX_THRESHOLD,
        "--student-loss-weight",
        MUST_DETECTION_WEIGHT,
    ];
    let stdout = ok(mustard(&args));
    let root = runs.join("must");
    let report = std::fs::read_to_string(root.join("report.md")).unwrap();
    assert!(stdout.contains(&report), "the report is printed");
    assert!(stdout.ends_with(&format!("report: {}\n", root.join("report.md").display())));
    assert!(
        report.starts_with(
            "# MuST: multi-task self-training\n\nTeachers: one tiny ResNet model per task, "
        ),
        "{report}"
    );
    for section in [
        "\n## Pseudo-labels\n",
        "\n## Transfer to held-out downstream tasks\n",
        "\n## Timings\n",
    ] {
        assert!(report.contains(section), "{section}: {report}");
    }
    assert!(
        report.contains(
            "| initialisation | segmentation mIoU |\n| --- | --- |\n| student backbone + neck | "
        ) && report.contains("\n| constant prediction (no training) | 0."),
        "{report}"
    );
    // One seed: the claim's sentence says it is not tested, for that reason or because both
    // scores sit at the trivial baseline (checked first), never that it holds or fails.
    let claim = report
        .split(
            "- **MuST's claim on downstream segmentation** — the student's backbone transfers at \
             least as well as training from scratch (no teacher backbone was fine-tuned; \
             --transfer-from-teachers): ",
        )
        .nth(1)
        .and_then(|rest| rest.lines().next())
        .unwrap_or_else(|| panic!("no transfer claim: {report}"))
        .trim_end_matches('.');
    assert!(
        claim.ends_with(
            "one seed gives no noise estimate, so the claim is not tested (run with --seeds 3)"
        ) || claim.contains("of the trivial baseline (0.")
            && claim.ends_with("so this budget cannot test the claim"),
        "{claim}"
    );
    for stage in [
        "data",
        "teacher detection",
        "teacher pose",
        "teacher segmentation",
        "teacher depth",
        "teacher classification",
        "pseudo-labels",
        "student",
        "evaluation",
        "transfer-segmentation-student",
        "transfer-segmentation-scratch",
    ] {
        assert!(
            report.contains(&format!("\n| {stage} | ")),
            "{stage}: {report}"
        );
    }
    let rows = table(&report);
    let tasks: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
    assert_eq!(
        tasks,
        [
            "detection",
            "pose",
            "segmentation",
            "depth",
            "classification"
        ]
    );
    // The same numbers at full precision.
    let results: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root.join("results.json")).unwrap()).unwrap();
    let exact = results["seeds"][0]["tasks"].as_array().unwrap();
    assert_eq!(exact.len(), 5);
    for (row, r) in rows.iter().zip(exact) {
        assert_eq!(r["task"], row.0.as_str());
        let value = |k: &str| r[k].as_f64().unwrap();
        let (student, initial) = (value("student"), value("initial"));
        // The table rounds to three decimals (0.4375 prints as 0.438).
        assert!((student - row.2).abs() <= 5e-4 + 1e-9, "{r}");
        // The constant prediction: AP 0 without a box; a share of the test set otherwise.
        let constant = value("constant_baseline");
        assert!((constant - row.4.unwrap()).abs() <= 5e-4 + 1e-9, "{r}");
        match row.0.as_str() {
            "detection" | "pose" => assert_eq!(constant, 0.0),
            _ => assert!(constant > 0.0 && constant < 1.0, "{r}"),
        }
        // Better on the task's metric; where a tiny budget leaves the metric at its floor for
        // both (keypoint AP at 64 px), closer to the real labels.
        let improved = student > initial
            || (student == initial && value("student_loss") < value("initial_loss"));
        assert!(
            improved,
            "the student did not improve on {}: {r}\n{report}",
            row.0
        );
        // The student keeps at least half of what its teacher learned above the constant
        // prediction, wherever the teacher learned something (on the Intel Xeon it keeps
        // 78–95% at this budget: detection 0.049 of 0.063, segmentation 0.220 of 0.280, depth
        // 0.651 of 0.710, classification 0.594 of 0.625; pose stays at 0 for both).
        let teacher = value("teacher");
        if teacher - constant >= 0.02 {
            assert!(
                student - constant >= 0.5 * (teacher - constant),
                "the {} student kept less than half of its teacher's gain over the constant prediction ({student} against {teacher}, constant {constant}):\n{report}",
                row.0
            );
        }
    }
    // Each of the student's heads keeps its teacher's label space.
    let student: mustard::Config =
        mustard::config::read_toml(&root.join("student/config.toml")).unwrap();
    let classes = &student.model.classes;
    assert_eq!(classes.categories, ["circle", "square", "triangle"]);
    assert_eq!(
        classes.segmentation,
        ["stripes", "checks", "shape", "person"]
    );
    assert_eq!(classes.labels, ["red", "green", "blue"]);
    assert_eq!(
        classes.pose_category().map(|p| (p.name, p.id)),
        Some(("person".to_string(), 1))
    );
    assert_eq!((classes.person, classes.joints), (Some(3), 17));
    for file in [
        "must.png",
        "labels/manifest.json",
        "labels/stats.json",
        "student/weights/last.safetensors",
        "student/config.toml",
    ] {
        assert!(root.join(file).is_file(), "{file}");
    }

    // The pseudo-labels against the unlabelled images' truth: the store kept no box below its
    // threshold (0.2), so the 0.1 and 0.2 rows agree; kept boxes, matches and recall fall as
    // the threshold rises.
    let truth = root.join("data/unlabeled_truth.json");
    let quality = ok(mustard(&[
        "data",
        "labels",
        s(&root.join("labels")),
        "--truth",
        s(&truth),
    ]));
    assert!(
        quality.starts_with("96 images\ndetection boxes: "),
        "{quality}"
    );
    let cut: Vec<Vec<f64>> = quality
        .lines()
        .skip_while(|l| !l.starts_with("detection boxes"))
        .skip(2)
        .take(9)
        .map(|l| {
            l.split_whitespace()
                .map(|v| v.parse().unwrap_or(f64::NAN))
                .collect()
        })
        .collect();
    assert_eq!(cut.len(), 9, "{quality}");
    assert_eq!(cut[0][1..4], cut[1][1..4], "{quality}");
    for pair in cut.windows(2) {
        assert!(
            pair[1][1] <= pair[0][1] && pair[1][2] <= pair[0][2],
            "{quality}"
        );
        assert!(pair[1][3] <= pair[0][3], "{quality}");
    }
    assert!(
        cut[1][2] > 0.0,
        "some pseudo-box matches a true box: {quality}"
    );
    for line in [
        "segmentation: mIoU ",
        "depth: δ<1.25 ",
        "classification: top-1 ",
    ] {
        assert!(quality.contains(line), "{line}: {quality}");
    }
    // A student on the same store over the truth file trains on the real labels; a file of
    // other images is refused.
    let student_config = root.join("student/config.toml");
    let store = root.join("labels");
    let upper = [
        "train",
        "--config",
        s(&student_config),
        "--runs",
        s(&runs),
        "--name",
        "student-truth",
        "--pseudo",
        s(&store),
        "--real-labels",
        "--max-steps",
        "2",
    ];
    let mut with_truth = upper.to_vec();
    with_truth.extend(["--data", s(&truth)]);
    ok(mustard(&with_truth));
    let test_file = root.join("data/test_detection.json");
    let mut with_other = upper.to_vec();
    with_other[6] = "student-other";
    with_other.extend(["--data", s(&test_file)]);
    let refused = mustard(&with_other);
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        text(&refused.stderr).contains(&format!(
            "the store labels a different image list than {} (32 images)",
            test_file.display()
        )),
        "{}",
        text(&refused.stderr)
    );

    // A rerun trains nothing, says so, and reproduces the table.
    let rerun = mustard(&args);
    let said = text(&rerun.stderr);
    let again = ok(rerun);
    for line in [
        "reusing the finished detection teacher",
        "reusing the finished classification teacher",
        "reusing the finished student",
        "reusing the finished transfer run (segmentation, student backbone + neck)",
    ] {
        assert!(said.contains(line), "{line}: {said}");
    }
    assert!(
        !said.contains("training the detection teacher on"),
        "{said}"
    );
    let report2 = std::fs::read_to_string(root.join("report.md")).unwrap();
    assert!(again.contains(&report2));
    assert_eq!(table(&report2), rows);
    for stage in [
        "teacher detection",
        "teacher depth",
        "student",
        "transfer-segmentation-scratch",
    ] {
        assert!(
            report2.contains(&format!("\n| {stage} | reused |")),
            "{stage}: {report2}"
        );
    }

    // A larger test split is written again; its scenes come after the training ones, so every
    // trained model is kept and only the evaluation is new.
    let mut larger = args.to_vec();
    let at = larger.iter().position(|a| *a == "--test-images").unwrap();
    larger[at + 1] = "48";
    let third = mustard(&larger);
    let said = text(&third.stderr);
    ok(third);
    let data = root.join("data");
    assert!(
        said.contains(&format!(
            "{} holds a test split of 32 images: writing the config's 48 (the training images and \
             every finished model stay as they are)",
            data.display()
        )),
        "{said}"
    );
    let test: serde_json::Value =
        serde_json::from_slice(&std::fs::read(data.join("test_detection.json")).unwrap()).unwrap();
    assert_eq!(test["images"].as_array().unwrap().len(), 48);
    let report3 = std::fs::read_to_string(root.join("report.md")).unwrap();
    for stage in ["teacher pose", "student", "transfer-segmentation-student"] {
        assert!(
            report3.contains(&format!("\n| {stage} | reused |")),
            "{stage}: {report3}"
        );
    }
    // Other training splits would change what the finished stages were trained on: refused.
    let at = larger.iter().position(|a| *a == "--per-task").unwrap();
    larger[at + 1] = "120";
    let refused = mustard(&larger);
    assert!(!refused.status.success());
    assert_eq!(
        text(&refused.stderr),
        format!(
            "error: must.data: {} holds splits of 128 labelled images per task, 96 unlabelled, \
             64 px, seed 0, and the config asks for 120, 96, 64 px, seed 0: finished teachers \
             and labels were made from those; delete {} to start over\n",
            data.display(),
            root.display()
        )
    );
    let _ = std::fs::remove_dir_all(&runs);
}

// The tiny budget of the pipeline test (calibrated so that every task learns in CI time).
const MUST_PER_TASK: &str = "128";
const MUST_UNLABELLED: &str = "96";
const MUST_TEACHER_EPOCHS: &str = "16";
const MUST_STUDENT_EPOCHS: &str = "20";
const MUST_BOX_THRESHOLD: &str = "0.2";
// The presets weight detection 4 in the student's loss (the 3-seed studies); at this budget
// (64 px, 20 epochs, 32 test images) weight 3 left the classification student at 0.44 against
// its teacher's 0.63 on the Intel Xeon (weight 2: 0.59), so the test keeps weight 2.
const MUST_DETECTION_WEIGHT: &str = "detection=2";

#[test]
fn must_on_user_data_explains_bad_arguments() {
    let out = mustard(&[
        "must",
        "--labelled",
        "detection",
        "--unlabelled",
        "u",
        "--test",
        "t.json",
    ]);
    assert!(!out.status.success());
    assert_eq!(
        text(&out.stderr),
        "error: --labelled \"detection\": expected TASK=PATH, e.g. detection=train.json\n"
    );
    // A student loss weight names its task and gives a number.
    for (weight, error) in [
        ("detection", "expected TASK=WEIGHT, e.g. detection=3"),
        ("detection=heavy", "expected TASK=WEIGHT, e.g. detection=3"),
        (
            "boxes=2",
            "unknown task \"boxes\": expected one of detection, pose, segmentation, depth, classification",
        ),
    ] {
        let out = mustard(&["must", "--student-loss-weight", weight]);
        assert!(!out.status.success());
        assert_eq!(
            text(&out.stderr),
            format!("error: --student-loss-weight {weight:?}: {error}\n")
        );
    }
    // A teacher is trained on a labelled set or given as a checkpoint, not both.
    let out = mustard(&[
        "must",
        "--labelled",
        "pose=p.json",
        "--teacher",
        "pose=runs/pose",
        "--unlabelled",
        "u",
        "--test",
        "t.json",
    ]);
    assert_eq!(
        text(&out.stderr),
        "error: --teacher pose=…: the pose teacher has a labelled set too; give --labelled or --teacher for a task, not both\n"
    );
    let out = mustard(&[
        "must",
        "--labelled",
        "depht=a.json",
        "--unlabelled",
        "u",
        "--test",
        "t.json",
    ]);
    assert_eq!(
        text(&out.stderr),
        "error: --labelled \"depht=a.json\": unknown task \"depht\": expected one of detection, pose, segmentation, depth, classification\n"
    );
    let dir = temp("user");
    let out = mustard(&[
        "must",
        "--runs",
        s(&dir),
        "--labelled",
        "depth=missing.json",
        "--unlabelled",
        "u",
        "--test",
        "missing-test.json",
    ]);
    assert!(!out.status.success());
    assert_eq!(
        text(&out.stderr),
        "error: must.data.labelled.depth: missing.json: No such file or directory (os error 2); \
         must.data.test.depth: missing-test.json: No such file or directory (os error 2)\n"
    );
    // Teachers may have different label spaces (detection of shapes, pose of people), but each
    // task's test set must be in its teacher's; what does not fit is refused before any
    // training, naming the files.
    std::fs::create_dir_all(&dir).unwrap();
    let file = |name: &str, categories: &str| {
        let path = dir.join(name);
        let json = format!(r#"{{"images": [], "annotations": [], "categories": [{categories}]}}"#);
        std::fs::write(&path, json).unwrap();
        path
    };
    let det = file(
        "det.json",
        r#"{"id": 1, "name": "square"}, {"id": 2, "name": "circle"}"#,
    );
    let pose = file(
        "pose.json",
        r#"{"id": 1, "name": "person", "keypoints": ["a", "b"], "skeleton": [[1, 2]]}"#,
    );
    let test = file("test.json", r#"{"id": 1, "name": "square"}"#);
    let cls = dir.join("cls.json");
    let out = mustard(&[
        "must",
        "--runs",
        s(&dir),
        "--labelled",
        &format!("detection={}", det.display()),
        "--labelled",
        &format!("pose={}", pose.display()),
        "--labelled",
        &format!("classification={}", cls.display()),
        "--unlabelled",
        "u",
        "--test",
        s(&test),
    ]);
    assert!(!out.status.success());
    assert_eq!(
        text(&out.stderr),
        format!(
            "error: must.data.labelled.detection: the detection teacher's {det} has categories \
             [square (1), circle (2)] but the detection test set {test} has categories [square (1)]; \
             a task's test set must use its teacher's label space; \
             must.data.labelled.pose: the pose teacher's {pose} has pose category person (1) with 2 \
             joints but the pose test set {test} has no category with keypoints; a task's test set \
             must use its teacher's label space; \
             must.data.labelled.classification: {cls}: No such file or directory (os error 2)\n",
            det = det.display(),
            test = test.display(),
            pose = pose.display(),
            cls = cls.display(),
        )
    );
    assert!(
        !dir.join("must/teacher-detection").exists(),
        "nothing was trained"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn must_uses_an_already_trained_teacher_after_checking_it_against_its_test_set() {
    let dir = temp("given");
    let data = dir.join("data");
    ok(mustard(&[
        "synth",
        "--out",
        s(&data),
        "--splits",
        "--per-task",
        "24",
        "--unlabeled",
        "16",
        "--test",
        "8",
        "--size",
        "64",
    ]));
    let file = |name: &str| data.join(name).display().to_string();
    // A depth teacher trained apart, handed to `must` as a checkpoint.
    let runs = dir.join("runs");
    ok(mustard(&[
        "train",
        "--runs",
        s(&runs),
        "--name",
        "depth",
        "--data",
        &file("train_depth.json"),
        "--tasks",
        "depth",
        "--no-val",
        "--input-size",
        "64",
        "--batch-size",
        "4",
        "--max-steps",
        "6",
    ]));
    let given = runs.join("depth");
    let must = |teacher: &str, extra: &[&str]| {
        let mut args = vec![
            "must".to_string(),
            "--runs".into(),
            s(&runs).into(),
            "--teacher".into(),
            teacher.into(),
            "--unlabelled".into(),
            file("unlabeled.json"),
            "--test".into(),
            format!("depth={}", file("test_depth.json")),
            "--transfer".into(),
            "none".into(),
            "--input-size".into(),
            "64".into(),
            "--batch-size".into(),
            "4".into(),
            "--teacher-epochs".into(),
            "1".into(),
            "--student-epochs".into(),
            "1".into(),
            "--shard-size".into(),
            "8".into(),
        ];
        args.extend(extra.iter().map(|a| a.to_string()));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        mustard(&refs)
    };

    // A checkpoint without the task's head is refused before anything is trained.
    let labelled = format!("classification={}", file("train_classification.json"));
    let test = format!("classification={}", file("test_classification.json"));
    let out = must(
        &format!("detection={}", given.display()),
        &[
            "--labelled",
            &labelled,
            "--test",
            &test,
            "--test",
            &format!("detection={}", file("test_detection.json")),
        ],
    );
    assert!(!out.status.success());
    assert_eq!(
        text(&out.stderr),
        format!(
            "error: must.data.teachers.detection: {} has no detection head (its tasks: depth)\n",
            given.display()
        )
    );
    assert!(!runs.join("must/teacher-classification").exists());

    let stdout = ok(must(
        &format!("depth={}", given.display()),
        &["--labelled", &labelled, "--test", &test],
    ));
    let root = runs.join("must");
    assert!(
        !root.join("teacher-depth").exists(),
        "the given teacher is not retrained"
    );
    assert!(root.join("teacher-classification/done").is_file());
    let rows = table(&std::fs::read_to_string(root.join("report.md")).unwrap());
    assert_eq!(
        rows.iter().map(|r| r.0.as_str()).collect::<Vec<_>>(),
        ["classification", "depth"],
        "{stdout}"
    );
    // No labelled set for the given teacher, so no constant prediction to fit on it.
    assert!(rows[0].4.is_some() && rows[1].4.is_none(), "{rows:?}");
    // The given teacher's number is the one `mustard eval` gives for it on the same file.
    let scores = dir.join("depth.json");
    ok(mustard(&[
        "eval",
        "--checkpoint",
        s(&given),
        "--data",
        &file("test_depth.json"),
        "--out",
        s(&scores),
    ]));
    let eval: serde_json::Value = serde_json::from_slice(&std::fs::read(&scores).unwrap()).unwrap();
    let results: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root.join("results.json")).unwrap()).unwrap();
    let depth = &results["seeds"][0]["tasks"][1];
    assert_eq!(depth["task"], "depth");
    assert_eq!(depth["teacher"], eval["depth"]["delta1"], "{results}");

    // A given teacher whose label space differs from its task's test set is named.
    let teacher = root.join("teacher-classification");
    let out = must(
        &format!("classification={}", teacher.display()),
        &[
            "--test",
            &format!("classification={}", file("test_depth.json")),
        ],
    );
    assert!(!out.status.success());
    assert_eq!(
        text(&out.stderr),
        format!(
            "error: must.data.teachers.classification: the classification teacher {} has image \
             classes [red, green, blue] but the classification test set {} has image classes []; \
             a task's test set must use its teacher's label space\n",
            teacher.display(),
            file("test_depth.json")
        )
    );
    let _ = std::fs::remove_dir_all(&dir);
}
