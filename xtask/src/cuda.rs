//! `cargo xtask cuda-build`: the `--features cuda` build on a machine without a GPU or a CUDA
//! install, and the bundle that `bench/gpu_check.sh` runs on a GPU machine without Rust.
//!
//! nvcc (for the PTX of candle's kernels) and the CUDA headers come from NVIDIA's PyPI wheels
//! in a virtual environment; nothing is linked against CUDA (the libraries are loaded when a
//! device opens, third_party/candle-core/PATCHED.md), so the binary runs wherever an NVIDIA
//! driver is.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::root;

/// The CUDA 13.0 compiler, its front end, headers and runtime headers, as NVIDIA publishes them
/// on PyPI (only the CUDA 13 wheels carry `nvcc` itself). PTX of CUDA 13.0 needs an NVIDIA
/// driver of release 580 or later.
const WHEELS: &[&str] = &[
    "nvidia-cuda-nvcc==13.0.88",
    "nvidia-nvvm==13.0.88",
    "nvidia-cuda-crt==13.0.88",
    "nvidia-cuda-runtime==13.0.96",
    "nvidia-cuda-cccl==13.0.85",
];

/// cudarc's version of the API bound by the build (`CUDARC_CUDA_VERSION`), for the wheels.
const WHEEL_CUDA_VERSION: &str = "13000";

/// The crates built with the `cuda` feature.
const PACKAGES: [&str; 6] = ["-p", "mustard-core", "-p", "mustard", "-p", "mustard-cli"];

/// Where the bundle for the GPU machine is written.
const BUNDLE: &str = "target/gpu-check";

const USAGE: &str = "usage: cargo xtask cuda-build [--check] [--cudnn] [--compute-cap N] [--toolkit DIR]

  --check           only `cargo clippy -D warnings` the crates with --features cudnn, which
                    includes cuda, and nccl (distributed) where MPI is installed (what CI runs)
  --cudnn           build with --features cudnn: candle's convolutions through cuDNN, whose
                    library (libcudnn 9, in PyTorch's wheels) must then be on the GPU machine
  --compute-cap N   GPU generation the PTX is compiled for (default 80: Ampere, and by the
                    driver's JIT every later GPU)
  --toolkit DIR     a CUDA toolkit (DIR/bin/nvcc) instead of NVIDIA's PyPI wheels in
                    $MUSTARD_CUDA_VENV or ~/.cache/mustard/cuda-venv

Without --check: release builds of `mustard` (mustard-cli), the `mcn_speed` example and the
CUDA parity tests (mustard-core/tests/cuda.rs), copied with bench/gpu_check.sh and bench/mcn_speed.py into target/gpu-check;
where MPI is installed also `mustard_dp` (--features nccl) and Open MPI's runtime (target/gpu-check/mpi).";

struct Options {
    check: bool,
    cudnn: bool,
    compute_cap: String,
    toolkit: Option<PathBuf>,
}

fn parse(args: &[String]) -> Result<Options> {
    let mut options = Options {
        check: false,
        cudnn: false,
        compute_cap: "80".into(),
        toolkit: None,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || {
            it.next()
                .with_context(|| format!("{a} needs a value\n\n{USAGE}"))
        };
        match a.as_str() {
            "--check" => options.check = true,
            "--cudnn" => options.cudnn = true,
            "--compute-cap" => {
                let cap = value()?;
                if cap.len() < 2 || !cap.chars().all(|c| c.is_ascii_digit()) {
                    bail!("--compute-cap takes a number such as 80 or 90, not {cap:?}");
                }
                options.compute_cap = cap.clone();
            }
            "--toolkit" => options.toolkit = Some(PathBuf::from(value()?)),
            "--help" | "-h" => {
                eprintln!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other}\n\n{USAGE}"),
        }
    }
    Ok(options)
}

pub fn cuda_build(args: &[String]) -> Result<()> {
    let options = parse(args)?;
    let (toolkit, version) = match &options.toolkit {
        Some(dir) => (
            dir.canonicalize()
                .with_context(|| format!("--toolkit {}", dir.display()))?,
            None,
        ),
        None => (wheel_toolkit()?, Some(WHEEL_CUDA_VERSION)),
    };
    let nvcc = toolkit.join("bin/nvcc");
    if !nvcc.is_file() {
        bail!("no nvcc at {}", nvcc.display());
    }
    let path = match std::env::var_os("PATH") {
        Some(p) => {
            let mut dirs = vec![toolkit.join("bin")];
            dirs.extend(std::env::split_paths(&p));
            std::env::join_paths(dirs)?
        }
        None => toolkit.join("bin").into_os_string(),
    };
    // Every cargo run here sees the toolkit.
    let cargo = |args: &[&str]| {
        let mut c = Command::new("cargo");
        c.args(args)
            .args(PACKAGES)
            .env("PATH", &path)
            .env("NVCC", &nvcc)
            .env("CUDA_HOME", &toolkit)
            .env("CUDA_COMPUTE_CAP", &options.compute_cap);
        if let Some(v) = version {
            c.env("CUDARC_CUDA_VERSION", v);
        }
        c
    };
    if options.check {
        // clippy rather than check: the CUDA-only code is linted as the rest is.
        // cudnn includes cuda: one lint covers the code of both; with MPI installed, together
        // with `nccl` (distributed: one process per GPU under a launcher, sums through NCCL).
        let features = if crate::has_mpi() {
            "cudnn,nccl"
        } else {
            "cudnn"
        };
        let mut clippy = cargo(&["clippy", "--features", features, "--all-targets"]);
        clippy.args(["--", "-D", "warnings"]);
        let args: Vec<_> = clippy.get_args().map(|a| a.to_string_lossy()).collect();
        eprintln!("$ cargo {}", args.join(" "));
        let s = clippy
            .current_dir(root())
            .status()
            .context("could not start cargo")?;
        if !s.success() {
            bail!("clippy of the CUDA build failed ({s})");
        }
        return Ok(());
    }
    // Where MPI is installed, first the data-parallel binary (`nccl`: one process per GPU,
    // sums through NCCL), kept aside: the next build, with other features, replaces
    // target/release/mustard.
    let staged = root().join("target/gpu-check-dp/mustard_dp");
    let data_parallel = if crate::has_mpi() {
        let features = if options.cudnn { "cudnn,nccl" } else { "nccl" };
        let messages = crate::cargo_messages(
            cargo(&[
                "build",
                "--release",
                "--features",
                features,
                "--bin",
                "mustard",
                "--message-format=json-render-diagnostics",
            ]),
            "the data-parallel CUDA build",
        )?;
        std::fs::create_dir_all(staged.parent().expect("a folder"))?;
        std::fs::copy(crate::executable(&messages, "mustard")?, &staged)
            .with_context(|| format!("copying the data-parallel binary to {}", staged.display()))?;
        true
    } else {
        eprintln!(
            "cuda-build: no MPI here (mpicc): the bundle has no data-parallel binary, and the GPU check skips its stage (e)"
        );
        false
    };
    // One cargo invocation, so that every artifact shares one feature resolution (dev
    // dependencies included) and candle is compiled once.
    let messages = crate::cargo_messages(
        cargo(&[
            "build",
            "--release",
            "--features",
            if options.cudnn { "cudnn" } else { "cuda" },
            "--bin",
            "mustard",
            "--example",
            "mcn_speed",
            "--test",
            "cuda",
            "--message-format=json-render-diagnostics",
        ]),
        "the CUDA build",
    )?;
    let mut files = vec![
        (crate::executable(&messages, "mustard")?, "mustard"),
        (crate::executable(&messages, "mcn_speed")?, "mcn_speed"),
        (crate::executable(&messages, "cuda")?, "cuda_parity"),
        (root().join("bench/gpu_check.sh"), "gpu_check.sh"),
        (root().join("bench/mcn_speed.py"), "mcn_speed.py"),
    ];
    if data_parallel {
        files.push((staged.clone(), "mustard_dp"));
    }
    bundle(&files)?;
    if data_parallel {
        // mpirun and the libraries mustard_dp was linked against, for a GPU machine without MPI.
        let bytes = crate::mpi_bundle::bundle(&root().join(BUNDLE).join("mpi"), &staged)?;
        eprintln!(
            "cuda-build: Open MPI's runtime in {BUNDLE}/mpi ({:.0} MiB)",
            bytes as f64 / (1024.0 * 1024.0)
        );
    }
    Ok(())
}

/// Copies `files` into the bundle folder, binaries stripped and gzipped (`NAME.gz`: the three
/// come to about 20 MiB instead of 70, small enough to carry to a GPU machine).
fn bundle(files: &[(PathBuf, &str)]) -> Result<()> {
    let dir = root().join(BUNDLE);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut total = 0u64;
    for (from, name) in files {
        let to = dir.join(name);
        std::fs::copy(from, &to)
            .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
        let mut kept = to.clone();
        if !name.contains('.') {
            for (tool, args) in [("strip", &[][..]), ("gzip", &["-f", "-9"][..])] {
                let s = Command::new(tool)
                    .args(args)
                    .arg(&to)
                    .status()
                    .with_context(|| format!("could not start {tool}"))?;
                if !s.success() {
                    bail!("{tool} {} failed ({s})", to.display());
                }
            }
            kept = dir.join(format!("{name}.gz"));
        }
        total += std::fs::metadata(&kept)?.len();
    }
    eprintln!(
        "cuda-build: {} ({:.0} MiB): run `bash {BUNDLE}/gpu_check.sh {BUNDLE}` on a machine with an NVIDIA GPU (driver 580 or later) and PyTorch",
        dir.display(),
        total as f64 / (1024.0 * 1024.0)
    );
    Ok(())
}

/// The CUDA toolkit of the PyPI wheels (`nvidia/cu13` in the virtual environment), installed
/// when missing.
fn wheel_toolkit() -> Result<PathBuf> {
    let venv = match std::env::var_os("MUSTARD_CUDA_VENV") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(std::env::var_os("HOME").context("HOME is not set")?)
            .join(".cache/mustard/cuda-venv"),
    };
    if let Some(tk) = find_toolkit(&venv) {
        return Ok(tk);
    }
    let python = venv.join("bin/python");
    if !python.exists() {
        crate::run("python3", &["-m", "venv", path_str(&venv)?])?;
    }
    let mut args = vec!["-m", "pip", "install", "--quiet"];
    args.extend(WHEELS);
    crate::run(path_str(&python)?, &args)?;
    find_toolkit(&venv).with_context(|| {
        format!(
            "the wheels installed, but {} has no lib/python*/site-packages/nvidia/cu13/bin/nvcc",
            venv.display()
        )
    })
}

/// `lib/python*/site-packages/nvidia/cu13` of `venv`, when it holds nvcc.
fn find_toolkit(venv: &Path) -> Option<PathBuf> {
    let lib = std::fs::read_dir(venv.join("lib")).ok()?;
    lib.filter_map(|e| e.ok())
        .map(|e| e.path().join("site-packages/nvidia/cu13"))
        .find(|tk| tk.join("bin/nvcc").is_file())
}

fn path_str(p: &Path) -> Result<&str> {
    p.to_str()
        .with_context(|| format!("{} is not UTF-8", p.display()))
}
