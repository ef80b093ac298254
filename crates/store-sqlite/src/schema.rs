//! Opening the database file: checking the state directory and the file, the connection
//! settings, and the forward-only migrations keyed by `PRAGMA user_version`.
//!
//! Nothing is written to a file that turns out not to be a database, or to hold a newer schema
//! than this build knows: both are detected by reads before the first write.

use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, TransactionBehavior};

use crate::error::Error;
use crate::retry::{is_busy, retry_busy};

/// The migrations, in order; the schema version is the number applied.
const MIGRATIONS: &[&str] = &[
    include_str!("../migrations/0001_runs.sql"),
    include_str!("../migrations/0002_remote_cleanup.sql"),
    include_str!("../migrations/0003_leases.sql"),
    include_str!("../migrations/0004_tests.sql"),
    include_str!("../migrations/0005_queue.sql"),
    include_str!("../migrations/0006_invocation.sql"),
    include_str!("../migrations/0007_upload.sql"),
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// How long SQLite itself waits for a lock before reporting `SQLITE_BUSY`.
pub(crate) const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// How every connection opens the file: read-write, never interpreting the path as a URI.
pub(crate) fn open_flags() -> OpenFlags {
    OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX
}

/// The per-connection settings. `journal_mode` is a property of the file, set once in
/// [`open_and_migrate`].
pub(crate) fn configure(conn: &Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.execute_batch("PRAGMA foreign_keys = ON; PRAGMA synchronous = NORMAL;")
}

/// Checks the state directory and the file, creates the file when missing, refuses a file
/// that is not a database or has a newer schema, switches it to WAL and applies the pending
/// migrations.
pub(crate) fn open_and_migrate(path: &Path) -> Result<(), Error> {
    check_state_dir(path)?;
    create_if_missing(path)?;
    check_header(path)?;

    let sql = |action| {
        move |source| Error::Sqlite {
            action,
            path: path.to_owned(),
            source,
        }
    };
    let conn = Connection::open_with_flags(path, open_flags()).map_err(sql("open the database"))?;
    conn.busy_timeout(BUSY_TIMEOUT)
        .map_err(sql("set the busy timeout"))?;

    // The first read: it tells a database from any other file without writing a byte.
    let version = retry_busy(|| user_version(&conn), is_busy).map_err(|source| {
        if matches!(
            source.sqlite_error_code(),
            Some(rusqlite::ErrorCode::NotADatabase)
        ) {
            Error::NotADatabase {
                path: path.to_owned(),
                source: Some(source),
            }
        } else {
            sql("read the schema version")(source)
        }
    })?;
    check_version(path, version)?;
    if conn
        .is_readonly("main")
        .map_err(sql("check write access"))?
    {
        return Err(Error::ReadOnly {
            path: path.to_owned(),
        });
    }

    let mode: String = retry_busy(
        || conn.query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0)),
        is_busy,
    )
    .map_err(sql("switch to WAL journaling"))?;
    if !mode.eq_ignore_ascii_case("wal") {
        tracing::warn!(path = %path.display(), mode, "the database did not switch to WAL journaling");
    }
    configure(&conn).map_err(sql("configure the connection"))?;
    migrate(path, conn)
}

/// Checks, without writing, that the file at `path` (opened through `uri`) is a database of a
/// schema this build can read.
pub(crate) fn check_read_only(path: &Path, uri: &str) -> Result<(), Error> {
    if !path.is_file() {
        let dir = path
            .parent()
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
        return Err(Error::StateDirReadOnly { dir });
    }
    check_header(path)?;
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY
        | OpenFlags::SQLITE_OPEN_URI
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(uri, flags).map_err(|source| Error::Sqlite {
        action: "open the database read-only",
        path: path.to_owned(),
        source,
    })?;
    let version = user_version(&conn).map_err(|source| Error::Sqlite {
        action: "read the schema version",
        path: path.to_owned(),
        source,
    })?;
    check_version(path, version)?;
    if version < SCHEMA_VERSION {
        return Err(Error::OlderSchemaReadOnly {
            path: path.to_owned(),
            found: version,
            supported: SCHEMA_VERSION,
        });
    }
    Ok(())
}

fn user_version(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row("PRAGMA user_version", [], |row| row.get(0))
}

fn check_version(path: &Path, found: i64) -> Result<(), Error> {
    if found > SCHEMA_VERSION {
        return Err(Error::NewerSchema {
            path: path.to_owned(),
            found,
            supported: SCHEMA_VERSION,
        });
    }
    if found < 0 {
        return Err(Error::UnknownSchema {
            path: path.to_owned(),
            found,
        });
    }
    Ok(())
}

/// Applies each missing migration in its own `IMMEDIATE` transaction. The version is read
/// again inside the transaction, so that of several processes opening a fresh file at once
/// exactly one applies each migration.
fn migrate(path: &Path, mut conn: Connection) -> Result<(), Error> {
    for (migration_idx, migration) in MIGRATIONS.iter().enumerate() {
        let target = i64::try_from(migration_idx + 1).expect("a handful of migrations fit in i64");
        let applied = retry_busy(
            || -> Result<bool, Error> {
                let sql = |source| Error::Sqlite {
                    action: "apply a migration",
                    path: path.to_owned(),
                    source,
                };
                let tx = conn
                    .transaction_with_behavior(TransactionBehavior::Immediate)
                    .map_err(sql)?;
                let current = user_version(&tx).map_err(sql)?;
                check_version(path, current)?;
                if current >= target {
                    return Ok(false);
                }
                tx.execute_batch(migration).map_err(sql)?;
                tx.pragma_update(None, "user_version", target)
                    .map_err(sql)?;
                tx.commit().map_err(sql)?;
                Ok(true)
            },
            |error| matches!(error, Error::Sqlite { source, .. } if is_busy(source)),
        )?;
        if applied {
            tracing::info!(path = %path.display(), version = target, "migrated the run database");
        }
    }
    Ok(())
}

/// Refuses a non-empty file that does not start like an SQLite database. SQLite itself would
/// take a very short file for an empty database and write over it.
fn check_header(path: &Path) -> Result<(), Error> {
    const MAGIC: &[u8; 16] = b"SQLite format 3\0";
    const HEADER_LEN: usize = 100;
    let mut header = Vec::with_capacity(HEADER_LEN);
    let read =
        fs::File::open(path).and_then(|file| file.take(HEADER_LEN as u64).read_to_end(&mut header));
    if let Err(source) = read {
        return Err(Error::ReadDatabase {
            path: path.to_owned(),
            source,
        });
    }
    if header.is_empty() || (header.len() == HEADER_LEN && header.starts_with(MAGIC)) {
        Ok(())
    } else {
        Err(Error::NotADatabase {
            path: path.to_owned(),
            source: None,
        })
    }
}

fn check_state_dir(path: &Path) -> Result<(), Error> {
    let dir = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_owned(),
        _ => PathBuf::from("."),
    };
    match fs::metadata(&dir) {
        Ok(meta) if meta.is_dir() => Ok(()),
        Ok(_) => Err(Error::StateDirNotADirectory { dir }),
        Err(source) if source.kind() == io::ErrorKind::NotFound => {
            Err(Error::StateDirMissing { dir })
        }
        Err(source) => Err(Error::StateDirUnusable { dir, source }),
    }
}

/// Creates an empty file (an empty file is a database of schema version 0), so that a
/// directory we cannot write to is reported with the operating system's reason.
fn create_if_missing(path: &Path) -> Result<(), Error> {
    match fs::metadata(path) {
        Ok(meta) if meta.is_dir() => {
            return Err(Error::DatabaseIsADirectory {
                path: path.to_owned(),
            });
        }
        Ok(_) => return Ok(()),
        Err(source) if source.kind() != io::ErrorKind::NotFound => {
            return Err(Error::CreateDatabase {
                path: path.to_owned(),
                source,
            });
        }
        Err(_) => {}
    }
    match fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
    {
        Ok(_) => Ok(()),
        // Another process created it first.
        Err(source) if source.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(source) => Err(Error::CreateDatabase {
            path: path.to_owned(),
            source,
        }),
    }
}
