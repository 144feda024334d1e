//! The `mustard` command. It parses arguments into typed values, calls into the `mustard` crate
//! and reports; it holds no logic of its own.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use mustard::data::synth::{self, Splits, SynthConfig};
use mustard::data::Dataset;

/// One model that detects objects, segments scenes, estimates human pose and depth, and
/// classifies images.
#[derive(Debug, Parser)]
#[command(name = "mustard", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Write the synthetic all-task dataset (COCO json, images, label maps, depth maps).
    Synth(SynthArgs),
    /// Inspect datasets.
    Data {
        #[command(subcommand)]
        command: DataCommand,
    },
}

#[derive(Debug, Args)]
struct SynthArgs {
    /// Output folder.
    #[arg(long)]
    out: PathBuf,
    /// Number of images (without --splits).
    #[arg(long, default_value_t = 200)]
    images: usize,
    /// Image side in pixels.
    #[arg(long, default_value_t = 256)]
    size: u32,
    /// Seed of every random choice.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Most objects per scene.
    #[arg(long, default_value_t = 6)]
    max_objects: usize,
    /// Write the MuST splits instead of one file: train_<task>.json per task, unlabeled.json
    /// and test.json.
    #[arg(long)]
    splits: bool,
    /// Images per single-task split (with --splits).
    #[arg(long, default_value_t = 200)]
    per_task: usize,
    /// Images of the unlabelled split (with --splits).
    #[arg(long, default_value_t = 400)]
    unlabeled: usize,
    /// Images of the test split (with --splits).
    #[arg(long, default_value_t = 100)]
    test: usize,
}

#[derive(Debug, Subcommand)]
enum DataCommand {
    /// Count images and annotations per task and category, and report every bad record.
    Check {
        /// The COCO json file.
        dataset: PathBuf,
        /// Image folder (default: the json file's folder).
        #[arg(long)]
        root: Option<PathBuf>,
    },
}

fn synth(args: SynthArgs) -> Result<ExitCode> {
    let config = SynthConfig {
        size: args.size,
        seed: args.seed,
        max_objects: args.max_objects,
    };
    let splits = args.splits.then_some(Splits {
        per_task: args.per_task,
        unlabeled: args.unlabeled,
        test: args.test,
    });
    let started = std::time::Instant::now();
    let written = synth::write(&args.out, &config, args.images, splits.as_ref())
        .with_context(|| format!("writing the synthetic dataset to {}", args.out.display()))?;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "wrote {} images of {}x{} in {secs:.1} s",
        written.images, args.size, args.size
    );
    for (name, path) in &written.files {
        println!("  {name:<15} {}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

fn data_check(dataset: PathBuf, root: Option<PathBuf>) -> Result<ExitCode> {
    let ds = Dataset::open(&dataset, root.as_deref())?;
    let report = ds.check();
    print!("{report}");
    Ok(if report.is_clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The error and its causes, leaving out causes the message already quotes.
fn describe(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !out.contains(&text) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
    }
    out
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Synth(args) => synth(args),
        Command::Data {
            command: DataCommand::Check { dataset, root },
        } => data_check(dataset, root),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", describe(&e));
            ExitCode::FAILURE
        }
    }
}
