//! A scriptable fake of the SSH ports that records every call.
//!
//! Each step (connect, upload, exec, kill, download, remove) can be made to fail or to take a
//! while; the exec plays canned output and ends with a scripted exit, or with `TERM` when it
//! is killed first. The call log lets tests assert what the runner asked for, in order.
//!
//! Uploads land in an in-memory remote filesystem that `download_dir`, `realpath` and `remove`
//! read, so the fake passes the same SSH contract suite as the real adapter.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use testfleet_core::hash::{DirManifest, digest_reader};
use testfleet_core::ports::{
    DownloadReport, ExecGate, ExecOutput, HostKeyPolicy, KillOutcome, KillRequest, OutputStream,
    ProgressSink, RemoteExit, SshConnector, SshError, SshSession, SshTarget, TransferProgress,
    TransferStats,
};
use testfleet_core::run::SkippedArtifact;
use tokio::sync::Notify;

/// One call made to the fake, in the order it was made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SshCall {
    Connect {
        host: String,
        port: u16,
        user: String,
    },
    CreateDirAll(String),
    Realpath(String),
    Upload {
        remote_dir: String,
        files: Vec<String>,
    },
    Exec(String),
    /// A gated command whose gate was dropped: it ended without running.
    GateClosed(String),
    Kill(KillRequest),
    ListDir(String),
    Download {
        remote_dir: String,
        local_dir: PathBuf,
    },
    Remove(String),
    Close,
}

impl SshCall {
    /// The call's name, for compact assertions (`["connect", "upload", …]`).
    pub fn name(&self) -> &'static str {
        match self {
            Self::Connect { .. } => "connect",
            Self::CreateDirAll(_) => "create_dir_all",
            Self::Realpath(_) => "realpath",
            Self::Upload { .. } => "upload",
            Self::Exec(_) => "exec",
            Self::GateClosed(_) => "gate_closed",
            Self::Kill(_) => "kill",
            Self::ListDir(_) => "list_dir",
            Self::Download { .. } => "download",
            Self::Remove(_) => "remove",
            Self::Close => "close",
        }
    }
}

/// What the fake exec does.
#[derive(Debug, Clone)]
pub struct FakeExec {
    /// Output chunks written to the sink, in order, before the command "runs".
    pub output: Vec<(OutputStream, Vec<u8>)>,
    /// How long the command runs after its output, unless killed.
    pub duration: Duration,
    /// How it ends when not killed.
    pub exit: RemoteExit,
    /// How it ends when killed.
    pub exit_when_killed: RemoteExit,
    /// Fail instead of running (after the output, if any).
    pub error: Option<SshError>,
    /// Ignore kills (a command that never ends).
    pub ignore_kill: bool,
}

impl Default for FakeExec {
    fn default() -> Self {
        Self {
            output: Vec::new(),
            duration: Duration::ZERO,
            exit: RemoteExit::Code(0),
            exit_when_killed: RemoteExit::Signal("TERM".to_owned()),
            error: None,
            ignore_kill: false,
        }
    }
}

/// What the fake artifact download does.
#[derive(Debug, Clone, Default)]
pub struct FakeDownload {
    /// Files written under the local folder: relative path (`/`-separated) and contents. When
    /// empty, the download copies what the remote filesystem holds under the folder.
    pub files: Vec<(String, Vec<u8>)>,
    /// Entries reported as skipped.
    pub skipped: Vec<SkippedArtifact>,
    pub error: Option<SshError>,
}

/// The whole script of a fake machine.
#[derive(Debug, Clone)]
pub struct FakeScript {
    pub connect_error: Option<SshError>,
    pub connect_delay: Duration,
    /// The login directory; `realpath` of a relative path resolves against it.
    pub home: String,
    pub create_dir_error: Option<SshError>,
    pub upload_error: Option<SshError>,
    pub upload_delay: Duration,
    pub exec: FakeExec,
    /// Exec answers for exact commands, tried before `exec`.
    pub exec_by_command: Vec<(String, FakeExec)>,
    pub kill_error: Option<SshError>,
    /// What a kill that does not fail reports; when `None`, what it found: `Killed` while an
    /// exec runs, `AlreadyGone` otherwise.
    pub kill_outcome: Option<KillOutcome>,
    pub download: FakeDownload,
    pub remove_error: Option<SshError>,
}

impl Default for FakeScript {
    fn default() -> Self {
        Self {
            connect_error: None,
            connect_delay: Duration::ZERO,
            home: "/home/ci".to_owned(),
            create_dir_error: None,
            upload_error: None,
            upload_delay: Duration::ZERO,
            exec: FakeExec::default(),
            exec_by_command: Vec::new(),
            kill_error: None,
            kill_outcome: None,
            download: FakeDownload::default(),
            remove_error: None,
        }
    }
}

/// One entry of the in-memory remote filesystem, keyed by absolute path.
#[derive(Debug, Clone, PartialEq, Eq)]
enum RemoteNode {
    Dir,
    File { contents: Vec<u8>, mode: u32 },
}

#[derive(Debug, Default)]
struct Shared {
    script: Mutex<FakeScript>,
    calls: Mutex<Vec<SshCall>>,
    killed: Notify,
    /// Execs running now (that a kill would end).
    running: std::sync::atomic::AtomicUsize,
    remote: Mutex<BTreeMap<String, RemoteNode>>,
    /// What each opened gate wrote to its command's stdin, in order.
    gate_stdin: Mutex<Vec<Vec<u8>>>,
}

/// A fake [`SshConnector`]; every session it opens shares its script and call log.
#[derive(Debug, Clone, Default)]
pub struct FakeSsh {
    shared: Arc<Shared>,
}

/// A target for the fake: `ci@<host>:22`, strict host keys, no real files.
pub fn fake_target(host: &str) -> SshTarget {
    SshTarget {
        host: host.into(),
        port: 22,
        user: "ci".into(),
        identity_files: Vec::new(),
        known_hosts: PathBuf::from("/nonexistent/known_hosts"),
        host_key_policy: HostKeyPolicy::Strict,
        connect_timeout: SshTarget::DEFAULT_CONNECT_TIMEOUT,
        keepalive_interval: SshTarget::DEFAULT_KEEPALIVE_INTERVAL,
        keepalive_max: SshTarget::DEFAULT_KEEPALIVE_MAX,
        jumps: Vec::new(),
        identities_only: false,
    }
}

impl FakeSsh {
    pub fn new() -> Self {
        Self::default()
    }

    /// What every gate opened so far wrote to its command's stdin (the gate's line, then the
    /// secrets), in order.
    pub fn gate_stdin(&self) -> Vec<Vec<u8>> {
        lock(&self.shared.gate_stdin).clone()
    }

    pub fn with_script(script: FakeScript) -> Self {
        let fake = Self::default();
        *lock(&fake.shared.script) = script;
        fake
    }

    /// Changes the script in place.
    pub fn edit_script(&self, edit: impl FnOnce(&mut FakeScript)) {
        edit(&mut lock(&self.shared.script));
    }

    /// Every call so far.
    pub fn calls(&self) -> Vec<SshCall> {
        lock(&self.shared.calls).clone()
    }

    /// The names of every call so far.
    pub fn call_names(&self) -> Vec<&'static str> {
        lock(&self.shared.calls).iter().map(SshCall::name).collect()
    }

    fn record(&self, call: SshCall) {
        lock(&self.shared.calls).push(call);
    }

    fn script(&self) -> FakeScript {
        lock(&self.shared.script).clone()
    }

    /// The absolute form of a remote path: relative paths resolve against the home folder,
    /// `.` and empty components vanish and `..` goes up.
    fn absolute(&self, path: &str) -> String {
        let joined = if path.starts_with('/') {
            path.to_owned()
        } else {
            format!("{}/{path}", self.script().home)
        };
        let mut parts: Vec<&str> = Vec::new();
        for part in joined.split('/') {
            match part {
                "" | "." => {}
                ".." => {
                    parts.pop();
                }
                part => parts.push(part),
            }
        }
        format!("/{}", parts.join("/"))
    }

    /// Whether the remote filesystem holds `path` (absolute).
    pub fn remote_exists(&self, path: &str) -> bool {
        let path = self.absolute(path);
        path == "/" || lock(&self.shared.remote).contains_key(&path)
    }

    /// The permission bits of the remote file `path` (absolute), if it is a file.
    pub fn remote_mode(&self, path: &str) -> Option<u32> {
        match lock(&self.shared.remote).get(&self.absolute(path)) {
            Some(RemoteNode::File { mode, .. }) => Some(*mode),
            _ => None,
        }
    }

    fn mkdirs(&self, absolute: &str) {
        let mut remote = lock(&self.shared.remote);
        let mut prefix = String::new();
        for part in absolute.split('/').filter(|p| !p.is_empty()) {
            prefix.push('/');
            prefix.push_str(part);
            remote.entry(prefix.clone()).or_insert(RemoteNode::Dir);
        }
    }
}

/// Whether `path` is `dir` or lies below it.
fn is_within(path: &str, dir: &str) -> bool {
    path == dir
        || path
            .strip_prefix(dir)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// Counts an exec as running for as long as it lives.
struct Running<'a>(&'a std::sync::atomic::AtomicUsize);

impl<'a> Running<'a> {
    fn new(count: &'a std::sync::atomic::AtomicUsize) -> Self {
        count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Self(count)
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poison| poison.into_inner())
}

fn fail_or_ok(error: Option<SshError>) -> Result<(), SshError> {
    match error {
        Some(error) => Err(error),
        None => Ok(()),
    }
}

#[async_trait]
impl SshConnector for FakeSsh {
    async fn connect(&self, target: &SshTarget) -> Result<Box<dyn SshSession>, SshError> {
        self.record(SshCall::Connect {
            host: target.host.clone(),
            port: target.port,
            user: target.user.clone(),
        });
        let script = self.script();
        tokio::time::sleep(script.connect_delay).await;
        fail_or_ok(script.connect_error)?;
        Ok(Box::new(FakeSession { fake: self.clone() }))
    }
}

struct FakeSession {
    fake: FakeSsh,
}

impl FakeSession {
    /// Files of the remote filesystem below `remote_dir`: relative path, contents, mode.
    fn remote_files_under(&self, remote_dir: &str) -> Vec<(String, Vec<u8>, u32)> {
        let root = self.fake.absolute(remote_dir);
        lock(&self.fake.shared.remote)
            .iter()
            .filter_map(|(path, node)| match node {
                RemoteNode::File { contents, mode } => {
                    let rel = path.strip_prefix(&root)?.strip_prefix('/')?;
                    Some((rel.to_owned(), contents.clone(), *mode))
                }
                RemoteNode::Dir => None,
            })
            .collect()
    }
}

#[cfg(unix)]
fn set_mode(path: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

#[cfg(not(unix))]
fn set_mode(_path: &Path, _mode: u32) -> std::io::Result<()> {
    Ok(())
}

#[async_trait]
impl SshSession for FakeSession {
    async fn create_dir_all(&self, path: &str) -> Result<(), SshError> {
        self.fake.record(SshCall::CreateDirAll(path.to_owned()));
        fail_or_ok(self.fake.script().create_dir_error)?;
        self.fake.mkdirs(&self.fake.absolute(path));
        Ok(())
    }

    async fn realpath(&self, path: &str) -> Result<String, SshError> {
        self.fake.record(SshCall::Realpath(path.to_owned()));
        if path.starts_with('/') {
            Ok(path.to_owned())
        } else {
            Ok(format!(
                "{}/{}",
                self.fake.script().home.trim_end_matches('/'),
                path
            ))
        }
    }

    async fn upload(
        &self,
        manifest: &DirManifest,
        remote_dir: &str,
        progress: &dyn ProgressSink,
    ) -> Result<TransferStats, SshError> {
        let files = manifest
            .files
            .iter()
            .map(|file| file.rel_path.to_string_lossy())
            .collect();
        self.fake.record(SshCall::Upload {
            remote_dir: remote_dir.to_owned(),
            files,
        });
        let script = self.fake.script();
        tokio::time::sleep(script.upload_delay).await;
        fail_or_ok(script.upload_error)?;
        // Like the real adapter, read every file again and check it against the manifest.
        let mut done = TransferProgress {
            files_total: manifest.files.len() as u64,
            bytes_total: manifest.total_bytes(),
            ..TransferProgress::default()
        };
        let mut buffer = vec![0u8; 64 * 1024];
        let remote_root = self.fake.absolute(remote_dir);
        self.fake.mkdirs(&remote_root);
        for dir in &manifest.dirs {
            self.fake.mkdirs(&format!("{remote_root}/{dir}"));
        }
        for file in &manifest.files {
            let path = file.rel_path.to_local(&manifest.root);
            let changed = || SshError::TestDirChanged {
                path: path.display().to_string(),
            };
            let (digest, size) = std::fs::File::open(&path)
                .and_then(|handle| digest_reader(handle, &mut buffer))
                .map_err(|_| changed())?;
            if digest != file.digest || size != file.size {
                return Err(changed());
            }
            let contents = std::fs::read(&path).map_err(|_| changed())?;
            lock(&self.fake.shared.remote).insert(
                format!("{remote_root}/{}", file.rel_path),
                RemoteNode::File {
                    contents,
                    mode: file.mode,
                },
            );
            done.files_done += 1;
            done.bytes_done += size;
            progress.progress(done);
        }
        Ok(TransferStats {
            files: done.files_done,
            bytes: done.bytes_done,
            ..TransferStats::default()
        })
    }

    async fn exec(
        &self,
        command: &str,
        output: &mut dyn ExecOutput,
    ) -> Result<RemoteExit, SshError> {
        self.fake.record(SshCall::Exec(command.to_owned()));
        let script = self.fake.script();
        let exec = script
            .exec_by_command
            .into_iter()
            .find_map(|(scripted, exec)| (scripted == command).then_some(exec))
            .unwrap_or(script.exec);
        for (stream, data) in &exec.output {
            output.write(*stream, data).await;
        }
        fail_or_ok(exec.error)?;
        let killed = self.fake.shared.killed.notified();
        tokio::pin!(killed);
        let _running = Running::new(&self.fake.shared.running);
        if exec.ignore_kill {
            tokio::time::sleep(exec.duration).await;
            return Ok(exec.exit);
        }
        tokio::select! {
            () = tokio::time::sleep(exec.duration) => Ok(exec.exit),
            () = &mut killed => Ok(exec.exit_when_killed),
        }
    }

    async fn exec_gated(
        &self,
        command: &str,
        gate: ExecGate,
        output: &mut dyn ExecOutput,
    ) -> Result<RemoteExit, SshError> {
        // A command that cannot start fails at once, as a refused channel does; otherwise,
        // like a POSIX gated script, nothing runs unless the gate opens.
        let script = self.fake.script();
        let fails_to_start = script
            .exec_by_command
            .into_iter()
            .find_map(|(scripted, exec)| (scripted == command).then_some(exec))
            .unwrap_or(script.exec)
            .error
            .is_some();
        if fails_to_start {
            return self.exec(command, output).await;
        }
        let Some(stdin) = gate.wait().await else {
            self.fake.record(SshCall::GateClosed(command.to_owned()));
            return Ok(RemoteExit::Code(125));
        };
        lock(&self.fake.shared.gate_stdin).push(stdin);
        self.exec(command, output).await
    }

    async fn kill(&self, request: &KillRequest) -> Result<KillOutcome, SshError> {
        self.fake.record(SshCall::Kill(request.clone()));
        let script = self.fake.script();
        fail_or_ok(script.kill_error)?;
        let running = self
            .fake
            .shared
            .running
            .load(std::sync::atomic::Ordering::SeqCst);
        self.fake.shared.killed.notify_waiters();
        Ok(script.kill_outcome.unwrap_or(if running > 0 {
            KillOutcome::Killed
        } else {
            KillOutcome::AlreadyGone
        }))
    }

    async fn list_dir(&self, path: &str) -> Result<Vec<String>, SshError> {
        self.fake.record(SshCall::ListDir(path.to_owned()));
        let dir = self.fake.absolute(path);
        let names = lock(&self.fake.shared.remote)
            .keys()
            .filter_map(|key| {
                let rest = key.strip_prefix(&dir)?.strip_prefix('/')?;
                (!rest.contains('/')).then(|| rest.to_owned())
            })
            .collect();
        Ok(names)
    }

    async fn download_dir(
        &self,
        remote_dir: &str,
        local_dir: &Path,
    ) -> Result<DownloadReport, SshError> {
        self.fake.record(SshCall::Download {
            remote_dir: remote_dir.to_owned(),
            local_dir: local_dir.to_path_buf(),
        });
        let download = self.fake.script().download;
        fail_or_ok(download.error)?;
        let write_error = |path: &Path, error: std::io::Error| SshError::DownloadFailed {
            path: path.display().to_string(),
            reason: error.to_string(),
            source: None,
        };
        std::fs::create_dir_all(local_dir).map_err(|e| write_error(local_dir, e))?;
        let mut report = DownloadReport {
            skipped: download.skipped,
            ..DownloadReport::default()
        };
        let files = if download.files.is_empty() {
            self.remote_files_under(remote_dir)
        } else {
            let scripted = download.files.into_iter();
            scripted
                .map(|(rel, contents)| (rel, contents, 0o644))
                .collect()
        };
        for (rel_path, contents, mode) in files {
            let path = rel_path
                .split('/')
                .fold(local_dir.to_path_buf(), |dir, part| dir.join(part));
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(|e| write_error(parent, e))?;
            }
            std::fs::write(&path, &contents).map_err(|e| write_error(&path, e))?;
            set_mode(&path, mode).map_err(|e| write_error(&path, e))?;
            report.files += 1;
            report.bytes += contents.len() as u64;
        }
        Ok(report)
    }

    async fn remove(&self, path: &str) -> Result<(), SshError> {
        self.fake.record(SshCall::Remove(path.to_owned()));
        fail_or_ok(self.fake.script().remove_error)?;
        let absolute = self.fake.absolute(path);
        lock(&self.fake.shared.remote).retain(|key, _| !is_within(key, &absolute));
        Ok(())
    }

    async fn close(&self) -> Result<(), SshError> {
        self.fake.record(SshCall::Close);
        Ok(())
    }
}
