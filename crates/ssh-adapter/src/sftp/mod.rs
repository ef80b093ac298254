//! File transfer over the connection's one SFTP session: the [`upload`] that re-checks what it
//! sends against the manifest, the [`download`] that trusts no remote name, and recursive
//! [`remove`]al; here, what they share (directories, file kinds, error mapping).

mod cache;
mod download;
mod remove;
mod upload;

use std::sync::Arc;

use russh_sftp::client::SftpSession;
use russh_sftp::client::error::Error as SftpError;
use russh_sftp::protocol::{FileAttributes, StatusCode};
use testfleet_core::ports::SshError;

use crate::session::RusshSession;

pub(crate) use cache::{prune as prune_cache, upload_cached, usage as cache_usage};
pub(crate) use download::download_dir;
pub(crate) use remove::remove;
pub(crate) use upload::upload;

/// Bytes read from a local file (or a remote one) per step.
const CHUNK_BYTES: usize = 64 * 1024;

/// Mode bits of a file type in SFTP `permissions` (the POSIX `S_IFMT` mask).
const TYPE_MASK: u32 = 0o170_000;
const TYPE_DIR: u32 = 0o040_000;
const TYPE_FILE: u32 = 0o100_000;
const TYPE_SYMLINK: u32 = 0o120_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Dir,
    File,
    Symlink,
    Other,
}

fn kind_of(attrs: &FileAttributes) -> Option<Kind> {
    let permissions = attrs.permissions?;
    Some(match permissions & TYPE_MASK {
        TYPE_DIR => Kind::Dir,
        TYPE_FILE => Kind::File,
        TYPE_SYMLINK => Kind::Symlink,
        _ => Kind::Other,
    })
}

fn is_status(error: &SftpError, code: StatusCode) -> bool {
    matches!(error, SftpError::Status(status) if status.status_code == code)
}

/// Which operation an SFTP error belongs to, to pick its error variant.
#[derive(Debug, Clone, Copy)]
enum Op {
    Upload,
    Download,
    Remove,
}

/// The error of a failed SFTP or local I/O step of `op` at `path`: a connection loss when the
/// session is gone, else the operation's own code naming the path.
fn op_failed<E>(session: &RusshSession, op: Op, path: &str, error: E) -> SshError
where
    E: std::error::Error + Send + Sync + 'static,
{
    if session.is_closed() {
        return SshError::ConnectionLost {
            reason: format!("{} (at {path})", session.lost_reason()),
            source: Some(Arc::new(error)),
        };
    }
    let reason = error.to_string();
    let source = Some(Arc::new(error) as _);
    let path = path.to_owned();
    match op {
        Op::Upload => SshError::UploadFailed {
            path,
            reason,
            source,
        },
        Op::Download => SshError::DownloadFailed {
            path,
            reason,
            source,
        },
        Op::Remove => SshError::Other {
            reason: format!("failed to remove {path}: {reason}"),
            source,
        },
    }
}

/// Creates one directory; an existing directory is fine (SFTP reports it as a generic
/// failure, so a stat tells the two apart).
async fn create_dir(
    session: &RusshSession,
    sftp: &SftpSession,
    path: &str,
) -> Result<(), SshError> {
    match sftp.create_dir(path).await {
        Ok(()) => Ok(()),
        Err(error) => match sftp.metadata(path).await {
            Ok(attrs) if kind_of(&attrs) == Some(Kind::Dir) => Ok(()),
            Ok(_) => Err(SshError::UploadFailed {
                path: path.to_owned(),
                reason: "exists and is not a directory".into(),
                source: None,
            }),
            Err(_) => Err(op_failed(session, Op::Upload, path, error)),
        },
    }
}

async fn create_dir_all_inner(session: &RusshSession, path: &str) -> Result<(), SshError> {
    let sftp = session.sftp().await?;
    let absolute = path.starts_with('/');
    let components: Vec<&str> = path
        .split('/')
        .filter(|component| !component.is_empty() && *component != ".")
        .collect();
    let prefix_of = |n_components: usize| {
        let joined = components[..n_components].join("/");
        if absolute {
            format!("/{joined}")
        } else {
            joined
        }
    };
    // Find the deepest folder that exists, walking up: the levels above it may not be
    // creatable or even statable (`/C:` on Windows, an unreadable `/home`).
    let mut n_existing = components.len();
    while n_existing > 0 {
        match sftp.metadata(prefix_of(n_existing)).await {
            Ok(attrs) if kind_of(&attrs) == Some(Kind::Dir) => break,
            Ok(_) => {
                return Err(SshError::UploadFailed {
                    path: prefix_of(n_existing),
                    reason: "exists and is not a directory".into(),
                    source: None,
                });
            }
            Err(error) if is_status(&error, StatusCode::NoSuchFile) => n_existing -= 1,
            Err(error) => {
                return Err(op_failed(
                    session,
                    Op::Upload,
                    &prefix_of(n_existing),
                    error,
                ));
            }
        }
    }
    for n_components in n_existing + 1..=components.len() {
        create_dir(session, &sftp, &prefix_of(n_components)).await?;
    }
    Ok(())
}

pub(crate) async fn list_dir(session: &RusshSession, path: &str) -> Result<Vec<String>, SshError> {
    let sftp = session.sftp().await?;
    match sftp.read_dir(path).await {
        Ok(entries) => Ok(entries
            .map(|entry| entry.file_name())
            .filter(|name| name != "." && name != "..")
            .collect()),
        Err(error) if is_status(&error, StatusCode::NoSuchFile) => Ok(Vec::new()),
        Err(error) => Err(op_failed(session, Op::Remove, path, error)),
    }
}

pub(crate) async fn realpath(session: &RusshSession, path: &str) -> Result<String, SshError> {
    let sftp = session.sftp().await?;
    sftp.canonicalize(path)
        .await
        .map_err(|error| op_failed(session, Op::Upload, path, error))
}

/// An SFTP failure can arrive a moment before the session notices that the transport is gone;
/// an error in a session that closes right after is reported as the connection loss it is.
async fn settle<T>(session: &RusshSession, result: Result<T, SshError>) -> Result<T, SshError> {
    let error = match result {
        Ok(value) => return Ok(value),
        Err(
            error @ (SshError::UploadFailed { .. }
            | SshError::DownloadFailed { .. }
            | SshError::Other { .. }),
        ) => error,
        Err(error) => return Err(error),
    };
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_millis(500);
    while !session.is_closed() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    if session.is_closed() {
        let reason = format!("{} ({error})", session.lost_reason());
        return Err(SshError::ConnectionLost {
            reason,
            source: Some(Arc::new(error)),
        });
    }
    Err(error)
}

pub(crate) async fn create_dir_all(session: &RusshSession, path: &str) -> Result<(), SshError> {
    settle(session, create_dir_all_inner(session, path).await).await
}
