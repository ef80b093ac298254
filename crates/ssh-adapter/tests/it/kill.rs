//! Killing a run: no process of its tree survives.

use std::time::{Duration, Instant};

use testfleet_contract::ssh::Captured;
use testfleet_core::hash::hash_dir;
use testfleet_core::ports::{KillOutcome, KillRequest, NoProgress, RemoteExit};
use testfleet_core::remote::{RemoteShell, RunScript};
use testfleet_testkit::process::{read_pids, survivors_after};
use testfleet_testkit::server::{ServerConfig, TestServer};

/// Children, grandchildren and a process in its own subshell, every pid recorded.
const TREE_SCRIPT: &[u8] = b"#!/bin/sh
echo $$ >> pids
sleep 300 &
echo $! >> pids
sh -c 'sleep 300 & echo $! >> pids; echo $$ >> pids; wait' &
echo $! >> pids
( sleep 300; echo never ) &
echo $! >> pids
echo ready
wait
";

async fn poll_until(deadline: Duration, mut done: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < deadline {
        if done() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    done()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_leaves_no_process_of_the_run() {
    let server = TestServer::start(ServerConfig::default()).await;
    let local = tempfile::tempdir().expect("temp dir");
    crate::write_file(local.path(), "run.sh", TREE_SCRIPT, 0o755);
    let manifest = hash_dir(local.path()).expect("hashes");
    let session = crate::connect(&server.target()).await;
    session
        .create_dir_all(".testfleet/runs")
        .await
        .expect("created");
    let root = session.realpath(".testfleet/runs").await.expect("exists");
    let run_dir = format!("{root}/r1");
    let pid_file = format!("{root}/r1.pid");
    session
        .upload(&manifest, &run_dir, &NoProgress)
        .await
        .expect("uploaded");

    let pids_path = server.home().join(".testfleet/runs/r1/pids");
    let run_id = "01JD00000000000000000000K1";
    let command = RemoteShell::Posix.exec_command(&RunScript {
        run_dir: &run_dir,
        pid_file: &pid_file,
        entrypoint: "run.sh",
        run_id,
        machine: "m1",
        args: &[],
        env: &[],
        grace: Duration::from_secs(2),
    });
    let mut output = Captured::default();
    let request = KillRequest {
        shell: RemoteShell::Posix,
        pid_file,
        run_id: run_id.to_owned(),
        grace: Duration::from_secs(2),
    };
    let killer = async {
        let started =
            poll_until(Duration::from_secs(10), || read_pids(&pids_path).len() >= 6).await;
        assert!(started, "the tree started: {:?}", read_pids(&pids_path));
        session.kill(&request).await
    };
    let (exit, killed) = tokio::join!(session.exec(&command, &mut output), killer);
    assert_eq!(killed.expect("the kill command ran"), KillOutcome::Killed);
    let exit = exit.expect("the exec ended");
    assert_eq!(exit, RemoteExit::Signal("TERM".into()), "{output:?}");

    let pids = read_pids(&pids_path);
    assert_eq!(pids.len(), 6, "{pids:?}");
    let survivors = survivors_after(&pids, Duration::from_secs(10));
    assert!(survivors.is_empty(), "survivors: {survivors:?}");
    assert!(!output.stdout_text().contains("never"));
}
