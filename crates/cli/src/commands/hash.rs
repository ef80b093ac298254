//! `testfleet hash DIR`: the directory hash (`docs/contract.md#test-directory-hash`), as a
//! dispatch computes it.

use std::path::PathBuf;

use serde_json::json;
use testfleet_core::DispatchError;
use testfleet_core::hash::hash_dir;

use crate::error::CliError;
use crate::output::Report;

/// Hashes `dir` and reports the digest, counts and skipped symlinks.
///
/// # Errors
/// `TEST_DIR_NOT_FOUND` for a missing path or a file; `INTERNAL` for an unreadable file.
pub async fn hash(dir: PathBuf) -> Result<Report, CliError> {
    let manifest = tokio::task::spawn_blocking(move || hash_dir(&dir).map_err(DispatchError::from))
        .await
        .map_err(|error| CliError::Internal(format!("hashing panicked: {error}")))??;
    let skipped: Vec<String> = manifest
        .skipped_symlinks
        .iter()
        .map(|path| path.to_string_lossy())
        .collect();
    warn_skipped(&manifest);
    Ok(Report::new(
        json!({
            "hash": manifest.hash,
            "files": manifest.files.len(),
            "bytes": manifest.total_bytes(),
            "skipped_symlinks": skipped,
        }),
        format!("{}\n", manifest.hash),
    ))
}

/// Tells the user on stderr about what was found but will not be uploaded.
pub fn warn_skipped(manifest: &testfleet_core::DirManifest) {
    for path in &manifest.skipped_symlinks {
        eprintln!(
            "warning: skipped symlink {} (symlinks are neither hashed nor uploaded)",
            path.to_string_lossy()
        );
    }
    for path in &manifest.skipped_special {
        eprintln!(
            "warning: skipped special file {} (only regular files are uploaded)",
            path.to_string_lossy()
        );
    }
}
