//! The run store port: the durable record of runs, their events and the machine lock.

use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::code::ErrorCode;
use crate::ids::{MachineName, RunId, RunIdPrefix};
use crate::queue::{ClaimOn, MachineState};
use crate::run::{Amendment, NewRun, Run, RunEventRecord, RunOwner, RunStatus, Transition};
use crate::time::Timestamp;

use super::SharedError;

/// The result of [`RunStore::claim`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// No run was active on the machine; this new pending run now holds it.
    Created(Run),
    /// This pending or running run already holds the machine; nothing was written.
    Active(Run),
}

/// The result of [`RunStore::claim_in`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claimed {
    /// A candidate machine was free: this new pending run now holds it.
    Created(Run),
    /// No candidate was free and the claim may wait: this new run is queued for all of them.
    Queued(Run),
    /// A live run with the same test directory hash is on a candidate (holding it, or waiting
    /// for it): it is returned and nothing was written.
    Existing(Run),
    /// No candidate was free and the claim may not wait: what makes each one busy (its holder,
    /// else its first live waiter), in candidate order. Nothing was written.
    Busy(Vec<Run>),
}

/// Which runs [`RunStore::list`] returns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunFilter {
    /// Only runs of this machine; every machine when `None`.
    pub machine: Option<MachineName>,
    /// Only runs in this status; every status when `None`.
    pub status: Option<RunStatus>,
    /// At most this many runs; all when `None`.
    pub limit: Option<usize>,
}

/// Why a store operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// No run has this id in the store. Code `RUN_NOT_FOUND`; every other variant is `STORE_ERROR`.
    #[error("run {0} not found")]
    NotFound(RunId),
    /// A compare-and-set lost: the run was not in the expected status.
    #[error("run {id} is {actual}, not {expected}")]
    Conflict {
        /// The run.
        id: RunId,
        /// The status the change required: its [`Transition::from`].
        expected: RunStatus,
        /// The status the run is in.
        actual: RunStatus,
    },
    /// The lifecycle has no such edge.
    #[error("run {id} cannot go from {from} to {to}")]
    InvalidTransition {
        /// The run.
        id: RunId,
        /// The status the change started from.
        from: RunStatus,
        /// The status it asked for.
        to: RunStatus,
    },
    /// A transition guarded on the owner lost: another process took the run over (nothing
    /// written).
    #[error("run {id} changed owner meanwhile")]
    OwnerChanged {
        /// The run.
        id: RunId,
    },
    /// A transition guarded on an expired lease lost: the owner renewed its lease first
    /// (nothing written).
    #[error("the lease of run {id}'s owner has not expired")]
    LeaseHeld {
        /// The run.
        id: RunId,
    },
    /// The backend failed (I/O, SQL, a newer schema, a corrupt file, an unreachable server …).
    #[error("{message}")]
    Backend {
        /// What failed, in words; it names the file when there is one.
        message: String,
        /// The backend's own error, when there is one.
        #[source]
        source: Option<SharedError>,
    },
}

impl StoreError {
    /// A [`StoreError::Backend`] that says `message` and keeps `source` as its cause.
    pub fn backend(
        message: impl Into<String>,
        source: impl StdError + Send + Sync + 'static,
    ) -> Self {
        Self::Backend {
            message: message.into(),
            source: Some(Arc::new(source)),
        }
    }

    /// The error the port promises for a transition that [`Run::apply`] refused.
    pub fn refused(id: &RunId, error: crate::run::ApplyError) -> Self {
        use crate::run::ApplyError;
        match error {
            ApplyError::StatusMismatch { expected, actual } => Self::Conflict {
                id: id.clone(),
                expected,
                actual,
            },
            ApplyError::NotAnEdge { from, to } => Self::InvalidTransition {
                id: id.clone(),
                from,
                to,
            },
            ApplyError::OwnerChanged => Self::OwnerChanged { id: id.clone() },
            ApplyError::LeaseHeld => Self::LeaseHeld { id: id.clone() },
        }
    }

    /// [`ErrorCode::RunNotFound`] for [`StoreError::NotFound`], [`ErrorCode::StoreError`] for every
    /// other variant.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::NotFound(_) => ErrorCode::RunNotFound,
            Self::Conflict { .. }
            | Self::InvalidTransition { .. }
            | Self::OwnerChanged { .. }
            | Self::LeaseHeld { .. }
            | Self::Backend { .. } => ErrorCode::StoreError,
        }
    }
}

/// Durable record of runs and their events. The machine lock lives here: at most one pending
/// or running run per machine, enforced atomically by the store itself.
///
/// Leases are kept by **the store's own clock** ([`RunStore::now`]): a lease is set and
/// renewed to the store's "now" plus its duration, and a transition guarded on an expired
/// lease is checked against the store's "now" inside its transaction, so clock skew between
/// the controllers that share a store does not matter.
#[async_trait]
pub trait RunStore: Send + Sync + fmt::Debug {
    /// The store's own clock: the time the store sets and compares leases with.
    ///
    /// # Errors
    /// [`StoreError::Backend`].
    async fn now(&self) -> Result<Timestamp, StoreError>;

    /// Atomically records `new` as a pending run on `new.machine` unless that machine is busy
    /// (a run holds it, or live runs wait for it), in which case what makes it busy is returned
    /// and nothing is written: [`RunStore::claim_in`] on that one machine, without waiting.
    ///
    /// # Errors
    /// [`StoreError::Backend`] on any backend failure; never a duplicate of an active run.
    async fn claim(&self, new: NewRun) -> Result<Claim, StoreError> {
        let on = ClaimOn::now(new.machine.clone());
        match self.claim_in(new, &on).await? {
            Claimed::Created(run) => Ok(Claim::Created(run)),
            Claimed::Existing(run) => Ok(Claim::Active(run)),
            Claimed::Busy(mut runs) if !runs.is_empty() => Ok(Claim::Active(runs.remove(0))),
            Claimed::Busy(_) | Claimed::Queued(_) => Err(StoreError::Backend {
                message: "the store answered a claim that may not wait with a queue".to_owned(),
                source: None,
            }),
        }
    }

    /// Atomically, by the decisions of [`crate::queue::claim_choice`] over the candidates'
    /// states at the store's now: returns a live run with `new`'s hash on a candidate
    /// ([`crate::queue::is_same_live_run`]); else records `new` as a pending run on the least
    /// recently used free candidate ([`Run::pending`]); else, when `on.wait`, records it queued
    /// for every candidate with the next arrival number ([`Run::queued`]); else returns what
    /// makes them busy. The creation is appended to the run's events. `new.machine` must be
    /// the first candidate, and `new.os`/`new.entrypoint` fit every candidate.
    ///
    /// # Errors
    /// [`StoreError::Backend`] on any backend failure; never a second active run of a machine.
    async fn claim_in(&self, new: NewRun, on: &ClaimOn) -> Result<Claimed, StoreError>;

    /// Grants a queued run a machine when one is due to it (by [`crate::queue::grant_choice`]
    /// at the store's now), atomically with every other claim and grant: the run becomes
    /// pending there ([`Run::grant`]) and its event is appended. Returns the run as it is then:
    /// pending if granted now, still queued if it must wait, or whatever status it had (a run
    /// that is not queued is returned unchanged).
    ///
    /// # Errors
    /// [`StoreError::NotFound`]; [`StoreError::Backend`].
    async fn try_grant(&self, id: &RunId) -> Result<Run, StoreError>;

    /// The states of `machines` (holder, waiters in arrival order, newest run), for showing a
    /// queue; in the order given.
    ///
    /// # Errors
    /// [`StoreError::Backend`].
    async fn machine_states(
        &self,
        machines: &[MachineName],
    ) -> Result<Vec<MachineState>, StoreError>;

    /// A token for the changes of runs this store has told about so far; hand it to
    /// [`RunStore::wait_for_change`] to wait for a later one. Take it **before** looking at the
    /// queue, so that a change in between is not missed. The default (a store that tells
    /// nothing) is always 0.
    fn change_token(&self) -> u64 {
        0
    }

    /// Whether [`RunStore::wait_for_change`] returns as soon as runs change (a store with
    /// notifications), so that waiters need only a slow poll as a safety net. The default (a
    /// store that is polled) is `false`.
    fn tells_changes(&self) -> bool {
        false
    }

    /// Returns after at most `timeout`, and as soon as the store can tell that some run changed
    /// status since `token` was taken (a machine freed, a waiter left or arrived), so that a
    /// waiter tries again at once. The default just sleeps: a store without notifications is
    /// polled.
    async fn wait_for_change(&self, token: u64, timeout: Duration) {
        let _ = token;
        tokio::time::sleep(timeout).await;
    }

    /// The run with this id.
    ///
    /// # Errors
    /// [`StoreError::NotFound`] for an unknown id; [`StoreError::Backend`].
    async fn get(&self, id: &RunId) -> Result<Run, StoreError>;

    /// The runs whose id starts with `prefix`, newest first, at most `limit` of them: what a
    /// command looks up when a user types the start of an id.
    ///
    /// # Errors
    /// [`StoreError::Backend`]; no match is an empty list, not an error.
    async fn find_by_id_prefix(
        &self,
        prefix: &RunIdPrefix,
        limit: usize,
    ) -> Result<Vec<Run>, StoreError>;

    /// Compare-and-set: applies `change` (with [`Run::apply`], at the store's now) only if the
    /// run's status is `change.from` (and its owner, and lease, match `change.owner_guard`), and
    /// appends the event, atomically. Returns the updated run.
    ///
    /// # Errors
    /// [`StoreError::NotFound`]; [`StoreError::Conflict`] when the status is not `change.from`
    /// (nothing written); [`StoreError::InvalidTransition`] when the lifecycle has no edge
    /// `from → to`; [`StoreError::OwnerChanged`] when the owner guard fails (nothing
    /// written); [`StoreError::LeaseHeld`] when the guard needs an expired lease and the lease
    /// has not expired by the store's clock (nothing written); [`StoreError::Backend`].
    async fn transition(&self, id: &RunId, change: Transition) -> Result<Run, StoreError>;

    /// Records an [`Amendment`] to a terminal run (applied with [`Run::amend`]) and appends its
    /// event, atomically. Returns the updated run.
    ///
    /// # Errors
    /// [`StoreError::NotFound`]; [`StoreError::Conflict`] when the run is not terminal (nothing
    /// written); [`StoreError::Backend`].
    async fn amend(&self, id: &RunId, amendment: Amendment) -> Result<Run, StoreError>;

    /// Records the absolute remote run folder of a run.
    ///
    /// # Errors
    /// [`StoreError::NotFound`]; [`StoreError::Backend`].
    async fn set_remote_dir(&self, id: &RunId, remote_dir: &str) -> Result<(), StoreError>;

    /// Makes `owner` the owner of a non-terminal run (a detached worker taking it over), holding
    /// a lease until the store's now plus `lease`. A pending cancel request stays.
    ///
    /// # Errors
    /// [`StoreError::NotFound`]; [`StoreError::Conflict`] when the run is already terminal
    /// (`expected` is then `pending`); [`StoreError::Backend`].
    async fn set_owner(
        &self,
        id: &RunId,
        owner: &RunOwner,
        lease: Duration,
    ) -> Result<Run, StoreError>;

    /// The owner's heartbeat: extends the lease of an active run that `owner` still owns to the
    /// store's now plus `lease` (also when it has expired but nobody ended the run yet), and
    /// returns the run, so that the owner sees a cancel request. No event is written.
    ///
    /// # Errors
    /// [`StoreError::NotFound`]; [`StoreError::Conflict`] when the run is terminal (`expected` is
    /// then `pending`); [`StoreError::OwnerChanged`] when another process owns it now (both:
    /// nothing written, and the caller must stop driving the run); [`StoreError::Backend`].
    async fn renew_lease(
        &self,
        id: &RunId,
        owner: &RunOwner,
        lease: Duration,
    ) -> Result<Run, StoreError>;

    /// Records a request to cancel an active run, at the store's now, for its owner to act on
    /// at its next heartbeat. A run already asked keeps its first request time; a terminal run
    /// is returned unchanged. No event is written. Returns the run.
    ///
    /// # Errors
    /// [`StoreError::NotFound`]; [`StoreError::Backend`].
    async fn request_cancel(&self, id: &RunId) -> Result<Run, StoreError>;

    /// Runs matching `filter`, newest first.
    ///
    /// # Errors
    /// [`StoreError::Backend`].
    async fn list(&self, filter: &RunFilter) -> Result<Vec<Run>, StoreError>;

    /// The event history of a run, oldest first, starting with its creation.
    ///
    /// # Errors
    /// [`StoreError::NotFound`]; [`StoreError::Backend`].
    async fn events(&self, id: &RunId) -> Result<Vec<RunEventRecord>, StoreError>;

    /// Every queued, pending or running run, oldest first (for the reaper).
    ///
    /// # Errors
    /// [`StoreError::Backend`].
    async fn active_runs(&self) -> Result<Vec<Run>, StoreError>;
}
