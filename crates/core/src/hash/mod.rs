//! The test-directory hash (`docs/contract.md#test-directory-hash`) and the manifest of what is
//! uploaded.
//!
//! The walk is depth-first with each directory's entries sorted by the raw bytes of their
//! names. Every regular file feeds `<relative path>\0<hex sha256 of contents>\n` into one
//! running sha256. Symlinks are neither followed nor hashed, and are reported. What the
//! excludes leave out ([`exclude`]: `.git/`, `.testfleetignore`, `--exclude`) is not looked at.
//! What is hashed is exactly what is uploaded: the [`DirManifest`] lists those files and the
//! directories that hold them.

mod cache;
mod check;
pub mod exclude;
mod manifest;

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use sha2::{Digest, Sha256};

use crate::code::ErrorCode;
use crate::ids::TestDirHash;

pub use cache::DigestCache;
pub use check::{Changed, ContentCheck, SmallFile, read_small_file};
pub use exclude::{BadExclude, DEFAULT_EXCLUDES, IGNORE_FILE, check_excludes};
use manifest::os_str_bytes;
pub use manifest::{DirManifest, Excluded, FileDigest, FileStamp, ManifestFile, RelPath};

/// Why a directory could not be hashed.
#[derive(Debug, thiserror::Error)]
pub enum HashError {
    /// The test directory is missing or is not a directory, after following symlinks. Code
    /// `TEST_DIR_NOT_FOUND`; [`DispatchError`](crate::DispatchError) turns it into
    /// [`DispatchError::TestDirNotFound`](crate::DispatchError::TestDirNotFound).
    #[error("test directory {path} does not exist or is not a directory")]
    NotADirectory {
        /// The test directory as given.
        path: PathBuf,
        /// Why it could not be resolved, when the file system said; `None` when it exists but is
        /// not a directory.
        #[source]
        source: Option<io::Error>,
    },
    /// A file or directory inside the test directory could not be read while walking or hashing it.
    /// Code `TEST_DIR_UNREADABLE`; the message names the path.
    #[error("failed to read {path}")]
    Io {
        /// The path that could not be read, under the resolved root.
        path: PathBuf,
        /// The file system's error.
        #[source]
        source: io::Error,
    },
    /// The test directory's `.testfleetignore` cannot be used: it is not a regular file, cannot
    /// be read, or has a line that is not valid gitignore syntax. Code `TEST_DIR_UNREADABLE`.
    #[error("failed to use {path}: {reason}")]
    IgnoreFile {
        /// The ignore file.
        path: PathBuf,
        /// What is wrong with it (with the line number for a bad line).
        reason: String,
    },
    /// An `--exclude` pattern is not valid gitignore syntax. Code `INVALID_ARGUMENT`.
    #[error(transparent)]
    Exclude(#[from] BadExclude),
}

impl HashError {
    /// [`ErrorCode::TestDirNotFound`] for a missing root, [`ErrorCode::TestDirUnreadable`] for
    /// something inside it (the ignore file included), [`ErrorCode::InvalidArgument`] for a bad
    /// `--exclude` pattern.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::NotADirectory { .. } => ErrorCode::TestDirNotFound,
            Self::Io { .. } | Self::IgnoreFile { .. } => ErrorCode::TestDirUnreadable,
            Self::Exclude(_) => ErrorCode::InvalidArgument,
        }
    }
}

/// Feeds files into the directory hash, in manifest order.
#[derive(Debug, Clone, Default)]
pub struct DirHasher {
    running: Sha256,
}

impl DirHasher {
    /// A hasher fed nothing yet; finished at once, it gives the hash of an empty tree (the SHA-256
    /// of no bytes).
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds one file's record, `<rel_path> 0x00 <lowercase hex digest> 0x0A`. The hash depends on
    /// the order: feed the files in manifest (walk) order to get the test directory hash.
    pub fn add_file(&mut self, rel_path: &RelPath, digest: &FileDigest) {
        self.running.update(rel_path.as_bytes());
        self.running.update([0u8]);
        self.running.update(hex::encode(digest).as_bytes());
        self.running.update(b"\n");
    }

    /// The directory hash of the files fed in.
    pub fn finish(self) -> TestDirHash {
        TestDirHash::from_digest(&self.running.finalize())
    }
}

/// Streaming sha256 of a reader, in constant memory.
///
/// # Errors
/// The reader's errors.
pub fn digest_reader(mut reader: impl Read, buffer: &mut [u8]) -> io::Result<(FileDigest, u64)> {
    let mut hasher = Sha256::new();
    let mut n_bytes = 0u64;
    loop {
        let n_read = match reader.read(buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(error),
        };
        hasher.update(&buffer[..n_read]);
        n_bytes += n_read as u64;
    }
    Ok((hasher.finalize().into(), n_bytes))
}

const READ_BUFFER_BYTES: usize = 256 * 1024;

/// Hashes the test directory at `root` and lists what it holds, leaving out what `.git/` and
/// its `.testfleetignore` exclude.
///
/// # Errors
/// [`HashError::NotADirectory`] when `root` is missing or not a directory (a symlink to a
/// directory is followed); [`HashError::Io`] naming the path that could not be read;
/// [`HashError::IgnoreFile`].
pub fn hash_dir(root: &Path) -> Result<DirManifest, HashError> {
    hash_dir_with(root, &DigestCache::default())
}

/// [`hash_dir`], also leaving out what the `--exclude` patterns `excludes` match (gitignore
/// lines, applied after the ignore file).
///
/// # Errors
/// As [`hash_dir`]; [`HashError::Exclude`] for a bad pattern.
pub fn hash_dir_excluding(root: &Path, excludes: &[String]) -> Result<DirManifest, HashError> {
    hash_resolved_excluding(resolve_test_dir(root)?, &DigestCache::default(), excludes)
}

/// [`hash_dir`], taking the digest of a file from `cache` instead of reading it when the file's
/// settled stamp is the one cached with that digest (see [`FileStamp`]).
///
/// # Errors
/// As [`hash_dir`].
pub fn hash_dir_with(root: &Path, cache: &DigestCache) -> Result<DirManifest, HashError> {
    hash_resolved(resolve_test_dir(root)?, cache)
}

/// The absolute, resolved form of a test directory (a symlink to a directory is followed), as
/// the manifest's `root` holds it; a caller that needs it before hashing (to find the digest
/// cache of that directory) resolves once and hashes with [`hash_resolved`].
///
/// # Errors
/// [`HashError::NotADirectory`] when `root` is missing or not a directory.
pub fn resolve_test_dir(root: &Path) -> Result<PathBuf, HashError> {
    let not_a_dir = |source| HashError::NotADirectory {
        path: root.to_path_buf(),
        source,
    };
    let resolved = std::fs::canonicalize(root).map_err(|error| not_a_dir(Some(error)))?;
    if !resolved.is_dir() {
        return Err(not_a_dir(None));
    }
    Ok(resolved)
}

/// Hashes a directory already resolved by [`resolve_test_dir`], with the digests of `cache`.
///
/// # Errors
/// [`HashError::Io`] naming the path that could not be read.
pub fn hash_resolved(resolved: PathBuf, cache: &DigestCache) -> Result<DirManifest, HashError> {
    hash_resolved_excluding(resolved, cache, &[])
}

/// [`hash_resolved`] with the `--exclude` patterns `excludes`.
///
/// # Errors
/// As [`hash_resolved`]; [`HashError::IgnoreFile`], [`HashError::Exclude`].
pub fn hash_resolved_excluding(
    resolved: PathBuf,
    cache: &DigestCache,
    excludes: &[String],
) -> Result<DirManifest, HashError> {
    let rules = exclude::Excludes::load(&resolved, excludes)?;
    let mut excluded = Vec::new();
    let walk = walkdir::WalkDir::new(&resolved)
        .follow_links(false)
        .sort_by(|a, b| os_str_bytes(a.file_name()).cmp(&os_str_bytes(b.file_name())))
        .into_iter()
        .filter_entry(|entry| {
            if entry.depth() == 0 {
                return true;
            }
            let relative = entry.path().strip_prefix(&resolved).unwrap_or(entry.path());
            let is_dir = entry.file_type().is_dir();
            if rules.excludes(relative, is_dir) {
                excluded.push(Excluded {
                    rel_path: RelPath::from_components(relative.iter()),
                    dir: is_dir,
                });
                return false;
            }
            true
        });

    let mut files = Vec::new();
    let mut dirs = Vec::new();
    let mut skipped_symlinks = Vec::new();
    let mut skipped_special = Vec::new();
    for entry in walk {
        let entry = entry.map_err(|error| {
            let path = error.path().unwrap_or(&resolved).to_path_buf();
            let source = error
                .into_io_error()
                .unwrap_or_else(|| io::Error::other("walk failed"));
            HashError::Io { path, source }
        })?;
        if entry.depth() == 0 {
            continue;
        }
        let relative = entry.path().strip_prefix(&resolved).unwrap_or(entry.path());
        let rel_path = RelPath::from_components(relative.iter());
        let file_type = entry.file_type();
        if file_type.is_dir() {
            dirs.push(rel_path);
        } else if file_type.is_file() {
            // Size and mode are read by the digest workers from the open handle (fstat), so the
            // walk itself stays one readdir per directory.
            files.push(ManifestFile {
                rel_path,
                size: 0,
                mode: 0,
                digest: [0; 32],
                stamp: None,
            });
        } else if file_type.is_symlink() {
            skipped_symlinks.push(rel_path);
        } else {
            skipped_special.push(rel_path);
        }
    }

    digest_files(&resolved, &mut files, cache)?;

    let mut hasher = DirHasher::new();
    for file in &files {
        hasher.add_file(&file.rel_path, &file.digest);
    }
    let dirs = dirs_holding_files(dirs, &files);
    Ok(DirManifest {
        root: resolved,
        hash: hasher.finish(),
        dirs,
        files,
        skipped_symlinks,
        skipped_special,
        excluded,
        ignore_file: rules.ignore_file,
    })
}

/// Keeps the directories that hold a file somewhere below them, in walk order (parents first).
fn dirs_holding_files(dirs: Vec<RelPath>, files: &[ManifestFile]) -> Vec<RelPath> {
    let mut needed = std::collections::HashSet::new();
    for file in files {
        let bytes = file.rel_path.as_bytes();
        for (idx, _) in bytes.iter().enumerate().filter(|(_, b)| **b == b'/') {
            needed.insert(&bytes[..idx]);
        }
    }
    dirs.into_iter()
        .filter(|dir| needed.contains(dir.as_bytes()))
        .collect()
}

/// A file's index in the manifest, its digest, its size as read and its mode.
type DigestedFile = (usize, FileDigest, u64, u32, Option<FileStamp>);

/// Fills in each file's digest, several files at a time when there are several.
fn digest_files(
    root: &Path,
    files: &mut [ManifestFile],
    cache: &DigestCache,
) -> Result<(), HashError> {
    let n_workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(8)
        .min(files.len().max(1));
    let digest_one = |file: &ManifestFile, buffer: &mut [u8]| {
        let path = file.rel_path.to_local(root);
        let mut read = || {
            let handle = File::open(&path)?;
            let metadata = handle.metadata()?;
            let mode = mode_bits(&metadata);
            let stamp = FileStamp::settled(&metadata, std::time::SystemTime::now());
            if let Some(stamp) = stamp
                && let Some(digest) = cache.get(&file.rel_path, &stamp)
            {
                return Ok((digest, stamp.len, mode, Some(stamp)));
            }
            let (digest, size) = digest_reader(handle, buffer)?;
            // Bytes read that the stamp does not account for: it vouches for nothing.
            let stamp = stamp.filter(|stamp| stamp.len == size);
            Ok((digest, size, mode, stamp))
        };
        read().map_err(|source| HashError::Io {
            path: path.clone(),
            source,
        })
    };
    if n_workers == 1 {
        let mut buffer = vec![0u8; READ_BUFFER_BYTES];
        for file in files.iter_mut() {
            let (digest, size, mode, stamp) = digest_one(file, &mut buffer)?;
            file.digest = digest;
            file.size = size;
            file.mode = mode;
            file.stamp = stamp;
        }
        return Ok(());
    }

    let next_file_idx = AtomicUsize::new(0);
    let results: Vec<Result<Vec<DigestedFile>, HashError>> = std::thread::scope(|scope| {
        let files: &[ManifestFile] = files;
        let handles: Vec<_> = (0..n_workers)
            .map(|_| {
                scope.spawn(|| {
                    let mut buffer = vec![0u8; READ_BUFFER_BYTES];
                    let mut done = Vec::new();
                    loop {
                        let file_idx = next_file_idx.fetch_add(1, Ordering::Relaxed);
                        let Some(file) = files.get(file_idx) else {
                            return Ok(done);
                        };
                        let (digest, size, mode, stamp) = digest_one(file, &mut buffer)?;
                        done.push((file_idx, digest, size, mode, stamp));
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|handle| {
                handle
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect()
    });
    for result in results {
        for (file_idx, digest, size, mode, stamp) in result? {
            files[file_idx].digest = digest;
            files[file_idx].size = size;
            files[file_idx].mode = mode;
            files[file_idx].stamp = stamp;
        }
    }
    Ok(())
}

#[cfg(unix)]
fn mode_bits(metadata: &std::fs::Metadata) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    metadata.permissions().mode() & 0o7777
}

#[cfg(not(unix))]
fn mode_bits(_metadata: &std::fs::Metadata) -> u32 {
    0o644
}
