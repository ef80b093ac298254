//! The SSH ports: dialing a machine, and what one logged-in connection can do.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;

use crate::code::ErrorCode;
use crate::hash::DirManifest;
use crate::remote::RemoteShell;
use crate::run::SkippedArtifact;

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
    /// Record it only if its SHA-256 fingerprint is this one (the raw 32 bytes of
    /// `SHA256:<base64>`), as `machines trust --fingerprint` pins it; refuse any other key
    /// (`HOST_KEY_UNKNOWN`, naming the key offered). A changed key is still refused.
    AcceptPinned([u8; 32]),
}

impl HostKeyPolicy {
    /// Parses `SHA256:<base64, unpadded>` (as OpenSSH prints it) into the 32 bytes of
    /// [`HostKeyPolicy::AcceptPinned`].
    ///
    /// # Errors
    /// A message saying what is wrong with `fingerprint`.
    pub fn parse_fingerprint(fingerprint: &str) -> Result<[u8; 32], String> {
        use base64::Engine as _;
        let encoded = fingerprint
            .strip_prefix("SHA256:")
            .ok_or_else(|| format!("{fingerprint:?} is not a SHA256:… fingerprint"))?;
        let bytes = base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(encoded.trim_end_matches('='))
            .map_err(|error| format!("{fingerprint:?} is not a SHA256:… fingerprint: {error}"))?;
        bytes
            .try_into()
            .map_err(|_| format!("{fingerprint:?} is not 32 bytes long, as a SHA-256 is"))
    }
}

/// Everything needed to reach one machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshTarget {
    /// The host name or address to dial, after any `~/.ssh/config` `HostName`. It is also the name
    /// the host key is looked up under in known_hosts: `host` for port 22, `[host]:port` otherwise.
    pub host: String,
    /// The SSH server's TCP port.
    pub port: u16,
    /// The user to log in as.
    pub user: String,
    /// Identity files to try after the agent, in order.
    pub identity_files: Vec<PathBuf>,
    /// The known_hosts file the offered host key is checked against and, under
    /// [`HostKeyPolicy::AcceptNew`], appended to. A missing file knows no host.
    pub known_hosts: PathBuf,
    /// What to do with a host key that known_hosts does not hold. A key that disagrees with
    /// known_hosts is refused whatever the policy.
    pub host_key_policy: HostKeyPolicy,
    /// One deadline for the TCP connect, the handshake and the login together.
    pub connect_timeout: Duration,
    /// How often an SSH keepalive checks that the server still answers.
    pub keepalive_interval: Duration,
    /// Keepalives missed in a row before the connection counts as lost.
    pub keepalive_max: u32,
    /// The jump hosts to go through, first hop first (`proxy_jump`, `ProxyJump`): the first is
    /// dialled over TCP, each next one and then this host over a `direct-tcpip` channel of
    /// the hop before. Each hop's host key is checked with its own `known_hosts` and policy,
    /// and each hop has its own `connect_timeout`. Empty: dial directly.
    pub jumps: Vec<SshTarget>,
    /// Log in with the identity files only, never the agent's keys (`IdentitiesOnly yes`).
    pub identities_only: bool,
}

impl SshTarget {
    /// The connect timeout testfleet uses: 15 s.
    pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
    /// The keepalive interval testfleet uses: 15 s.
    pub const DEFAULT_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(15);
    /// Unanswered keepalives in a row before testfleet counts the connection as lost: 3.
    pub const DEFAULT_KEEPALIVE_MAX: u32 = 3;
}

/// Why an SSH operation failed. Each variant maps to one stable code.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SshError {
    /// The policy is [`HostKeyPolicy::Strict`] and known_hosts holds no entry for the host: the
    /// connection is refused before anything but the handshake is sent. Code `HOST_KEY_UNKNOWN`.
    #[error("host key of {host}:{port} is not in {known_hosts} (offered {fingerprint})")]
    HostKeyUnknown {
        /// The host dialed.
        host: String,
        /// The port dialed.
        port: u16,
        /// The offered key's fingerprint, `SHA256:` and base64, for the user to compare out of
        /// band.
        fingerprint: String,
        /// The known_hosts file that was searched.
        known_hosts: PathBuf,
    },
    /// known_hosts holds other keys for the host and not the offered one, or marks the offered key
    /// `@revoked`. Code `HOST_KEY_MISMATCH`, whatever the policy: no flag overrides it, and the
    /// user must verify the key and edit known_hosts.
    #[error(
        "host key of {host}:{port} ({fingerprint}) does not match the key recorded in \
         {known_hosts}{line}; the host may have been reinstalled, or someone may be \
         intercepting the connection: verify the new key out of band and edit known_hosts",
        line = .line.map(|n| format!(" at line {n}")).unwrap_or_default()
    )]
    HostKeyMismatch {
        /// The host dialed.
        host: String,
        /// The port dialed.
        port: u16,
        /// The offered key's fingerprint, `SHA256:` and base64.
        fingerprint: String,
        /// The known_hosts file that disagrees.
        known_hosts: PathBuf,
        /// The 1-based line of that file that disagrees (the first line with another key, or the
        /// `@revoked` line), when known.
        line: Option<usize>,
    },
    /// The host key was accepted, but the login was not: no offered key was accepted, an encrypted
    /// key has no agent to hold it, the login did not finish within the connect timeout, or the
    /// connection broke during login. Code `AUTH_FAILED`.
    #[error("authentication as {user}@{host} failed: {reason}")]
    AuthFailed {
        /// The user the login was for.
        user: String,
        /// The host dialed.
        host: String,
        /// What was tried and why it failed, for the user (for example the encrypted key and the
        /// `ssh-add` it needs).
        reason: String,
    },
    /// No SSH connection came up: DNS failure, connection refused, host unreachable, a failed
    /// handshake, or a TCP connect or handshake that did not finish within the connect timeout.
    /// Code `DIAL_FAILED`.
    #[error("failed to connect to {host}:{port}: {reason}")]
    DialFailed {
        /// The host dialed.
        host: String,
        /// The port dialed.
        port: u16,
        /// What went wrong, in words.
        reason: String,
        /// The underlying error, when there is one.
        #[source]
        source: Option<SharedError>,
    },
    /// An SFTP request failed while creating the remote folders, resolving the remote root or
    /// uploading; or a path cannot be used: an existing non-directory where a folder must be, a
    /// name that is not valid UTF-8 (refused before anything is sent). Code `UPLOAD_FAILED`.
    #[error("upload failed at {path}: {reason}")]
    UploadFailed {
        /// The path at fault: the remote path (SFTP form), or the relative path of a local file
        /// whose name is not valid UTF-8.
        path: String,
        /// What went wrong, in words.
        reason: String,
        /// The underlying error, when there is one.
        #[source]
        source: Option<SharedError>,
    },
    /// An SFTP request or a local file operation failed while downloading a folder. Code
    /// `DOWNLOAD_FAILED`. An entry that is refused or cannot be read is not this error but a
    /// [`SkippedArtifact`](crate::run::SkippedArtifact) of the [`DownloadReport`].
    #[error("download failed at {path}: {reason}")]
    DownloadFailed {
        /// The path at fault: the remote path for an SFTP failure, the local path for a local one.
        path: String,
        /// What went wrong, in words.
        reason: String,
        /// The underlying error, when there is one.
        #[source]
        source: Option<SharedError>,
    },
    /// A file read for upload no longer holds what the manifest recorded: it changed, grew, shrank
    /// or disappeared since it was hashed. Code `TEST_DIR_CHANGED`. No byte beyond the manifest's
    /// size is sent for it.
    #[error("{path} changed after it was hashed; dispatch again to run the new contents")]
    TestDirChanged {
        /// The file's path relative to the test directory, as the manifest names it.
        path: String,
    },
    /// The remote command could not be started: the session channel or the exec request was
    /// refused. Code `EXEC_FAILED`. The runner also reports a gated command that ended before its
    /// gate opened this way.
    #[error("failed to start the remote command: {reason}")]
    ExecFailed {
        /// What went wrong, in words.
        reason: String,
        /// The underlying error, when there is one.
        #[source]
        source: Option<SharedError>,
    },
    /// The transport failed on a live connection: keepalives went unanswered, or the connection
    /// broke. Code `CONNECTION_LOST`. Nothing more can be done on the session: the runner then
    /// neither downloads artifacts nor cleans up.
    #[error("connection lost: {reason}")]
    ConnectionLost {
        /// What went wrong, in words.
        reason: String,
        /// The underlying error, when there is one.
        #[source]
        source: Option<SharedError>,
    },
    /// Anything else, code `INTERNAL`: a known_hosts file that cannot be read or written, a host
    /// certificate offered (never trusted), an SFTP subsystem or channel that fails to start, a
    /// remote path that cannot be removed.
    #[error("ssh: {reason}")]
    Other {
        /// What failed, naming the file or path when there is one.
        reason: String,
        /// The underlying error, when there is one.
        #[source]
        source: Option<SharedError>,
    },
}

impl SshError {
    /// The stable code of this error: the variant's namesake, and [`ErrorCode::Internal`] for
    /// [`SshError::Other`].
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
    /// Files uploaded completely so far.
    pub files_done: u64,
    /// Files the upload sends in all: the manifest's.
    pub files_total: u64,
    /// Bytes of file contents uploaded so far.
    pub bytes_done: u64,
    /// Bytes the upload sends in all ([`DirManifest::total_bytes`]).
    pub bytes_total: u64,
}

/// Receives upload progress; called often, so it must be cheap.
pub trait ProgressSink: Send + Sync {
    /// Takes the upload's counts so far. It may be called from several threads, and a call may
    /// repeat the counts of the one before.
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
    /// Files transferred.
    pub files: u64,
    /// Bytes of file contents transferred.
    pub bytes: u64,
    /// Files of an upload taken from the machine's file cache instead (nothing sent).
    pub cached_files: u64,
    /// Their bytes.
    pub cached_bytes: u64,
}

impl From<TransferStats> for crate::run::UploadSummary {
    fn from(stats: TransferStats) -> Self {
        Self {
            files: stats.files,
            bytes: stats.bytes,
            cached_files: stats.cached_files,
            cached_bytes: stats.cached_bytes,
        }
    }
}

/// A machine's content-addressed file cache (`docs/contract.md#remote-file-cache`): where it
/// is and how large it may grow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileCache {
    /// The cache folder, `<root>/cache` (SFTP path form).
    pub dir: String,
    /// The size above which the least recently used files are evicted.
    pub max_bytes: u64,
}

impl FileCache {
    /// The size limit unless the fleet file says otherwise: 10 GiB.
    pub const DEFAULT_MAX_BYTES: u64 = 10 * 1024 * 1024 * 1024;
    /// A cached file used more recently than this is never evicted: a run may be about to
    /// link it.
    pub const PROTECTED_FOR: Duration = Duration::from_secs(10 * 60);
}

/// How much a file cache holds, or what a prune removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CacheUsage {
    /// Cached files.
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
}

/// Which output stream bytes came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OutputStream {
    /// The remote command's standard output.
    Stdout,
    /// The remote command's standard error.
    Stderr,
}

/// Receives a remote command's output as it arrives. It never fails: a sink that cannot
/// store bytes remembers its error for its owner, so that the channel is always drained.
#[async_trait]
pub trait ExecOutput: Send {
    /// Takes the next bytes of `stream`, in the order they arrived. A chunk may end in the middle
    /// of a line or of a UTF-8 character.
    async fn write(&mut self, stream: OutputStream, data: &[u8]);
}

/// An [`ExecOutput`] that keeps only the last [`OutputTail::KEEP`] bytes of both streams, for
/// an error message about a helper command (a kill, a cleanup).
#[derive(Debug, Default)]
pub struct OutputTail(Vec<u8>);

impl OutputTail {
    /// How many bytes are kept: the last 4 KiB of both streams together.
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
/// it, and may hand over more bytes for the command to read right after that line (the
/// secrets of a run, which must be on no command line).
#[derive(Debug)]
pub struct ExecGate(tokio::sync::oneshot::Receiver<Vec<u8>>);

/// The caller's end of an [`ExecGate`]. [`GateKeeper::open`] lets the command run; dropping the
/// keeper ends the command before it does anything.
#[derive(Debug)]
pub struct GateKeeper(tokio::sync::oneshot::Sender<Vec<u8>>);

impl ExecGate {
    /// The line a gated command waits for on its stdin, newline included.
    pub const OPEN_LINE: &'static [u8] = b"go\n";

    /// A closed gate and its keeper.
    pub fn new() -> (GateKeeper, ExecGate) {
        let (sender, receiver) = tokio::sync::oneshot::channel();
        (GateKeeper(sender), ExecGate(receiver))
    }

    /// Waits for the keeper. When it opened the gate: the bytes to write to the command's stdin,
    /// [`ExecGate::OPEN_LINE`] followed by what the keeper added; `None` when it was dropped
    /// (then nothing may be written).
    pub async fn wait(self) -> Option<Vec<u8>> {
        self.0.await.ok()
    }
}

impl GateKeeper {
    /// Lets the gated command run.
    pub fn open(self) {
        self.open_with(&[]);
    }

    /// Lets the gated command run, with `payload` written to its stdin right after the gate's
    /// line.
    pub fn open_with(self, payload: &[u8]) {
        let mut bytes = ExecGate::OPEN_LINE.to_vec();
        bytes.extend_from_slice(payload);
        // The command may already have ended (its channel failed); nothing waits then.
        let _ = self.0.send(bytes);
    }
}

/// A request to kill everything of a run on its machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KillRequest {
    /// The machine's shell, which picks the kill command
    /// ([`RemoteShell::kill_command`](crate::remote::RemoteShell::kill_command)).
    pub shell: RemoteShell,
    /// The pid file the exec command wrote (SFTP path form).
    pub pid_file: String,
    /// The run's id, which marks its processes (`TESTFLEET_RUN_ID`).
    pub run_id: String,
    /// Time between `TERM` and `KILL` (POSIX).
    pub grace: Duration,
}

/// What a kill found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KillOutcome {
    /// Something of the run was alive, and now nothing is.
    Killed,
    /// Nothing of the run was alive (it had ended, or never started).
    AlreadyGone,
    /// Processes of the run were still alive after `KILL` (stuck in the kernel, or not the
    /// user's to kill).
    Survived,
}

/// The result of downloading a folder.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DownloadReport {
    /// Regular files downloaded.
    pub files: u64,
    /// Their total size in bytes.
    pub bytes: u64,
    /// Entries not downloaded, and why: names that cannot be local paths, symlinks, special
    /// files, files or folders the remote user cannot read. Everything else was kept.
    pub skipped: Vec<SkippedArtifact>,
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

    /// Like [`SshSession::upload`], but through the machine's file cache `cache`: a file the
    /// cache holds intact is linked into `remote_dir` instead of sent, a file sent is added to
    /// the cache, and the stats say which was which. The run folder holds exactly the manifest
    /// either way. The default sends everything, as a transport without a cache does.
    ///
    /// # Errors
    /// As [`SshSession::upload`].
    async fn upload_cached(
        &self,
        manifest: &DirManifest,
        remote_dir: &str,
        cache: &FileCache,
        progress: &dyn ProgressSink,
    ) -> Result<TransferStats, SshError> {
        let _ = cache;
        self.upload(manifest, remote_dir, progress).await
    }

    /// What the file cache in `cache_dir` holds; nothing when it does not exist. The default
    /// knows no cache.
    ///
    /// # Errors
    /// [`SshError::Other`] naming the folder; [`SshError::ConnectionLost`].
    async fn cache_usage(&self, cache_dir: &str) -> Result<CacheUsage, SshError> {
        let _ = cache_dir;
        Ok(CacheUsage::default())
    }

    /// Evicts the least recently used files of `cache` until it holds at most
    /// `cache.max_bytes`, never a file used within [`FileCache::PROTECTED_FOR`], and removes
    /// what interrupted uploads left in it; with `dry_run` only says what would go. Returns what
    /// was (or would be) removed. The default knows no cache.
    ///
    /// # Errors
    /// [`SshError::Other`] naming the path; [`SshError::ConnectionLost`].
    async fn prune_cache(&self, cache: &FileCache, dry_run: bool) -> Result<CacheUsage, SshError> {
        let _ = (cache, dry_run);
        Ok(CacheUsage::default())
    }

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
    /// (see [`crate::remote::RemoteShell::gated_exec_command`]): the command is started at once;
    /// when `gate` opens, the bytes [`ExecGate::wait`] returns ([`ExecGate::OPEN_LINE`] and
    /// the keeper's payload) are written to its stdin, **and its stdin then
    /// stays open until the command ends** — the remote wrapper takes the end of its stdin for
    /// the end of the connection and kills the run's tree. When the keeper is dropped instead,
    /// the command's stdin is closed with nothing written, and it ends without doing anything.
    /// Dropping the future closes the channel (and so the command's stdin).
    ///
    /// # Errors
    /// As [`SshSession::exec`].
    async fn exec_gated(
        &self,
        command: &str,
        gate: ExecGate,
        output: &mut dyn ExecOutput,
    ) -> Result<RemoteExit, SshError>;

    /// Kills everything of the run whose wrapper's pid is in `request.pid_file`, over a channel
    /// of its own, and says whether anything was alive. The default runs the shell's kill
    /// command ([`RemoteShell::kill_command`]) with [`SshSession::exec`] and reads its exit
    /// status; a transport overrides it only when it kills another way.
    ///
    /// # Errors
    /// [`SshError::ExecFailed`] when the kill command could not run or failed in another way;
    /// [`SshError::ConnectionLost`].
    async fn kill(&self, request: &KillRequest) -> Result<KillOutcome, SshError> {
        use crate::remote::{KILL_ALREADY_GONE, KILL_NO_PID_FILE, KILL_SURVIVORS};
        let command = request
            .shell
            .kill_command(&request.pid_file, &request.run_id, request.grace);
        let mut output = OutputTail::default();
        match self.exec(&command, &mut output).await? {
            RemoteExit::Code(0) => Ok(KillOutcome::Killed),
            RemoteExit::Code(KILL_ALREADY_GONE | KILL_NO_PID_FILE) => Ok(KillOutcome::AlreadyGone),
            RemoteExit::Code(KILL_SURVIVORS) => Ok(KillOutcome::Survived),
            other => Err(SshError::ExecFailed {
                reason: format!("the kill command ended with {other:?}: {}", output.text()),
                source: None,
            }),
        }
    }

    /// The names of the entries of the remote folder `path` (no `.` or `..`), in no particular
    /// order; an empty list when the folder does not exist.
    ///
    /// # Errors
    /// [`SshError::Other`] naming the path; [`SshError::ConnectionLost`].
    async fn list_dir(&self, path: &str) -> Result<Vec<String>, SshError>;

    /// Downloads the remote folder `remote_dir` into `local_dir` (created if needed). A missing
    /// remote folder downloads nothing and is not an error. Every remote name is checked with
    /// [`crate::remote::check_remote_name`]; bad names, symlinks, special files and entries the
    /// remote user cannot read are skipped and reported, the rest is kept, and nothing is
    /// written outside `local_dir`. Every file is written under a temporary name and renamed
    /// only once it is complete and as large as the remote one said, so that a file under its
    /// final name is never torn.
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

    /// Whether the connection is known to be gone: its transport closed, or its keepalives went
    /// unanswered. `false` promises nothing (the next call may still find it lost); a session
    /// kept idle for a while (a queued run's pre-dialed login) is checked with it before use.
    /// The default knows nothing.
    fn is_closed(&self) -> bool {
        false
    }
}
