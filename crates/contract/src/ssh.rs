//! The SSH port contract suite: one set of `SshSession` behaviours that every implementation
//! (the russh adapter against the testkit server or OpenSSH, a fake, an adapter of your own) must
//! show.
//!
//! The suite speaks POSIX shell on the remote side; the commands it runs are the constants
//! below, so that a fake can script exactly these.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use testfleet_core::hash::hash_dir;
use testfleet_core::ports::{
    ExecGate, ExecOutput, KillOutcome, KillRequest, NoProgress, OutputStream, RemoteExit,
    SshConnector, SshSession, SshTarget,
};
use testfleet_core::remote::{RemoteShell, RunScript, join_remote, posix_gated_command};

/// Writes `out` to stdout, `err` to stderr and exits 3.
pub const OUTPUT_AND_EXIT_COMMAND: &str = "printf 'out\\n'; printf 'err\\n' >&2; exit 3";
/// Kills its own shell with `TERM`.
pub const SELF_TERM_COMMAND: &str = "kill -TERM $$";
/// Does nothing and succeeds; run against [`ContractHost::NoExitStatus`].
pub const TRUE_COMMAND: &str = "true";
/// Copies its stdin to stdout, then prints `end`: it ends only if stdin ends.
pub const STDIN_COMMAND: &str = "cat; echo end";

/// Prints `end`.
pub const END_COMMAND: &str = "echo end";

/// The run id the kill case marks its processes with.
pub const KILL_RUN_ID: &str = "01JD00000000000000000000KX";

/// [`END_COMMAND`] behind a POSIX gate: prints `end` once the gate opens (its stdin then stays
/// open, which it does not read), and nothing when the gate is dropped (exit status 125).
pub fn gated_end_command() -> String {
    posix_gated_command(END_COMMAND)
}

/// Which kind of host the suite asks the factory for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContractHost {
    /// A host that runs commands with a POSIX shell and behaves like OpenSSH.
    Normal,
    /// A host that closes exec channels without an exit status.
    NoExitStatus,
}

/// Makes the targets the suite connects to; `None` when the implementation cannot provide
/// that kind of host (that check is then skipped).
pub type TargetFactory = Arc<dyn Fn(ContractHost) -> Option<SshTarget> + Send + Sync>;

/// Collects a command's output in memory.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Captured {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl Captured {
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

#[async_trait]
impl ExecOutput for Captured {
    async fn write(&mut self, stream: OutputStream, data: &[u8]) {
        match stream {
            OutputStream::Stdout => self.stdout.extend_from_slice(data),
            OutputStream::Stderr => self.stderr.extend_from_slice(data),
        }
    }
}

async fn connect(connector: &dyn SshConnector, target: &SshTarget) -> Box<dyn SshSession> {
    match connector.connect(target).await {
        Ok(session) => session,
        Err(error) => panic!(
            "connecting to {}:{} failed: {error}",
            target.host, target.port
        ),
    }
}

/// Runs the whole suite.
///
/// # Panics
/// On the first behaviour that breaks the contract.
pub async fn ssh(connector: Arc<dyn SshConnector>, targets: TargetFactory) {
    let target = targets(ContractHost::Normal).expect("the suite needs a normal host");
    let session = connect(connector.as_ref(), &target).await;
    let session = session.as_ref();

    exec_reports_output_and_exit_code(session).await;
    exec_reports_exit_signal(session).await;
    exec_stdin_is_empty(session).await;
    gated_exec_runs_when_its_gate_opens(session).await;
    gated_exec_does_nothing_when_its_gate_is_dropped(session).await;
    let root = directories_are_created_idempotently(session).await;
    upload_and_download_round_trip(session, &root).await;
    kill_ends_a_running_exec(session, &root).await;
    remove_is_recursive_and_tolerates_missing(session, &root).await;
    session
        .close()
        .await
        .expect("close succeeds on a live session");

    if let Some(target) = targets(ContractHost::NoExitStatus) {
        let session = connect(connector.as_ref(), &target).await;
        let mut output = Captured::default();
        let exit = session
            .exec(TRUE_COMMAND, &mut output)
            .await
            .expect("the exec runs");
        assert_eq!(
            exit,
            RemoteExit::NoStatus,
            "a channel closed without exit status"
        );
        session.close().await.expect("close succeeds");
    }
}

async fn exec_reports_output_and_exit_code(session: &dyn SshSession) {
    let mut output = Captured::default();
    let exit = session
        .exec(OUTPUT_AND_EXIT_COMMAND, &mut output)
        .await
        .expect("the exec runs");
    assert_eq!(exit, RemoteExit::Code(3));
    assert_eq!(output.stdout_text(), "out\n");
    assert_eq!(output.stderr_text(), "err\n");
}

async fn exec_reports_exit_signal(session: &dyn SshSession) {
    let mut output = Captured::default();
    let exit = session
        .exec(SELF_TERM_COMMAND, &mut output)
        .await
        .expect("the exec runs");
    assert_eq!(exit, RemoteExit::Signal("TERM".into()));
}

async fn exec_stdin_is_empty(session: &dyn SshSession) {
    let mut output = Captured::default();
    let exit = tokio::time::timeout(
        Duration::from_secs(30),
        session.exec(STDIN_COMMAND, &mut output),
    )
    .await
    .expect("a command reading stdin sees its end at once")
    .expect("the exec runs");
    assert_eq!(exit, RemoteExit::Code(0));
    assert_eq!(output.stdout_text(), "end\n");
}

/// Starts [`gated_end_command`], then opens its gate (`open`) or drops it, and returns how
/// the command ended and what it printed.
async fn run_gated(session: &dyn SshSession, open: bool) -> (RemoteExit, Captured) {
    let command = gated_end_command();
    let (keeper, gate) = ExecGate::new();
    let mut output = Captured::default();
    let decide = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if open {
            keeper.open();
        } else {
            drop(keeper);
        }
    };
    let (exit, ()) = tokio::join!(
        tokio::time::timeout(
            Duration::from_secs(30),
            session.exec_gated(&command, gate, &mut output)
        ),
        decide
    );
    let exit = exit
        .expect("a gated command ends once its gate is opened or dropped")
        .expect("the exec runs");
    (exit, output)
}

async fn gated_exec_runs_when_its_gate_opens(session: &dyn SshSession) {
    let (exit, output) = run_gated(session, true).await;
    assert_eq!(
        exit,
        RemoteExit::Code(0),
        "stderr: {}",
        output.stderr_text()
    );
    assert_eq!(output.stdout_text(), "end\n");
}

async fn gated_exec_does_nothing_when_its_gate_is_dropped(session: &dyn SshSession) {
    let (exit, output) = run_gated(session, false).await;
    assert_eq!(exit, RemoteExit::Code(125));
    assert_eq!(output.stdout_text(), "", "nothing ran");
}

/// Creates `testfleet-contract/a/b` twice and returns the absolute `testfleet-contract`.
async fn directories_are_created_idempotently(session: &dyn SshSession) -> String {
    for _ in 0..2 {
        session
            .create_dir_all("testfleet-contract/a/b")
            .await
            .expect("create_dir_all is idempotent");
    }
    let nested = session
        .realpath("testfleet-contract/a/b")
        .await
        .expect("realpath of an existing dir");
    assert!(nested.starts_with('/'), "realpath is absolute: {nested}");
    assert!(
        nested.ends_with("/testfleet-contract/a/b"),
        "realpath names the folder: {nested}"
    );
    let root = session
        .realpath("testfleet-contract")
        .await
        .expect("realpath of an existing dir");
    session
        .create_dir_all(&join_remote(&root, "abs/c"))
        .await
        .expect("absolute paths work too");
    root
}

#[cfg(unix)]
fn write_file(path: &Path, contents: &[u8], mode: u32) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::create_dir_all(path.parent().expect("a file has a parent"))
        .expect("the folder can be created");
    std::fs::write(path, contents).expect("the file can be written");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .expect("the mode can be set");
}

#[cfg(unix)]
fn mode_of(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path)
        .expect("the file exists")
        .permissions()
        .mode()
        & 0o777
}

async fn upload_and_download_round_trip(session: &dyn SshSession, root: &str) {
    let local = tempfile::tempdir().expect("a temp dir");
    let big: Vec<u8> = (0..300_000u32).map(|n| (n % 251) as u8).collect();
    let files: [(&str, &[u8], u32); 4] = [
        ("run.sh", b"#!/bin/sh\necho hi\n", 0o755),
        ("data/x.txt", b"x\n", 0o644),
        ("data/deep/secret.bin", b"\x00\x01\x02", 0o600),
        ("data/big.bin", &big, 0o644),
    ];
    for (rel, contents, mode) in files {
        write_file(&local.path().join(rel), contents, mode);
    }
    let manifest = hash_dir(local.path()).expect("the temp dir hashes");
    let remote = join_remote(root, "up");
    let stats = session
        .upload(&manifest, &remote, &NoProgress)
        .await
        .expect("the upload succeeds");
    assert_eq!(stats.files, 4);
    assert_eq!(stats.bytes, manifest.total_bytes());

    let back = tempfile::tempdir().expect("a temp dir");
    let dest = back.path().join("artifacts");
    let report = session
        .download_dir(&remote, &dest)
        .await
        .expect("the download succeeds");
    assert_eq!(report.files, 4, "{report:?}");
    assert_eq!(report.bytes, manifest.total_bytes());
    assert!(report.skipped.is_empty(), "{report:?}");
    for (rel, contents, mode) in files {
        let path = dest.join(rel);
        assert_eq!(std::fs::read(&path).expect("downloaded"), contents, "{rel}");
        assert_eq!(mode_of(&path), mode, "mode of {rel}");
    }

    let missing = session
        .download_dir(&join_remote(root, "no-such-dir"), &back.path().join("none"))
        .await;
    let missing = missing.expect("a missing folder downloads nothing");
    assert_eq!(
        (missing.files, missing.bytes, missing.skipped.len()),
        (0, 0, 0)
    );
}

async fn kill_ends_a_running_exec(session: &dyn SshSession, root: &str) {
    let local = tempfile::tempdir().expect("a temp dir");
    write_file(
        &local.path().join("run.sh"),
        b"#!/bin/sh\necho started\nsleep 60\necho not-killed\n",
        0o755,
    );
    let manifest = hash_dir(local.path()).expect("the temp dir hashes");
    let run_dir = join_remote(root, "runs/kill");
    let pid_file = join_remote(root, "runs/kill.pid");
    session
        .create_dir_all(&join_remote(root, "runs"))
        .await
        .expect("the runs folder");
    session
        .upload(&manifest, &run_dir, &NoProgress)
        .await
        .expect("the upload succeeds");

    let script = RunScript {
        run_dir: &run_dir,
        pid_file: &pid_file,
        entrypoint: "run.sh",
        run_id: KILL_RUN_ID,
        machine: "m1",
        args: &[],
        env: &[],
        grace: Duration::from_secs(2),
    };
    let command = RemoteShell::Posix.exec_command(&script);
    let mut output = Captured::default();
    let request = KillRequest {
        shell: RemoteShell::Posix,
        pid_file,
        run_id: KILL_RUN_ID.to_owned(),
        grace: Duration::from_secs(2),
    };
    let (exit, killed) = tokio::join!(session.exec(&command, &mut output), session.kill(&request));
    assert_eq!(
        killed.expect("the kill command runs"),
        KillOutcome::Killed,
        "something was alive"
    );
    let exit = exit.expect("the exec ends once killed");
    assert!(
        matches!(&exit, RemoteExit::Signal(name) if name == "TERM" || name == "KILL")
            || matches!(exit, RemoteExit::Code(143 | 137)),
        "killed, not finished: {exit:?} {output:?}"
    );
    assert!(!output.stdout_text().contains("not-killed"), "{output:?}");
    let again = session.kill(&request).await.expect("the kill command runs");
    assert_eq!(again, KillOutcome::AlreadyGone, "nothing is left to kill");

    let names = session
        .list_dir(&join_remote(root, "runs"))
        .await
        .expect("the runs folder lists");
    assert!(
        names.iter().any(|name| name == "kill"),
        "a folder lists its entries by name: {names:?}"
    );
    let none = session
        .list_dir(&join_remote(root, "no-such-dir"))
        .await
        .expect("a missing folder lists nothing");
    assert!(none.is_empty(), "{none:?}");
}

async fn remove_is_recursive_and_tolerates_missing(session: &dyn SshSession, root: &str) {
    session
        .remove(root)
        .await
        .expect("a folder is removed with its contents");
    let gone = tempfile::tempdir().expect("a temp dir");
    let report = session
        .download_dir(root, gone.path())
        .await
        .expect("a missing folder downloads nothing");
    assert_eq!(report.files, 0);
    session
        .remove(root)
        .await
        .expect("a missing path is not an error");
}
