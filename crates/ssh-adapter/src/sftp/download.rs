//! Downloading a remote folder: a breadth-first walk that checks every name, then the files
//! with several in flight.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::StreamExt as _;
use russh_sftp::client::SftpSession;
use russh_sftp::protocol::StatusCode;
use testfleet_core::ports::{DownloadReport, RefusedEntry, SshError};
use testfleet_core::remote::{check_remote_name, join_remote};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::{CHUNK_BYTES, Kind, Op, is_status, kind_of, op_failed, settle};
use crate::session::RusshSession;

/// A regular remote file to download, with where it goes.
struct PendingDownload {
    remote: String,
    local: PathBuf,
    mode: Option<u32>,
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
                report.refused.push(RefusedEntry {
                    path: ".".into(),
                    reason: "the folder itself is not a directory (a symlink is not followed)"
                        .into(),
                });
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
        let entries = sftp
            .read_dir(remote.as_str())
            .await
            .map_err(|error| op_failed(session, Op::Download, &remote, error))?;
        for entry in entries {
            let name = entry.file_name();
            let rel_name = if rel.is_empty() {
                name.clone()
            } else {
                format!("{rel}/{name}")
            };
            if let Err(bad) = check_remote_name(&name) {
                report.refused.push(RefusedEntry {
                    path: rel_name,
                    reason: bad.reason.to_owned(),
                });
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
                    remote: child_remote,
                    local: child_local,
                    mode: attrs.permissions.map(|mode| mode & 0o777),
                }),
                Kind::Symlink => report.refused.push(RefusedEntry {
                    path: rel_name,
                    reason: "symbolic links are not followed".into(),
                }),
                Kind::Other => report.refused.push(RefusedEntry {
                    path: rel_name,
                    reason: "not a regular file or directory".into(),
                }),
            }
        }
    }

    let n_in_flight = session.tuning.files_in_flight.clamp(1, 8);
    let mut pending = files.iter();
    let mut in_flight = futures::stream::FuturesUnordered::new();
    loop {
        while in_flight.len() < n_in_flight {
            let Some(file) = pending.next() else { break };
            in_flight.push(download_file(session, &sftp, file));
        }
        let Some(result) = in_flight.next().await else {
            break;
        };
        report.bytes += result?;
        report.files += 1;
    }
    Ok(report)
}

async fn download_file(
    session: &RusshSession,
    sftp: &SftpSession,
    pending: &PendingDownload,
) -> Result<u64, SshError> {
    let remote = pending.remote.as_str();
    let mut remote_file = sftp
        .open(remote)
        .await
        .map_err(|error| op_failed(session, Op::Download, remote, error))?;
    let local_failed = |error: std::io::Error| SshError::DownloadFailed {
        path: pending.local.display().to_string(),
        reason: error.to_string(),
        source: Some(Arc::new(error)),
    };
    let mut local = tokio::fs::File::create(&pending.local)
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
    // A read-only handle has nothing to lose on close, but close it to free it on the server.
    let _ = remote_file.shutdown().await;
    #[cfg(unix)]
    if let Some(mode) = pending.mode {
        use std::os::unix::fs::PermissionsExt as _;
        // Keep the owner able to read and delete what was downloaded.
        let mode = (mode & 0o777) | 0o600;
        tokio::fs::set_permissions(&pending.local, std::fs::Permissions::from_mode(mode))
            .await
            .map_err(local_failed)?;
    }
    Ok(n_bytes)
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
