//! The pipelined upload: many files and many writes in flight, small files read ahead by one
//! thread, and every byte checked against the manifest as it is read.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::StreamExt as _;
use russh_sftp::client::SftpSession;
use russh_sftp::protocol::{FileAttributes, OpenFlags};
use testfleet_core::hash::{ContentCheck, DirManifest, ManifestFile, SmallFile, read_small_file};
use testfleet_core::ports::{ProgressSink, SshError, TransferProgress, TransferStats};
use testfleet_core::remote::join_remote;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::{CHUNK_BYTES, Op, create_dir, op_failed, settle};
use crate::session::RusshSession;

/// Shared counters of an upload, reported after every chunk.
pub(super) struct Progress<'a> {
    sink: &'a dyn ProgressSink,
    files_total: u64,
    bytes_total: u64,
    files_done: AtomicU64,
    bytes_done: AtomicU64,
}

impl<'a> Progress<'a> {
    /// Counters for sending `files`, reported to `sink` (once now).
    pub(super) fn new(sink: &'a dyn ProgressSink, files: &[Outgoing<'_>]) -> Self {
        let progress = Self {
            sink,
            files_total: files.len() as u64,
            bytes_total: files.iter().map(|(file, _)| file.size).sum(),
            files_done: AtomicU64::new(0),
            bytes_done: AtomicU64::new(0),
        };
        progress.report();
        progress
    }

    /// Counts `bytes` more sent, and `files` more complete.
    pub(super) fn add(&self, files: u64, bytes: u64) {
        self.files_done.fetch_add(files, Ordering::Relaxed);
        self.bytes_done.fetch_add(bytes, Ordering::Relaxed);
        self.report();
    }

    /// What was sent so far.
    pub(super) fn stats(&self) -> TransferStats {
        TransferStats {
            files: self.files_done.load(Ordering::Relaxed),
            bytes: self.bytes_done.load(Ordering::Relaxed),
            ..TransferStats::default()
        }
    }

    fn report(&self) {
        self.sink.progress(TransferProgress {
            files_done: self.files_done.load(Ordering::Relaxed),
            files_total: self.files_total,
            bytes_done: self.bytes_done.load(Ordering::Relaxed),
            bytes_total: self.bytes_total,
        });
    }
}

/// A file of the manifest and its remote path.
pub(super) type Outgoing<'m> = (&'m ManifestFile, String);

/// The remote paths of the manifest's folders and files under `remote_dir`. Every remote path
/// must be valid UTF-8: a name that is not is refused before anything is sent.
pub(super) fn remote_paths<'m>(
    manifest: &'m DirManifest,
    remote_dir: &str,
) -> Result<(Vec<String>, Vec<Outgoing<'m>>), SshError> {
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
    Ok((dirs, files))
}

/// Creates `remote_dir` and the manifest's folders in it.
pub(super) async fn create_dirs(
    session: &RusshSession,
    sftp: &SftpSession,
    remote_dir: &str,
    dirs: &[String],
) -> Result<(), SshError> {
    create_dir(session, sftp, remote_dir).await?;
    // Parents come before children in the manifest, so one pass creates them all.
    for dir in dirs {
        create_dir(session, sftp, dir).await?;
    }
    Ok(())
}

async fn upload_inner(
    session: &RusshSession,
    manifest: &DirManifest,
    remote_dir: &str,
    sink: &dyn ProgressSink,
) -> Result<TransferStats, SshError> {
    let (dirs, files) = remote_paths(manifest, remote_dir)?;
    let sftp = session.sftp().await?;
    create_dirs(session, &sftp, remote_dir, &dirs).await?;
    let progress = Progress::new(sink, &files);
    send(
        session,
        &sftp,
        remote_dir,
        &manifest.root,
        &files,
        &progress,
    )
    .await?;
    Ok(progress.stats())
}

/// Sends `files` (manifest entries with their remote paths), many at once, counting them in
/// `progress`; `remote_dir` is the folder whose disk a failure is checked against.
pub(super) async fn send(
    session: &RusshSession,
    sftp: &SftpSession,
    remote_dir: &str,
    root: &Path,
    files: &[Outgoing<'_>],
    progress: &Progress<'_>,
) -> Result<(), SshError> {
    let n_in_flight = session.tuning.files_in_flight.max(1);
    let mut prefetched = prefetch(root, files, 2 * n_in_flight);
    // A hand-rolled window rather than `buffer_unordered`: a closure held across the await
    // trips the `Send` check of the async-trait future.
    let mut in_flight = futures::stream::FuturesUnordered::new();
    let mut all_read = false;
    loop {
        tokio::select! {
            biased;
            Some(result) = in_flight.next(), if !in_flight.is_empty() => {
                if let Err(error) = result {
                    return Err(remote_disk_full(session, sftp, remote_dir, error).await);
                }
                progress.add(1, 0);
            }
            next = prefetched.recv(), if !all_read && in_flight.len() < n_in_flight => {
                match next {
                    Some((idx, read)) => {
                        let (file, remote) = &files[idx];
                        in_flight.push(upload_file(
                            session,
                            sftp,
                            root,
                            file,
                            remote,
                            read,
                            progress,
                        ));
                    }
                    None => all_read = true,
                }
            }
            else => break,
        }
    }
    Ok(())
}

/// Files up to this size are read whole, ahead of their upload, by one reader thread: one
/// blocking-pool hop per upload instead of one per open and per read of every file.
const WHOLE_FILE_MAX: u64 = CHUNK_BYTES as u64;

/// What the reader thread found for one file of the manifest.
enum Prefetched {
    /// The whole file, its size and contents checked against the manifest.
    Whole(Vec<u8>),
    /// A large file: its upload reads (and checks) it as it goes.
    Stream,
    /// The file is gone, or its size or contents differ from the manifest.
    Changed,
    Failed(std::io::Error),
}

/// Starts a thread that reads the small ones of `files` in order, `capacity` files ahead at
/// most (so memory stays bounded by `capacity × WHOLE_FILE_MAX`), and hands them over with
/// their index. It stops early when the receiver is dropped.
fn prefetch(
    root: &Path,
    files: &[Outgoing<'_>],
    capacity: usize,
) -> tokio::sync::mpsc::Receiver<(usize, Prefetched)> {
    let (sender, receiver) = tokio::sync::mpsc::channel(capacity.max(1));
    let root = root.to_path_buf();
    let jobs: Vec<Option<ManifestFile>> = files
        .iter()
        .map(|(file, _)| (file.size <= WHOLE_FILE_MAX).then(|| (*file).clone()))
        .collect();
    tokio::task::spawn_blocking(move || {
        for (idx, job) in jobs.into_iter().enumerate() {
            let read = match job {
                Some(file) => match read_small_file(&root, &file) {
                    Ok(SmallFile::Whole(bytes)) => Prefetched::Whole(bytes),
                    Ok(SmallFile::Changed) => Prefetched::Changed,
                    Err(error) => Prefetched::Failed(error),
                },
                None => Prefetched::Stream,
            };
            if sender.blocking_send((idx, read)).is_err() {
                break;
            }
        }
    });
    receiver
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
    let sent = match prefetched {
        Prefetched::Whole(bytes) => {
            upload_whole(session, sftp, file, remote, &bytes, progress).await
        }
        Prefetched::Stream => stream_file(session, sftp, root, file, remote, progress).await,
        Prefetched::Changed => Err(changed(file)),
        Prefetched::Failed(error) => Err(op_failed(session, Op::Upload, remote, error)),
    };
    sent?;
    set_unusual_mode(session, sftp, file, remote).await
}

fn changed(file: &ManifestFile) -> SshError {
    SshError::TestDirChanged {
        path: file.rel_path.to_string_lossy(),
    }
}

/// Uploads a large file as it is read, every chunk checked before it is sent.
async fn stream_file(
    session: &RusshSession,
    sftp: &SftpSession,
    root: &Path,
    file: &ManifestFile,
    remote: &str,
    progress: &Progress<'_>,
) -> Result<(), SshError> {
    let mut local = tokio::fs::File::open(file.rel_path.to_local(root))
        .await
        .map_err(|error| {
            if error.kind() == std::io::ErrorKind::NotFound {
                changed(file)
            } else {
                op_failed(session, Op::Upload, remote, error)
            }
        })?;
    let opened = local
        .metadata()
        .await
        .map_err(|error| op_failed(session, Op::Upload, remote, error))?;
    let mut check = ContentCheck::begin(file, &opened);
    let mut remote_file = open_for_upload(session, sftp, file, remote).await?;
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
        // A file that grew is detected before its extra bytes are sent.
        if check.update(&buffer[..n_read]).is_err() {
            outcome = Err(changed(file));
            break;
        }
        if let Err(error) = remote_file.write_all(&buffer[..n_read]).await {
            outcome = Err(op_failed(session, Op::Upload, remote, error));
            break;
        }
        progress.add(0, n_read as u64);
    }
    // Always close: dropping a russh-sftp file loses its write errors.
    let closed = remote_file.shutdown().await;
    outcome?;
    closed.map_err(|error| op_failed(session, Op::Upload, remote, error))?;
    let after = local.metadata().await.ok();
    check.finish(after.as_ref()).map_err(|_| changed(file))
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
    progress.add(0, bytes.len() as u64);
    Ok(())
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

/// Less free space than this on the remote disk, after a write failed, means it is full.
const REMOTE_FULL_BELOW: u64 = 1024 * 1024;

/// A failed upload on a remote disk that is full says so (SFTP servers answer a full disk with
/// a bare failure): `statvfs@openssh.com` tells, where the server has it.
async fn remote_disk_full(
    session: &RusshSession,
    sftp: &SftpSession,
    remote_dir: &str,
    error: SshError,
) -> SshError {
    let SshError::UploadFailed {
        path,
        reason,
        source,
    } = error
    else {
        return error;
    };
    if session.is_closed() {
        return SshError::UploadFailed {
            path,
            reason,
            source,
        };
    }
    match sftp.fs_info(remote_dir).await {
        Ok(Some(stats))
            if stats.blocks_avail.saturating_mul(stats.fragment_size) < REMOTE_FULL_BELOW =>
        {
            let free = stats.blocks_avail.saturating_mul(stats.fragment_size);
            SshError::UploadFailed {
                path,
                reason: format!(
                    "the remote disk is full at {remote_dir} ({free} bytes free; free some space \
                     on the machine and run again); the server said"
                ),
                source,
            }
        }
        _ => SshError::UploadFailed {
            path,
            reason,
            source,
        },
    }
}
