//! `cargo xtask e2e`, shared store: two controllers (two state dirs, two controller ids) on one
//! private PostgreSQL cluster, dispatching to one private OpenSSH sshd. A missing PostgreSQL
//! or sshd is an error, never a skip.

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use serde_json::Value;
use testfleet_testkit::postgres::PrivateCluster;
use testfleet_testkit::process::tree_script;

use super::{all_dead, kill_recorded};

use crate::targets::Target;
use crate::tf::{Call, Tf};

/// The lease of the fleet file most scenarios use: short, so that a lost owner is reaped soon.
const LEASE: &str = "3s";
const HEARTBEAT: &str = "500ms";

/// One controller: its own state dir and controller id, the shared fleet file.
struct Controller {
    tf: Tf,
    id: &'static str,
}

impl Controller {
    fn command(&self, args: &[&str]) -> std::process::Command {
        let mut command = self.tf.command(args);
        command.env("TESTFLEET_CONTROLLER_ID", self.id);
        command.env_remove("TESTFLEET_STORE_URL");
        command
    }

    fn call(&self, args: &[&str]) -> Result<Call> {
        let output = self
            .command(args)
            .output()
            .with_context(|| format!("failed to start testfleet {args:?}"))?;
        Ok(call_of(output))
    }

    /// Starts `args` without waiting.
    fn spawn(&self, args: &[&str]) -> Result<Child> {
        self.command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("failed to start testfleet {args:?}"))
    }

    fn status(&self, id: &str) -> Result<Value> {
        Ok(self
            .call(&["status", id, "--json"])?
            .expect_code(0)?
            .data()?["run"]
            .clone())
    }

    fn wait_until(
        &self,
        id: &str,
        limit: Duration,
        check: impl Fn(&Value) -> bool,
    ) -> Result<Value> {
        let deadline = Instant::now() + limit;
        loop {
            let run = self.status(id)?;
            if check(&run) {
                return Ok(run);
            }
            if Instant::now() > deadline {
                bail!("run {id} did not get there within {limit:?}: {run}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn with_fleet(&self, fleet: &Path) -> Self {
        Self {
            tf: self.tf.with_fleet(fleet),
            id: self.id,
        }
    }
}

fn call_of(output: std::process::Output) -> Call {
    Call {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Everything a scenario needs.
struct Shared<'a> {
    a: Controller,
    b: Controller,
    cluster: &'a mut PrivateCluster,
    work: PathBuf,
    /// A fleet file whose lease outlasts a server restart.
    long_lease_fleet: PathBuf,
    /// A fleet file whose two machines share the label `ci`.
    queue_fleet: PathBuf,
    machine: String,
}

type Scenario = fn(&mut Shared<'_>) -> Result<()>;

const SCENARIOS: &[(&str, Scenario)] = &[
    (
        "16 concurrent runs of different directories: one runs, 15 MACHINE_BUSY",
        busy,
    ),
    (
        "the same directory from both controllers is one run",
        same_dir,
    ),
    (
        "B lists and waits for A's run; logs stay on A",
        list_and_wait,
    ),
    (
        "a killed worker of A is reaped by B only once its lease expired",
        lease_expiry,
    ),
    ("B cancels A's run through the store", cancel_across),
    (
        "-l ci --any --wait from both controllers: 5 runs on 2 machines, in queue order",
        any_wait_across,
    ),
    (
        "a SIGKILLed waiter of A keeps its place until its lease ran out, then B's waiter runs",
        killed_waiter,
    ),
    (
        "PostgreSQL restarted mid-run: the run still completes",
        restart,
    ),
];

/// Runs the shared-store scenarios; returns the names of those that failed and how many ran.
pub fn run(bin: &Path) -> Result<(usize, Vec<String>)> {
    let mut cluster = PrivateCluster::start().context("failed to start PostgreSQL")?;
    cluster
        .create_database("fleet")
        .context("failed to create the fleet database")?;
    // Two machines on the one sshd: the queue scenario shares both, the others use the first.
    let target = Target::sshd(2)?;
    let url = cluster.url(testfleet_testkit::postgres::SUPERUSER, "fleet");
    let fleet = with_store(
        &target.write_fleet("fleet.toml", |_| {})?,
        &url,
        LEASE,
        HEARTBEAT,
    )?;
    let long_lease_fleet = with_store(
        &target.write_fleet("fleet-long-lease.toml", |_| {})?,
        &url,
        "20s",
        "500ms",
    )?;
    let queue_fleet = with_store(
        &target.write_fleet("fleet-queue.toml", |machine| {
            machine.labels.push(super::queue::LABEL.to_owned());
        })?,
        &url,
        LEASE,
        HEARTBEAT,
    )?;
    let work = target.scratch().join("work-shared");
    std::fs::create_dir_all(&work)?;
    // The scripts, which run as the login, write their pid records there.
    target.open_to_login(&work, 0o1777)?;
    let controller = |id: &'static str| Controller {
        tf: Tf {
            bin: bin.to_path_buf(),
            fleet: fleet.clone(),
            state_dir: target.scratch().join(format!("state-{id}")),
        },
        id,
    };
    let mut shared = Shared {
        a: controller("ctl-a"),
        b: controller("ctl-b"),
        cluster: &mut cluster,
        work,
        long_lease_fleet,
        queue_fleet,
        machine: target.machines[0].name.clone(),
    };
    eprintln!("\n== e2e with two controllers on one PostgreSQL and one OpenSSH sshd");
    let mut failures = Vec::new();
    for (name, scenario) in SCENARIOS {
        let started = Instant::now();
        match scenario(&mut shared) {
            Ok(()) => eprintln!("  ok   {name} ({:.1?})", started.elapsed()),
            Err(error) => {
                eprintln!("  FAIL {name}: {error:#}");
                failures.push(format!("shared store: {name}"));
            }
        }
    }
    Ok((SCENARIOS.len(), failures))
}

/// `fleet` with a `[store]` table appended.
fn with_store(fleet: &Path, url: &str, lease: &str, heartbeat: &str) -> Result<PathBuf> {
    let mut text = std::fs::read_to_string(fleet)?;
    text.push_str(&format!(
        "\n[store]\nurl = \"{url}\"\nlease = \"{lease}\"\nheartbeat = \"{heartbeat}\"\n"
    ));
    std::fs::write(fleet, text)?;
    Ok(fleet.to_path_buf())
}

impl Shared<'_> {
    fn test_dir(&self, name: &str, script: &str) -> Result<PathBuf> {
        crate::targets::fresh_test_dir(&self.work.join(name), script)
    }

    fn pid_record(&self, name: &str) -> PathBuf {
        self.work.join(format!("{name}.pids"))
    }

    fn runs_on_machine(&self) -> Result<Vec<Value>> {
        let data = self
            .b
            .call(&["list", "-m", &self.machine, "--limit", "1000", "--json"])?
            .expect_code(0)?
            .data()?;
        Ok(data["runs"].as_array().cloned().unwrap_or_default())
    }

    fn detach(&self, controller: &Controller, dir: &Path) -> Result<String> {
        let dir = dir.to_str().context("scratch paths are UTF-8")?;
        let data = controller
            .call(&["run", dir, "-m", &self.machine, "--detach", "--json"])?
            .expect_code(0)?
            .data()?;
        Ok(text(&data["runs"][0], "/id"))
    }
}

fn text(value: &Value, pointer: &str) -> String {
    value
        .pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

fn busy(ctx: &mut Shared<'_>) -> Result<()> {
    let before = ctx.runs_on_machine()?.len();
    let mut children = Vec::new();
    for idx in 0..16 {
        // Different contents, so different hashes: one wins, the others are refused.
        let dir = ctx.test_dir(&format!("busy-{idx}"), &format!("# {idx}\nsleep 4\n"))?;
        let controller = if idx % 2 == 0 { &ctx.a } else { &ctx.b };
        let dir = dir.to_str().context("UTF-8")?.to_owned();
        children.push(controller.spawn(&["run", &dir, "-m", &ctx.machine, "--json"])?);
    }
    let mut completed = Vec::new();
    let mut refused = Vec::new();
    for child in children {
        let call = call_of(child.wait_with_output()?);
        match call.code {
            Some(0) => completed.push(call.data()?["runs"][0].clone()),
            Some(2) => {
                ensure!(call.error_code()? == "MACHINE_BUSY", "{}", call.stdout);
                refused.push(call.json()?["error"]["details"]["active_run"].clone());
            }
            other => bail!("unexpected exit {other:?}: {}{}", call.stdout, call.stderr),
        }
    }
    ensure!(completed.len() == 1, "exactly one run ran: {completed:?}");
    ensure!(
        refused.len() == 15,
        "every other got MACHINE_BUSY: {refused:?}"
    );
    let winner = text(&completed[0], "/id");
    ensure!(
        text(&completed[0], "/status") == "completed",
        "{}",
        completed[0]
    );
    ensure!(
        refused
            .iter()
            .all(|active| active.as_str() == Some(winner.as_str())),
        "every refusal names the winner {winner}: {refused:?}"
    );
    let after = ctx.runs_on_machine()?.len();
    ensure!(
        after == before + 1,
        "one run was recorded: {before} then {after}"
    );
    Ok(())
}

fn same_dir(ctx: &mut Shared<'_>) -> Result<()> {
    let dir = ctx.test_dir("same", "sleep 3\necho same\n")?;
    let dir = dir.to_str().context("UTF-8")?.to_owned();
    let before = ctx.runs_on_machine()?.len();
    let args = ["run", dir.as_str(), "-m", ctx.machine.as_str(), "--json"];
    let from_a = ctx.a.spawn(&args)?;
    let from_b = ctx.b.spawn(&args)?;
    let mut runs = Vec::new();
    for child in [from_a, from_b] {
        let call = call_of(child.wait_with_output()?);
        call.expect_code(0)?;
        runs.push(call.data()?["runs"][0].clone());
    }
    let ids: Vec<String> = runs.iter().map(|run| text(run, "/id")).collect();
    ensure!(ids[0] == ids[1], "one run id: {ids:?}");
    let reused: Vec<bool> = runs.iter().map(|run| run["reused"] == true).collect();
    ensure!(
        reused.iter().filter(|r| **r).count() == 1,
        "one created it, the other reused it: {runs:?}"
    );
    ensure!(
        runs.iter().all(|run| text(run, "/status") == "completed"),
        "{runs:?}"
    );
    ensure!(
        ctx.runs_on_machine()?.len() == before + 1,
        "one run recorded"
    );
    Ok(())
}

fn list_and_wait(ctx: &mut Shared<'_>) -> Result<()> {
    let dir = ctx.test_dir("listed", "sleep 2\necho from-a\n")?;
    let id = ctx.detach(&ctx.a, &dir)?;
    let listed = ctx.runs_on_machine()?;
    let seen = listed
        .iter()
        .find(|run| text(run, "/id") == id)
        .with_context(|| format!("B's list shows A's run {id}"))?;
    ensure!(text(seen, "/controller") == "ctl-a", "{seen}");
    let waited = ctx.b.call(&["wait", &id, "--timeout", "60s", "--json"])?;
    waited.expect_code(0)?;
    let run = waited.data()?["runs"][0].clone();
    ensure!(text(&run, "/status") == "completed", "{run}");
    // The logs stay on A: B is told where they are; A reads them.
    let from_b = ctx.b.call(&["logs", &id, "--json"])?;
    from_b.expect_code(2)?;
    ensure!(
        from_b.error_code()? == "LOGS_ON_OTHER_CONTROLLER",
        "{}",
        from_b.stdout
    );
    let details = from_b.json()?["error"]["details"].clone();
    ensure!(text(&details, "/controller") == "ctl-a", "{details}");
    ensure!(
        text(&details, "/path") == text(&run, "/paths/stdout"),
        "{details} {run}"
    );
    let from_a = ctx.a.call(&["logs", &id, "--json"])?;
    from_a.expect_code(0)?;
    ensure!(
        text(&from_a.data()?, "/content") == "from-a\n",
        "{}",
        from_a.stdout
    );
    Ok(())
}

fn lease_expiry(ctx: &mut Shared<'_>) -> Result<()> {
    let record = ctx.pid_record("lease");
    let dir = ctx.test_dir("lease", &tree_script(&record, 60))?;
    let outcome = (|| {
        let id = ctx.detach(&ctx.a, &dir)?;
        let running = ctx
            .b
            .wait_until(&id, Duration::from_secs(30), |r| r["status"] == "running")?;
        let worker = running["worker_pid"]
            .as_u64()
            .context("a running detached run has a worker pid")?;
        std::process::Command::new("kill")
            .arg("-9")
            .arg(worker.to_string())
            .status()?;
        let killed_at = Instant::now();
        // Not before the lease expired: B cannot see A's processes, so the run stays running
        // until its lease (renewed every 500 ms, 3 s long) runs out.
        let mut seen_running_after_kill = 0;
        let mut last_lease = String::new();
        let lost = loop {
            let run = ctx.b.status(&id)?;
            if run["status"] != "running" {
                break run;
            }
            seen_running_after_kill += 1;
            last_lease = text(&run, "/lease_expires_at");
            ensure!(
                killed_at.elapsed() < Duration::from_secs(30),
                "never reaped: {run}"
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        let lease_ran_out = killed_at.elapsed();
        ensure!(
            seen_running_after_kill >= 5,
            "B saw the run still running after the kill only {seen_running_after_kill} time(s)"
        );
        ensure!(
            lease_ran_out >= Duration::from_millis(1_500),
            "reaped {lease_ran_out:?} after the kill, before the lease could expire"
        );
        // The reaper ended it at or after the end of the last lease it saw (RFC 3339 UTC with
        // milliseconds compares as text; both clocks are this host's).
        let finished = text(&lost, "/finished_at");
        ensure!(
            !last_lease.is_empty() && finished >= last_lease,
            "reaped at {finished}, before the lease ran out at {last_lease}"
        );
        // After: WORKER_LOST for the lease, the machine free.
        ensure!(text(&lost, "/status") == "interrupted", "{lost}");
        ensure!(text(&lost, "/error/code") == "WORKER_LOST", "{lost}");
        ensure!(text(&lost, "/error/message").contains("lease"), "{lost}");
        let events = ctx.b.call(&["status", &id, "--json"])?.data()?["events"].clone();
        let last = events
            .as_array()
            .and_then(|events| events.last())
            .cloned()
            .unwrap_or_default();
        ensure!(text(&last, "/code") == "WORKER_LOST", "{events}");
        let free = ctx.test_dir("lease-after", "echo free\n")?;
        let free = free.to_str().context("UTF-8")?;
        let call = ctx.b.call(&["run", free, "-m", &ctx.machine, "--json"])?;
        call.expect_code(0)?;
        Ok(())
    })();
    kill_recorded(&record);
    outcome
}

fn cancel_across(ctx: &mut Shared<'_>) -> Result<()> {
    let record = ctx.pid_record("cancel");
    let dir = ctx.test_dir(
        "cancel",
        &format!(
            "mkdir -p artifacts\necho partial > artifacts/partial.txt\n{}",
            tree_script(&record, 60)
        ),
    )?;
    let outcome = (|| {
        let id = ctx.detach(&ctx.a, &dir)?;
        ctx.b
            .wait_until(&id, Duration::from_secs(30), |r| r["status"] == "running")?;
        let started = Instant::now();
        let call = ctx.b.call(&["cancel", &id, "--json"])?;
        call.expect_code(0)?;
        let run = call.data()?["run"].clone();
        ensure!(text(&run, "/status") == "interrupted", "{run}");
        ensure!(text(&run, "/error/code") == "INTERRUPTED", "{run}");
        ensure!(!text(&run, "/cancel_requested_at").is_empty(), "{run}");
        ensure!(
            run["artifacts"]["files"] == 1,
            "the artifacts were fetched on A: {run}"
        );
        ensure!(
            started.elapsed() < Duration::from_secs(30),
            "cancelled in time"
        );
        all_dead(&record, Duration::from_secs(15))
    })();
    kill_recorded(&record);
    outcome
}

fn restart(ctx: &mut Shared<'_>) -> Result<()> {
    let a = ctx.a.with_fleet(&ctx.long_lease_fleet);
    let b = ctx.b.with_fleet(&ctx.long_lease_fleet);
    let before = ctx.runs_on_machine()?.len();
    let dir = ctx.test_dir("restart", "sleep 5\necho survived\n")?;
    let id = ctx.detach(&a, &dir)?;
    b.wait_until(&id, Duration::from_secs(30), |r| r["status"] == "running")?;
    ctx.cluster.stop();
    std::thread::sleep(Duration::from_secs(2));
    ctx.cluster.start_again().context("PostgreSQL restarts")?;
    let waited = b.call(&["wait", &id, "--timeout", "90s", "--json"])?;
    waited.expect_code(0)?;
    let run = waited.data()?["runs"][0].clone();
    ensure!(text(&run, "/status") == "completed", "{run}");
    let events = b.call(&["status", &id, "--json"])?.data()?["events"].clone();
    let trail: Vec<String> = events
        .as_array()
        .map(|events| events.iter().map(|e| text(e, "/to")).collect())
        .unwrap_or_default();
    ensure!(trail == ["pending", "running", "completed"], "{trail:?}");
    let logs = a.call(&["logs", &id, "--json"])?;
    ensure!(
        text(&logs.data()?, "/content") == "survived\n",
        "{}",
        logs.stdout
    );
    ensure!(ctx.runs_on_machine()?.len() == before + 1, "nothing lost");
    Ok(())
}

/// Five `-l ci --any --wait` runs, alternately from A and B: the queue is one across both
/// controllers (super::queue::check_five).
fn any_wait_across(ctx: &mut Shared<'_>) -> Result<()> {
    use super::queue::{LABEL, RUNS, check_five, script};
    let (a, b) = (
        ctx.a.with_fleet(&ctx.queue_fleet),
        ctx.b.with_fleet(&ctx.queue_fleet),
    );
    let log = ctx.work.join("queue-across.log");
    if log.exists() {
        std::fs::remove_file(&log)?;
    }
    let mut ids = Vec::new();
    for idx in 0..RUNS {
        let dir = ctx.test_dir(&format!("queue-across-{idx}"), &script(idx, &log))?;
        let dir = dir.to_str().context("UTF-8")?;
        let controller = if idx % 2 == 0 { &a } else { &b };
        let data = controller
            .call(&[
                "run", dir, "-l", LABEL, "--any", "--wait", "--detach", "--json",
            ])?
            .expect_code(0)?
            .data()?;
        ids.push(text(&data["runs"][0], "/id"));
    }
    let mut runs = Vec::new();
    for id in &ids {
        runs.push(b.wait_until(id, Duration::from_secs(120), |run| {
            run["status"] != "queued" && run["status"] != "pending" && run["status"] != "running"
        })?);
    }
    check_five(&runs, &log)
}

/// A foreground `run --wait` of A is SIGKILLed while it waits behind a holder, with a waiter of
/// B behind it. Once the holder ends, B's waiter stays queued while the dead waiter's lease
/// holds, then is granted the machine and completes; the dead one is reaped `WORKER_LOST`.
fn killed_waiter(ctx: &mut Shared<'_>) -> Result<()> {
    let marker = ctx.work.join("killed-waiter-release");
    if marker.exists() {
        std::fs::remove_file(&marker)?;
    }
    let holder_dir = ctx.test_dir(
        "killed-waiter-holder",
        &format!(
            "while [ ! -e '{}' ]; do sleep 0.05; done\n",
            marker.display()
        ),
    )?;
    let holder = ctx.detach(&ctx.a, &holder_dir)?;
    ctx.b.wait_until(&holder, Duration::from_secs(30), |r| {
        r["status"] == "running"
    })?;
    let dead_dir = ctx.test_dir("killed-waiter-dead", "echo never\n")?;
    let mut dead = ctx.a.spawn(&[
        "run",
        dead_dir.to_str().context("UTF-8")?,
        "-m",
        &ctx.machine,
        "--wait",
        "--json",
    ])?;
    let queued = |ctx: &Shared<'_>| -> Result<Vec<String>> {
        let data = ctx
            .b
            .call(&["list", "--status", "queued", "--json"])?
            .expect_code(0)?
            .data()?;
        Ok(data["runs"]
            .as_array()
            .map(|runs| runs.iter().map(|run| text(run, "/id")).collect())
            .unwrap_or_default())
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let dead_id = loop {
        if let Some(id) = queued(ctx)?.into_iter().next() {
            break id;
        }
        ensure!(Instant::now() < deadline, "A's waiter never queued");
        std::thread::sleep(Duration::from_millis(50));
    };
    let alive_dir = ctx.test_dir("killed-waiter-alive", "echo granted after all\n")?;
    let alive = ctx
        .b
        .call(&[
            "run",
            alive_dir.to_str().context("UTF-8")?,
            "-m",
            &ctx.machine,
            "--wait",
            "--detach",
            "--json",
        ])?
        .expect_code(0)?
        .data()?;
    ensure!(text(&alive["runs"][0], "/status") == "queued", "{alive}");
    let alive_id = text(&alive["runs"][0], "/id");
    dead.kill()?;
    let killed_at = Instant::now();
    dead.wait()?;
    std::fs::write(&marker, "")?;
    ctx.b.wait_until(&holder, Duration::from_secs(30), |r| {
        r["status"] == "completed"
    })?;
    // The dead waiter's lease (3 s, renewed every 500 ms) still holds: B's waiter must wait.
    let still = ctx.b.status(&alive_id)?;
    if killed_at.elapsed() < Duration::from_millis(2_000) {
        ensure!(
            text(&still, "/status") == "queued",
            "granted {:?} after the kill, before the dead waiter's lease ran out: {still}",
            killed_at.elapsed()
        );
    }
    let done = ctx.b.wait_until(&alive_id, Duration::from_secs(60), |r| {
        r["status"] == "completed"
    })?;
    ensure!(
        killed_at.elapsed() >= Duration::from_millis(2_000),
        "B's waiter completed {:?} after the kill, before the lease could run out: {done}",
        killed_at.elapsed()
    );
    let lost = ctx.b.wait_until(&dead_id, Duration::from_secs(30), |r| {
        r["status"] == "interrupted"
    })?;
    ensure!(text(&lost, "/error/code") == "WORKER_LOST", "{lost}");
    Ok(())
}
