//! The errors of the SQLite store, and how they become a [`StoreError`].

use std::path::PathBuf;
use std::sync::Arc;

use testfleet_core::ports::StoreError;

/// Everything that can go wrong in the SQLite store. It reaches callers as
/// [`StoreError::Backend`] (code `STORE_ERROR`) with this error as its source, so the whole
/// chain down to SQLite's own message is kept.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("state directory {dir} does not exist; create it or pass another --state-dir")]
    StateDirMissing { dir: PathBuf },
    #[error("state directory {dir} is not a directory")]
    StateDirNotADirectory { dir: PathBuf },
    #[error("cannot use state directory {dir}")]
    StateDirUnusable {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot create database {path}")]
    CreateDatabase {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read database {path}")]
    ReadDatabase {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("database path {path} is a directory, not a file")]
    DatabaseIsADirectory { path: PathBuf },
    #[error(
        "{path} is not an SQLite database (corrupt or another kind of file); it was left \
         untouched: move it away to start a new history"
    )]
    NotADatabase {
        path: PathBuf,
        #[source]
        source: Option<rusqlite::Error>,
    },
    #[error(
        "database {path} has schema version {found}, newer than version {supported} that this \
         testfleet knows; it was left untouched: upgrade testfleet to use it"
    )]
    NewerSchema {
        path: PathBuf,
        found: i64,
        supported: i64,
    },
    #[error(
        "database {path} has schema version {found}, which no testfleet writes; it was left untouched"
    )]
    UnknownSchema { path: PathBuf, found: i64 },
    #[error("database {path} can only be opened read-only; testfleet needs to write to it")]
    ReadOnly { path: PathBuf },
    #[error("failed to {action} in {path}")]
    Sqlite {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("failed to get a connection to {path}")]
    Pool {
        path: PathBuf,
        #[source]
        source: r2d2::Error,
    },
    #[error("the database task to {action} did not finish")]
    Task {
        action: &'static str,
        #[source]
        source: tokio::task::JoinError,
    },
    #[error("column {column} holds {value:?}, which is not a valid {what}")]
    BadValue {
        column: &'static str,
        value: String,
        what: &'static str,
    },
}

impl From<Error> for StoreError {
    fn from(error: Error) -> Self {
        StoreError::Backend {
            message: error.to_string(),
            source: Some(Arc::new(error)),
        }
    }
}
