//! File transfer over the connection's one SFTP session: directories, a pipelined upload that
//! re-hashes what it sends, a download that trusts no remote name, and recursive removal.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::StreamExt as _;
use russh_sftp::client::SftpSession;
use russh_sftp::client::error::Error as SftpError;
use russh_sftp::protocol::{FileAttributes, OpenFlags, StatusCode};
use sha2::{Digest as _, Sha256};
use testfleet_core::hash::{DirManifest, FileStamp, ManifestFile};
use testfleet_core::ports::{
    DownloadReport, ProgressSink, RefusedEntry, SshError, TransferProgress, TransferStats,
};
use testfleet_core::remote::{check_remote_name, join_remote};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::session::RusshSession;

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

pub(crate) async fn realpath(session: &RusshSession, path: &str) -> Result<String, SshError> {
    let sftp = session.sftp().await?;
    sftp.canonicalize(path)
        .await
        .map_err(|error| op_failed(session, Op::Upload, path, error))
}

/// Shared counters of an upload, reported after every chunk.
struct Progress<'a> {
    sink: &'a dyn ProgressSink,
    files_total: u64,
    bytes_total: u64,
    files_done: AtomicU64,
    bytes_done: AtomicU64,
}

impl Progress<'_> {
    fn report(&self) {
        self.sink.progress(TransferProgress {
            files_done: self.files_done.load(Ordering::Relaxed),
            files_total: self.files_total,
            bytes_done: self.bytes_done.load(Ordering::Relaxed),
            bytes_total: self.bytes_total,
        });
    }
}

async fn upload_inner(
    session: &RusshSession,
    manifest: &DirManifest,
    remote_dir: &str,
    sink: &dyn ProgressSink,
) -> Result<TransferStats, SshError> {
    // Every remote path must be valid UTF-8; refuse before anything is sent.
    let remote_path = |rel: &testfleet_core::RelPath| match rel.to_str() {
        Some(text) => Ok(join_remote(remote_dir, text)),
        None => Err(SshError::UploadFailed {
            path: rel.to_string_lossy(),
            reason: "the path is not valid UTF-8, which SFTP cannot name".into(),
            source: None,
        }),
    };
    let dirs = manifest
        .dirs
        .iter()
        .map(remote_path)
        .collect::<Result<Vec<_>, _>>()?;
    let files = manifest
        .files
        .iter()
        .map(|file| Ok((file, remote_path(&file.rel_path)?)))
        .collect::<Result<Vec<_>, SshError>>()?;

    let sftp = session.sftp().await?;
    create_dir(session, &sftp, remote_dir).await?;
    // Parents come before children in the manifest, so one pass creates them all.
    for dir in &dirs {
        create_dir(session, &sftp, dir).await?;
    }

    let progress = Progress {
        sink,
        files_total: files.len() as u64,
        bytes_total: manifest.total_bytes(),
        files_done: AtomicU64::new(0),
        bytes_done: AtomicU64::new(0),
    };
    progress.report();
    let n_in_flight = session.tuning.files_in_flight.max(1);
    let mut prefetched = prefetch(manifest, 2 * n_in_flight);
    // A hand-rolled window rather than `buffer_unordered`: a closure held across the await
    // trips the `Send` check of the async-trait future.
    let mut in_flight = futures::stream::FuturesUnordered::new();
    let mut all_read = false;
    loop {
        tokio::select! {
            biased;
            Some(result) = in_flight.next(), if !in_flight.is_empty() => {
                result?;
                progress.files_done.fetch_add(1, Ordering::Relaxed);
                progress.report();
            }
            next = prefetched.recv(), if !all_read && in_flight.len() < n_in_flight => {
                match next {
                    Some((idx, read)) => {
                        let (file, remote) = &files[idx];
                        in_flight.push(upload_file(
                            session,
                            &sftp,
                            &manifest.root,
                            file,
                            remote,
                            read,
                            &progress,
                        ));
                    }
                    None => all_read = true,
                }
            }
            else => break,
        }
    }
    Ok(TransferStats {
        files: progress.files_done.load(Ordering::Relaxed),
        bytes: progress.bytes_done.load(Ordering::Relaxed),
    })
}

/// Files up to this size are read whole, ahead of their upload, by one reader thread: one
/// blocking-pool hop per upload instead of one per open and per read of every file.
const WHOLE_FILE_MAX: u64 = CHUNK_BYTES as u64;

/// What the reader thread found for one file of the manifest.
enum Prefetched {
    /// The whole file, its size and digest checked against the manifest.
    Whole(Vec<u8>),
    /// A large file: its upload reads (and checks) it as it goes.
    Stream,
    /// The file is gone, or its size or contents differ from the manifest.
    Changed,
    Failed(std::io::Error),
}

/// Starts a thread that reads the manifest's small files in order, `capacity` files ahead
/// at most (so memory stays bounded by `capacity × WHOLE_FILE_MAX`), and hands them over with
/// their index. It stops early when the receiver is dropped.
fn prefetch(
    manifest: &DirManifest,
    capacity: usize,
) -> tokio::sync::mpsc::Receiver<(usize, Prefetched)> {
    let (sender, receiver) = tokio::sync::mpsc::channel(capacity.max(1));
    let jobs: Vec<Option<(PathBuf, ManifestFile)>> = manifest
        .files
        .iter()
        .map(|file| {
            (file.size <= WHOLE_FILE_MAX)
                .then(|| (file.rel_path.to_local(&manifest.root), file.clone()))
        })
        .collect();
    tokio::task::spawn_blocking(move || {
        for (idx, job) in jobs.into_iter().enumerate() {
            let read = match job {
                Some((path, file)) => read_whole(&path, &file),
                None => Prefetched::Stream,
            };
            if sender.blocking_send((idx, read)).is_err() {
                break;
            }
        }
    });
    receiver
}

fn read_whole(path: &Path, file: &ManifestFile) -> Prefetched {
    use std::io::Read as _;
    let mut handle = match std::fs::File::open(path) {
        Ok(handle) => handle,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Prefetched::Changed,
        Err(error) => return Prefetched::Failed(error),
    };
    let vouched = match handle.metadata() {
        Ok(metadata) => vouched_for(file, &metadata),
        Err(error) => return Prefetched::Failed(error),
    };
    // One byte more than expected tells a file that grew.
    let mut bytes = Vec::with_capacity(usize::try_from(file.size).unwrap_or(0) + 1);
    if let Err(error) = (&mut handle).take(file.size + 1).read_to_end(&mut bytes) {
        return Prefetched::Failed(error);
    }
    let unchanged = if vouched {
        // Still the same after the read: what was read is what was hashed.
        handle
            .metadata()
            .is_ok_and(|metadata| vouched_for(file, &metadata))
    } else {
        let actual: [u8; 32] = Sha256::digest(&bytes).into();
        actual == file.digest
    };
    if bytes.len() as u64 != file.size || !unchanged {
        return Prefetched::Changed;
    }
    Prefetched::Whole(bytes)
}

/// Whether the stamp taken when `file` was hashed still vouches for the open file described by
/// `metadata`, so that its bytes need not be hashed again (see [`FileStamp`]).
fn vouched_for(file: &ManifestFile, metadata: &std::fs::Metadata) -> bool {
    file.stamp.is_some() && FileStamp::of(metadata) == file.stamp
}

async fn upload_file(
    session: &RusshSession,
    sftp: &SftpSession,
    root: &Path,
    file: &ManifestFile,
    remote: &str,
    prefetched: Prefetched,
    progress: &Progress<'_>,
) -> Result<(), SshError> {
    let changed = || SshError::TestDirChanged {
        path: file.rel_path.to_string_lossy(),
    };
    match prefetched {
        Prefetched::Whole(bytes) => {
            return upload_whole(session, sftp, file, remote, &bytes, progress).await;
        }
        Prefetched::Stream => {}
        Prefetched::Changed => return Err(changed()),
        Prefetched::Failed(error) => return Err(op_failed(session, Op::Upload, remote, error)),
    }
    let local_path = file.rel_path.to_local(root);
    let mut local = tokio::fs::File::open(&local_path).await.map_err(|error| {
        if error.kind() == std::io::ErrorKind::NotFound {
            changed()
        } else {
            op_failed(session, Op::Upload, remote, error)
        }
    })?;
    let vouched = match local.metadata().await {
        Ok(metadata) => vouched_for(file, &metadata),
        Err(error) => return Err(op_failed(session, Op::Upload, remote, error)),
    };
    let mut remote_file = open_for_upload(session, sftp, file, remote).await?;

    let mut hasher = Sha256::new();
    let mut n_bytes = 0u64;
    let mut buffer = vec![0u8; CHUNK_BYTES];
    let mut outcome = Ok(());
    loop {
        let n_read = match local.read(&mut buffer).await {
            Ok(0) => break,
            Ok(n) => n,
            Err(error) => {
                outcome = Err(op_failed(session, Op::Upload, remote, error));
                break;
            }
        };
        n_bytes += n_read as u64;
        // A file that grew is detected before its extra bytes are sent.
        if n_bytes > file.size {
            outcome = Err(changed());
            break;
        }
        if !vouched {
            hasher.update(&buffer[..n_read]);
        }
        if let Err(error) = remote_file.write_all(&buffer[..n_read]).await {
            outcome = Err(op_failed(session, Op::Upload, remote, error));
            break;
        }
        progress
            .bytes_done
            .fetch_add(n_read as u64, Ordering::Relaxed);
        progress.report();
    }
    // Always close: dropping a russh-sftp file loses its write errors.
    let closed = remote_file.shutdown().await;
    outcome?;
    closed.map_err(|error| op_failed(session, Op::Upload, remote, error))?;
    let unchanged = if vouched {
        // Still the same after the read: what was sent is what was hashed.
        local
            .metadata()
            .await
            .is_ok_and(|metadata| vouched_for(file, &metadata))
    } else {
        let digest: [u8; 32] = hasher.finalize().into();
        digest == file.digest
    };
    if n_bytes != file.size || !unchanged {
        return Err(changed());
    }
    set_unusual_mode(session, sftp, file, remote).await
}

/// Uploads a file read (and checked) beforehand.
async fn upload_whole(
    session: &RusshSession,
    sftp: &SftpSession,
    file: &ManifestFile,
    remote: &str,
    bytes: &[u8],
    progress: &Progress<'_>,
) -> Result<(), SshError> {
    let mut remote_file = open_for_upload(session, sftp, file, remote).await?;
    let written = remote_file.write_all(bytes).await;
    // Always close: dropping a russh-sftp file loses its write errors.
    let closed = remote_file.shutdown().await;
    written.map_err(|error| op_failed(session, Op::Upload, remote, error))?;
    closed.map_err(|error| op_failed(session, Op::Upload, remote, error))?;
    progress
        .bytes_done
        .fetch_add(bytes.len() as u64, Ordering::Relaxed);
    progress.report();
    set_unusual_mode(session, sftp, file, remote).await
}

async fn open_for_upload(
    session: &RusshSession,
    sftp: &SftpSession,
    file: &ManifestFile,
    remote: &str,
) -> Result<russh_sftp::client::fs::File, SshError> {
    let attrs = FileAttributes {
        permissions: Some(file.mode & 0o7777),
        ..FileAttributes::empty()
    };
    sftp.open_with_flags_and_attributes(
        remote,
        OpenFlags::CREATE | OpenFlags::TRUNCATE | OpenFlags::WRITE,
        attrs,
    )
    .await
    .map_err(|error| op_failed(session, Op::Upload, remote, error))
}

/// The server's umask may have narrowed the mode given at open; set it explicitly when the
/// file is executable or otherwise unusual. A plain 0644 file is left as created.
async fn set_unusual_mode(
    session: &RusshSession,
    sftp: &SftpSession,
    file: &ManifestFile,
    remote: &str,
) -> Result<(), SshError> {
    if file.mode & 0o7777 != 0o644 {
        let attrs = FileAttributes {
            permissions: Some(file.mode & 0o7777),
            ..FileAttributes::empty()
        };
        sftp.set_metadata(remote, attrs)
            .await
            .map_err(|error| op_failed(session, Op::Upload, remote, error))?;
    }
    Ok(())
}

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

pub(crate) async fn remove(session: &RusshSession, path: &str) -> Result<(), SshError> {
    let sftp = session.sftp().await?;
    let attrs = match sftp.symlink_metadata(path).await {
        Ok(attrs) => attrs,
        Err(error) if is_status(&error, StatusCode::NoSuchFile) => return Ok(()),
        Err(error) => return Err(op_failed(session, Op::Remove, path, error)),
    };
    if kind_of(&attrs) != Some(Kind::Dir) {
        return remove_file(session, &sftp, path).await;
    }
    // List the whole tree first (depth-first, without recursion), then delete its files with
    // many requests in flight — one round trip per file made cleanup of a 5,000-file run folder
    // cost more than its upload — and finally the folders, deepest first.
    let mut folders = vec![path.to_owned()];
    let mut to_list = vec![path.to_owned()];
    let mut files = Vec::new();
    while let Some(folder) = to_list.pop() {
        let entries = match sftp.read_dir(folder.as_str()).await {
            Ok(entries) => entries,
            Err(error) if is_status(&error, StatusCode::NoSuchFile) => continue,
            Err(error) => return Err(op_failed(session, Op::Remove, &folder, error)),
        };
        for entry in entries {
            let child = join_remote(&folder, &entry.file_name());
            // Names come from the server; a hostile one could point elsewhere, so only plain
            // names are followed and the rest deleted as files would be meaningless.
            if check_remote_name(&entry.file_name()).is_err() {
                continue;
            }
            if kind_of(&entry.metadata()) == Some(Kind::Dir) {
                folders.push(child.clone());
                to_list.push(child);
            } else {
                files.push(child);
            }
        }
    }
    let limit = session.tuning.files_in_flight.max(1) * 2;
    let mut pending = files.iter();
    let mut removals = futures::stream::FuturesUnordered::new();
    loop {
        while removals.len() < limit {
            let Some(file) = pending.next() else { break };
            removals.push(remove_file(session, &sftp, file));
        }
        match removals.next().await {
            Some(removed) => removed?,
            None => break,
        }
    }
    for folder in folders.iter().rev() {
        match sftp.remove_dir(folder.as_str()).await {
            Ok(()) => {}
            Err(error) if is_status(&error, StatusCode::NoSuchFile) => {}
            Err(error) => return Err(op_failed(session, Op::Remove, folder, error)),
        }
    }
    Ok(())
}

async fn remove_file(
    session: &RusshSession,
    sftp: &SftpSession,
    path: &str,
) -> Result<(), SshError> {
    match sftp.remove_file(path).await {
        Ok(()) => Ok(()),
        Err(error) if is_status(&error, StatusCode::NoSuchFile) => Ok(()),
        Err(error) => Err(op_failed(session, Op::Remove, path, error)),
    }
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

pub(crate) async fn upload(
    session: &RusshSession,
    manifest: &DirManifest,
    remote_dir: &str,
    sink: &dyn ProgressSink,
) -> Result<TransferStats, SshError> {
    settle(
        session,
        upload_inner(session, manifest, remote_dir, sink).await,
    )
    .await
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
