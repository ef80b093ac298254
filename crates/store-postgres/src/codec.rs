//! How a run and its events map to rows, and back; the same columns as the SQLite store, plus
//! each row's `version`.
//!
//! Unsigned 64-bit fields are stored as the `bigint` with the same bits, times as `timestamptz`
//! holding milliseconds, paths as the raw bytes of the OS path.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use postgres::Row;
use postgres::types::ToSql;
use testfleet_core::run::{
    ArtifactSummary, Invocation, RemoteCleanup, Run, RunEventRecord, RunPaths, RunStatus,
    SkippedArtifact,
};
use testfleet_core::{
    ControllerId, ErrorCode, MachineName, RunError, RunId, TargetOs, TestDirHash, Timestamp,
};

use crate::error::Error;

/// The columns of `runs` a run is written to and read from, in this order. New columns go at
/// the end.
pub(crate) const RUN_COLUMNS: &str = "id, machine, os, test_dir, test_dir_hash, entrypoint, \
     status, error_code, error_message, exit_code, signal, created_at, started_at, finished_at, \
     duration_ms, timeout_ms, remote_dir, owner_pid, owner_start_time, keep_remote, local_dir, \
     artifact_files, artifact_bytes, owner_host, lease_expires_at, controller, cancel_requested_at, \
     remote_cleanup, artifacts_skipped, tests, waiting_for, queue_seq, invocation, upload";

/// How many columns [`RUN_COLUMNS`] names.
pub(crate) const RUN_COLUMN_COUNT: usize = 34;

/// The columns of `run_events`, in the order [`event_from_row`] reads them.
pub(crate) const EVENT_COLUMNS: &str = "at, from_status, to_status, code, detail";

pub(crate) fn u64_to_sql(value: u64) -> i64 {
    i64::from_ne_bytes(value.to_ne_bytes())
}

pub(crate) fn u64_from_sql(value: i64) -> u64 {
    u64::from_ne_bytes(value.to_ne_bytes())
}

pub(crate) fn time_to_sql(at: Timestamp) -> SystemTime {
    let ms = at.unix_ms();
    match u64::try_from(ms) {
        Ok(ms) => UNIX_EPOCH + Duration::from_millis(ms),
        Err(_) => UNIX_EPOCH - Duration::from_millis(ms.unsigned_abs()),
    }
}

pub(crate) fn time_from_sql(at: SystemTime) -> Timestamp {
    let ms = match at.duration_since(UNIX_EPOCH) {
        Ok(since) => i64::try_from(since.as_millis()).unwrap_or(i64::MAX),
        Err(before) => -i64::try_from(before.duration().as_millis()).unwrap_or(i64::MAX),
    };
    Timestamp::from_unix_ms(ms)
}

#[cfg(unix)]
fn path_to_sql(path: &Path) -> Vec<u8> {
    use std::os::unix::ffi::OsStrExt;
    path.as_os_str().as_bytes().to_vec()
}

#[cfg(unix)]
fn path_from_sql(bytes: Vec<u8>) -> PathBuf {
    use std::os::unix::ffi::OsStringExt;
    PathBuf::from(std::ffi::OsString::from_vec(bytes))
}

#[cfg(not(unix))]
fn path_to_sql(path: &Path) -> Vec<u8> {
    path.to_string_lossy().into_owned().into_bytes()
}

#[cfg(not(unix))]
fn path_from_sql(bytes: Vec<u8>) -> PathBuf {
    PathBuf::from(String::from_utf8_lossy(&bytes).into_owned())
}

fn bad(column: &'static str, value: impl ToString, what: &'static str) -> Error {
    Error::BadValue {
        column,
        value: value.to_string(),
        what,
    }
}

/// Reads one column; a type mismatch is an SQL error of that column.
fn get<'a, T: postgres::types::FromSql<'a>>(
    row: &'a Row,
    column_idx: usize,
) -> Result<T, postgres::Error> {
    row.try_get(column_idx)
}

fn status(text: &str, column: &'static str) -> Result<RunStatus, Error> {
    RunStatus::parse(text).ok_or_else(|| bad(column, text, "run status"))
}

fn code(text: Option<String>, column: &'static str) -> Result<Option<ErrorCode>, Error> {
    text.map(|text| ErrorCode::parse(&text).ok_or_else(|| bad(column, &text, "error code")))
        .transpose()
}

fn controller(text: Option<String>, column: &'static str) -> Result<Option<ControllerId>, Error> {
    text.map(|text| ControllerId::parse(&text).map_err(|_| bad(column, &text, "controller id")))
        .transpose()
}

/// What reading a row can fail with.
pub(crate) enum RowError {
    Sql(postgres::Error),
    Value(Error),
}

impl From<postgres::Error> for RowError {
    fn from(error: postgres::Error) -> Self {
        Self::Sql(error)
    }
}

impl From<Error> for RowError {
    fn from(error: Error) -> Self {
        Self::Value(error)
    }
}

/// Reads a run from [`RUN_COLUMNS`] starting at column `first`, then its `version`.
pub(crate) fn run_from_row(row: &Row, first: usize) -> Result<(Run, i64), RowError> {
    let col = |idx: usize| first + idx;
    let text = |idx: usize| -> Result<String, postgres::Error> { get(row, col(idx)) };
    let opt_text = |idx: usize| -> Result<Option<String>, postgres::Error> { get(row, col(idx)) };
    let opt_time = |idx: usize| -> Result<Option<Timestamp>, postgres::Error> {
        Ok(get::<Option<SystemTime>>(row, col(idx))?.map(time_from_sql))
    };
    let opt_u64 = |idx: usize| -> Result<Option<u64>, postgres::Error> {
        Ok(get::<Option<i64>>(row, col(idx))?.map(u64_from_sql))
    };
    let id_text = text(0)?;
    let machine_text = text(1)?;
    let hash_text = text(4)?;
    let error_code = code(opt_text(7)?, "error_code")?;
    let error_message = opt_text(8)?;
    let worker_pid = get::<Option<i64>>(row, col(17))?
        .map(|pid| u32::try_from(pid).map_err(|_| bad("owner_pid", pid, "pid")))
        .transpose()?;
    let artifact_files = opt_u64(21)?;
    let artifact_bytes = opt_u64(22)?;
    let run = Run {
        id: RunId::parse(&id_text).map_err(|_| bad("id", &id_text, "run id"))?,
        machine: MachineName::parse(&machine_text)
            .map_err(|_| bad("machine", &machine_text, "machine name"))?,
        os: TargetOs::new(&text(2)?),
        test_dir: path_from_sql(get(row, col(3))?),
        test_dir_hash: TestDirHash::parse(&hash_text)
            .map_err(|_| bad("test_dir_hash", &hash_text, "test directory hash"))?,
        entrypoint: text(5)?,
        invocation: opt_text(32)?
            .map(|text| {
                serde_json::from_str(&text).map_err(|_| bad("invocation", &text, "invocation"))
            })
            .transpose()?
            .unwrap_or_default(),
        status: status(&text(6)?, "status")?,
        error: match (error_code, error_message) {
            (Some(code), Some(message)) => Some(RunError::new(code, message)),
            _ => None,
        },
        exit_code: get(row, col(9))?,
        signal: opt_text(10)?,
        created_at: time_from_sql(get(row, col(11))?),
        started_at: opt_time(12)?,
        finished_at: opt_time(13)?,
        duration_ms: opt_u64(14)?,
        timeout_ms: opt_u64(15)?,
        remote_dir: opt_text(16)?,
        worker_pid,
        worker_start_time: opt_u64(18)?,
        keep_remote: get(row, col(19))?,
        paths: RunPaths::new(path_from_sql(get(row, col(20))?)),
        artifacts: match (artifact_files, artifact_bytes) {
            (Some(files), Some(bytes)) => Some(ArtifactSummary {
                files,
                bytes,
                skipped: skipped(opt_text(28)?)?,
            }),
            _ => None,
        },
        remote_cleanup: opt_text(27)?
            .map(|text| {
                RemoteCleanup::parse(&text)
                    .ok_or_else(|| bad("remote_cleanup", &text, "remote cleanup"))
            })
            .transpose()?,
        worker_host: controller(opt_text(23)?, "owner_host")?,
        lease_expires_at: opt_time(24)?,
        controller: controller(opt_text(25)?, "controller")?,
        cancel_requested_at: opt_time(26)?,
        tests: opt_text(29)?
            .map(|text| {
                serde_json::from_str(&text).map_err(|_| bad("tests", &text, "test summary"))
            })
            .transpose()?,
        waiting_for: machines(opt_text(30)?)?,
        queue_seq: opt_u64(31)?,
        upload: opt_text(33)?
            .map(|text| {
                serde_json::from_str(&text).map_err(|_| bad("upload", &text, "upload summary"))
            })
            .transpose()?,
    };
    let version = get(row, col(RUN_COLUMN_COUNT))?;
    Ok((run, version))
}

/// `waiting_for`: a JSON array of machine names; none when the column is NULL.
fn machines(text: Option<String>) -> Result<Vec<MachineName>, Error> {
    let Some(text) = text else {
        return Ok(Vec::new());
    };
    let names: Vec<String> = serde_json::from_str(&text)
        .map_err(|_| bad("waiting_for", &text, "list of machine names"))?;
    names
        .iter()
        .map(|name| MachineName::parse(name).map_err(|_| bad("waiting_for", name, "machine name")))
        .collect()
}

/// `waiting_for` as stored: NULL when the run waits for nothing.
fn machines_to_sql(machines: &[MachineName]) -> Option<String> {
    (!machines.is_empty()).then(|| {
        let names: Vec<&str> = machines.iter().map(MachineName::as_str).collect();
        serde_json::to_string(&names).expect("a list of strings always serializes")
    })
}

/// The skipped artifacts stored as a JSON array; none when the column is NULL.
fn skipped(text: Option<String>) -> Result<Vec<SkippedArtifact>, Error> {
    let Some(text) = text else {
        return Ok(Vec::new());
    };
    serde_json::from_str(&text)
        .map_err(|_| bad("artifacts_skipped", &text, "list of skipped artifacts"))
}

/// Reads an event from [`EVENT_COLUMNS`].
pub(crate) fn event_from_row(row: &Row) -> Result<RunEventRecord, RowError> {
    let from: Option<String> = get(row, 1)?;
    Ok(RunEventRecord {
        at: time_from_sql(get(row, 0)?),
        from: from.map(|text| status(&text, "from_status")).transpose()?,
        to: status(&get::<String>(row, 2)?, "to_status")?,
        code: code(get(row, 3)?, "code")?,
        detail: get(row, 4)?,
    })
}

/// The values of every column of [`RUN_COLUMNS`], in order, ready to be bound.
pub(crate) struct RunValues {
    id: String,
    machine: String,
    os: String,
    test_dir: Vec<u8>,
    test_dir_hash: String,
    entrypoint: String,
    status: &'static str,
    error_code: Option<&'static str>,
    error_message: Option<String>,
    exit_code: Option<i32>,
    signal: Option<String>,
    created_at: SystemTime,
    started_at: Option<SystemTime>,
    finished_at: Option<SystemTime>,
    duration_ms: Option<i64>,
    timeout_ms: Option<i64>,
    remote_dir: Option<String>,
    owner_pid: Option<i64>,
    owner_start_time: Option<i64>,
    keep_remote: bool,
    local_dir: Vec<u8>,
    artifact_files: Option<i64>,
    artifact_bytes: Option<i64>,
    owner_host: Option<String>,
    lease_expires_at: Option<SystemTime>,
    controller: Option<String>,
    cancel_requested_at: Option<SystemTime>,
    remote_cleanup: Option<&'static str>,
    artifacts_skipped: Option<String>,
    tests: Option<String>,
    waiting_for: Option<String>,
    queue_seq: Option<i64>,
    invocation: Option<String>,
    upload: Option<String>,
}

impl RunValues {
    pub(crate) fn of(run: &Run) -> Self {
        Self {
            id: run.id.as_str().to_owned(),
            machine: run.machine.as_str().to_owned(),
            os: run.os.as_str().to_owned(),
            test_dir: path_to_sql(&run.test_dir),
            test_dir_hash: run.test_dir_hash.as_str().to_owned(),
            entrypoint: run.entrypoint.clone(),
            status: run.status.as_str(),
            error_code: run.error.as_ref().map(|error| error.code.as_str()),
            error_message: run.error.as_ref().map(|error| error.message.clone()),
            exit_code: run.exit_code,
            signal: run.signal.clone(),
            created_at: time_to_sql(run.created_at),
            started_at: run.started_at.map(time_to_sql),
            finished_at: run.finished_at.map(time_to_sql),
            duration_ms: run.duration_ms.map(u64_to_sql),
            timeout_ms: run.timeout_ms.map(u64_to_sql),
            remote_dir: run.remote_dir.clone(),
            owner_pid: run.worker_pid.map(i64::from),
            owner_start_time: run.worker_start_time.map(u64_to_sql),
            keep_remote: run.keep_remote,
            local_dir: path_to_sql(&run.paths.dir),
            artifact_files: run
                .artifacts
                .as_ref()
                .map(|summary| u64_to_sql(summary.files)),
            artifact_bytes: run
                .artifacts
                .as_ref()
                .map(|summary| u64_to_sql(summary.bytes)),
            owner_host: run
                .worker_host
                .as_ref()
                .map(|host| host.as_str().to_owned()),
            lease_expires_at: run.lease_expires_at.map(time_to_sql),
            controller: run.controller.as_ref().map(|host| host.as_str().to_owned()),
            cancel_requested_at: run.cancel_requested_at.map(time_to_sql),
            remote_cleanup: run.remote_cleanup.map(RemoteCleanup::as_str),
            artifacts_skipped: run.artifacts.as_ref().map(|summary| {
                serde_json::to_string(&summary.skipped)
                    .expect("a list of strings always serializes")
            }),
            tests: run
                .tests
                .as_ref()
                .and_then(|tests| serde_json::to_string(tests).ok()),
            waiting_for: machines_to_sql(&run.waiting_for),
            queue_seq: run.queue_seq.map(u64_to_sql),
            // A secret variable serializes as its name only; an empty invocation is NULL.
            invocation: (run.invocation != Invocation::default())
                .then(|| serde_json::to_string(&run.invocation).ok())
                .flatten(),
            upload: run
                .upload
                .as_ref()
                .and_then(|upload| serde_json::to_string(upload).ok()),
        }
    }

    /// The values in [`RUN_COLUMNS`] order.
    pub(crate) fn params(&self) -> [&(dyn ToSql + Sync); RUN_COLUMN_COUNT] {
        [
            &self.id,
            &self.machine,
            &self.os,
            &self.test_dir,
            &self.test_dir_hash,
            &self.entrypoint,
            &self.status,
            &self.error_code,
            &self.error_message,
            &self.exit_code,
            &self.signal,
            &self.created_at,
            &self.started_at,
            &self.finished_at,
            &self.duration_ms,
            &self.timeout_ms,
            &self.remote_dir,
            &self.owner_pid,
            &self.owner_start_time,
            &self.keep_remote,
            &self.local_dir,
            &self.artifact_files,
            &self.artifact_bytes,
            &self.owner_host,
            &self.lease_expires_at,
            &self.controller,
            &self.cancel_requested_at,
            &self.remote_cleanup,
            &self.artifacts_skipped,
            &self.tests,
            &self.waiting_for,
            &self.queue_seq,
            &self.invocation,
            &self.upload,
        ]
    }
}

/// The values of an event, for the columns after `run_id` and `seq`.
pub(crate) struct EventValues {
    at: SystemTime,
    from: Option<&'static str>,
    to: &'static str,
    code: Option<&'static str>,
    detail: Option<String>,
}

impl EventValues {
    pub(crate) fn of(event: &RunEventRecord) -> Self {
        Self {
            at: time_to_sql(event.at),
            from: event.from.map(RunStatus::as_str),
            to: event.to.as_str(),
            code: event.code.map(ErrorCode::as_str),
            detail: event.detail.clone(),
        }
    }

    pub(crate) fn params(&self) -> [&(dyn ToSql + Sync); 5] {
        [&self.at, &self.from, &self.to, &self.code, &self.detail]
    }
}
