//! [`PostgresStore`]: the [`RunStore`] port on PostgreSQL, shared by every controller that
//! points at the same database and schema.
//!
//! Every operation runs on tokio's blocking pool with a pooled connection whose statements
//! are prepared once. Writes are compare-and-sets on the row's status and version: a claim is
//! one `INSERT … ON CONFLICT DO NOTHING` against the partial unique index (the machine lock)
//! with its creation event in the same statement; a transition reads the run, applies it with
//! [`Run::apply`] at the database's `now()`, and writes it with `UPDATE … WHERE status = $from
//! AND version = $read` and the event in one statement, so a lost race writes nothing.

use std::fmt;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use postgres::types::ToSql;
use postgres::{Client, Row, Statement};
use r2d2::{ManageConnection, Pool};
use r2d2_postgres::PostgresConnectionManager;
use testfleet_core::ports::{Claimed, RunFilter, RunStore, StoreError};
use testfleet_core::queue::{
    ClaimDecision, ClaimOn, MachineState, claim_choice, grant_choice, is_same_live_run,
};
use testfleet_core::run::{
    Amendment, ApplyError, NewRun, Run, RunEventRecord, RunOwner, RunStatus, Transition,
};
use testfleet_core::{MachineName, RunId, RunIdPrefix, Timestamp};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::changes::Changes;
use crate::codec::{
    EVENT_COLUMNS, EventValues, RUN_COLUMN_COUNT, RUN_COLUMNS, RowError, RunValues, event_from_row,
    run_from_row, time_from_sql, time_to_sql, u64_from_sql,
};
use crate::config::PgConfig;
use crate::error::Error;
use crate::retry::{RETRY_DEADLINE, first_pause, is_transient, jittered, next_pause};
use crate::schema::migrate;
use crate::tls::connector;

/// Connections kept by the pool.
const POOL_SIZE: u32 = 8;
/// How long an operation waits for a pooled connection (a new one included).
const POOL_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a compare-and-set that lost to a change of another field is tried again.
const CAS_ATTEMPTS: usize = 1_000;

/// The statements, each prepared once per connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Query {
    Now,
    Load,
    Claim,
    Transition,
    Amend,
    UpdateOwnership,
    SetRemoteDir,
    Events,
    Exists,
    Active,
    List,
    ListByMachine,
    ListByStatus,
    ListByBoth,
    ByIdPrefix,
}

const QUERY_COUNT: usize = 15;

/// The SQL of every [`Query`], with the schema written in, and the statements of the queue
/// (run inside a transaction that holds the machines' locks, so not prepared).
struct Queries {
    prepared: [String; QUERY_COUNT],
    queue: QueueSql,
    schema: String,
}

/// The queue's statements ([`PostgresStore::claim_in`] and [`PostgresStore::try_grant`]).
struct QueueSql {
    /// `now()`, then a run selected by `WHERE …`.
    select: String,
    holder: String,
    waiting: String,
    newest: String,
    same_hash: String,
    next_seq: String,
    grant: String,
}

impl Queries {
    fn new(schema: &str) -> Self {
        let runs = format!("\"{schema}\".runs");
        let events = format!("\"{schema}\".run_events");
        let values = (1..=RUN_COLUMN_COUNT)
            .map(|idx| format!("${idx}"))
            .collect::<Vec<_>>()
            .join(", ");
        let select = format!("SELECT now(), {RUN_COLUMNS}, version FROM {runs}");
        let (event_to, event_detail) = (RUN_COLUMN_COUNT + 1, RUN_COLUMN_COUNT + 2);
        let active = "status IN ('pending', 'running')";
        let list = |condition: &str, limit: usize| {
            format!("{select}{condition} ORDER BY id DESC LIMIT ${limit}")
        };
        let queue = QueueSql {
            holder: format!("{select} WHERE machine = $1 AND status IN ('pending', 'running')"),
            waiting: format!(
                "{select} WHERE status = 'queued' AND waiting_for::jsonb ? $1 ORDER BY queue_seq"
            ),
            newest: format!(
                "SELECT max(id) FROM {runs} WHERE machine = $1 AND started_at IS NOT NULL"
            ),
            same_hash: format!(
                "{select} WHERE test_dir_hash = $1 AND status IN ('queued', 'pending', 'running') \
                 ORDER BY id"
            ),
            next_seq: format!("SELECT nextval('\"{schema}\".runs_queue_seq')"),
            grant: format!(
                // Guarded on the status only: the owner's heartbeat (or a cancel request) may
                // change the row meanwhile without touching what the grant writes; a cancel or a
                // reap that ended the run makes it match nothing.
                "WITH changed AS (UPDATE {runs} SET status = 'pending', machine = $2, \
                 waiting_for = NULL, version = version + 1 \
                 WHERE id = $1 AND status = 'queued' RETURNING id) \
                 INSERT INTO {events} (run_id, seq, at, from_status, to_status, code, detail) \
                 SELECT id, (SELECT COALESCE(max(seq) + 1, 0) FROM {events} WHERE run_id = $1), \
                 $3, 'queued', 'pending', NULL, $4 FROM changed RETURNING run_id"
            ),
            select: select.clone(),
        };
        // The claim's event is at the run's created_at, its 12th column; its status and
        // detail follow the run's columns.
        let prepared = [
            "SELECT now()".to_owned(),
            format!("{select} WHERE id = $1"),
            format!(
                "WITH created AS (INSERT INTO {runs} ({RUN_COLUMNS}) VALUES ({values}) \
                 ON CONFLICT (machine) WHERE {active} DO NOTHING RETURNING id) \
                 INSERT INTO {events} (run_id, seq, at, from_status, to_status, code, detail) \
                 SELECT id, 0, $12, NULL, ${event_to}, NULL, ${event_detail} FROM created \
                 RETURNING run_id"
            ),
            format!(
                "WITH changed AS (UPDATE {runs} SET status = $3, error_code = $4, \
                 error_message = $5, exit_code = $6, signal = $7, started_at = $8, \
                 finished_at = $9, duration_ms = $10, artifact_files = $11, artifact_bytes = $12, \
                 owner_host = $13, owner_pid = $14, owner_start_time = $15, \
                 lease_expires_at = $16, remote_cleanup = $23, artifacts_skipped = $24, \
                 tests = $25, waiting_for = $26, upload = $27, version = version + 1 \
                 WHERE id = $1 AND status = $17 AND version = $2 RETURNING id) \
                 INSERT INTO {events} (run_id, seq, at, from_status, to_status, code, detail) \
                 SELECT id, (SELECT COALESCE(max(seq) + 1, 0) FROM {events} WHERE run_id = $1), \
                 $18, $19, $20, $21, $22 FROM changed RETURNING run_id"
            ),
            format!(
                "WITH changed AS (UPDATE {runs} SET remote_cleanup = $3, artifact_files = $4, \
                 artifact_bytes = $5, artifacts_skipped = $6, tests = $7, version = version + 1 \
                 WHERE id = $1 AND version = $2 RETURNING id) \
                 INSERT INTO {events} (run_id, seq, at, from_status, to_status, code, detail) \
                 SELECT id, (SELECT COALESCE(max(seq) + 1, 0) FROM {events} WHERE run_id = $1), \
                 $8, $9, $10, $11, $12 FROM changed RETURNING run_id"
            ),
            format!(
                "UPDATE {runs} SET owner_host = $3, owner_pid = $4, owner_start_time = $5, \
                 lease_expires_at = $6, cancel_requested_at = $7, version = version + 1 \
                 WHERE id = $1 AND version = $2"
            ),
            format!("UPDATE {runs} SET remote_dir = $2, version = version + 1 WHERE id = $1"),
            format!("SELECT {EVENT_COLUMNS} FROM {events} WHERE run_id = $1 ORDER BY seq"),
            format!("SELECT 1 FROM {runs} WHERE id = $1"),
            format!("{select} WHERE status IN ('queued', 'pending', 'running') ORDER BY id"),
            list("", 1),
            list(" WHERE machine = $1", 2),
            list(" WHERE status = $1", 2),
            list(" WHERE machine = $1 AND status = $2", 3),
            // Ids and prefixes are upper-case Crockford base32: no LIKE wildcard can occur.
            list(" WHERE id LIKE $1", 2),
        ];
        Self {
            prepared,
            queue,
            schema: schema.to_owned(),
        }
    }

    fn sql(&self, query: Query) -> &str {
        &self.prepared[query as usize]
    }
}

/// A pooled connection and its prepared statements.
struct Conn {
    client: Client,
    prepared: [Option<Statement>; QUERY_COUNT],
}

/// [`PostgresConnectionManager`], with a statement cache beside each client.
struct Manager(PostgresConnectionManager<MakeRustlsConnect>);

impl ManageConnection for Manager {
    type Connection = Conn;
    type Error = postgres::Error;

    fn connect(&self) -> Result<Conn, postgres::Error> {
        Ok(Conn {
            client: self.0.connect()?,
            prepared: Default::default(),
        })
    }

    fn is_valid(&self, conn: &mut Conn) -> Result<(), postgres::Error> {
        self.0.is_valid(&mut conn.client)
    }

    fn has_broken(&self, conn: &mut Conn) -> bool {
        self.0.has_broken(&mut conn.client)
    }
}

/// One operation's view of a connection: prepared statements by [`Query`].
struct Session<'a> {
    conn: &'a mut Conn,
    queries: &'a Queries,
}

type Params<'a> = [&'a (dyn ToSql + Sync)];

impl Session<'_> {
    fn statement(&mut self, query: Query) -> Result<Statement, postgres::Error> {
        if let Some(statement) = &self.conn.prepared[query as usize] {
            return Ok(statement.clone());
        }
        let statement = self.conn.client.prepare(self.queries.sql(query))?;
        self.conn.prepared[query as usize] = Some(statement.clone());
        Ok(statement)
    }

    fn query(&mut self, query: Query, params: &Params<'_>) -> Result<Vec<Row>, postgres::Error> {
        let statement = self.statement(query)?;
        self.conn.client.query(&statement, params)
    }

    fn execute(&mut self, query: Query, params: &Params<'_>) -> Result<u64, postgres::Error> {
        let statement = self.statement(query)?;
        self.conn.client.execute(&statement, params)
    }

    fn now(&mut self) -> Result<Timestamp, OpError> {
        let rows = self.query(Query::Now, &[])?;
        let row = rows
            .first()
            .ok_or_else(|| unexpected("now() returned no row"))?;
        Ok(time_from_sql(row.try_get::<_, SystemTime>(0)?))
    }

    /// The run, its version and the database's now, or `NotFound`.
    fn load(&mut self, id: &RunId) -> Result<(Run, i64, Timestamp), OpError> {
        let rows = self.query(Query::Load, &[&id.as_str()])?;
        let row = rows
            .first()
            .ok_or_else(|| OpError::Store(StoreError::NotFound(id.clone())))?;
        loaded(row)
    }

    fn runs(&mut self, query: Query, params: &Params<'_>) -> Result<Vec<Run>, OpError> {
        self.query(query, params)?
            .iter()
            .map(|row| loaded(row).map(|(run, _, _)| run))
            .collect()
    }

    /// Runs `work` in one transaction that first takes the queue lock of every machine of
    /// `machines` (advisory locks, per schema and machine, in sorted order so that two
    /// transactions never wait for each other crosswise): claims and grants of a machine happen
    /// one at a time, whichever controller makes them.
    fn with_machines_locked<T>(
        &mut self,
        machines: &[MachineName],
        work: impl FnOnce(&mut postgres::Transaction<'_>, &QueueSql) -> Result<T, OpError>,
    ) -> Result<T, OpError> {
        let queries = self.queries;
        let mut tx = read_committed(&mut self.conn.client, false)?;
        let keys: Vec<String> = machines
            .iter()
            .map(|machine| format!("testfleet queue {} {machine}", queries.schema))
            .collect();
        // One lock per machine, taken in the order of the lock keys themselves, so that two
        // transactions can never wait for each other (volatile functions run after ORDER BY).
        tx.execute(
            "SELECT pg_advisory_xact_lock(key) FROM \
             (SELECT DISTINCT hashtext(name) AS key FROM unnest($1::text[]) AS name) AS keys \
             ORDER BY key",
            &[&keys],
        )?;
        let out = work(&mut tx, &queries.queue)?;
        tx.commit()?;
        Ok(out)
    }

    /// Whether a grant looks due to queued `run` by a plain read (no lock): the caller decides
    /// again under the machines' locks.
    fn grant_looks_due(&mut self, run: &Run) -> Result<bool, OpError> {
        let queries = self.queries;
        let mut tx = read_committed(&mut self.conn.client, true)?;
        let now = time_from_sql(tx.query_one("SELECT now()", &[])?.try_get(0)?);
        let states = run
            .waiting_for
            .iter()
            .map(|machine| machine_state(&mut tx, &queries.queue, machine))
            .collect::<Result<Vec<_>, _>>()?;
        tx.commit()?;
        Ok(grant_choice(run, &states, now).is_some())
    }

    /// Writes the owner, lease and cancel request of `run` if its version is still `version`.
    fn update_ownership(&mut self, run: &Run, version: i64) -> Result<bool, OpError> {
        let values = RunValues::of(run);
        let v = values.params();
        let params: [&(dyn ToSql + Sync); 7] = [v[0], &version, v[23], v[17], v[18], v[24], v[26]];
        Ok(self.execute(Query::UpdateOwnership, &params)? == 1)
    }
}

/// A READ COMMITTED transaction whatever the database's default: every statement of a claim or
/// grant after its locks sees what the previous holder of a lock committed (a snapshot taken at
/// the first statement, as REPEATABLE READ and SERIALIZABLE take it, could miss it).
fn read_committed(
    client: &mut Client,
    read_only: bool,
) -> Result<postgres::Transaction<'_>, postgres::Error> {
    client
        .build_transaction()
        .isolation_level(postgres::IsolationLevel::ReadCommitted)
        .read_only(read_only)
        .start()
}

/// The runs a queue statement selects (`now()` first, then the run's columns).
fn runs_of(
    tx: &mut postgres::Transaction<'_>,
    sql: &str,
    params: &Params<'_>,
) -> Result<Vec<Run>, OpError> {
    tx.query(sql, params)?
        .iter()
        .map(|row| loaded(row).map(|(run, _, _)| run))
        .collect()
}

/// A machine's holder, waiters in arrival order and newest started run.
fn machine_state(
    tx: &mut postgres::Transaction<'_>,
    sql: &QueueSql,
    machine: &MachineName,
) -> Result<MachineState, OpError> {
    let name = machine.as_str();
    let holder = runs_of(tx, &sql.holder, &[&name])?.into_iter().next();
    let waiting = runs_of(tx, &sql.waiting, &[&name])?;
    let newest: Option<String> = tx.query_one(&sql.newest, &[&name])?.try_get(0)?;
    Ok(MachineState {
        machine: machine.clone(),
        holder,
        waiting,
        newest: newest.and_then(|id| RunId::parse(&id).ok()),
    })
}

fn loaded(row: &Row) -> Result<(Run, i64, Timestamp), OpError> {
    let now = time_from_sql(row.try_get::<_, SystemTime>(0)?);
    let (run, version) = run_from_row(row, 1)?;
    Ok((run, version, now))
}

fn unexpected(what: &'static str) -> OpError {
    OpError::Value(Error::BadValue {
        column: "(result)",
        value: String::new(),
        what,
    })
}

/// Why one attempt of an operation failed: PostgreSQL (perhaps transient, then retried), a
/// bad value in a row, or a verdict of the store itself.
enum OpError {
    Sql(postgres::Error),
    Value(Error),
    Store(StoreError),
}

impl From<postgres::Error> for OpError {
    fn from(error: postgres::Error) -> Self {
        Self::Sql(error)
    }
}

impl From<StoreError> for OpError {
    fn from(error: StoreError) -> Self {
        Self::Store(error)
    }
}

impl From<RowError> for OpError {
    fn from(error: RowError) -> Self {
        match error {
            RowError::Sql(error) => Self::Sql(error),
            RowError::Value(error) => Self::Value(error),
        }
    }
}

/// A [`RunStore`] on one PostgreSQL database and schema; cheap to clone.
#[derive(Clone)]
pub struct PostgresStore {
    shared: Arc<Shared>,
}

struct Shared {
    /// `user@host:port/db (schema S)`, for messages: never the password.
    target: String,
    /// Always `Some` until the store is dropped.
    pool: Option<Pool<Manager>>,
    queries: Queries,
    changes: Changes,
}

impl Shared {
    fn pool(&self) -> &Pool<Manager> {
        self.pool
            .as_ref()
            .expect("the pool lives as long as the store")
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        // Closing a synchronous client blocks on its own runtime, which must not happen on a
        // thread that drives async tasks: the last handle is often dropped in async code.
        if let Some(pool) = self.pool.take() {
            if tokio::runtime::Handle::try_current().is_ok() {
                let _ = thread::Builder::new()
                    .name("testfleet-pg-close".to_owned())
                    .spawn(move || drop(pool));
            } else {
                drop(pool);
            }
        }
    }
}

impl fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresStore")
            .field("target", &self.shared.target)
            .finish_non_exhaustive()
    }
}

impl PostgresStore {
    /// Connects to the database of `config`, brings its schema up to date (creating it), and
    /// keeps a pool of connections. Blocks: call it before entering async code or on a
    /// blocking thread.
    ///
    /// # Errors
    /// [`StoreError::Backend`], naming the server's host and port (never the password), when it
    /// cannot be reached or refuses the login (after [`CONNECT_TIMEOUT`](crate::CONNECT_TIMEOUT)
    /// at most), when TLS cannot be set up, or when the schema is newer than this build knows
    /// (then nothing is written).
    pub fn open(config: &PgConfig) -> Result<Self, StoreError> {
        let target = config.describe();
        let tls = connector(config)?;
        let mut first =
            config
                .client
                .connect(tls.clone())
                .map_err(|source| Error::Unreachable {
                    endpoints: config.endpoints().join(", "),
                    target: target.clone(),
                    source,
                })?;
        migrate(&mut first, config.schema(), &target)?;
        drop(first);
        let changes = Changes::new(config.client.clone(), tls.clone(), config.schema());
        let manager = Manager(PostgresConnectionManager::new(config.client.clone(), tls));
        // Connections open on demand; each is checked by its first statement, and the work of
        // a broken one is tried again on another.
        let pool = Pool::builder()
            .max_size(POOL_SIZE)
            .min_idle(Some(0))
            .test_on_check_out(false)
            .connection_timeout(POOL_TIMEOUT)
            .build_unchecked(manager);
        Ok(Self {
            shared: Arc::new(Shared {
                target,
                pool: Some(pool),
                queries: Queries::new(config.schema()),
                changes,
            }),
        })
    }

    /// `user@host:port/database (schema S)`.
    pub fn target(&self) -> &str {
        &self.shared.target
    }

    /// Runs `work` with a pooled connection on the blocking pool, trying it again on another
    /// connection while PostgreSQL reports a transient failure, for up to [`RETRY_DEADLINE`].
    async fn blocking<T, F>(&self, action: &'static str, mut work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnMut(&mut Session<'_>) -> Result<T, OpError> + Send + 'static,
    {
        let shared = Arc::clone(&self.shared);
        let task = tokio::task::spawn_blocking(move || {
            let started = Instant::now();
            let mut pause = first_pause();
            loop {
                let attempt = match shared.pool().get() {
                    Ok(mut conn) => {
                        let mut session = Session {
                            conn: &mut conn,
                            queries: &shared.queries,
                        };
                        work(&mut session).map_err(Attempt::Op)
                    }
                    Err(source) => Err(Attempt::Pool(source)),
                };
                let transient = match &attempt {
                    Err(Attempt::Op(OpError::Sql(error))) => is_transient(error),
                    Err(Attempt::Pool(_)) => true,
                    _ => false,
                };
                if transient && started.elapsed() < RETRY_DEADLINE {
                    tracing::debug!(action, "a transient store failure; trying again");
                    thread::sleep(jittered(pause));
                    pause = next_pause(pause);
                    continue;
                }
                return attempt.map_err(|error| match error {
                    Attempt::Pool(source) => Error::Pool {
                        target: shared.target.clone(),
                        source,
                    }
                    .into(),
                    Attempt::Op(OpError::Sql(source)) => Error::Sql {
                        action,
                        target: shared.target.clone(),
                        source,
                    }
                    .into(),
                    Attempt::Op(OpError::Value(error)) => error.into(),
                    Attempt::Op(OpError::Store(error)) => error,
                });
            }
        });
        match task.await {
            Ok(outcome) => outcome,
            Err(source) => Err(Error::Task { action, source }.into()),
        }
    }
}

enum Attempt {
    Pool(r2d2::Error),
    Op(OpError),
}

impl PostgresStore {
    /// Applies `change` (owner, lease or cancel request; no event) at the database's now to
    /// the run `id`; `change` says whether there is anything to write. The write is a
    /// compare-and-set on the row's version, tried again if another write came between.
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
        self.blocking(action, move |session| {
            for _ in 0..CAS_ATTEMPTS {
                let (mut run, version, now) = session.load(&id)?;
                let changed =
                    change(&mut run, now).map_err(|error| StoreError::refused(&id, error))?;
                if !changed || session.update_ownership(&run, version)? {
                    return Ok(run);
                }
            }
            Err(unexpected(
                "the run kept changing; gave up after many attempts",
            ))
        })
        .await
    }
}

#[async_trait]
impl RunStore for PostgresStore {
    async fn now(&self) -> Result<Timestamp, StoreError> {
        self.blocking("read the store's clock", |session| session.now())
            .await
    }

    async fn claim_in(&self, new: NewRun, on: &ClaimOn) -> Result<Claimed, StoreError> {
        let on = on.clone();
        self.blocking("claim a machine", move |session| {
            let claim = session.statement(Query::Claim)?;
            session.with_machines_locked(&on.machines, |tx, sql| {
                let now = time_from_sql(tx.query_one("SELECT now()", &[])?.try_get(0)?);
                let same = runs_of(tx, &sql.same_hash, &[&new.test_dir_hash.as_str()])?
                    .into_iter()
                    .find(|run| is_same_live_run(run, &new, &on.machines, now));
                let states = on
                    .machines
                    .iter()
                    .map(|machine| machine_state(tx, sql, machine))
                    .collect::<Result<Vec<_>, _>>()?;
                let run = match claim_choice(&on, &states, same, now) {
                    // A retry after a lost commit reply finds its own run: that claim had won.
                    ClaimDecision::Existing(run) if run.id == new.id => {
                        return Ok(if run.status == RunStatus::Queued {
                            Claimed::Queued(*run)
                        } else {
                            Claimed::Created(*run)
                        });
                    }
                    ClaimDecision::Existing(run) => return Ok(Claimed::Existing(*run)),
                    ClaimDecision::Busy(runs) => return Ok(Claimed::Busy(runs)),
                    ClaimDecision::Create(machine) => {
                        let mut new = new.clone();
                        new.machine = machine;
                        Run::pending(new, now)
                    }
                    ClaimDecision::Queue => {
                        let seq: i64 = tx.query_one(&sql.next_seq, &[])?.try_get(0)?;
                        Run::queued(new.clone(), on.machines.clone(), u64_from_sql(seq), now)
                    }
                };
                let values = RunValues::of(&run);
                let created = RunEventRecord::created(&run);
                let (to, detail) = (created.to.as_str(), created.detail);
                let mut params: Vec<&(dyn ToSql + Sync)> = values.params().to_vec();
                params.push(&to);
                params.push(&detail);
                if tx.query(&claim, &params)?.is_empty() {
                    // Unreachable under the machines' locks: the machine lock refused it.
                    return Err(unexpected(
                        "the machine lock refused a claim of a free machine",
                    ));
                }
                Ok(if run.status == RunStatus::Queued {
                    Claimed::Queued(run)
                } else {
                    Claimed::Created(run)
                })
            })
        })
        .await
    }

    async fn try_grant(&self, id: &RunId) -> Result<Run, StoreError> {
        let id = id.clone();
        self.blocking("grant a queued run its machine", move |session| {
            let (run, _, _) = session.load(&id)?;
            if run.status != RunStatus::Queued {
                return Ok(run);
            }
            // A waiter asks often: look first without the machines' locks, and take them only
            // when a grant looks due, deciding again under them.
            if !session.grant_looks_due(&run)? {
                return Ok(run);
            }
            session.with_machines_locked(&run.waiting_for, |tx, sql| {
                let rows = tx.query(&format!("{} WHERE id = $1", sql.select), &[&id.as_str()])?;
                let row = rows
                    .first()
                    .ok_or_else(|| OpError::Store(StoreError::NotFound(id.clone())))?;
                let (mut run, _, now) = loaded(row)?;
                if run.status != RunStatus::Queued {
                    return Ok(run);
                }
                let states = run
                    .waiting_for
                    .iter()
                    .map(|machine| machine_state(tx, sql, machine))
                    .collect::<Result<Vec<_>, _>>()?;
                let Some(machine) = grant_choice(&run, &states, now) else {
                    return Ok(run);
                };
                let event = run
                    .grant(&machine, now)
                    .map_err(|error| StoreError::refused(&id, error))?;
                let at = time_to_sql(event.at);
                tx.query(
                    &sql.grant,
                    &[&id.as_str(), &machine.as_str(), &at, &event.detail],
                )?;
                // As stored now: granted, or ended by a cancel or a reaper just before.
                let rows = tx.query(&format!("{} WHERE id = $1", sql.select), &[&id.as_str()])?;
                let row = rows
                    .first()
                    .ok_or_else(|| OpError::Store(StoreError::NotFound(id.clone())))?;
                Ok(loaded(row)?.0)
            })
        })
        .await
    }

    async fn machine_states(
        &self,
        machines: &[MachineName],
    ) -> Result<Vec<MachineState>, StoreError> {
        let machines = machines.to_vec();
        self.blocking("read the machines' queues", move |session| {
            let sql = session.queries;
            let mut tx = session.conn.client.transaction()?;
            let states = machines
                .iter()
                .map(|machine| machine_state(&mut tx, &sql.queue, machine))
                .collect::<Result<Vec<_>, _>>()?;
            tx.commit()?;
            Ok(states)
        })
        .await
    }

    fn tells_changes(&self) -> bool {
        true
    }

    fn change_token(&self) -> u64 {
        self.shared.changes.listen();
        *self.shared.changes.sender.borrow()
    }

    async fn wait_for_change(&self, token: u64, timeout: Duration) {
        self.shared.changes.listen();
        let mut changes = self.shared.changes.sender.subscribe();
        if *changes.borrow_and_update() != token {
            return;
        }
        let _ = tokio::time::timeout(timeout, changes.changed()).await;
    }

    async fn get(&self, id: &RunId) -> Result<Run, StoreError> {
        let id = id.clone();
        self.blocking("read a run", move |session| Ok(session.load(&id)?.0))
            .await
    }

    async fn find_by_id_prefix(
        &self,
        prefix: &RunIdPrefix,
        limit: usize,
    ) -> Result<Vec<Run>, StoreError> {
        let pattern = format!("{prefix}%");
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.blocking("find runs by id prefix", move |session| {
            session.runs(Query::ByIdPrefix, &[&pattern, &limit])
        })
        .await
    }

    async fn transition(&self, id: &RunId, change: Transition) -> Result<Run, StoreError> {
        let id = id.clone();
        self.blocking("record a run's transition", move |session| {
            for _ in 0..CAS_ATTEMPTS {
                let (mut run, version, now) = session.load(&id)?;
                let event = run
                    .apply(&change, now)
                    .map_err(|error| StoreError::refused(&id, error))?;
                let values = RunValues::of(&run);
                let v = values.params();
                let event_values = EventValues::of(&event);
                let e = event_values.params();
                let from = change.from.as_str();
                let params: [&(dyn ToSql + Sync); 27] = [
                    v[0], &version, v[6], v[7], v[8], v[9], v[10], v[12], v[13], v[14], v[21],
                    v[22], v[23], v[17], v[18], v[24], &from, e[0], e[1], e[2], e[3], e[4], v[27],
                    v[28], v[29], v[30], v[33],
                ];
                if !session.query(Query::Transition, &params)?.is_empty() {
                    return Ok(run);
                }
                // Another write came between the read and this one: decide again on what is
                // stored now (a lost compare-and-set is then a conflict).
            }
            Err(unexpected(
                "the run kept changing; gave up after many attempts",
            ))
        })
        .await
    }

    async fn amend(&self, id: &RunId, amendment: Amendment) -> Result<Run, StoreError> {
        let id = id.clone();
        self.blocking("amend a run", move |session| {
            for _ in 0..CAS_ATTEMPTS {
                let (mut run, version, _) = session.load(&id)?;
                let event = run
                    .amend(&amendment)
                    .map_err(|error| StoreError::refused(&id, error))?;
                let values = RunValues::of(&run);
                let v = values.params();
                let event_values = EventValues::of(&event);
                let e = event_values.params();
                let params: [&(dyn ToSql + Sync); 12] = [
                    v[0], &version, v[27], v[21], v[22], v[28], v[29], e[0], e[1], e[2], e[3], e[4],
                ];
                if !session.query(Query::Amend, &params)?.is_empty() {
                    return Ok(run);
                }
            }
            Err(unexpected(
                "the run kept changing; gave up after many attempts",
            ))
        })
        .await
    }

    async fn set_remote_dir(&self, id: &RunId, remote_dir: &str) -> Result<(), StoreError> {
        let (id, remote_dir) = (id.clone(), remote_dir.to_owned());
        self.blocking("record a run's remote folder", move |session| {
            if session.execute(Query::SetRemoteDir, &[&id.as_str(), &remote_dir])? == 0 {
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
        let filter = filter.clone();
        self.blocking("list runs", move |session| {
            let limit = filter
                .limit
                .map(|limit| i64::try_from(limit).unwrap_or(i64::MAX));
            let machine = filter.machine.as_ref().map(|m| m.as_str().to_owned());
            let status = filter.status.map(RunStatus::as_str);
            match (&machine, &status) {
                (None, None) => session.runs(Query::List, &[&limit]),
                (Some(machine), None) => session.runs(Query::ListByMachine, &[machine, &limit]),
                (None, Some(status)) => session.runs(Query::ListByStatus, &[status, &limit]),
                (Some(machine), Some(status)) => {
                    session.runs(Query::ListByBoth, &[machine, status, &limit])
                }
            }
        })
        .await
    }

    async fn events(&self, id: &RunId) -> Result<Vec<RunEventRecord>, StoreError> {
        let id = id.clone();
        self.blocking("read a run's events", move |session| {
            let events = session
                .query(Query::Events, &[&id.as_str()])?
                .iter()
                .map(|row| event_from_row(row).map_err(OpError::from))
                .collect::<Result<Vec<_>, _>>()?;
            // Every run has its creation event; no events means no such run.
            if events.is_empty() && session.query(Query::Exists, &[&id.as_str()])?.is_empty() {
                return Err(StoreError::NotFound(id.clone()).into());
            }
            Ok(events)
        })
        .await
    }

    async fn active_runs(&self) -> Result<Vec<Run>, StoreError> {
        self.blocking("list active runs", |session| {
            session.runs(Query::Active, &[])
        })
        .await
    }
}
