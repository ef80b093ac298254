//! Runs against in-process SSH servers: foreground, detached, reuse, busy, cancel, a lost
//! worker, concurrent dispatches, fan-out and `logs -f`.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde_json::Value;

use testfleet_testkit::process::is_alive;

use crate::support::{
    Servers, gated_script, id_of, poll, regex_escape, run_of, snapshot, snapshot_with, str,
};

/// A script that prints, then waits for `marker` to exist (so tests decide when it ends).

#[test]
fn a_run_completes_with_its_logs_and_artifacts_where_the_json_says() {
    let servers = Servers::start(1);
    let env = servers.env();
    let dir = env.test_dir(
        "artifacts",
        "echo out-line\necho err-line >&2\nmkdir -p artifacts/sub\necho result > artifacts/sub/r.txt\n",
    );
    let out = env.json(&["run", str(&dir), "-m", "m1"]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let data = out.data();
    assert_eq!(data["errors"], serde_json::json!([]));
    let run = &data["runs"][0];
    assert_eq!(run["status"], "completed");
    assert_eq!(run["exit_code"], 0);
    assert_eq!(run["reused"], false);
    assert_eq!(run["artifacts"]["files"], 1);
    let stdout = std::fs::read_to_string(run["paths"]["stdout"].as_str().expect("path"))
        .expect("stdout log");
    assert_eq!(stdout, "out-line\n");
    let stderr = std::fs::read_to_string(run["paths"]["stderr"].as_str().expect("path"))
        .expect("stderr log");
    assert_eq!(stderr, "err-line\n");
    let artifact = Path::new(run["paths"]["artifacts"].as_str().expect("path")).join("sub/r.txt");
    assert_eq!(
        std::fs::read_to_string(artifact).expect("artifact"),
        "result\n"
    );
    snapshot(&env, "run_completed_json", &out.stdout);

    // The human form streams the remote output and ends with a summary line.
    let human = env.run(&["run", str(&dir), "-m", "m1"]);
    assert_eq!(human.code, 0, "{}", human.stderr);
    assert!(human.stdout.starts_with("out-line\n"), "{}", human.stdout);
    assert!(human.stderr.contains("err-line\n"), "{}", human.stderr);
    snapshot(&env, "run_completed_human", &human.stdout);

    let id = id_of(run);
    let status = env.json(&["status", &id]);
    snapshot(&env, "status_json", &status.stdout);
    snapshot(
        &env,
        "status_events_human",
        &env.run(&["status", &id, "--events"]).stdout,
    );
    snapshot(&env, "list_human", &env.run(&["list"]).stdout);
    assert_eq!(
        env.json(&["list"]).data()["runs"].as_array().map(Vec::len),
        Some(2)
    );
    // logs prints the bytes of the log as they are, nothing else.
    let logs = env.run(&["logs", &id]);
    assert_eq!((logs.code, logs.stdout.as_str()), (0, "out-line\n"));
    let logs = env.run(&["logs", &id, "--stderr"]);
    assert_eq!((logs.code, logs.stdout.as_str()), (0, "err-line\n"));
    let logs = env.json(&["logs", &id]);
    assert_eq!(logs.data()["content"], "out-line\n");
    assert_eq!(logs.data()["stream"], "stdout");
    snapshot(&env, "logs_json", &logs.stdout);
    let logs = env.json(&["logs", &id, "--stderr"]);
    assert_eq!(logs.data()["content"], "err-line\n");
    assert_eq!(logs.data()["path"], run["paths"]["stderr"]);
    snapshot(&env, "logs_stderr_json", &logs.stdout);

    snapshot(&env, "wait_json", &env.json(&["wait", &id]).stdout);
    let waited = env.run(&["wait", &id]);
    assert_eq!(waited.code, 0, "{}", waited.stderr);
    assert!(waited.stdout.contains(" completed "), "{}", waited.stdout);
    snapshot(&env, "wait_human", &waited.stdout);

    // gc keeps what is younger than --older-than, removes the rest.
    let run_dir = PathBuf::from(run["paths"]["dir"].as_str().expect("dir"));
    let gc = env.json(&["gc", "--older-than", "1h"]);
    assert_eq!(gc.data()["removed"], serde_json::json!([]));
    assert!(run_dir.exists());
    snapshot(&env, "gc_nothing_json", &gc.stdout);
    let gc = env.run(&["gc", "--older-than", "1h"]);
    assert_eq!(gc.code, 0, "{}", gc.stderr);
    assert!(run_dir.exists());
    snapshot(&env, "gc_nothing_human", &gc.stdout);
    let gc = env.json(&["gc", "--older-than", "0s"]);
    assert_eq!(gc.data()["removed"].as_array().map(Vec::len), Some(2));
    assert!(
        gc.data()["removed"]
            .as_array()
            .is_some_and(|ids| ids.contains(&run["id"]))
    );
    assert!(!run_dir.exists());
    snapshot(&env, "gc_json", &gc.stdout);
    let after = env.json(&["status", &id]).data()["run"].clone();
    assert_eq!(after["status"], "completed", "the record stays");

    let third = run_of(&env.json(&["run", str(&dir), "-m", "m1"]));
    let third_dir = PathBuf::from(third["paths"]["dir"].as_str().expect("dir"));
    assert!(third_dir.exists());
    let gc = env.run(&["gc", "--older-than", "0s"]);
    assert_eq!(gc.code, 0, "{}", gc.stderr);
    assert!(!third_dir.exists());
    snapshot(&env, "gc_human", &gc.stdout);
}

#[test]
fn a_failing_script_is_nonzero_exit_and_exit_1() {
    let servers = Servers::start(1);
    let env = servers.env();
    let dir = env.test_dir("failing", "echo about to fail\nexit 3\n");
    let out = env.json(&["run", str(&dir), "-m", "m1"]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    let run = run_of(&out);
    assert_eq!(run["status"], "failed");
    assert_eq!(run["exit_code"], 3);
    assert_eq!(run["error"]["code"], "NONZERO_EXIT");
    let human = env.run(&["run", str(&dir), "-m", "m1"]);
    assert_eq!(human.code, 1);
    snapshot(&env, "run_failed_human", &human.stdout);
}

#[test]
fn detach_reuse_busy_logs_follow_and_wait() {
    let servers = Servers::start(1);
    let env = servers.env();
    let marker = env.root().join("release");
    let dir = env.test_dir("gated", &gated_script(&marker));
    let other = env.test_dir("other", "echo other\n");

    let first = env.json(&["run", str(&dir), "-m", "m1", "--detach"]);
    assert_eq!(first.code, 0, "{}", first.stderr);
    let run = run_of(&first);
    let id = id_of(&run);
    assert_eq!(run["reused"], false);
    assert!(
        run["worker_pid"].as_u64().is_some(),
        "the worker owns it: {run}"
    );
    snapshot(&env, "run_detached_json", &first.stdout);

    env.poll_status(&id, "running", |run| run["status"] == "running");
    let again = env.json(&["run", str(&dir), "-m", "m1", "--detach"]);
    assert_eq!(again.code, 0);
    assert_eq!(id_of(&run_of(&again)), id);
    assert_eq!(run_of(&again)["reused"], true);

    let busy = env.json(&["run", str(&other), "-m", "m1"]);
    assert_eq!((busy.code, busy.error_code().as_str()), (2, "MACHINE_BUSY"));
    assert_eq!(busy.json()["error"]["details"]["active_run"], id.as_str());
    snapshot(&env, "run_busy_json", &busy.stdout);

    // logs -f follows the running script to its end.
    let follower = env
        .command(&["logs", &id, "-f"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn logs -f");
    let stdout_log = PathBuf::from(run["paths"]["stdout"].as_str().expect("path"));
    poll("the first line", || {
        std::fs::read_to_string(&stdout_log).is_ok_and(|text| text.contains("started"))
    });
    std::fs::write(&marker, "").expect("release the script");
    let waited = env.json(&["wait", &id, "--timeout", "60s"]);
    assert_eq!(waited.code, 0, "{}", waited.stdout);
    assert_eq!(run_of(&waited)["status"], "completed");
    let followed = follower
        .wait_with_output()
        .expect("logs -f ends with the run");
    assert!(followed.status.success());
    assert_eq!(
        String::from_utf8_lossy(&followed.stdout),
        "started\nfinished\n"
    );
    let worker_log = Path::new(run["paths"]["dir"].as_str().expect("dir")).join("worker.log");
    assert!(worker_log.exists());
}

#[test]
fn cancel_kills_the_remote_process_tree() {
    let servers = Servers::start(1);
    let env = servers.env();
    let pid_file = env.root().join("child.pid");
    let dir = env.test_dir(
        "slow",
        &format!(
            "sleep 300 &\necho $! > '{}'\necho started\nwait\n",
            pid_file.display()
        ),
    );
    let run = run_of(&env.json(&["run", str(&dir), "-m", "m1", "--detach"]));
    let id = id_of(&run);
    poll("the remote child's pid", || {
        std::fs::read_to_string(&pid_file).is_ok_and(|text| text.trim().parse::<u32>().is_ok())
    });
    let child: u32 = std::fs::read_to_string(&pid_file)
        .expect("pid")
        .trim()
        .parse()
        .expect("a pid");
    let cancelled = env.json(&["cancel", &id]);
    assert_eq!(cancelled.code, 0, "{}", cancelled.stderr);
    let run = cancelled.data()["run"].clone();
    assert_eq!(run["status"], "interrupted");
    assert_eq!(run["error"]["code"], "INTERRUPTED");
    snapshot(&env, "cancel_json", &cancelled.stdout);
    poll("the remote sleep to be gone", || !is_alive(child));

    // The machine is free again; the human form prints the run's summary line.
    let next = env.test_dir("next", "echo started\nsleep 300\n");
    let run = run_of(&env.json(&["run", str(&next), "-m", "m1", "--detach"]));
    let id = id_of(&run);
    let stdout_log = PathBuf::from(run["paths"]["stdout"].as_str().expect("path"));
    poll("the second run's first line", || {
        std::fs::read_to_string(&stdout_log).is_ok_and(|text| text.contains("started"))
    });
    let cancelled = env.run(&["cancel", &id]);
    assert_eq!(cancelled.code, 0, "{}", cancelled.stderr);
    assert!(
        cancelled.stdout.contains(" interrupted ") && cancelled.stdout.contains("INTERRUPTED"),
        "{}",
        cancelled.stdout
    );
    snapshot(&env, "cancel_human", &cancelled.stdout);
    assert_eq!(
        env.json(&["status", &id]).data()["run"]["status"],
        "interrupted"
    );
}

#[test]
fn a_killed_worker_is_reaped_as_worker_lost_and_frees_the_machine() {
    let servers = Servers::start(1);
    let env = servers.env();
    let marker = env.root().join("never");
    let dir = env.test_dir("gated", &gated_script(&marker));
    let run = run_of(&env.json(&["run", str(&dir), "-m", "m1", "--detach"]));
    let id = id_of(&run);
    let running = env.poll_status(&id, "running", |run| run["status"] == "running");
    let pid = i32::try_from(running["worker_pid"].as_u64().expect("owner pid")).expect("pid");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill -9 the worker");
    let lost = env.poll_status(&id, "reaped", |run| run["status"] == "interrupted");
    assert_eq!(lost["error"]["code"], "WORKER_LOST");
    let next = env.json(&["run", str(&env.test_dir("next", "echo next\n")), "-m", "m1"]);
    assert_eq!(next.code, 0, "{}", next.stdout);
    std::fs::write(&marker, "").expect("release the orphaned script");
}

#[test]
fn sixteen_concurrent_detached_runs_of_one_dir_share_one_run() {
    let servers = Servers::start(1);
    let env = servers.env();
    let marker = env.root().join("release");
    let dir = env.test_dir("gated", &gated_script(&marker));
    let children: Vec<_> = (0..16)
        .map(|_| {
            env.command(&["run", str(&dir), "-m", "m1", "--detach", "--json"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn")
        })
        .collect();
    let mut ids = Vec::new();
    let mut fresh = 0;
    for child in children {
        let output = child.wait_with_output().expect("run --detach ends");
        assert_eq!(
            output.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let json: Value = serde_json::from_slice(&output.stdout).expect("json");
        let run = &json["data"]["runs"][0];
        ids.push(id_of(run));
        if run["reused"] == false {
            fresh += 1;
        }
    }
    ids.sort();
    ids.dedup();
    let listed = env.json(&["list"]).data();
    assert_eq!(
        ids.len(),
        1,
        "one run among all outputs; the runs: {listed}"
    );
    assert_eq!(fresh, 1);
    std::fs::write(&marker, "").expect("release");
    let waited = env.json(&["wait", &ids[0], "--timeout", "60s"]);
    assert_eq!(run_of(&waited)["status"], "completed");
}

#[test]
fn fan_out_runs_one_run_per_machine_and_reports_busy_machines() {
    let servers = Servers::start(3);
    let env = servers.env();
    let dir = env.test_dir("hello", "echo hello from $$\n");
    let out = env.json(&["run", str(&dir), "-l", "all"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let runs = out.data()["runs"].as_array().cloned().expect("runs");
    let machines: Vec<&str> = runs
        .iter()
        .map(|r| r["machine"].as_str().expect("machine"))
        .collect();
    assert_eq!(machines, ["m1", "m2", "m3"]);
    assert!(runs.iter().all(|r| r["status"] == "completed"));

    let human = env.run(&["run", str(&dir), "-m", "m1", "-m", "m2"]);
    assert_eq!(human.code, 0, "{}\n{}", human.stdout, human.stderr);
    let prefixed = human
        .stdout
        .lines()
        .filter(|line| line.starts_with("[m1] hello") || line.starts_with("[m2] hello"))
        .count();
    assert_eq!(prefixed, 2, "{}", human.stdout);

    // m2 busy with another directory: reported in errors, the others run, exit 1.
    let marker = env.root().join("release");
    let gated = env.test_dir("gated", &gated_script(&marker));
    let blocker = id_of(&run_of(&env.json(&[
        "run",
        str(&gated),
        "-m",
        "m2",
        "--detach",
    ])));
    let out = env.json(&["run", str(&dir), "-l", "all"]);
    assert_eq!(out.code, 1);
    let data = out.data();
    assert_eq!(data["runs"].as_array().map(Vec::len), Some(2));
    assert_eq!(data["errors"][0]["machine"], "m2");
    assert_eq!(data["errors"][0]["code"], "MACHINE_BUSY");
    snapshot(&env, "fan_out_busy_json", &out.stdout);
    std::fs::write(&marker, "").expect("release");
    assert_eq!(env.json(&["wait", &blocker]).code, 0);
}

#[test]
fn ctrl_c_interrupts_a_foreground_run_with_exit_130() {
    let servers = Servers::start(1);
    let env = servers.env();
    let marker = env.root().join("never");
    let dir = env.test_dir("gated", &gated_script(&marker));
    let child = env
        .command(&["run", str(&dir), "-m", "m1", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    poll("the run to be running", || {
        env.json(&["list", "--status", "running"]).data()["runs"]
            .as_array()
            .is_some_and(|runs| !runs.is_empty())
    });
    let pid = i32::try_from(child.id()).expect("pid");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGINT,
    )
    .expect("SIGINT");
    let output = child.wait_with_output().expect("run ends");
    assert_eq!(
        output.status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let json: Value = serde_json::from_slice(&output.stdout).expect("one JSON document");
    assert_eq!(json["data"]["runs"][0]["status"], "interrupted");
    assert_eq!(json["data"]["runs"][0]["error"]["code"], "INTERRUPTED");
}

#[test]
fn machines_check_and_trust() {
    let servers = Servers::start(1);
    let env = servers.env();
    let check = env.json(&["machines", "check"]);
    assert_eq!(check.code, 0, "{}", check.stdout);
    let machine = check.data()["machines"][0].clone();
    assert_eq!(machine["ok"], true, "{machine}");
    assert!(machine["latency_ms"].as_u64().is_some(), "{machine}");
    // `uname -sr` of the machine running the tests.
    let os = machine["os"].as_str().expect("os").to_owned();
    assert!(os.starts_with("Linux "), "{os}");
    let os_filter = [(regex_escape(&os), "[OS]".to_owned())];
    snapshot_with(&env, "machines_check_json", &check.stdout, &os_filter);
    let human = env.run(&["machines", "check", "m1"]);
    assert_eq!(human.code, 0, "{}", human.stderr);
    assert!(human.stdout.starts_with("m1 "), "{}", human.stdout);
    snapshot_with(&env, "machines_check_human", &human.stdout, &os_filter);

    // An empty known_hosts: runs refuse the host, trust records it.
    let known_hosts = env.root().join("known_hosts");
    std::fs::write(&known_hosts, "").expect("write");
    let fleet = servers.fleet().replace(
        &format!(
            "{:?}",
            servers.servers[0].known_hosts_path().display().to_string()
        ),
        &format!("{:?}", known_hosts.display().to_string()),
    );
    env.write_fleet(&fleet);
    let dir = env.test_dir("hello", "echo hello\n");
    let refused = env.json(&["run", str(&dir), "-m", "m1"]);
    assert_eq!(refused.code, 1);
    assert_eq!(run_of(&refused)["error"]["code"], "HOST_KEY_UNKNOWN");
    let unknown = env.json(&["machines", "check"]);
    assert_eq!(unknown.code, 1, "{}", unknown.stdout);
    let machine = unknown.data()["machines"][0].clone();
    assert_eq!(machine["ok"], false);
    assert_eq!(machine["error"]["code"], "HOST_KEY_UNKNOWN");
    snapshot(&env, "machines_check_unknown_json", &unknown.stdout);
    let unknown = env.run(&["machines", "check"]);
    assert_eq!(unknown.code, 1);
    assert!(
        unknown.stdout.contains("testfleet machines trust m1"),
        "says what to do next: {}",
        unknown.stdout
    );
    snapshot(&env, "machines_check_unknown_human", &unknown.stdout);

    // Not on a terminal: nobody can confirm, so a flag must say which key (or yes).
    let unconfirmed = env.json(&["machines", "trust", "m1"]);
    assert_eq!(
        unconfirmed.error_code(),
        "INVALID_ARGUMENT",
        "{}",
        unconfirmed.stdout
    );
    assert!(
        unconfirmed
            .stdout
            .contains(&servers.servers[0].host_key_fingerprint()),
        "shows the key to verify: {}",
        unconfirmed.stdout
    );
    let wrong = env.json(&[
        "machines",
        "trust",
        "m1",
        "--fingerprint",
        "SHA256:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    ]);
    assert_eq!(wrong.error_code(), "HOST_KEY_MISMATCH", "{}", wrong.stdout);
    assert_eq!(
        std::fs::read_to_string(&known_hosts).unwrap_or_default(),
        "",
        "a pinned key that does not match adds nothing"
    );
    let bad_pin = env.json(&["machines", "trust", "m1", "--fingerprint", "MD5:xx"]);
    assert_eq!(
        bad_pin.error_code(),
        "INVALID_ARGUMENT",
        "{}",
        bad_pin.stdout
    );
    let fingerprint = servers.servers[0].host_key_fingerprint();
    let trusted = env.json(&["machines", "trust", "m1", "--fingerprint", &fingerprint]);
    assert_eq!(trusted.code, 0, "{}", trusted.stdout);
    assert_eq!(trusted.data()["added"], true);
    assert_eq!(
        trusted.data()["fingerprint"],
        servers.servers[0].host_key_fingerprint()
    );
    let recorded = std::fs::read_to_string(&known_hosts).expect("known_hosts");
    assert_eq!(recorded.lines().count(), 1, "{recorded}");
    snapshot(&env, "machines_trust_json", &trusted.stdout);
    let already = env.json(&["machines", "trust", "m1"]);
    assert_eq!(already.code, 0, "{}", already.stdout);
    assert_eq!(already.data()["added"], false);
    assert_eq!(
        std::fs::read_to_string(&known_hosts).expect("read"),
        recorded
    );
    snapshot(&env, "machines_trust_already_json", &already.stdout);
    let already = env.run(&["machines", "trust", "m1"]);
    assert_eq!(already.code, 0, "{}", already.stderr);
    snapshot(&env, "machines_trust_already_human", &already.stdout);
    // Forget the key again: the human form shows what it recorded.
    std::fs::write(&known_hosts, "").expect("write");
    let human = env.run(&["machines", "trust", "m1", "--yes"]);
    assert_eq!(human.code, 0, "{}", human.stderr);
    assert!(
        human
            .stdout
            .contains(&servers.servers[0].host_key_fingerprint()),
        "{}",
        human.stdout
    );
    assert_eq!(
        std::fs::read_to_string(&known_hosts).expect("read"),
        recorded
    );
    snapshot(&env, "machines_trust_human", &human.stdout);
    let again = env.json(&["run", str(&dir), "-m", "m1"]);
    assert_eq!(again.code, 0, "{}", again.stdout);
    // --accept-new-host-key says which key it recorded.
    std::fs::write(&known_hosts, "").expect("write");
    let accepted = env.json(&["run", str(&dir), "-m", "m1", "--accept-new-host-key"]);
    assert_eq!(accepted.code, 0, "{}", accepted.stdout);
    assert!(
        accepted.stderr.contains("recorded the host key")
            && accepted
                .stderr
                .contains(&servers.servers[0].host_key_fingerprint()),
        "{}",
        accepted.stderr
    );
    assert_eq!(
        std::fs::read_to_string(&known_hosts).expect("read"),
        recorded
    );

    // A waiting that times out reports the runs as they are, exit 1.
    let marker = env.root().join("release");
    let gated = env.test_dir("gated", &gated_script(&marker));
    let id = id_of(&run_of(&env.json(&[
        "run",
        str(&gated),
        "-m",
        "m1",
        "--detach",
    ])));
    let waited = env.json(&["wait", &id, "--timeout", "100ms"]);
    assert_eq!(waited.code, 1);
    assert!(run_of(&waited)["status"] == "pending" || run_of(&waited)["status"] == "running");
    std::fs::write(&marker, "").expect("release");
    assert_eq!(env.json(&["wait", &id]).code, 0);
}
