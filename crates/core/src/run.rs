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
use crate::summary::TestSummary;
use crate::time::Timestamp;

/// Where a run is in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    /// Claimed: the run holds its machine but is not connected yet. Active.
    Pending,
    /// Connected, host key and login verified: the remote folders, the upload, the execution, the
    /// artifact download and the cleanup happen in this status. Active.
    Running,
    /// The entrypoint exited 0, and the artifact download and the local log writes succeeded.
    /// Terminal.
    Completed,
    /// Something failed: the dial, host key or login, the upload, the exec, the script (non-zero
    /// exit or signal), the transport, or a local operation; [`Run::error`] says what. Terminal.
    Failed,
    /// The exec timeout elapsed, and the remote process tree was killed. Terminal.
    Timeout,
    /// Cancelled (`cancel`, SIGINT, SIGTERM), or its owner died (`WORKER_LOST`). Terminal.
    Interrupted,
}

impl RunStatus {
    /// Every status, active ones first.
    pub const ALL: [RunStatus; 6] = [
        Self::Pending,
        Self::Running,
        Self::Completed,
        Self::Failed,
        Self::Timeout,
        Self::Interrupted,
    ];

    /// The stable lower-case string (`"pending"`), as the run record serializes it.
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

    /// Parses a status from its stable string; `None` for anything else, upper-case included.
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|status| status.as_str() == text)
    }

    /// Pending and running runs hold their machine's lock.
    pub const fn is_active(self) -> bool {
        matches!(self, Self::Pending | Self::Running)
    }

    /// Completed, failed, timeout and interrupted runs: no event changes them again, and they no
    /// longer hold their machine.
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
    /// Every event.
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
    /// The status the run was in.
    pub status: RunStatus,
    /// The event that status cannot take.
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
    /// The run's local folder, `<state dir>/runs/<run id>`. [`Runner::prepare`] creates it and
    /// the two logs right after the claim; a store only records the paths.
    ///
    /// [`Runner::prepare`]: crate::runner::Runner::prepare
    pub dir: PathBuf,
    /// `<dir>/stdout.log`: the remote stdout, appended as it arrives.
    pub stdout: PathBuf,
    /// `<dir>/stderr.log`: the remote stderr, appended as it arrives.
    pub stderr: PathBuf,
    /// `<dir>/artifacts`: where the remote `artifacts/` folder is downloaded. It exists only if the
    /// script left one.
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

    /// `<dir>/worker.log`: the output of a detached worker itself. Only detached runs have one.
    pub fn worker_log(&self) -> PathBuf {
        self.dir.join("worker.log")
    }
}

/// What was downloaded from the run's `artifacts/` folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ArtifactSummary {
    /// Regular files downloaded.
    pub files: u64,
    /// Their total size in bytes.
    pub bytes: u64,
}

/// The process that owns a non-terminal run: its pid, and its start time (in the platform's
/// own unit) so that a reused pid is not mistaken for the owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RunOwner {
    /// The owner's process id.
    pub pid: u32,
    /// When that process started (on Linux, field 22 of `/proc/PID/stat`); `None` where the
    /// platform gives none, and then the pid alone identifies the owner.
    pub start_time: Option<u64>,
}

/// One run, as stored and as shown (the JSON field names are the contract).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Run {
    /// The run's id; ids sort by creation time.
    pub id: RunId,
    /// The fleet machine the run is for.
    pub machine: MachineName,
    /// The machine's OS at claim time, which chose the entrypoint.
    pub os: TargetOs,
    /// The absolute test directory.
    pub test_dir: PathBuf,
    /// The hash of the test directory at claim time. With `machine` it is the idempotency key, and
    /// the upload is checked against it.
    pub test_dir_hash: TestDirHash,
    /// The script that runs: `run.sh`, or `run.ps1` on Windows.
    pub entrypoint: String,
    /// Where the run is in its lifecycle.
    pub status: RunStatus,
    /// Why the run did not complete. `None` while it is active and once it completed; the final
    /// transition sets it for a failed, timed-out or interrupted run.
    pub error: Option<RunError>,
    /// The entrypoint's exit status, when the remote side reported one. A timed-out or cancelled
    /// script that exited after the kill has it too, and a run that failed after its script (a
    /// failed download) keeps its 0.
    pub exit_code: Option<i32>,
    /// The signal that killed the entrypoint, without `SIG` (`"TERM"`, `"KILL"`); `None` when it
    /// exited, or never ran.
    pub signal: Option<String>,
    /// When the run was claimed.
    pub created_at: Timestamp,
    /// When it became `running`; `None` if it never did.
    pub started_at: Option<Timestamp>,
    /// When it became terminal, after the artifacts and the cleanup; `None` while it is active.
    pub finished_at: Option<Timestamp>,
    /// `finished_at − started_at` in milliseconds, or `finished_at − created_at` for a run that
    /// never started; `None` while it is active.
    pub duration_ms: Option<u64>,
    /// The exec timeout in milliseconds, counted from the moment the script may start, so that it
    /// bounds the script and not the upload; `None`: no timeout.
    pub timeout_ms: Option<u64>,
    /// The absolute remote run folder, `<root>/runs/<id>` in SFTP path form; `None` until the
    /// remote folders exist. It stays set after the cleanup removed the folder.
    pub remote_dir: Option<String>,
    /// The pid of the process that owns the run while it is active; `None` once it is terminal, or
    /// when no owner was recorded (the reaper then ends the run).
    pub worker_pid: Option<u32>,
    /// The owner's start time ([`RunOwner::start_time`]). Stored, not serialized.
    #[serde(skip)]
    pub worker_start_time: Option<u64>,
    /// Keep the remote run folder after the run (`--keep-remote`).
    #[serde(skip)]
    pub keep_remote: bool,
    /// The run's local files. Always set, even after the files were deleted.
    pub paths: RunPaths,
    /// What was downloaded from the remote `artifacts/` folder: zeros when the script left none,
    /// `None` when no download took place (the run ended before its script ran, or the connection
    /// was lost).
    pub artifacts: Option<ArtifactSummary>,
    /// What the test reports among the downloaded artifacts said; `None` when no report was
    /// found (or none was looked for: the download did not happen).
    pub tests: Option<TestSummary>,
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
            tests: None,
        }
    }

    /// The owner recorded in `worker_pid` and `worker_start_time`, or `None`.
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
            if change.tests.is_some() {
                self.tests.clone_from(&change.tests);
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
    /// The run is not in the transition's `from` status: another change came first (a lost
    /// compare-and-set). A store reports it as
    /// [`StoreError::Conflict`](crate::ports::StoreError::Conflict).
    #[error("the run is {actual}, not {expected}")]
    StatusMismatch {
        /// The transition's `from`.
        expected: RunStatus,
        /// The run's status.
        actual: RunStatus,
    },
    /// The lifecycle has no edge `from → to` (see [`transition`]). A store reports it as
    /// [`StoreError::InvalidTransition`](crate::ports::StoreError::InvalidTransition).
    #[error("a run cannot go from {from} to {to}")]
    NotAnEdge {
        /// The transition's `from`.
        from: RunStatus,
        /// The transition's `to`.
        to: RunStatus,
    },
    /// The transition is guarded on an owner ([`Transition::with_owner_guard`]) and the run has
    /// another one now. A store reports it as
    /// [`StoreError::OwnerChanged`](crate::ports::StoreError::OwnerChanged).
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
    /// The new run's id, from a [`RunIdGenerator`](crate::ports::RunIdGenerator).
    pub id: RunId,
    /// The machine to claim.
    pub machine: MachineName,
    /// The machine's OS.
    pub os: TargetOs,
    /// The resolved, absolute test directory.
    pub test_dir: PathBuf,
    /// Its hash; with `machine`, the idempotency key of the claim.
    pub test_dir_hash: TestDirHash,
    /// The script to run, as
    /// [`DirManifest::entrypoint_for`](crate::hash::DirManifest::entrypoint_for) found it.
    pub entrypoint: String,
    /// The claim time.
    pub created_at: Timestamp,
    /// The exec timeout in milliseconds; `None`: no timeout.
    pub timeout_ms: Option<u64>,
    /// Keep the remote run folder after the run (`--keep-remote`).
    pub keep_remote: bool,
    /// The run's local files, usually [`RunPaths::in_state_dir`]. The store records them and does
    /// not create them.
    pub paths: RunPaths,
    /// The process that owns the run from the claim on. With `None` no owner is recorded, and the
    /// next reaper pass ends the run as `WORKER_LOST`.
    pub owner: Option<RunOwner>,
}

/// A compare-and-set status change and what it records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    /// The status the run must be in; otherwise nothing is written
    /// ([`ApplyError::StatusMismatch`]).
    pub from: RunStatus,
    /// The status the run takes; the lifecycle must have the edge `from → to`.
    pub to: RunStatus,
    /// When it happened: the run's `started_at` for a start, `finished_at` for a terminal status,
    /// and the event's `at` either way.
    pub at: Timestamp,
    /// On a terminal status, the run's error, replacing any earlier one; `None` for a completed
    /// run. Its code is the event's `code` in every case.
    pub error: Option<RunError>,
    /// The entrypoint's exit status; on a terminal status it replaces [`Run::exit_code`], otherwise
    /// it is ignored.
    pub exit_code: Option<i32>,
    /// The signal that killed the entrypoint, without `SIG`; on a terminal status it replaces
    /// [`Run::signal`], otherwise it is ignored.
    pub signal: Option<String>,
    /// What was downloaded. On a terminal status `Some` replaces [`Run::artifacts`], and `None`
    /// leaves it as it is.
    pub artifacts: Option<ArtifactSummary>,
    /// What the test reports said. On a terminal status `Some` replaces [`Run::tests`], and
    /// `None` leaves it as it is.
    pub tests: Option<TestSummary>,
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
            tests: None,
            detail: None,
            owner_guard: OwnerGuard::Any,
        }
    }

    /// Sets the error to `code` and `message`.
    pub fn with_error(mut self, code: ErrorCode, message: impl Into<String>) -> Self {
        self.error = Some(RunError::new(code, message));
        self
    }

    /// Sets the event's detail, to be recorded instead of the error's message (the message followed
    /// by `; `-separated notes).
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
    /// When it happened.
    pub at: Timestamp,
    /// The status before; `None` for the creation.
    pub from: Option<RunStatus>,
    /// The status after.
    pub to: RunStatus,
    /// The code of the transition's error, or `None`.
    pub code: Option<ErrorCode>,
    /// The error's message followed by `; `-separated notes (refused artifact names, a kill or a
    /// cleanup that failed, later failures), or `None` when there is neither.
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
    /// The run; its fields are serialized at the top level, beside `reused`.
    #[serde(flatten)]
    pub run: Run,
    /// `true` when an active run with the same hash was returned instead of a new one. That run
    /// keeps its own settings (timeout, `keep_remote`, owner).
    pub reused: bool,
}
