//! The PostgreSQL implementation of testfleet's [`RunStore`](testfleet_core::ports::RunStore):
//! one database (and schema) shared by every controller of a team, so that the machine lock,
//! idempotency and the run history hold across hosts.
//!
//! - **The machine lock** is a partial unique index on `runs(machine)` over pending and running
//!   runs; a claim inserts or returns the active run in one statement.
//! - **Transitions** are compare-and-sets (`UPDATE … WHERE status = $from AND version = $read`)
//!   with their event in the same statement; [`Run::apply`](testfleet_core::Run::apply) decides
//!   what is recorded, at the database's `now()`.
//! - **Leases** are set, renewed and judged by the database's clock, never a controller's.
//! - **The queue**: claims and grants of a machine take its advisory lock, in one transaction,
//!   and decide with `testfleet_core::queue`; a trigger notifies `testfleet_queue` on every
//!   status change, which a listener per store turns into wake-ups for waiters.
//! - **Transient failures** (serialization failures, deadlocks, lost connections, a restarting
//!   server) are tried again with backoff for up to 30 s.
//! - **Migrations** are forward-only and recorded in `<schema>.schema_migrations`; a newer
//!   schema is refused before anything is written.
//!
//! The client is the synchronous `postgres` crate with an `r2d2` pool; every operation runs on
//! tokio's blocking pool. TLS is rustls on ring.

mod changes;
mod codec;
mod config;
mod error;
mod retry;
mod schema;
mod store;
mod tls;

pub use config::{CONNECT_TIMEOUT, ConfigError, DEFAULT_SCHEMA, PgConfig, PgEnv, TlsMode};
pub use error::Error;
pub use schema::SCHEMA_VERSION;
pub use store::PostgresStore;
