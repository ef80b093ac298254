//! `testfleet hash DIR`: the directory hash (`docs/contract.md#test-directory-hash`), as a
//! dispatch computes it.

use std::path::PathBuf;

use serde_json::json;
use testfleet_core::DispatchError;
use testfleet_core::hash::{DEFAULT_EXCLUDES, IGNORE_FILE, check_excludes, hash_dir_excluding};

use crate::context::Context;
use crate::error::CliError;
use crate::output::{Report, counted};

/// Hashes `dir` (leaving out what `.git/`, its `.testfleetignore` and `excludes` match) and
/// reports the digest, counts, skipped symlinks and what was excluded (the paths with `-v`).
///
/// # Errors
/// `TEST_DIR_NOT_FOUND` for a missing path or a file; `TEST_DIR_UNREADABLE` for an unreadable
/// file or ignore file; `INVALID_ARGUMENT` for a bad `--exclude`.
pub async fn hash(ctx: &Context, dir: PathBuf, excludes: Vec<String>) -> Result<Report, CliError> {
    check_excludes(&excludes).map_err(|error| CliError::invalid(error.to_string()))?;
    let n_excludes = excludes.len();
    let manifest = tokio::task::spawn_blocking(move || {
        hash_dir_excluding(&dir, &excludes).map_err(DispatchError::from)
    })
    .await
    .map_err(|error| CliError::Internal(format!("hashing panicked: {error}")))??;
    let skipped: Vec<String> = manifest
        .skipped_symlinks
        .iter()
        .map(|path| path.to_string_lossy())
        .collect();
    warn_skipped(&manifest);
    let n_dirs = manifest.excluded.iter().filter(|entry| entry.dir).count();
    let n_files = manifest.excluded.len() - n_dirs;
    let mut excluded = json!({
        "dirs": n_dirs,
        "files": n_files,
        "defaults": DEFAULT_EXCLUDES,
        "ignore_file": manifest.ignore_file.then_some(IGNORE_FILE),
    });
    let verbose = ctx.global.verbose > 0;
    if verbose {
        excluded["paths"] = manifest
            .excluded
            .iter()
            .map(|entry| {
                let path = entry.rel_path.to_string_lossy();
                if entry.dir { format!("{path}/") } else { path }
            })
            .collect();
    }
    if !ctx.style.json {
        let mut rules = format!("{} by default", DEFAULT_EXCLUDES.join(" "));
        if manifest.ignore_file {
            rules.push_str(&format!(", {IGNORE_FILE}"));
        }
        if n_excludes > 0 {
            rules.push_str(", --exclude");
        }
        eprintln!(
            "excluded {} and {} ({rules}){}",
            counted(n_dirs, "folder", "folders"),
            counted(n_files, "file", "files"),
            if verbose || manifest.excluded.is_empty() {
                ""
            } else {
                "; -v lists them"
            },
        );
        if verbose {
            for entry in &manifest.excluded {
                let path = entry.rel_path.to_string_lossy();
                eprintln!("  {path}{}", if entry.dir { "/" } else { "" });
            }
        }
    }
    Ok(Report::new(
        json!({
            "hash": manifest.hash,
            "files": manifest.files.len(),
            "bytes": manifest.total_bytes(),
            "skipped_symlinks": skipped,
            "excluded": excluded,
        }),
        format!("{}\n", manifest.hash),
    ))
}

/// Tells the user on stderr about what was found but will not be uploaded.
pub fn warn_skipped(manifest: &testfleet_core::DirManifest) {
    // Once, with a count: a tree such as node_modules/.bin holds hundreds of them.
    match manifest.skipped_symlinks.as_slice() {
        [] => {}
        [path] => eprintln!(
            "warning: skipped symlink {} (symlinks are neither hashed nor uploaded)",
            path.to_string_lossy()
        ),
        [first, ..] => eprintln!(
            "warning: skipped {} symlinks, {} and others (symlinks are neither hashed nor uploaded; `testfleet hash DIR --json` lists them)",
            manifest.skipped_symlinks.len(),
            first.to_string_lossy()
        ),
    }
    for path in &manifest.skipped_special {
        eprintln!(
            "warning: skipped special file {} (only regular files are uploaded)",
            path.to_string_lossy()
        );
    }
}
