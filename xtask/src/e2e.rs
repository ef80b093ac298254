//! `cargo xtask e2e`: the release binary against the in-process testkit server and against a
//! real OpenSSH sshd, scenario by scenario. A missing sshd is an error, never a skip.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use serde_json::Value;

use testfleet_testkit::process::{is_alive, read_pids, survivors_after, tree_script};

use crate::targets::{Backend, Target};
use crate::tf::Tf;

/// Everything a scenario needs.
struct Ctx<'a> {
    target: &'a Target,
    tf: Tf,
    /// Where scenarios create their test directories and pid records.
    work: PathBuf,
}

type Scenario = fn(&Ctx<'_>) -> Result<()>;

const SCENARIOS: &[(&str, Scenario)] = &[
    ("hello world", hello),
    ("nonzero exit", nonzero_exit),
    ("nested and binary artifacts are byte-identical", artifacts),
    ("timeout kills the whole process tree", timeout),
    ("cancel kills the whole process tree", cancel),
    ("idempotent re-run and MACHINE_BUSY", idempotency),
    ("a killed worker frees the machine", killed_worker),
    ("unknown and changed host keys upload nothing", host_keys),
    ("names with spaces, quotes, unicode and newlines", odd_names),
    ("executable bits are preserved", modes),
    ("a symlink is reported and skipped", symlinks),
    ("100 MB of output", big_output),
    ("fan-out to 3 machines", fan_out),
];

pub fn run(bin: &Path) -> Result<()> {
    let runtime = tokio::runtime::Runtime::new().context("failed to start a tokio runtime")?;
    let mut failures = Vec::new();
    let started = Instant::now();
    for backend in [Backend::Testkit, Backend::Sshd] {
        let target = match backend {
            Backend::Testkit => Target::testkit(&runtime, 3)?,
            Backend::Sshd => Target::sshd(3)?,
        };
        let fleet = target.write_fleet("fleet.toml", |_| {})?;
        let work = target.scratch().join("work");
        std::fs::create_dir_all(&work)?;
        let ctx = Ctx {
            target: &target,
            tf: Tf {
                bin: bin.to_path_buf(),
                fleet,
                state_dir: target.scratch().join("state"),
            },
            work,
        };
        eprintln!("\n== e2e against the {}", backend.name());
        for (name, scenario) in SCENARIOS {
            let scenario_started = Instant::now();
            match scenario(&ctx) {
                Ok(()) => eprintln!("  ok   {name} ({:.1?})", scenario_started.elapsed()),
                Err(error) => {
                    eprintln!("  FAIL {name}: {error:#}");
                    failures.push(format!("{}: {name}", backend.name()));
                }
            }
        }
    }
    let (n_report_scenarios, report_failures) = crate::e2e_report::run_and_print(bin)?;
    let total = SCENARIOS.len() * 2 + n_report_scenarios;
    failures.extend(report_failures);
    println!(
        "e2e: {} passed, {} failed",
        total - failures.len(),
        failures.len()
    );
    eprintln!("e2e finished in {:.1?}", started.elapsed());
    if !failures.is_empty() {
        bail!("e2e scenarios failed:\n  {}", failures.join("\n  "));
    }
    Ok(())
}

// -- helpers ---------------------------------------------------------------------------------

impl Ctx<'_> {
    /// Creates a fresh test directory `work/<name>` with `run.sh` and extra files.
    fn test_dir(&self, name: &str, script: &str, files: &[(&str, &[u8], u32)]) -> Result<PathBuf> {
        let dir = self.work.join(name);
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        std::fs::create_dir_all(&dir)?;
        write_file(
            &dir.join("run.sh"),
            format!("#!/bin/sh\n{script}").as_bytes(),
            0o755,
        )?;
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
    fn run(&self, dir: &Path, machine: &str, extra: &[&str]) -> Result<crate::tf::Call> {
        let dir = dir.to_str().context("scratch paths are UTF-8")?;
        let mut args = vec!["run", dir, "-m", machine, "--json"];
        args.extend_from_slice(extra);
        self.tf.call(&args)
    }

    fn status(&self, id: &str) -> Result<Value> {
        let call = self.tf.call(&["status", id, "--json"])?;
        Ok(call.expect_code(0)?.data()?["run"].clone())
    }

    /// Polls `status` until `done` holds for the run, or fails after `limit`.
    fn wait_until(
        &self,
        id: &str,
        limit: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> Result<Value> {
        let deadline = Instant::now() + limit;
        loop {
            let run = self.status(id)?;
            if done(&run) {
                return Ok(run);
            }
            if Instant::now() > deadline {
                bail!("run {id} did not reach the wanted state within {limit:?}: {run}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
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

/// Waits until every pid in the record is gone.
fn all_dead(record: &Path, limit: Duration) -> Result<()> {
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
fn kill_recorded(record: &Path) {
    for pid in read_pids(record).into_iter().filter(|pid| is_alive(*pid)) {
        std::process::Command::new("kill")
            .arg("-9")
            .arg(pid.to_string())
            .status()
            .ok();
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

// -- scenarios -------------------------------------------------------------------------------

fn hello(ctx: &Ctx<'_>) -> Result<()> {
    let dir = ctx.test_dir(
        "hello",
        "echo \"hello from $(uname -s)\"\necho oops >&2\n",
        &[],
    )?;
    let call = ctx.run(&dir, ctx.machine(0), &[])?;
    let run = only_run(&call.expect_code(0)?.data()?)?;
    ensure!(text(&run, "/status") == "completed", "status: {run}");
    ensure!(run["exit_code"] == 0, "exit code: {run}");
    ensure!(
        read(&path_of(&run, "stdout"))?.starts_with("hello from Linux"),
        "stdout.log"
    );
    ensure!(read(&path_of(&run, "stderr"))? == "oops\n", "stderr.log");
    // Human output streams the remote output.
    let human = ctx.tf.call(&[
        "run",
        dir.to_str().unwrap_or_default(),
        "-m",
        ctx.machine(0),
    ])?;
    ensure!(
        human.code == Some(0) && human.stdout.contains("hello from Linux"),
        "human run: {human:?}"
    );
    Ok(())
}

fn nonzero_exit(ctx: &Ctx<'_>) -> Result<()> {
    let dir = ctx.test_dir(
        "failing",
        "mkdir -p artifacts && echo partial > artifacts/p.txt\nexit 3\n",
        &[],
    )?;
    let call = ctx.run(&dir, ctx.machine(0), &[])?;
    let run = only_run(&call.expect_code(1)?.data()?)?;
    ensure!(text(&run, "/status") == "failed", "{run}");
    ensure!(text(&run, "/error/code") == "NONZERO_EXIT", "{run}");
    ensure!(run["exit_code"] == 3, "{run}");
    ensure!(
        read(&path_of(&run, "artifacts").join("p.txt"))? == "partial\n",
        "artifacts of a failed run"
    );
    Ok(())
}

fn artifacts(ctx: &Ctx<'_>) -> Result<()> {
    let binary: Vec<u8> = (0..=255u8).cycle().take(300_000).collect();
    let dir = ctx.test_dir(
        "artifacts",
        "mkdir -p artifacts/a/b/c\ncp data/blob.bin artifacts/a/b/c/blob.bin\ncp data/notes.txt artifacts/notes.txt\n",
        &[("data/blob.bin", &binary, 0o644), ("data/notes.txt", b"n\x00tes\n", 0o644)],
    )?;
    let run = only_run(&ctx.run(&dir, ctx.machine(0), &[])?.expect_code(0)?.data()?)?;
    let local = path_of(&run, "artifacts");
    ensure!(
        std::fs::read(local.join("a/b/c/blob.bin"))? == binary,
        "nested binary artifact differs"
    );
    ensure!(
        std::fs::read(local.join("notes.txt"))? == b"n\x00tes\n",
        "artifact differs"
    );
    ensure!(run["artifacts"]["files"] == 2, "artifact count: {run}");
    ensure!(
        run["artifacts"]["bytes"] == 300_006,
        "artifact bytes: {run}"
    );
    Ok(())
}

fn timeout(ctx: &Ctx<'_>) -> Result<()> {
    let record = ctx.pid_record("timeout")?;
    let dir = ctx.test_dir("timeout", &tree_script(&record, 300), &[])?;
    let call = ctx.run(&dir, ctx.machine(0), &["--timeout", "2s"])?;
    let outcome = (|| {
        let run = only_run(&call.expect_code(1)?.data()?)?;
        ensure!(text(&run, "/status") == "timeout", "{run}");
        ensure!(text(&run, "/error/code") == "TIMEOUT", "{run}");
        ensure!(run["timeout_ms"] == 2000, "{run}");
        all_dead(&record, Duration::from_secs(20))
    })();
    kill_recorded(&record);
    outcome
}

fn cancel(ctx: &Ctx<'_>) -> Result<()> {
    let record = ctx.pid_record("cancel")?;
    let dir = ctx.test_dir("cancel", &tree_script(&record, 300), &[])?;
    let outcome = (|| {
        let run = only_run(
            &ctx.run(&dir, ctx.machine(1), &["--detach"])?
                .expect_code(0)?
                .data()?,
        )?;
        let id = text(&run, "/id");
        wait_for_pids(&record, 4, Duration::from_secs(30))?;
        let cancelled = ctx.tf.call(&["cancel", &id, "--json"])?;
        let after = cancelled.expect_code(0)?.data()?["run"].clone();
        ensure!(text(&after, "/status") == "interrupted", "{after}");
        ensure!(text(&after, "/error/code") == "INTERRUPTED", "{after}");
        all_dead(&record, Duration::from_secs(20))
    })();
    kill_recorded(&record);
    outcome
}

fn idempotency(ctx: &Ctx<'_>) -> Result<()> {
    let record = ctx.pid_record("idem")?;
    let dir = ctx.test_dir("idem", &tree_script(&record, 300), &[])?;
    let other = ctx.test_dir("idem-other", "echo other\n", &[])?;
    let outcome = (|| {
        let first = only_run(
            &ctx.run(&dir, ctx.machine(2), &["--detach"])?
                .expect_code(0)?
                .data()?,
        )?;
        let again = only_run(
            &ctx.run(&dir, ctx.machine(2), &["--detach"])?
                .expect_code(0)?
                .data()?,
        )?;
        ensure!(
            first["id"] == again["id"],
            "a second dispatch made a new run: {first} / {again}"
        );
        ensure!(again["reused"] == true, "{again}");
        let busy = ctx.run(&other, ctx.machine(2), &[])?;
        busy.expect_code(2)?;
        ensure!(busy.error_code()? == "MACHINE_BUSY", "{}", busy.stdout);
        let id = text(&first, "/id");
        ctx.tf.call(&["cancel", &id, "--json"])?.expect_code(0)?;
        // Terminal runs never dedupe: the same directory runs again.
        let third = only_run(
            &ctx.run(&other, ctx.machine(2), &[])?
                .expect_code(0)?
                .data()?,
        )?;
        ensure!(third["reused"] == false, "{third}");
        Ok(())
    })();
    kill_recorded(&record);
    outcome
}

fn killed_worker(ctx: &Ctx<'_>) -> Result<()> {
    let record = ctx.pid_record("worker")?;
    let dir = ctx.test_dir("worker", &tree_script(&record, 60), &[])?;
    let outcome = (|| {
        let run = only_run(
            &ctx.run(&dir, ctx.machine(0), &["--detach"])?
                .expect_code(0)?
                .data()?,
        )?;
        let id = text(&run, "/id");
        let running = ctx.wait_until(&id, Duration::from_secs(30), |r| r["status"] == "running")?;
        let worker = running["worker_pid"]
            .as_u64()
            .context("a running detached run has a worker pid")?;
        std::process::Command::new("kill")
            .arg("-9")
            .arg(worker.to_string())
            .status()?;
        let lost = ctx.wait_until(&id, Duration::from_secs(10), |r| r["status"] != "running")?;
        ensure!(text(&lost, "/status") == "interrupted", "{lost}");
        ensure!(text(&lost, "/error/code") == "WORKER_LOST", "{lost}");
        let hello = ctx.test_dir("after-worker", "echo free\n", &[])?;
        only_run(
            &ctx.run(&hello, ctx.machine(0), &[])?
                .expect_code(0)?
                .data()?,
        )?;
        Ok(())
    })();
    kill_recorded(&record);
    outcome
}

fn host_keys(ctx: &Ctx<'_>) -> Result<()> {
    let empty = ctx.target.scratch().join("known_hosts.empty");
    std::fs::write(&empty, "")?;
    let wrong = ctx.target.scratch().join("known_hosts.wrong");
    let mut wrong_text = String::new();
    for machine in &ctx.target.machines {
        wrong_text.push_str(&format!(
            "[127.0.0.1]:{} ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBs4+zAd6cmn9xCVtU4Mmn5LkIwkoSx2pkAhhqSAGbXs\n",
            machine.port
        ));
    }
    std::fs::write(&wrong, wrong_text)?;
    let dir = ctx.test_dir("hostkey", "echo should-not-run\n", &[])?;
    for (known_hosts, code) in [(&empty, "HOST_KEY_UNKNOWN"), (&wrong, "HOST_KEY_MISMATCH")] {
        let fleet = ctx.target.write_fleet(&format!("fleet.{code}.toml"), |m| {
            m.known_hosts = known_hosts.clone()
        })?;
        let tf = ctx.tf.with_fleet(&fleet);
        let call = tf.call(&[
            "run",
            dir.to_str().unwrap_or_default(),
            "-m",
            ctx.machine(0),
            "--json",
        ])?;
        let run = only_run(&call.expect_code(1)?.data()?)?;
        ensure!(text(&run, "/status") == "failed", "{run}");
        ensure!(text(&run, "/error/code") == code, "{run}");
        ensure!(
            run["started_at"].is_null() && run["remote_dir"].is_null(),
            "{run}"
        );
        let remote_runs = ctx.target.machines[0]
            .remote_root
            .join("runs")
            .join(text(&run, "/id"));
        ensure!(
            !remote_runs.exists(),
            "something was uploaded: {}",
            remote_runs.display()
        );
    }
    Ok(())
}

fn odd_names(ctx: &Ctx<'_>) -> Result<()> {
    let names = [
        "with space.txt",
        "it's \"quoted\".txt",
        "$HOME `id`.txt",
        "données/résumé.txt",
        "new\nline.txt",
    ];
    let files: Vec<(&str, &[u8], u32)> = names.iter().map(|n| (*n, n.as_bytes(), 0o644)).collect();
    let script = "for f in 'with space.txt' \"it's \\\"quoted\\\".txt\" '$HOME `id`.txt' 'données/résumé.txt' 'new\nline.txt'; do\n  \
                  [ \"$(cat \"$f\")\" = \"$f\" ] || { echo \"bad: $f\"; exit 1; }\ndone\necho all-names-ok\n";
    let dir = ctx.test_dir("odd names ' \" $ dir", script, &files)?;
    let run = only_run(&ctx.run(&dir, ctx.machine(0), &[])?.expect_code(0)?.data()?)?;
    ensure!(
        read(&path_of(&run, "stdout"))?.contains("all-names-ok"),
        "{run}"
    );
    Ok(())
}

fn modes(ctx: &Ctx<'_>) -> Result<()> {
    let dir = ctx.test_dir(
        "modes",
        "stat -c '%n %a' tool.sh data.txt secret.txt\n./tool.sh\n",
        &[
            ("tool.sh", b"#!/bin/sh\necho tool-ran\n", 0o755),
            ("data.txt", b"d", 0o644),
            ("secret.txt", b"s", 0o600),
        ],
    )?;
    let run = only_run(&ctx.run(&dir, ctx.machine(0), &[])?.expect_code(0)?.data()?)?;
    let stdout = read(&path_of(&run, "stdout"))?;
    ensure!(
        stdout == "tool.sh 755\ndata.txt 644\nsecret.txt 600\ntool-ran\n",
        "modes: {stdout:?}"
    );
    Ok(())
}

fn symlinks(ctx: &Ctx<'_>) -> Result<()> {
    let dir = ctx.test_dir(
        "symlinks",
        "[ ! -e link.txt ] && echo link-absent\n",
        &[("real.txt", b"r", 0o644)],
    )?;
    std::os::unix::fs::symlink("real.txt", dir.join("link.txt"))?;
    let hash = ctx
        .tf
        .call(&["hash", dir.to_str().unwrap_or_default(), "--json"])?;
    let data = hash.expect_code(0)?.data()?;
    ensure!(
        data["skipped_symlinks"] == serde_json::json!(["link.txt"]),
        "{data}"
    );
    let call = ctx.run(&dir, ctx.machine(0), &[])?;
    let run = only_run(&call.expect_code(0)?.data()?)?;
    ensure!(
        call.stderr.contains("link.txt"),
        "the skipped symlink was not reported: {}",
        call.stderr
    );
    ensure!(
        read(&path_of(&run, "stdout"))? == "link-absent\n",
        "the symlink was uploaded"
    );
    Ok(())
}

fn big_output(ctx: &Ctx<'_>) -> Result<()> {
    let dir = ctx.test_dir(
        "big-output",
        "head -c 100000000 /dev/zero | tr '\\0' 'x'\necho done >&2\n",
        &[],
    )?;
    let run = only_run(&ctx.run(&dir, ctx.machine(0), &[])?.expect_code(0)?.data()?)?;
    let size = std::fs::metadata(path_of(&run, "stdout"))?.len();
    ensure!(size == 100_000_000, "stdout.log holds {size} bytes");
    ensure!(read(&path_of(&run, "stderr"))? == "done\n", "stderr.log");
    Ok(())
}

fn fan_out(ctx: &Ctx<'_>) -> Result<()> {
    let dir = ctx.test_dir("fan-out", "echo fan\n", &[])?;
    let call = ctx.tf.call(&[
        "run",
        dir.to_str().unwrap_or_default(),
        "-m",
        ctx.machine(0),
        "-m",
        ctx.machine(1),
        "-m",
        ctx.machine(2),
        "--json",
    ])?;
    let data = call.expect_code(0)?.data()?;
    let runs = data["runs"].as_array().context("runs")?;
    ensure!(runs.len() == 3, "{data}");
    let mut machines: Vec<String> = runs.iter().map(|r| text(r, "/machine")).collect();
    machines.sort();
    ensure!(machines == ["m1", "m2", "m3"], "{machines:?}");
    ensure!(runs.iter().all(|r| r["status"] == "completed"), "{data}");
    ensure!(
        data["errors"].as_array().is_some_and(Vec::is_empty),
        "{data}"
    );
    Ok(())
}
