//! Resident memory of an opened dataset index: `cargo run --release -p mustard-data --example
//! index_memory -- INSTANCES.json` prints the process's resident set before and after
//! `Dataset::open` + `require_clean` (headers only), and the growth per image record.

use std::path::PathBuf;

fn rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn main() -> anyhow::Result<()> {
    let json = PathBuf::from(
        std::env::args()
            .nth(1)
            .ok_or_else(|| anyhow::anyhow!("usage: index_memory INSTANCES.json"))?,
    );
    let before = rss_kib();
    let started = std::time::Instant::now();
    let ds = mustard_data::Dataset::open(&json, None)?.require_clean(false, |_| {})?;
    let seconds = started.elapsed().as_secs_f64();
    let after = rss_kib();
    let images = ds.len();
    match (before, after) {
        (Some(b), Some(a)) => println!(
            "{images} images opened in {seconds:.2} s; resident {b} KiB before, {a} KiB after: {:.2} KiB per image",
            (a.saturating_sub(b)) as f64 / images.max(1) as f64
        ),
        _ => println!("{images} images opened in {seconds:.2} s; resident memory unknown here"),
    }
    Ok(())
}
