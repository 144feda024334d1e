//! Project automation: `cargo xtask ci | deps | fixtures | bench`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

const USAGE: &str = "usage: cargo xtask <command>

commands:
  ci         fmt --check, clippy -D warnings, dependency direction, tests (the CI gate)
  deps       check only the dependency direction between our crates
  fixtures   regenerate the golden fixtures with PyTorch/pycocotools in a virtual environment
  bench      run the criterion benchmarks";

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
    run("cargo", &["test", "--workspace"])?;
    eprintln!("ci: all checks passed");
    Ok(())
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
    let dir = match std::env::var_os("MUSTARD_VENV") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(std::env::var_os("HOME").context("HOME is not set")?)
            .join(".cache/mustard/venv"),
    };
    let python = dir.join("bin/python");
    if !python.exists() {
        run(
            "python3",
            &[
                "-m",
                "venv",
                dir.to_str().context("venv path is not UTF-8")?,
            ],
        )?;
    }
    let py = python
        .to_str()
        .context("venv path is not UTF-8")?
        .to_string();
    run(
        &py,
        &[
            "-m",
            "pip",
            "install",
            "--quiet",
            "torch",
            "timm",
            "safetensors",
            "numpy",
            "pycocotools",
        ],
    )?;
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

/// The criterion benches, then (when Python with pycocotools is available, in `$MUSTARD_VENV`
/// or `~/.cache/mustard/venv`) the side-by-side COCO evaluation against pycocotools on the same
/// files.
fn bench(extra: &[String]) -> Result<()> {
    let mut args = vec!["bench", "--workspace"];
    args.extend(extra.iter().map(String::as_str));
    run("cargo", &args)?;
    let dir = match std::env::var_os("MUSTARD_VENV") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(std::env::var_os("HOME").context("HOME is not set")?)
            .join(".cache/mustard/venv"),
    };
    let python = dir.join("bin/python");
    let has_pycocotools = python.exists()
        && Command::new(&python)
            .args(["-c", "import pycocotools"])
            .status()
            .is_ok_and(|s| s.success());
    if !has_pycocotools {
        eprintln!("bench: no Python with pycocotools at {} (run `cargo xtask fixtures` once); skipping the comparison", dir.display());
        return Ok(());
    }
    let problem = std::env::temp_dir().join("mustard-eval-speed");
    let problem = problem.to_str().context("temp path is not UTF-8")?;
    run(
        python.to_str().context("venv path is not UTF-8")?,
        &["bench/eval_speed.py", problem],
    )?;
    run(
        "cargo",
        &[
            "run",
            "--release",
            "-p",
            "mustard-eval",
            "--example",
            "coco_speed",
            "--",
            problem,
        ],
    )
}
