//! Messages that say what really happens: following a run another command started, the files
//! `gc` removed, a summary on a line of its own.

use std::io::Read as _;
use std::path::Path;
use std::process::Stdio;

use serde_json::Value;

use crate::support::{Servers, poll, run_of, str};

fn sigint(child: &std::process::Child) {
    let pid = i32::try_from(child.id()).expect("pid");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGINT,
    )
    .expect("SIGINT");
}

#[test]
fn an_attached_run_says_so_streams_the_log_and_ctrl_c_only_stops_following() {
    let servers = Servers::start(1);
    let env = servers.env();
    let marker = env.root().join("release");
    let dir = env.test_dir(
        "attached",
        &format!(
            "echo started\nwhile [ ! -e '{}' ]; do sleep 0.05; done\nprintf finished-without-newline\n",
            marker.display()
        ),
    );
    let first = env.json(&["run", str(&dir), "-m", "m1", "--detach"]);
    let id = run_of(&first)["id"].as_str().expect("id").to_owned();
    env.poll_status(&id, "running", |run| run["status"] == "running");

    // A follower that is interrupted: it says it stops following, and the run goes on.
    let mut follower = env
        .command(&["run", str(&dir), "-m", "m1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut stdout = follower.stdout.take().expect("piped");
    let mut seen = Vec::new();
    let mut buffer = [0u8; 256];
    while !String::from_utf8_lossy(&seen).contains("started\n") {
        let n = stdout.read(&mut buffer).expect("read");
        assert!(
            n > 0,
            "the follower ended before streaming: {}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&buffer[..n]);
    }
    sigint(&follower);
    let output = follower.wait_with_output().expect("ends");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("already running as {id}, following its output")),
        "{stderr}"
    );
    assert!(
        stderr.contains("no longer following the run(s), which go on"),
        "{stderr}"
    );
    assert!(!stderr.contains("stopping the run"), "{stderr}");
    assert_eq!(output.status.code(), Some(130), "{stderr}");
    assert_eq!(
        env.json(&["status", &id]).data()["run"]["status"],
        "running"
    );

    // A follower that sees the end: the whole output, then the summary on a line of its own.
    let follower = env
        .command(&["run", str(&dir), "-m", "m1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let stdout_log = env.state_dir().join("runs").join(&id).join("stdout.log");
    poll("the first line", || {
        std::fs::read_to_string(&stdout_log).is_ok_and(|text| text.contains("started"))
    });
    std::fs::write(&marker, "").expect("release");
    let output = follower.wait_with_output().expect("ends");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.starts_with(&format!(
            "started\nfinished-without-newline\n{id} m1 completed"
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains("(reused: this directory was already running there)"),
        "{stdout}"
    );
}

#[test]
fn after_gc_logs_fail_and_status_says_the_files_are_gone() {
    let servers = Servers::start(1);
    let env = servers.env();
    let dir = env.test_dir("gc", "printf no-newline\n");
    let human = env.run(&["run", str(&dir), "-m", "m1"]);
    assert!(
        human.stdout.starts_with("no-newline\n"),
        "summary on its own line: {}",
        human.stdout
    );
    let run = run_of(&env.json(&["run", str(&dir), "-m", "m1"]));
    assert_eq!(
        run["paths"]["artifacts"],
        Value::Null,
        "nothing was downloaded"
    );
    let id = run["id"].as_str().expect("id").to_owned();

    let dry = env.json(&["gc", "--older-than", "0s", "--dry-run"]);
    assert_eq!(dry.data()["removed"], serde_json::json!([]));
    assert_eq!(dry.data()["would_remove"].as_array().map(Vec::len), Some(2));
    assert!(Path::new(run["paths"]["dir"].as_str().expect("dir")).exists());
    let dry_human = env.run(&["gc", "--older-than", "0s", "--dry-run"]);
    assert!(
        dry_human
            .stdout
            .starts_with("would remove the local folders (logs, artifacts) of 2 runs:\n"),
        "{}",
        dry_human.stdout
    );

    let gc = env.run(&["gc", "--older-than", "0s"]);
    assert!(gc.stdout.contains("of 2 runs;"), "{}", gc.stdout);
    let logs = env.json(&["logs", &id]);
    assert_eq!(logs.error_code(), "LOGS_REMOVED", "{}", logs.stdout);
    assert_eq!(logs.code, 2);
    let status = env.json(&["status", &id]);
    assert_eq!(status.data()["files_removed"], true);
    let human = env.run(&["status", &id]);
    assert!(
        human.stdout.contains("local files  removed:"),
        "{}",
        human.stdout
    );
}
