//! Data-parallel training with real processes under `mpirun` (Open MPI; oversubscribed on a
//! small machine): the same run whatever the number of processes, one writer, faults.
//!
//! Skipped with a message when `mpirun` is not installed, unless `MUSTARD_REQUIRE_MPI=1` (CI).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

mod common;
use common::{mustard, s, temp, text};

/// Whether `mpirun` can run here; panics when it cannot and CI requires it.
fn have_mpirun() -> bool {
    let found = Command::new("mpirun")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(
            std::env::var("MUSTARD_REQUIRE_MPI").as_deref() != Ok("1"),
            "MUSTARD_REQUIRE_MPI=1 but mpirun is not installed"
        );
        eprintln!("skipped: mpirun is not installed (apt-get install openmpi-bin)");
    }
    found
}

/// `mpirun -n n mustard args…`: oversubscribed, not bound to cores, one thread per process.
fn mpirun_command(n: usize, args: &[&str]) -> Command {
    let mut c = Command::new("mpirun");
    c.args(["--oversubscribe", "--bind-to", "none", "-n", &n.to_string()])
        .arg(env!("CARGO_BIN_EXE_mustard"))
        .args(args)
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .env("RAYON_NUM_THREADS", "1");
    c
}

fn mpirun(n: usize, args: &[&str]) -> Output {
    mpirun_command(n, args).output().expect("mpirun runs")
}

/// A synthetic dataset of `n` images at 64 px with every task's labels.
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
        "5",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    dir.join("instances.json")
}

/// The model's tensors of a checkpoint (no optimiser state, no loop position), as f64.
fn weights(path: &Path) -> BTreeMap<String, Vec<f64>> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .filter(|(k, _)| !k.starts_with("optimizer.") && !k.starts_with("state."))
        .map(|(k, v)| {
            let data = v.data();
            let values: Vec<f64> = match v.dtype() {
                safetensors::Dtype::F64 => data
                    .chunks(8)
                    .map(|b| f64::from_le_bytes(b.try_into().unwrap()))
                    .collect(),
                safetensors::Dtype::F32 => data
                    .chunks(4)
                    .map(|b| f32::from_le_bytes(b.try_into().unwrap()) as f64)
                    .collect(),
                other => panic!("{k}: {other:?}"),
            };
            (k, values)
        })
        .collect()
}

/// The largest difference between two checkpoints' tensors, relative to each tensor's largest
/// value, and the tensor where it is.
fn difference(a: &Path, b: &Path) -> (f64, String) {
    difference_except(a, b, |_| false)
}

/// [`difference`] over the tensors `skip` does not name.
fn difference_except(a: &Path, b: &Path, skip: impl Fn(&str) -> bool) -> (f64, String) {
    let (mut a, mut b) = (weights(a), weights(b));
    a.retain(|k, _| !skip(k));
    b.retain(|k, _| !skip(k));
    assert_eq!(
        a.keys().collect::<Vec<_>>(),
        b.keys().collect::<Vec<_>>(),
        "the same tensors"
    );
    let mut worst = (0.0, String::new());
    for (k, x) in &a {
        let y = &b[k];
        let scale = x.iter().fold(1e-12f64, |m, v| m.max(v.abs()));
        let d = x.iter().zip(y).fold(0f64, |m, (p, q)| m.max((p - q).abs())) / scale;
        if d > worst.0 {
            worst = (d, k.clone());
        }
    }
    worst
}

/// `train` arguments of a five-task run named `name` in f64.
fn train_args<'a>(
    runs: &'a Path,
    json: &'a Path,
    name: &'a str,
    extra: &[&'a str],
) -> Vec<&'a str> {
    let mut args = vec![
        "train",
        "--runs",
        s(runs),
        "--name",
        name,
        "--data",
        s(json),
        "--tasks",
        "detection,pose,segmentation,depth,classification",
        "--no-val",
        "--input-size",
        "64",
        "--batch-size",
        "8",
        "--max-steps",
        "3",
        "--precision",
        "f64",
        "--workers",
        "1",
    ];
    args.extend_from_slice(extra);
    args
}

fn last(runs: &Path, name: &str) -> PathBuf {
    runs.join(name).join("weights/last.safetensors")
}

/// The files of a run folder, relative, sorted.
fn files(dir: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                out.push(p.strip_prefix(root).unwrap().display().to_string());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

#[test]
fn two_and_three_processes_train_the_model_of_one() {
    if !have_mpirun() {
        return;
    }
    let dir = temp("dp-same");
    let json = dataset(&dir.join("data"), 16);
    let runs = dir.join("runs");
    let out = mustard(&train_args(&runs, &json, "one", &[]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let one_stdout = text(&out.stdout);
    for n in [2, 3] {
        let name = format!("n{n}");
        let out = mpirun(n, &train_args(&runs, &json, &name, &[]));
        assert!(out.status.success(), "{n} processes: {}", text(&out.stderr));
        // One report, from rank 0.
        let stdout = text(&out.stdout);
        assert_eq!(stdout.matches("trained 3 steps in ").count(), 1, "{stdout}");
        // The summary of one process, then what the all-reduces carried.
        let (summary, traffic) = stdout.split_once('\n').unwrap();
        assert_eq!(
            summary.split_once(" s (").unwrap().1,
            one_stdout
                .trim_end()
                .split_once(" s (")
                .unwrap()
                .1
                .replace("one", &name),
        );
        assert!(
            traffic.starts_with(&format!("{n} processes; all-reduces of rank 0: "))
                && traffic.ends_with(" ms a step)\n"),
            "{traffic}"
        );
        let (d, at) = difference(&last(&runs, "one"), &last(&runs, &name));
        assert!(d <= 1e-10, "{n} processes: {d:e} relative at {at}");
        // Rank 0 alone wrote: the same files as the run of one process.
        assert_eq!(files(&runs.join(&name)), files(&runs.join("one")));
    }
    // Per-process BatchNorm normalises each share by itself: another model (the documented
    // difference)…
    let out = mpirun(
        2,
        &train_args(&runs, &json, "per-process", &["--per-process-batch-norm"]),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let (d, _) = difference(&last(&runs, "one"), &last(&runs, "per-process"));
    assert!(d > 1e-6, "per-process BatchNorm changes the run: {d:e}");
    let config = std::fs::read_to_string(runs.join("per-process/config.toml")).unwrap();
    assert!(config.contains("sync_batch_norm = false"), "{config}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn per_process_batch_norm_differs_by_its_statistics_and_nothing_else() {
    if !have_mpirun() {
        return;
    }
    // Every image the same and no augmentation: each share's statistics are the batch's, so
    // per-process BatchNorm gives the model of one process.
    let dir = temp("dp-same-images");
    let data = dir.join("data");
    let json = dataset(&data, 8);
    let mut file: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let first = file["images"][0].clone();
    let anns: Vec<serde_json::Value> = file["annotations"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["image_id"] == first["id"])
        .cloned()
        .collect();
    let mut images = Vec::new();
    let mut annotations = Vec::new();
    for i in 0..8u64 {
        let mut im = first.clone();
        im["id"] = (i + 1).into();
        images.push(im);
        for (k, a) in anns.iter().enumerate() {
            let mut a = a.clone();
            a["id"] = (i * 100 + k as u64 + 1).into();
            a["image_id"] = (i + 1).into();
            annotations.push(a);
        }
    }
    file["images"] = images.into();
    file["annotations"] = annotations.into();
    let same = data.join("same.json");
    std::fs::write(&same, serde_json::to_vec(&file).unwrap()).unwrap();
    // The config of a run without augmentation.
    let runs = dir.join("runs");
    let out = mustard(&train_args(&runs, &same, "probe", &[]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let config = std::fs::read_to_string(runs.join("probe/config.toml"))
        .unwrap()
        .replace("augment = true", "augment = false");
    assert!(config.contains("augment = false"), "{config}");
    let config_path = dir.join("no-augment.toml");
    std::fs::write(&config_path, config).unwrap();
    let args = |name: &'static str, extra: &[&'static str]| -> Vec<String> {
        let mut a: Vec<String> = [
            "train",
            "--config",
            s(&config_path),
            "--runs",
            s(&runs),
            "--name",
            name,
        ]
        .iter()
        .map(|v| v.to_string())
        .collect();
        a.extend(extra.iter().map(|v| v.to_string()));
        a
    };
    let refs = |a: &[String]| a.iter().map(String::as_str).collect::<Vec<_>>().join(" ");
    let one = args("one", &[]);
    let out = mustard(&one.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(
        out.status.success(),
        "{}: {}",
        refs(&one),
        text(&out.stderr)
    );
    let two = args("two", &["--per-process-batch-norm"]);
    let out = mpirun(2, &two.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(out.status.success(), "{}", text(&out.stderr));
    // Everything but the running variances, which each process unbiases with its own count
    // (n/(n−1) of its share), as PyTorch's DDP without SyncBatchNorm does.
    let running_var = |k: &str| k.ends_with(".running_var");
    let (d, at) = difference_except(&last(&runs, "one"), &last(&runs, "two"), running_var);
    assert!(d <= 1e-10, "{d:e} relative at {at}");
    let (d, at) = difference(&last(&runs, "one"), &last(&runs, "two"));
    assert!(d > 1e-3 && at.ends_with(".running_var"), "{d:e} at {at}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Owned arguments as `&str`s.
fn refs(a: &[String]) -> Vec<&str> {
    a.iter().map(String::as_str).collect()
}

/// The step of a checkpoint (`state.step`), None while it cannot be read.
fn step_of(path: &Path) -> Option<i64> {
    let bytes = std::fs::read(path).ok()?;
    let st = safetensors::SafeTensors::deserialize(&bytes).ok()?;
    let t = st.tensor("state.step").ok()?;
    Some(i64::from_le_bytes(t.data().try_into().ok()?))
}

/// The processes `mpirun` (pid `parent`) started: pid by rank.
fn ranks_of(parent: u32) -> BTreeMap<usize, u32> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // `pid (comm) state ppid …`: the parent after the command's closing parenthesis.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid != Some(parent) {
            continue;
        }
        let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        for var in env.split(|&b| b == 0) {
            if let Some(rank) = var.strip_prefix(b"OMPI_COMM_WORLD_RANK=") {
                let rank: usize = String::from_utf8_lossy(rank).parse().unwrap();
                out.insert(rank, pid);
            }
        }
    }
    out
}

#[test]
fn a_killed_process_ends_every_process_and_the_same_command_finishes_the_run() {
    if !have_mpirun() {
        return;
    }
    let dir = temp("dp-kill");
    let json = dataset(&dir.join("data"), 16);
    let runs = dir.join("runs");
    let args = |name: &'static str| {
        let mut a = train_args(&runs, &json, name, &["--checkpoint-every", "1"]);
        let at = a.iter().position(|a| *a == "--max-steps").unwrap();
        a[at + 1] = "12";
        let at = a.iter().position(|a| *a == "--batch-size").unwrap();
        a[at + 1] = "4";
        a.iter().map(|s| s.to_string()).collect::<Vec<_>>()
    };
    let straight = args("straight");
    let out = mpirun(2, &refs(&straight));
    assert!(out.status.success(), "{}", text(&out.stderr));

    // Rank 1 killed with SIGKILL once a mid-epoch checkpoint is written (4 batches an epoch).
    let killed = args("killed");
    let mut child = mpirun_command(2, &refs(&killed))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let checkpoint = last(&runs, "killed");
    let started = std::time::Instant::now();
    while step_of(&checkpoint).is_none_or(|s| s < 2) {
        assert!(started.elapsed().as_secs() < 120, "no checkpoint at step 2");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let ranks = ranks_of(child.id());
    assert_eq!(ranks.len(), 2, "{ranks:?}");
    let killed_at = std::time::Instant::now();
    assert!(Command::new("kill")
        .args(["-9", &ranks[&1].to_string()])
        .status()
        .unwrap()
        .success());
    let status = child.wait().unwrap();
    let ended = killed_at.elapsed();
    assert!(!status.success(), "{status:?}");
    assert!(ended.as_secs() < 10, "every process ended after {ended:?}");
    // Rank 0 no longer runs (gone, or a zombie waiting to be reaped).
    let state = std::fs::read_to_string(format!("/proc/{}/stat", ranks[&0]))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, r)| r.trim_start().chars().next())
        })
        .flatten();
    assert!(
        matches!(state, None | Some('Z') | Some('X')),
        "rank 0 still runs: {state:?}"
    );
    let stopped = step_of(&checkpoint).unwrap();
    assert!(stopped < 12, "killed before the end: step {stopped}");
    // No temporary file left beside the checkpoint.
    assert_eq!(
        files(&runs.join("killed").join("weights")),
        ["last.safetensors"]
    );
    // The same command again resumes and ends with the weights of the uninterrupted run.
    let out = mpirun(2, &refs(&killed));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains(&format!(
            "{} holds this run at step ",
            runs.join("killed").display()
        )),
        "{}",
        text(&out.stderr)
    );
    let (d, at) = difference(&last(&runs, "straight"), &checkpoint);
    assert_eq!(d, 0.0, "{at} differs after kill and resume");

    // Stopped under 2 processes, resumed under 3: the same run, up to the order of sums.
    let moved = args("moved");
    let mut child = mpirun_command(2, &refs(&moved))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let checkpoint = last(&runs, "moved");
    while step_of(&checkpoint).is_none_or(|s| s < 3) {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    for pid in ranks_of(child.id()).values() {
        let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
    }
    let _ = child.wait();
    let out = mpirun(3, &refs(&moved));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let (d, at) = difference(&last(&runs, "straight"), &checkpoint);
    assert!(d <= 1e-10, "{d:e} relative at {at}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn evaluation_under_two_processes_prints_the_numbers_of_one() {
    if !have_mpirun() {
        return;
    }
    let dir = temp("dp-eval");
    // 20 images in batches of 8: three batches, split 2 + 1 over two processes and one each
    // over three (the last one short).
    let json = dataset(&dir.join("data"), 20);
    let runs = dir.join("runs");
    let mut args = train_args(&runs, &json, "m", &[]);
    let at = args.iter().position(|a| *a == "--precision").unwrap();
    args.drain(at..at + 2);
    let out = mustard(&args);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let model = runs.join("m");
    for resolution in [None, Some("--network-resolution")] {
        let eval = |report: &Path| {
            let mut a = vec![
                "eval".to_string(),
                "--checkpoint".into(),
                s(&model).into(),
                "--data".into(),
                s(&json).into(),
                "--no-plots".into(),
                "--out".into(),
                s(report).into(),
            ];
            a.extend(resolution.map(String::from));
            a
        };
        let one_json = dir.join("one.json");
        let one = mustard(
            &eval(&one_json)
                .iter()
                .map(|a| a.as_str())
                .collect::<Vec<_>>(),
        );
        assert!(one.status.success(), "{}", text(&one.stderr));
        assert!(
            text(&one.stdout).contains("detection (COCO box AP"),
            "{}",
            text(&one.stdout)
        );
        assert!(
            text(&one.stdout).starts_with("20 images"),
            "{}",
            text(&one.stdout)
        );
        for n in [2, 3] {
            let n_json = dir.join(format!("{n}.json"));
            let args = eval(&n_json);
            let many = mpirun(n, &args.iter().map(|a| a.as_str()).collect::<Vec<_>>());
            assert!(many.status.success(), "{}", text(&many.stderr));
            assert_eq!(
                text(&many.stdout),
                text(&one.stdout),
                "{n} processes, {resolution:?}"
            );
            assert_eq!(
                std::fs::read(&n_json).unwrap(),
                std::fs::read(&one_json).unwrap(),
                "the report of {n} processes, {resolution:?}"
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Every file of a folder with its bytes, by relative path.
fn contents(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    files(dir)
        .into_iter()
        .map(|f| {
            let bytes = std::fs::read(dir.join(&f)).unwrap();
            (f, bytes)
        })
        .collect()
}

#[test]
fn two_processes_pseudo_label_one_store_the_same_as_one() {
    if !have_mpirun() {
        return;
    }
    let dir = temp("dp-store");
    let json = dataset(&dir.join("data"), 12);
    let runs = dir.join("runs");
    let mut args = train_args(&runs, &json, "teacher", &[]);
    let at = args.iter().position(|a| *a == "--precision").unwrap();
    args.drain(at..at + 2);
    let out = mustard(&args);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let pseudo = |out: &Path| {
        vec![
            "pseudo-label".to_string(),
            "--teacher".into(),
            s(&runs.join("teacher")).into(),
            "--images".into(),
            s(&dir.join("data/images")).into(),
            "--out".into(),
            s(out).into(),
            "--shard-size".into(),
            "2".into(),
            "--batch-size".into(),
            "2".into(),
        ]
    };
    let one = dir.join("one");
    let out = mustard(&refs(&pseudo(&one)));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let two = dir.join("two");
    let out = mpirun(2, &refs(&pseudo(&two)));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert_eq!(stdout.matches("is complete:").count(), 1, "{stdout}");
    assert_eq!(contents(&two), contents(&one));
    // An explicit --shard with a launcher's processes is refused.
    let mut both = pseudo(&dir.join("three"));
    both.extend(["--shard".into(), "0/2".into()]);
    let out = mpirun(2, &refs(&both));
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains(
            "--shard 0/2 with 2 processes: the processes of a launcher split the shards by themselves; give one or the other"
        ),
        "{}",
        text(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The tables of a `must` report, without the timings.
fn must_tables(report: &Path) -> String {
    let text = std::fs::read_to_string(report).unwrap();
    let without_timings = text.split("\n## Timings\n").next().unwrap();
    without_timings
        .lines()
        .filter(|l| l.starts_with('|'))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn must_under_two_processes_reports_the_numbers_of_one() {
    if !have_mpirun() {
        return;
    }
    let dir = temp("dp-must");
    let args = |runs: &Path| -> Vec<String> {
        [
            "must",
            "--runs",
            s(runs),
            "--per-task",
            "16",
            "--unlabelled-images",
            "16",
            "--test-images",
            "16",
            "--size",
            "64",
            "--input-size",
            "64",
            "--batch-size",
            "8",
            "--teacher-epochs",
            "2",
            "--student-epochs",
            "2",
            "--transfer-images",
            "8",
            "--transfer-epochs",
            "1",
            "--shard-size",
            "8",
            "--precision",
            "f64",
            "--workers",
            "1",
        ]
        .map(String::from)
        .to_vec()
    };
    let (one, two) = (dir.join("one"), dir.join("two"));
    let out = mustard(&refs(&args(&one)));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = mpirun(2, &refs(&args(&two)));
    assert!(out.status.success(), "{}", text(&out.stderr));
    // Every teacher, the labels, the student and the transfer runs trained on two processes
    // (in f64: the same weights up to the order of sums); the test sets split over them.
    let (a, b) = (
        must_tables(&one.join("must/report.md")),
        must_tables(&two.join("must/report.md")),
    );
    assert!(a.contains("| detection | box AP |"), "{a}");
    assert_eq!(b, a);
    // Rank 0 alone wrote: the same files.
    assert_eq!(files(&two.join("must")), files(&one.join("must")));
    let _ = std::fs::remove_dir_all(&dir);
}
