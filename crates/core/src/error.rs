//! The errors of a dispatch that are reported instead of recording a run.

use std::path::PathBuf;

use crate::code::ErrorCode;
use crate::entrypoint::EntrypointError;
use crate::hash::HashError;
use crate::ids::{MachineName, RunId, TestDirHash};
use crate::ports::StoreError;

/// A dispatch refused before any run was recorded, or a store failure. Nothing was persisted
/// for a preflight error.
///
/// Messages say what happened in terms of the domain; an application adds its own remedies
/// (the command to run next) when it shows them.
#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    /// The test directory does not exist or is not a directory.
    #[error("test directory {path} does not exist or is not a directory")]
    TestDirNotFound {
        /// The path as given.
        path: PathBuf,
        /// Why it could not be opened, when the file system said.
        #[source]
        source: Option<std::io::Error>,
    },
    /// The machine's entrypoint is not in the test directory.
    #[error(transparent)]
    MissingEntrypoint(#[from] EntrypointError),
    /// A file of the test directory could not be read.
    #[error("failed to read the test directory")]
    Hash(#[source] HashError),
    /// Another test directory, or the same one with other arguments or variables, is pending or
    /// running on the machine, or waits for it (a run that does not wait never jumps the queue).
    #[error(
        "machine {machine} is busy with run {active_run} (test directory hash {active_hash}{}){}",
        if *other_invocation { ", the same directory with other arguments or variables" } else { "" },
        if *queued { ", which waits for it" } else { "" }
    )]
    MachineBusy {
        /// The active run has the same hash, and other arguments or variables.
        other_invocation: bool,
        /// The machine asked for.
        machine: MachineName,
        /// The run that holds it, or the first live run waiting for it.
        active_run: RunId,
        /// The hash of that run's directory.
        active_hash: TestDirHash,
        /// `active_run` waits for the machine (queued) rather than holds it.
        queued: bool,
    },
    /// Every machine a run could take (`run --any`) is busy, and it may not wait.
    #[error("every machine it could run on is busy: {}", describe_busy(busy))]
    MachinesBusy {
        /// Each candidate and what makes it busy, in candidate order.
        busy: Vec<BusyMachine>,
    },
    /// The store failed.
    #[error("run store failed")]
    Store(#[from] StoreError),
}

impl DispatchError {
    /// The stable code of this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::TestDirNotFound { .. } => ErrorCode::TestDirNotFound,
            Self::MissingEntrypoint(_) => ErrorCode::MissingEntrypoint,
            Self::Hash(error) => error.code(),
            Self::MachineBusy { .. } | Self::MachinesBusy { .. } => ErrorCode::MachineBusy,
            Self::Store(_) => ErrorCode::StoreError,
        }
    }
}

/// A machine of `run --any` and what makes it busy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BusyMachine {
    /// The machine.
    pub machine: MachineName,
    /// The run that holds it, or its first live waiter.
    pub run: RunId,
    /// That run waits for the machine (queued) rather than holds it.
    pub queued: bool,
}

fn describe_busy(busy: &[BusyMachine]) -> String {
    busy.iter()
        .map(|entry| {
            format!(
                "{} ({} {})",
                entry.machine,
                if entry.queued {
                    "waited for by"
                } else {
                    "held by"
                },
                entry.run
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

impl From<HashError> for DispatchError {
    fn from(error: HashError) -> Self {
        match error {
            HashError::NotADirectory { path, source } => Self::TestDirNotFound { path, source },
            error @ (HashError::Io { .. }
            | HashError::IgnoreFile { .. }
            | HashError::Exclude(_)) => Self::Hash(error),
        }
    }
}
