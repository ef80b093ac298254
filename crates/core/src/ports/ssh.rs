//! The SSH ports: dialing a machine, and what one logged-in connection can do.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;

use crate::code::ErrorCode;
use crate::hash::DirManifest;
use crate::remote::RemoteShell;

use super::SharedError;

/// What to do with a host key that known_hosts does not hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HostKeyPolicy {
    /// Refuse it (`HOST_KEY_UNKNOWN`).
    #[default]
    Strict,
    /// Record it in known_hosts and go on, like OpenSSH's `accept-new`. A changed key is still
    /// refused.
    AcceptNew,
}

/// Everything needed to reach one machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshTarget {
    pub host: String,
    pub port: u16,
    pub user: String,
    /// Identity files to try after the agent, in order.
    pub identity_files: Vec<PathBuf>,
    pub known_hosts: PathBuf,
    pub host_key_policy: HostKeyPolicy,
    pub connect_timeout: Duration,
    pub keepalive_interval: Duration,
    /// Keepalives missed in a row before the connection counts as lost.
    pub keepalive_max: u32,
}

impl SshTarget {
    pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
    pub const DEFAULT_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(15);
    pub const DEFAULT_KEEPALIVE_MAX: u32 = 3;
}

/// Why an SSH operation failed. Each variant maps to one stable code.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SshError {
    #[error("host key of {host}:{port} is not in {known_hosts} (offered {fingerprint})")]
    HostKeyUnknown {
        host: String,
        port: u16,
        fingerprint: String,
        known_hosts: PathBuf,
    },
    #[error(
        "host key of {host}:{port} ({fingerprint}) does not match the key recorded in \
         {known_hosts}{line}; the host may have been reinstalled, or someone may be \
         intercepting the connection: verify the new key out of band and edit known_hosts",
        line = .line.map(|n| format!(" at line {n}")).unwrap_or_default()
    )]
    HostKeyMismatch {
        host: String,
        port: u16,
        fingerprint: String,
        known_hosts: PathBuf,
        line: Option<usize>,
    },
    #[error("authentication as {user}@{host} failed: {reason}")]
    AuthFailed {
        user: String,
        host: String,
        reason: String,
    },
    #[error("failed to connect to {host}:{port}: {reason}")]
    DialFailed {
        host: String,
        port: u16,
        reason: String,
        #[source]
        source: Option<SharedError>,
    },
    #[error("upload failed at {path}: {reason}")]
    UploadFailed {
        path: String,
        reason: String,
        #[source]
        source: Option<SharedError>,
    },
    #[error("download failed at {path}: {reason}")]
    DownloadFailed {
        path: String,
        reason: String,
        #[source]
        source: Option<SharedError>,
    },
    #[error("{path} changed after it was hashed; dispatch again to run the new contents")]
    TestDirChanged { path: String },
    #[error("failed to start the remote command: {reason}")]
    ExecFailed {
        reason: String,
        #[source]
        source: Option<SharedError>,
    },
    #[error("connection lost: {reason}")]
    ConnectionLost {
        reason: String,
        #[source]
        source: Option<SharedError>,
    },
    #[error("ssh: {reason}")]
    Other {
        reason: String,
        #[source]
        source: Option<SharedError>,
    },
}

impl SshError {
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::HostKeyUnknown { .. } => ErrorCode::HostKeyUnknown,
            Self::HostKeyMismatch { .. } => ErrorCode::HostKeyMismatch,
            Self::AuthFailed { .. } => ErrorCode::AuthFailed,
            Self::DialFailed { .. } => ErrorCode::DialFailed,
            Self::UploadFailed { .. } => ErrorCode::UploadFailed,
            Self::DownloadFailed { .. } => ErrorCode::DownloadFailed,
            Self::TestDirChanged { .. } => ErrorCode::TestDirChanged,
            Self::ExecFailed { .. } => ErrorCode::ExecFailed,
            Self::ConnectionLost { .. } => ErrorCode::ConnectionLost,
            Self::Other { .. } => ErrorCode::Internal,
        }
    }
}

/// Progress of an upload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TransferProgress {
    pub files_done: u64,
    pub files_total: u64,
    pub bytes_done: u64,
    pub bytes_total: u64,
}

/// Receives upload progress; called often, so it must be cheap.
pub trait ProgressSink: Send + Sync {
    fn progress(&self, progress: TransferProgress);
}

/// A progress sink that ignores everything.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoProgress;

impl ProgressSink for NoProgress {
    fn progress(&self, _progress: TransferProgress) {}
}

/// Totals of a finished transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TransferStats {
    pub files: u64,
    pub bytes: u64,
}

/// Which output stream bytes came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OutputStream {
    Stdout,
    Stderr,
}

/// Receives a remote command's output as it arrives. It never fails: a sink that cannot
/// store bytes remembers its error for its owner, so that the channel is always drained.
#[async_trait]
pub trait ExecOutput: Send {
    async fn write(&mut self, stream: OutputStream, data: &[u8]);
}

/// An [`ExecOutput`] that keeps only the last [`OutputTail::KEEP`] bytes of both streams, for
/// an error message about a helper command (a kill, a cleanup).
#[derive(Debug, Default)]
pub struct OutputTail(Vec<u8>);

impl OutputTail {
    pub const KEEP: usize = 4096;

    /// What was kept, as text, trimmed.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0).trim().to_owned()
    }
}

#[async_trait]
impl ExecOutput for OutputTail {
    async fn write(&mut self, _stream: OutputStream, data: &[u8]) {
        self.0.extend_from_slice(data);
        if self.0.len() > Self::KEEP {
            self.0.drain(..self.0.len() - Self::KEEP);
        }
    }
}

/// How a remote command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RemoteExit {
    /// The command exited with this status.
    Code(i32),
    /// The command was killed by this signal (`TERM`, `KILL`, …; no `SIG` prefix).
    Signal(String),
    /// The channel closed without an exit status or signal.
    NoStatus,
}

/// Holds a started command at its gate: the command was sent to the host at once (so that the
/// host's session start overlaps whatever the caller does meanwhile) but waits for one line on
/// its stdin before it does anything. Create with [`ExecGate::new`]; the [`GateKeeper`] opens
/// it.
#[derive(Debug)]
pub struct ExecGate(tokio::sync::oneshot::Receiver<()>);

/// The caller's end of an [`ExecGate`]. [`GateKeeper::open`] lets the command run; dropping the
/// keeper ends the command before it does anything.
#[derive(Debug)]
pub struct GateKeeper(tokio::sync::oneshot::Sender<()>);

impl ExecGate {
    /// The line a gated command waits for on its stdin, newline included.
    pub const OPEN_LINE: &'static [u8] = b"go\n";

    /// A closed gate and its keeper.
    pub fn new() -> (GateKeeper, ExecGate) {
        let (sender, receiver) = tokio::sync::oneshot::channel();
        (GateKeeper(sender), ExecGate(receiver))
    }

    /// Waits for the keeper: `true` when it opened the gate, `false` when it was dropped.
    pub async fn wait(self) -> bool {
        self.0.await.is_ok()
    }
}

impl GateKeeper {
    /// Lets the gated command run.
    pub fn open(self) {
        // The command may already have ended (its channel failed); nothing waits then.
        let _ = self.0.send(());
    }
}

/// A request to kill the process tree of a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KillRequest {
    pub shell: RemoteShell,
    /// The pid file the exec command wrote (SFTP path form).
    pub pid_file: String,
    /// Time between `TERM` and `KILL` (POSIX).
    pub grace: Duration,
}

/// A remote name that was refused during a download, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusedEntry {
    /// The remote path of the entry (relative to the downloaded folder).
    pub path: String,
    pub reason: String,
}

/// The result of downloading a folder.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DownloadReport {
    pub files: u64,
    pub bytes: u64,
    /// Entries not downloaded: hostile names, symlinks, special files.
    pub refused: Vec<RefusedEntry>,
}

/// Dials machines.
#[async_trait]
pub trait SshConnector: Send + Sync + fmt::Debug {
    /// Connects, verifies the host key against `target.known_hosts` (before anything else is
    /// sent) and logs in.
    ///
    /// # Errors
    /// [`SshError::DialFailed`] (DNS, refused, unreachable, connect timeout);
    /// [`SshError::HostKeyUnknown`] (strict policy, host absent);
    /// [`SshError::HostKeyMismatch`] (another key recorded, whatever the policy);
    /// [`SshError::AuthFailed`] (no key accepted, or an encrypted key without an agent).
    async fn connect(&self, target: &SshTarget) -> Result<Box<dyn SshSession>, SshError>;
}

/// One logged-in connection. Methods take `&self` so that a kill can run while an exec is
/// still streaming.
#[async_trait]
pub trait SshSession: Send + Sync {
    /// Creates `path` and its missing parents (SFTP path form; relative to the login
    /// directory when relative). An existing directory is not an error.
    ///
    /// # Errors
    /// [`SshError::UploadFailed`] naming the path; [`SshError::ConnectionLost`].
    async fn create_dir_all(&self, path: &str) -> Result<(), SshError>;

    /// The absolute form of an existing remote path, as SFTP `realpath` gives it.
    ///
    /// # Errors
    /// [`SshError::UploadFailed`] naming the path; [`SshError::ConnectionLost`].
    async fn realpath(&self, path: &str) -> Result<String, SshError>;

    /// Uploads exactly `manifest`'s directories and files into `remote_dir` (created, with
    /// its parents already present), preserving permission bits, and reports progress. Bytes
    /// are hashed as they are read and checked against the manifest's digests.
    ///
    /// # Errors
    /// [`SshError::TestDirChanged`] naming the file whose contents or size differ from the
    /// manifest; [`SshError::UploadFailed`] naming the remote path;
    /// [`SshError::ConnectionLost`].
    async fn upload(
        &self,
        manifest: &DirManifest,
        remote_dir: &str,
        progress: &dyn ProgressSink,
    ) -> Result<TransferStats, SshError>;

    /// Runs `command` with an empty stdin, streaming its stdout and stderr to `output` as they
    /// arrive, until the channel closes. Dropping the future abandons the command (it is not killed: use
    /// [`SshSession::kill`]).
    ///
    /// # Errors
    /// [`SshError::ExecFailed`] when the command could not be started;
    /// [`SshError::ConnectionLost`] when the transport failed while it ran.
    async fn exec(
        &self,
        command: &str,
        output: &mut dyn ExecOutput,
    ) -> Result<RemoteExit, SshError>;

    /// Like [`SshSession::exec`], but for a command that first reads one line from its stdin
    /// (see [`crate::remote::RemoteShell::exec_command`]): the command is started at once; when
    /// `gate` opens, [`ExecGate::OPEN_LINE`] is written to its stdin; when its keeper is
    /// dropped instead, the command's stdin is closed with nothing written, and it ends without
    /// doing anything. Either way its stdin is then closed.
    ///
    /// # Errors
    /// As [`SshSession::exec`].
    async fn exec_gated(
        &self,
        command: &str,
        gate: ExecGate,
        output: &mut dyn ExecOutput,
    ) -> Result<RemoteExit, SshError>;

    /// Kills the process tree recorded in `request.pid_file`, over a channel of its own.
    ///
    /// # Errors
    /// [`SshError::ExecFailed`] when the kill command could not run;
    /// [`SshError::ConnectionLost`].
    async fn kill(&self, request: &KillRequest) -> Result<(), SshError>;

    /// Downloads the remote folder `remote_dir` into `local_dir` (created if needed). A missing
    /// remote folder downloads nothing and is not an error. Every remote name is checked with
    /// [`crate::remote::check_remote_name`]; bad names and symlinks are refused, reported, and
    /// nothing is written outside `local_dir`.
    ///
    /// # Errors
    /// [`SshError::DownloadFailed`] naming the path; [`SshError::ConnectionLost`].
    async fn download_dir(
        &self,
        remote_dir: &str,
        local_dir: &Path,
    ) -> Result<DownloadReport, SshError>;

    /// Removes a remote file, or a folder and everything in it. A missing path is not an error.
    ///
    /// # Errors
    /// [`SshError::Other`] naming the path; [`SshError::ConnectionLost`].
    async fn remove(&self, path: &str) -> Result<(), SshError>;

    /// Ends the connection politely.
    ///
    /// # Errors
    /// [`SshError::ConnectionLost`] when it was already gone.
    async fn close(&self) -> Result<(), SshError>;
}
