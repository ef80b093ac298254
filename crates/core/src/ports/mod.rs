//! The ports through which the core reaches the world: the run store, SSH, the clock and the
//! run-id generator. Adapters implement them; the runner holds them as `Arc<dyn …>`.
//!
//! Every implementation must pass the matching contract suite in `testfleet-contract`.

mod clock;
mod ssh;
mod store;

use std::error::Error as StdError;
use std::sync::Arc;

pub use clock::{Clock, RunIdGenerator, SystemClock, UlidGenerator};
pub use ssh::{
    CacheUsage, DownloadReport, ExecGate, ExecOutput, FileCache, GateKeeper, HostKeyPolicy,
    KillOutcome, KillRequest, NoProgress, OutputStream, OutputTail, ProgressSink, RemoteExit,
    SshConnector, SshError, SshSession, SshTarget, TransferProgress, TransferStats,
};
pub use store::{Claim, Claimed, RunFilter, RunStore, StoreError};

/// A shareable error source.
pub type SharedError = Arc<dyn StdError + Send + Sync + 'static>;
