//! testfleet's domain: hashing a test directory, choosing its entrypoint, the run lifecycle,
//! the error codes, the ports to the outside world and the runner that drives them.
//!
//! This crate does no network I/O and no SQL; adapters implement [`ports`].

#![deny(missing_docs)]

pub mod code;
pub mod entrypoint;
pub mod error;
pub mod hash;
pub mod ids;
mod invocation;
mod lifecycle;
pub mod lookup;
pub mod ports;
pub mod queue;
pub mod remote;
pub mod run;
pub mod runner;
pub mod summary;
pub mod time;

pub use code::{ErrorCode, RunError, error_chain};
pub use entrypoint::{EntrypointError, OsFamily, TargetOs};
pub use error::DispatchError;
pub use hash::{DirManifest, HashError, ManifestFile, RelPath, hash_dir};
pub use ids::{ControllerId, IdError, MachineName, RunId, RunIdPrefix, RunRef, TestDirHash};
pub use run::{
    Amendment, ArtifactSummary, DispatchedRun, EnvVar, Invocation, InvocationError, LifecycleEvent,
    NewRun, RemoteCleanup, Run, RunEventRecord, RunOwner, RunPaths, RunStatus, SkippedArtifact,
    Transition, UploadSummary, transition,
};
pub use summary::{FailedCase, FailureKind, TestSummary, UnreadableReport};
pub use time::Timestamp;
