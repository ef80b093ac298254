//! testfleet's automation, run as `cargo xtask <task>`.
//!
//! - `ci`: exactly what `.ci/run` runs — the README's test command, fmt, clippy, docs, e2e.
//! - `bench [hash|store|all]`: benchmarks that measure the reference tools in the same run.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context as _, Result, bail};

const USAGE: &str = "usage: cargo xtask <task>

tasks:
  ci                  everything CI runs: tests, fmt, clippy, docs (and e2e once it exists)
  bench [hash|store]  benchmarks, side by side with the reference tools, printed as ratios";

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let task = args.first().map(String::as_str);
    match task {
        Some("ci") => ci(),
        Some("bench") => bench(args.get(1).map(String::as_str).unwrap_or("all")),
        Some("-h" | "--help" | "help") | None => {
            println!("{USAGE}");
            Ok(())
        }
        Some(other) => bail!("unknown task {other:?}\n\n{USAGE}"),
    }
}

/// The workspace root (xtask lives one level below it).
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Runs `cargo <args>` in the workspace root, echoing it and timing it.
fn cargo(args: &[&str], envs: &[(&str, &str)]) -> Result<()> {
    let shown = args.join(" ");
    eprintln!("\n==> cargo {shown}");
    let started = Instant::now();
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned()))
        .args(args)
        .envs(envs.iter().copied())
        .current_dir(root())
        .status()
        .with_context(|| format!("failed to start cargo {shown}"))?;
    eprintln!("<== cargo {shown}: {status} in {:.0?}", started.elapsed());
    if !status.success() {
        bail!("cargo {shown} failed ({status})");
    }
    Ok(())
}

fn ci() -> Result<()> {
    let started = Instant::now();
    // The README's test command comes first: it is the one contributors run.
    cargo(&["test", "--workspace"], &[])?;
    cargo(&["fmt", "--all", "--check"], &[])?;
    cargo(
        &[
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ],
        &[],
    )?;
    cargo(
        &["doc", "--workspace", "--no-deps"],
        &[("RUSTDOCFLAGS", "-D warnings")],
    )?;
    eprintln!("\nci passed in {:.0?}", started.elapsed());
    Ok(())
}

fn bench(which: &str) -> Result<()> {
    match which {
        "hash" => cargo(&["bench", "-p", "testfleet-core", "--bench", "hash"], &[]),
        "store" => cargo(
            &["bench", "-p", "testfleet-store-sqlite", "--bench", "store"],
            &[],
        ),
        "all" => {
            bench("hash")?;
            bench("store")
        }
        other => bail!("unknown benchmark {other:?}: choose hash, store or all"),
    }
}
