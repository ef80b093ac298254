//! How a run and its events map to rows, and back.
//!
//! Unsigned 64-bit fields are stored as the `i64` with the same bits, so every value round-trips
//! exactly; paths are stored as the raw bytes of the OS path.

use std::path::{Path, PathBuf};

use rusqlite::types::Type;
use rusqlite::{Row, Transaction, params};
use testfleet_core::run::{
    ArtifactSummary, Invocation, RemoteCleanup, Run, RunEventRecord, RunPaths, RunStatus,
    SkippedArtifact, UploadSummary,
};
use testfleet_core::{
    ControllerId, ErrorCode, MachineName, RunError, RunId, TargetOs, TestDirHash, TestSummary,
    Timestamp,
};

use crate::error::Error;

/// The columns of `runs`, in the order [`run_from_row`] reads them. New columns go at the end,
/// each migration's after the previous one's.
pub(crate) const RUN_COLUMNS: &str = "id, machine, os, test_dir, test_dir_hash, entrypoint, \
     status, error_code, error_message, exit_code, signal, created_at, started_at, finished_at, \
     duration_ms, timeout_ms, remote_dir, owner_pid, owner_start_time, keep_remote, local_dir, \
     artifact_files, artifact_bytes, remote_cleanup, artifacts_skipped, owner_host, \
     lease_expires_at, controller, cancel_requested_at, tests, waiting_for, queue_seq, invocation, \
     upload";

/// The columns of `run_events`, in the order [`event_from_row`] reads them.
pub(crate) const EVENT_COLUMNS: &str = "at, from_status, to_status, code, detail";

pub(crate) fn u64_to_sql(value: u64) -> i64 {
    i64::from_ne_bytes(value.to_ne_bytes())
}

pub(crate) fn u64_from_sql(value: i64) -> u64 {
    u64::from_ne_bytes(value.to_ne_bytes())
}

#[cfg(unix)]
pub(crate) fn path_to_sql(path: &Path) -> Vec<u8> {
    use std::os::unix::ffi::OsStrExt;
    path.as_os_str().as_bytes().to_vec()
}

#[cfg(unix)]
pub(crate) fn path_from_sql(bytes: Vec<u8>) -> PathBuf {
    use std::os::unix::ffi::OsStringExt;
    PathBuf::from(std::ffi::OsString::from_vec(bytes))
}

// Elsewhere paths are Unicode in practice; an unpaired surrogate would be replaced.
#[cfg(not(unix))]
pub(crate) fn path_to_sql(path: &Path) -> Vec<u8> {
    path.to_string_lossy().into_owned().into_bytes()
}

#[cfg(not(unix))]
pub(crate) fn path_from_sql(bytes: Vec<u8>) -> PathBuf {
    PathBuf::from(String::from_utf8_lossy(&bytes).into_owned())
}

fn bad_value(
    column_idx: usize,
    column: &'static str,
    value: &str,
    what: &'static str,
) -> rusqlite::Error {
    let error = Error::BadValue {
        column,
        value: value.to_owned(),
        what,
    };
    rusqlite::Error::FromSqlConversionFailure(column_idx, Type::Text, Box::new(error))
}

fn status_at(
    row: &Row<'_>,
    column_idx: usize,
    column: &'static str,
) -> rusqlite::Result<RunStatus> {
    let text: String = row.get(column_idx)?;
    RunStatus::parse(&text).ok_or_else(|| bad_value(column_idx, column, &text, "run status"))
}

fn code_at(
    row: &Row<'_>,
    column_idx: usize,
    column: &'static str,
) -> rusqlite::Result<Option<ErrorCode>> {
    let text: Option<String> = row.get(column_idx)?;
    text.map(|text| {
        ErrorCode::parse(&text).ok_or_else(|| bad_value(column_idx, column, &text, "error code"))
    })
    .transpose()
}

fn parsed<T, E>(
    row: &Row<'_>,
    column_idx: usize,
    column: &'static str,
    what: &'static str,
    parse: impl Fn(&str) -> Result<T, E>,
) -> rusqlite::Result<T> {
    let text: String = row.get(column_idx)?;
    parse(&text).map_err(|_| bad_value(column_idx, column, &text, what))
}

fn controller_at(
    row: &Row<'_>,
    column_idx: usize,
    column: &'static str,
) -> rusqlite::Result<Option<ControllerId>> {
    let text: Option<String> = row.get(column_idx)?;
    text.map(|text| {
        ControllerId::parse(&text)
            .map_err(|_| bad_value(column_idx, column, &text, "controller id"))
    })
    .transpose()
}

fn timestamp_at(row: &Row<'_>, column_idx: usize) -> rusqlite::Result<Option<Timestamp>> {
    Ok(row
        .get::<_, Option<i64>>(column_idx)?
        .map(Timestamp::from_unix_ms))
}

fn u64_at(row: &Row<'_>, column_idx: usize) -> rusqlite::Result<Option<u64>> {
    Ok(row.get::<_, Option<i64>>(column_idx)?.map(u64_from_sql))
}

/// The `tests` column: the run record's `tests` object as JSON text, or NULL.
fn tests_at(row: &Row<'_>, column_idx: usize) -> rusqlite::Result<Option<TestSummary>> {
    let text: Option<String> = row.get(column_idx)?;
    text.map(|text| {
        serde_json::from_str(&text)
            .map_err(|_| bad_value(column_idx, "tests", &text, "test summary"))
    })
    .transpose()
}

/// The `upload` column: the run record's `upload` object as JSON text, or NULL.
fn upload_at(row: &Row<'_>, column_idx: usize) -> rusqlite::Result<Option<UploadSummary>> {
    let text: Option<String> = row.get(column_idx)?;
    text.map(|text| {
        serde_json::from_str(&text)
            .map_err(|_| bad_value(column_idx, "upload", &text, "upload summary"))
    })
    .transpose()
}

fn upload_to_sql(upload: Option<&UploadSummary>) -> Option<String> {
    // Serializing integers cannot fail.
    upload.and_then(|upload| serde_json::to_string(upload).ok())
}

fn tests_to_sql(tests: Option<&TestSummary>) -> Option<String> {
    // Serializing plain strings and integers cannot fail.
    tests.and_then(|tests| serde_json::to_string(tests).ok())
}

/// The `waiting_for` column: a JSON array of machine names, or NULL for none.
fn machines_at(row: &Row<'_>, column_idx: usize) -> rusqlite::Result<Vec<MachineName>> {
    let Some(text) = row.get::<_, Option<String>>(column_idx)? else {
        return Ok(Vec::new());
    };
    let names: Vec<String> = serde_json::from_str(&text)
        .map_err(|_| bad_value(column_idx, "waiting_for", &text, "list of machine names"))?;
    names
        .iter()
        .map(|name| {
            MachineName::parse(name)
                .map_err(|_| bad_value(column_idx, "waiting_for", name, "machine name"))
        })
        .collect()
}

/// `waiting_for` as stored: NULL when the run waits for nothing.
pub(crate) fn machines_to_sql(machines: &[MachineName]) -> Option<String> {
    (!machines.is_empty()).then(|| {
        let names: Vec<&str> = machines.iter().map(MachineName::as_str).collect();
        serde_json::to_string(&names).expect("a list of strings always serializes")
    })
}

/// The `invocation` column: arguments, variables (a secret by name only) and excludes as JSON
/// text; NULL (none of them) for runs recorded before schema version 6.
fn invocation_at(row: &Row<'_>, column_idx: usize) -> rusqlite::Result<Invocation> {
    let text: Option<String> = row.get(column_idx)?;
    text.map_or_else(
        || Ok(Invocation::default()),
        |text| {
            serde_json::from_str(&text)
                .map_err(|_| bad_value(column_idx, "invocation", &text, "invocation"))
        },
    )
}

fn invocation_to_sql(invocation: &Invocation) -> Option<String> {
    // Serializing plain strings cannot fail; an empty invocation is stored as NULL.
    (*invocation != Invocation::default())
        .then(|| serde_json::to_string(invocation).ok())
        .flatten()
}

/// Reads a row selected with [`RUN_COLUMNS`].
pub(crate) fn run_from_row(row: &Row<'_>) -> rusqlite::Result<Run> {
    let error_code = code_at(row, 7, "error_code")?;
    let error_message: Option<String> = row.get(8)?;
    let owner_pid: Option<i64> = row.get(17)?;
    let worker_pid = owner_pid
        .map(|pid| {
            u32::try_from(pid).map_err(|_| bad_value(17, "owner_pid", &pid.to_string(), "pid"))
        })
        .transpose()?;
    let artifact_files = u64_at(row, 21)?;
    let artifact_bytes = u64_at(row, 22)?;
    Ok(Run {
        id: parsed(row, 0, "id", "run id", RunId::parse)?,
        machine: parsed(row, 1, "machine", "machine name", MachineName::parse)?,
        os: TargetOs::new(&row.get::<_, String>(2)?),
        test_dir: path_from_sql(row.get(3)?),
        test_dir_hash: parsed(
            row,
            4,
            "test_dir_hash",
            "test directory hash",
            TestDirHash::parse,
        )?,
        entrypoint: row.get(5)?,
        invocation: invocation_at(row, 32)?,
        upload: upload_at(row, 33)?,
        status: status_at(row, 6, "status")?,
        error: match (error_code, error_message) {
            (Some(code), Some(message)) => Some(RunError::new(code, message)),
            _ => None,
        },
        exit_code: row.get(9)?,
        signal: row.get(10)?,
        created_at: Timestamp::from_unix_ms(row.get(11)?),
        started_at: timestamp_at(row, 12)?,
        finished_at: timestamp_at(row, 13)?,
        duration_ms: u64_at(row, 14)?,
        timeout_ms: u64_at(row, 15)?,
        remote_dir: row.get(16)?,
        worker_pid,
        worker_start_time: u64_at(row, 18)?,
        worker_host: controller_at(row, 25, "owner_host")?,
        keep_remote: row.get(19)?,
        paths: RunPaths::new(path_from_sql(row.get(20)?)),
        artifacts: match (artifact_files, artifact_bytes) {
            (Some(files), Some(bytes)) => Some(ArtifactSummary {
                files,
                bytes,
                skipped: skipped_at(row, 24)?,
            }),
            _ => None,
        },
        remote_cleanup: row
            .get::<_, Option<String>>(23)?
            .map(|text| {
                RemoteCleanup::parse(&text)
                    .ok_or_else(|| bad_value(23, "remote_cleanup", &text, "remote cleanup"))
            })
            .transpose()?,
        lease_expires_at: timestamp_at(row, 26)?,
        controller: controller_at(row, 27, "controller")?,
        cancel_requested_at: timestamp_at(row, 28)?,
        tests: tests_at(row, 29)?,
        waiting_for: machines_at(row, 30)?,
        queue_seq: u64_at(row, 31)?,
    })
}

/// The skipped artifacts stored as a JSON array; none when the column is NULL.
fn skipped_at(row: &Row<'_>, column_idx: usize) -> rusqlite::Result<Vec<SkippedArtifact>> {
    let Some(text) = row.get::<_, Option<String>>(column_idx)? else {
        return Ok(Vec::new());
    };
    serde_json::from_str(&text).map_err(|_| {
        bad_value(
            column_idx,
            "artifacts_skipped",
            &text,
            "list of skipped artifacts",
        )
    })
}

fn skipped_to_sql(run: &Run) -> Option<String> {
    run.artifacts.as_ref().map(|summary| {
        serde_json::to_string(&summary.skipped).expect("a list of strings always serializes")
    })
}

/// Reads a row selected with [`EVENT_COLUMNS`].
pub(crate) fn event_from_row(row: &Row<'_>) -> rusqlite::Result<RunEventRecord> {
    let from = match row.get::<_, Option<String>>(1)? {
        Some(text) => Some(
            RunStatus::parse(&text)
                .ok_or_else(|| bad_value(1, "from_status", &text, "run status"))?,
        ),
        None => None,
    };
    Ok(RunEventRecord {
        at: Timestamp::from_unix_ms(row.get(0)?),
        from,
        to: status_at(row, 2, "to_status")?,
        code: code_at(row, 3, "code")?,
        detail: row.get(4)?,
    })
}

/// Inserts a new run. Fails with a constraint violation when its machine is already held.
pub(crate) fn insert_run(tx: &Transaction<'_>, run: &Run) -> rusqlite::Result<()> {
    let sql = format!(
        "INSERT INTO runs ({RUN_COLUMNS}) VALUES \
         (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, \
          ?20, ?21, ?22, ?23, ?24, ?25, ?26, ?27, ?28, ?29, ?30, ?31, ?32, ?33, ?34)"
    );
    tx.prepare_cached(&sql)?.execute(params![
        run.id.as_str(),
        run.machine.as_str(),
        run.os.as_str(),
        path_to_sql(&run.test_dir),
        run.test_dir_hash.as_str(),
        run.entrypoint,
        run.status.as_str(),
        run.error.as_ref().map(|error| error.code.as_str()),
        run.error.as_ref().map(|error| error.message.as_str()),
        run.exit_code,
        run.signal,
        run.created_at.unix_ms(),
        run.started_at.map(Timestamp::unix_ms),
        run.finished_at.map(Timestamp::unix_ms),
        run.duration_ms.map(u64_to_sql),
        run.timeout_ms.map(u64_to_sql),
        run.remote_dir,
        run.worker_pid.map(i64::from),
        run.worker_start_time.map(u64_to_sql),
        run.keep_remote,
        path_to_sql(&run.paths.dir),
        run.artifacts
            .as_ref()
            .map(|summary| u64_to_sql(summary.files)),
        run.artifacts
            .as_ref()
            .map(|summary| u64_to_sql(summary.bytes)),
        run.remote_cleanup.map(RemoteCleanup::as_str),
        skipped_to_sql(run),
        run.worker_host.as_ref().map(ControllerId::as_str),
        run.lease_expires_at.map(Timestamp::unix_ms),
        run.controller.as_ref().map(ControllerId::as_str),
        run.cancel_requested_at.map(Timestamp::unix_ms),
        tests_to_sql(run.tests.as_ref()),
        machines_to_sql(&run.waiting_for),
        run.queue_seq.map(u64_to_sql),
        invocation_to_sql(&run.invocation),
        upload_to_sql(run.upload.as_ref()),
    ])?;
    Ok(())
}

/// Writes every mutable field of `run` if the stored status is still `expected`; returns
/// whether the row was updated (the compare-and-set won).
pub(crate) fn update_run(
    tx: &Transaction<'_>,
    run: &Run,
    expected: RunStatus,
) -> rusqlite::Result<bool> {
    let updated = tx
        .prepare_cached(
            "UPDATE runs SET status = ?1, error_code = ?2, error_message = ?3, exit_code = ?4, \
             signal = ?5, started_at = ?6, finished_at = ?7, duration_ms = ?8, remote_dir = ?9, \
             owner_pid = ?10, owner_start_time = ?11, artifact_files = ?12, artifact_bytes = ?13, \
             remote_cleanup = ?14, artifacts_skipped = ?15, owner_host = ?18, \
             lease_expires_at = ?19, cancel_requested_at = ?20, tests = ?21, machine = ?22, \
             waiting_for = ?23, upload = ?24 \
             WHERE id = ?16 AND status = ?17",
        )?
        .execute(params![
            run.status.as_str(),
            run.error.as_ref().map(|error| error.code.as_str()),
            run.error.as_ref().map(|error| error.message.as_str()),
            run.exit_code,
            run.signal,
            run.started_at.map(Timestamp::unix_ms),
            run.finished_at.map(Timestamp::unix_ms),
            run.duration_ms.map(u64_to_sql),
            run.remote_dir,
            run.worker_pid.map(i64::from),
            run.worker_start_time.map(u64_to_sql),
            run.artifacts
                .as_ref()
                .map(|summary| u64_to_sql(summary.files)),
            run.artifacts
                .as_ref()
                .map(|summary| u64_to_sql(summary.bytes)),
            run.remote_cleanup.map(RemoteCleanup::as_str),
            skipped_to_sql(run),
            run.id.as_str(),
            expected.as_str(),
            run.worker_host.as_ref().map(ControllerId::as_str),
            run.lease_expires_at.map(Timestamp::unix_ms),
            run.cancel_requested_at.map(Timestamp::unix_ms),
            tests_to_sql(run.tests.as_ref()),
            run.machine.as_str(),
            machines_to_sql(&run.waiting_for),
            upload_to_sql(run.upload.as_ref()),
        ])?;
    Ok(updated == 1)
}

/// Appends an event to a run's history.
pub(crate) fn insert_event(
    tx: &Transaction<'_>,
    id: &RunId,
    event: &RunEventRecord,
) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO run_events (run_id, seq, at, from_status, to_status, code, detail) \
         VALUES (?1, (SELECT COALESCE(MAX(seq) + 1, 0) FROM run_events WHERE run_id = ?1), \
                 ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![
        id.as_str(),
        event.at.unix_ms(),
        event.from.map(RunStatus::as_str),
        event.to.as_str(),
        event.code.map(ErrorCode::as_str),
        event.detail,
    ])?;
    Ok(())
}
