//! The scenarios of a run that goes as planned, or fails as scripts do: output, exit codes,
//! artifacts, timeouts, cancels, idempotency, host keys, odd names, modes, symlinks, big output
//! and fan-out.

use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use testfleet_testkit::process::tree_script;

use super::{Ctx, Scenario, all_dead, kill_recorded, only_run, path_of, read, text, wait_for_pids};

pub(super) const SCENARIOS: &[Scenario] = &[
    Scenario::both("hello world", hello),
    Scenario::both("nonzero exit", nonzero_exit),
    Scenario::both("nested and binary artifacts are byte-identical", artifacts),
    Scenario::both("timeout kills the whole process tree", timeout),
    Scenario::both("cancel kills the whole process tree", cancel),
    Scenario::both("idempotent re-run and MACHINE_BUSY", idempotency),
    Scenario::both("a killed worker frees the machine", killed_worker),
    Scenario::both("unknown and changed host keys upload nothing", host_keys),
    Scenario::both("names with spaces, quotes, unicode and newlines", odd_names),
    Scenario::both("executable bits are preserved", modes),
    Scenario::both("a symlink is reported and skipped", symlinks),
    Scenario::both("100 MB of output", big_output),
    Scenario::both("fan-out to 3 machines", fan_out),
    Scenario::both(
        "invocation: args, env and a secret arrive exactly; the secret is stored nowhere",
        args_env,
    ),
    Scenario::both(
        "invocation: .testfleetignore and --exclude leave files out of the upload",
        excludes,
    ),
];

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
        testfleet_testkit::process::kill_pid(u32::try_from(worker).context("a pid fits in u32")?);
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

/// A secret no file of the state directory, no log and no output may hold.
const SECRET: &str = "e2e-s3cr3t-'\"$HOME`x`\\101";

fn args_env(ctx: &Ctx<'_>) -> Result<()> {
    // Every argument and variable as hex, one per line: no secret lands in a log in clear.
    let dir = ctx.test_dir(
        "args-env",
        "hex() { printf %s \"$1\" | od -An -tx1 | tr -d ' \\n'; echo; }\n\
         echo \"argc=$#\"\nfor a in \"$@\"; do hex \"$a\"; done\nhex \"$MODE\"\nhex \"$TOKEN\"\n\
         echo \"$TESTFLEET_MACHINE $TESTFLEET_RUN_ID\"\n",
        &[],
    )?;
    let hex = |text: &str| -> String { text.bytes().map(|b| format!("{b:02x}")).collect() };
    let mode = "it's \"q\" $HOME `id`\nline 2\\";
    let args = ["--filter", "a b", "", "$x\n'y'"];
    let mode_arg = format!("MODE={mode}");
    let dir_text = dir.to_str().context("scratch paths are UTF-8")?;
    let mut argv = vec![
        "run",
        dir_text,
        "-m",
        ctx.machine(0),
        "-e",
        &mode_arg,
        "-e",
        "TOKEN",
        "--json",
        "--",
    ];
    argv.extend(args);
    let output = ctx.tf.command(&argv).env("TOKEN", SECRET).output()?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let json: serde_json::Value =
        serde_json::from_str(&stdout).with_context(|| format!("{stdout}\n{stderr}"))?;
    let run = only_run(&json["data"])?;
    ensure!(text(&run, "/status") == "completed", "{run}\n{stderr}");
    let mut expected = format!("argc={}\n", args.len());
    for arg in args {
        expected.push_str(&format!("{}\n", hex(arg)));
    }
    expected.push_str(&format!(
        "{}\n{}\n{} {}\n",
        hex(mode),
        hex(SECRET),
        ctx.machine(0),
        text(&run, "/id")
    ));
    let log = read(&path_of(&run, "stdout"))?;
    ensure!(log == expected, "stdout.log:\n{log}\nwanted:\n{expected}");
    ensure!(
        !stdout.contains(SECRET) && !stderr.contains(SECRET),
        "the secret is in the output"
    );
    // Nothing testfleet wrote holds it: the SQLite store, logs, worker logs, digests.
    let mut todo = vec![ctx.tf.state_dir.clone()];
    while let Some(next) = todo.pop() {
        for entry in std::fs::read_dir(&next)?.flatten() {
            let path = entry.path();
            if path.is_dir() {
                todo.push(path);
            } else if let Ok(bytes) = std::fs::read(&path) {
                ensure!(
                    !bytes.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()),
                    "{} holds the secret",
                    path.display()
                );
            }
        }
    }
    Ok(())
}

fn excludes(ctx: &Ctx<'_>) -> Result<()> {
    let dir = ctx.test_dir(
        "excludes",
        "for f in .git/HEAD node_modules/x big.log keep.log; do [ -e \"$f\" ] && echo \"has $f\"; done; true\n",
        &[
            (".git/HEAD", b"ref\n", 0o644),
            ("node_modules/x", b"1", 0o644),
            ("big.log", b"l", 0o644),
            ("keep.log", b"k", 0o644),
            (".testfleetignore", b"node_modules/\n*.log\n", 0o644),
        ],
    )?;
    let call = ctx.run(&dir, ctx.machine(0), &["--exclude", "!keep.log"])?;
    let run = only_run(&call.expect_code(0)?.data()?)?;
    let log = read(&path_of(&run, "stdout"))?;
    ensure!(log == "has keep.log\n", "uploaded: {log:?}");
    Ok(())
}
