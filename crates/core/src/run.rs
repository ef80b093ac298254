//! The run record and its lifecycle (`docs/contract.md#lifecycle`).
//!
//! [`transition`] is the one place that says which status may follow which; stores apply a
//! [`Transition`] with [`Run::apply`], so every store records the same fields the same way.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::code::{ErrorCode, RunError};
use crate::entrypoint::TargetOs;
use crate::ids::{ControllerId, MachineName, RunId, TestDirHash};
use crate::summary::TestSummary;
use crate::time::Timestamp;

pub use crate::invocation::{EnvVar, Invocation, InvocationError};
pub use crate::lifecycle::{LifecycleEvent, RunStatus, TransitionError, transition};

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
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ArtifactSummary {
    /// Regular files downloaded.
    pub files: u64,
    /// Their total size in bytes.
    pub bytes: u64,
    /// Entries that were not downloaded, and why (an unreadable file or folder, a name that
    /// could not be a local path, a symlink, a special file); the rest was kept. At most
    /// [`ArtifactSummary::MAX_SKIPPED`] are listed.
    #[serde(default)]
    pub skipped: Vec<SkippedArtifact>,
}

impl ArtifactSummary {
    /// How many skipped entries a summary lists at most.
    pub const MAX_SKIPPED: usize = 100;
}

/// What the upload of a run's test directory sent, and what the machine's file cache
/// (`docs/contract.md#remote-file-cache`) supplied instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct UploadSummary {
    /// Files whose contents were sent over the connection.
    pub files: u64,
    /// Their bytes.
    pub bytes: u64,
    /// Files linked from the machine's cache, nothing sent.
    pub cached_files: u64,
    /// Their bytes.
    pub cached_bytes: u64,
}

/// An entry of the remote `artifacts/` folder that was not downloaded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkippedArtifact {
    /// Its path, relative to `artifacts/`.
    pub path: String,
    /// Why it was skipped.
    pub reason: String,
}

/// What testfleet knows of a run's processes on its machine once the run ended
/// (`docs/contract.md#remote-side`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RemoteCleanup {
    /// testfleet killed what was left of the run and saw it gone.
    Killed,
    /// Nothing of the run was alive when testfleet looked: it had ended on its own (the
    /// wrapper takes the rest of the tree down with the entrypoint).
    AlreadyGone,
    /// Processes of the run were still alive after `KILL` (stuck in the kernel, or out of
    /// reach).
    Survived,
    /// testfleet could not reach the machine to make sure: processes of the run may still be
    /// running there.
    Unreachable,
}

impl RemoteCleanup {
    /// The stable name (`killed`, `already_gone`, `survived`, `unreachable`).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Killed => "killed",
            Self::AlreadyGone => "already_gone",
            Self::Survived => "survived",
            Self::Unreachable => "unreachable",
        }
    }

    /// Parses a stable name.
    pub fn parse(text: &str) -> Option<Self> {
        [
            Self::Killed,
            Self::AlreadyGone,
            Self::Survived,
            Self::Unreachable,
        ]
        .into_iter()
        .find(|cleanup| cleanup.as_str() == text)
    }
}

/// The process that owns a non-terminal run: the controller it runs on, its pid, and its start
/// time (in the platform's own unit) so that a reused pid is not mistaken for the owner. While
/// it owns the run it renews the run's lease ([`Run::lease_expires_at`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RunOwner {
    /// The controller the owner runs on; `None` only for owners recorded before owners named
    /// their controller (they are taken to be on the controller that reads them).
    pub host: Option<ControllerId>,
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
    /// Its arguments, its variables and the hash's `--exclude` patterns; serialized as the
    /// record's `args`, `env` and `excludes`.
    #[serde(flatten)]
    pub invocation: Invocation,
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
    /// What testfleet knows of the run's processes on the machine: `None` while the run is
    /// active, when it never reached the machine, or while testfleet still reconnects to make
    /// sure (an [`Amendment`] then fills it in).
    pub remote_cleanup: Option<RemoteCleanup>,
    /// The pid of the process that owns the run while it is active; `None` once it is terminal, or
    /// when no owner was recorded (the reaper then ends the run).
    pub worker_pid: Option<u32>,
    /// The owner's start time ([`RunOwner::start_time`]). Stored, not serialized.
    #[serde(skip)]
    pub worker_start_time: Option<u64>,
    /// The owner's controller ([`RunOwner::host`]); while the run is active it is the run's
    /// [`controller`](Run::controller). Stored, not serialized.
    #[serde(skip)]
    pub worker_host: Option<ControllerId>,
    /// Keep the remote run folder after the run (`--keep-remote`).
    #[serde(skip)]
    pub keep_remote: bool,
    /// The run's local files. Always set, even after the files were deleted.
    pub paths: RunPaths,
    /// What was downloaded from the remote `artifacts/` folder: zeros when the script left none,
    /// `None` when no download took place (the run ended before its script ran, or the connection
    /// was lost).
    pub artifacts: Option<ArtifactSummary>,
    /// The controller whose state directory holds the run's [`paths`](Run::paths) (logs and
    /// artifacts); `None` for runs recorded before runs named their controller.
    pub controller: Option<ControllerId>,
    /// When the owner's lease ends unless it renews it, by the store's clock; `None` when no
    /// owner holds a lease (no owner recorded, or the run is terminal). Once it has passed, any
    /// controller's reaper may end the run as `WORKER_LOST`.
    pub lease_expires_at: Option<Timestamp>,
    /// When a cancel was requested through the store (by the store's clock), for the owner to see
    /// at its next heartbeat; `None` when none was. It stays set once the run is terminal.
    pub cancel_requested_at: Option<Timestamp>,
    /// What the test reports among the downloaded artifacts said; `None` when no report was
    /// found (or none was looked for: the download did not happen).
    pub tests: Option<TestSummary>,
    /// What the upload sent and what came from the machine's cache; `None` when no upload
    /// finished (the run ended before or during it).
    #[serde(default)]
    pub upload: Option<UploadSummary>,
    /// While the run is queued: the machines it waits for (one, or the set of `run --any`), the
    /// first of which is [`machine`](Run::machine) until it is granted one; empty otherwise.
    #[serde(default)]
    pub waiting_for: Vec<MachineName>,
    /// The store's arrival number of a queued run: of the runs waiting for a machine, the lowest
    /// live one is granted it first. `None` for a run that never queued. Stored, not serialized.
    #[serde(skip)]
    pub queue_seq: Option<u64>,
}

impl Run {
    /// A new pending run, claimed at `store_now` by the store's clock: its owner, if any, holds
    /// a lease until `store_now + new.lease`.
    pub fn pending(new: NewRun, store_now: Timestamp) -> Self {
        let lease_expires_at = new.owner.as_ref().map(|_| store_now.after(new.lease));
        Self {
            id: new.id,
            machine: new.machine,
            os: new.os,
            test_dir: new.test_dir,
            test_dir_hash: new.test_dir_hash,
            entrypoint: new.entrypoint,
            invocation: new.invocation,
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
            remote_cleanup: None,
            worker_pid: new.owner.as_ref().map(|owner| owner.pid),
            worker_start_time: new.owner.as_ref().and_then(|owner| owner.start_time),
            worker_host: new.owner.and_then(|owner| owner.host),
            keep_remote: new.keep_remote,
            paths: new.paths,
            artifacts: None,
            controller: new.controller,
            lease_expires_at,
            cancel_requested_at: None,
            tests: None,
            upload: None,
            waiting_for: Vec::new(),
            queue_seq: None,
        }
    }

    /// A new queued run, waiting for `machines` (its `machine` is the first of them), with the
    /// store's arrival number `seq`, at `store_now` by the store's clock.
    pub fn queued(new: NewRun, machines: Vec<MachineName>, seq: u64, store_now: Timestamp) -> Self {
        let mut run = Self::pending(new, store_now);
        run.status = RunStatus::Queued;
        if let Some(first) = machines.first() {
            run.machine = first.clone();
        }
        run.waiting_for = machines;
        run.queue_seq = Some(seq);
        run
    }

    /// Whether this is a queued run that still counts in its machines' queues at `store_now`:
    /// it has an owner whose lease has not run out. A waiter whose owner is gone no longer
    /// blocks the runs behind it, even before a reaper ends it.
    pub fn is_live_waiter(&self, store_now: Timestamp) -> bool {
        self.status == RunStatus::Queued
            && self.worker_pid.is_some()
            && !self.lease_expired(store_now)
    }

    /// Grants a queued run `machine`, at `at`: it becomes pending there and leaves every queue.
    /// What a store records when [`crate::queue::grant_choice`] picked the machine.
    ///
    /// # Errors
    /// [`ApplyError::StatusMismatch`] (`expected` queued) when the run is not queued.
    pub fn grant(
        &mut self,
        machine: &MachineName,
        at: Timestamp,
    ) -> Result<RunEventRecord, ApplyError> {
        if self.status != RunStatus::Queued {
            return Err(ApplyError::StatusMismatch {
                expected: RunStatus::Queued,
                actual: self.status,
            });
        }
        self.status = RunStatus::Pending;
        self.machine = machine.clone();
        self.waiting_for.clear();
        Ok(RunEventRecord {
            at,
            from: Some(RunStatus::Queued),
            to: RunStatus::Pending,
            code: None,
            detail: Some(format!("granted {machine}")),
        })
    }

    /// The owner recorded in `worker_host`, `worker_pid` and `worker_start_time`, or `None`.
    pub fn owner(&self) -> Option<RunOwner> {
        self.worker_pid.map(|pid| RunOwner {
            host: self.worker_host.clone(),
            pid,
            start_time: self.worker_start_time,
        })
    }

    /// Hands the run to `owner` (a detached worker taking it over), with a lease until
    /// `store_now + lease` by the store's clock: what [`RunStore::set_owner`] records.
    ///
    /// # Errors
    /// [`ApplyError::StatusMismatch`] (`expected` pending) when the run is terminal.
    ///
    /// [`RunStore::set_owner`]: crate::ports::RunStore::set_owner
    pub fn hand_over(
        &mut self,
        owner: &RunOwner,
        lease: Duration,
        store_now: Timestamp,
    ) -> Result<(), ApplyError> {
        self.refuse_terminal()?;
        self.worker_host.clone_from(&owner.host);
        self.worker_pid = Some(owner.pid);
        self.worker_start_time = owner.start_time;
        self.lease_expires_at = Some(store_now.after(lease));
        Ok(())
    }

    /// The owner's heartbeat: extends the lease of `owner` to `store_now + lease`, also when
    /// it has expired but nobody ended the run: what [`RunStore::renew_lease`] records.
    ///
    /// # Errors
    /// [`ApplyError::StatusMismatch`] (`expected` pending) when the run is terminal;
    /// [`ApplyError::OwnerChanged`] when `owner` no longer owns it.
    ///
    /// [`RunStore::renew_lease`]: crate::ports::RunStore::renew_lease
    pub fn renew_lease(
        &mut self,
        owner: &RunOwner,
        lease: Duration,
        store_now: Timestamp,
    ) -> Result<(), ApplyError> {
        self.refuse_terminal()?;
        if self.owner().as_ref() != Some(owner) {
            return Err(ApplyError::OwnerChanged);
        }
        self.lease_expires_at = Some(store_now.after(lease));
        Ok(())
    }

    /// Records a cancel request at `store_now`, unless the run is terminal or was asked
    /// already (the first request's time stays): what [`RunStore::request_cancel`] records.
    /// Returns whether anything changed.
    ///
    /// [`RunStore::request_cancel`]: crate::ports::RunStore::request_cancel
    pub fn request_cancel(&mut self, store_now: Timestamp) -> bool {
        if self.status.is_terminal() || self.cancel_requested_at.is_some() {
            return false;
        }
        self.cancel_requested_at = Some(store_now);
        true
    }

    fn refuse_terminal(&self) -> Result<(), ApplyError> {
        if self.status.is_terminal() {
            return Err(ApplyError::StatusMismatch {
                expected: RunStatus::Pending,
                actual: self.status,
            });
        }
        Ok(())
    }

    /// Whether the owner's lease has run out at `store_now` (the store's clock). A run with no
    /// lease never expires this way.
    pub fn lease_expired(&self, store_now: Timestamp) -> bool {
        self.lease_expires_at
            .is_some_and(|expires_at| expires_at <= store_now)
    }

    /// Applies a transition whose `from` matches the current status, filling the fields the
    /// new status implies: `started_at` on start; `finished_at`, `duration_ms` and the outcome
    /// on a terminal status (the owner and its lease are cleared then). `store_now` is the
    /// store's clock at the transaction, against which a [`OwnerGuard::LeaseExpired`] guard is
    /// checked.
    ///
    /// # Errors
    /// [`ApplyError::StatusMismatch`] when the run is not in `from` (a lost compare-and-set);
    /// [`ApplyError::NotAnEdge`] when the lifecycle has no edge `from → to`;
    /// [`ApplyError::OwnerChanged`] when the owner guard names another owner;
    /// [`ApplyError::LeaseHeld`] when the guard needs an expired lease and it is not.
    pub fn apply(
        &mut self,
        change: &Transition,
        store_now: Timestamp,
    ) -> Result<RunEventRecord, ApplyError> {
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
        match &change.owner_guard {
            OwnerGuard::Any => {}
            OwnerGuard::Exactly(expected) | OwnerGuard::LeaseExpired(expected) => {
                if self.owner() != *expected {
                    return Err(ApplyError::OwnerChanged);
                }
                if matches!(change.owner_guard, OwnerGuard::LeaseExpired(_))
                    && !self.lease_expired(store_now)
                {
                    return Err(ApplyError::LeaseHeld);
                }
            }
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
                self.artifacts.clone_from(&change.artifacts);
            }
            if change.remote_cleanup.is_some() {
                self.remote_cleanup = change.remote_cleanup;
            }
            if change.tests.is_some() {
                self.tests.clone_from(&change.tests);
            }
            if change.upload.is_some() {
                self.upload = change.upload;
            }
            self.worker_pid = None;
            self.worker_start_time = None;
            self.worker_host = None;
            self.lease_expires_at = None;
            self.waiting_for.clear();
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

impl Run {
    /// Records what was learnt about a terminal run after it ended: testfleet reconnected to its
    /// machine and cleaned up (see [`Amendment`]). The status and the outcome stay as they are.
    ///
    /// # Errors
    /// [`ApplyError::StatusMismatch`] (with `expected` pending) when the run is not terminal:
    /// an active run is changed by transitions only.
    pub fn amend(&mut self, amendment: &Amendment) -> Result<RunEventRecord, ApplyError> {
        if self.status.is_active() {
            return Err(ApplyError::StatusMismatch {
                expected: RunStatus::Pending,
                actual: self.status,
            });
        }
        if amendment.remote_cleanup.is_some() {
            self.remote_cleanup = amendment.remote_cleanup;
        }
        if amendment.artifacts.is_some() {
            self.artifacts.clone_from(&amendment.artifacts);
        }
        if amendment.tests.is_some() {
            self.tests.clone_from(&amendment.tests);
        }
        Ok(RunEventRecord {
            at: amendment.at,
            from: Some(self.status),
            to: self.status,
            code: None,
            detail: Some(amendment.detail.clone()),
        })
    }
}

/// What testfleet learnt about a terminal run after it ended, recorded with
/// [`RunStore::amend`](crate::ports::RunStore::amend): the run's processes on the machine and
/// the artifacts, once it could reconnect. An event with the same status before and after, and
/// `detail`, records it in the history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Amendment {
    /// When it was learnt.
    pub at: Timestamp,
    /// `Some` replaces [`Run::remote_cleanup`].
    pub remote_cleanup: Option<RemoteCleanup>,
    /// `Some` replaces [`Run::artifacts`].
    pub artifacts: Option<ArtifactSummary>,
    /// `Some` replaces [`Run::tests`]: the reports among the artifacts fetched late.
    pub tests: Option<TestSummary>,
    /// What was done, for the event history.
    pub detail: String,
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
    /// The transition is guarded on an expired lease ([`OwnerGuard::LeaseExpired`]) and the
    /// owner's lease has not expired by the store's clock (it was renewed meanwhile). A store
    /// reports it as [`StoreError::LeaseHeld`](crate::ports::StoreError::LeaseHeld).
    #[error("the owner's lease has not expired")]
    LeaseHeld,
}

/// Which owner a transition requires. A change decided from who owned the run (the reaper's
/// "the owner is dead") must not land once another process has taken the run over.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum OwnerGuard {
    /// Whoever owns the run.
    #[default]
    Any,
    /// Only while the run's owner is exactly this (`None`: no owner recorded).
    Exactly(Option<RunOwner>),
    /// Only while the run's owner is exactly this and its lease has expired by the store's clock
    /// at the transaction: a renewal that came first wins.
    LeaseExpired(Option<RunOwner>),
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
    /// Its arguments, variables and `--exclude` patterns.
    pub invocation: Invocation,
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
    /// How long the owner's first lease lasts, from the claim by the store's clock.
    pub lease: Duration,
    /// The controller whose state directory holds the run's files ([`Run::controller`]).
    pub controller: Option<ControllerId>,
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
    /// What is known of the run's processes on the machine. On a terminal status `Some`
    /// replaces [`Run::remote_cleanup`], and `None` leaves it as it is.
    pub remote_cleanup: Option<RemoteCleanup>,
    /// What the test reports said. On a terminal status `Some` replaces [`Run::tests`], and
    /// `None` leaves it as it is.
    pub tests: Option<TestSummary>,
    /// What the upload sent. On a terminal status `Some` replaces [`Run::upload`], and `None`
    /// leaves it as it is.
    pub upload: Option<UploadSummary>,
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
            remote_cleanup: None,
            tests: None,
            upload: None,
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

    /// Applies only while the run's owner is still `owner` and its lease has expired by the
    /// store's clock.
    pub fn with_expired_lease_guard(mut self, owner: Option<RunOwner>) -> Self {
        self.owner_guard = OwnerGuard::LeaseExpired(owner);
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
    /// The event that records a run's creation (pending, or queued with the machines it waits
    /// for).
    pub fn created(run: &Run) -> Self {
        let queued = run.status == RunStatus::Queued;
        Self {
            at: run.created_at,
            from: None,
            to: if queued {
                RunStatus::Queued
            } else {
                RunStatus::Pending
            },
            code: None,
            detail: queued.then(|| {
                let machines: Vec<&str> = run.waiting_for.iter().map(MachineName::as_str).collect();
                format!("waiting for {}", machines.join(", "))
            }),
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
