//! Nothing of a run survives it, whatever broke: a dropped connection, a killed sshd session, a
//! controller killed with SIGKILL, a half-open link under `--timeout` and under `cancel`, a
//! script that escapes with `setsid` and double forks, unreadable artifacts, a connection cut
//! in the middle of the artifact download.
//!
//! Every scenario's script records its pids; each must be gone, the run's remote folder must
//! be removed, and what testfleet found must be in `remote_cleanup`. Broken links come from a
//! [`FaultProxy`] between testfleet and the server; new connections pass it, so testfleet can
//! reconnect to finish the job.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use serde_json::Value;
use testfleet_testkit::process::{ESCAPE_SCRIPT_PIDS, children_of, escape_script, kill_pid};
use testfleet_testkit::proxy::FaultProxy;

use super::{
    Ctx, Scenario, all_dead, finish, kill_recorded, only_run, path_of, spawn_run, text,
    wait_for_pids, wait_with,
};
use crate::tf::{Call, Tf};

pub(super) const SCENARIOS: &[Scenario] = &[
    Scenario::both(
        "a dropped connection kills the remote tree (setsid, double fork, TERM ignored)",
        dropped_connection,
    ),
    Scenario::sshd(
        "a killed sshd session kills the remote tree",
        killed_session,
    ),
    Scenario::both(
        "a foreground run killed with SIGKILL leaves nothing running",
        killed_foreground,
    ),
    Scenario::both(
        "a half-open link: --timeout still ends the run and its tree",
        half_open_timeout,
    ),
    Scenario::both(
        "a half-open link: cancel returns within the kill bound",
        half_open_cancel,
    ),
    Scenario::both(
        "--timeout kills setsid and double-forked processes",
        escaping_timeout,
    ),
    Scenario::both(
        "daemons left by a script that exits are killed",
        daemons_after_exit,
    ),
    Scenario::sshd(
        "unreadable artifacts are skipped, the rest arrive, the folder is removed",
        unreadable_artifacts,
    ),
    Scenario::both(
        "a connection cut mid-download leaves no torn file",
        cut_download,
    ),
];

/// Long enough for the kill's grace (10 s) and then `KILL`.
const DEATH_LIMIT: Duration = Duration::from_secs(30);
/// Long enough for a recovery: kill bound, three reconnects, the artifacts, the removal.
const RECOVERY_LIMIT: Duration = Duration::from_secs(90);

/// Machine 1 of the target, reached through a fault proxy as machine `name`, with a remote
/// root of its own and `extra` fleet keys.
struct Proxied {
    proxy: FaultProxy,
    tf: Tf,
    name: String,
    remote_root: PathBuf,
}

impl Proxied {
    fn new(ctx: &Ctx<'_>, name: &str, extra: &str) -> Result<Self> {
        let base = &ctx.target.machines[0];
        let proxy = FaultProxy::start(SocketAddr::from((Ipv4Addr::LOCALHOST, base.port)))
            .context("failed to start the fault proxy")?;
        // The host key is the server's, under the proxy's port.
        let known = super::read(&base.known_hosts)?.replace(
            &format!("]:{} ", base.port),
            &format!("]:{} ", proxy.port()),
        );
        let known_hosts = ctx.work.join(format!("{name}.known_hosts"));
        std::fs::write(&known_hosts, known)?;
        let remote_root = ctx.target.remote_root(&format!("remote-{name}"))?;
        let machine = crate::targets::Machine {
            name: name.to_owned(),
            port: proxy.port(),
            known_hosts,
            remote_root: remote_root.clone(),
            extra: extra.to_owned(),
            ..base.clone()
        };
        let fleet = ctx
            .target
            .write_machines(&format!("fleet.{name}.toml"), &[machine])?;
        Ok(Self {
            proxy,
            tf: ctx.tf.with_fleet(&fleet),
            name: name.to_owned(),
            remote_root,
        })
    }

    fn run(&self, dir: &Path, extra: &[&str]) -> Result<Call> {
        let dir = dir.to_str().context("scratch paths are UTF-8")?;
        let mut args = vec!["run", dir, "-m", &self.name, "--json"];
        args.extend_from_slice(extra);
        self.tf.call(&args)
    }

    fn spawn_run(&self, dir: &Path, extra: &[&str]) -> Result<Child> {
        spawn_run(&self.tf, dir, &self.name, extra)
    }
}

/// The id of the one active run of `machine`.
fn active_run(tf: &Tf, machine: &str) -> Result<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let data = tf
            .call(&["list", "-m", machine, "--json"])?
            .expect_code(0)?
            .data()?;
        let active = data["runs"].as_array().and_then(|runs| {
            runs.iter()
                .find(|run| run["status"] == "running" || run["status"] == "pending")
                .map(|run| text(run, "/id"))
        });
        if let Some(id) = active {
            return Ok(id);
        }
        if Instant::now() > deadline {
            bail!("no active run of {machine}: {data}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until the run's `remote_cleanup` is known, and checks it is one of `allowed`.
fn cleanup_known(tf: &Tf, id: &str, allowed: &[&str]) -> Result<Value> {
    let run = wait_with(tf, id, RECOVERY_LIMIT, |run| {
        !run["remote_cleanup"].is_null() && run["status"] != "running"
    })?;
    let found = text(&run, "/remote_cleanup");
    ensure!(
        allowed.contains(&found.as_str()),
        "remote_cleanup {found:?}, wanted one of {allowed:?}: {run}"
    );
    Ok(run)
}

/// The run folders and pid files left under a remote root.
fn remote_leftovers(remote_root: &Path) -> Vec<String> {
    super::names_in(&remote_root.join("runs"))
        .into_iter()
        .collect()
}

fn no_remote_leftovers(remote_root: &Path) -> Result<()> {
    let left = remote_leftovers(remote_root);
    ensure!(
        left.is_empty(),
        "left in {}: {left:?}",
        remote_root.join("runs").display()
    );
    Ok(())
}

/// The run's events, for a failure message.
fn events(tf: &Tf, id: &str) -> Result<String> {
    let data = tf.call(&["status", id, "--json"])?.data()?;
    Ok(data["events"].to_string())
}

fn status_and_code(run: &Value) -> (String, String) {
    (text(run, "/status"), text(run, "/error/code"))
}

fn dropped_connection(ctx: &Ctx<'_>) -> Result<()> {
    let px = Proxied::new(ctx, "drop", "")?;
    let record = ctx.pid_record("drop")?;
    let dir = ctx.test_dir("drop", &escape_script(&record, 300), &[])?;
    let outcome = (|| {
        let run = only_run(&px.run(&dir, &["--detach"])?.expect_code(0)?.data()?)?;
        let id = text(&run, "/id");
        wait_for_pids(&record, ESCAPE_SCRIPT_PIDS, Duration::from_secs(30))?;
        px.proxy.drop_all();
        all_dead(&record, DEATH_LIMIT)?;
        let run = cleanup_known(&px.tf, &id, &["already_gone", "killed"])?;
        ensure!(
            status_and_code(&run) == ("failed".into(), "CONNECTION_LOST".into()),
            "{run}"
        );
        no_remote_leftovers(&px.remote_root)
    })();
    kill_recorded(&record);
    outcome
}

fn killed_session(ctx: &Ctx<'_>) -> Result<()> {
    let record = ctx.pid_record("session")?;
    let dir = ctx.test_dir("session", &escape_script(&record, 300), &[])?;
    let outcome = (|| {
        let sshd = ctx.target.sshd_pid().context("an sshd target")?;
        let run = only_run(
            &ctx.run(&dir, ctx.machine(0), &["--detach"])?
                .expect_code(0)?
                .data()?,
        )?;
        let id = text(&run, "/id");
        wait_for_pids(&record, ESCAPE_SCRIPT_PIDS, Duration::from_secs(30))?;
        // Per connection, sshd forks a privileged monitor, which forks the session process
        // that runs as the login and holds the channels: that one is killed.
        let sessions: Vec<u32> = children_of(sshd)
            .into_iter()
            .flat_map(|(monitor, _)| children_of(monitor))
            .filter(|(_, name)| name.starts_with("sshd"))
            .map(|(pid, _)| pid)
            .collect();
        ensure!(!sessions.is_empty(), "found no sshd session process");
        for pid in &sessions {
            kill_pid(*pid);
        }
        all_dead(&record, DEATH_LIMIT)?;
        let run = cleanup_known(&ctx.tf, &id, &["already_gone", "killed"])?;
        ensure!(text(&run, "/status") == "failed", "{run}");
        no_remote_leftovers(&ctx.target.machines[0].remote_root)
    })();
    kill_recorded(&record);
    outcome
}

fn killed_foreground(ctx: &Ctx<'_>) -> Result<()> {
    let record = ctx.pid_record("foreground")?;
    let dir = ctx.test_dir("foreground", &escape_script(&record, 300), &[])?;
    let machine = ctx.machine(1);
    let outcome = (|| {
        let child = spawn_run(&ctx.tf, &dir, machine, &[])?;
        let pid = child.id();
        let waited = wait_for_pids(&record, ESCAPE_SCRIPT_PIDS, Duration::from_secs(30))
            .and_then(|()| active_run(&ctx.tf, machine));
        kill_pid(pid);
        finish(child, Duration::from_secs(10))?;
        let id = waited?;
        // The controller is gone: its connection closed, and the wrapper killed the tree.
        all_dead(&record, DEATH_LIMIT)?;
        // The next command reaps the run, and its `_cleanup` makes sure.
        let run = cleanup_known(&ctx.tf, &id, &["already_gone", "killed"])?;
        ensure!(
            status_and_code(&run) == ("interrupted".into(), "WORKER_LOST".into()),
            "{run}"
        );
        no_remote_leftovers(&ctx.target.machines[1].remote_root)
    })();
    kill_recorded(&record);
    outcome
}

/// Keepalives that would take long to notice a dead link, so that the kill's bound is what
/// ends the wait.
const SLOW_KEEPALIVE: &str = "keepalive = \"2s\"\nkeepalive_max = 1000\n";

fn half_open_timeout(ctx: &Ctx<'_>) -> Result<()> {
    let px = Proxied::new(ctx, "stall-timeout", SLOW_KEEPALIVE)?;
    let record = ctx.pid_record("stall-timeout")?;
    let dir = ctx.test_dir("stall-timeout", &escape_script(&record, 300), &[])?;
    let outcome = (|| {
        let child = px.spawn_run(&dir, &["--timeout", "5s"])?;
        wait_for_pids(&record, ESCAPE_SCRIPT_PIDS, Duration::from_secs(30))?;
        px.proxy.stall_existing();
        let stalled = Instant::now();
        let call = finish(child, Duration::from_secs(120))?;
        eprintln!(
            "       the run ended {:.1?} after the link stalled",
            stalled.elapsed()
        );
        let run = only_run(&call.expect_code(1)?.data()?)?;
        ensure!(
            status_and_code(&run) == ("timeout".into(), "TIMEOUT".into()),
            "{run}"
        );
        let id = text(&run, "/id");
        // The link never said it died, so the wrapper did not act: the reconnect killed it.
        let run = cleanup_known(&px.tf, &id, &["killed"])?;
        ensure!(run["status"] == "timeout", "{run}");
        all_dead(&record, DEATH_LIMIT)?;
        no_remote_leftovers(&px.remote_root)
    })();
    px.proxy.drop_all();
    kill_recorded(&record);
    outcome
}

fn half_open_cancel(ctx: &Ctx<'_>) -> Result<()> {
    let px = Proxied::new(ctx, "stall-cancel", SLOW_KEEPALIVE)?;
    let record = ctx.pid_record("stall-cancel")?;
    let dir = ctx.test_dir("stall-cancel", &escape_script(&record, 300), &[])?;
    let outcome = (|| {
        let run = only_run(&px.run(&dir, &["--detach"])?.expect_code(0)?.data()?)?;
        let id = text(&run, "/id");
        wait_for_pids(&record, ESCAPE_SCRIPT_PIDS, Duration::from_secs(30))?;
        px.proxy.stall_existing();
        let started = Instant::now();
        let cancelled = px.tf.call(&["cancel", &id, "--json"])?;
        let took = started.elapsed();
        eprintln!("       cancel returned after {took:.1?} (bound: 10 s grace + 2 s keepalive)");
        let after = cancelled.expect_code(0)?.data()?["run"].clone();
        ensure!(
            status_and_code(&after) == ("interrupted".into(), "INTERRUPTED".into()),
            "{after}"
        );
        // Far below cancel's own 90 s limit: the kill's bound ended the wait.
        ensure!(took < Duration::from_secs(60), "cancel took {took:?}");
        cleanup_known(&px.tf, &id, &["killed"])?;
        all_dead(&record, DEATH_LIMIT)?;
        no_remote_leftovers(&px.remote_root)
    })();
    px.proxy.drop_all();
    kill_recorded(&record);
    outcome
}

fn escaping_timeout(ctx: &Ctx<'_>) -> Result<()> {
    let record = ctx.pid_record("escape")?;
    let dir = ctx.test_dir("escape", &escape_script(&record, 300), &[])?;
    let outcome = (|| {
        let call = ctx.run(&dir, ctx.machine(2), &["--timeout", "3s"])?;
        let run = only_run(&call.expect_code(1)?.data()?)?;
        ensure!(
            status_and_code(&run) == ("timeout".into(), "TIMEOUT".into()),
            "{run}"
        );
        ensure!(run["remote_cleanup"] == "killed", "{run}");
        all_dead(&record, DEATH_LIMIT)?;
        no_remote_leftovers(&ctx.target.machines[2].remote_root)
    })();
    kill_recorded(&record);
    outcome
}

fn daemons_after_exit(ctx: &Ctx<'_>) -> Result<()> {
    let record = ctx.pid_record("daemons")?;
    let script = format!(
        "setsid sh -c 'echo $$ >> \"$1\"; exec sleep 300' sh '{r}' &\n\
         ( ( sleep 300 & echo $! >> '{r}' ) & )\n\
         while [ \"$(wc -l < '{r}')\" -lt 2 ]; do sleep 0.1; done\n\
         echo leaving\n",
        r = record.display()
    );
    let dir = ctx.test_dir("daemons", &script, &[])?;
    let outcome = (|| {
        let call = ctx.run(&dir, ctx.machine(2), &[])?;
        let run = only_run(&call.expect_code(0)?.data()?)?;
        ensure!(text(&run, "/status") == "completed", "{run}");
        ensure!(run["remote_cleanup"] == "already_gone", "{run}");
        all_dead(&record, DEATH_LIMIT)?;
        no_remote_leftovers(&ctx.target.machines[2].remote_root)
    })();
    kill_recorded(&record);
    outcome
}

fn unreadable_artifacts(ctx: &Ctx<'_>) -> Result<()> {
    ensure!(
        ctx.target.login_uid != 0,
        "the login is root, which file modes do not stop"
    );
    let dir = ctx.test_dir(
        "unreadable",
        "mkdir -p artifacts/locked artifacts/open\n\
         echo ok > artifacts/ok.txt\n\
         echo also > artifacts/open/also.txt\n\
         echo secret > artifacts/secret.txt && chmod 000 artifacts/secret.txt\n\
         echo inner > artifacts/locked/inner.txt && chmod 000 artifacts/locked\n",
        &[],
    )?;
    let run = only_run(&ctx.run(&dir, ctx.machine(0), &[])?.expect_code(0)?.data()?)?;
    ensure!(text(&run, "/status") == "completed", "{run}");
    ensure!(run["artifacts"]["files"] == 2, "{run}");
    let skipped: Vec<String> = run["artifacts"]["skipped"]
        .as_array()
        .context("artifacts.skipped is a list")?
        .iter()
        .map(|entry| text(entry, "/path"))
        .collect();
    for wanted in ["secret.txt", "locked"] {
        ensure!(
            skipped.iter().any(|path| path.ends_with(wanted)),
            "{wanted} is not among the skipped: {skipped:?}"
        );
    }
    let local = path_of(&run, "artifacts");
    ensure!(super::read(&local.join("ok.txt"))? == "ok\n", "ok.txt");
    ensure!(
        super::read(&local.join("open/also.txt"))? == "also\n",
        "open/also.txt"
    );
    ensure!(
        !local.join("secret.txt").exists(),
        "an unreadable file arrived"
    );
    no_remote_leftovers(&ctx.target.machines[0].remote_root)
}

fn cut_download(ctx: &Ctx<'_>) -> Result<()> {
    const BIG: u64 = 64 * 1024 * 1024;
    let px = Proxied::new(ctx, "cut", "")?;
    let dir = ctx.test_dir(
        "cut",
        &format!(
            "mkdir -p artifacts\nhead -c {BIG} /dev/zero | tr '\\0' 'a' > artifacts/big.bin\n\
             echo small > artifacts/small.txt\n"
        ),
        &[],
    )?;
    // 8 MB/s from the server: the download takes seconds, and is cut in the middle.
    px.proxy.set_downstream_rate(Some(8_000_000));
    let run = only_run(&px.run(&dir, &["--detach"])?.expect_code(0)?.data()?)?;
    let id = text(&run, "/id");
    let partial = path_of(&run, "dir").join("artifacts.partial");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !partial.exists() {
        ensure!(
            Instant::now() < deadline,
            "the download never started: {}",
            super::status_with(&px.tf, &id)?
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let before = px.proxy.downstream_bytes();
    while px.proxy.downstream_bytes() < before + 8_000_000 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    px.proxy.set_downstream_rate(None);
    px.proxy.drop_all();

    let run = cleanup_known(&px.tf, &id, &["already_gone", "killed"])?;
    ensure!(
        status_and_code(&run) == ("failed".into(), "CONNECTION_LOST".into()),
        "{run}"
    );
    // Nothing torn: every file is whole or absent, and no temporary file stays.
    let local = path_of(&run, "artifacts");
    let big = local.join("big.bin");
    if big.exists() {
        let bytes = std::fs::read(&big)?;
        ensure!(
            bytes.len() as u64 == BIG && bytes.iter().all(|b| *b == b'a'),
            "big.bin is torn: {} bytes",
            bytes.len()
        );
    }
    ensure!(!partial.exists(), "{} stays", partial.display());
    // The recovery fetched what the cut download did not.
    ensure!(
        run["artifacts"]["files"] == 2 && big.exists(),
        "the recovery did not fetch the artifacts: {}",
        events(&px.tf, &id)?
    );
    no_remote_leftovers(&px.remote_root)
}
