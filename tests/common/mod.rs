//! Helpers shared by the end-to-end tests of the `mustard` command.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Runs the binary with `args`.
pub fn mustard(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mustard"))
        .args(args)
        .output()
        .expect("the mustard binary runs")
}

/// Lossy UTF-8 of captured output.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A fresh scratch folder for test `name` of this process (not created).
pub fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mustard-e2e-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// A path as a command-line argument.
pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}
