//! Migrations: an empty file (version 0) is brought up to date, reopening keeps every row, and
//! a file from a newer testfleet is refused without being touched.

use std::fs;
use std::path::Path;

use rusqlite::Connection;
use testfleet_core::ports::{Claim, RunFilter, RunStore, StoreError};
use testfleet_core::run::{RunStatus, Transition};
use testfleet_core::{ErrorCode, Timestamp};
use testfleet_store_sqlite::{DATABASE_FILE, SCHEMA_VERSION, SqliteStore};

use crate::support::{chain, new_run};

fn user_version(path: &Path) -> i64 {
    let conn = Connection::open(path).expect("the test database opens");
    conn.query_row("PRAGMA user_version", [], |row| row.get(0))
        .expect("user_version is readable")
}

#[tokio::test]
async fn an_empty_file_is_migrated_to_the_current_version() {
    let dir = tempfile::tempdir().expect("the temp dir is writable");
    let db = dir.path().join(DATABASE_FILE);
    fs::write(&db, b"").expect("an empty file can be created");
    assert_eq!(user_version(&db), 0);

    let store = SqliteStore::open(&db).expect("an empty file opens as version 0");
    assert_eq!(user_version(&db), SCHEMA_VERSION);
    let claim = store.claim(new_run("linux-1", 1, 1_000, 1)).await;
    assert!(matches!(claim, Ok(Claim::Created(_))), "{claim:?}");
}

#[tokio::test]
async fn a_missing_file_is_created_at_the_current_version() {
    let dir = tempfile::tempdir().expect("the temp dir is writable");
    let db = dir.path().join(DATABASE_FILE);
    SqliteStore::open(&db).expect("a missing file is created");
    assert_eq!(user_version(&db), SCHEMA_VERSION);
    let conn = Connection::open(&db).expect("the database opens");
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |row| row.get(0))
        .expect("journal_mode is readable");
    assert_eq!(mode, "wal");
}

#[tokio::test]
async fn reopening_keeps_every_row() {
    let dir = tempfile::tempdir().expect("the temp dir is writable");
    let db = dir.path().join(DATABASE_FILE);
    let (runs, events) = {
        let store = SqliteStore::open(&db).expect("a fresh database opens");
        let Ok(Claim::Created(first)) = store.claim(new_run("linux-1", 1, 1_000, 1)).await else {
            panic!("the first claim creates a run");
        };
        let change = Transition::new(
            RunStatus::Pending,
            RunStatus::Failed,
            Timestamp::from_unix_ms(2_000),
        )
        .with_error(ErrorCode::DialFailed, "connection refused");
        store
            .transition(&first.id, change)
            .await
            .expect("the run can fail");
        store
            .claim(new_run("linux-1", 2, 3_000, 2))
            .await
            .expect("a second claim works");
        let runs = store
            .list(&RunFilter::default())
            .await
            .expect("runs can be listed");
        let events = store.events(&first.id).await.expect("events can be read");
        (runs, events)
    };
    let store = SqliteStore::open(&db).expect("the database reopens");
    assert_eq!(
        store.list(&RunFilter::default()).await.ok(),
        Some(runs.clone())
    );
    assert_eq!(store.events(&runs[1].id).await.ok(), Some(events));
    assert_eq!(user_version(&db), SCHEMA_VERSION);
}

#[tokio::test]
async fn a_newer_schema_is_refused_untouched() {
    let dir = tempfile::tempdir().expect("the temp dir is writable");
    let db = dir.path().join(DATABASE_FILE);
    let newer = SCHEMA_VERSION + 1;
    {
        let conn = Connection::open(&db).expect("the fixture database opens");
        conn.execute_batch(&format!(
            "CREATE TABLE runs (id TEXT PRIMARY KEY, future_column BLOB);
             INSERT INTO runs VALUES ('x', x'00');
             PRAGMA user_version = {newer};"
        ))
        .expect("the fixture is written");
    }
    let before = fs::read(&db).expect("the fixture is readable");

    let error = SqliteStore::open(&db).expect_err("a newer schema is refused");
    let message = chain(&error);
    assert!(matches!(error, StoreError::Backend { .. }), "{error:?}");
    assert_eq!(error.code(), ErrorCode::StoreError);
    assert!(
        message.contains(&db.display().to_string()),
        "names the file: {message}"
    );
    assert!(
        message.contains(&format!("schema version {newer}")),
        "names the file's version: {message}"
    );
    assert!(
        message.contains(&format!("version {SCHEMA_VERSION} ")),
        "names the known version: {message}"
    );

    assert_eq!(
        fs::read(&db).expect("the fixture is still readable"),
        before,
        "the file is untouched"
    );
    let siblings: Vec<_> = fs::read_dir(dir.path())
        .expect("the dir is readable")
        .map(|entry| entry.expect("an entry").file_name())
        .collect();
    assert_eq!(
        siblings,
        vec![DATABASE_FILE],
        "no journal or WAL file was created"
    );
}

/// A database written by a build of schema version 1 (before `tests`) is migrated in place:
/// its runs keep every field and read back with no tests, and new runs record them.
#[tokio::test]
async fn a_version_1_file_gains_the_tests_column() {
    let dir = tempfile::tempdir().expect("the temp dir is writable");
    let db = dir.path().join(DATABASE_FILE);
    {
        let conn = Connection::open(&db).expect("the fixture database opens");
        conn.execute_batch(include_str!("../../migrations/0001_runs.sql"))
            .expect("version 1 applies");
        conn.execute_batch(
            "PRAGMA user_version = 1;
             INSERT INTO runs (id, machine, os, test_dir, test_dir_hash, entrypoint, status,
                 exit_code, created_at, started_at, finished_at, duration_ms, keep_remote,
                 local_dir, artifact_files, artifact_bytes)
             VALUES ('01JD0000000000000000000000', 'linux-1', 'linux', x'2f74',
                 '0101010101010101010101010101010101010101010101010101010101010101', 'run.sh',
                 'completed', 0, 1000, 1001, 1002, 1, 0, x'2f73', 2, 20);
             INSERT INTO run_events (run_id, seq, at, from_status, to_status, code, detail)
             VALUES ('01JD0000000000000000000000', 0, 1000, NULL, 'pending', NULL, NULL),
                    ('01JD0000000000000000000000', 1, 1002, 'pending', 'completed', NULL, NULL);",
        )
        .expect("a version-1 run is written");
    }
    let store = SqliteStore::open(&db).expect("a version-1 file is migrated");
    assert_eq!(user_version(&db), SCHEMA_VERSION);
    let old = store
        .list(&RunFilter::default())
        .await
        .expect("the old run reads");
    assert_eq!(old.len(), 1);
    assert_eq!(old[0].status, RunStatus::Completed);
    assert_eq!(
        old[0].artifacts.as_ref().map(|a| (a.files, a.bytes)),
        Some((2, 20))
    );
    assert_eq!(old[0].tests, None);
    // The rebuild of the tables for the queue (version 5) keeps every event.
    let events = store.events(&old[0].id).await.expect("the old events read");
    assert_eq!(
        events.iter().map(|event| event.to).collect::<Vec<_>>(),
        vec![RunStatus::Pending, RunStatus::Completed]
    );

    let Ok(Claim::Created(run)) = store.claim(new_run("linux-1", 2, 5_000, 1)).await else {
        panic!("the machine is free");
    };
    let start = Transition::new(
        RunStatus::Pending,
        RunStatus::Running,
        Timestamp::from_unix_ms(5_001),
    );
    store.transition(&run.id, start).await.expect("starts");
    let mut done = Transition::new(
        RunStatus::Running,
        RunStatus::Completed,
        Timestamp::from_unix_ms(5_002),
    );
    done.tests = Some(testfleet_core::TestSummary {
        total: 1,
        passed: 1,
        ..testfleet_core::TestSummary::default()
    });
    let done = store.transition(&run.id, done).await.expect("completes");
    assert_eq!(done.tests.as_ref().map(|t| t.passed), Some(1));

    // The column holds the record's JSON, which SQLite itself can read.
    let conn = Connection::open(&db).expect("the database opens");
    let passed: i64 = conn
        .query_row(
            "SELECT json_extract(tests, '$.passed') FROM runs WHERE id = ?1",
            [run.id.as_str()],
            |row| row.get(0),
        )
        .expect("the tests column is JSON");
    assert_eq!(passed, 1);
}
