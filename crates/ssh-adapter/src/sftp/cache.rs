//! The machine's file cache (`docs/contract.md#remote-file-cache`), over SFTP alone: every
//! file of a run is first hard-linked from `<root>/cache/<sha256>-<mode>` into the run folder
//! (`hardlink@openssh.com`) and checked through the new link; only what the cache lacks, or
//! holds no longer intact, is sent — into the run folder, and linked into the cache once it is
//! complete, so that no partial file is ever under a digest name.
//!
//! A cached file is intact when it is a regular file of the manifest's size, with the mode its
//! name says and the mtime [`STAMP`] every cached file is given: a write through any link of
//! the shared inode moves the mtime, a truncation the size, a chmod the mode. Its atime is its
//! last use, which eviction goes by.

use std::time::{SystemTime, UNIX_EPOCH};

use futures::StreamExt as _;
use russh_sftp::client::SftpSession;
use russh_sftp::client::error::Error as SftpError;
use russh_sftp::protocol::{FileAttributes, StatusCode};
use testfleet_core::hash::{DirManifest, ManifestFile};
use testfleet_core::ports::{CacheUsage, FileCache, ProgressSink, SshError, TransferStats};
use testfleet_core::remote::join_remote;

use super::upload::{Outgoing, Progress, create_dirs, remote_paths, send};
use super::{Kind, Op, TYPE_FILE, TYPE_MASK, create_dir, is_status, kind_of, op_failed, settle};
use crate::session::RusshSession;

/// The mtime of every cached file (2000-01-01T00:00:00Z): nothing but an explicit `utime`
/// sets it, and every write through any link moves it.
const STAMP: u32 = 946_684_800;

/// A cached file's last use is recorded again when it is older than this (seconds), which
/// spares a request per file on a run repeated within the minute.
const REFRESH_AFTER: u32 = 60;

/// Files up to this size that a run sends into a cache folder it made itself are not added to
/// it (see [`send_and_insert`]).
const SMALL_FILE_MAX: u64 = 64 * 1024;

/// Link requests in flight at once: each is a few dozen bytes, so the window is wide.
const LINKS_IN_FLIGHT: usize = 256;

/// The name of `file` in the cache: its digest and its mode, since a link shares its inode's
/// mode and two files with the same contents may have different ones.
fn blob_name(file: &ManifestFile) -> String {
    use std::fmt::Write as _;
    let mut name = String::with_capacity(64 + 5);
    for byte in file.digest {
        let _ = write!(name, "{byte:02x}");
    }
    let _ = write!(name, "-{:o}", file.mode & 0o7777);
    name
}

/// Whether `name` is one [`blob_name`] gives.
fn is_blob_name(name: &str) -> bool {
    match name.split_once('-') {
        Some((digest, mode)) => {
            digest.len() == 64
                && digest.bytes().all(|b| b.is_ascii_hexdigit())
                && !mode.is_empty()
                && mode.bytes().all(|b| (b'0'..=b'7').contains(&b))
        }
        None => false,
    }
}

/// Whether `attrs` are those of an intact cached copy of `file`.
fn intact(attrs: &FileAttributes, file: &ManifestFile) -> bool {
    attrs.size == Some(file.size)
        && attrs.mtime == Some(STAMP)
        && attrs.permissions.is_some_and(|permissions| {
            permissions & TYPE_MASK == TYPE_FILE && permissions & 0o7777 == file.mode & 0o7777
        })
}

fn unix_now() -> u32 {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs());
    u32::try_from(secs).unwrap_or(u32::MAX)
}

/// What linking one file from the cache found.
enum Linked {
    /// The run folder holds an intact copy, `bytes` long.
    Cached(u64),
    /// The file must be sent: the cache lacks it, or held it no longer intact.
    Missing,
    /// The server has no `hardlink@openssh.com`.
    Unsupported,
}

pub(crate) async fn upload_cached(
    session: &RusshSession,
    manifest: &DirManifest,
    remote_dir: &str,
    cache: &FileCache,
    sink: &dyn ProgressSink,
) -> Result<TransferStats, SshError> {
    settle(
        session,
        upload_inner(session, manifest, remote_dir, cache, sink).await,
    )
    .await
}

async fn upload_inner(
    session: &RusshSession,
    manifest: &DirManifest,
    remote_dir: &str,
    cache: &FileCache,
    sink: &dyn ProgressSink,
) -> Result<TransferStats, SshError> {
    let (dirs, files) = remote_paths(manifest, remote_dir)?;
    let sftp = session.sftp().await?;
    // A cache folder made just now holds nothing: the first run on a machine sends at once.
    let fresh_cache = sftp.create_dir(cache.dir.as_str()).await.is_ok();
    if !fresh_cache {
        create_dir(session, &sftp, &cache.dir).await?;
    }
    create_dirs(session, &sftp, remote_dir, &dirs).await?;
    // No progress before the links are made: the bar counts only what is sent.
    let now = unix_now();
    let mut stats = TransferStats::default();
    let to_send = if fresh_cache {
        // Nothing to link yet; but a server that cannot link gets no cache filled for nothing.
        // The probe links a name that no blob has, so that it can only fail (or be refused).
        let probe = join_remote(&cache.dir, ".no-such-blob");
        if matches!(
            sftp.hardlink(probe.as_str(), probe.as_str()).await,
            Ok(false)
        ) {
            tracing::debug!(
                host = %session.host,
                "the SFTP server has no hardlink@openssh.com: sending every file"
            );
            return send_plain(session, &sftp, manifest, remote_dir, &files, sink).await;
        }
        files
    } else {
        let mut linked = vec![false; files.len()];
        let mut in_flight = futures::stream::FuturesUnordered::new();
        let mut next = 0;
        loop {
            while next < files.len() && in_flight.len() < LINKS_IN_FLIGHT {
                let (file, remote) = &files[next];
                in_flight.push(link_one(session, &sftp, cache, file, remote, now, next));
                next += 1;
            }
            let Some(result) = in_flight.next().await else {
                break;
            };
            let (idx, found) = result?;
            match found {
                Linked::Cached(bytes) => {
                    linked[idx] = true;
                    stats.cached_files += 1;
                    stats.cached_bytes += bytes;
                }
                Linked::Missing => {}
                Linked::Unsupported => {
                    tracing::debug!(
                        host = %session.host,
                        "the SFTP server has no hardlink@openssh.com: sending every file"
                    );
                    drop(in_flight);
                    return send_plain(session, &sftp, manifest, remote_dir, &files, sink).await;
                }
            }
        }
        drop(in_flight);
        files
            .into_iter()
            .zip(linked)
            .filter_map(|(entry, linked)| (!linked).then_some(entry))
            .collect()
    };
    let progress = Progress::new(sink, &to_send);
    send_and_insert(
        session,
        &sftp,
        manifest,
        remote_dir,
        cache,
        &to_send,
        &progress,
        fresh_cache,
        now,
    )
    .await?;
    let sent = progress.stats();
    stats.files = sent.files;
    stats.bytes = sent.bytes;
    Ok(stats)
}

/// Sends `to_send` into the run folder and adds each file to the cache (a setstat and a link
/// each), except, into a cache folder made by this very upload, the small files: they enter the
/// cache the next time they are sent. Those requests cost about as much as sending a small file
/// does, and a machine's first run with the cache costs what a run without it does.
#[allow(clippy::too_many_arguments)] // one upload's parts, all borrowed
async fn send_and_insert(
    session: &RusshSession,
    sftp: &SftpSession,
    manifest: &DirManifest,
    remote_dir: &str,
    cache: &FileCache,
    to_send: &[Outgoing<'_>],
    progress: &Progress<'_>,
    fresh_cache: bool,
    now: u32,
) -> Result<(), SshError> {
    send(session, sftp, remote_dir, &manifest.root, to_send, progress).await?;
    let inserted: Vec<Outgoing<'_>> = to_send
        .iter()
        .filter(|(file, _)| !fresh_cache || file.size > SMALL_FILE_MAX)
        .cloned()
        .collect();
    insert_all(session, sftp, &inserted, &cache.dir, now).await
}

/// [`insert`]s every file sent, many at once.
async fn insert_all(
    session: &RusshSession,
    sftp: &SftpSession,
    sent: &[Outgoing<'_>],
    dir: &str,
    now: u32,
) -> Result<(), SshError> {
    let mut in_flight = futures::stream::FuturesUnordered::new();
    let mut next = 0;
    loop {
        while next < sent.len() && in_flight.len() < LINKS_IN_FLIGHT {
            let (file, remote) = &sent[next];
            in_flight.push(insert(session, sftp, file, remote, dir, now));
            next += 1;
        }
        match in_flight.next().await {
            Some(result) => result?,
            None => return Ok(()),
        }
    }
}

/// Sends every file as an upload without the cache does.
async fn send_plain(
    session: &RusshSession,
    sftp: &SftpSession,
    manifest: &DirManifest,
    remote_dir: &str,
    files: &[Outgoing<'_>],
    sink: &dyn ProgressSink,
) -> Result<TransferStats, SshError> {
    let progress = Progress::new(sink, files);
    send(session, sftp, remote_dir, &manifest.root, files, &progress).await?;
    Ok(progress.stats())
}

/// Links `file` from the cache to `remote` and checks it through the new link; a copy that is
/// not intact is unlinked again (from the run folder and from the cache), to be sent.
async fn link_one(
    session: &RusshSession,
    sftp: &SftpSession,
    cache: &FileCache,
    file: &ManifestFile,
    remote: &str,
    now: u32,
    idx: usize,
) -> Result<(usize, Linked), SshError> {
    let blob = join_remote(&cache.dir, &blob_name(file));
    match sftp.hardlink(blob.as_str(), remote).await {
        Ok(true) => {}
        Ok(false) => return Ok((idx, Linked::Unsupported)),
        // Missing, or a link the file system refuses: either way the file is sent.
        Err(error) if is_status(&error, StatusCode::NoSuchFile) => {
            return Ok((idx, Linked::Missing));
        }
        Err(error) => {
            if session.is_closed() {
                return Err(op_failed(session, Op::Upload, remote, error));
            }
            tracing::debug!(%blob, %error, "could not link from the file cache");
            return Ok((idx, Linked::Missing));
        }
    }
    let attrs = sftp
        .symlink_metadata(remote)
        .await
        .map_err(|error| op_failed(session, Op::Upload, remote, error))?;
    if !intact(&attrs, file) {
        tracing::debug!(%blob, ?attrs, "a cached file changed since it was stored: replacing it");
        for path in [remote, blob.as_str()] {
            match sftp.remove_file(path).await {
                Ok(()) => {}
                Err(error) if is_status(&error, StatusCode::NoSuchFile) => {}
                Err(error) => return Err(op_failed(session, Op::Upload, path, error)),
            }
        }
        return Ok((idx, Linked::Missing));
    }
    if attrs
        .atime
        .is_none_or(|atime| atime.saturating_add(REFRESH_AFTER) < now)
    {
        set_stamp(sftp, remote, None, now)
            .await
            .map_err(|error| op_failed(session, Op::Upload, remote, error))?;
    }
    Ok((idx, Linked::Cached(file.size)))
}

/// Sets `path`'s times to the cache's (atime `now`, mtime [`STAMP`]), and its mode to `mode`
/// when given.
async fn set_stamp(
    sftp: &SftpSession,
    path: &str,
    mode: Option<u32>,
    now: u32,
) -> Result<(), SftpError> {
    let attrs = FileAttributes {
        permissions: mode,
        atime: Some(now),
        mtime: Some(STAMP),
        ..FileAttributes::empty()
    };
    sftp.set_metadata(path, attrs).await
}

/// Gives a file just sent to `remote` its mode and the cache's stamp, then links it into the
/// cache folder `dir`. A name already there (another run added the same file first) is left
/// alone; a link the server refuses only costs the next run a send.
async fn insert(
    session: &RusshSession,
    sftp: &SftpSession,
    file: &ManifestFile,
    remote: &str,
    dir: &str,
    now: u32,
) -> Result<(), SshError> {
    let blob = join_remote(dir, &blob_name(file));
    // Both requests go out at once: a server that linked before it stamped would only show
    // another controller a blob that looks changed for a moment, which that one replaces.
    let (stamped, linked) = futures::join!(
        set_stamp(sftp, remote, Some(file.mode & 0o7777), now),
        sftp.hardlink(remote, blob.as_str())
    );
    stamped.map_err(|error| op_failed(session, Op::Upload, remote, error))?;
    match linked {
        Ok(_) => Ok(()),
        Err(error) if session.is_closed() => Err(op_failed(session, Op::Upload, remote, error)),
        Err(error) => {
            tracing::trace!(%blob, %error, "not added to the file cache");
            Ok(())
        }
    }
}

/// One cached file, as a listing of the cache folder shows it.
struct Entry {
    name: String,
    bytes: u64,
    atime: u32,
}

/// The cached files of `dir`; none when it does not exist.
async fn entries(session: &RusshSession, dir: &str) -> Result<Vec<Entry>, SshError> {
    let sftp = session.sftp().await?;
    let listing = match sftp.read_dir(dir).await {
        Ok(listing) => listing,
        Err(error) if is_status(&error, StatusCode::NoSuchFile) => return Ok(Vec::new()),
        Err(error) => return Err(op_failed(session, Op::Remove, dir, error)),
    };
    Ok(listing
        .filter_map(|entry| {
            let name = entry.file_name();
            let attrs = entry.metadata();
            (is_blob_name(&name) && kind_of(&attrs) == Some(Kind::File)).then(|| Entry {
                name,
                bytes: attrs.size.unwrap_or(0),
                atime: attrs.atime.unwrap_or(0),
            })
        })
        .collect())
}

pub(crate) async fn usage(session: &RusshSession, dir: &str) -> Result<CacheUsage, SshError> {
    let entries = settle(session, entries(session, dir).await).await?;
    Ok(CacheUsage {
        files: entries.len() as u64,
        bytes: entries.iter().map(|entry| entry.bytes).sum(),
    })
}

pub(crate) async fn prune(
    session: &RusshSession,
    cache: &FileCache,
    dry_run: bool,
) -> Result<CacheUsage, SshError> {
    settle(session, prune_inner(session, cache, dry_run).await).await
}

async fn prune_inner(
    session: &RusshSession,
    cache: &FileCache,
    dry_run: bool,
) -> Result<CacheUsage, SshError> {
    let mut entries = entries(session, &cache.dir).await?;
    let mut total: u64 = entries.iter().map(|entry| entry.bytes).sum();
    let mut removed = CacheUsage::default();
    if total <= cache.max_bytes {
        return Ok(removed);
    }
    let protected_since = unix_now()
        .saturating_sub(u32::try_from(FileCache::PROTECTED_FOR.as_secs()).unwrap_or(u32::MAX));
    entries.sort_by(|a, b| a.atime.cmp(&b.atime).then_with(|| a.name.cmp(&b.name)));
    let mut victims = Vec::new();
    for entry in entries {
        if total <= cache.max_bytes || entry.atime >= protected_since {
            break;
        }
        total -= entry.bytes;
        removed.files += 1;
        removed.bytes += entry.bytes;
        victims.push(join_remote(&cache.dir, &entry.name));
    }
    if dry_run || victims.is_empty() {
        return Ok(removed);
    }
    let sftp = session.sftp().await?;
    let mut in_flight = futures::stream::FuturesUnordered::new();
    let mut next = 0;
    loop {
        while next < victims.len() && in_flight.len() < LINKS_IN_FLIGHT {
            in_flight.push(evict(session, &sftp, &victims[next]));
            next += 1;
        }
        match in_flight.next().await {
            Some(result) => result?,
            None => break,
        }
    }
    Ok(removed)
}

async fn evict(session: &RusshSession, sftp: &SftpSession, path: &str) -> Result<(), SshError> {
    match sftp.remove_file(path).await {
        Ok(()) => Ok(()),
        // Another controller evicted it first.
        Err(error) if is_status(&error, StatusCode::NoSuchFile) => Ok(()),
        Err(error) => Err(op_failed(session, Op::Remove, path, error)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blob_names_carry_the_digest_and_the_mode() {
        let name = "ab".repeat(32) + "-755";
        assert!(is_blob_name(&name));
        assert!(!is_blob_name(&("ab".repeat(32) + "-")));
        assert!(!is_blob_name(&("ab".repeat(31) + "-644")));
        assert!(!is_blob_name(&("zz".repeat(32) + "-644")));
        assert!(!is_blob_name(&("ab".repeat(32) + "-648")));
    }
}
