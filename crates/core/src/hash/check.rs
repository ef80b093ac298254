//! The check every transport makes while it reads files for an upload: what is read must be
//! what was hashed (`docs/contract.md#test-directory-hash`).
//!
//! [`ContentCheck`] holds no I/O of its own, so a transport reads the file however suits it
//! (blocking, async, memory-mapped) and feeds the bytes through the check. Small files are read
//! whole, ahead of their upload, by [`read_small_file`].

use std::io::{self, Read as _};
use std::path::Path;

use sha2::{Digest, Sha256};

use super::manifest::{FileStamp, ManifestFile};

/// Checks the bytes of one manifest file as a transport reads them.
///
/// When the file's stamp from the hash still matches the open file, the contents are vouched
/// for by the stamp (checked again after the read) and not hashed a second time; otherwise the
/// bytes are hashed as they go and compared with the manifest's digest at the end. Either way
/// the size must match, and a file that grew is caught before its extra bytes are used.
#[derive(Debug)]
pub struct ContentCheck<'m> {
    file: &'m ManifestFile,
    /// The stamp vouches for the contents: no need to hash them.
    vouched: bool,
    hasher: Sha256,
    n_bytes: u64,
}

/// The file no longer holds what was hashed: gone, grown, shrunk or rewritten.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the file changed after it was hashed")]
pub struct Changed;

impl<'m> ContentCheck<'m> {
    /// Starts checking `file`, opened with `metadata` (an `fstat` of the open handle).
    pub fn begin(file: &'m ManifestFile, metadata: &std::fs::Metadata) -> Self {
        Self {
            file,
            vouched: vouched_for(file, metadata),
            hasher: Sha256::new(),
            n_bytes: 0,
        }
    }

    /// Feeds the next bytes read.
    ///
    /// # Errors
    /// [`Changed`] once more bytes were read than the manifest holds: the file grew, and the
    /// caller must not send this chunk.
    pub fn update(&mut self, chunk: &[u8]) -> Result<(), Changed> {
        self.n_bytes += chunk.len() as u64;
        if self.n_bytes > self.file.size {
            return Err(Changed);
        }
        if !self.vouched {
            self.hasher.update(chunk);
        }
        Ok(())
    }

    /// Ends the check after the last read; `metadata_after` is an `fstat` of the handle taken
    /// after it (`None` when it could not be taken).
    ///
    /// # Errors
    /// [`Changed`] when the size or the contents differ from the manifest, or the stamp that
    /// vouched for the contents no longer holds.
    pub fn finish(self, metadata_after: Option<&std::fs::Metadata>) -> Result<(), Changed> {
        let unchanged = if self.vouched {
            metadata_after.is_some_and(|metadata| vouched_for(self.file, metadata))
        } else {
            let digest: [u8; 32] = self.hasher.finalize().into();
            digest == self.file.digest
        };
        if self.n_bytes == self.file.size && unchanged {
            Ok(())
        } else {
            Err(Changed)
        }
    }
}

/// Whether the stamp taken when `file` was hashed still vouches for the open file described by
/// `metadata`, so that its bytes need not be hashed again (see [`FileStamp`]).
fn vouched_for(file: &ManifestFile, metadata: &std::fs::Metadata) -> bool {
    file.stamp.is_some() && FileStamp::of(metadata) == file.stamp
}

/// What [`read_small_file`] found.
#[derive(Debug)]
pub enum SmallFile {
    /// The whole file, its size and contents checked against the manifest.
    Whole(Vec<u8>),
    /// The file is gone, or its size or contents differ from the manifest.
    Changed,
}

/// Reads a manifest file whole and checks it (for small files, read ahead of their upload).
///
/// # Errors
/// The file system's, other than the file being gone (which is [`SmallFile::Changed`]).
pub fn read_small_file(root: &Path, file: &ManifestFile) -> io::Result<SmallFile> {
    let path = file.rel_path.to_local(root);
    let mut handle = match std::fs::File::open(path) {
        Ok(handle) => handle,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(SmallFile::Changed),
        Err(error) => return Err(error),
    };
    let mut check = ContentCheck::begin(file, &handle.metadata()?);
    // One byte more than expected tells a file that grew.
    let mut bytes = Vec::with_capacity(usize::try_from(file.size).unwrap_or(0) + 1);
    (&mut handle).take(file.size + 1).read_to_end(&mut bytes)?;
    let checked = check
        .update(&bytes)
        .and_then(|()| check.finish(handle.metadata().ok().as_ref()));
    Ok(match checked {
        Ok(()) => SmallFile::Whole(bytes),
        Err(Changed) => SmallFile::Changed,
    })
}
