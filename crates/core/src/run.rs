//! The run record and its lifecycle (`docs/contract.md#lifecycle`).
//!
//! [`transition`] is the one place that says which status may follow which; stores apply a
//! [`Transition`] with [`Run::apply`], so every store records the same fields the same way.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::code::{ErrorCode, RunError};
use crate::entrypoint::TargetOs;
use crate::ids::{MachineName, RunId, TestDirHash};
use crate::time::Timestamp;

/// Where a run is in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    Pending,
    Running,
    Completed,
    Failed,
    Timeout,
    Interrupted,
}

impl RunStatus {
    pub const ALL: [RunStatus; 6] = [
        Self::Pending,
        Self::Running,
        Self::Completed,
        Self::Failed,
        Self::Timeout,
        Self::Interrupted,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Timeout => "timeout",
            Self::Interrupted => "interrupted",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|status| status.as_str() == text)
    }

    /// Pending and running runs hold their machine's lock.
    pub const fn is_active(self) -> bool {
        matches!(self, Self::Pending | Self::Running)
    }

    pub const fn is_terminal(self) -> bool {
        !self.is_active()
    }

    /// Whether some lifecycle event leads from `self` to `to`.
    pub fn can_become(self, to: RunStatus) -> bool {
        LifecycleEvent::ALL
            .into_iter()
            .any(|event| transition(self, event) == Ok(to))
    }
}

impl fmt::Display for RunStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What can happen to a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LifecycleEvent {
    /// The connection is up, host key and login verified; the upload begins.
    Start,
    /// The entrypoint exited with status 0.
    ExitedZero,
    /// The entrypoint exited non-zero or was killed by a signal, or the transport failed; from
    /// `pending`, the dial, host-key or login failed.
    Failed,
    /// The exec timeout elapsed.
    TimedOut,
    /// Cancel, SIGINT or SIGTERM, or the owning process was found dead.
    Interrupted,
}

impl LifecycleEvent {
    pub const ALL: [LifecycleEvent; 5] = [
        Self::Start,
        Self::ExitedZero,
        Self::Failed,
        Self::TimedOut,
        Self::Interrupted,
    ];
}

/// An event that the lifecycle does not allow in the current status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a {status} run cannot take the event {event:?}")]
pub struct TransitionError {
    pub status: RunStatus,
    pub event: LifecycleEvent,
}

/// The lifecycle of `docs/contract.md#lifecycle`. Terminal states never change.
///
/// # Errors
/// [`TransitionError`] for an event the diagram has no edge for.
pub fn transition(status: RunStatus, event: LifecycleEvent) -> Result<RunStatus, TransitionError> {
    use LifecycleEvent as E;
    use RunStatus as S;
    let next = match (status, event) {
        (S::Pending, E::Start) => S::Running,
        (S::Pending, E::Failed) => S::Failed,
        (S::Pending, E::Interrupted) => S::Interrupted,
        (S::Pending, E::ExitedZero | E::TimedOut) => return Err(TransitionError { status, event }),
        (S::Running, E::ExitedZero) => S::Completed,
        (S::Running, E::Failed) => S::Failed,
        (S::Running, E::TimedOut) => S::Timeout,
        (S::Running, E::Interrupted) => S::Interrupted,
        (S::Running, E::Start) => return Err(TransitionError { status, event }),
        (S::Completed | S::Failed | S::Timeout | S::Interrupted, _) => {
            return Err(TransitionError { status, event });
        }
    };
    Ok(next)
}

/// The local files of one run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunPaths {
    pub dir: PathBuf,
    pub stdout: PathBuf,
    pub stderr: PathBuf,
    pub artifacts: PathBuf,
}

impl RunPaths {
    /// The files of a run whose local folder is `dir`.
    pub fn new(dir: PathBuf) -> Self {
        Self {
            stdout: dir.join("stdout.log"),
            stderr: dir.join("stderr.log"),
            artifacts: dir.join("artifacts"),
            dir,
        }
    }

    /// `<state dir>/runs/<run id>`.
    pub fn in_state_dir(state_dir: &Path, id: &RunId) -> Self {
        Self::new(state_dir.join("runs").join(id.as_str()))
    }

    pub fn worker_log(&self) -> PathBuf {
        self.dir.join("worker.log")
    }
}

/// What was downloaded from the run's `artifacts/` folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ArtifactSummary {
    pub files: u64,
    pub bytes: u64,
}

/// The process that owns a non-terminal run: its pid, and its start time (in the platform's
/// own unit) so that a reused pid is not mistaken for the owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RunOwner {
    pub pid: u32,
    pub start_time: Option<u64>,
}

/// One run, as stored and as shown (the JSON field names are the contract).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Run {
    pub id: RunId,
    pub machine: MachineName,
    pub os: TargetOs,
    /// The absolute test directory.
    pub test_dir: PathBuf,
    pub test_dir_hash: TestDirHash,
    pub entrypoint: String,
    pub status: RunStatus,
    pub error: Option<RunError>,
    pub exit_code: Option<i32>,
    pub signal: Option<String>,
    pub created_at: Timestamp,
    pub started_at: Option<Timestamp>,
    pub finished_at: Option<Timestamp>,
    pub duration_ms: Option<u64>,
    pub timeout_ms: Option<u64>,
    pub remote_dir: Option<String>,
    pub worker_pid: Option<u32>,
    #[serde(skip)]
    pub worker_start_time: Option<u64>,
    /// Keep the remote run folder after the run (`--keep-remote`).
    #[serde(skip)]
    pub keep_remote: bool,
    pub paths: RunPaths,
    pub artifacts: Option<ArtifactSummary>,
}

impl Run {
    /// A new pending run.
    pub fn pending(new: NewRun) -> Self {
        Self {
            id: new.id,
            machine: new.machine,
            os: new.os,
            test_dir: new.test_dir,
            test_dir_hash: new.test_dir_hash,
            entrypoint: new.entrypoint,
            status: RunStatus::Pending,
            error: None,
            exit_code: None,
            signal: None,
            created_at: new.created_at,
            started_at: None,
            finished_at: None,
            duration_ms: None,
            timeout_ms: new.timeout_ms,
            remote_dir: None,
            worker_pid: new.owner.map(|owner| owner.pid),
            worker_start_time: new.owner.and_then(|owner| owner.start_time),
            keep_remote: new.keep_remote,
            paths: new.paths,
            artifacts: None,
        }
    }

    pub fn owner(&self) -> Option<RunOwner> {
        self.worker_pid.map(|pid| RunOwner {
            pid,
            start_time: self.worker_start_time,
        })
    }

    /// Applies a transition whose `from` matches the current status, filling the fields the
    /// new status implies: `started_at` on start; `finished_at`, `duration_ms` and the outcome
    /// on a terminal status (the owner is cleared then).
    ///
    /// # Errors
    /// [`ApplyError::StatusMismatch`] when the run is not in `from` (a lost compare-and-set);
    /// [`ApplyError::NotAnEdge`] when the lifecycle has no edge `from → to`.
    pub fn apply(&mut self, change: &Transition) -> Result<RunEventRecord, ApplyError> {
        if self.status != change.from {
            return Err(ApplyError::StatusMismatch {
                expected: change.from,
                actual: self.status,
            });
        }
        if !change.from.can_become(change.to) {
            return Err(ApplyError::NotAnEdge {
                from: change.from,
                to: change.to,
            });
        }
        if let OwnerGuard::Exactly(expected) = change.owner_guard
            && self.owner() != expected
        {
            return Err(ApplyError::OwnerChanged);
        }
        self.status = change.to;
        if change.to == RunStatus::Running {
            self.started_at = Some(change.at);
        }
        if change.to.is_terminal() {
            self.finished_at = Some(change.at);
            let began = self.started_at.unwrap_or(self.created_at);
            self.duration_ms =
                Some(u64::try_from(change.at.since(began).as_millis()).unwrap_or(u64::MAX));
            self.error = change.error.clone();
            self.exit_code = change.exit_code;
            self.signal = change.signal.clone();
            if change.artifacts.is_some() {
                self.artifacts = change.artifacts;
            }
            self.worker_pid = None;
            self.worker_start_time = None;
        }
        Ok(RunEventRecord {
            at: change.at,
            from: Some(change.from),
            to: change.to,
            code: change.error.as_ref().map(|error| error.code),
            detail: change
                .detail
                .clone()
                .or_else(|| change.error.as_ref().map(|e| e.message.clone())),
        })
    }
}

/// Why [`Run::apply`] refused a transition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    #[error("the run is {actual}, not {expected}")]
    StatusMismatch {
        expected: RunStatus,
        actual: RunStatus,
    },
    #[error("a run cannot go from {from} to {to}")]
    NotAnEdge { from: RunStatus, to: RunStatus },
    #[error("the run's owner changed")]
    OwnerChanged,
}

/// Which owner a transition requires. A change decided from who owned the run (the reaper's
/// "the owner is dead") must not land once another process has taken the run over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OwnerGuard {
    /// Whoever owns the run.
    #[default]
    Any,
    /// Only while the run's owner is exactly this (`None`: no owner recorded).
    Exactly(Option<RunOwner>),
}

/// A run the store is asked to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRun {
    pub id: RunId,
    pub machine: MachineName,
    pub os: TargetOs,
    pub test_dir: PathBuf,
    pub test_dir_hash: TestDirHash,
    pub entrypoint: String,
    pub created_at: Timestamp,
    pub timeout_ms: Option<u64>,
    pub keep_remote: bool,
    pub paths: RunPaths,
    pub owner: Option<RunOwner>,
}

/// A compare-and-set status change and what it records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub from: RunStatus,
    pub to: RunStatus,
    pub at: Timestamp,
    pub error: Option<RunError>,
    pub exit_code: Option<i32>,
    pub signal: Option<String>,
    pub artifacts: Option<ArtifactSummary>,
    /// Extra words for the event history; the error message when absent.
    pub detail: Option<String>,
    /// The owner the run must still have for the change to apply.
    pub owner_guard: OwnerGuard,
}

impl Transition {
    /// A change with no outcome fields set.
    pub fn new(from: RunStatus, to: RunStatus, at: Timestamp) -> Self {
        Self {
            from,
            to,
            at,
            error: None,
            exit_code: None,
            signal: None,
            artifacts: None,
            detail: None,
            owner_guard: OwnerGuard::Any,
        }
    }

    pub fn with_error(mut self, code: ErrorCode, message: impl Into<String>) -> Self {
        self.error = Some(RunError::new(code, message));
        self
    }

    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    /// Applies only while the run's owner is still `owner`.
    pub fn with_owner_guard(mut self, owner: Option<RunOwner>) -> Self {
        self.owner_guard = OwnerGuard::Exactly(owner);
        self
    }
}

/// One entry of a run's event history. The first entry (creation) has no `from`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunEventRecord {
    pub at: Timestamp,
    pub from: Option<RunStatus>,
    pub to: RunStatus,
    pub code: Option<ErrorCode>,
    pub detail: Option<String>,
}

impl RunEventRecord {
    /// The event that records a run's creation.
    pub fn created(run: &Run) -> Self {
        Self {
            at: run.created_at,
            from: None,
            to: RunStatus::Pending,
            code: None,
            detail: None,
        }
    }
}

/// A run as a dispatch returns it: `reused` says whether an active run with the same hash was
/// returned instead of a new one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DispatchedRun {
    #[serde(flatten)]
    pub run: Run,
    pub reused: bool,
}
