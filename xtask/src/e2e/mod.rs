//! `cargo xtask e2e`: the release binary against the in-process testkit server and against a
//! real OpenSSH sshd, scenario by scenario. A missing sshd is an error, never a skip.
//!
//! Against sshd the runs log in as an account that file permissions apply to (a dedicated one
//! when this runs as root), and after every scenario nothing of that account may still run on
//! the host.

mod basics;
mod cache;
pub mod jump;
mod queue;
pub mod reports;
pub mod shared;
mod survive;

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use serde_json::Value;

use testfleet_testkit::process::{is_alive, kill_pid, processes_of, read_pids, survivors_after};

use crate::targets::{Backend, Target};
use crate::tf::{Call, Tf};

/// Everything a scenario needs.
struct Ctx<'a> {
    target: &'a Target,
    backend: Backend,
    tf: Tf,
    /// Where scenarios create their test directories and pid records (writable by the login).
    work: PathBuf,
}

/// One scenario, and the backend it needs when it cannot run against both.
struct Scenario {
    name: &'static str,
    run: fn(&Ctx<'_>) -> Result<()>,
    only: Option<Backend>,
}

impl Scenario {
    const fn both(name: &'static str, run: fn(&Ctx<'_>) -> Result<()>) -> Self {
        Self {
            name,
            run,
            only: None,
        }
    }

    const fn sshd(name: &'static str, run: fn(&Ctx<'_>) -> Result<()>) -> Self {
        Self {
            name,
            run,
            only: Some(Backend::Sshd),
        }
    }
}

/// How long the login may take to have nothing left running after a scenario.
const LEFTOVER_LIMIT: Duration = Duration::from_secs(20);

pub fn run(bin: &Path) -> Result<()> {
    let runtime = tokio::runtime::Runtime::new().context("failed to start a tokio runtime")?;
    // `E2E_ONLY=text` runs just the scenarios whose name holds the text.
    let only = std::env::var("E2E_ONLY")
        .ok()
        .filter(|text| !text.is_empty());
    let mut failures = Vec::new();
    let mut passed = 0;
    let started = Instant::now();
    for backend in [Backend::Testkit, Backend::Sshd] {
        let target = match backend {
            Backend::Testkit => Target::testkit(&runtime, 3)?,
            Backend::Sshd => Target::sshd(3)?,
        };
        let fleet = target.write_fleet("fleet.toml", |_| {})?;
        let work = target.scratch().join("work");
        std::fs::create_dir_all(&work)?;
        target.open_to_login(&work, 0o1777)?;
        let ctx = Ctx {
            target: &target,
            backend,
            tf: Tf {
                bin: bin.to_path_buf(),
                fleet,
                state_dir: target.scratch().join("state"),
            },
            work,
        };
        eprintln!("\n== e2e against the {}", backend.name());
        if let Some(user) = target.dedicated_login() {
            eprintln!("   (logging in as {user}, uid {})", target.login_uid);
        }
        let scenarios = basics::SCENARIOS
            .iter()
            .chain(survive::SCENARIOS)
            .chain(queue::SCENARIOS)
            .chain(cache::SCENARIOS)
            .filter(|s| s.only.is_none_or(|only| only == backend))
            .filter(|s| only.as_deref().is_none_or(|only| s.name.contains(only)));
        for scenario in scenarios {
            let scenario_started = Instant::now();
            let outcome = (scenario.run)(&ctx).and_then(|()| ctx.nothing_left_running());
            match outcome {
                Ok(()) => {
                    passed += 1;
                    eprintln!(
                        "  ok   {} ({:.1?})",
                        scenario.name,
                        scenario_started.elapsed()
                    );
                }
                Err(error) => {
                    eprintln!("  FAIL {}: {error:#}", scenario.name);
                    failures.push(format!("{}: {}", backend.name(), scenario.name));
                }
            }
        }
    }
    // A machine behind a jump host: two sshds (jump.rs).
    if only
        .as_deref()
        .is_none_or(|only| "jump host".contains(only))
    {
        let (jump_total, jump_failures) = jump::run(bin)?;
        passed += jump_total - jump_failures.len();
        failures.extend(jump_failures);
    }
    // Two controllers sharing one PostgreSQL store (shared.rs).
    let (shared_total, shared_failures) = shared::run(bin)?;
    passed += shared_total - shared_failures.len();
    failures.extend(shared_failures);
    // Test reports of three machines, read back in Chromium (reports.rs).
    let (report_total, report_failures) = reports::run_and_print(bin)?;
    passed += report_total - report_failures.len();
    failures.extend(report_failures);
    println!("e2e: {passed} passed, {} failed", failures.len());
    eprintln!("e2e finished in {:.1?}", started.elapsed());
    if !failures.is_empty() {
        bail!("e2e scenarios failed:\n  {}", failures.join("\n  "));
    }
    Ok(())
}

// -- helpers ---------------------------------------------------------------------------------

impl Ctx<'_> {
    /// Fails when a process of the dedicated login still runs [`LEFTOVER_LIMIT`] after the
    /// scenario (and kills them, so that the next scenario starts clean). Without a dedicated
    /// login (the testkit server, or sshd run by an unprivileged user) the pid records of each
    /// scenario are the check.
    fn nothing_left_running(&self) -> Result<()> {
        if self.backend != Backend::Sshd || self.target.dedicated_login().is_none() {
            return Ok(());
        }
        let deadline = Instant::now() + LEFTOVER_LIMIT;
        loop {
            let left = processes_of(self.target.login_uid);
            if left.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                for (pid, _) in &left {
                    kill_pid(*pid);
                }
                bail!(
                    "processes of the login were still running {LEFTOVER_LIMIT:?} after the \
                     scenario: {left:?}"
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Creates a fresh test directory `work/<name>` with `run.sh` and extra files.
    fn test_dir(&self, name: &str, script: &str, files: &[(&str, &[u8], u32)]) -> Result<PathBuf> {
        let dir = crate::targets::fresh_test_dir(&self.work.join(name), script)?;
        for (rel, contents, mode) in files {
            let path = dir.join(rel);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            write_file(&path, contents, *mode)?;
        }
        Ok(dir)
    }

    fn machine(&self, idx: usize) -> &str {
        &self.target.machines[idx].name
    }

    /// `run DIR -m MACHINE --json [extra]`, returning the call.
    fn run(&self, dir: &Path, machine: &str, extra: &[&str]) -> Result<Call> {
        self.tf.call(&run_args(dir, machine, extra)?)
    }

    /// Polls `status` until `done` holds for the run, or fails after `limit`.
    fn wait_until(
        &self,
        id: &str,
        limit: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> Result<Value> {
        wait_with(&self.tf, id, limit, done)
    }

    /// A path for pid records, outside every run folder (the run folder is removed).
    fn pid_record(&self, name: &str) -> Result<PathBuf> {
        let path = self.work.join(format!("{name}.pids"));
        if path.exists() {
            std::fs::remove_file(&path)?;
        }
        Ok(path)
    }
}

/// The arguments of `run DIR -m MACHINE --json [extra]`.
fn run_args<'a>(dir: &'a Path, machine: &'a str, extra: &[&'a str]) -> Result<Vec<&'a str>> {
    let dir = dir.to_str().context("scratch paths are UTF-8")?;
    let mut args = vec!["run", dir, "-m", machine, "--json"];
    args.extend_from_slice(extra);
    Ok(args)
}

/// `run DIR -m MACHINE --json [extra]` in the background, its output captured.
fn spawn_run(tf: &Tf, dir: &Path, machine: &str, extra: &[&str]) -> Result<Child> {
    tf.command(&run_args(dir, machine, extra)?)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("failed to start testfleet run")
}

/// Waits up to `limit` for a spawned `run` to exit; kills it and fails after that.
fn finish(mut child: Child, limit: Duration) -> Result<Call> {
    let deadline = Instant::now() + limit;
    while child.try_wait()?.is_none() {
        if Instant::now() > deadline {
            kill_pid(child.id());
            let output = child.wait_with_output()?;
            bail!(
                "testfleet run did not end within {limit:?}; stderr:\n{}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let output = child.wait_with_output()?;
    Ok(Call {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    })
}

/// `status ID` through `tf` (whose fleet file a reaping `status` hands to `_cleanup`).
fn status_with(tf: &Tf, id: &str) -> Result<Value> {
    let call = tf.call(&["status", id, "--json"])?;
    Ok(call.expect_code(0)?.data()?["run"].clone())
}

/// Polls `status` through `tf` until `done` holds for the run, or fails after `limit`.
fn wait_with(tf: &Tf, id: &str, limit: Duration, done: impl Fn(&Value) -> bool) -> Result<Value> {
    let deadline = Instant::now() + limit;
    loop {
        let run = status_with(tf, id)?;
        if done(&run) {
            return Ok(run);
        }
        if Instant::now() > deadline {
            bail!("run {id} did not reach the wanted state within {limit:?}: {run}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, contents)
        .with_context(|| format!("failed to write {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

fn only_run(data: &Value) -> Result<Value> {
    let runs = data["runs"].as_array().context("data.runs is a list")?;
    ensure!(runs.len() == 1, "expected one run, got {}", runs.len());
    Ok(runs[0].clone())
}

fn text(run: &Value, pointer: &str) -> String {
    run.pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

fn path_of(run: &Value, which: &str) -> PathBuf {
    PathBuf::from(text(run, &format!("/paths/{which}")))
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("failed to read {}", path.display()))
}

/// The names in `dir`, sorted; none while it does not exist.
fn names_in(dir: &Path) -> std::collections::BTreeSet<String> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|entry| entry.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Waits until every pid in the record is gone.
pub(crate) fn all_dead(record: &Path, limit: Duration) -> Result<()> {
    let pids = read_pids(record);
    ensure!(
        !pids.is_empty(),
        "the script recorded no pids in {}",
        record.display()
    );
    let survivors = survivors_after(&pids, limit);
    ensure!(
        survivors.is_empty(),
        "processes of the run survived on the host: {survivors:?}"
    );
    Ok(())
}

/// Kills processes a scenario started and left behind on purpose (by pid, never by name).
pub(crate) fn kill_recorded(record: &Path) {
    for pid in read_pids(record).into_iter().filter(|pid| is_alive(*pid)) {
        kill_pid(pid);
    }
}

/// Waits until a pid record holds at least `n` pids.
fn wait_for_pids(record: &Path, n: usize, limit: Duration) -> Result<()> {
    let deadline = Instant::now() + limit;
    while read_pids(record).len() < n {
        if Instant::now() > deadline {
            bail!("the script did not record {n} pids in {}", record.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}
