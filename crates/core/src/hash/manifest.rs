//! What a hash of a test directory found: the manifest of files to upload, their paths as raw
//! bytes, and the stamps that vouch for their contents later.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::entrypoint::{EntrypointError, TargetOs};
use crate::ids::TestDirHash;

/// The sha256 of one file's contents.
pub type FileDigest = [u8; 32];

/// A path relative to the test directory, as raw bytes with `/` separators.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RelPath(Vec<u8>);

impl RelPath {
    /// Builds a relative path from `/`-separated bytes. Callers guarantee that no component is
    /// empty, `.` or `..` (the walk below only produces such paths).
    pub(crate) fn from_components<'a>(
        components: impl Iterator<Item = &'a std::ffi::OsStr>,
    ) -> Self {
        let mut bytes = Vec::new();
        for component in components {
            if !bytes.is_empty() {
                bytes.push(b'/');
            }
            bytes.extend_from_slice(&os_str_bytes(component));
        }
        Self(bytes)
    }

    /// The raw bytes, components joined by `/`: what the directory hash feeds in. On Unix these are
    /// the names' own bytes; elsewhere, their lossy UTF-8.
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
pub(crate) fn os_str_bytes(s: &std::ffi::OsStr) -> std::borrow::Cow<'_, [u8]> {
    use std::os::unix::ffi::OsStrExt;
    std::borrow::Cow::Borrowed(s.as_bytes())
}

#[cfg(not(unix))]
pub(crate) fn os_str_bytes(s: &std::ffi::OsStr) -> std::borrow::Cow<'_, [u8]> {
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
    /// The file's path relative to the test directory.
    pub rel_path: RelPath,
    /// The size in bytes of the contents that were hashed.
    pub size: u64,
    /// Unix permission bits (`0o755`), `0o644` where the platform has none.
    pub mode: u32,
    /// The SHA-256 of the contents that were hashed.
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
    /// The id of the device that holds the file (`st_dev`).
    pub device: u64,
    /// The file's inode number (`st_ino`).
    pub inode: u64,
    /// The file's size in bytes (`st_size`).
    pub len: u64,
    /// The last modification time, in nanoseconds since the Unix epoch. Users can set it, so it
    /// does not vouch for the contents alone.
    pub mtime_ns: i128,
    /// The last status change time, in nanoseconds since the Unix epoch. Every write moves it and
    /// no user can set it.
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
    pub(crate) fn settled(
        metadata: &std::fs::Metadata,
        now: std::time::SystemTime,
    ) -> Option<Self> {
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
    /// The test directory hash of these files: with the machine, the idempotency key of a claim.
    pub hash: TestDirHash,
    /// Directories that hold at least one file, parents before children.
    pub dirs: Vec<RelPath>,
    /// Regular files in hash order.
    pub files: Vec<ManifestFile>,
    /// Symlinks found and skipped (neither followed nor hashed).
    pub skipped_symlinks: Vec<RelPath>,
    /// Sockets, FIFOs and devices found and skipped.
    pub skipped_special: Vec<RelPath>,
    /// What the excludes left out, in walk order: a folder is listed once, and what it holds
    /// was not looked at.
    pub excluded: Vec<Excluded>,
    /// Whether the directory has a `.testfleetignore` (and its patterns applied).
    pub ignore_file: bool,
}

/// An entry of the test directory that an exclude left out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Excluded {
    /// Its path relative to the test directory.
    pub rel_path: RelPath,
    /// Whether it is a folder (left out with everything in it).
    pub dir: bool,
}

impl DirManifest {
    /// The bytes of every file together.
    pub fn total_bytes(&self) -> u64 {
        self.files.iter().map(|file| file.size).sum()
    }

    /// Whether a regular file of this name lies at the top of the directory (and is therefore
    /// uploaded).
    pub fn holds_top_level_file(&self, name: &str) -> bool {
        !name.contains('/')
            && self
                .files
                .iter()
                .any(|file| file.rel_path.as_bytes() == name.as_bytes())
    }

    /// The entrypoint a machine of `os` runs (`run.sh`, or `run.ps1` on Windows), when the
    /// manifest holds it as a regular file at its top. A symlink is never the entrypoint: it is
    /// not uploaded.
    ///
    /// # Errors
    /// [`EntrypointError`] naming the OS, the directory and the file wanted.
    pub fn entrypoint_for(&self, os: &TargetOs) -> Result<&'static str, EntrypointError> {
        let wanted = os.entrypoint();
        if self.holds_top_level_file(wanted) {
            Ok(wanted)
        } else {
            Err(EntrypointError {
                os: os.clone(),
                dir: self.root.clone(),
                wanted,
            })
        }
    }
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
