//! The Open MPI runtime this machine's `mpirun` uses, copied into the GPU bundle
//! (`target/gpu-check/mpi`), so that the data-parallel binary (`mustard_dp`, built with the
//! `nccl` feature, linked against this machine's libmpi) and `mpirun` run on a GPU machine that
//! has no MPI: the launcher, its shared libraries (and those of its plugins), its plugins, help
//! texts and defaults, and `env.sh`, which points Open MPI and PMIx at them.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// Libraries every Linux machine has (the C library and its loader): never copied, since
/// copies of them would not match the machine's kernel interface and loader.
const SYSTEM: &[&str] = &[
    "linux-vdso",
    "ld-linux",
    "libc.so",
    "libm.so",
    "libdl.so",
    "librt.so",
    "libpthread.so",
    "libresolv.so",
    "libutil.so",
];

/// `path:NAME:VALUE` of `ompi_info --parsable --path all`.
fn ompi_path(info: &str, name: &str) -> Result<PathBuf> {
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("path:{name}:")))
        .map(PathBuf::from)
        .with_context(|| format!("ompi_info names no {name} directory"))
}

/// The shared libraries `file` loads (as `ldd` resolves them), without the system's own.
fn libraries(file: &Path, out: &mut BTreeSet<PathBuf>) -> Result<()> {
    let o = Command::new("ldd")
        .arg(file)
        .output()
        .context("could not start ldd")?;
    let text = String::from_utf8_lossy(&o.stdout);
    for line in text.lines() {
        let Some((name, rest)) = line.trim().split_once(" => ") else {
            continue;
        };
        if SYSTEM.iter().any(|s| name.starts_with(s)) {
            continue;
        }
        let path = rest.split(" (").next().unwrap_or("").trim();
        if path == "not found" {
            bail!("{}: {name} is not found (ldd)", file.display());
        }
        if !path.is_empty() {
            out.insert(PathBuf::from(path));
        }
    }
    Ok(())
}

fn copy_tree(from: &Path, to: &Path, files: &mut Vec<PathBuf>) -> Result<()> {
    std::fs::create_dir_all(to).with_context(|| format!("creating {}", to.display()))?;
    for e in std::fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let e = e?;
        let (src, dst) = (e.path(), to.join(e.file_name()));
        if src.is_dir() {
            copy_tree(&src, &dst, files)?;
        } else if src.is_file() {
            std::fs::copy(&src, &dst)
                .with_context(|| format!("copying {} to {}", src.display(), dst.display()))?;
            files.push(dst);
        }
    }
    Ok(())
}

/// The shell lines that make the runtime under `$MPI` the one `mpirun` and the binaries use.
const ENV_SH: &str = r#"# Sourced by gpu_check.sh: Open MPI and PMIx from this folder, wherever it lies.
MPI=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export OPAL_PREFIX=$MPI OPAL_BINDIR=$MPI/bin OPAL_LIBDIR=$MPI/lib OPAL_PKGLIBDIR=$MPI/openmpi
export OPAL_DATADIR=$MPI/share OPAL_PKGDATADIR=$MPI/share/openmpi OPAL_SYSCONFDIR=$MPI/etc
export PMIX_PREFIX=$MPI PMIX_LIBDIR=$MPI/lib PMIX_PKGLIBDIR=$MPI/pmix PMIX_PKGDATADIR=$MPI/share/pmix
export OMPI_MCA_mca_base_param_files=$MPI/etc/openmpi-mca-params.conf
export PATH=$MPI/bin:$PATH
export LD_LIBRARY_PATH=$MPI/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
"#;

/// Copies the runtime into `dir` for `binary` (the data-parallel `mustard`); returns the
/// bytes copied.
pub fn bundle(dir: &Path, binary: &Path) -> Result<u64> {
    let info = Command::new("ompi_info")
        .args(["--parsable", "--path", "all"])
        .output()
        .context("could not start ompi_info (Open MPI's openmpi-bin)")?;
    if !info.status.success() {
        bail!("ompi_info failed: the bundle's MPI runtime is Open MPI's");
    }
    let info = String::from_utf8_lossy(&info.stdout).into_owned();
    let pkglibdir = ompi_path(&info, "pkglibdir")?;
    let pkgdatadir = ompi_path(&info, "pkgdatadir")?;
    let sysconfdir = ompi_path(&info, "sysconfdir")?;
    let mpirun = which("mpirun")?.canonicalize()?;
    let mut files = Vec::new();
    std::fs::create_dir_all(dir.join("bin"))?;
    std::fs::copy(&mpirun, dir.join("bin/mpirun"))?;
    files.push(dir.join("bin/mpirun"));
    copy_tree(&pkglibdir, &dir.join("openmpi"), &mut files)?;
    copy_tree(&pkgdatadir, &dir.join("share/openmpi"), &mut files)?;
    std::fs::create_dir_all(dir.join("etc"))?;
    for name in ["openmpi-mca-params.conf", "openmpi-default-hostfile"] {
        let from = sysconfdir.join(name);
        if from.is_file() {
            std::fs::copy(&from, dir.join("etc").join(name))?;
            files.push(dir.join("etc").join(name));
        }
    }
    // What everything loads: the binary, the launcher, each Open MPI plugin.
    let mut libs = BTreeSet::new();
    libraries(binary, &mut libs)?;
    libraries(&mpirun, &mut libs)?;
    let plugins: Vec<PathBuf> = files
        .iter()
        .filter(|f| f.extension().is_some_and(|e| e == "so"))
        .cloned()
        .collect();
    for p in &plugins {
        libraries(p, &mut libs)?;
    }
    // PMIx (Open MPI's launch interface) loads its own plugins from its install tree.
    if let Some(pmix) = libs.iter().find(|l| {
        l.file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("libpmix.so"))
    }) {
        let real = pmix.canonicalize()?;
        if let Some(lib) = real.parent() {
            if lib.join("pmix").is_dir() {
                copy_tree(&lib.join("pmix"), &dir.join("pmix"), &mut files)?;
            }
            let share = lib.join("../share/pmix");
            if share.is_dir() {
                copy_tree(&share, &dir.join("share/pmix"), &mut files)?;
            }
        }
    }
    std::fs::create_dir_all(dir.join("lib"))?;
    for l in &libs {
        let name = l.file_name().context("a library without a name")?;
        let to = dir.join("lib").join(name);
        std::fs::copy(l, &to).with_context(|| format!("copying {}", l.display()))?;
        files.push(to);
    }
    std::fs::write(dir.join("env.sh"), ENV_SH)?;
    let mut bytes = 0;
    for f in &files {
        bytes += std::fs::metadata(f)?.len();
    }
    Ok(bytes)
}

fn which(program: &str) -> Result<PathBuf> {
    let path = std::env::var_os("PATH").context("PATH is not set")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
        .with_context(|| format!("{program} is not on PATH"))
}
