//! Project automation: `cargo xtask ci | deps | fixtures | bench | onnx-check | cuda-build`.

#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

mod cuda;
mod mpi_bundle;

const USAGE: &str = "usage: cargo xtask <command>

commands:
  ci         fmt --check, clippy -D warnings, dependency direction, `cuda-build --check`,
             tests, the CUDA kernels emulated on the CPU among them, and with MPI installed
             the `distributed` feature's lint and tests under `mpirun` (the CI gate)
  deps       check only the dependency direction between our crates
  fixtures   regenerate the golden fixtures with PyTorch/pycocotools in a virtual environment
  bench      run the criterion benchmarks, then the comparisons with PyTorch and pycocotools
             (`cargo xtask bench --help` for the options)
  onnx-check --checkpoint RUN [export options…]
             export RUN to ONNX with 20 reference images, then check the file with the ONNX
             checker and ONNX Runtime from PyPI (in $MUSTARD_VENV or ~/.cache/mustard/venv)
  cuda-build [--check] [--compute-cap N] [--toolkit DIR]
             build with --features cuda without a GPU or CUDA install (nvcc from PyPI) and
             bundle the binaries and bench/gpu_check.sh into target/gpu-check";

/// For each crate, the crates of ours it may depend on, directly or not. Everything else is a
/// layering violation: heads never depend on backbone, data never on heads, eval on nothing
/// (data uses eval's pycocotools-equal RLE code, so that there is one implementation).
const ALLOWED: &[(&str, &[&str])] = &[
    ("mustard-core", &[]),
    ("mustard-eval", &[]),
    ("mustard-backbone", &["mustard-core"]),
    ("mustard-heads", &["mustard-core"]),
    ("mustard-data", &["mustard-core", "mustard-eval"]),
    (
        "mustard-pseudo",
        &[
            "mustard-core",
            "mustard-heads",
            "mustard-data",
            "mustard-eval",
        ],
    ),
    (
        "mustard",
        &[
            "mustard-core",
            "mustard-backbone",
            "mustard-heads",
            "mustard-data",
            "mustard-eval",
            "mustard-pseudo",
        ],
    ),
    (
        "mustard-cli",
        &[
            "mustard",
            "mustard-core",
            "mustard-backbone",
            "mustard-heads",
            "mustard-data",
            "mustard-eval",
            "mustard-pseudo",
        ],
    ),
];

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("ci") => ci(),
        Some("deps") => deps(),
        Some("fixtures") => fixtures(),
        Some("bench") => bench(&args[1..]),
        Some("onnx-check") => onnx_check(&args[1..]),
        Some("cuda-build") => cuda::cuda_build(&args[1..]),
        _ => {
            eprintln!("{USAGE}");
            bail!("unknown or missing command")
        }
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

fn run(program: &str, args: &[&str]) -> Result<()> {
    eprintln!("$ {program} {}", args.join(" "));
    let status = Command::new(program)
        .args(args)
        .current_dir(root())
        .status()
        .with_context(|| format!("could not start {program}"))?;
    if !status.success() {
        bail!("`{program} {}` failed ({status})", args.join(" "));
    }
    Ok(())
}

fn ci() -> Result<()> {
    run("cargo", &["fmt", "--all", "--check"])?;
    run(
        "cargo",
        &[
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ],
    )?;
    deps()?;
    cuda::cuda_build(&["--check".to_string()])?;
    // The CUDA check above needs a host C++ compiler (nvcc preprocesses with it), so the tests
    // that run the CUDA kernels' source through it must not skip here.
    std::env::set_var("MUSTARD_REQUIRE_EMULATION", "1");
    run("cargo", &["test", "--workspace"])?;
    distributed()?;
    eprintln!("ci: all checks passed");
    Ok(())
}

/// The `distributed` feature (MPI through rsmpi): linted, and its tests run with real
/// processes under `mpirun`, when the system's MPI is installed (`.ci/run` installs Open MPI
/// and sets `MUSTARD_REQUIRE_MPI=1`, which makes a missing MPI an error instead of a skip).
/// The feature is added to the workspace's feature set, so that only our crates rebuild.
fn distributed() -> Result<()> {
    let required = std::env::var("MUSTARD_REQUIRE_MPI").as_deref() == Ok("1");
    if !has_mpi() {
        if required {
            bail!("MUSTARD_REQUIRE_MPI=1 but mpicc is not installed (apt-get install openmpi-bin libopenmpi-dev libclang-dev)");
        }
        eprintln!("ci: skipping the `distributed` feature: no MPI here (apt-get install openmpi-bin libopenmpi-dev libclang-dev)");
        return Ok(());
    }
    let feature = ["--features", "mustard-cli/distributed"];
    run(
        "cargo",
        &[
            &["clippy", "--workspace", "--all-targets"][..],
            &feature,
            &["--", "-D", "warnings"],
        ]
        .concat(),
    )?;
    run(
        "cargo",
        &[
            &["test", "--workspace"][..],
            &feature,
            &["--test", "distributed"],
        ]
        .concat(),
    )
}

/// Whether an MPI compiler wrapper (`mpicc`, which rsmpi's build uses) runs here.
fn has_mpi() -> bool {
    Command::new("mpicc")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Our crates that `krate` depends on through normal dependencies, at any depth.
fn our_dependencies(krate: &str) -> Result<Vec<String>> {
    let out = Command::new("cargo")
        .args([
            "tree", "-p", krate, "-e", "normal", "--prefix", "none", "--format", "{p}",
        ])
        .current_dir(root())
        .output()
        .context("could not run cargo tree")?;
    if !out.status.success() {
        bail!(
            "cargo tree -p {krate} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut found: Vec<String> = String::from_utf8(out.stdout)?
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| (name.starts_with("mustard-") || *name == "mustard") && *name != krate)
        .map(str::to_string)
        .collect();
    found.sort();
    found.dedup();
    Ok(found)
}

fn deps() -> Result<()> {
    let mut violations = Vec::new();
    for (krate, allowed) in ALLOWED {
        for dep in our_dependencies(krate)? {
            if !allowed.contains(&dep.as_str()) {
                violations.push(format!("{krate} depends on {dep}"));
            }
        }
    }
    if !violations.is_empty() {
        bail!(
            "dependency direction violated:\n  {}",
            violations.join("\n  ")
        );
    }
    eprintln!(
        "deps: dependency direction holds for {} crates",
        ALLOWED.len()
    );
    Ok(())
}

/// The Python used for fixtures: `$MUSTARD_VENV` or `~/.cache/mustard/venv`, created on demand.
fn venv() -> Result<PathBuf> {
    venv_with(&["torch", "timm", "safetensors", "numpy", "pycocotools"])
}

/// The virtual environment's Python (created when missing) with `packages` installed.
fn venv_with(packages: &[&str]) -> Result<PathBuf> {
    let (dir, python) = venv_python()?;
    if !python.exists() {
        let dir = dir.to_str().context("venv path is not UTF-8")?;
        run("python3", &["-m", "venv", dir])?;
    }
    let py = python.to_str().context("venv path is not UTF-8")?;
    let mut args = vec!["-m", "pip", "install", "--quiet"];
    args.extend(packages);
    run(py, &args)?;
    Ok(python)
}

fn fixtures() -> Result<()> {
    let python = venv()?;
    let py = python.to_str().context("venv path is not UTF-8")?;
    let dir = root().join("xtask/fixtures");
    let mut scripts: Vec<PathBuf> = std::fs::read_dir(&dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "py"))
        .collect();
    scripts.sort();
    for script in scripts {
        run(py, &[script.to_str().context("script path is not UTF-8")?])?;
    }
    Ok(())
}

/// `mustard export` of a run with reference outputs, then `bench/onnx_check.py` with ONNX
/// Runtime from PyPI (installed into the virtual environment when missing).
fn onnx_check(args: &[String]) -> Result<()> {
    let Some(at) = args.iter().position(|a| a == "--checkpoint") else {
        bail!("usage: cargo xtask onnx-check --checkpoint RUN [--input-size N] [--dynamic-batch] [--opset K]");
    };
    args.get(at + 1)
        .context("--checkpoint needs a run folder or file")?;
    let out = std::env::temp_dir().join(format!("mustard-onnx-check-{}.onnx", std::process::id()));
    let out_arg = out.to_str().context("temporary path is not UTF-8")?;
    let mut export: Vec<&str> = vec!["run", "--release", "-p", "mustard-cli", "--", "export"];
    export.extend(args.iter().map(String::as_str));
    export.extend(["--out", out_arg, "--reference", "20"]);
    run("cargo", &export)?;
    let (_, mut python) = venv_python()?;
    if !python_has(&python, "onnxruntime") || !python_has(&python, "onnx") {
        python = venv_with(&["onnx", "onnxruntime", "numpy"])?;
    }
    let py = python.to_str().context("venv path is not UTF-8")?;
    let reference = out.with_extension("reference.safetensors");
    let result = run(
        py,
        &[
            "bench/onnx_check.py",
            out_arg,
            reference.to_str().context("temporary path is not UTF-8")?,
        ],
    );
    let _ = std::fs::remove_file(&out);
    let _ = std::fs::remove_file(&reference);
    result
}

/// The Python of `$MUSTARD_VENV` or `~/.cache/mustard/venv` (which may not exist).
fn venv_python() -> Result<(PathBuf, PathBuf)> {
    let dir = match std::env::var_os("MUSTARD_VENV") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(std::env::var_os("HOME").context("HOME is not set")?)
            .join(".cache/mustard/venv"),
    };
    let python = dir.join("bin/python");
    Ok((dir, python))
}

/// Whether `python` exists and can import `module`.
fn python_has(python: &Path, module: &str) -> bool {
    python.exists()
        && Command::new(python)
            .args(["-c", &format!("import {module}")])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
}

/// Which side-by-side comparisons `bench` runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Compare {
    All,
    Mcn,
    Eval,
    Onnx,
}

/// The options of `cargo xtask bench`; anything else goes to `cargo bench`.
#[derive(Debug)]
struct BenchArgs {
    compare_only: bool,
    compare: Compare,
    threads: usize,
    /// Set by `--rounds`; the evaluation comparison's default is 5 runs.
    rounds: Option<usize>,
    forward_iterations: usize,
    train_iterations: usize,
    criterion: Vec<String>,
}

const BENCH_USAGE: &str =
    "usage: cargo xtask bench [--compare-only] [--compare all|mcn|eval|onnx] [--threads N] [--rounds R]
                         [--forward-iterations K] [--train-iterations K] [cargo bench args…]

  --compare-only          skip the criterion benches, run only the comparisons with Python
  --compare WHICH         mcn: the MCN network against PyTorch eager; eval: COCO evaluation
                          against hotcoco, ultrafast-pycocotools, faster-coco-eval and
                          pycocotools (bench/eval_compare.py); onnx: mustard's forward against ONNX Runtime on
                          the exported network (full preset, 512 px); all (default)
  --threads N             threads of both sides of the MCN comparison, and of the evaluation
                          comparison besides 1 (default: all cores)
  --rounds R              alternating mustard/PyTorch runs of each MCN case (default 2), runs
                          of each fast evaluator per set and thread count (default 5)
  --forward-iterations K  timed forward passes per run, after one warm-up (default 5)
  --train-iterations K    timed training steps per run, after one warm-up (default 3)";

impl BenchArgs {
    /// Alternating runs of each MCN and ONNX case.
    fn mcn_rounds(&self) -> usize {
        self.rounds.unwrap_or(2)
    }
}

fn parse_bench_args(extra: &[String]) -> Result<BenchArgs> {
    let mut args = BenchArgs {
        compare_only: false,
        compare: Compare::All,
        threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        rounds: None,
        forward_iterations: 5,
        train_iterations: 3,
        criterion: Vec::new(),
    };
    let mut it = extra.iter();
    while let Some(a) = it.next() {
        let mut number = |name: &str| -> Result<usize> {
            let v = it
                .next()
                .with_context(|| format!("{name} needs a value\n{BENCH_USAGE}"))?;
            match v.parse::<usize>() {
                Ok(n) if n > 0 => Ok(n),
                _ => bail!("{name} {v}: expected a positive integer\n{BENCH_USAGE}"),
            }
        };
        match a.as_str() {
            "--compare-only" => args.compare_only = true,
            "--compare" => {
                args.compare = match it.next().map(String::as_str) {
                    Some("all") => Compare::All,
                    Some("mcn") => Compare::Mcn,
                    Some("eval") => Compare::Eval,
                    Some("onnx") => Compare::Onnx,
                    other => {
                        bail!("--compare {other:?}: expected all, mcn, eval or onnx\n{BENCH_USAGE}")
                    }
                }
            }
            "--threads" => args.threads = number(a)?,
            "--rounds" => args.rounds = Some(number(a)?),
            "--forward-iterations" => args.forward_iterations = number(a)?,
            "--train-iterations" => args.train_iterations = number(a)?,
            "-h" | "--help" => {
                eprintln!("{BENCH_USAGE}");
                std::process::exit(0);
            }
            _ => args.criterion.push(a.clone()),
        }
    }
    if args.compare_only && !args.criterion.is_empty() {
        bail!(
            "--compare-only runs no criterion benches; unexpected {:?}\n{BENCH_USAGE}",
            args.criterion
        );
    }
    Ok(args)
}

/// The criterion benches (unless `--compare-only`), then the side-by-side comparisons with
/// Python when a virtual environment has it (`$MUSTARD_VENV` or `~/.cache/mustard/venv`): the
/// MCN network against PyTorch eager (needs torch) and the COCO evaluation against pycocotools.
fn bench(extra: &[String]) -> Result<()> {
    let args = parse_bench_args(extra)?;
    if !args.compare_only {
        let mut cargo = vec!["bench", "--workspace"];
        cargo.extend(args.criterion.iter().map(String::as_str));
        run("cargo", &cargo)?;
    }
    let (dir, python) = venv_python()?;
    if matches!(args.compare, Compare::All | Compare::Mcn) {
        if python_has(&python, "torch") {
            mcn_compare(&python, &args)?;
        } else {
            eprintln!(
                "bench: no Python with torch at {} (`cargo xtask fixtures` creates it, or point \
                 $MUSTARD_VENV at a virtual environment with torch); skipping the MCN comparison",
                dir.display()
            );
        }
    }
    if matches!(args.compare, Compare::All | Compare::Onnx) {
        if python_has(&python, "onnxruntime") {
            onnx_compare(&python, &args)?;
        } else {
            eprintln!(
                "bench: no Python with onnxruntime at {} (`cargo xtask onnx-check` installs it); \
                 skipping the ONNX Runtime comparison",
                dir.display()
            );
        }
    }
    if matches!(args.compare, Compare::All | Compare::Eval) {
        if python_has(&python, "pycocotools") {
            eval_compare(&python, &args)?;
        } else {
            eprintln!(
                "bench: no Python with pycocotools at {} (`cargo xtask fixtures` creates it); \
                 skipping the COCO evaluation comparison",
                dir.display()
            );
        }
    }
    Ok(())
}

/// mustard's forward pass against ONNX Runtime on the same network and weights: the full
/// preset's model (one training step on synthetic images, so that the weights are not the
/// initial ones) exported at 512 px, then `--rounds` alternating runs of `mustard bench` and
/// `bench/onnx_speed.py` at `--threads` threads.
fn onnx_compare(python: &Path, args: &BenchArgs) -> Result<()> {
    let dir = std::env::temp_dir().join("mustard-onnx-speed");
    let runs = dir.to_str().context("temp path is not UTF-8")?;
    let model = dir.join("full512.onnx");
    let model = model.to_str().context("temp path is not UTF-8")?;
    let run_dir = dir.join("full");
    let run_dir = run_dir.to_str().context("temp path is not UTF-8")?;
    let mustard = ["run", "--release", "-q", "-p", "mustard-cli", "--"];
    if !dir.join("full/weights/last.safetensors").is_file() {
        let mut a = mustard.to_vec();
        a.extend([
            "train",
            "--preset",
            "full",
            "--runs",
            runs,
            "--name",
            "full",
            "--synth-images",
            "8",
            "--max-steps",
            "1",
            "--input-size",
            "64",
            "--no-val",
        ]);
        run("cargo", &a)?;
    }
    let mut a = mustard.to_vec();
    a.extend([
        "export",
        "--checkpoint",
        run_dir,
        "--input-size",
        "512",
        "--out",
        model,
    ]);
    run("cargo", &a)?;
    let threads = args.threads.to_string();
    let iterations = args.forward_iterations.to_string();
    let py = python.to_str().context("venv path is not UTF-8")?;
    for round in 0..args.mcn_rounds() {
        eprintln!(
            "bench: ONNX Runtime comparison, round {} of {}",
            round + 1,
            args.mcn_rounds()
        );
        let status = Command::new("cargo")
            .args(mustard)
            .args([
                "bench",
                "--checkpoint",
                run_dir,
                "--input-size",
                "512",
                "--iterations",
                &iterations,
            ])
            .env("RAYON_NUM_THREADS", &threads)
            .current_dir(root())
            .status()
            .context("could not start cargo")?;
        if !status.success() {
            bail!("mustard bench failed ({status})");
        }
        run(
            py,
            &[
                "bench/onnx_speed.py",
                model,
                "--threads",
                &threads,
                "--iterations",
                &iterations,
            ],
        )?;
    }
    Ok(())
}

/// mustard-eval against hotcoco, ultrafast-pycocotools, faster-coco-eval and pycocotools on
/// the same generated files (`bench/eval_compare.py`; the Python packages it lacks are
/// installed into the virtual environment first), at `--threads` and 1 thread.
fn eval_compare(python: &Path, args: &BenchArgs) -> Result<()> {
    let py = python.to_str().context("venv path is not UTF-8")?;
    let missing: Vec<&str> = [
        ("hotcoco", "hotcoco==1.3.0"),
        ("ultrafast_pycocotools", "ultrafast-pycocotools==0.1.14"),
        ("faster_coco_eval", "faster-coco-eval==1.8.0"),
    ]
    .into_iter()
    .filter(|(module, _)| !python_has(python, module))
    .map(|(_, package)| package)
    .collect();
    if !missing.is_empty() {
        let mut pip = vec!["-m", "pip", "install", "--only-binary=:all:"];
        pip.extend(&missing);
        run(py, &pip)?;
    }
    run(
        "cargo",
        &[
            "build",
            "--release",
            "-p",
            "mustard-eval",
            "--example",
            "coco_compare",
        ],
    )?;
    let threads = if args.threads == 1 {
        "1".to_string()
    } else {
        format!("{},1", args.threads)
    };
    let rounds = args.rounds.unwrap_or(5).max(1).to_string();
    let mustard = root().join("target/release/examples/coco_compare");
    run(
        py,
        &[
            "bench/eval_compare.py",
            "--threads",
            &threads,
            "--runs",
            &rounds,
            "--mustard",
            mustard.to_str().context("target path is not UTF-8")?,
        ],
    )
}

/// Builds the `mcn_speed` example and returns its executable.
fn build_mcn_example() -> Result<PathBuf> {
    let mut cargo = Command::new("cargo");
    cargo.args([
        "build",
        "--release",
        "-p",
        "mustard",
        "--example",
        "mcn_speed",
        "--message-format=json-render-diagnostics",
    ]);
    let messages = cargo_messages(cargo, "building the mcn_speed example")?;
    executable(&messages, "mcn_speed")
}

/// Runs a cargo command given `--message-format=json-render-diagnostics` in the workspace
/// root (diagnostics to the terminal) and returns its JSON messages.
fn cargo_messages(mut cargo: Command, what: &str) -> Result<String> {
    let args: Vec<_> = cargo.get_args().map(|a| a.to_string_lossy()).collect();
    eprintln!("$ cargo {}", args.join(" "));
    let out = cargo
        .current_dir(root())
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("could not start cargo")?;
    if !out.status.success() {
        bail!("{what} failed ({})", out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The executable cargo built for the target `name`, from its JSON messages.
fn executable(messages: &str, name: &str) -> Result<PathBuf> {
    messages
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["reason"] == "compiler-artifact" && v["target"]["name"] == name)
        .find_map(|v| v["executable"].as_str().map(PathBuf::from))
        .with_context(|| format!("cargo named no executable for {name}"))
}

/// One side of the MCN comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Mustard,
    PyTorch,
}

impl Side {
    fn name(self) -> &'static str {
        match self {
            Side::Mustard => "mustard",
            Side::PyTorch => "PyTorch",
        }
    }
}

/// Runs one case of one side in its own process with `threads` threads; returns its JSON line.
fn mcn_case(
    side: Side,
    example: &Path,
    python: &Path,
    case: &str,
    iterations: usize,
    threads: usize,
) -> Result<serde_json::Value> {
    let n = threads.to_string();
    let it = iterations.to_string();
    let mut cmd = match side {
        Side::Mustard => {
            let mut c = Command::new(example);
            c.args(["--case", case, "--iterations", &it]);
            c
        }
        Side::PyTorch => {
            let mut c = Command::new(python);
            c.args([
                "bench/mcn_speed.py",
                "--case",
                case,
                "--iterations",
                &it,
                "--threads",
                &n,
            ]);
            c
        }
    };
    // Both sides read the same thread count: rayon and candle's gemm, OpenMP and MKL.
    for var in ["RAYON_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"] {
        cmd.env(var, &n);
    }
    let out = cmd
        .current_dir(root())
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("could not start the {} side", side.name()))?;
    if !out.status.success() {
        bail!("{} {case} failed ({})", side.name(), out.status);
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let value = stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .with_context(|| format!("{} {case} printed no JSON line:\n{stdout}", side.name()))?;
    eprintln!("  {} {case}: {value}", side.name());
    Ok(value)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// What the runs of one side measured for one case.
#[derive(Debug, Clone, Default)]
struct Measured {
    /// Every timed iteration of every run, in ms.
    times: Vec<f64>,
    /// The median of each run.
    run_medians: Vec<f64>,
    /// The largest peak resident memory of the runs, in MiB.
    peak_mib: f64,
    /// Each run's median per phase of a training step, in the order of [`PHASES`].
    phases: [Vec<f64>; 4],
}

/// The phases of a training step that both sides time separately.
const PHASES: [&str; 4] = ["forward", "loss", "backward", "optimizer"];

/// The same MCN network (ResNet-18 + FPN + detection, segmentation and pose heads) in mustard
/// and PyTorch eager on the CPU, with the same thread count, each case in its own process,
/// the two sides alternating; prints medians, the ratio and each side's peak memory.
fn mcn_compare(python: &Path, args: &BenchArgs) -> Result<()> {
    let example = build_mcn_example()?;
    let threads = args.threads;
    let mut params = Vec::new();
    for side in [Side::Mustard, Side::PyTorch] {
        let v = mcn_case(side, &example, python, "params", 1, threads)?;
        params.push(v["parameters"].as_u64().context("no parameter count")?);
    }
    if params[0] != params[1] {
        bail!(
            "the two MCN networks differ: mustard has {} trainable parameters, PyTorch {}",
            params[0],
            params[1]
        );
    }
    eprintln!("mcn: both networks have {} trainable parameters", params[0]);
    let cases = [
        (
            "forward",
            "forward 1x3x512x512, eval",
            args.forward_iterations,
        ),
        ("train", "train step 8x3x256x256", args.train_iterations),
    ];
    let mut results: Vec<[Measured; 2]> = vec![Default::default(); cases.len()];
    for round in 0..args.mcn_rounds() {
        for (c, (case, _, iterations)) in cases.iter().enumerate() {
            for (s, side) in [Side::Mustard, Side::PyTorch].into_iter().enumerate() {
                eprintln!(
                    "mcn: round {}/{}, {} {case}",
                    round + 1,
                    args.mcn_rounds(),
                    side.name()
                );
                let v = mcn_case(side, &example, python, case, *iterations, threads)?;
                let times: Vec<f64> = v["times_ms"]
                    .as_array()
                    .context("no times_ms")?
                    .iter()
                    .filter_map(serde_json::Value::as_f64)
                    .collect();
                let r = &mut results[c][s];
                r.run_medians.push(median(times.clone()));
                r.times.extend(times);
                r.peak_mib = r
                    .peak_mib
                    .max(v["peak_memory_mib"].as_f64().unwrap_or(f64::NAN));
                for (p, name) in r.phases.iter_mut().zip(PHASES) {
                    if let Some(ms) = v["phases_ms"][name].as_f64() {
                        p.push(ms);
                    }
                }
            }
        }
    }
    println!();
    println!(
        "MCN (ResNet-18 + FPN 128 + detection, segmentation, pose heads; {} parameters), CPU, \
         {threads} threads, {} alternating runs per side; medians of all timed iterations",
        params[0],
        args.mcn_rounds()
    );
    println!();
    println!("| case | mustard | PyTorch | mustard / PyTorch | mustard peak | PyTorch peak | per-run medians, mustard ; PyTorch |");
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    for ((_, label, _), [m, p]) in cases.iter().zip(&results) {
        let (mm, pm) = (median(m.times.clone()), median(p.times.clone()));
        let runs = |r: &[f64]| {
            r.iter()
                .map(|t| format!("{t:.0}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        println!(
            "| {label} | {mm:.0} ms | {pm:.0} ms | {:.2} | {:.0} MiB | {:.0} MiB | {} ; {} |",
            mm / pm,
            m.peak_mib,
            p.peak_mib,
            runs(&m.run_medians),
            runs(&p.run_medians)
        );
    }
    for ((_, label, _), [m, p]) in cases.iter().zip(&results) {
        if m.phases.iter().chain(&p.phases).any(Vec::is_empty) {
            continue;
        }
        println!();
        println!("{label}, by phase (median of the runs' medians):");
        println!();
        println!("| phase | mustard | PyTorch | mustard / PyTorch |");
        println!("| --- | --- | --- | --- |");
        for (i, name) in PHASES.iter().enumerate() {
            let (mm, pm) = (median(m.phases[i].clone()), median(p.phases[i].clone()));
            println!("| {name} | {mm:.0} ms | {pm:.0} ms | {:.2} |", mm / pm);
        }
    }
    Ok(())
}
