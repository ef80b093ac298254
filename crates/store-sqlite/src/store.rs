//! [`SqliteStore`]: the [`RunStore`] port on one SQLite file.
//!
//! Every operation runs on tokio's blocking pool with a pooled connection. Writes are one
//! `IMMEDIATE` transaction each, so a claim or a compare-and-set reads and writes under the
//! database's write lock; the partial unique index on active runs backs the machine lock.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use r2d2::Pool;
use r2d2_sqlite::SqliteConnectionManager;
use rusqlite::types::Value;
use rusqlite::{
    Connection, OptionalExtension, Transaction, TransactionBehavior, params, params_from_iter,
};
use testfleet_core::ports::{Claimed, RunFilter, RunStore, StoreError};
use testfleet_core::queue::{
    ClaimDecision, ClaimOn, MachineState, claim_choice, grant_choice, is_same_live_run,
};
use testfleet_core::run::{
    Amendment, ApplyError, NewRun, Run, RunEventRecord, RunOwner, RunStatus, Transition,
};
use testfleet_core::{MachineName, RunId, RunIdPrefix, TestDirHash, Timestamp};

use crate::codec::{
    EVENT_COLUMNS, RUN_COLUMNS, event_from_row, insert_event, insert_run, run_from_row,
    u64_from_sql, update_run,
};
use crate::error::Error;
use crate::retry::{is_busy, retry_busy};
use crate::schema::{configure, open_and_migrate, open_flags};

/// Connections kept by the pool: enough for concurrent readers beside the one writer.
const POOL_SIZE: u32 = 8;
/// How long an operation waits for a free pooled connection.
const POOL_TIMEOUT: Duration = Duration::from_secs(30);

/// A [`RunStore`] on one SQLite database file; cheap to clone.
#[derive(Clone)]
pub struct SqliteStore {
    shared: Arc<Shared>,
}

struct Shared {
    path: PathBuf,
    /// Opened with [`SqliteStore::open_read_only`]: every write is refused.
    read_only: bool,
    pool: Pool<SqliteConnectionManager>,
    /// Serialises this process's write transactions. SQLite admits one writer at a time
    /// anyway; queueing here means concurrent writers of one process (a fan-out of 32 runs)
    /// wait their turn instead of colliding on `BEGIN IMMEDIATE` and sleeping in the busy
    /// handler. Other processes are still kept out by SQLite's own lock.
    write_turn: std::sync::Mutex<()>,
}

/// Whether an operation writes (and so waits for this process's write turn).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    Read,
    Write,
}

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.shared.path)
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens the run database at `path` (usually `<state dir>/testfleet.db`), creating the
    /// file when it is missing (but not its directory) and bringing its schema up to date.
    ///
    /// This blocks on file I/O; call it before entering async code or on a blocking thread.
    ///
    /// # Errors
    /// [`StoreError::Backend`], its message naming the path and why, when the directory is
    /// missing or not writable, the file is not an SQLite database or holds a newer schema (the
    /// file is then left untouched), or SQLite fails.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        open_and_migrate(path)?;
        let manager = SqliteConnectionManager::file(path)
            .with_flags(open_flags())
            .with_init(|conn| configure(conn));
        // No connection is opened here: the file was just checked, and r2d2 would hide a
        // failure behind its connection timeout.
        Self::pooled(path, manager, false)
    }

    /// Opens an existing run database for reading only, where nothing can be written (a
    /// read-only state directory): `list`, `status` and `logs` still work. The file is opened
    /// `immutable`, so SQLite creates no `-wal` or `-shm` file beside it; every write is refused
    /// with a message that says the state directory is read-only.
    ///
    /// # Errors
    /// [`StoreError::Backend`] when the file is missing, not a database, or of a newer schema.
    pub fn open_read_only(path: &Path) -> Result<Self, StoreError> {
        let manager = SqliteConnectionManager::file(read_only_uri(path))
            .with_flags(read_only_flags())
            .with_init(|conn| conn.busy_timeout(crate::schema::BUSY_TIMEOUT));
        crate::schema::check_read_only(path, &read_only_uri(path))?;
        Self::pooled(path, manager, true)
    }

    /// The store over a pool of `manager`'s connections to `path`; no connection is opened yet.
    fn pooled(
        path: &Path,
        manager: SqliteConnectionManager,
        read_only: bool,
    ) -> Result<Self, StoreError> {
        let pool = Pool::builder()
            .max_size(POOL_SIZE)
            .min_idle(Some(0))
            .connection_timeout(POOL_TIMEOUT)
            .build(manager)
            .map_err(|source| Error::Pool {
                path: path.to_owned(),
                source,
            })?;
        Ok(Self {
            shared: Arc::new(Shared {
                path: path.to_owned(),
                read_only,
                pool,
                write_turn: std::sync::Mutex::new(()),
            }),
        })
    }

    /// Whether the store was opened with [`SqliteStore::open_read_only`].
    pub fn is_read_only(&self) -> bool {
        self.shared.read_only
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// Runs `work` with a pooled connection on the blocking pool, retrying it as a whole
    /// while SQLite reports a lock.
    async fn blocking<T, F>(
        &self,
        action: &'static str,
        access: Access,
        mut work: F,
    ) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnMut(&mut Connection) -> Result<T, OpError> + Send + 'static,
    {
        if access == Access::Write && self.shared.read_only {
            let dir = self
                .shared
                .path
                .parent()
                .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
            return Err(Error::StateDirReadOnly { dir }.into());
        }
        let shared = Arc::clone(&self.shared);
        let task = tokio::task::spawn_blocking(move || {
            // The turn comes before the connection, so waiting writers hold no pooled
            // connection that a reader could use. A poisoned turn only means another writer
            // panicked; the database is still sound.
            let _turn = (access == Access::Write).then(|| {
                shared
                    .write_turn
                    .lock()
                    .unwrap_or_else(|poison| poison.into_inner())
            });
            let mut conn = shared.pool.get().map_err(|source| Error::Pool {
                path: shared.path.clone(),
                source,
            })?;
            retry_busy(
                || work(&mut conn),
                |error| matches!(error, OpError::Sql(source) if is_busy(source)),
            )
            .map_err(|error| match error {
                OpError::Sql(source) => Error::Sqlite {
                    action,
                    path: shared.path.clone(),
                    source,
                }
                .into(),
                OpError::Store(error) => error,
            })
        });
        match task.await {
            Ok(outcome) => outcome,
            Err(source) => Err(Error::Task { action, source }.into()),
        }
    }
}

/// The flags of a read-only connection: no writes, the path read as a URI.
fn read_only_flags() -> rusqlite::OpenFlags {
    rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY
        | rusqlite::OpenFlags::SQLITE_OPEN_URI
        | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX
}

/// `file:<path, percent-encoded>?immutable=1`.
fn read_only_uri(path: &Path) -> String {
    let mut uri = String::from("file:");
    for byte in crate::codec::path_to_sql(path) {
        if byte.is_ascii_alphanumeric() || b"/-._~".contains(&byte) {
            uri.push(char::from(byte));
        } else {
            uri.push_str(&format!("%{byte:02X}"));
        }
    }
    uri.push_str("?immutable=1");
    uri
}

impl SqliteStore {
    /// Applies `change` (owner, lease or cancel request; no event) at SQLite's now to the run
    /// `id` in one write transaction; `change` says whether there is anything to write.
    async fn change<F>(
        &self,
        action: &'static str,
        id: &RunId,
        change: F,
    ) -> Result<Run, StoreError>
    where
        F: Fn(&mut Run, Timestamp) -> Result<bool, ApplyError> + Send + 'static,
    {
        let id = id.clone();
        self.blocking(action, Access::Write, move |conn| {
            let tx = begin(conn)?;
            let mut run = load_run(&tx, &id)?;
            let changed = change(&mut run, store_now(&tx)?)
                .map_err(|error| StoreError::refused(&id, error))?;
            if changed {
                update_run(&tx, &run, run.status)?;
                tx.commit()?;
            }
            Ok(run)
        })
        .await
    }
}

/// Why one attempt of an operation failed: SQLite (perhaps busy, then retried), or a verdict
/// of the store itself.
enum OpError {
    Sql(rusqlite::Error),
    Store(StoreError),
}

impl From<rusqlite::Error> for OpError {
    fn from(error: rusqlite::Error) -> Self {
        Self::Sql(error)
    }
}

impl From<StoreError> for OpError {
    fn from(error: StoreError) -> Self {
        Self::Store(error)
    }
}

fn begin(conn: &mut Connection) -> rusqlite::Result<Transaction<'_>> {
    conn.transaction_with_behavior(TransactionBehavior::Immediate)
}

fn load_run(conn: &Connection, id: &RunId) -> Result<Run, OpError> {
    conn.prepare_cached(&format!("SELECT {RUN_COLUMNS} FROM runs WHERE id = ?1"))?
        .query_row(params![id.as_str()], run_from_row)
        .optional()?
        .ok_or_else(|| OpError::Store(StoreError::NotFound(id.clone())))
}

/// SQLite's own clock, in milliseconds since the Unix epoch: the clock of leases.
fn store_now(conn: &Connection) -> rusqlite::Result<Timestamp> {
    conn.prepare_cached("SELECT CAST(unixepoch('subsec') * 1000 AS INTEGER)")?
        .query_row([], |row| row.get(0))
        .map(Timestamp::from_unix_ms)
}

/// The run `id`, and the machine due to it now by [`grant_choice`] (`None` when it is not
/// queued, or must wait).
fn grant_due(conn: &Connection, id: &RunId) -> Result<(Run, Option<MachineName>), OpError> {
    let now = store_now(conn)?;
    let run = load_run(conn, id)?;
    if run.status != RunStatus::Queued {
        return Ok((run, None));
    }
    let states = run
        .waiting_for
        .iter()
        .map(|machine| machine_state(conn, machine))
        .collect::<Result<Vec<_>, _>>()?;
    let machine = grant_choice(&run, &states, now);
    Ok((run, machine))
}

/// What a claim or a grant needs to know of `machine`: its holder, its waiters in arrival
/// order, its newest run that started (for least-recently-used order).
fn machine_state(conn: &Connection, machine: &MachineName) -> rusqlite::Result<MachineState> {
    let holder = load_active_run(conn, machine.as_str())?;
    let mut waiting = conn.prepare_cached(&format!(
        "SELECT {RUN_COLUMNS} FROM runs WHERE status = 'queued' \
         AND EXISTS (SELECT 1 FROM json_each(runs.waiting_for) WHERE value = ?1) \
         ORDER BY queue_seq"
    ))?;
    let waiting = waiting
        .query_map(params![machine.as_str()], run_from_row)?
        .collect::<Result<Vec<_>, _>>()?;
    let newest: Option<String> = conn
        .prepare_cached("SELECT max(id) FROM runs WHERE machine = ?1 AND started_at IS NOT NULL")?
        .query_row(params![machine.as_str()], |row| row.get(0))?;
    Ok(MachineState {
        machine: machine.clone(),
        holder,
        waiting,
        newest: newest.and_then(|id| RunId::parse(&id).ok()),
    })
}

/// The active runs (queued, pending, running) of one test directory hash.
fn live_runs_with_hash(conn: &Connection, hash: &TestDirHash) -> rusqlite::Result<Vec<Run>> {
    let mut statement = conn.prepare_cached(&format!(
        "SELECT {RUN_COLUMNS} FROM runs WHERE test_dir_hash = ?1 \
         AND status IN ('queued', 'pending', 'running') ORDER BY id"
    ))?;
    let runs = statement.query_map(params![hash.as_str()], run_from_row)?;
    runs.collect()
}

fn load_active_run(conn: &Connection, machine: &str) -> rusqlite::Result<Option<Run>> {
    conn.prepare_cached(&format!(
        "SELECT {RUN_COLUMNS} FROM runs WHERE machine = ?1 AND status IN ('pending', 'running')"
    ))?
    .query_row(params![machine], run_from_row)
    .optional()
}

#[async_trait]
impl RunStore for SqliteStore {
    async fn now(&self) -> Result<Timestamp, StoreError> {
        self.blocking("read the store's clock", Access::Read, move |conn| {
            Ok(store_now(conn)?)
        })
        .await
    }

    async fn claim_in(&self, new: NewRun, on: &ClaimOn) -> Result<Claimed, StoreError> {
        let on = on.clone();
        self.blocking("claim a machine", Access::Write, move |conn| {
            let tx = begin(conn)?;
            let now = store_now(&tx)?;
            let same = live_runs_with_hash(&tx, &new.test_dir_hash)?
                .into_iter()
                .find(|run| is_same_live_run(run, &new, &on.machines, now));
            let states = on
                .machines
                .iter()
                .map(|machine| machine_state(&tx, machine))
                .collect::<Result<Vec<_>, _>>()?;
            let run = match claim_choice(&on, &states, same, now) {
                ClaimDecision::Existing(run) => return Ok(Claimed::Existing(*run)),
                ClaimDecision::Busy(runs) => return Ok(Claimed::Busy(runs)),
                ClaimDecision::Create(machine) => {
                    let mut new = new.clone();
                    new.machine = machine;
                    Run::pending(new, now)
                }
                ClaimDecision::Queue => {
                    let seq: i64 = tx
                        .prepare_cached("SELECT COALESCE(MAX(queue_seq), 0) + 1 FROM runs")?
                        .query_row([], |row| row.get(0))?;
                    Run::queued(new.clone(), on.machines.clone(), u64_from_sql(seq), now)
                }
            };
            insert_run(&tx, &run)?;
            insert_event(&tx, &run.id, &RunEventRecord::created(&run))?;
            tx.commit()?;
            Ok(if run.status == RunStatus::Queued {
                Claimed::Queued(run)
            } else {
                Claimed::Created(run)
            })
        })
        .await
    }

    async fn try_grant(&self, id: &RunId) -> Result<Run, StoreError> {
        // A waiter asks often: first look without the write lock (WAL readers never block nor
        // are blocked), and take it only when a grant looks due, deciding again under it.
        let read_id = id.clone();
        let looked = self
            .blocking(
                "look at a queued run's machines",
                Access::Read,
                move |conn| {
                    let tx = conn.transaction()?;
                    let (run, machine) = grant_due(&tx, &read_id)?;
                    Ok(if machine.is_some() { None } else { Some(run) })
                },
            )
            .await?;
        if let Some(run) = looked {
            return Ok(run);
        }
        let id = id.clone();
        self.blocking(
            "grant a queued run its machine",
            Access::Write,
            move |conn| {
                let tx = begin(conn)?;
                let (mut run, machine) = grant_due(&tx, &id)?;
                let Some(machine) = machine else {
                    return Ok(run);
                };
                let event = run
                    .grant(&machine, store_now(&tx)?)
                    .map_err(|error| StoreError::refused(&id, error))?;
                if !update_run(&tx, &run, RunStatus::Queued)? {
                    return load_run(&tx, &id);
                }
                insert_event(&tx, &id, &event)?;
                tx.commit()?;
                Ok(run)
            },
        )
        .await
    }

    async fn machine_states(
        &self,
        machines: &[MachineName],
    ) -> Result<Vec<MachineState>, StoreError> {
        let machines = machines.to_vec();
        self.blocking("read the machines' queues", Access::Read, move |conn| {
            Ok(machines
                .iter()
                .map(|machine| machine_state(conn, machine))
                .collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    async fn get(&self, id: &RunId) -> Result<Run, StoreError> {
        let id = id.clone();
        self.blocking("read a run", Access::Read, move |conn| load_run(conn, &id))
            .await
    }

    async fn find_by_id_prefix(
        &self,
        prefix: &RunIdPrefix,
        limit: usize,
    ) -> Result<Vec<Run>, StoreError> {
        // Ids and prefixes are upper-case Crockford base32, so GLOB needs no escaping; it is
        // case-sensitive and can use the primary key's index.
        let pattern = format!("{prefix}*");
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.blocking("find runs by id prefix", Access::Read, move |conn| {
            let mut statement = conn.prepare_cached(&format!(
                "SELECT {RUN_COLUMNS} FROM runs WHERE id GLOB ?1 ORDER BY id DESC LIMIT ?2"
            ))?;
            let runs = statement.query_map(params![pattern, limit], run_from_row)?;
            Ok(runs.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    async fn transition(&self, id: &RunId, change: Transition) -> Result<Run, StoreError> {
        let id = id.clone();
        self.blocking("record a run's transition", Access::Write, move |conn| {
            let tx = begin(conn)?;
            let now = store_now(&tx)?;
            let mut run = load_run(&tx, &id)?;
            let event = run
                .apply(&change, now)
                .map_err(|error| StoreError::refused(&id, error))?;
            if !update_run(&tx, &run, change.from)? {
                // Unreachable under the write lock, but never write the event of a lost race.
                let actual = load_run(&tx, &id)?.status;
                return Err(StoreError::Conflict {
                    id: id.clone(),
                    expected: change.from,
                    actual,
                }
                .into());
            }
            insert_event(&tx, &id, &event)?;
            tx.commit()?;
            Ok(run)
        })
        .await
    }

    async fn amend(&self, id: &RunId, amendment: Amendment) -> Result<Run, StoreError> {
        let id = id.clone();
        self.blocking("amend a run", Access::Write, move |conn| {
            let tx = begin(conn)?;
            let mut run = load_run(&tx, &id)?;
            let event = run
                .amend(&amendment)
                .map_err(|error| StoreError::refused(&id, error))?;
            update_run(&tx, &run, run.status)?;
            insert_event(&tx, &id, &event)?;
            tx.commit()?;
            Ok(run)
        })
        .await
    }

    async fn set_remote_dir(&self, id: &RunId, remote_dir: &str) -> Result<(), StoreError> {
        let id = id.clone();
        let remote_dir = remote_dir.to_owned();
        self.blocking("record a run's remote folder", Access::Write, move |conn| {
            let updated = conn
                .prepare_cached("UPDATE runs SET remote_dir = ?1 WHERE id = ?2")?
                .execute(params![remote_dir, id.as_str()])?;
            if updated == 0 {
                return Err(StoreError::NotFound(id.clone()).into());
            }
            Ok(())
        })
        .await
    }

    async fn set_owner(
        &self,
        id: &RunId,
        owner: &RunOwner,
        lease: Duration,
    ) -> Result<Run, StoreError> {
        let owner = owner.clone();
        self.change("record a run's owner", id, move |run, now| {
            run.hand_over(&owner, lease, now).map(|()| true)
        })
        .await
    }

    async fn renew_lease(
        &self,
        id: &RunId,
        owner: &RunOwner,
        lease: Duration,
    ) -> Result<Run, StoreError> {
        let owner = owner.clone();
        self.change("renew a run's lease", id, move |run, now| {
            run.renew_lease(&owner, lease, now).map(|()| true)
        })
        .await
    }

    async fn request_cancel(&self, id: &RunId) -> Result<Run, StoreError> {
        self.change("record a cancel request", id, |run, now| {
            Ok(run.request_cancel(now))
        })
        .await
    }

    async fn list(&self, filter: &RunFilter) -> Result<Vec<Run>, StoreError> {
        let mut conditions = Vec::new();
        let mut values = Vec::new();
        if let Some(machine) = &filter.machine {
            values.push(Value::Text(machine.as_str().to_owned()));
            conditions.push(format!("machine = ?{}", values.len()));
        }
        if let Some(status) = filter.status {
            values.push(Value::Text(status.as_str().to_owned()));
            conditions.push(format!("status = ?{}", values.len()));
        }
        let where_clause = if conditions.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", conditions.join(" AND "))
        };
        // A negative limit is no limit in SQLite.
        let limit = filter
            .limit
            .map_or(-1, |limit| i64::try_from(limit).unwrap_or(i64::MAX));
        values.push(Value::Integer(limit));
        let sql = format!(
            "SELECT {RUN_COLUMNS} FROM runs{where_clause} ORDER BY id DESC LIMIT ?{}",
            values.len()
        );
        self.blocking("list runs", Access::Read, move |conn| {
            let mut statement = conn.prepare_cached(&sql)?;
            let runs = statement.query_map(params_from_iter(values.iter()), run_from_row)?;
            Ok(runs.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }

    async fn events(&self, id: &RunId) -> Result<Vec<RunEventRecord>, StoreError> {
        let id = id.clone();
        self.blocking("read a run's events", Access::Read, move |conn| {
            // One read transaction, so that the run and its events are seen at one instant.
            let tx = conn.transaction()?;
            let events = tx
                .prepare_cached(&format!(
                    "SELECT {EVENT_COLUMNS} FROM run_events WHERE run_id = ?1 ORDER BY seq"
                ))?
                .query_map(params![id.as_str()], event_from_row)?
                .collect::<Result<Vec<_>, _>>()?;
            if events.is_empty() {
                // Every run has its creation event; no events means no such run.
                load_run(&tx, &id)?;
            }
            Ok(events)
        })
        .await
    }

    async fn active_runs(&self) -> Result<Vec<Run>, StoreError> {
        self.blocking("list active runs", Access::Read, move |conn| {
            let mut statement = conn.prepare_cached(&format!(
                "SELECT {RUN_COLUMNS} FROM runs WHERE status IN ('queued', 'pending', 'running') \
                 ORDER BY id"
            ))?;
            let runs = statement.query_map([], run_from_row)?;
            Ok(runs.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }
}
