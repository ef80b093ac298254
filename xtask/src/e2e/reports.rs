//! The e2e group of test reports: three machines on the private OpenSSH sshd run a suite whose
//! `test_locale` fails on one machine only, and every output says it is platform-specific:
//! the runs' `tests`, `report`'s table and JSON, the merged JUnit (checked as GitLab and
//! Jenkins need it), and the HTML page as Debian's Chromium renders it (`--dump-dom`), with a
//! screenshot kept under the target dir for people to look at. A missing `chromium` is an
//! error, never a skip.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::targets::Target;
use crate::tf::Tf;
use anyhow::{Context as _, Result, bail, ensure};

/// The suite: `test_locale` fails where the remote root is `remote-m2`, `test_slow` is
/// skipped, `test_adds` passes.
const SCRIPT: &str = r#"#!/bin/sh
mkdir -p artifacts/reports
locale=''
case "$PWD" in
  */remote-m2/*) locale='<failure message="expected UTF-8, got C">LANG=C: assertion failed: utf8</failure>' ;;
esac
cat > artifacts/reports/junit.xml <<EOF
<?xml version="1.0" encoding="UTF-8"?>
<testsuites name="unit">
  <testsuite name="unit" time="0.6">
    <testcase classname="unit.core" name="test_adds" time="0.1"/>
    <testcase classname="unit.core" name="test_locale" time="0.2">$locale</testcase>
    <testcase classname="unit.core" name="test_slow" time="0.3"><skipped message="slow"/></testcase>
  </testsuite>
</testsuites>
EOF
[ -z "$locale" ]
"#;

/// How long Chromium may take for one page.
const CHROMIUM_LIMIT: Duration = Duration::from_secs(90);

/// Runs the group and prints a line per scenario; returns how many ran and the names of those
/// that failed. Fails only when the group cannot start (no sshd, no chromium).
pub fn run_and_print(bin: &Path) -> Result<(usize, Vec<String>)> {
    eprintln!("\n== e2e: test reports, against the OpenSSH sshd");
    let mut failures = Vec::new();
    let results = run(bin)?;
    for (name, result) in &results {
        match result {
            Ok(()) => eprintln!("  ok   {name}"),
            Err(error) => {
                eprintln!("  FAIL {name}: {error:#}");
                failures.push(format!("test reports: {name}"));
            }
        }
    }
    Ok((results.len(), failures))
}

/// The scenarios of the group, each a name and its result.
fn run(bin: &Path) -> Result<Vec<(&'static str, Result<()>)>> {
    let chromium = find_chromium()?;
    let target = Target::sshd(3)?;
    let fleet = target.write_fleet("fleet.toml", |_| {})?;
    let tf = Tf {
        bin: bin.to_path_buf(),
        fleet,
        state_dir: target.scratch().join("state"),
    };
    let work = target.scratch().join("work");
    std::fs::create_dir_all(&work)?;
    let out_dir = crate::target_dir().join("e2e-report");
    std::fs::create_dir_all(&out_dir)?;
    let group = Group {
        tf,
        work,
        out_dir,
        chromium,
    };
    let fan_out = group.fan_out();
    let mut results: Vec<(&'static str, Result<()>)> = Vec::new();
    match fan_out {
        Ok(ids) => {
            results.push(("a failure on one machine of three: the runs' tests", Ok(())));
            results.push((
                "report table and JSON flag it platform-specific",
                group.matrix(&ids),
            ));
            results.push((
                "merged JUnit: a testsuite per machine, accepted by GitLab/Jenkins",
                group.junit(&ids),
            ));
            results.push((
                "HTML report rendered by Chromium shows it",
                group.html(&ids),
            ));
        }
        Err(error) => results.push((
            "a failure on one machine of three: the runs' tests",
            Err(error),
        )),
    }
    Ok(results)
}

struct Group {
    tf: Tf,
    work: PathBuf,
    /// Under the target dir: the page and its screenshot stay for people to look at.
    out_dir: PathBuf,
    chromium: PathBuf,
}

impl Group {
    /// The fan-out; returns the run ids, m1 to m3.
    fn fan_out(&self) -> Result<Vec<String>> {
        let dir = self.work.join("junit-suite");
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("run.sh"), SCRIPT)?;
        let page = self.out_dir.join("run-report.html");
        let dir_text = dir.to_str().context("scratch paths are UTF-8")?;
        let page_text = page.to_str().context("target paths are UTF-8")?;
        let call = self.tf.call(&[
            "run", dir_text, "-m", "m1", "-m", "m2", "-m", "m3", "--json", "--report", page_text,
        ])?;
        let data = call.expect_code(1)?.data()?;
        ensure!(
            data["report"] == page_text,
            "run --report: {}",
            data["report"]
        );
        ensure!(page.is_file(), "run --report wrote no page");
        let runs = data["runs"].as_array().context("runs")?;
        ensure!(runs.len() == 3, "{data}");
        let mut ids = Vec::new();
        for (run, (machine, status, failed)) in runs.iter().zip([
            ("m1", "completed", 0),
            ("m2", "failed", 1),
            ("m3", "completed", 0),
        ]) {
            ensure!(
                run["machine"] == machine && run["status"] == status,
                "{run}"
            );
            let tests = &run["tests"];
            ensure!(
                tests["total"] == 3
                    && tests["passed"] == 2 - failed
                    && tests["failed"] == failed
                    && tests["skipped"] == 1,
                "{machine}: {tests}"
            );
            ids.push(run["id"].as_str().context("id")?.to_owned());
        }
        ensure!(
            runs[1]["tests"]["failures"][0]["name"] == "test_locale"
                && runs[1]["tests"]["failures"][0]["message"] == "expected UTF-8, got C",
            "{}",
            runs[1]["tests"]
        );
        // The human summary says it too.
        let human = self.tf.call(&["status", &ids[1]])?;
        ensure!(
            human.stdout.contains("1 passed, 1 failed, 1 skipped")
                && human
                    .stdout
                    .contains("failed unit.core::test_locale: expected UTF-8, got C"),
            "{}",
            human.stdout
        );
        Ok(ids)
    }

    fn report_args<'a>(ids: &'a [String], extra: &[&'a str]) -> Vec<&'a str> {
        let mut args = vec!["report"];
        args.extend(ids.iter().map(String::as_str));
        args.extend_from_slice(extra);
        args
    }

    fn matrix(&self, ids: &[String]) -> Result<()> {
        let table = self.tf.call(&Self::report_args(ids, &[]))?;
        table.expect_code(0)?;
        ensure!(
            table.stdout.contains(
                "3 cases on 3 machines: 1 failing, 1 platform-specific, 0 failing everywhere"
            ) && table
                .stdout
                .lines()
                .any(|line| line.starts_with("unit.core::test_locale")
                    && line.split_whitespace().collect::<Vec<_>>()
                        == [
                            "unit.core::test_locale",
                            "pass",
                            "FAIL",
                            "pass",
                            "platform-specific"
                        ]),
            "{}",
            table.stdout
        );
        let data = self
            .tf
            .call(&Self::report_args(ids, &["--json"]))?
            .expect_code(0)?
            .data()?;
        ensure!(
            data["summary"]["platform_specific"] == 1,
            "{}",
            data["summary"]
        );
        let locale = data["cases"]
            .as_array()
            .context("cases")?
            .iter()
            .find(|case| case["label"] == "unit.core::test_locale")
            .context("test_locale is a case")?;
        ensure!(locale["platform_specific"] == true, "{locale}");
        ensure!(locale["failed_on"] == serde_json::json!(["m2"]), "{locale}");
        for (machine, status) in [("m1", "passed"), ("m2", "failed"), ("m3", "passed")] {
            ensure!(
                locale["results"][machine]["status"] == status,
                "{machine}: {locale}"
            );
        }
        Ok(())
    }

    fn junit(&self, ids: &[String]) -> Result<()> {
        let path = self.out_dir.join("merged.xml");
        let path_text = path.to_str().context("target paths are UTF-8")?;
        self.tf
            .call(&Self::report_args(ids, &["--junit", path_text, "--json"]))?
            .expect_code(0)?;
        let xml = std::fs::read_to_string(&path)?;
        let checked = testfleet_results::merged::check(&xml)
            .map_err(|problems| anyhow::anyhow!("GitLab/Jenkins would refuse it: {problems:?}"))?;
        ensure!(checked.suites == ["m1", "m2", "m3"], "{checked:?}");
        ensure!(
            checked.cases == 9 && checked.failures == 1 && checked.skipped == 3,
            "{checked:?}"
        );
        // The one failure is m2's test_locale, under m2's suite.
        let m2 = xml
            .split("<testsuite ")
            .find(|suite| suite.starts_with("name=\"m2\""))
            .context("m2's testsuite")?;
        ensure!(
            m2.contains(r#"<testcase name="test_locale" classname="m2.unit.core""#)
                && m2.contains(r#"<failure message="expected UTF-8, got C">"#),
            "{m2}"
        );
        ensure!(xml.matches("<failure").count() == 1, "{xml}");
        Ok(())
    }

    fn html(&self, ids: &[String]) -> Result<()> {
        let page = self.out_dir.join("report.html");
        let page_text = page.to_str().context("target paths are UTF-8")?;
        self.tf
            .call(&Self::report_args(ids, &["--html", page_text, "--json"]))?
            .expect_code(0)?;
        let url = format!("file://{page_text}");
        let dom = self.chromium(&["--dump-dom", &url])?;
        ensure!(
            dom.contains("<h1>testfleet report</h1>"),
            "not the page: {dom:.400}"
        );
        ensure!(
            dom.contains(r#"data-cases="3" data-failing="1" data-platform-specific="1" data-failing-everywhere="0""#),
            "summary counts"
        );
        for (machine, run, status, passed, failed) in [
            ("m1", &ids[0], "completed", 2, 0),
            ("m2", &ids[1], "failed", 1, 1),
            ("m3", &ids[2], "completed", 2, 0),
        ] {
            let card = format!(
                r#"<div class="machine" data-machine="{machine}" data-run="{run}" data-status="{status}" data-total="3" data-passed="{passed}" data-failed="{failed}" data-errors="0" data-skipped="1">"#
            );
            ensure!(
                dom.contains(&card),
                "{machine}'s card is missing or its counts are wrong"
            );
        }
        let row_start = dom
            .find(r#"<tr data-case="unit.core::test_locale" data-platform-specific="true" data-failed-on="m2">"#)
            .context("test_locale's row, flagged platform-specific")?;
        let row = &dom[row_start..];
        let row = &row[..row.find("</tr>").context("the row ends")?];
        ensure!(row.contains("platform-specific</span>"), "the badge: {row}");
        for (machine, status, text) in [
            ("m1", "passed", "✓ passed"),
            ("m2", "failed", "✗ failed"),
            ("m3", "passed", "✓ passed"),
        ] {
            ensure!(
                row.contains(&format!(
                    r#"data-machine="{machine}" data-status="{status}""#
                )) && row.contains(text),
                "{machine} in {row}"
            );
        }
        ensure!(
            dom.matches(r#"<details class="failure""#).count() == 1
                && dom.contains(r#"<details class="failure" data-case="unit.core::test_locale" data-machine="m2" data-status="failed">"#)
                && dom.contains("LANG=C: assertion failed: utf8"),
            "the folded failure"
        );
        for machine in ["m1", "m2", "m3"] {
            ensure!(
                dom.contains(&format!(
                    r#"data-machine="{machine}" data-kind="tests" data-ms="600""#
                )),
                "{machine}'s duration bar"
            );
        }
        let screenshot = self.out_dir.join("report.png");
        let shot_arg = format!("--screenshot={}", screenshot.display());
        self.chromium(&[
            "--window-size=1280,1400",
            "--hide-scrollbars",
            &shot_arg,
            &url,
        ])?;
        let png = std::fs::read(&screenshot)
            .with_context(|| format!("no screenshot at {}", screenshot.display()))?;
        ensure!(
            png.starts_with(b"\x89PNG") && png.len() > 10_000,
            "a blank or broken screenshot"
        );
        eprintln!(
            "       report page and screenshot: {} {}",
            page.display(),
            screenshot.display()
        );
        Ok(())
    }

    /// Runs headless Chromium with the flags this closed network needs, in a process group of
    /// its own that is killed whole afterwards (or at the deadline), and returns its stdout.
    fn chromium(&self, args: &[&str]) -> Result<String> {
        use std::os::unix::process::CommandExt as _;
        let profile = tempfile::tempdir_in(&self.work)?;
        let mut command = Command::new(&self.chromium);
        command
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(profile.path().join("chromium.log"))?)
            .process_group(0);
        let mut child = command.spawn().context("failed to start chromium")?;
        let pgid = child.id();
        let stdout = child.stdout.take().context("chromium's stdout")?;
        let reader = std::thread::spawn(move || std::io::read_to_string(stdout));
        let deadline = Instant::now() + CHROMIUM_LIMIT;
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break Some(status);
            }
            if Instant::now() > deadline {
                break None;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        // Whatever happened, no process of the group outlives this call.
        kill_group(pgid);
        let _ = child.wait();
        let Some(status) = status else {
            bail!("chromium did not finish within {CHROMIUM_LIMIT:?}");
        };
        let stdout = reader
            .join()
            .map_err(|_| anyhow::anyhow!("the stdout reader panicked"))??;
        if !status.success() {
            let log =
                std::fs::read_to_string(profile.path().join("chromium.log")).unwrap_or_default();
            bail!("chromium failed ({status}): {log}");
        }
        Ok(stdout)
    }
}

/// SIGKILL to every process of the group `pgid`, if any is left.
fn kill_group(pgid: u32) {
    let _ = Command::new("kill")
        .arg("-KILL")
        .arg("--")
        .arg(format!("-{pgid}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Debian's `chromium`; `.ci/run` installs it when it is missing.
fn find_chromium() -> Result<PathBuf> {
    for candidate in ["/usr/bin/chromium", "/usr/bin/chromium-browser"] {
        if Path::new(candidate).is_file() {
            return Ok(PathBuf::from(candidate));
        }
    }
    if let Ok(output) = Command::new("sh")
        .arg("-c")
        .arg("command -v chromium")
        .output()
        && output.status.success()
    {
        let path = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        if !path.is_empty() {
            return Ok(PathBuf::from(path));
        }
    }
    bail!("chromium is missing: install it with `apt-get install -y chromium` (.ci/run does)")
}
