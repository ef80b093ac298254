//! The errors of the command line, their stable codes and the one table of exit codes.

use std::path::PathBuf;

use serde_json::{Value, json};
use testfleet_core::ports::{SshError, StoreError};
use testfleet_core::{DispatchError, ErrorCode, error_chain};

/// Why a command failed as a whole. Run outcomes are not errors: they are recorded in runs.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A flag or value is malformed (clap's own errors included).
    #[error("{message}")]
    InvalidArgument { message: String },
    /// The fleet file cannot be read, parsed, or is inconsistent.
    #[error("{message}")]
    FleetConfig {
        message: String,
        file: PathBuf,
        line: Option<usize>,
        column: Option<usize>,
    },
    #[error("{message}")]
    UnknownMachine {
        message: String,
        name: String,
        known: Vec<String>,
    },
    #[error("run {id} not found; `testfleet list` shows the known runs")]
    RunNotFound { id: String },
    /// `last` when there is no run (on the machine asked for).
    #[error(
        "there is no run{} yet, so `last` names none; start one with `testfleet run DIR -m MACHINE`",
        machine.as_ref().map(|m| format!(" on {m}")).unwrap_or_default()
    )]
    NoRuns { machine: Option<String> },
    /// A run id prefix that starts the ids of several runs.
    #[error(
        "the run id prefix {typed:?} is ambiguous: it starts the ids of {}{} runs:{}{}\ntype more characters of the id",
        candidates.len(),
        if *more { " or more" } else { "" },
        candidates.iter().map(|run| format!("\n  {}  {}  {}  {}", run.id, run.machine, run.status, run.created_at)).collect::<String>(),
        if *more { "\n  …" } else { "" }
    )]
    AmbiguousRunId {
        typed: String,
        candidates: Vec<testfleet_core::Run>,
        more: bool,
    },
    /// `logs` of a run whose files another controller keeps.
    #[error(
        "the logs of run {id} are on controller {controller}, at {}; run `testfleet logs {id}` there",
        path.display()
    )]
    LogsOnOtherController {
        id: String,
        controller: String,
        path: PathBuf,
    },
    /// `logs` of a run whose local folder is gone (`gc`).
    #[error(
        "the logs of run {id} were removed from {}: `testfleet gc` removes the local files (logs, artifacts) of old runs; the record stays (`testfleet status {id}`)",
        dir.display()
    )]
    LogsRemoved { id: String, dir: PathBuf },
    #[error(transparent)]
    Dispatch(#[from] DispatchError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Ssh(#[from] SshError),
    /// A local file operation failed.
    #[error("failed to {action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("internal error: {0}")]
    Internal(String),
    /// `machines trust --fingerprint` and the machine offered another key.
    #[error("{0}")]
    PinnedKeyMismatch(String),
}

impl CliError {
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::InvalidArgument {
            message: message.into(),
        }
    }

    pub fn io(action: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            action,
            path: path.into(),
            source,
        }
    }

    /// The stable code of this error: one exhaustive match.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::InvalidArgument { .. } | Self::AmbiguousRunId { .. } => {
                ErrorCode::InvalidArgument
            }
            Self::FleetConfig { .. } => ErrorCode::FleetConfigInvalid,
            Self::UnknownMachine { .. } => ErrorCode::UnknownMachine,
            Self::RunNotFound { .. } | Self::NoRuns { .. } => ErrorCode::RunNotFound,
            Self::LogsOnOtherController { .. } => ErrorCode::LogsOnOtherController,
            Self::LogsRemoved { .. } => ErrorCode::LogsRemoved,
            Self::Dispatch(error) => error.code(),
            Self::Store(error) => error.code(),
            Self::Ssh(error) => error.code(),
            Self::Io { .. } | Self::Internal(_) => ErrorCode::Internal,
            Self::PinnedKeyMismatch(_) => ErrorCode::HostKeyMismatch,
        }
    }

    /// The message with its source chain, and what to do about it where testfleet can say.
    pub fn message(&self) -> String {
        let mut message = error_chain(self);
        match self {
            Self::Dispatch(DispatchError::TestDirNotFound { .. }) => {
                message.push_str("; pass the path of a directory that holds the entrypoint (run.sh, or run.ps1 for Windows)");
            }
            Self::Dispatch(DispatchError::Hash(testfleet_core::HashError::Io { .. })) => {
                message.push_str("; make it readable (chmod) or move it out of the test directory");
            }
            Self::Dispatch(DispatchError::MachineBusy { active_run, .. }) => {
                message.push_str("; ");
                message.push_str(&crate::remedy::machine_busy(active_run));
            }
            Self::Dispatch(DispatchError::MachinesBusy { .. }) => {
                message.push_str("; ");
                message.push_str(crate::remedy::MACHINES_BUSY);
            }
            _ => {}
        }
        message
    }

    /// Structured facts about the error for the JSON envelope's `details`.
    pub fn details(&self) -> Value {
        match self {
            Self::FleetConfig {
                file, line, column, ..
            } => json!({ "file": file, "line": line, "column": column }),
            Self::UnknownMachine { name, known, .. } => json!({ "name": name, "known": known }),
            Self::RunNotFound { id } => json!({ "id": id }),
            Self::NoRuns { machine } => json!({ "id": "last", "machine": machine }),
            Self::AmbiguousRunId {
                typed,
                candidates,
                more,
                ..
            } => json!({
                "id": typed,
                "candidates": candidates.iter().map(|run| json!({
                    "id": run.id, "machine": run.machine, "status": run.status,
                    "created_at": run.created_at,
                })).collect::<Vec<_>>(),
                "more": more,
            }),
            Self::LogsOnOtherController {
                id,
                controller,
                path,
            } => json!({ "run": id, "controller": controller, "path": path }),
            Self::LogsRemoved { id, dir } => json!({ "run": id, "dir": dir }),
            Self::Dispatch(DispatchError::MachineBusy {
                other_invocation,
                machine,
                active_run,
                active_hash,
                queued,
            }) => json!({
                "machine": machine,
                "active_run": active_run,
                "active_hash": active_hash,
                "other_invocation": other_invocation,
                "queued": queued,
            }),
            Self::Dispatch(DispatchError::MachinesBusy { busy }) => json!({
                "machines": busy
                    .iter()
                    .map(|entry| json!({
                        "machine": entry.machine,
                        "run": entry.run,
                        "queued": entry.queued,
                    }))
                    .collect::<Vec<_>>(),
            }),
            Self::Dispatch(DispatchError::TestDirNotFound { path, .. }) => json!({ "path": path }),
            Self::Dispatch(DispatchError::Hash(
                testfleet_core::HashError::Io { path, .. }
                | testfleet_core::HashError::IgnoreFile { path, .. },
            )) => json!({ "path": path }),
            Self::Dispatch(DispatchError::MissingEntrypoint(error)) => {
                json!({ "os": error.os.as_str(), "dir": error.dir, "wanted": error.wanted })
            }
            Self::Store(StoreError::NotFound(id)) => json!({ "id": id }),
            Self::Io { path, .. } => json!({ "path": path }),
            Self::InvalidArgument { .. }
            | Self::Dispatch(_)
            | Self::Store(_)
            | Self::Ssh(_)
            | Self::Internal(_)
            | Self::PinnedKeyMismatch(_) => json!({}),
        }
    }
}

impl From<testfleet_core::RunId> for CliError {
    fn from(id: testfleet_core::RunId) -> Self {
        Self::RunNotFound { id: id.to_string() }
    }
}

/// The process exit status of a command (`docs/contract.md#exit-codes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// The command did its job; every run it waited for completed.
    Ok,
    /// Some run ended failed, timeout or interrupted, or a fan-out had a busy machine.
    RunFailed,
    /// A usage or preflight error: nothing was created.
    Usage,
    /// A store or internal error.
    Internal,
    /// The foreground command was interrupted (Ctrl-C, SIGTERM).
    Interrupted,
}

impl Exit {
    /// The one table of exit codes.
    pub const fn code(self) -> u8 {
        match self {
            Self::Ok => 0,
            Self::RunFailed => 1,
            Self::Usage => 2,
            Self::Internal => 3,
            Self::Interrupted => 130,
        }
    }

    /// The exit status of a command that failed with `code`.
    pub const fn for_error(code: ErrorCode) -> Self {
        match code {
            ErrorCode::TestDirNotFound
            | ErrorCode::TestDirUnreadable
            | ErrorCode::MissingEntrypoint
            | ErrorCode::UnknownMachine
            | ErrorCode::MachineBusy
            | ErrorCode::InvalidArgument
            | ErrorCode::FleetConfigInvalid
            | ErrorCode::RunNotFound
            | ErrorCode::LogsOnOtherController
            | ErrorCode::LogsRemoved => Self::Usage,
            // Run-level codes reach the command level only from commands that dial a machine
            // themselves (`machines check`, `machines trust`): the machine failed, not testfleet.
            ErrorCode::HostKeyUnknown
            | ErrorCode::HostKeyMismatch
            | ErrorCode::AuthFailed
            | ErrorCode::DialFailed
            | ErrorCode::UploadFailed
            | ErrorCode::DownloadFailed
            | ErrorCode::TestDirChanged
            | ErrorCode::ExecFailed
            | ErrorCode::ConnectionLost
            | ErrorCode::NonzeroExit
            | ErrorCode::Timeout
            | ErrorCode::QueueTimeout
            | ErrorCode::WorkerLost => Self::RunFailed,
            ErrorCode::Interrupted => Self::Interrupted,
            ErrorCode::StoreError | ErrorCode::Internal => Self::Internal,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_preflight_code_exits_2_and_store_errors_exit_3() {
        for code in ErrorCode::ALL {
            let expected = match code.as_str() {
                "TEST_DIR_NOT_FOUND"
                | "TEST_DIR_UNREADABLE"
                | "MISSING_ENTRYPOINT"
                | "UNKNOWN_MACHINE"
                | "MACHINE_BUSY"
                | "INVALID_ARGUMENT"
                | "FLEET_CONFIG_INVALID"
                | "RUN_NOT_FOUND"
                | "LOGS_ON_OTHER_CONTROLLER"
                | "LOGS_REMOVED" => 2,
                "STORE_ERROR" | "INTERNAL" => 3,
                "INTERRUPTED" => 130,
                _ => 1,
            };
            assert_eq!(Exit::for_error(code).code(), expected, "{code}");
        }
    }
}
