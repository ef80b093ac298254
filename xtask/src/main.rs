//! testfleet's automation, run as `cargo xtask <task>`.
//!
//! - `ci`: exactly what `.ci/run` runs — the README's test command (`test`), fmt, clippy, docs,
//!   e2e.
//! - `test`: installs what the tests need when it is missing (OpenSSH's sshd, PostgreSQL), then
//!   `cargo test --workspace`.
//! - `e2e [shared|reports|jump]`: the release binary against the testkit server and a real OpenSSH
//!   sshd, two controllers sharing a private PostgreSQL, and test reports checked in Chromium.
//! - `demo`: built-in SSH servers, a temporary fleet, the example runs and a test report.
//! - `serve [N]`: N built-in SSH servers and a fleet file for them, for trying the CLI by hand.
//! - `bench [hash|store|results|queue|transfer|all]`: benchmarks that measure the reference tools in
//!   the same run (`results`: reading a 100,000-case JUnit report, its time and peak RSS).

mod bench;
mod demo;
mod e2e;
mod targets;
mod tf;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context as _, Result, bail};

const USAGE: &str = "usage: cargo xtask <task>

tasks:
  ci                  everything CI runs: tests, fmt, clippy, docs, e2e
  test                install openssh-server and postgresql when missing, then cargo test --workspace
  e2e [shared|reports|jump]
                      end-to-end scenarios against the testkit server, a real OpenSSH sshd, a
                      private PostgreSQL shared by two controllers, and test reports in Chromium
                      (shared, reports: only that group)
  demo                dispatch examples/hello, examples/artifacts and examples/junit to built-in SSH servers
  serve [N]           start N built-in SSH servers and print a fleet file for them (Ctrl-C stops)
  bench [hash|store|results|queue|transfer]
                      benchmarks, side by side with the reference tools, printed as ratios
                      (results: reading a 100,000-case JUnit report, time and peak RSS)";

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let task = args.first().map(String::as_str);
    match task {
        Some("ci") => ci(),
        Some("test") => test(),
        Some("e2e") => e2e(args.get(1).map(String::as_str)),
        Some("demo") => demo::run(&build_binary(Profile::Debug)?),
        Some("serve") => serve(args.get(1).map(String::as_str).unwrap_or("1")),
        Some("_bench-transfer") => bench::run(&build_binary(Profile::Release)?),
        Some("_bench-store") => bench::store::run(),
        Some("_bench-store-child") => {
            bench::store::child(args.get(1).map(String::as_str).unwrap_or_default())
        }
        Some("_bench-results") => bench::results::run(),
        Some("_bench-queue") => bench::queue::run(&build_binary(Profile::Release)?),
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

/// The README's test command: what the tests need, then `cargo test --workspace`.
fn test() -> Result<()> {
    ensure_installed()?;
    cargo(&["test", "--workspace"], &[])
}

/// Installs Debian's `openssh-server`, `postgresql` and `openssl` when `sshd`, `initdb` or
/// `openssl` is missing (as root, with apt-get); elsewhere says what to install.
fn ensure_installed() -> Result<()> {
    let mut missing = Vec::new();
    if testfleet_testkit::sshd::find_sshd().is_none() {
        missing.extend(["openssh-server", "openssh-client"]);
    }
    if testfleet_testkit::postgres::find_bin_dir().is_none() {
        missing.push("postgresql");
    }
    // The TLS tests of the PostgreSQL store make their certificates with it.
    let has_openssl = Command::new("openssl")
        .arg("version")
        .output()
        .is_ok_and(|out| out.status.success());
    if !has_openssl {
        missing.push("openssl");
    }
    if missing.is_empty() {
        return Ok(());
    }
    let is_root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0");
    let has_apt = Path::new("/usr/bin/apt-get").is_file();
    if !is_root || !has_apt {
        bail!(
            "the tests need {}: install them (on Debian/Ubuntu: `sudo apt-get update && sudo apt-get install -y {}`)",
            missing.join(", "),
            missing.join(" ")
        );
    }
    eprintln!("==> installing {}", missing.join(" "));
    let apt = |args: &[&str]| -> Result<()> {
        let status = Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .context("failed to start apt-get")?;
        if !status.success() {
            bail!("apt-get {} failed ({status})", args.join(" "));
        }
        Ok(())
    };
    apt(&["update", "-q"])?;
    let mut install = vec!["install", "-y", "-q", "--no-install-recommends"];
    install.extend(missing.iter().copied());
    apt(&install)?;
    if testfleet_testkit::postgres::find_bin_dir().is_none() {
        bail!("postgresql was installed, but no initdb was found");
    }
    Ok(())
}

fn ci() -> Result<()> {
    let started = Instant::now();
    // The README's test command comes first: it is the one contributors run.
    test()?;
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
    e2e(None)?;
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

/// `e2e`; with `shared` only the scenarios of two controllers sharing PostgreSQL, with
/// `reports` only the test-report group (Chromium).
fn e2e(only: Option<&str>) -> Result<()> {
    if testfleet_testkit::sshd::find_sshd().is_none() {
        bail!("{}", testfleet_testkit::sshd::INSTALL_HINT);
    }
    if testfleet_testkit::postgres::find_bin_dir().is_none() {
        bail!("{}", testfleet_testkit::postgres::INSTALL_HINT);
    }
    let bin = build_binary(Profile::Release)?;
    match only {
        None => e2e::run(&bin),
        Some("shared") => group_outcome(e2e::shared::run(&bin)?),
        Some("reports") => {
            let (_, failures) = e2e::reports::run_and_print(&bin)?;
            if !failures.is_empty() {
                bail!("e2e scenarios failed:\n  {}", failures.join("\n  "));
            }
            Ok(())
        }
        Some("jump") => group_outcome(e2e::jump::run(&bin)?),
        Some(other) => {
            bail!("unknown e2e group {other:?}: give none, `shared`, `reports` or `jump`")
        }
    }
}

/// The cargo target dir (`CARGO_TARGET_DIR`, else `target/` in the workspace).
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"))
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

/// Prints how one e2e group went (`total` scenarios, the names of those that failed) and fails
/// when one did.
fn group_outcome((total, failures): (usize, Vec<String>)) -> Result<()> {
    println!(
        "e2e: {} passed, {} failed",
        total - failures.len(),
        failures.len()
    );
    if !failures.is_empty() {
        bail!("e2e scenarios failed:\n  {}", failures.join("\n  "));
    }
    Ok(())
}

fn bench(which: &str) -> Result<()> {
    match which {
        "hash" => cargo(&["bench", "-p", "testfleet-core", "--bench", "hash"], &[]),
        // SQLite and PostgreSQL side by side, from several processes: xtask re-runs itself in
        // the release profile, and its children are that binary too.
        "store" => release_xtask("_bench-store"),
        // Transfers and whole runs are measured in-process by xtask itself, so it re-runs
        // itself in the release profile: a debug build would handicap the russh rows.
        "transfer" => {
            build_binary(Profile::Release)?;
            release_xtask("_bench-transfer")
        }
        "results" => release_xtask("_bench-results"),
        // The queue end to end: grant latency on both stores, a 500-machine fan-out.
        "queue" => {
            build_binary(Profile::Release)?;
            release_xtask("_bench-queue")
        }
        "all" => {
            bench("hash")?;
            bench("store")?;
            bench("results")?;
            bench("queue")?;
            bench("transfer")
        }
        other => {
            bail!(
                "unknown benchmark {other:?}: choose hash, store, results, queue, transfer or all"
            )
        }
    }
}

/// Runs this xtask again in the release profile with the hidden command `sub`.
fn release_xtask(sub: &str) -> Result<()> {
    cargo(&["run", "--release", "-q", "-p", "xtask", "--", sub], &[])
}
