//! The test-directory hash (DESIGN §2) and the manifest of what is uploaded.
//!
//! The walk is depth-first with each directory's entries sorted by the raw bytes of their
//! names. Every regular file feeds `<relative path>\0<hex sha256 of contents>\n` into one
//! running sha256. Symlinks are neither followed nor hashed, and are reported. What is hashed
//! is exactly what is uploaded: the [`DirManifest`] lists those files and the directories that
//! hold them.

use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use sha2::{Digest, Sha256};

use crate::error::ErrorCode;
use crate::ids::TestDirHash;

/// The sha256 of one file's contents.
pub type FileDigest = [u8; 32];

/// A path relative to the test directory, as raw bytes with `/` separators.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RelPath(Vec<u8>);

impl RelPath {
    /// Builds a relative path from `/`-separated bytes. Callers guarantee that no component is
    /// empty, `.` or `..` (the walk below only produces such paths).
    fn from_components<'a>(components: impl Iterator<Item = &'a std::ffi::OsStr>) -> Self {
        let mut bytes = Vec::new();
        for component in components {
            if !bytes.is_empty() {
                bytes.push(b'/');
            }
            bytes.extend_from_slice(&os_str_bytes(component));
        }
        Self(bytes)
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The path as UTF-8, when it is (SFTP paths must be).
    pub fn to_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.0).ok()
    }

    /// The path with invalid UTF-8 replaced, for messages.
    pub fn to_string_lossy(&self) -> String {
        String::from_utf8_lossy(&self.0).into_owned()
    }

    /// The local file this path names under `root`.
    pub fn to_local(&self, root: &Path) -> PathBuf {
        let mut path = root.to_path_buf();
        for component in self.0.split(|&b| b == b'/') {
            path.push(os_str_from_bytes(component));
        }
        path
    }
}

impl fmt::Debug for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.to_string_lossy(), f)
    }
}

impl fmt::Display for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_string_lossy())
    }
}

#[cfg(unix)]
fn os_str_bytes(s: &std::ffi::OsStr) -> std::borrow::Cow<'_, [u8]> {
    use std::os::unix::ffi::OsStrExt;
    std::borrow::Cow::Borrowed(s.as_bytes())
}

#[cfg(not(unix))]
fn os_str_bytes(s: &std::ffi::OsStr) -> std::borrow::Cow<'_, [u8]> {
    match s.to_string_lossy() {
        std::borrow::Cow::Borrowed(text) => std::borrow::Cow::Borrowed(text.as_bytes()),
        std::borrow::Cow::Owned(text) => std::borrow::Cow::Owned(text.into_bytes()),
    }
}

#[cfg(unix)]
fn os_str_from_bytes(bytes: &[u8]) -> &std::ffi::OsStr {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::OsStr::from_bytes(bytes)
}

#[cfg(not(unix))]
fn os_str_from_bytes(bytes: &[u8]) -> &std::ffi::OsStr {
    // Non-Unix paths were produced from valid UTF-8 (lossily), so this cannot fail.
    std::ffi::OsStr::new(std::str::from_utf8(bytes).unwrap_or_default())
}

/// One regular file of the test directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestFile {
    pub rel_path: RelPath,
    pub size: u64,
    /// Unix permission bits (`0o755`), `0o644` where the platform has none.
    pub mode: u32,
    pub digest: FileDigest,
    /// The file's identity and change times when it was hashed, if they can vouch for its
    /// contents later (see [`FileStamp`]).
    pub stamp: Option<FileStamp>,
}

/// What `fstat` says about a file, taken before it was hashed: while a later `fstat` gives the
/// same stamp, the file still holds the hashed bytes, so a reader need not hash them again.
///
/// Every write moves the change time (`ctime`, which no user can set), but file systems keep it
/// in coarse ticks: a write in the same tick as the last change would not show. So a stamp is
/// only kept for files whose last change was [`FileStamp::SETTLE`] or more before they were
/// hashed (git's "racily clean" rule); newer files are hashed again when read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStamp {
    pub device: u64,
    pub inode: u64,
    pub len: u64,
    pub mtime_ns: i128,
    pub ctime_ns: i128,
}

impl FileStamp {
    /// How long ago a file's last change must be for its stamp to vouch for it.
    pub const SETTLE: std::time::Duration = std::time::Duration::from_secs(2);

    /// The stamp of an open file's metadata, on Unix.
    #[cfg(unix)]
    pub fn of(metadata: &std::fs::Metadata) -> Option<Self> {
        use std::os::unix::fs::MetadataExt;
        let ns = |secs: i64, nanos: i64| i128::from(secs) * 1_000_000_000 + i128::from(nanos);
        Some(Self {
            device: metadata.dev(),
            inode: metadata.ino(),
            len: metadata.len(),
            mtime_ns: ns(metadata.mtime(), metadata.mtime_nsec()),
            ctime_ns: ns(metadata.ctime(), metadata.ctime_nsec()),
        })
    }

    /// Elsewhere there is no change time to trust.
    #[cfg(not(unix))]
    pub fn of(_metadata: &std::fs::Metadata) -> Option<Self> {
        None
    }

    /// The stamp of `metadata` if the file's last change is settled at `now`.
    fn settled(metadata: &std::fs::Metadata, now: std::time::SystemTime) -> Option<Self> {
        let stamp = Self::of(metadata)?;
        let now_ns = now
            .duration_since(std::time::UNIX_EPOCH)
            .ok()
            .map(|since| i128::try_from(since.as_nanos()).unwrap_or(i128::MAX))?;
        let settle_ns = i128::try_from(Self::SETTLE.as_nanos()).unwrap_or(i128::MAX);
        let newest_change = stamp.ctime_ns.max(stamp.mtime_ns);
        (newest_change + settle_ns <= now_ns).then_some(stamp)
    }
}

/// Everything that is hashed, and therefore everything that is uploaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirManifest {
    /// The resolved, absolute test directory.
    pub root: PathBuf,
    pub hash: TestDirHash,
    /// Directories that hold at least one file, parents before children.
    pub dirs: Vec<RelPath>,
    /// Regular files in hash order.
    pub files: Vec<ManifestFile>,
    /// Symlinks found and skipped (neither followed nor hashed).
    pub skipped_symlinks: Vec<RelPath>,
    /// Sockets, FIFOs and devices found and skipped.
    pub skipped_special: Vec<RelPath>,
}

impl DirManifest {
    pub fn total_bytes(&self) -> u64 {
        self.files.iter().map(|file| file.size).sum()
    }
}

/// Why a directory could not be hashed.
#[derive(Debug, thiserror::Error)]
pub enum HashError {
    #[error("test directory {path} does not exist or is not a directory")]
    NotADirectory {
        path: PathBuf,
        #[source]
        source: Option<io::Error>,
    },
    #[error("failed to read {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl HashError {
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::NotADirectory { .. } => ErrorCode::TestDirNotFound,
            Self::Io { .. } => ErrorCode::TestDirNotFound,
        }
    }
}

/// File digests from an earlier hash of a directory, each with the stamp that vouches for it,
/// so that hashing the directory again reads only the files that changed (git's index does the
/// same). Only settled stamps are kept, so an entry can never stand for a file written after it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DigestCache {
    entries: std::collections::HashMap<Vec<u8>, (FileStamp, FileDigest)>,
}

impl DigestCache {
    const HEADER: &'static str = "testfleet digest cache 1\n";

    /// A file name for the cache of the directory at `root` (resolved): the hex sha256 of its
    /// path's bytes.
    pub fn file_name_for(root: &Path) -> String {
        hex::encode(Sha256::digest(os_str_bytes(root.as_os_str())))
    }

    /// Reads the cache stored at `path`; empty when there is none or it cannot be used.
    pub fn load(path: &Path) -> Self {
        std::fs::read(path)
            .ok()
            .and_then(|bytes| Self::decode(&bytes))
            .unwrap_or_default()
    }

    /// Stores the cache at `path` (its folder created), through a temporary file and a
    /// rename, so that a reader never sees half of it.
    ///
    /// # Errors
    /// The file system's.
    pub fn save(&self, path: &Path) -> io::Result<()> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let mut temp_name = path.as_os_str().to_owned();
        temp_name.push(format!(".{}.tmp", std::process::id()));
        let temp = PathBuf::from(temp_name);
        let written =
            std::fs::write(&temp, self.encode()).and_then(|()| std::fs::rename(&temp, path));
        if written.is_err() {
            let _ = std::fs::remove_file(&temp);
        }
        written
    }

    /// The digests of `manifest`'s files that have a stamp.
    pub fn of_manifest(manifest: &DirManifest) -> Self {
        let entries = manifest
            .files
            .iter()
            .filter_map(|file| {
                let stamp = file.stamp?;
                Some((file.rel_path.as_bytes().to_vec(), (stamp, file.digest)))
            })
            .collect();
        Self { entries }
    }

    /// The cached digest of `rel_path` if it was taken with exactly this stamp.
    pub fn get(&self, rel_path: &RelPath, stamp: &FileStamp) -> Option<FileDigest> {
        let (cached, digest) = self.entries.get(rel_path.as_bytes())?;
        (cached == stamp).then_some(*digest)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// A line-based text form: a header, then per file its hex path, device, inode, size,
    /// mtime and ctime (ns) and hex digest.
    pub fn encode(&self) -> Vec<u8> {
        use std::fmt::Write as _;
        let mut text = String::from(Self::HEADER);
        let mut entries: Vec<_> = self.entries.iter().collect();
        entries.sort_by(|a, b| a.0.cmp(b.0));
        for (path, (stamp, digest)) in entries {
            let _ = writeln!(
                text,
                "{} {} {} {} {} {} {}",
                hex::encode(path),
                stamp.device,
                stamp.inode,
                stamp.len,
                stamp.mtime_ns,
                stamp.ctime_ns,
                hex::encode(digest)
            );
        }
        text.into_bytes()
    }

    /// Reads [`DigestCache::encode`]'s form; `None` for anything else, damaged or of another
    /// version (the caller then hashes everything).
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let text = std::str::from_utf8(bytes).ok()?;
        let body = text.strip_prefix(Self::HEADER)?;
        let mut entries = std::collections::HashMap::new();
        for line in body.lines() {
            let mut fields = line.split(' ');
            let mut next = || fields.next();
            let path = hex::decode(next()?).ok()?;
            let stamp = FileStamp {
                device: next()?.parse().ok()?,
                inode: next()?.parse().ok()?,
                len: next()?.parse().ok()?,
                mtime_ns: next()?.parse().ok()?,
                ctime_ns: next()?.parse().ok()?,
            };
            let digest: FileDigest = hex::decode(next()?).ok()?.try_into().ok()?;
            if next().is_some() {
                return None;
            }
            entries.insert(path, (stamp, digest));
        }
        Some(Self { entries })
    }
}

/// Feeds files into the directory hash, in manifest order.
#[derive(Debug, Clone, Default)]
pub struct DirHasher {
    running: Sha256,
}

impl DirHasher {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn add_file(&mut self, rel_path: &RelPath, digest: &FileDigest) {
        self.running.update(rel_path.as_bytes());
        self.running.update([0u8]);
        self.running.update(hex::encode(digest).as_bytes());
        self.running.update(b"\n");
    }

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

/// Hashes the test directory at `root` and lists what it holds.
///
/// # Errors
/// [`HashError::NotADirectory`] when `root` is missing or not a directory (a symlink to a
/// directory is followed); [`HashError::Io`] naming the path that could not be read.
pub fn hash_dir(root: &Path) -> Result<DirManifest, HashError> {
    hash_dir_with(root, &DigestCache::default())
}

/// [`hash_dir`], taking the digest of a file from `cache` instead of reading it when the file's
/// settled stamp is the one cached with that digest (see [`FileStamp`]).
///
/// # Errors
/// As [`hash_dir`].
pub fn hash_dir_with(root: &Path, cache: &DigestCache) -> Result<DirManifest, HashError> {
    let not_a_dir = |source| HashError::NotADirectory {
        path: root.to_path_buf(),
        source,
    };
    let resolved = std::fs::canonicalize(root).map_err(|error| not_a_dir(Some(error)))?;
    if !resolved.is_dir() {
        return Err(not_a_dir(None));
    }

    let walk = walkdir::WalkDir::new(&resolved)
        .follow_links(false)
        .sort_by(|a, b| os_str_bytes(a.file_name()).cmp(&os_str_bytes(b.file_name())));

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

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::FileStamp;

    #[test]
    #[cfg(unix)]
    fn a_stamp_vouches_only_for_a_settled_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("f");
        std::fs::write(&path, "x").expect("write");
        let metadata = std::fs::metadata(&path).expect("stat");
        let changed = metadata.modified().expect("mtime");
        let stamp = FileStamp::of(&metadata).expect("unix has stamps");
        assert_eq!(stamp.len, 1);

        let soon = changed + FileStamp::SETTLE - Duration::from_millis(1);
        assert_eq!(FileStamp::settled(&metadata, soon), None, "racily clean");
        let later = changed + FileStamp::SETTLE + Duration::from_millis(10);
        assert_eq!(FileStamp::settled(&metadata, later), Some(stamp));
        assert_eq!(
            FileStamp::settled(&metadata, SystemTime::UNIX_EPOCH),
            None,
            "a clock behind the file's change vouches for nothing"
        );
    }
}
