//! The runner against the fake store and the fake SSH: every error code it can produce and
//! every edge of the lifecycle, asserting the stored run, its events, its logs and the calls
//! made to the SSH port.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use testfleet_contract::fake_ssh::{FakeScript, FakeSsh, SshCall};
use testfleet_contract::fake_store::FakeStore;
use testfleet_core::error::DispatchError;
use testfleet_core::ports::{
    Clock, HostKeyPolicy, OutputStream, RemoteExit, RunIdGenerator, RunStore, SshError, SshTarget,
};
use testfleet_core::remote::{RemoteShell, RunScript, WindowsShell};
use testfleet_core::runner::{
    DispatchRequest, LeaseSettings, Liveness, MachineSpec, NoObserver, OwnerProbe, ReportReader,
    Runner, RunnerConfig, StopSignals, reap_lost_runs,
};
use testfleet_core::{
    ControllerId, DispatchedRun, ErrorCode, FailedCase, FailureKind, MachineName, RunId, RunOwner,
    RunStatus, SkippedArtifact, TargetOs, TestSummary, Timestamp,
};

/// A clock that advances one second per reading, from a fixed start.
#[derive(Debug, Default)]
pub(crate) struct StepClock {
    ticks: AtomicI64,
}

impl Clock for StepClock {
    fn now(&self) -> Timestamp {
        let tick = self.ticks.fetch_add(1, Ordering::SeqCst);
        Timestamp::from_unix_ms(1_795_000_000_000 + tick * 1_000)
    }
}

/// Sequential run ids.
#[derive(Debug, Default)]
struct SeqIds {
    next: AtomicU64,
}

impl RunIdGenerator for SeqIds {
    fn next_id(&self, now: Timestamp) -> RunId {
        let seq = self.next.fetch_add(1, Ordering::SeqCst);
        RunId::from_parts(
            u64::try_from(now.unix_ms()).expect("positive"),
            u128::from(seq),
        )
    }
}

pub(crate) struct Harness {
    pub(crate) store: Arc<FakeStore>,
    pub(crate) ssh: FakeSsh,
    pub(crate) runner: Runner,
    pub(crate) state: tempfile::TempDir,
    pub(crate) test_dir: tempfile::TempDir,
}

pub(crate) fn harness(script: FakeScript) -> Harness {
    harness_with(script, |_| {})
}

/// A harness whose runner reads test reports with `reports`.
fn harness_with_reports(script: FakeScript, reports: Option<Arc<dyn ReportReader>>) -> Harness {
    harness_with(script, |config| config.reports = reports)
}

/// A harness whose runner settings `configure` adjusts.
pub(crate) fn harness_with(
    script: FakeScript,
    configure: impl FnOnce(&mut RunnerConfig),
) -> Harness {
    let store = Arc::new(FakeStore::new());
    let ssh = FakeSsh::with_script(script);
    let state = tempfile::tempdir().expect("temp dir");
    let mut config = RunnerConfig::new(state.path().to_path_buf());
    config.kill_grace = Duration::from_millis(50);
    config.kill_wait = Duration::from_secs(5);
    configure(&mut config);
    let runner = Runner::new(
        store.clone(),
        Arc::new(ssh.clone()),
        Arc::new(StepClock::default()),
        Arc::new(SeqIds::default()),
        config,
    );
    let test_dir = tempfile::tempdir().expect("temp dir");
    write_test_dir(test_dir.path(), "echo hello\n");
    Harness {
        store,
        ssh,
        runner,
        state,
        test_dir,
    }
}

fn write_test_dir(dir: &Path, script: &str) {
    std::fs::write(dir.join("run.sh"), format!("#!/bin/sh\n{script}")).expect("write");
    std::fs::create_dir_all(dir.join("data")).expect("mkdir");
    std::fs::write(dir.join("data/input.txt"), "42\n").expect("write");
}

pub(crate) fn machine(name: &str, os: &str) -> MachineSpec {
    MachineSpec {
        name: MachineName::parse(name).expect("valid name"),
        os: TargetOs::new(os),
        windows_shell: WindowsShell::Powershell,
        remote_root: ".testfleet".to_owned(),
        results: Vec::new(),
        cache_max: None,
        ssh: SshTarget {
            host: "10.0.0.5".to_owned(),
            port: 22,
            user: "ci".to_owned(),
            identity_files: vec![PathBuf::from("/keys/id_ed25519")],
            known_hosts: PathBuf::from("/keys/known_hosts"),
            host_key_policy: HostKeyPolicy::Strict,
            connect_timeout: SshTarget::DEFAULT_CONNECT_TIMEOUT,
            keepalive_interval: SshTarget::DEFAULT_KEEPALIVE_INTERVAL,
            keepalive_max: SshTarget::DEFAULT_KEEPALIVE_MAX,
            jumps: Vec::new(),
            identities_only: false,
        },
    }
}

pub(crate) fn request(machine: MachineSpec) -> DispatchRequest {
    DispatchRequest {
        machine,
        timeout: None,
        keep_remote: false,
        owner: None,
        invocation: testfleet_core::Invocation::default(),
    }
}

impl Harness {
    async fn dispatch(&self) -> Result<DispatchedRun, DispatchError> {
        self.dispatch_with(
            &request(machine("linux-1", "linux")),
            &StopSignals::default(),
        )
        .await
    }

    async fn dispatch_with(
        &self,
        request: &DispatchRequest,
        signals: &StopSignals,
    ) -> Result<DispatchedRun, DispatchError> {
        self.runner
            .dispatch(self.test_dir.path(), request, signals, &NoObserver)
            .await
    }

    /// The run's events as `from>to:CODE` strings.
    pub(crate) async fn event_trail(&self, id: &RunId) -> Vec<String> {
        let events = self.store.events(id).await.expect("the run exists");
        events
            .iter()
            .map(|event| {
                let from = event.from.map_or("-", |s| s.as_str());
                let code = event.code.map_or(String::new(), |c| format!(":{c}"));
                format!("{from}>{}{code}", event.to)
            })
            .collect()
    }

    fn runs_dir_is_empty(&self) -> bool {
        match std::fs::read_dir(self.state.path().join("runs")) {
            Ok(mut entries) => entries.next().is_none(),
            Err(_) => true,
        }
    }
}

fn remote_dir(run: &DispatchedRun) -> String {
    format!("/home/ci/.testfleet/runs/{}", run.run.id)
}

fn ssh_error(code: ErrorCode) -> SshError {
    let reason = "scripted".to_owned();
    match code {
        ErrorCode::HostKeyUnknown => SshError::HostKeyUnknown {
            host: "10.0.0.5".into(),
            port: 22,
            fingerprint: "SHA256:abc".into(),
            known_hosts: "/keys/known_hosts".into(),
        },
        ErrorCode::HostKeyMismatch => SshError::HostKeyMismatch {
            host: "10.0.0.5".into(),
            port: 22,
            fingerprint: "SHA256:abc".into(),
            known_hosts: "/keys/known_hosts".into(),
            line: Some(3),
        },
        ErrorCode::AuthFailed => SshError::AuthFailed {
            user: "ci".into(),
            host: "10.0.0.5".into(),
            reason,
        },
        ErrorCode::DialFailed => SshError::DialFailed {
            host: "10.0.0.5".into(),
            port: 22,
            reason,
            source: None,
        },
        ErrorCode::UploadFailed => SshError::UploadFailed {
            path: "/remote/x".into(),
            reason,
            source: None,
        },
        ErrorCode::DownloadFailed => SshError::DownloadFailed {
            path: "/remote/a".into(),
            reason,
            source: None,
        },
        ErrorCode::ExecFailed => SshError::ExecFailed {
            reason,
            source: None,
        },
        ErrorCode::ConnectionLost => SshError::ConnectionLost {
            reason,
            source: None,
        },
        other => panic!("no scripted SSH error for {other}"),
    }
}

#[tokio::test]
async fn a_successful_run_goes_pending_running_completed() {
    let h = harness(FakeScript {
        exec: testfleet_contract::fake_ssh::FakeExec {
            output: vec![
                (OutputStream::Stdout, b"hello\n".to_vec()),
                (OutputStream::Stderr, b"warn\n".to_vec()),
                (OutputStream::Stdout, b"bye\n".to_vec()),
            ],
            ..Default::default()
        },
        download: testfleet_contract::fake_ssh::FakeDownload {
            files: vec![
                ("report.xml".into(), b"<ok/>".to_vec()),
                ("nested/b.bin".into(), vec![0, 1, 2]),
            ],
            ..Default::default()
        },
        ..FakeScript::default()
    });
    let dispatched = h.dispatch().await.expect("the dispatch succeeds");
    let run = &dispatched.run;
    assert!(!dispatched.reused);
    assert_eq!(run.status, RunStatus::Completed);
    assert_eq!(run.error, None);
    assert_eq!(run.exit_code, Some(0));
    assert_eq!(run.entrypoint, "run.sh");
    assert_eq!(
        run.remote_dir.as_deref(),
        Some(remote_dir(&dispatched).as_str())
    );
    assert!(run.started_at.is_some() && run.finished_at.is_some() && run.duration_ms.is_some());
    assert_eq!(
        run.artifacts.as_ref().map(|a| (a.files, a.bytes)),
        Some((2, 8))
    );
    assert_eq!(
        h.event_trail(&run.id).await,
        ["->pending", "pending>running", "running>completed"]
    );

    assert_eq!(
        std::fs::read_to_string(&run.paths.stdout).expect("stdout.log"),
        "hello\nbye\n"
    );
    assert_eq!(
        std::fs::read_to_string(&run.paths.stderr).expect("stderr.log"),
        "warn\n"
    );
    assert_eq!(
        std::fs::read(run.paths.artifacts.join("nested/b.bin")).expect("artifact"),
        [0, 1, 2]
    );
    assert!(run.paths.dir.starts_with(h.state.path().join("runs")));

    let dir = remote_dir(&dispatched);
    assert_eq!(
        h.ssh.calls(),
        [
            SshCall::Connect {
                host: "10.0.0.5".into(),
                port: 22,
                user: "ci".into()
            },
            SshCall::CreateDirAll(".testfleet/runs".into()),
            SshCall::Realpath(".testfleet".into()),
            SshCall::Upload {
                remote_dir: dir.clone(),
                files: vec!["data/input.txt".into(), "run.sh".into()]
            },
            SshCall::ListDir(format!(
                "{}/runs",
                dir.rsplit_once("/runs/").expect("a run dir").0
            )),
            SshCall::Exec(
                RemoteShell::Posix
                    .gated_exec_command(&RunScript {
                        run_dir: &dir,
                        pid_file: &format!("{dir}.pid"),
                        entrypoint: "run.sh",
                        run_id: run.id.as_str(),
                        machine: "linux-1",
                        args: &[],
                        env: &[],
                        grace: Duration::from_millis(50),
                    })
                    .expect("POSIX is gated")
            ),
            SshCall::Download {
                remote_dir: format!("{dir}/artifacts"),
                local_dir: run.paths.artifacts.clone()
            },
            SshCall::Remove(dir.clone()),
            SshCall::Remove(format!("{dir}.pid")),
            SshCall::Close,
        ]
    );
    let stored = h.store.get(&run.id).await.expect("stored");
    assert_eq!(&stored, run);
}

#[tokio::test]
async fn a_windows_machine_gets_run_ps1_through_powershell() {
    let h = harness(FakeScript {
        home: "/C:/Users/ci".into(),
        ..FakeScript::default()
    });
    std::fs::write(h.test_dir.path().join("run.ps1"), "Write-Output hi\r\n").expect("write");
    let windows = machine("win-1", "Windows");
    let dispatched = h
        .dispatch_with(&request(windows), &StopSignals::default())
        .await
        .expect("ok");
    assert_eq!(dispatched.run.entrypoint, "run.ps1");
    assert_eq!(dispatched.run.status, RunStatus::Completed);
    let exec = h.ssh.calls().into_iter().find_map(|call| match call {
        SshCall::Exec(command) => Some(command),
        _ => None,
    });
    let script = testfleet_core::remote::decode_powershell_command(&exec.expect("an exec call"))
        .expect("a PowerShell payload");
    let expected = format!(
        r"Set-Location -LiteralPath 'C:\Users\ci\.testfleet\runs\{}'",
        dispatched.run.id
    );
    assert!(script.contains(&expected), "{script}");
}

/// Mode bits are not hashed, and the exec script would `chmod +x` the entrypoint anyway: on
/// POSIX it is uploaded executable, every other file keeps its bits.
#[tokio::test]
async fn a_posix_entrypoint_is_uploaded_executable() {
    use std::os::unix::fs::PermissionsExt as _;
    let h = harness(FakeScript::default());
    let set_mode = |name: &str, mode: u32| {
        std::fs::set_permissions(
            h.test_dir.path().join(name),
            std::fs::Permissions::from_mode(mode),
        )
        .expect("chmod");
    };
    set_mode("run.sh", 0o640);
    set_mode("data/input.txt", 0o600);
    let mut keep = request(machine("linux-1", "linux"));
    keep.keep_remote = true;
    let dispatched = h
        .dispatch_with(&keep, &StopSignals::default())
        .await
        .expect("ok");
    let dir = remote_dir(&dispatched);
    assert_eq!(h.ssh.remote_mode(&format!("{dir}/run.sh")), Some(0o751));
    assert_eq!(
        h.ssh.remote_mode(&format!("{dir}/data/input.txt")),
        Some(0o600)
    );
}

#[tokio::test]
async fn keep_remote_skips_the_cleanup() {
    let h = harness(FakeScript::default());
    let mut keep = request(machine("linux-1", "linux"));
    keep.keep_remote = true;
    let dispatched = h
        .dispatch_with(&keep, &StopSignals::default())
        .await
        .expect("ok");
    assert_eq!(dispatched.run.status, RunStatus::Completed);
    assert!(!h.ssh.call_names().contains(&"remove"));
}

/// A large POSIX run folder is removed by one gated `rm -rf`, started before the upload and
/// opened after the download; when that fails, the SFTP removal takes over. A kept folder gets
/// no `rm` at all.
#[tokio::test]
async fn a_large_posix_run_folder_is_removed_by_one_gated_rm() {
    let id = SeqIds::default().next_id(StepClock::default().now());
    let dir = format!("/home/ci/.testfleet/runs/{id}");
    let rm = RemoteShell::Posix
        .gated_cleanup_command(&dir, &format!("{dir}.pid"))
        .expect("POSIX is gated");
    let cases = [
        (RemoteExit::Code(0), false, vec!["exec"]),
        (RemoteExit::Code(1), false, vec!["exec", "remove", "remove"]),
        (RemoteExit::Code(0), true, vec![]),
    ];
    for (rm_exit, keep_remote, cleanup_calls) in cases {
        let h = harness(FakeScript {
            exec_by_command: vec![(
                rm.clone(),
                testfleet_contract::fake_ssh::FakeExec {
                    exit: rm_exit.clone(),
                    ..Default::default()
                },
            )],
            ..FakeScript::default()
        });
        for idx in 0..70 {
            std::fs::write(h.test_dir.path().join(format!("f{idx}")), "x").expect("write");
        }
        let mut request = request(machine("linux-1", "linux"));
        request.keep_remote = keep_remote;
        let run = h
            .dispatch_with(&request, &StopSignals::default())
            .await
            .expect("recorded")
            .run;
        assert_eq!(run.id, id);
        assert_eq!(run.status, RunStatus::Completed, "{:?}", run.error);
        let calls = h.ssh.calls();
        let names = h.ssh.call_names();
        let download = names
            .iter()
            .position(|n| *n == "download")
            .expect("download");
        let expected: Vec<&str> = cleanup_calls.into_iter().chain(["close"]).collect();
        assert_eq!(
            names[download + 1..],
            expected,
            "{rm_exit:?} keep={keep_remote}"
        );
        if !keep_remote {
            assert_eq!(calls[download + 1], SshCall::Exec(rm.clone()));
        }
    }
}

#[tokio::test]
async fn preflight_errors_persist_nothing() {
    // A missing directory.
    let h = harness(FakeScript::default());
    let missing = h.test_dir.path().join("absent");
    let error = h
        .runner
        .dispatch(
            &missing,
            &request(machine("linux-1", "linux")),
            &StopSignals::default(),
            &NoObserver,
        )
        .await
        .expect_err("no such directory");
    assert_eq!(error.code(), ErrorCode::TestDirNotFound);
    assert!(error.to_string().contains("absent"), "{error}");

    // A file instead of a directory.
    let file = h.test_dir.path().join("run.sh");
    let error = h
        .runner
        .dispatch(
            &file,
            &request(machine("linux-1", "linux")),
            &StopSignals::default(),
            &NoObserver,
        )
        .await
        .expect_err("a file is not a test directory");
    assert_eq!(error.code(), ErrorCode::TestDirNotFound);

    // No run.ps1 for a Windows machine.
    let error = h
        .dispatch_with(
            &request(machine("win-1", "windows")),
            &StopSignals::default(),
        )
        .await
        .expect_err("no run.ps1");
    assert_eq!(error.code(), ErrorCode::MissingEntrypoint);
    let message = error.to_string();
    assert!(
        message.contains("run.ps1") && message.contains("windows"),
        "{message}"
    );

    let all = h.store.list(&Default::default()).await.expect("list");
    assert!(all.is_empty(), "preflight errors recorded runs: {all:?}");
    assert!(h.ssh.calls().is_empty());
    assert!(h.runs_dir_is_empty());
}

#[tokio::test]
async fn the_same_hash_while_active_returns_the_same_run_without_ssh_calls() {
    let h = harness(FakeScript::default());
    let manifest = testfleet_core::hash::hash_dir(h.test_dir.path()).expect("hashes");
    let req = request(machine("linux-1", "linux"));
    let first = h.runner.prepare(&manifest, &req).await.expect("claims");
    assert!(first.needs_execution());

    // The same hash from another copy of the directory: reused, no SSH call at all.
    let copy = tempfile::tempdir().expect("temp dir");
    write_test_dir(copy.path(), "echo hello\n");
    let again = h
        .runner
        .dispatch(copy.path(), &req, &StopSignals::default(), &NoObserver)
        .await
        .expect("reuses");
    assert!(again.reused);
    assert_eq!(again.run.id, first.run.id);
    assert_eq!(again.run.status, RunStatus::Pending);
    assert!(h.ssh.calls().is_empty(), "{:?}", h.ssh.calls());

    // Another hash: MACHINE_BUSY naming the active run, nothing recorded.
    let other = tempfile::tempdir().expect("temp dir");
    write_test_dir(other.path(), "echo other\n");
    let error = h
        .runner
        .dispatch(other.path(), &req, &StopSignals::default(), &NoObserver)
        .await
        .expect_err("busy");
    assert_eq!(error.code(), ErrorCode::MachineBusy);
    assert!(error.to_string().contains(first.run.id.as_str()), "{error}");
    assert_eq!(
        h.store.list(&Default::default()).await.expect("list").len(),
        1
    );

    // Another machine is free.
    let elsewhere = h
        .runner
        .dispatch(
            other.path(),
            &request(machine("linux-2", "linux")),
            &StopSignals::default(),
            &NoObserver,
        )
        .await
        .expect("another machine");
    assert_eq!(elsewhere.run.status, RunStatus::Completed);

    // Once the first run is terminal, the same hash runs again.
    let done = h
        .runner
        .execute(
            first.run.clone(),
            &req.machine,
            Some(&manifest),
            &StopSignals::default(),
            &NoObserver,
        )
        .await
        .expect("executes");
    assert_eq!(done.status, RunStatus::Completed);
    let rerun = h.dispatch().await.expect("runs again");
    assert!(!rerun.reused);
    assert_ne!(rerun.run.id, first.run.id);
}

async fn check_connect_failure(code: ErrorCode) {
    let h = harness(FakeScript {
        connect_error: Some(ssh_error(code)),
        ..FakeScript::default()
    });
    let run = h.dispatch().await.expect("a recorded failure").run;
    assert_eq!(run.status, RunStatus::Failed, "{code}");
    assert_eq!(run.error.as_ref().map(|e| e.code), Some(code));
    assert_eq!(run.started_at, None);
    assert_eq!(run.remote_dir, None);
    assert_eq!(
        h.event_trail(&run.id).await,
        ["->pending".to_owned(), format!("pending>failed:{code}")]
    );
    assert_eq!(
        h.ssh.call_names(),
        ["connect"],
        "nothing is sent after a failed login"
    );
    // The machine is free again.
    h.ssh.edit_script(|script| script.connect_error = None);
    assert_eq!(
        h.dispatch().await.expect("runs").run.status,
        RunStatus::Completed
    );
}

#[tokio::test]
async fn dial_host_key_and_auth_failures_fail_the_pending_run() {
    for code in [
        ErrorCode::DialFailed,
        ErrorCode::HostKeyUnknown,
        ErrorCode::HostKeyMismatch,
        ErrorCode::AuthFailed,
    ] {
        check_connect_failure(code).await;
    }
}

#[tokio::test]
async fn an_upload_failure_fails_the_run_and_cleans_up() {
    let h = harness(FakeScript {
        upload_error: Some(ssh_error(ErrorCode::UploadFailed)),
        ..FakeScript::default()
    });
    let run = h.dispatch().await.expect("recorded").run;
    assert_eq!(run.status, RunStatus::Failed);
    assert_eq!(run.error.map(|e| e.code), Some(ErrorCode::UploadFailed));
    assert_eq!(run.artifacts, None, "no script ran, so no download");
    assert_eq!(
        h.ssh.call_names(),
        [
            "connect",
            "create_dir_all",
            "realpath",
            "upload",
            "list_dir",
            "gate_closed",
            "remove",
            "remove",
            "close"
        ]
    );
    assert_eq!(
        h.event_trail(&run.id).await,
        [
            "->pending",
            "pending>running",
            "running>failed:UPLOAD_FAILED"
        ]
    );
}

#[tokio::test]
async fn a_file_changed_after_hashing_is_test_dir_changed() {
    // Changed between the claim and the upload: the upload's own check catches it.
    let h = harness(FakeScript::default());
    let req = request(machine("linux-1", "linux"));
    let manifest = testfleet_core::hash::hash_dir(h.test_dir.path()).expect("hashes");
    let prepared = h.runner.prepare(&manifest, &req).await.expect("claims");
    std::fs::write(h.test_dir.path().join("data/input.txt"), "43\n").expect("write");
    let run = h
        .runner
        .execute(
            prepared.run,
            &req.machine,
            Some(&manifest),
            &StopSignals::default(),
            &NoObserver,
        )
        .await
        .expect("recorded");
    assert_eq!(run.status, RunStatus::Failed);
    assert_eq!(
        run.error.as_ref().map(|e| e.code),
        Some(ErrorCode::TestDirChanged)
    );
    assert!(run.error.expect("set").message.contains("input.txt"));
    assert!(!h.ssh.call_names().contains(&"exec"));

    // A detached worker hashes again before dialing: the mismatch fails the pending run.
    let h = harness(FakeScript::default());
    let manifest = testfleet_core::hash::hash_dir(h.test_dir.path()).expect("hashes");
    let prepared = h.runner.prepare(&manifest, &req).await.expect("claims");
    std::fs::write(h.test_dir.path().join("new-file"), "x").expect("write");
    let run = h
        .runner
        .execute(
            prepared.run,
            &req.machine,
            None,
            &StopSignals::default(),
            &NoObserver,
        )
        .await
        .expect("recorded");
    assert_eq!(run.error.map(|e| e.code), Some(ErrorCode::TestDirChanged));
    assert_eq!(
        h.event_trail(&run.id).await,
        ["->pending", "pending>failed:TEST_DIR_CHANGED"]
    );

    // A worker that hashed the directory itself (with its digest cache) hands over a manifest
    // of another hash: the same failure, before dialing.
    let h = harness(FakeScript::default());
    let manifest = testfleet_core::hash::hash_dir(h.test_dir.path()).expect("hashes");
    let prepared = h.runner.prepare(&manifest, &req).await.expect("claims");
    std::fs::write(h.test_dir.path().join("new-file"), "x").expect("write");
    let fresh = testfleet_core::hash::hash_dir(h.test_dir.path()).expect("hashes");
    let run = h
        .runner
        .execute(
            prepared.run,
            &req.machine,
            Some(&fresh),
            &StopSignals::default(),
            &NoObserver,
        )
        .await
        .expect("recorded");
    assert_eq!(run.error.map(|e| e.code), Some(ErrorCode::TestDirChanged));
    assert!(!h.ssh.call_names().contains(&"connect"), "nothing dialed");
    assert!(
        h.ssh.calls().is_empty(),
        "nothing is dialed for a changed directory"
    );
}

#[tokio::test]
async fn a_nonzero_exit_or_a_signal_is_nonzero_exit() {
    let h = harness(FakeScript::default());
    h.ssh.edit_script(|s| s.exec.exit = RemoteExit::Code(3));
    let run = h.dispatch().await.expect("recorded").run;
    assert_eq!(
        (run.status, run.exit_code, run.signal.clone()),
        (RunStatus::Failed, Some(3), None)
    );
    assert_eq!(
        run.error.as_ref().map(|e| e.code),
        Some(ErrorCode::NonzeroExit)
    );
    assert!(run.error.expect("set").message.contains("status 3"));
    assert_eq!(
        h.ssh.call_names()[4..],
        ["list_dir", "exec", "download", "remove", "remove", "close"],
        "artifacts are fetched whatever the outcome"
    );

    h.ssh
        .edit_script(|s| s.exec.exit = RemoteExit::Signal("SEGV".into()));
    let run = h.dispatch().await.expect("recorded").run;
    assert_eq!(
        (run.status, run.exit_code, run.signal.as_deref()),
        (RunStatus::Failed, None, Some("SEGV"))
    );
    assert_eq!(run.error.map(|e| e.code), Some(ErrorCode::NonzeroExit));
    assert_eq!(
        h.event_trail(&run.id).await[2],
        "running>failed:NONZERO_EXIT"
    );
}

#[tokio::test]
async fn a_missing_exit_status_is_not_success() {
    let h = harness(FakeScript::default());
    h.ssh.edit_script(|s| s.exec.exit = RemoteExit::NoStatus);
    let run = h.dispatch().await.expect("recorded").run;
    assert_eq!(run.status, RunStatus::Failed);
    assert_eq!(run.exit_code, None);
    assert_eq!(run.error.map(|e| e.code), Some(ErrorCode::ConnectionLost));
}

#[tokio::test]
async fn exec_failed_and_connection_lost() {
    let h = harness(FakeScript::default());
    h.ssh
        .edit_script(|s| s.exec.error = Some(ssh_error(ErrorCode::ExecFailed)));
    let run = h.dispatch().await.expect("recorded").run;
    assert_eq!(run.error.map(|e| e.code), Some(ErrorCode::ExecFailed));
    assert!(
        !h.ssh.call_names().contains(&"download"),
        "a script that never started left no artifacts to fetch"
    );

    let h = harness(FakeScript::default());
    h.ssh.edit_script(|s| {
        s.exec.output = vec![(OutputStream::Stdout, b"partial".to_vec())];
        s.exec.error = Some(ssh_error(ErrorCode::ConnectionLost));
    });
    let run = h.dispatch().await.expect("recorded").run;
    assert_eq!(run.status, RunStatus::Failed);
    assert_eq!(
        run.error.as_ref().map(|e| e.code),
        Some(ErrorCode::ConnectionLost)
    );
    assert_eq!(
        std::fs::read_to_string(&run.paths.stdout).expect("log"),
        "partial",
        "output so far is kept"
    );
    // The transport is gone: nothing more is tried over it. The runner dials again to kill
    // what is left and to remove the remote folder (the script never started: no artifacts).
    assert_eq!(
        h.ssh.call_names()[4..],
        [
            "exec", "list_dir", "close", "connect", "kill", "remove", "remove", "close"
        ]
    );
    assert_eq!(
        run.remote_cleanup,
        Some(testfleet_core::RemoteCleanup::AlreadyGone)
    );
}

#[tokio::test]
async fn a_timeout_kills_then_downloads_then_removes() {
    let h = harness(FakeScript::default());
    h.ssh
        .edit_script(|s| s.exec.duration = Duration::from_secs(600));
    let mut req = request(machine("linux-1", "linux"));
    req.timeout = Some(Duration::from_millis(100));
    let dispatched = h
        .dispatch_with(&req, &StopSignals::default())
        .await
        .expect("recorded");
    let run = &dispatched.run;
    assert_eq!(run.status, RunStatus::Timeout);
    assert_eq!(run.timeout_ms, Some(100));
    assert_eq!(run.signal.as_deref(), Some("TERM"));
    assert_eq!(run.error.as_ref().map(|e| e.code), Some(ErrorCode::Timeout));
    assert_eq!(
        h.ssh.call_names()[4..],
        [
            "list_dir", "exec", "kill", "download", "remove", "remove", "close"
        ]
    );
    let dir = remote_dir(&dispatched);
    assert!(
        h.ssh
            .calls()
            .contains(&SshCall::Kill(testfleet_core::ports::KillRequest {
                shell: RemoteShell::Posix,
                pid_file: format!("{dir}.pid"),
                run_id: run.id.to_string(),
                grace: Duration::from_millis(50),
            }))
    );
    assert_eq!(
        h.event_trail(&run.id).await,
        ["->pending", "pending>running", "running>timeout:TIMEOUT"]
    );
}

#[tokio::test]
async fn a_command_that_survives_the_kill_is_abandoned_after_the_wait() {
    let h = harness(FakeScript::default());
    h.ssh.edit_script(|s| {
        s.exec.duration = Duration::from_secs(600);
        s.exec.ignore_kill = true;
    });
    let mut req = request(machine("linux-1", "linux"));
    req.timeout = Some(Duration::from_millis(50));
    let run = h
        .dispatch_with(&req, &StopSignals::default())
        .await
        .expect("recorded")
        .run;
    assert_eq!(run.status, RunStatus::Timeout);
    let events = h.store.events(&run.id).await.expect("events");
    let detail = events
        .iter()
        .find(|e| e.to == RunStatus::Timeout && e.from == Some(RunStatus::Running))
        .and_then(|e| e.detail.clone())
        .unwrap_or_default();
    assert!(detail.contains("did not end after the kill"), "{detail}");
    assert!(detail.contains("was not confirmed"), "{detail}");
    // The kill went unanswered: the runner dialed again to finish the job, and said so.
    let last = events.last().expect("events");
    assert_eq!(
        (last.from, last.to),
        (Some(RunStatus::Timeout), RunStatus::Timeout)
    );
    assert!(
        last.detail
            .as_deref()
            .unwrap_or_default()
            .contains("reconnected"),
        "{last:?}"
    );
    assert_eq!(
        run.remote_cleanup,
        Some(testfleet_core::RemoteCleanup::AlreadyGone)
    );
}

#[tokio::test]
async fn cancel_while_running_kills_and_still_collects() {
    let h = harness(FakeScript::default());
    h.ssh.edit_script(|s| {
        s.exec.duration = Duration::from_secs(600);
        s.download.files = vec![("partial.txt".into(), b"p".to_vec())];
    });
    let signals = StopSignals::default();
    let cancel = signals.cancel.clone();
    let canceller = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        cancel.cancel();
    });
    let run = h
        .dispatch_with(&request(machine("linux-1", "linux")), &signals)
        .await
        .expect("recorded")
        .run;
    canceller.await.expect("the canceller ran");
    assert_eq!(run.status, RunStatus::Interrupted);
    assert_eq!(run.error.map(|e| e.code), Some(ErrorCode::Interrupted));
    assert_eq!(run.artifacts.map(|a| a.files), Some(1));
    assert_eq!(
        h.ssh.call_names()[4..],
        [
            "list_dir", "exec", "kill", "download", "remove", "remove", "close"
        ]
    );
    assert_eq!(
        h.event_trail(&run.id).await[2],
        "running>interrupted:INTERRUPTED"
    );
}

#[tokio::test]
async fn abandon_stops_waiting_for_cleanup_but_records_interrupted() {
    let h = harness(FakeScript::default());
    h.ssh.edit_script(|s| {
        s.exec.duration = Duration::from_secs(600);
        s.exec.ignore_kill = true;
    });
    let signals = StopSignals::default();
    signals.cancel.cancel();
    // Cancelled before the dial: the pending run is interrupted without touching the machine.
    let run = h
        .dispatch_with(&request(machine("linux-1", "linux")), &signals)
        .await
        .expect("recorded")
        .run;
    assert_eq!(run.status, RunStatus::Interrupted);
    assert_eq!(
        h.event_trail(&run.id).await,
        ["->pending", "pending>interrupted:INTERRUPTED"]
    );
    assert!(h.ssh.calls().is_empty());

    let signals = StopSignals::default();
    let (cancel, abandon) = (signals.cancel.clone(), signals.abandon.clone());
    let stopper = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        cancel.cancel();
        tokio::time::sleep(Duration::from_millis(100)).await;
        abandon.cancel();
    });
    let started = std::time::Instant::now();
    let run = h
        .dispatch_with(&request(machine("linux-1", "linux")), &signals)
        .await
        .expect("recorded")
        .run;
    stopper.await.expect("the stopper ran");
    assert_eq!(run.status, RunStatus::Interrupted);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the second signal did not stop the wait"
    );
}

#[tokio::test]
async fn a_download_failure_fails_an_otherwise_good_run() {
    let h = harness(FakeScript::default());
    h.ssh
        .edit_script(|s| s.download.error = Some(ssh_error(ErrorCode::DownloadFailed)));
    let run = h.dispatch().await.expect("recorded").run;
    assert_eq!(run.status, RunStatus::Failed);
    assert_eq!(run.exit_code, Some(0));
    assert_eq!(run.error.map(|e| e.code), Some(ErrorCode::DownloadFailed));
    assert!(
        h.ssh.call_names().contains(&"remove"),
        "cleanup still happens"
    );

    // After a non-zero exit the first cause stays; the download failure becomes a detail.
    h.ssh.edit_script(|s| s.exec.exit = RemoteExit::Code(1));
    let run = h.dispatch().await.expect("recorded").run;
    assert_eq!(run.error.map(|e| e.code), Some(ErrorCode::NonzeroExit));
    let events = h.store.events(&run.id).await.expect("events");
    let detail = events
        .last()
        .and_then(|e| e.detail.clone())
        .unwrap_or_default();
    assert!(detail.contains("DOWNLOAD_FAILED"), "{detail}");
}

#[tokio::test]
async fn skipped_artifacts_are_named_in_the_run_and_the_rest_is_kept() {
    let h = harness(FakeScript::default());
    h.ssh.edit_script(|s| {
        s.download.files = vec![("kept.txt".into(), b"kept".to_vec())];
        s.download.skipped = vec![SkippedArtifact {
            path: "../escape".into(),
            reason: "'..' is not a file name".into(),
        }];
    });
    let run = h.dispatch().await.expect("recorded").run;
    assert_eq!(run.status, RunStatus::Completed);
    let artifacts = run.artifacts.as_ref().expect("downloaded");
    assert_eq!((artifacts.files, artifacts.bytes), (1, 4));
    assert_eq!(artifacts.skipped.len(), 1);
    assert_eq!(artifacts.skipped[0].path, "../escape");
    let events = h.store.events(&run.id).await.expect("events");
    let detail = events
        .last()
        .and_then(|e| e.detail.clone())
        .unwrap_or_default();
    assert!(detail.contains("../escape"), "{detail}");
}

#[tokio::test]
async fn a_failed_cleanup_is_a_note_not_a_failure() {
    let h = harness(FakeScript::default());
    h.ssh.edit_script(|s| {
        s.remove_error = Some(SshError::Other {
            reason: "permission denied".into(),
            source: None,
        })
    });
    let run = h.dispatch().await.expect("recorded").run;
    assert_eq!(run.status, RunStatus::Completed);
    let events = h.store.events(&run.id).await.expect("events");
    assert!(
        events
            .last()
            .and_then(|e| e.detail.clone())
            .unwrap_or_default()
            .contains("permission denied")
    );
}

#[tokio::test]
async fn a_local_folder_that_cannot_be_created_fails_the_run_as_internal() {
    let h = harness(FakeScript::default());
    // A file where the runs folder should be.
    std::fs::write(h.state.path().join("runs"), "not a dir").expect("write");
    let run = h.dispatch().await.expect("recorded").run;
    assert_eq!(run.status, RunStatus::Failed);
    assert_eq!(run.error.map(|e| e.code), Some(ErrorCode::Internal));
    assert!(h.ssh.calls().is_empty());
    // The machine is not left locked.
    assert!(h.store.active_runs().await.expect("active").is_empty());
}

#[tokio::test]
async fn a_broken_store_is_a_store_error() {
    let h = harness(FakeScript::default());
    h.store.set_broken(Some("disk I/O error"));
    let error = h.dispatch().await.expect_err("the store is broken");
    assert_eq!(error.code(), ErrorCode::StoreError);
}

struct DeadOwners;

impl OwnerProbe for DeadOwners {
    fn liveness(&self, owner: &RunOwner) -> Liveness {
        if owner.pid == 1 {
            Liveness::Alive
        } else {
            Liveness::Dead
        }
    }
}

/// An owner on this test's own controller.
pub(crate) fn local_owner(pid: u32, start_time: Option<u64>) -> RunOwner {
    RunOwner {
        host: Some(ControllerId::parse("ctl-here").expect("a valid id")),
        pid,
        start_time,
    }
}

#[tokio::test]
async fn the_reaper_interrupts_runs_whose_owner_is_gone() {
    let h = harness(FakeScript::default());
    let manifest = testfleet_core::hash::hash_dir(h.test_dir.path()).expect("hashes");
    let claim = |name: &'static str, pid: u32| {
        let mut req = request(machine(name, "linux"));
        req.owner = Some(local_owner(pid, Some(7)));
        let runner = h.runner.clone();
        let manifest = manifest.clone();
        async move { runner.prepare(&manifest, &req).await.expect("claims").run }
    };
    let lost_pending = claim("m-1", 4_000_000).await;
    let alive = claim("m-2", 1).await;
    let lost_running = claim("m-3", 4_000_001).await;
    let start =
        testfleet_core::Transition::new(RunStatus::Pending, RunStatus::Running, Timestamp::now());
    h.store
        .transition(&lost_running.id, start)
        .await
        .expect("starts");

    let clock = StepClock::default();
    let reaped = reap_lost_runs(h.store.as_ref(), &clock, &DeadOwners)
        .await
        .expect("reaps");
    let mut ids: Vec<_> = reaped.iter().map(|r| r.id.clone()).collect();
    ids.sort();
    assert_eq!(ids, [lost_pending.id.clone(), lost_running.id.clone()]);
    for run in &reaped {
        assert_eq!(run.status, RunStatus::Interrupted);
        assert_eq!(
            run.error.as_ref().map(|e| e.code),
            Some(ErrorCode::WorkerLost)
        );
        assert_eq!(run.worker_pid, None);
    }
    assert_eq!(
        h.event_trail(&lost_running.id).await[2],
        "running>interrupted:WORKER_LOST"
    );
    assert_eq!(
        h.event_trail(&lost_pending.id).await[1],
        "pending>interrupted:WORKER_LOST"
    );
    assert_eq!(
        h.store.get(&alive.id).await.expect("exists").status,
        RunStatus::Pending
    );

    // A worker holding a stale copy finds the run reaped when it tries to start it: the
    // compare-and-set fails, nothing is uploaded, and the stored state is returned.
    let run = h
        .runner
        .execute(
            lost_pending.clone(),
            &machine("m-1", "linux"),
            Some(&manifest),
            &StopSignals::default(),
            &NoObserver,
        )
        .await
        .expect("returns the run");
    assert_eq!(run.status, RunStatus::Interrupted);
    assert_eq!(h.ssh.call_names(), ["connect", "close"]);
}

/// Reports every owner dead, but first hands the run over to a new owner, exactly as a
/// detached worker does while another command's reaper is looking at the run.
struct HandOverWhileProbing {
    store: Arc<FakeStore>,
    id: RunId,
}

impl OwnerProbe for HandOverWhileProbing {
    fn liveness(&self, _owner: &RunOwner) -> Liveness {
        let store = self.store.clone();
        let id = self.id.clone();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .build()
                .expect("runtime");
            runtime.block_on(store.set_owner(
                &id,
                &local_owner(1, Some(1)),
                LeaseSettings::DEFAULT_DURATION,
            ))
        })
        .join()
        .expect("the hand-over thread ran")
        .expect("the hand-over succeeds");
        Liveness::Dead
    }
}

#[tokio::test]
async fn the_reaper_does_not_reap_a_run_handed_over_while_it_looked() {
    let h = harness(FakeScript::default());
    let manifest = testfleet_core::hash::hash_dir(h.test_dir.path()).expect("hashes");
    let mut req = request(machine("m-1", "linux"));
    req.owner = Some(local_owner(4_000_000, Some(7)));
    let run = h.runner.prepare(&manifest, &req).await.expect("claims").run;

    let probe = HandOverWhileProbing {
        store: h.store.clone(),
        id: run.id.clone(),
    };
    let reaped = reap_lost_runs(h.store.as_ref(), &StepClock::default(), &probe)
        .await
        .expect("reaps");
    assert!(
        reaped.is_empty(),
        "a run handed over is not lost: {reaped:?}"
    );
    let stored = h.store.get(&run.id).await.expect("exists");
    assert_eq!(stored.status, RunStatus::Pending);
    assert_eq!(stored.worker_pid, Some(1));
}

/// A report reader that records what it was asked and answers with a fixed summary, after
/// checking that the artifacts it is pointed at are already home.
#[derive(Debug, Default)]
struct RecordingReader {
    calls: Mutex<Vec<(PathBuf, Vec<String>, bool)>>,
}

impl RecordingReader {
    fn summary() -> TestSummary {
        TestSummary {
            total: 3,
            passed: 1,
            failed: 1,
            skipped: 1,
            errors: 0,
            duration_ms: 1_250,
            failures: vec![FailedCase {
                suite: "unit".into(),
                classname: Some("unit.math".into()),
                name: "adds".into(),
                kind: FailureKind::Failure,
                message: "expected 4, got 5".into(),
            }],
            failures_omitted: 0,
            reports: vec!["junit.xml".into()],
            unreadable: Vec::new(),
        }
    }

    fn calls(&self) -> Vec<(PathBuf, Vec<String>, bool)> {
        self.calls.lock().expect("not poisoned").clone()
    }
}

#[async_trait::async_trait]
impl ReportReader for RecordingReader {
    async fn summarize(&self, artifacts_dir: &Path, globs: &[String]) -> Option<TestSummary> {
        let report_is_home = artifacts_dir.join("junit.xml").is_file();
        self.calls.lock().expect("not poisoned").push((
            artifacts_dir.to_path_buf(),
            globs.to_vec(),
            report_is_home,
        ));
        Some(Self::summary())
    }
}

#[tokio::test]
async fn the_test_reports_are_read_after_the_download_and_recorded_with_the_status() {
    let reader = Arc::new(RecordingReader::default());
    let h = harness_with_reports(
        FakeScript {
            download: testfleet_contract::fake_ssh::FakeDownload {
                files: vec![("junit.xml".into(), b"<testsuites/>".to_vec())],
                ..Default::default()
            },
            ..FakeScript::default()
        },
        Some(reader.clone()),
    );
    let mut spec = machine("linux-1", "linux");
    spec.results = vec!["reports/**/*.xml".into()];
    // A non-zero exit still downloads the artifacts, so the reports are read.
    h.ssh.edit_script(|s| s.exec.exit = RemoteExit::Code(1));
    let run = h
        .dispatch_with(&request(spec), &StopSignals::default())
        .await
        .expect("recorded")
        .run;
    assert_eq!(run.status, RunStatus::Failed);
    assert_eq!(run.tests, Some(RecordingReader::summary()));
    assert_eq!(
        reader.calls(),
        [(
            run.paths.artifacts.clone(),
            vec!["reports/**/*.xml".to_owned()],
            true
        )]
    );
    let stored = h.store.get(&run.id).await.expect("stored");
    assert_eq!(stored.tests, run.tests, "recorded by the final transition");
    assert_eq!(
        h.event_trail(&run.id).await,
        [
            "->pending",
            "pending>running",
            "running>failed:NONZERO_EXIT"
        ],
        "the summary adds no event"
    );
}

#[tokio::test]
async fn no_download_means_no_report_is_read() {
    // Failed before the script ran: no artifacts, no reports.
    let reader = Arc::new(RecordingReader::default());
    let h = harness_with_reports(
        FakeScript {
            upload_error: Some(ssh_error(ErrorCode::UploadFailed)),
            ..FakeScript::default()
        },
        Some(reader.clone()),
    );
    let run = h.dispatch().await.expect("recorded").run;
    assert_eq!(run.error.map(|e| e.code), Some(ErrorCode::UploadFailed));
    assert_eq!(run.tests, None);

    // The connection was lost: nothing is downloaded over it, nothing is read.
    h.ssh.edit_script(|s| {
        s.upload_error = None;
        s.exec.error = Some(ssh_error(ErrorCode::ConnectionLost));
    });
    let run = h.dispatch().await.expect("recorded").run;
    assert_eq!(run.error.map(|e| e.code), Some(ErrorCode::ConnectionLost));
    assert_eq!(run.tests, None);

    // A failed download: no summary either.
    h.ssh.edit_script(|s| {
        s.exec.error = None;
        s.download.error = Some(ssh_error(ErrorCode::DownloadFailed));
    });
    let run = h.dispatch().await.expect("recorded").run;
    assert_eq!(run.error.map(|e| e.code), Some(ErrorCode::DownloadFailed));
    assert_eq!(run.tests, None);
    assert_eq!(reader.calls(), [], "the reader was never asked");

    // Without a reader, a completed run records no tests.
    let h = harness(FakeScript::default());
    let run = h.dispatch().await.expect("recorded").run;
    assert_eq!(run.status, RunStatus::Completed);
    assert_eq!(run.tests, None);
}
