//! The `mustard` command. It parses arguments into typed values, calls into the `mustard` crate
//! and reports; it holds no logic of its own.

use clap::Parser;

/// One model that detects objects, segments scenes, estimates human pose and depth, and
/// classifies images.
#[derive(Debug, Parser)]
#[command(name = "mustard", version, about)]
struct Cli {}

fn main() -> anyhow::Result<()> {
    let _cli = Cli::parse();
    Ok(())
}
