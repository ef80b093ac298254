//! The SQLite implementation of testfleet's [`RunStore`](testfleet_core::ports::RunStore):
//! one database file in the state directory, WAL journaling, a busy timeout, and migrations
//! applied by `PRAGMA user_version`.
//!
//! The machine lock is a partial unique index on `runs(machine)` over pending and running
//! runs, so two processes claiming one machine cannot both win, whatever they read first.
//! SQLite blocks; every operation runs on tokio's blocking pool.

mod codec;
mod error;
mod retry;
mod schema;
mod store;

pub use error::{Error, is_read_only};
pub use schema::SCHEMA_VERSION;
pub use store::SqliteStore;

/// The file name of the run database inside the state directory.
pub const DATABASE_FILE: &str = "testfleet.db";
