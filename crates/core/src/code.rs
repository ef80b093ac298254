//! The stable error codes, the error recorded in a run, and the rendering of an error chain.
//!
//! This is a leaf of the crate: it imports nothing from the rest of core, so every module can
//! name a code without an import circle. The strings of [`ErrorCode`] are a public contract
//! (`docs/contract.md#error-codes`): agents match on them.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The stable error codes (`docs/contract.md#error-codes`).
///
/// Each code serializes, and displays, as its `SCREAMING_SNAKE_CASE` string
/// ([`ErrorCode::as_str`]). That string is the contract: match on the code, never on a message,
/// which may change. A code is reported in one of three places: as the error of a whole command, as
/// the error of one refused machine of a fan-out, or recorded in a run as [`RunError::code`]. The
/// exit status a code leads to is the application's business.
///
/// The codes up to [`ErrorCode::RunNotFound`] are preflight errors: no run is recorded for them
/// (the exceptions are on the variants). The codes from [`ErrorCode::HostKeyUnknown`] to
/// [`ErrorCode::WorkerLost`] happen to a run and are recorded in it; once a run exists, its
/// failures are recorded in it rather than reported as a command error. [`ErrorCode::StoreError`]
/// and [`ErrorCode::Internal`] are local failures, recorded in a run when they happen to one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorCode {
    /// The test directory does not exist or is not a directory
    /// ([`HashError::NotADirectory`](crate::hash::HashError::NotADirectory)). No run is recorded.
    TestDirNotFound,
    /// A file or folder inside the test directory could not be read while it was hashed (no
    /// permission, a name too long for the system, an I/O error)
    /// ([`HashError::Io`](crate::hash::HashError::Io)); the message names the path. No run is
    /// recorded.
    TestDirUnreadable,
    /// The entrypoint for a selected machine's OS (`run.sh`, or `run.ps1` on Windows) is not a
    /// regular file at the top of the test directory; a symlink of that name counts as missing
    /// ([`EntrypointError`](crate::EntrypointError)). The `run` command checks it for every
    /// selected machine before it claims any, and no run is recorded.
    MissingEntrypoint,
    /// A machine name or a label asked for is not in the fleet file. No run is recorded, with one
    /// exception: a detached worker whose machine has left the fleet file ends its run
    /// `pending → failed` with this code. Core never produces it; the application that reads the
    /// fleet file does.
    UnknownMachine,
    /// The claim found a run of another test directory hash pending or running on the machine
    /// ([`DispatchError::MachineBusy`](crate::DispatchError::MachineBusy) names that run). Nothing
    /// is recorded. In a fan-out only this machine is refused; the others go on. It is also
    /// recorded in a run (`running → failed`, nothing executed) when the machine turns out to be
    /// busy with a run that another controller, with a store of its own, started there.
    MachineBusy,
    /// An argument is malformed: a flag or value the command line refuses, a malformed run id or
    /// machine name ([`IdError`](crate::IdError)), no machine selected, an existing name given to
    /// `machines add`, or no state directory resolvable (HOME unset). No run is recorded. Core
    /// never produces it; the application does.
    InvalidArgument,
    /// The fleet file is missing, unreadable or malformed, has an unknown key, or is inconsistent;
    /// or `~/.ssh/config` cannot be parsed. No run is recorded, with one exception: a detached
    /// worker that cannot load the fleet file ends its run `pending → failed` with this code.
    FleetConfigInvalid,
    /// No run has this id in the store
    /// ([`StoreError::NotFound`](crate::ports::StoreError::NotFound)). Nothing is recorded.
    RunNotFound,
    /// `logs` of a run whose local files (logs, artifacts) are kept by another controller that
    /// shares the run store: the message names that controller and the path there. Nothing is
    /// recorded. Core never produces it; the application does.
    LogsOnOtherController,
    /// `logs` of a run whose local files (logs, artifacts) are gone from this controller:
    /// `gc` removed them (or someone deleted them); the record stays. Nothing is recorded. Core
    /// never produces it; the application does.
    LogsRemoved,
    /// The host-key policy is [`Strict`](crate::ports::HostKeyPolicy::Strict) and known_hosts has
    /// no entry for the host
    /// ([`SshError::HostKeyUnknown`](crate::ports::SshError::HostKeyUnknown)); the message gives
    /// the offered key's `SHA256:` fingerprint. The run is recorded `pending → failed`. Recording
    /// the key first, or dialing with
    /// [`HostKeyPolicy::AcceptNew`](crate::ports::HostKeyPolicy::AcceptNew), avoids it.
    HostKeyUnknown,
    /// known_hosts holds other keys for the host and not the offered one, or marks the offered key
    /// `@revoked` ([`SshError::HostKeyMismatch`](crate::ports::SshError::HostKeyMismatch)): the
    /// host may have been reinstalled, or someone may be intercepting the connection. No policy or
    /// flag overrides it, [`HostKeyPolicy::AcceptNew`](crate::ports::HostKeyPolicy::AcceptNew)
    /// included; the user must verify the new key out of band and edit known_hosts. The run is
    /// recorded `pending → failed`.
    HostKeyMismatch,
    /// The host key was accepted but the login was not: no offered key was accepted, an encrypted
    /// key was found and no agent holds it, the login did not finish within the connect timeout, or
    /// the connection broke during login. The run is recorded `pending → failed`.
    AuthFailed,
    /// The connection could not be set up: DNS failure, connection refused, host unreachable, a
    /// failed SSH handshake, or a TCP connect or handshake that did not finish within the connect
    /// timeout. The run is recorded `pending → failed`.
    DialFailed,
    /// An SFTP error while creating the remote folders, resolving the remote root or uploading, an
    /// existing non-directory where a folder must be, or a path that is not valid UTF-8; the
    /// message names the path. The run is recorded `running → failed`, and its script never starts.
    UploadFailed,
    /// An SFTP or local I/O error while downloading the artifacts; the message names the path. The
    /// run is recorded `running → failed` only if nothing decided its outcome earlier; otherwise
    /// the failure becomes a note in the final event's detail. It can fail a run whose script
    /// exited 0 (`exit_code` stays 0).
    DownloadFailed,
    /// A file read for upload no longer matches the digest or size recorded when the run was
    /// claimed: it changed, grew, shrank or disappeared, and the message names its relative path.
    /// The run is recorded `running → failed`. A detached worker that hashes the directory again
    /// and gets another hash, or cannot read it, ends its run `pending → failed` with this code.
    /// Dispatch again to run the new contents.
    TestDirChanged,
    /// The remote command could not be started (the channel or the exec request was refused), or a
    /// gated command's channel ended before its gate opened. The run is recorded
    /// `running → failed`.
    ExecFailed,
    /// The transport failed after the run started (keepalives unanswered, the connection broke), or
    /// the exec channel closed without an exit status. The run is recorded `running → failed`.
    /// After a transport failure nothing more is tried on the connection: no artifact download, no
    /// remote cleanup.
    ConnectionLost,
    /// The entrypoint exited with a non-zero status ([`Run::exit_code`](crate::Run::exit_code) set)
    /// or was killed by a signal ([`Run::signal`](crate::Run::signal) set) that the runner did not
    /// send. A failed `cd` or pid-file write of the exec script ends here too, with status 126. The
    /// run is recorded `running → failed`.
    NonzeroExit,
    /// The exec timeout ([`Run::timeout_ms`](crate::Run::timeout_ms)) elapsed, counted from the
    /// moment the script was allowed to start, and the remote process tree was killed. The run is
    /// recorded `running → timeout`, whatever status the killed script ended with.
    Timeout,
    /// The run was cancelled (`cancel`, SIGINT or SIGTERM); if its script had started, the remote
    /// process tree was killed. The run is recorded `pending → interrupted` or
    /// `running → interrupted`, whatever status the killed script ended with. In practice it is
    /// never the error of a whole command.
    Interrupted,
    /// A queued run (`run --wait DUR`) waited for its machine as long as it was allowed to and
    /// was not granted one. The run is recorded `queued → interrupted`; nothing ran.
    QueueTimeout,
    /// The process that owned an active run is gone (it ran on this controller and its process
    /// has exited), or its lease expired by the store's clock without renewal (any controller).
    /// The reaper
    /// ([`reap_lost_runs`](crate::runner::reap_lost_runs)) finds it and records the run
    /// `queued`, `pending` or `running → interrupted`. The reaper does not contact the machine:
    /// the script may still be running there, and its remote folder stays behind.
    WorkerLost,
    /// The run store failed: a missing or unusable state directory, a file that is not a database,
    /// a newer schema, a read-only file, a database server that cannot be reached (the message
    /// names its host and port, never a password), an SQL error, or a lost compare-and-set that reached the
    /// caller (every [`StoreError`](crate::ports::StoreError) but `NotFound`). The message keeps
    /// the source chain. A run records it only when recording its remote folder failed and the run
    /// could still be ended (`running → failed`).
    StoreError,
    /// Anything else local or unexpected: a file that cannot be created, read, written or removed
    /// (the local run folder, the logs, the state directory), a known_hosts file that cannot be
    /// read or written, a host certificate offered, an SFTP subsystem that fails to start, an owner
    /// that cannot be signalled ([`SshError::Other`](crate::ports::SshError::Other) maps here).
    /// When it happens to a run it is recorded: `pending → failed` for the local run folder, a
    /// worker that cannot be spawned or a dial that failed this way, `running → failed` for the
    /// logs.
    Internal,
}

impl ErrorCode {
    /// Every code, in the order of the table in `docs/contract.md#error-codes`.
    pub const ALL: [ErrorCode; 26] = [
        Self::TestDirNotFound,
        Self::TestDirUnreadable,
        Self::MissingEntrypoint,
        Self::UnknownMachine,
        Self::MachineBusy,
        Self::InvalidArgument,
        Self::FleetConfigInvalid,
        Self::RunNotFound,
        Self::LogsOnOtherController,
        Self::LogsRemoved,
        Self::HostKeyUnknown,
        Self::HostKeyMismatch,
        Self::AuthFailed,
        Self::DialFailed,
        Self::UploadFailed,
        Self::DownloadFailed,
        Self::TestDirChanged,
        Self::ExecFailed,
        Self::ConnectionLost,
        Self::NonzeroExit,
        Self::Timeout,
        Self::Interrupted,
        Self::QueueTimeout,
        Self::WorkerLost,
        Self::StoreError,
        Self::Internal,
    ];

    /// The stable string of this code (`"HOST_KEY_MISMATCH"`), as it is serialized and displayed.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::TestDirNotFound => "TEST_DIR_NOT_FOUND",
            Self::TestDirUnreadable => "TEST_DIR_UNREADABLE",
            Self::MissingEntrypoint => "MISSING_ENTRYPOINT",
            Self::UnknownMachine => "UNKNOWN_MACHINE",
            Self::MachineBusy => "MACHINE_BUSY",
            Self::InvalidArgument => "INVALID_ARGUMENT",
            Self::FleetConfigInvalid => "FLEET_CONFIG_INVALID",
            Self::RunNotFound => "RUN_NOT_FOUND",
            Self::LogsOnOtherController => "LOGS_ON_OTHER_CONTROLLER",
            Self::LogsRemoved => "LOGS_REMOVED",
            Self::HostKeyUnknown => "HOST_KEY_UNKNOWN",
            Self::HostKeyMismatch => "HOST_KEY_MISMATCH",
            Self::AuthFailed => "AUTH_FAILED",
            Self::DialFailed => "DIAL_FAILED",
            Self::UploadFailed => "UPLOAD_FAILED",
            Self::DownloadFailed => "DOWNLOAD_FAILED",
            Self::TestDirChanged => "TEST_DIR_CHANGED",
            Self::ExecFailed => "EXEC_FAILED",
            Self::ConnectionLost => "CONNECTION_LOST",
            Self::NonzeroExit => "NONZERO_EXIT",
            Self::Timeout => "TIMEOUT",
            Self::Interrupted => "INTERRUPTED",
            Self::QueueTimeout => "QUEUE_TIMEOUT",
            Self::WorkerLost => "WORKER_LOST",
            Self::StoreError => "STORE_ERROR",
            Self::Internal => "INTERNAL",
        }
    }

    /// Parses a code from its stable string.
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|code| code.as_str() == text)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error recorded in a run: its code and a human message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunError {
    /// The stable code; match on this.
    pub code: ErrorCode,
    /// What happened, for humans, usually with its cause chain ([`error_chain`]). It may change
    /// between versions.
    pub message: String,
}

impl RunError {
    /// An error with `code` and `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

/// Renders an error with its whole `source()` chain, `outer: inner: innermost`.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        let inner_text = inner.to_string();
        // thiserror messages often embed their source already; do not repeat it.
        if !text.ends_with(&inner_text) {
            text.push_str(": ");
            text.push_str(&inner_text);
        }
        source = inner.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_through_their_strings() {
        for code in ErrorCode::ALL {
            assert_eq!(ErrorCode::parse(code.as_str()), Some(code));
            let json = format!("\"{}\"", code.as_str());
            assert_eq!(serde_json::to_string(&code).ok(), Some(json));
        }
        assert_eq!(ErrorCode::parse("NOPE"), None);
    }
}
