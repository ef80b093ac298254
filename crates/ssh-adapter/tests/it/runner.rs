//! The core runner driving the real adapter against the test server, with the fake store:
//! every fault ends its run in the right state with the right code, and timeouts and cancels
//! leave no process of the run alive on the server.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use testfleet_contract::fake_store::FakeStore;
use testfleet_core::ports::{FileCache, RunStore, SshError, SshTarget, SystemClock, UlidGenerator};
use testfleet_core::remote::WindowsShell;
use testfleet_core::runner::{
    DispatchRequest, MachineSpec, NoObserver, Remedies, Runner, RunnerConfig, StopSignals,
};
use testfleet_core::{ErrorCode, MachineName, RemoteCleanup, Run, RunStatus, TargetOs};
use testfleet_testkit::process::{read_pids, survivors_after, tree_script};
use testfleet_testkit::server::{
    ExitOrder, Faults, Request, ScriptedExec, ServerConfig, TestServer, WindowsEmulation,
};

struct Setup {
    server: TestServer,
    store: Arc<FakeStore>,
    runner: Runner,
    /// Kept alive for the run folders under it.
    _state: tempfile::TempDir,
    test_dir: tempfile::TempDir,
}

/// An application's remedy, so that the tests see where the runner puts it.
#[derive(Debug)]
struct TrustRemedy;

impl Remedies for TrustRemedy {
    fn for_dial(&self, machine: &MachineName, error: &SshError) -> Option<String> {
        matches!(error, SshError::HostKeyUnknown { .. }).then(|| format!("trust {machine}"))
    }
}

async fn setup(config: ServerConfig, script: &str) -> Setup {
    let server = TestServer::start(config).await;
    let store = Arc::new(FakeStore::new());
    let state = tempfile::tempdir().expect("temp dir");
    let mut runner_config = RunnerConfig::new(state.path().to_path_buf());
    runner_config.kill_grace = Duration::from_millis(500);
    runner_config.kill_wait = Duration::from_secs(5);
    runner_config.remedies = Arc::new(TrustRemedy);
    let runner = Runner::new(
        store.clone(),
        crate::connector(),
        Arc::new(SystemClock),
        Arc::new(UlidGenerator::default()),
        runner_config,
    );
    let test_dir = tempfile::tempdir().expect("temp dir");
    crate::write_file(
        test_dir.path(),
        "run.sh",
        format!("#!/bin/sh\n{script}").as_bytes(),
        0o755,
    );
    Setup {
        server,
        store,
        runner,
        _state: state,
        test_dir,
    }
}

fn machine(target: SshTarget, os: &str) -> MachineSpec {
    MachineSpec {
        name: MachineName::parse("srv").expect("valid"),
        os: TargetOs::new(os),
        windows_shell: WindowsShell::Powershell,
        remote_root: ".testfleet".into(),
        results: Vec::new(),
        cache_max: Some(FileCache::DEFAULT_MAX_BYTES),
        ssh: target,
    }
}

impl Setup {
    async fn dispatch_with(
        &self,
        target: SshTarget,
        timeout: Option<Duration>,
        signals: &StopSignals,
    ) -> Run {
        let request = DispatchRequest {
            machine: machine(target, "linux"),
            timeout,
            keep_remote: false,
            owner: None,
            invocation: testfleet_core::Invocation::default(),
        };
        self.runner
            .dispatch(self.test_dir.path(), &request, signals, &NoObserver)
            .await
            .expect("a run is recorded")
            .run
    }

    async fn dispatch(&self) -> Run {
        self.dispatch_with(self.server.target(), None, &StopSignals::default())
            .await
    }

    async fn codes(&self, run: &Run) -> Vec<String> {
        let events = self.store.events(&run.id).await.expect("events");
        events
            .iter()
            .map(|e| {
                format!(
                    "{}{}",
                    e.to,
                    e.code.map(|c| format!(":{c}")).unwrap_or_default()
                )
            })
            .collect()
    }

    fn uploaded_anything(&self) -> bool {
        self.server.requests().iter().any(|r| matches!(r, Request::Sftp { op, .. } if op.contains("write") || op.contains("open")))
    }

    fn remote_runs_dir(&self) -> PathBuf {
        self.server.home().join(".testfleet").join("runs")
    }
}

fn error_code(run: &Run) -> Option<ErrorCode> {
    run.error.as_ref().map(|e| e.code)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_completes_with_logs_and_artifacts_and_leaves_nothing_behind() {
    let s = setup(
        ServerConfig::default(),
        "echo out; echo err >&2\nmkdir -p artifacts/n && printf 'b\\000' > artifacts/n/b.bin\n",
    )
    .await;
    let run = s.dispatch().await;
    assert_eq!(run.status, RunStatus::Completed, "{run:?}");
    assert_eq!(run.exit_code, Some(0));
    assert_eq!(
        std::fs::read_to_string(&run.paths.stdout).expect("log"),
        "out\n"
    );
    assert_eq!(
        std::fs::read_to_string(&run.paths.stderr).expect("log"),
        "err\n"
    );
    assert_eq!(
        std::fs::read(run.paths.artifacts.join("n/b.bin")).expect("artifact"),
        b"b\0"
    );
    let remote_dir = PathBuf::from(run.remote_dir.clone().expect("recorded"));
    assert!(remote_dir.starts_with(s.server.home()), "{remote_dir:?}");
    let leftovers: Vec<_> = std::fs::read_dir(s.remote_runs_dir())
        .expect("runs dir")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(
        leftovers.is_empty(),
        "the remote run folder and pid file are removed: {leftovers:?}"
    );
    assert_eq!(s.codes(&run).await, ["pending", "running", "completed"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_exit_orders_complete() {
    for order in [ExitOrder::StatusThenEof, ExitOrder::EofThenStatus] {
        let s = setup(
            ServerConfig {
                exit_order: order,
                ..ServerConfig::default()
            },
            "echo hi\nexit 4\n",
        )
        .await;
        let run = s.dispatch().await;
        assert_eq!(
            (run.status, run.exit_code),
            (RunStatus::Failed, Some(4)),
            "{order:?}"
        );
        assert_eq!(error_code(&run), Some(ErrorCode::NonzeroExit));
        assert_eq!(
            std::fs::read_to_string(&run.paths.stdout).expect("log"),
            "hi\n"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_exit_status_fails_the_run() {
    let s = setup(
        ServerConfig {
            faults: Faults {
                no_exit_status: true,
                ..Faults::default()
            },
            ..ServerConfig::default()
        },
        "true\n",
    )
    .await;
    let run = s.dispatch().await;
    assert_eq!(run.status, RunStatus::Failed);
    assert_eq!(error_code(&run), Some(ErrorCode::ConnectionLost));
    assert_eq!(run.exit_code, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_and_host_key_failures_fail_the_pending_run_before_any_upload() {
    // Refused login.
    let s = setup(
        ServerConfig {
            faults: Faults {
                refuse_auth: true,
                ..Faults::default()
            },
            ..ServerConfig::default()
        },
        "true\n",
    )
    .await;
    let run = s.dispatch().await;
    assert_eq!(
        (run.status, error_code(&run)),
        (RunStatus::Failed, Some(ErrorCode::AuthFailed))
    );
    assert_eq!(s.codes(&run).await, ["pending", "failed:AUTH_FAILED"]);
    assert!(!s.uploaded_anything());

    // Unknown host key.
    let s = setup(ServerConfig::default(), "true\n").await;
    let empty = s.server.client_dir().join("empty_known_hosts");
    std::fs::write(&empty, "").expect("write");
    let mut target = s.server.target();
    target.known_hosts = empty;
    let run = s.dispatch_with(target, None, &StopSignals::default()).await;
    assert_eq!(
        (run.status, error_code(&run)),
        (RunStatus::Failed, Some(ErrorCode::HostKeyUnknown))
    );
    assert!(
        run.error
            .as_ref()
            .expect("set")
            .message
            .contains(&s.server.host_key_fingerprint())
    );
    let message = &run.error.as_ref().expect("set").message;
    assert!(
        message.ends_with("; trust srv"),
        "the application's remedy follows what happened: {message}"
    );
    assert!(s.server.requests().iter().all(|r| !matches!(
        r,
        Request::Auth { .. } | Request::Sftp { .. } | Request::Exec { .. }
    )));

    // A changed host key: another server's key recorded for this address.
    let other = TestServer::start(ServerConfig::default()).await;
    let wrong = s.server.client_dir().join("wrong_known_hosts");
    let line = other.known_hosts_line().replace(
        &format!(":{}", other.port()),
        &format!(":{}", s.server.port()),
    );
    std::fs::write(&wrong, format!("{line}\n")).expect("write");
    let mut target = s.server.target();
    target.known_hosts = wrong;
    let run = s.dispatch_with(target, None, &StopSignals::default()).await;
    assert_eq!(
        (run.status, error_code(&run)),
        (RunStatus::Failed, Some(ErrorCode::HostKeyMismatch))
    );
    assert!(!s.uploaded_anything());

    // Nothing listening.
    let mut target = s.server.target();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    target.port = listener.local_addr().expect("addr").port();
    drop(listener);
    let run = s.dispatch_with(target, None, &StopSignals::default()).await;
    assert_eq!(
        (run.status, error_code(&run)),
        (RunStatus::Failed, Some(ErrorCode::DialFailed))
    );
    assert_eq!(run.started_at, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_dropped_during_the_upload_fails_the_run() {
    let s = setup(
        ServerConfig {
            faults: Faults {
                drop_after_upload_bytes: Some(200_000),
                ..Faults::default()
            },
            ..ServerConfig::default()
        },
        "touch \"$HOME/script-ran\"\n",
    )
    .await;
    crate::write_file(s.test_dir.path(), "big.bin", &vec![7u8; 2_000_000], 0o644);
    let run = s.dispatch().await;
    assert_eq!(run.status, RunStatus::Failed);
    let code = error_code(&run).expect("an error");
    assert!(
        matches!(code, ErrorCode::ConnectionLost | ErrorCode::UploadFailed),
        "{code}"
    );
    // The entrypoint's command was started before the upload, gated, and stayed at its gate.
    let commands = s.server.exec_commands();
    assert!(
        commands
            .iter()
            .filter(|c| c.contains("run.sh"))
            .all(|c| c.contains("read -r tf_gate")),
        "{commands:?}"
    );
    // Give a wrongly released script time to show itself.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(
        !s.server.home().join("script-ran").exists(),
        "the script never ran"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_dropped_during_the_download_fails_the_run() {
    let s = setup(
        ServerConfig {
            faults: Faults {
                drop_after_download_bytes: Some(100_000),
                ..Faults::default()
            },
            ..ServerConfig::default()
        },
        "mkdir -p artifacts && head -c 3000000 /dev/zero > artifacts/big.bin\n",
    )
    .await;
    let run = s.dispatch().await;
    assert_eq!(run.status, RunStatus::Failed);
    let code = error_code(&run).expect("an error");
    assert!(
        matches!(code, ErrorCode::ConnectionLost | ErrorCode::DownloadFailed),
        "{code}"
    );
    assert_eq!(run.exit_code, Some(0), "the script itself succeeded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_test_directory_is_test_dir_changed() {
    let s = setup(ServerConfig::default(), "true\n").await;
    let manifest = testfleet_core::hash::hash_dir(s.test_dir.path()).expect("hashes");
    let request = DispatchRequest {
        machine: machine(s.server.target(), "linux"),
        timeout: None,
        keep_remote: false,
        owner: None,
        invocation: testfleet_core::Invocation::default(),
    };
    let prepared = s.runner.prepare(&manifest, &request).await.expect("claims");
    crate::write_file(
        s.test_dir.path(),
        "run.sh",
        b"#!/bin/sh\necho changed\n",
        0o755,
    );
    let run = s
        .runner
        .execute(
            prepared.run,
            &request.machine,
            Some(&manifest),
            &StopSignals::default(),
            &NoObserver,
        )
        .await
        .expect("recorded");
    assert_eq!(
        (run.status, error_code(&run)),
        (RunStatus::Failed, Some(ErrorCode::TestDirChanged))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_artifact_names_are_refused_and_reported() {
    let outside = tempfile::tempdir().expect("temp dir");
    let s = setup(
        ServerConfig {
            faults: Faults {
                hostile_artifacts: true,
                ..Faults::default()
            },
            ..ServerConfig::default()
        },
        "mkdir -p artifacts && echo fine > artifacts/ok.txt\n",
    )
    .await;
    let run = s.dispatch().await;
    assert_eq!(run.status, RunStatus::Completed, "{run:?}");
    assert_eq!(
        std::fs::read_to_string(run.paths.artifacts.join("ok.txt")).expect("artifact"),
        "fine\n"
    );
    let events = s.store.events(&run.id).await.expect("events");
    let detail = events
        .last()
        .and_then(|e| e.detail.clone())
        .unwrap_or_default();
    for name in ["../escape", "/abs/path", "a/b", "etc-link"] {
        assert!(detail.contains(name), "{name} not reported in {detail}");
    }
    // Nothing escaped: the run folder holds only the logs and artifacts, and artifacts only ok.txt.
    let mut in_artifacts: Vec<_> = walk(&run.paths.artifacts);
    in_artifacts.sort();
    assert_eq!(in_artifacts, [run.paths.artifacts.join("ok.txt")]);
    assert!(
        !run.paths.dir.join("escape").exists()
            && !run
                .paths
                .dir
                .parent()
                .expect("parent")
                .join("escape")
                .exists()
    );
    assert!(walk(outside.path()).is_empty());
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            found.extend(walk(&path));
        } else {
            found.push(path);
        }
    }
    found
}

fn assert_all_dead(record: &Path) {
    let pids = read_pids(record);
    assert!(pids.len() >= 4, "the script recorded its pids: {pids:?}");
    let survivors = survivors_after(&pids, Duration::from_secs(15));
    assert!(
        survivors.is_empty(),
        "processes of the run survived: {survivors:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_kills_the_whole_tree() {
    let records = tempfile::tempdir().expect("temp dir");
    let record = records.path().join("pids");
    let s = setup(ServerConfig::default(), &tree_script(&record, 300)).await;
    let run = s
        .dispatch_with(
            s.server.target(),
            Some(Duration::from_secs(1)),
            &StopSignals::default(),
        )
        .await;
    assert_eq!(
        (run.status, error_code(&run)),
        (RunStatus::Timeout, Some(ErrorCode::Timeout)),
        "{run:?}"
    );
    assert_all_dead(&record);
    assert!(
        s.server
            .exec_commands()
            .iter()
            .any(|c| c.contains("kill -TERM"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_kills_the_whole_tree_and_still_collects() {
    let records = tempfile::tempdir().expect("temp dir");
    let record = records.path().join("pids");
    let script = format!(
        "mkdir -p artifacts && echo early > artifacts/early.txt\n{}",
        tree_script(&record, 300)
    );
    let s = setup(ServerConfig::default(), &script).await;
    let signals = StopSignals::default();
    let cancel = signals.cancel.clone();
    let watched = record.clone();
    let canceller = tokio::spawn(async move {
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::fs::read_to_string(&watched)
            .map(|t| t.lines().count())
            .unwrap_or(0)
            < 4
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        cancel.cancel();
    });
    let run = s.dispatch_with(s.server.target(), None, &signals).await;
    canceller.await.expect("the canceller ran");
    assert_eq!(
        (run.status, error_code(&run)),
        (RunStatus::Interrupted, Some(ErrorCode::Interrupted)),
        "{run:?}"
    );
    assert_eq!(
        std::fs::read_to_string(run.paths.artifacts.join("early.txt")).expect("artifact"),
        "early\n"
    );
    assert_all_dead(&record);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_exec_times_out() {
    let s = setup(
        ServerConfig {
            faults: Faults {
                stall_exec: true,
                ..Faults::default()
            },
            ..ServerConfig::default()
        },
        "true\n",
    )
    .await;
    let started = Instant::now();
    let run = s
        .dispatch_with(
            s.server.target(),
            Some(Duration::from_millis(300)),
            &StopSignals::default(),
        )
        .await;
    assert_eq!(
        (run.status, error_code(&run)),
        (RunStatus::Timeout, Some(ErrorCode::Timeout))
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "no hang: {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_windows_host_gets_an_encoded_powershell_command() {
    let config = ServerConfig {
        windows: Some(WindowsEmulation {
            home: "/C:/Users/ci".into(),
            replies: vec![ScriptedExec {
                command_contains: "powershell.exe".into(),
                stdout: b"hi from windows\r\n".to_vec(),
                stderr: Vec::new(),
                exit_status: 0,
            }],
        }),
        ..ServerConfig::default()
    };
    let s = setup(config, "true\n").await;
    crate::write_file(s.test_dir.path(), "run.ps1", b"Write-Output hi\r\n", 0o644);
    let request = DispatchRequest {
        machine: machine(s.server.target(), "windows"),
        timeout: None,
        keep_remote: false,
        owner: None,
        invocation: testfleet_core::Invocation::default(),
    };
    let run = s
        .runner
        .dispatch(
            s.test_dir.path(),
            &request,
            &StopSignals::default(),
            &NoObserver,
        )
        .await
        .expect("recorded")
        .run;
    assert_eq!(run.status, RunStatus::Completed, "{run:?}");
    assert_eq!(run.entrypoint, "run.ps1");
    assert!(
        run.remote_dir
            .as_deref()
            .is_some_and(|d| d.starts_with("/C:/Users/ci/")),
        "{run:?}"
    );
    assert_eq!(
        std::fs::read_to_string(&run.paths.stdout).expect("log"),
        "hi from windows\r\n"
    );
    let command = s
        .server
        .exec_commands()
        .into_iter()
        .find(|c| c.contains("-EncodedCommand"))
        .expect("an encoded exec");
    let script = testfleet_core::remote::decode_powershell_command(&command).expect("decodes");
    assert!(
        script.contains(&format!(
            r"Set-Location -LiteralPath 'C:\Users\ci\.testfleet\runs\{}'",
            run.id
        )),
        "{script}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_sftp_replies_only_make_the_run_slower() {
    let s = setup(
        ServerConfig {
            faults: Faults {
                reply_delay: Some(Duration::from_millis(20)),
                ..Faults::default()
            },
            ..ServerConfig::default()
        },
        "mkdir -p artifacts && echo slow > artifacts/a.txt\n",
    )
    .await;
    for idx in 0..20 {
        crate::write_file(
            s.test_dir.path(),
            &format!("data/f{idx}"),
            &[u8::try_from(idx).expect("small")],
            0o644,
        );
    }
    let run = s.dispatch().await;
    assert_eq!(run.status, RunStatus::Completed, "{run:?}");
    assert_eq!(
        std::fs::read_to_string(run.paths.artifacts.join("a.txt")).expect("artifact"),
        "slow\n"
    );
    let leftovers: Vec<_> = std::fs::read_dir(s.remote_runs_dir())
        .expect("runs dir")
        .flatten()
        .collect();
    assert!(leftovers.is_empty(), "cleaned up despite the delays");
}

/// Runs `s.dispatch()` in the background and returns it with a way to wait for it.
fn dispatch_in_background(
    s: &Arc<Setup>,
    timeout: Option<Duration>,
) -> tokio::task::JoinHandle<Run> {
    let s = Arc::clone(s);
    tokio::spawn(async move {
        s.dispatch_with(s.server.target(), timeout, &StopSignals::default())
            .await
    })
}

async fn wait_for_pids(record: &Path, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while read_pids(record).len() < n {
        assert!(
            Instant::now() < deadline,
            "the script did not record {n} pids"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_connection_takes_the_remote_tree_with_it_and_the_runner_finishes_the_job() {
    let records = tempfile::tempdir().expect("temp dir");
    let record = records.path().join("pids");
    let script = format!(
        "mkdir -p artifacts && echo early > artifacts/early.txt\n\
         setsid sleep 300 & echo $! >> '{r}'\n{}",
        tree_script(&record, 300),
        r = record.display()
    );
    let s = Arc::new(setup(ServerConfig::default(), &script).await);
    let running = dispatch_in_background(&s, None);
    wait_for_pids(&record, 5).await;
    s.server.drop_connections();
    let run = running.await.expect("the dispatch ran");
    assert_eq!(
        (run.status, error_code(&run)),
        (RunStatus::Failed, Some(ErrorCode::ConnectionLost)),
        "{run:?}"
    );
    // The session's stdin ended with the connection: the wrapper's guard killed the tree, the
    // one process that left the group included.
    assert_all_dead(&record);
    // The runner dialed again: nothing was left to kill, the artifacts came home, the remote
    // folder is gone, and the run says so.
    assert!(
        matches!(
            run.remote_cleanup,
            Some(RemoteCleanup::AlreadyGone | RemoteCleanup::Killed)
        ),
        "{run:?}"
    );
    assert_eq!(
        std::fs::read_to_string(run.paths.artifacts.join("early.txt")).expect("artifact"),
        "early\n"
    );
    let left: Vec<_> = std::fs::read_dir(s.remote_runs_dir())
        .expect("runs dir")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "the remote folder was removed: {left:?}");
    let events = s.store.events(&run.id).await.expect("events");
    let last = events.last().expect("events");
    assert!(
        last.detail
            .as_deref()
            .unwrap_or_default()
            .contains("reconnected"),
        "{events:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_artifacts_are_skipped_and_the_rest_is_kept() {
    let s = setup(
        ServerConfig {
            faults: Faults {
                unreadable_names: vec!["secret.txt".into(), "locked".into()],
                ..Faults::default()
            },
            ..ServerConfig::default()
        },
        "mkdir -p artifacts/locked artifacts/open\n\
         echo ok > artifacts/ok.txt\necho s > artifacts/secret.txt\n\
         echo in > artifacts/locked/inner.txt\necho o > artifacts/open/o.txt\n",
    )
    .await;
    let run = s.dispatch().await;
    assert_eq!(
        run.status,
        RunStatus::Completed,
        "a permission problem is not a failure"
    );
    let artifacts = run.artifacts.as_ref().expect("downloaded");
    assert_eq!(artifacts.files, 2, "{artifacts:?}");
    let mut skipped: Vec<&str> = artifacts.skipped.iter().map(|s| s.path.as_str()).collect();
    skipped.sort_unstable();
    assert_eq!(skipped, ["locked", "secret.txt"]);
    assert!(
        artifacts
            .skipped
            .iter()
            .all(|s| s.reason.contains("permission denied"))
    );
    assert_eq!(
        walk(&run.paths.artifacts)
            .iter()
            .map(|p| p
                .strip_prefix(&run.paths.artifacts)
                .expect("inside")
                .display()
                .to_string())
            .collect::<std::collections::BTreeSet<_>>(),
        ["ok.txt", "open/o.txt"]
            .into_iter()
            .map(str::to_owned)
            .collect()
    );
    assert!(
        !run.paths.dir.join("artifacts.partial").exists(),
        "no temporary files stay"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_cut_by_a_lost_connection_leaves_no_torn_file() {
    let s = setup(
        ServerConfig {
            faults: Faults {
                drop_after_download_bytes: Some(300_000),
                ..Faults::default()
            },
            ..ServerConfig::default()
        },
        "mkdir -p artifacts && head -c 3000000 /dev/urandom > artifacts/big.bin\n\
         cp artifacts/big.bin \"$HOME/big.copy\"\n",
    )
    .await;
    let run = s.dispatch().await;
    assert_eq!(run.status, RunStatus::Failed, "{run:?}");
    // Every connection drops after 300 kB: the download fails each time, and no file stands
    // under its final name unless it is whole.
    let local = run.paths.artifacts.join("big.bin");
    if local.exists() {
        assert_eq!(
            std::fs::read(&local).expect("local"),
            std::fs::read(s.server.home().join("big.copy")).expect("remote copy"),
            "a file under its final name is whole"
        );
    }
    assert!(
        !run.paths.dir.join("artifacts.partial").exists(),
        "no temporary files stay"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_remote_disk_is_named() {
    let s = setup(
        ServerConfig {
            faults: Faults {
                disk_full_after_bytes: Some(100_000),
                ..Faults::default()
            },
            ..ServerConfig::default()
        },
        "true\n",
    )
    .await;
    crate::write_file(s.test_dir.path(), "big.bin", &vec![7u8; 1_000_000], 0o644);
    let run = s.dispatch().await;
    assert_eq!(
        (run.status, error_code(&run)),
        (RunStatus::Failed, Some(ErrorCode::UploadFailed))
    );
    let message = &run.error.as_ref().expect("an error").message;
    assert!(message.contains("the remote disk is full at"), "{message}");
    assert!(message.contains("0 bytes free"), "{message}");
}

/// A process of run `id` left on the machine: in a group of its own, marked with the run's id,
/// its group recorded in `<runs>/<id>.pid` beside a folder `<runs>/<id>/`.
fn leftover(runs: &Path, id: &str) -> std::process::Child {
    use std::os::unix::process::CommandExt as _;
    std::fs::create_dir_all(runs.join(id).join("sub")).expect("a run folder");
    let child = std::process::Command::new("sh")
        .arg("-c")
        .arg("exec sleep 300")
        .env("TESTFLEET_RUN_ID", id)
        .process_group(0)
        .spawn()
        .expect("sh starts");
    std::fs::write(runs.join(format!("{id}.pid")), format!("{}\n", child.id())).expect("pid file");
    child
}

/// A run of machine `srv` in the store, ended.
async fn ended_run(s: &Setup) -> Run {
    let manifest = testfleet_core::hash::hash_dir(s.test_dir.path()).expect("hashes");
    let request = DispatchRequest {
        machine: machine(s.server.target(), "linux"),
        timeout: None,
        keep_remote: false,
        owner: None,
        invocation: testfleet_core::Invocation::default(),
    };
    let prepared = s
        .runner
        .prepare(&manifest, &request)
        .await
        .expect("claimed");
    s.runner
        .end_pending(
            &prepared.run.id,
            RunStatus::Interrupted,
            ErrorCode::WorkerLost,
            "its owner is gone",
        )
        .await
        .expect("ended")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_orphan_of_an_ended_run_is_killed_and_its_folder_removed_before_the_next_run() {
    let s = setup(ServerConfig::default(), "echo new\n").await;
    let old = ended_run(&s).await;
    std::fs::create_dir_all(s.remote_runs_dir()).expect("runs dir");
    let mut orphan = leftover(&s.remote_runs_dir(), old.id.as_str());
    let run = s.dispatch().await;
    assert_eq!(run.status, RunStatus::Completed, "{run:?}");
    let survivors = survivors_after(&[orphan.id()], Duration::from_secs(10));
    assert!(survivors.is_empty(), "the orphan was killed");
    let _ = orphan.wait();
    assert!(
        !s.remote_runs_dir().join(old.id.as_str()).exists(),
        "its folder is gone"
    );
    assert!(!s.remote_runs_dir().join(format!("{}.pid", old.id)).exists());
    let events = s.store.events(&run.id).await.expect("events");
    let detail = events
        .last()
        .and_then(|e| e.detail.clone())
        .unwrap_or_default();
    assert!(
        detail.contains(old.id.as_str()) && detail.contains("killed it"),
        "{detail}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_run_of_another_controller_keeps_the_machine_busy() {
    let s = setup(ServerConfig::default(), "touch \"$HOME/script-ran\"\n").await;
    std::fs::create_dir_all(s.remote_runs_dir()).expect("runs dir");
    let foreign = "01JD0000000000000000000F00";
    let mut other = leftover(&s.remote_runs_dir(), foreign);
    let run = s.dispatch().await;
    let alive = !survivors_after(&[other.id()], Duration::ZERO).is_empty();
    let _ = other.kill();
    let _ = other.wait();
    assert_eq!(
        (run.status, error_code(&run)),
        (RunStatus::Failed, Some(ErrorCode::MachineBusy)),
        "{run:?}"
    );
    let message = &run.error.as_ref().expect("an error").message;
    assert!(
        message.contains(foreign) && message.contains("another controller"),
        "{message}"
    );
    assert!(alive, "another controller's run is never killed");
    assert!(
        s.remote_runs_dir().join(foreign).exists(),
        "nor its folder removed"
    );
    assert!(
        !s.server.home().join("script-ran").exists(),
        "this run's script never ran"
    );
    assert_eq!(run.remote_cleanup, Some(RemoteCleanup::AlreadyGone));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_remnants_are_removed_and_an_unknown_folder_is_left_alone() {
    let s = setup(ServerConfig::default(), "echo new\n").await;
    let runs = s.remote_runs_dir();
    std::fs::create_dir_all(&runs).expect("runs dir");
    let dead = "01JD0000000000000000000D00";
    std::fs::create_dir_all(runs.join(dead)).expect("folder");
    std::fs::write(runs.join(format!("{dead}.pid")), "999999999\n").expect("pid file");
    let uploading = "01JD0000000000000000000U00";
    std::fs::create_dir_all(runs.join(uploading)).expect("folder");
    let run = s.dispatch().await;
    assert_eq!(run.status, RunStatus::Completed, "{run:?}");
    assert!(!runs.join(dead).exists() && !runs.join(format!("{dead}.pid")).exists());
    assert!(
        runs.join(uploading).exists(),
        "a folder without a pid file may be another controller's run being uploaded"
    );
}
