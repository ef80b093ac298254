//! The statuses of a run and the one function that says which may follow which
//! (`docs/contract.md#lifecycle`).

use std::fmt;

use serde::{Deserialize, Serialize};

/// Where a run is in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    /// Waiting for its machine (`run --wait`): it holds no machine, and is granted one when the
    /// machine frees and it is the oldest live run waiting for it. Active.
    Queued,
    /// Claimed: the run holds its machine but is not connected yet. Active.
    Pending,
    /// Connected, host key and login verified: the remote folders, the upload, the execution, the
    /// artifact download and the cleanup happen in this status. Active.
    Running,
    /// The entrypoint exited 0, and the artifact download and the local log writes succeeded.
    /// Terminal.
    Completed,
    /// Something failed: the dial, host key or login, the upload, the exec, the script (non-zero
    /// exit or signal), the transport, or a local operation; [`Run::error`](crate::run::Run::error) says what. Terminal.
    Failed,
    /// The exec timeout elapsed, and the remote process tree was killed. Terminal.
    Timeout,
    /// Cancelled (`cancel`, SIGINT, SIGTERM), or its owner died (`WORKER_LOST`). Terminal.
    Interrupted,
}

impl RunStatus {
    /// Every status, active ones first.
    pub const ALL: [RunStatus; 7] = [
        Self::Queued,
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
            Self::Queued => "queued",
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

    /// Queued, pending and running runs: not terminal yet, and owned by a process.
    pub const fn is_active(self) -> bool {
        matches!(self, Self::Queued | Self::Pending | Self::Running)
    }

    /// Pending and running runs hold their machine's lock (a queued run waits for it).
    pub const fn holds_machine(self) -> bool {
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
    /// A queued run was granted its machine.
    Granted,
    /// The connection is up, host key and login verified; the upload begins.
    Start,
    /// The entrypoint exited with status 0.
    ExitedZero,
    /// The entrypoint exited non-zero or was killed by a signal, or the transport failed; from
    /// `pending`, the dial, host-key or login failed; from `queued`, a local failure of its
    /// owner (its run folder could not be created).
    Failed,
    /// The exec timeout elapsed.
    TimedOut,
    /// Cancel, SIGINT or SIGTERM, the owning process was found dead, or (queued) the wait for
    /// the machine ran out.
    Interrupted,
}

impl LifecycleEvent {
    /// Every event.
    pub const ALL: [LifecycleEvent; 6] = [
        Self::Granted,
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
        (S::Queued, E::Granted) => S::Pending,
        (S::Queued, E::Interrupted) => S::Interrupted,
        (S::Queued, E::Failed) => S::Failed,
        (S::Queued, E::Start | E::ExitedZero | E::TimedOut)
        | (S::Pending | S::Running, E::Granted) => return Err(TransitionError { status, event }),
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
