//! The errors of the SQLite store, and how they become a [`StoreError`].

use std::path::{Path, PathBuf};
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
    #[error(
        "database {path} has schema version {found}, older than version {supported} of this \
         testfleet, and its state directory is read-only, so it cannot be upgraded"
    )]
    OlderSchemaReadOnly {
        path: PathBuf,
        found: i64,
        supported: i64,
    },
    #[error(
        "state directory {dir} is read-only: testfleet cannot record runs there; `list`, \
         `status` and `logs` still read it, and another --state-dir (or TESTFLEET_STATE_DIR) \
         takes new runs"
    )]
    StateDirReadOnly { dir: PathBuf },
    #[error(
        "the disk holding state directory {dir} is full ({free} bytes free): free some space, or \
         pass another --state-dir (or TESTFLEET_STATE_DIR)"
    )]
    DiskFull {
        dir: PathBuf,
        free: u64,
        #[source]
        cause: Box<Error>,
    },
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

/// Less free space than this on the state directory's disk, when a write failed, means the
/// disk is full.
const FULL_BELOW: u64 = 256 * 1024;

impl Error {
    /// The database file an error of the file system is about, when it is one.
    fn database(&self) -> Option<&Path> {
        use rusqlite::ErrorCode as Code;
        match self {
            Self::Sqlite { path, source, .. }
                if matches!(
                    source.sqlite_error_code(),
                    Some(
                        Code::DiskFull | Code::SystemIoFailure | Code::CannotOpen | Code::ReadOnly
                    )
                ) =>
            {
                Some(path)
            }
            Self::CreateDatabase { path, .. }
            | Self::ReadOnly { path }
            | Self::Pool { path, .. } => Some(path),
            _ => None,
        }
    }

    /// Says what a failure of the file system really was: a full disk, or a state directory
    /// that cannot be written (SQLite reports both as I/O errors or "unable to open").
    pub(crate) fn diagnose(self) -> Self {
        let Some(database) = self.database() else {
            return self;
        };
        let dir = match database.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent.to_owned(),
            _ => PathBuf::from("."),
        };
        if let Ok(stats) = nix::sys::statvfs::statvfs(&dir) {
            #[expect(
                clippy::useless_conversion,
                reason = "fsblkcnt_t and c_ulong are narrower than u64 on some platforms"
            )]
            let free = u64::from(stats.blocks_available()) * u64::from(stats.fragment_size());
            if free < FULL_BELOW && !matches!(self, Self::ReadOnly { .. }) {
                return Self::DiskFull {
                    dir,
                    free,
                    cause: Box::new(self),
                };
            }
            if stats
                .flags()
                .contains(nix::sys::statvfs::FsFlags::ST_RDONLY)
            {
                return Self::StateDirReadOnly { dir };
            }
        }
        let writable = |path: &Path| {
            nix::unistd::access(path, nix::unistd::AccessFlags::W_OK).is_ok() || !path.exists()
        };
        if !writable(&dir) || !writable(database) {
            return Self::StateDirReadOnly { dir };
        }
        self
    }
}

impl From<Error> for StoreError {
    fn from(error: Error) -> Self {
        let error = error.diagnose();
        StoreError::Backend {
            message: error.to_string(),
            source: Some(Arc::new(error)),
        }
    }
}

/// Whether a store error says the state directory cannot be written (a store opened read-only
/// still reads it: see [`crate::SqliteStore::open_read_only`]).
pub fn is_read_only(error: &StoreError) -> bool {
    let StoreError::Backend {
        source: Some(source),
        ..
    } = error
    else {
        return false;
    };
    matches!(
        source.downcast_ref::<Error>(),
        Some(Error::StateDirReadOnly { .. } | Error::ReadOnly { .. })
    )
}
