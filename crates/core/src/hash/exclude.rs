//! What the hash of a test directory leaves out (`docs/contract.md#test-directory-hash`):
//! `.git/` by default, the patterns of `.testfleetignore` at the root of the directory, then
//! the `--exclude` patterns, all in gitignore syntax, matched by the `ignore` crate (ripgrep's
//! gitignore matcher). As in a `.gitignore`, a later pattern wins over an earlier one, so
//! `!.git/` in the ignore file puts `.git/` back, and a folder that is left out is not looked
//! into at all.
//!
//! What is left out is neither hashed nor uploaded: the manifest lists only what is kept.

use std::path::{Path, PathBuf};

use ignore::gitignore::{Gitignore, GitignoreBuilder};

use super::HashError;

/// The ignore file, read at the root of the test directory only.
pub const IGNORE_FILE: &str = ".testfleetignore";

/// The patterns applied before the ignore file, so that it can undo them (`!.git/`).
pub const DEFAULT_EXCLUDES: &[&str] = &[".git/"];

/// A `--exclude` pattern that is not valid gitignore syntax.
#[derive(Debug, thiserror::Error)]
#[error("invalid --exclude pattern {pattern:?}: {source}")]
pub struct BadExclude {
    /// The pattern as given.
    pub pattern: String,
    /// Why the matcher refused it.
    #[source]
    pub source: ignore::Error,
}

/// Checks `--exclude` patterns before anything else is done.
///
/// # Errors
/// [`BadExclude`] for the first pattern that is not a valid gitignore line.
pub fn check_excludes(patterns: &[String]) -> Result<(), BadExclude> {
    let mut builder = GitignoreBuilder::new("/");
    for pattern in patterns {
        builder
            .add_line(None, pattern)
            .map_err(|source| BadExclude {
                pattern: pattern.clone(),
                source,
            })?;
    }
    Ok(())
}

/// The matcher of one test directory.
#[derive(Debug)]
pub(crate) struct Excludes {
    matcher: Gitignore,
    /// Whether the directory has an ignore file.
    pub(crate) ignore_file: bool,
}

impl Excludes {
    /// The defaults, the ignore file of `root` (when it has one) and `patterns`, in this order.
    ///
    /// # Errors
    /// [`HashError::IgnoreFile`] when the ignore file exists but is not a regular file, cannot
    /// be read or has a line that is not valid gitignore syntax; [`HashError::Exclude`] for a
    /// bad pattern.
    pub(crate) fn load(root: &Path, patterns: &[String]) -> Result<Self, HashError> {
        let mut builder = GitignoreBuilder::new(root);
        for pattern in DEFAULT_EXCLUDES {
            builder.add_line(None, pattern).map_err(|source| {
                HashError::Exclude(BadExclude {
                    pattern: (*pattern).to_owned(),
                    source,
                })
            })?;
        }
        let file = root.join(IGNORE_FILE);
        let ignore_file = match std::fs::symlink_metadata(&file) {
            Ok(metadata) if metadata.is_file() => true,
            Ok(_) => {
                return Err(HashError::IgnoreFile {
                    path: file,
                    reason: "it is not a regular file (a symlink is not followed)".to_owned(),
                });
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => false,
            Err(error) => return Err(ignore_file_error(file, &error)),
        };
        if ignore_file && let Some(error) = builder.add(&file) {
            return Err(ignore_file_error(file, &error));
        }
        for pattern in patterns {
            builder.add_line(None, pattern).map_err(|source| {
                HashError::Exclude(BadExclude {
                    pattern: pattern.clone(),
                    source,
                })
            })?;
        }
        let matcher = builder
            .build()
            .map_err(|error| ignore_file_error(root.join(IGNORE_FILE), &error))?;
        Ok(Self {
            matcher,
            ignore_file,
        })
    }

    /// Whether the entry at `relative` (a path relative to the root) is left out.
    pub(crate) fn excludes(&self, relative: &Path, is_dir: bool) -> bool {
        self.matcher.matched(relative, is_dir).is_ignore()
    }
}

fn ignore_file_error(path: PathBuf, error: &dyn std::fmt::Display) -> HashError {
    HashError::IgnoreFile {
        path,
        reason: error.to_string(),
    }
}
