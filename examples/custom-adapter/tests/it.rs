//! The example adapters keep the ports' contracts, and the core's runner drives a whole run
//! through them.

use std::sync::Arc;

use testfleet_contract::run_store::{Subject, run_store};
use testfleet_contract::ssh::{ContractHost, ssh};
use testfleet_core::ports::{SystemClock, UlidGenerator};
use testfleet_core::runner::{DispatchRequest, NoObserver, Runner, RunnerConfig, StopSignals};
use testfleet_core::{ErrorCode, RunStatus};
use testfleet_example_adapter::{LocalConnector, MemoryStore, local_machine};

#[tokio::test(flavor = "multi_thread")]
async fn the_memory_store_keeps_the_run_store_contract() {
    run_store(|| Subject::new(MemoryStore::default())).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_local_transport_keeps_the_ssh_contract() {
    let home = tempfile::tempdir().expect("a temp dir");
    let connector = Arc::new(LocalConnector::new(home.path().to_path_buf()));
    let target = local_machine("here").ssh;
    ssh(
        connector,
        Arc::new(move |host| (host == ContractHost::Normal).then(|| target.clone())),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_runner_dispatches_through_the_example_adapters() {
    let (home, state, dir) = (tempdir(), tempdir(), tempdir());
    let script =
        "#!/bin/sh\necho \"hello from $(pwd)\"\nmkdir artifacts\ncp data.txt artifacts/\nexit 3\n";
    std::fs::write(dir.path().join("run.sh"), script).expect("writable");
    std::fs::write(dir.path().join("data.txt"), "payload\n").expect("writable");
    let store = Arc::new(MemoryStore::default());
    let runner = Runner::new(
        store,
        Arc::new(LocalConnector::new(home.path().to_path_buf())),
        Arc::new(SystemClock),
        Arc::new(UlidGenerator::default()),
        RunnerConfig::new(state.path().to_path_buf()),
    );
    let request = DispatchRequest {
        machine: local_machine("here"),
        timeout: None,
        keep_remote: false,
        owner: None,
        invocation: Default::default(),
    };
    let done = runner
        .dispatch(dir.path(), &request, &StopSignals::default(), &NoObserver)
        .await
        .expect("the dispatch runs");
    let run = done.run;
    assert_eq!(run.status, RunStatus::Failed, "{run:?}");
    assert_eq!(
        run.error.as_ref().map(|e| e.code),
        Some(ErrorCode::NonzeroExit)
    );
    assert_eq!(run.exit_code, Some(3));
    let stdout = std::fs::read_to_string(&run.paths.stdout).expect("the log exists");
    let remote_dir = run.remote_dir.clone().expect("recorded");
    assert_eq!(stdout, format!("hello from {remote_dir}\n"));
    let artifact = std::fs::read_to_string(run.paths.artifacts.join("data.txt"));
    assert_eq!(artifact.expect("downloaded"), "payload\n");
    assert!(
        !std::path::Path::new(&remote_dir).exists(),
        "the remote folder is cleaned up"
    );
}

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("a temp dir")
}
