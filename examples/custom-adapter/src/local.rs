//! A transport that reaches this very machine: commands run with `sh -c` in a folder that
//! stands for the remote login's home, in a process group of their own (as under sshd, so
//! that the core's kill command reaches the whole tree), and files are copied.
//!
//! The upload reads files through the core's [`read_small_file`], which checks every file
//! against the manifest, as any transport must: what is hashed is what is uploaded.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use async_trait::async_trait;
use testfleet_core::hash::{DirManifest, SmallFile, read_small_file};
use testfleet_core::ports::{
    DownloadReport, ExecGate, ExecOutput, HostKeyPolicy, OutputStream, ProgressSink, RemoteExit,
    SshConnector, SshError, SshSession, SshTarget, TransferStats,
};
use testfleet_core::remote::{WindowsShell, check_remote_name};
use testfleet_core::run::SkippedArtifact;
use testfleet_core::runner::MachineSpec;
use testfleet_core::{MachineName, TargetOs};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// "Dials" this machine: every session works in `home`.
#[derive(Debug, Clone)]
pub struct LocalConnector {
    home: PathBuf,
}

impl LocalConnector {
    /// A connector whose sessions treat `home` as the remote login directory.
    pub fn new(home: PathBuf) -> Self {
        Self { home }
    }
}

/// A machine of the fleet that [`LocalConnector`] reaches (the SSH fields are not used).
pub fn local_machine(name: &str) -> MachineSpec {
    MachineSpec {
        name: MachineName::parse(name).expect("example machine names are valid"),
        os: TargetOs::linux(),
        windows_shell: WindowsShell::default(),
        remote_root: MachineSpec::DEFAULT_REMOTE_ROOT.to_owned(),
        results: Vec::new(),
        cache_max: None,
        ssh: SshTarget {
            host: "localhost".into(),
            port: 22,
            user: "me".into(),
            identity_files: Vec::new(),
            known_hosts: PathBuf::new(),
            host_key_policy: HostKeyPolicy::Strict,
            connect_timeout: Duration::from_secs(1),
            keepalive_interval: Duration::from_secs(15),
            keepalive_max: 3,
            jumps: Vec::new(),
            identities_only: false,
        },
    }
}

#[async_trait]
impl SshConnector for LocalConnector {
    async fn connect(&self, _target: &SshTarget) -> Result<Box<dyn SshSession>, SshError> {
        Ok(Box::new(LocalSession {
            home: self.home.clone(),
        }))
    }
}

struct LocalSession {
    home: PathBuf,
}

fn failed(path: &Path, error: std::io::Error, upload: bool) -> SshError {
    let (path, reason, source) = (path.display().to_string(), error.to_string(), None);
    if upload {
        SshError::UploadFailed {
            path,
            reason,
            source,
        }
    } else {
        SshError::DownloadFailed {
            path,
            reason,
            source,
        }
    }
}

impl LocalSession {
    fn local(&self, remote: &str) -> PathBuf {
        self.home.join(remote)
    }

    /// Runs `command` with `sh -c`, its stdin fed by the gate (or empty), streaming output.
    async fn run(
        &self,
        command: &str,
        gate: Option<ExecGate>,
        output: &mut dyn ExecOutput,
    ) -> Result<RemoteExit, SshError> {
        let mut child = tokio::process::Command::new("sh")
            .args(["-c", command])
            .current_dir(&self.home)
            .stdin(if gate.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .map_err(|e| SshError::ExecFailed {
                reason: e.to_string(),
                source: None,
            })?;
        // The gate's line, then stdin stays open until the command ends (the wrapper takes its
        // end for a lost connection); a dropped gate closes it at once.
        let (ended, until_ended) = tokio::sync::oneshot::channel::<()>();
        if let (Some(gate), Some(mut stdin)) = (gate, child.stdin.take()) {
            tokio::spawn(async move {
                if let Some(line) = gate.wait().await
                    && stdin.write_all(&line).await.is_ok()
                {
                    let _ = until_ended.await;
                }
            });
        }
        let (mut out, mut err) = (child.stdout.take(), child.stderr.take());
        let (mut out_buf, mut err_buf) = ([0u8; 8192], [0u8; 8192]);
        while out.is_some() || err.is_some() {
            tokio::select! {
                n = read_from(&mut out, &mut out_buf) => match n {
                    0 => out = None,
                    n => output.write(OutputStream::Stdout, &out_buf[..n]).await,
                },
                n = read_from(&mut err, &mut err_buf) => match n {
                    0 => err = None,
                    n => output.write(OutputStream::Stderr, &err_buf[..n]).await,
                },
            }
        }
        let status = child.wait().await.map_err(|e| SshError::ConnectionLost {
            reason: e.to_string(),
            source: None,
        })?;
        drop(ended);
        use std::os::unix::process::ExitStatusExt as _;
        Ok(match (status.code(), status.signal()) {
            (Some(code), _) => RemoteExit::Code(code),
            (None, Some(9)) => RemoteExit::Signal("KILL".into()),
            (None, Some(15)) => RemoteExit::Signal("TERM".into()),
            (None, Some(other)) => RemoteExit::Signal(other.to_string()),
            (None, None) => RemoteExit::NoStatus,
        })
    }
}

#[async_trait]
impl SshSession for LocalSession {
    async fn create_dir_all(&self, path: &str) -> Result<(), SshError> {
        let local = self.local(path);
        std::fs::create_dir_all(&local).map_err(|e| failed(&local, e, true))
    }

    async fn realpath(&self, path: &str) -> Result<String, SshError> {
        let local = self.local(path);
        let real = std::fs::canonicalize(&local).map_err(|e| failed(&local, e, true))?;
        Ok(real.to_string_lossy().into_owned())
    }

    async fn upload(
        &self,
        manifest: &DirManifest,
        remote_dir: &str,
        _progress: &dyn ProgressSink,
    ) -> Result<TransferStats, SshError> {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = |mode| std::fs::Permissions::from_mode(mode);
        let dest = self.local(remote_dir);
        for dir in
            std::iter::once(dest.clone()).chain(manifest.dirs.iter().map(|d| d.to_local(&dest)))
        {
            std::fs::create_dir_all(&dir).map_err(|e| failed(&dir, e, true))?;
        }
        for file in &manifest.files {
            let path = file.rel_path.to_local(&dest);
            let bytes = match read_small_file(&manifest.root, file) {
                Ok(SmallFile::Whole(bytes)) => bytes,
                Ok(SmallFile::Changed) => {
                    return Err(SshError::TestDirChanged {
                        path: file.rel_path.to_string_lossy(),
                    });
                }
                Err(error) => return Err(failed(&path, error, true)),
            };
            std::fs::write(&path, bytes)
                .and_then(|()| std::fs::set_permissions(&path, mode(file.mode)))
                .map_err(|e| failed(&path, e, true))?;
        }
        let (files, bytes) = (manifest.files.len() as u64, manifest.total_bytes());
        Ok(TransferStats {
            files,
            bytes,
            ..TransferStats::default()
        })
    }

    async fn exec(
        &self,
        command: &str,
        output: &mut dyn ExecOutput,
    ) -> Result<RemoteExit, SshError> {
        self.run(command, None, output).await
    }

    async fn exec_gated(
        &self,
        command: &str,
        gate: ExecGate,
        output: &mut dyn ExecOutput,
    ) -> Result<RemoteExit, SshError> {
        self.run(command, Some(gate), output).await
    }

    async fn download_dir(
        &self,
        remote_dir: &str,
        local_dir: &Path,
    ) -> Result<DownloadReport, SshError> {
        let mut report = DownloadReport::default();
        let source = self.local(remote_dir);
        if source.is_dir() {
            copy_tree(&source, local_dir, "", &mut report)?;
        }
        Ok(report)
    }

    async fn remove(&self, path: &str) -> Result<(), SshError> {
        let local = self.local(path);
        let removed = match std::fs::symlink_metadata(&local) {
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(&local),
            _ => std::fs::remove_file(&local),
        };
        removed.map_err(|e| SshError::Other {
            reason: format!("failed to remove {path}: {e}"),
            source: None,
        })
    }

    async fn list_dir(&self, path: &str) -> Result<Vec<String>, SshError> {
        let local = self.local(path);
        match std::fs::read_dir(&local) {
            Ok(entries) => Ok(entries
                .filter_map(|entry| Some(entry.ok()?.file_name().to_string_lossy().into_owned()))
                .collect()),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(error) => Err(failed(&local, error, false)),
        }
    }

    async fn close(&self) -> Result<(), SshError> {
        Ok(())
    }
}

/// Reads what a pipe has; 0 at its end (or on an error). A closed pipe never answers.
async fn read_from<R: tokio::io::AsyncRead + Unpin>(pipe: &mut Option<R>, buf: &mut [u8]) -> usize {
    match pipe {
        Some(pipe) => pipe.read(buf).await.unwrap_or(0),
        None => std::future::pending().await,
    }
}

/// Copies the regular files and folders of `from` into `to`, refusing bad names, symlinks and
/// special files (nothing lands outside `to`).
fn copy_tree(
    from: &Path,
    to: &Path,
    rel: &str,
    report: &mut DownloadReport,
) -> Result<(), SshError> {
    std::fs::create_dir_all(to).map_err(|e| failed(to, e, false))?;
    for entry in std::fs::read_dir(from).map_err(|e| failed(from, e, false))? {
        let entry = entry.map_err(|e| failed(from, e, false))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let rel_name = if rel.is_empty() {
            name.clone()
        } else {
            format!("{rel}/{name}")
        };
        let refuse = |reason: &str| SkippedArtifact {
            path: rel_name.clone(),
            reason: reason.into(),
        };
        if let Err(bad) = check_remote_name(&name) {
            report.skipped.push(refuse(bad.reason));
            continue;
        }
        let kind = entry
            .file_type()
            .map_err(|e| failed(&entry.path(), e, false))?;
        let target = to.join(&name);
        if kind.is_dir() {
            copy_tree(&entry.path(), &target, &rel_name, report)?;
        } else if kind.is_file() {
            report.bytes +=
                std::fs::copy(entry.path(), &target).map_err(|e| failed(&target, e, false))?;
            report.files += 1;
        } else {
            report
                .skipped
                .push(refuse("not a regular file or directory"));
        }
    }
    Ok(())
}
