//! testfleet's automation, run as `cargo xtask <task>`.
//!
//! - `ci`: exactly what `.ci/run` runs — the README's test command, fmt, clippy, docs, e2e.
//! - `e2e`: the release binary against the testkit server and a real OpenSSH sshd.
//! - `demo`: built-in SSH servers, a temporary fleet, the example runs and a test report.
//! - `serve [N]`: N built-in SSH servers and a fleet file for them, for trying the CLI by hand.
//! - `bench [hash|store|results|transfer|all]`: benchmarks that measure the reference tools in
//!   the same run (`results`: reading a 100,000-case JUnit report, its time and peak RSS).

mod bench;
mod demo;
mod e2e;
mod e2e_report;
mod targets;
mod tf;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context as _, Result, bail};

const USAGE: &str = "usage: cargo xtask <task>

tasks:
  ci                  everything CI runs: tests, fmt, clippy, docs, e2e
  e2e [reports]       end-to-end scenarios against the testkit server and a real OpenSSH sshd
                      (reports: only the test-report group, with Chromium)
  demo                dispatch examples/hello, examples/artifacts and examples/junit to built-in SSH servers
  serve [N]           start N built-in SSH servers and print a fleet file for them (Ctrl-C stops)
  bench [hash|store|results|transfer]
                      benchmarks, side by side with the reference tools, printed as ratios
                      (results: reading a 100,000-case JUnit report, time and peak RSS)";

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let task = args.first().map(String::as_str);
    match task {
        Some("ci") => ci(),
        Some("e2e") if args.get(1).map(String::as_str) == Some("reports") => e2e_reports(),
        Some("e2e") => e2e(),
        Some("demo") => demo::run(&build_binary(Profile::Debug)?),
        Some("serve") => serve(args.get(1).map(String::as_str).unwrap_or("1")),
        Some("_bench-transfer") => bench::run(&build_binary(Profile::Release)?),
        Some("_bench-results") => bench::results::run(),
        Some("_parse-report") => {
            bench::results::parse_report(Path::new(args.get(1).context("_parse-report DIR")?))
        }
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
    e2e()?;
    eprintln!("\nci passed in {:.0?}", started.elapsed());
    Ok(())
}

/// Starts built-in servers for manual experiments and waits until interrupted.
fn serve(n_machines: &str) -> Result<()> {
    let n_machines: usize = n_machines
        .parse()
        .with_context(|| format!("serve takes a number of machines, not {n_machines:?}"))?;
    let runtime = tokio::runtime::Runtime::new().context("failed to start a tokio runtime")?;
    let target = targets::Target::testkit(&runtime, n_machines)?;
    let fleet = target.write_fleet("fleet.toml", |_| {})?;
    println!("{}", fleet.display());
    eprintln!("{n_machines} server(s) up; fleet file above; Ctrl-C stops them");
    runtime.block_on(async { tokio::signal::ctrl_c().await })?;
    Ok(())
}

fn e2e() -> Result<()> {
    if testfleet_testkit::sshd::find_sshd().is_none() {
        bail!("{}", testfleet_testkit::sshd::INSTALL_HINT);
    }
    e2e::run(&build_binary(Profile::Release)?)
}

/// The cargo target dir (`CARGO_TARGET_DIR`, else `target/` in the workspace).
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"))
}

/// Only the e2e group of test reports (its scenarios are part of `e2e` too).
fn e2e_reports() -> Result<()> {
    let (_, failures) = e2e_report::run_and_print(&build_binary(Profile::Release)?)?;
    if !failures.is_empty() {
        bail!("e2e scenarios failed:\n  {}", failures.join("\n  "));
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Profile {
    Debug,
    Release,
}

/// Builds the `testfleet` binary and returns its path.
fn build_binary(profile: Profile) -> Result<PathBuf> {
    let (args, folder): (&[&str], &str) = match profile {
        Profile::Debug => (&["build", "-p", "testfleet"], "debug"),
        Profile::Release => (&["build", "--release", "-p", "testfleet"], "release"),
    };
    cargo(args, &[])?;
    let bin = target_dir().join(folder).join("testfleet");
    if !bin.is_file() {
        bail!("the build did not produce {}", bin.display());
    }
    Ok(bin)
}

fn bench(which: &str) -> Result<()> {
    match which {
        "hash" => cargo(&["bench", "-p", "testfleet-core", "--bench", "hash"], &[]),
        "store" => cargo(
            &["bench", "-p", "testfleet-store-sqlite", "--bench", "store"],
            &[],
        ),
        // Transfers and whole runs are measured in-process by xtask itself, so it re-runs
        // itself in the release profile: a debug build would handicap the russh rows.
        "transfer" => {
            build_binary(Profile::Release)?;
            cargo(
                &[
                    "run",
                    "--release",
                    "-q",
                    "-p",
                    "xtask",
                    "--",
                    "_bench-transfer",
                ],
                &[],
            )
        }
        "results" => cargo(
            &[
                "run",
                "--release",
                "-q",
                "-p",
                "xtask",
                "--",
                "_bench-results",
            ],
            &[],
        ),
        "all" => {
            bench("hash")?;
            bench("store")?;
            bench("results")?;
            bench("transfer")
        }
        other => {
            bail!("unknown benchmark {other:?}: choose hash, store, results, transfer or all")
        }
    }
}
