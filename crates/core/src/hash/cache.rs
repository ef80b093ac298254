//! The digest cache: file digests of an earlier hash, so that hashing a directory again reads
//! only the files that changed.

use std::io;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::manifest::{DirManifest, FileDigest, FileStamp, RelPath, os_str_bytes};

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

    /// The number of files that have a cached digest.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no file has a cached digest.
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
