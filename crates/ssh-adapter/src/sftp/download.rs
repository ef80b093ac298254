//! Downloading a remote folder: a breadth-first walk that checks every name, then the files
//! with several in flight. What the remote user cannot read is skipped and reported, the rest
//! kept; every file is written under a temporary name and renamed once complete, so that a
//! file under its final name is never torn.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::StreamExt as _;
use russh_sftp::client::SftpSession;
use russh_sftp::protocol::StatusCode;
use testfleet_core::ports::{DownloadReport, SshError};
use testfleet_core::remote::{check_remote_name, join_remote};
use testfleet_core::run::SkippedArtifact;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::{CHUNK_BYTES, Kind, Op, is_status, kind_of, op_failed, settle};
use crate::session::RusshSession;

/// A regular remote file to download, with where it goes.
struct PendingDownload {
    remote: String,
    local: PathBuf,
    /// Its path relative to the downloaded folder, for the report.
    rel: String,
    mode: Option<u32>,
    /// The size the listing gave, when it gave one.
    size: Option<u64>,
    /// Where it is written until it is complete.
    partial: PathBuf,
}

/// The folder that files are downloaded into under temporary names, beside `local_dir` (so
/// that no remote name can collide with one, and a rename moves a file into place), e.g.
/// `artifacts.partial/` beside `artifacts/`.
fn partial_dir(local_dir: &Path) -> PathBuf {
    let mut name = local_dir.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    local_dir.with_file_name(name)
}

fn skipped(path: String, reason: impl Into<String>) -> SkippedArtifact {
    SkippedArtifact {
        path,
        reason: reason.into(),
    }
}

fn unreadable(error: &russh_sftp::client::error::Error) -> bool {
    is_status(error, StatusCode::PermissionDenied)
}

async fn download_dir_inner(
    session: &RusshSession,
    remote_dir: &str,
    local_dir: &Path,
) -> Result<DownloadReport, SshError> {
    let sftp = session.sftp().await?;
    let mut report = DownloadReport::default();
    match sftp.symlink_metadata(remote_dir).await {
        Err(error) if is_status(&error, StatusCode::NoSuchFile) => return Ok(report),
        Err(error) => return Err(op_failed(session, Op::Download, remote_dir, error)),
        Ok(attrs) => match kind_of(&attrs) {
            Some(Kind::Dir) | None => {}
            Some(_) => {
                report.skipped.push(skipped(
                    ".".into(),
                    "the folder itself is not a directory (a symlink is not followed)",
                ));
                return Ok(report);
            }
        },
    }
    let local_failed = |path: &Path, error: std::io::Error| SshError::DownloadFailed {
        path: path.display().to_string(),
        reason: error.to_string(),
        source: Some(Arc::new(error)),
    };
    tokio::fs::create_dir_all(local_dir)
        .await
        .map_err(|error| local_failed(local_dir, error))?;

    // Walk breadth-first. Local paths are only ever built by joining one checked name to a
    // folder already inside `local_dir`, so nothing can land outside it.
    let mut files = Vec::new();
    let mut folders: VecDeque<(String, PathBuf, String)> = VecDeque::new();
    folders.push_back((
        remote_dir.to_owned(),
        local_dir.to_path_buf(),
        String::new(),
    ));
    while let Some((remote, local, rel)) = folders.pop_front() {
        let entries = match sftp.read_dir(remote.as_str()).await {
            Ok(entries) => entries,
            Err(error) if unreadable(&error) => {
                let path = if rel.is_empty() { ".".to_owned() } else { rel };
                report.skipped.push(skipped(
                    path,
                    "the folder cannot be read (permission denied)",
                ));
                continue;
            }
            Err(error) => return Err(op_failed(session, Op::Download, &remote, error)),
        };
        for entry in entries {
            let name = entry.file_name();
            let rel_name = if rel.is_empty() {
                name.clone()
            } else {
                format!("{rel}/{name}")
            };
            if let Err(bad) = check_remote_name(&name) {
                report.skipped.push(skipped(rel_name, bad.reason));
                continue;
            }
            let child_remote = join_remote(&remote, &name);
            let attrs = entry.metadata();
            let kind = match kind_of(&attrs) {
                Some(kind) => kind,
                // Some servers send no attributes in a listing: ask, without following links.
                None => match sftp.symlink_metadata(child_remote.as_str()).await {
                    Ok(attrs) => kind_of(&attrs).unwrap_or(Kind::Other),
                    Err(error) => {
                        return Err(op_failed(session, Op::Download, &child_remote, error));
                    }
                },
            };
            let child_local = local.join(&name);
            match kind {
                Kind::Dir => {
                    tokio::fs::create_dir_all(&child_local)
                        .await
                        .map_err(|error| local_failed(&child_local, error))?;
                    folders.push_back((child_remote, child_local, rel_name));
                }
                Kind::File => files.push(PendingDownload {
                    partial: partial_dir(local_dir).join(files.len().to_string()),
                    remote: child_remote,
                    local: child_local,
                    rel: rel_name,
                    mode: attrs.permissions.map(|mode| mode & 0o777),
                    size: attrs.size,
                }),
                Kind::Symlink => report
                    .skipped
                    .push(skipped(rel_name, "symbolic links are not followed")),
                Kind::Other => report
                    .skipped
                    .push(skipped(rel_name, "not a regular file or directory")),
            }
        }
    }

    if !files.is_empty() {
        let partial = partial_dir(local_dir);
        tokio::fs::create_dir_all(&partial)
            .await
            .map_err(|error| local_failed(&partial, error))?;
        let downloaded = download_files(session, &sftp, &files, &mut report).await;
        // Whatever happened, no temporary file stays behind.
        let _ = tokio::fs::remove_dir_all(&partial).await;
        downloaded?;
    }
    Ok(report)
}

/// Downloads the files, several at a time, stopping at the first failure.
async fn download_files(
    session: &RusshSession,
    sftp: &SftpSession,
    files: &[PendingDownload],
    report: &mut DownloadReport,
) -> Result<(), SshError> {
    let n_in_flight = session.tuning.files_in_flight.clamp(1, 8);
    let mut pending = files.iter();
    let mut in_flight = futures::stream::FuturesUnordered::new();
    loop {
        while in_flight.len() < n_in_flight {
            let Some(file) = pending.next() else { break };
            in_flight.push(async move { (file, download_file(session, sftp, file).await) });
        }
        let Some((file, result)) = in_flight.next().await else {
            return Ok(());
        };
        match result {
            Ok(Fetched::Whole(n_bytes)) => {
                report.bytes += n_bytes;
                report.files += 1;
            }
            Ok(Fetched::Skipped(reason)) => report.skipped.push(skipped(file.rel.clone(), reason)),
            Err(error) => return Err(error),
        }
    }
}

/// What became of one file.
enum Fetched {
    /// Downloaded whole, this many bytes.
    Whole(u64),
    /// Not downloaded, for this reason; nothing was written.
    Skipped(String),
}

async fn download_file(
    session: &RusshSession,
    sftp: &SftpSession,
    pending: &PendingDownload,
) -> Result<Fetched, SshError> {
    let remote = pending.remote.as_str();
    let mut remote_file = match sftp.open(remote).await {
        Ok(file) => file,
        Err(error) if unreadable(&error) => {
            return Ok(Fetched::Skipped(
                "the file cannot be read (permission denied)".to_owned(),
            ));
        }
        Err(error) => return Err(op_failed(session, Op::Download, remote, error)),
    };
    let partial = &pending.partial;
    let local_failed = |error: std::io::Error| SshError::DownloadFailed {
        path: pending.local.display().to_string(),
        reason: error.to_string(),
        source: Some(Arc::new(error)),
    };
    let copied = async {
        let mut local = tokio::fs::File::create(partial)
            .await
            .map_err(local_failed)?;
        let mut buffer = vec![0u8; CHUNK_BYTES];
        let mut n_bytes = 0u64;
        loop {
            let n_read = remote_file
                .read(&mut buffer)
                .await
                .map_err(|error| op_failed(session, Op::Download, remote, error))?;
            if n_read == 0 {
                break;
            }
            local
                .write_all(&buffer[..n_read])
                .await
                .map_err(local_failed)?;
            n_bytes += n_read as u64;
        }
        local.flush().await.map_err(local_failed)?;
        Ok::<_, SshError>(n_bytes)
    };
    let copied = copied.await;
    // A read-only handle has nothing to lose on close, but close it to free it on the server.
    let _ = remote_file.shutdown().await;
    let n_bytes = match copied {
        Ok(n_bytes) => n_bytes,
        Err(error) => {
            let _ = tokio::fs::remove_file(partial).await;
            return Err(error);
        }
    };
    if let Some(size) = pending.size
        && size != n_bytes
    {
        let _ = tokio::fs::remove_file(partial).await;
        return Ok(Fetched::Skipped(format!(
            "it changed while it was downloaded ({n_bytes} bytes read, {size} listed)"
        )));
    }
    finish_file(pending, partial).await.map_err(local_failed)?;
    Ok(Fetched::Whole(n_bytes))
}

/// Gives a complete file its mode and its final name.
async fn finish_file(pending: &PendingDownload, partial: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    if let Some(mode) = pending.mode {
        use std::os::unix::fs::PermissionsExt as _;
        // Keep the owner able to read and delete what was downloaded.
        let mode = (mode & 0o777) | 0o600;
        tokio::fs::set_permissions(partial, std::fs::Permissions::from_mode(mode)).await?;
    }
    let renamed = tokio::fs::rename(partial, &pending.local).await;
    if renamed.is_err() {
        let _ = tokio::fs::remove_file(partial).await;
    }
    renamed
}

pub(crate) async fn download_dir(
    session: &RusshSession,
    remote_dir: &str,
    local_dir: &Path,
) -> Result<DownloadReport, SshError> {
    settle(
        session,
        download_dir_inner(session, remote_dir, local_dir).await,
    )
    .await
}
