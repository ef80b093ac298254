//! The `results` group: reading a JUnit report of 100,000 cases, in a process of its own so
//! that its peak RSS is the reader's (plus the xtask binary it runs in). Target: < 1 s and
//! < 64 MiB.

use std::fmt::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context as _, Result, bail, ensure};

use super::table::Bench;

const GROUP: &str = "results: parse 100,000 JUnit cases";
const N_CASES: usize = 100_000;

/// Measures the reader on a generated report, and prints the table with the target.
pub fn run() -> Result<()> {
    let mut bench = Bench::from_env();
    let data = tempfile::Builder::new()
        .prefix("tf-bench-results")
        .tempdir_in(crate::targets::scratch_base())?;
    let artifacts = data.path().join("artifacts");
    std::fs::create_dir_all(&artifacts)?;
    let report = artifacts.join("junit.xml");
    std::fs::write(&report, report_of(N_CASES))?;
    let size = std::fs::metadata(&report)?.len();
    let exe = std::env::current_exe().context("the xtask binary")?;
    let mut worst: Option<(f64, u64)> = None;
    bench.measure(
        GROUP,
        format!("summarize ({:.1} MiB report)", size as f64 / 1048576.0),
        || {
            let (parse_ms, rss_kib) = parse_in_child(&exe, &artifacts)?;
            let worst_ms = worst.map_or(parse_ms, |(ms, _)| ms.max(parse_ms));
            let worst_kib = worst.map_or(rss_kib, |(_, kib)| kib.max(rss_kib));
            worst = Some((worst_ms, worst_kib));
            Ok(Some(rss_kib))
        },
    )?;
    bench.print(&[]);
    if let Some((ms, kib)) = worst {
        let mib = kib as f64 / 1024.0;
        let verdict = if ms < 1_000.0 && mib < 64.0 {
            "met"
        } else {
            "NOT met"
        };
        println!(
            "\nreading {N_CASES} cases: slowest sample {ms:.0} ms in-process, peak RSS {mib:.1} MiB \
             (whole process); target < 1 s and < 64 MiB: {verdict}"
        );
    }
    Ok(())
}

/// `xtask _parse-report DIR` under GNU time: its own parse time (ms) and the peak RSS (KiB).
fn parse_in_child(exe: &Path, artifacts: &Path) -> Result<(f64, u64)> {
    let output = Command::new("/usr/bin/time")
        .arg("-f")
        .arg("TF_MAXRSS=%M")
        .arg(exe)
        .arg("_parse-report")
        .arg(artifacts)
        .stdin(Stdio::null())
        .output()
        .context("failed to run /usr/bin/time (apt-get install time)")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        bail!("_parse-report failed ({}): {stderr}", output.status);
    }
    let rss = stderr
        .lines()
        .rev()
        .find_map(|line| line.strip_prefix("TF_MAXRSS="))
        .and_then(|kib| kib.trim().parse().ok())
        .context("GNU time printed no peak RSS")?;
    let parse_ms = stdout
        .lines()
        .find_map(|line| line.strip_prefix("parse_ms="))
        .and_then(|ms| ms.trim().parse().ok())
        .context("the child printed no parse time")?;
    ensure!(
        stdout.contains(&format!("total={N_CASES} ")),
        "the child did not read every case: {stdout}"
    );
    Ok((parse_ms, rss))
}

/// The child: summarizes the reports of `artifacts` and prints the counts and its time.
pub fn parse_report(artifacts: &Path) -> Result<()> {
    let started = Instant::now();
    let summary =
        testfleet_results::summarize(artifacts, &[], &testfleet_results::Limits::default())
            .context("no report found")?;
    let elapsed = started.elapsed();
    ensure!(summary.unreadable.is_empty(), "{:?}", summary.unreadable);
    println!(
        "total={} passed={} failed={} skipped={} \nparse_ms={:.1}",
        summary.total,
        summary.passed,
        summary.failed,
        summary.skipped,
        elapsed.as_secs_f64() * 1e3
    );
    Ok(())
}

/// A report like a big suite's: classnames across 100 modules, a failure with a message and
/// a short trace every 7th case, a skip every 11th.
fn report_of(n_cases: usize) -> String {
    let mut xml = String::with_capacity(n_cases * 110);
    xml.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites name=\"bench\">\n<testsuite name=\"bench\" time=\"123.4\">\n");
    for case_idx in 0..n_cases {
        let _ = write!(
            xml,
            "<testcase classname=\"bench.module_{:03}\" name=\"test_case_{case_idx:06}\" time=\"0.0012\"",
            case_idx % 100
        );
        if case_idx % 7 == 0 {
            let _ = writeln!(
                xml,
                "><failure message=\"assertion failed: left == right (case {case_idx})\">at bench/module.rs:{case_idx}\nleft: 1\nright: 2</failure></testcase>"
            );
        } else if case_idx % 11 == 0 {
            xml.push_str("><skipped message=\"not on this platform\"/></testcase>\n");
        } else {
            xml.push_str("/>\n");
        }
    }
    xml.push_str("</testsuite>\n</testsuites>\n");
    xml
}
