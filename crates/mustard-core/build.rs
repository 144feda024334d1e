//! With the `cuda` feature: mustard's CUDA kernels (`cuda/*.cu`) compiled to PTX with nvcc
//! (`$NVCC`, else `nvcc` on the PATH; `cargo xtask cuda-build` provides one from PyPI), for
//! compute capability `$CUDA_COMPUTE_CAP` (default 80). Without it: nothing.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-changed=cuda");
    println!("cargo::rerun-if-env-changed=NVCC");
    println!("cargo::rerun-if-env-changed=CUDA_COMPUTE_CAP");
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let nvcc = std::env::var("NVCC").unwrap_or_else(|_| "nvcc".into());
    let cap = std::env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "80".into());
    let mut sources: Vec<PathBuf> = std::fs::read_dir("cuda")
        .expect("crates/mustard-core/cuda holds the CUDA kernels")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "cu"))
        .collect();
    sources.sort();
    for source in sources {
        let ptx = out.join(source.with_extension("ptx").file_name().expect("a file"));
        let status = Command::new(&nvcc)
            .args(["-ptx", "-O3", "-std=c++17", &format!("-arch=compute_{cap}")])
            .arg(&source)
            .arg("-o")
            .arg(&ptx)
            .status()
            .unwrap_or_else(|e| {
                panic!(
                    "the cuda feature needs nvcc ({nvcc}: {e}); `cargo xtask cuda-build` installs one from PyPI"
                )
            });
        assert!(
            status.success(),
            "nvcc failed on {} ({status})",
            source.display()
        );
    }
}
