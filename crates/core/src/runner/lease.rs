//! The owner's lease: while a runner drives a run, a heartbeat renews the run's lease in the
//! store and looks for a cancel request (`docs/contract.md#owners-and-the-reaper`).
//!
//! - A cancel request recorded by another controller cancels this run exactly as SIGTERM
//!   would: the remote tree is killed, the artifacts are still fetched.
//! - A renewal the store refuses (the run was reaped, or another process owns it) means the
//!   run was taken over: the heartbeat stops this runner at once, and every later change it
//!   tries is guarded on its own ownership, so it never touches the run again.
//! - A store that cannot be reached is only logged: the next beat tries again, and the run
//!   goes on meanwhile.

use std::convert::Infallible;
use std::time::Duration;

use crate::code::{ErrorCode, error_chain};
use crate::error::DispatchError;
use crate::hash::DirManifest;
use crate::ports::StoreError;
use crate::run::{Run, RunOwner, RunStatus, Transition};

use super::{MachineSpec, RunObserver, Runner, StopSignals};

/// How long an owner's lease lasts and how often it renews it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseSettings {
    /// How long a lease lasts from its last renewal, by the store's clock. Once it has passed,
    /// any controller's reaper may end the run as `WORKER_LOST`.
    pub duration: Duration,
    /// Time between two renewals (and two looks for a cancel request). Well below `duration`,
    /// so that a beat or two may fail without losing the run.
    pub heartbeat: Duration,
}

impl LeaseSettings {
    /// A lease of 30 s.
    pub const DEFAULT_DURATION: Duration = Duration::from_secs(30);
    /// A heartbeat every 10 s.
    pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(10);
}

impl Default for LeaseSettings {
    fn default() -> Self {
        Self {
            duration: Self::DEFAULT_DURATION,
            heartbeat: Self::DEFAULT_HEARTBEAT,
        }
    }
}

/// The lease of one run that this runner drives.
pub(super) struct HeldLease {
    id: crate::RunId,
    /// The run's own stop signals: the caller's, plus what the heartbeat decides.
    signals: StopSignals,
    owner: Option<RunOwner>,
}

impl HeldLease {
    pub(super) fn new(run: &Run, signals: &StopSignals) -> Self {
        // Child tokens: the caller's signals still reach this run, and what the heartbeat
        // decides reaches only this run (not the other runs of a fan-out).
        Self {
            id: run.id.clone(),
            signals: StopSignals {
                cancel: signals.cancel.child_token(),
                abandon: signals.abandon.child_token(),
            },
            owner: run.owner(),
        }
    }

    /// The stop signals to drive the run with.
    pub(super) fn signals(&self) -> &StopSignals {
        &self.signals
    }

    /// `change`, guarded on the owner that holds this lease: once the run was taken over, the
    /// change is refused and nothing is written.
    pub(super) fn guard(&self, change: Transition) -> Transition {
        change.with_owner_guard(self.owner.clone())
    }
}

impl Runner {
    /// Carries out a pending run: dial, start, upload, exec (with the timeout and stop
    /// signals), download the artifacts, clean up, and record the final status. A run that is
    /// no longer pending is returned as it is.
    ///
    /// While it does, the owner's heartbeat renews the run's lease (a first renewal at once,
    /// then one every [`LeaseSettings::heartbeat`]) and acts on a cancel request recorded in
    /// the store. If the run is taken over (reaped, or owned by another process), the runner
    /// stops at once and writes nothing more to the run.
    ///
    /// `manifest` is the one the run was claimed with; when `None` (a detached worker) the test
    /// directory is hashed again and must still match.
    ///
    /// # Errors
    /// [`DispatchError::Store`] when the store fails; every other failure is recorded in the
    /// returned run.
    pub async fn execute(
        &self,
        run: Run,
        machine: &MachineSpec,
        manifest: Option<&DirManifest>,
        signals: &StopSignals,
        observer: &dyn RunObserver,
    ) -> Result<Run, DispatchError> {
        if run.status != RunStatus::Pending {
            return Ok(run);
        }
        let lease = HeldLease::new(&run, signals);
        tokio::select! {
            biased;
            executed = self.execute_leased(run, machine, manifest, &lease, observer) => executed,
            never = self.heartbeat(&lease) => match never {},
        }
    }

    /// [`Runner::end_pending`], guarded on the lease's owner.
    pub(super) async fn end_owned_pending(
        &self,
        lease: &HeldLease,
        run: &Run,
        status: RunStatus,
        code: ErrorCode,
        message: String,
    ) -> Result<Run, StoreError> {
        let change =
            Transition::new(RunStatus::Pending, status, self.clock.now()).with_error(code, message);
        self.finish_with(&run.id, lease.guard(change)).await
    }
}

impl Runner {
    /// Renews the lease every heartbeat until the run is taken over; never returns (it ends
    /// when the execution beside it does).
    pub(super) async fn heartbeat(&self, lease: &HeldLease) -> Infallible {
        if let Some(owner) = &lease.owner {
            self.beat_until_taken_over(lease, owner).await;
        }
        std::future::pending().await
    }

    async fn beat_until_taken_over(&self, lease: &HeldLease, owner: &RunOwner) {
        let (store, id, settings, signals) = (
            self.store.as_ref(),
            &lease.id,
            self.config.lease,
            &lease.signals,
        );
        let mut ticks = tokio::time::interval(settings.heartbeat);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            match store.renew_lease(id, owner, settings.duration).await {
                Ok(run) => {
                    if run.cancel_requested_at.is_some() && !signals.cancel.is_cancelled() {
                        tracing::info!(run = %id, "a cancel was requested through the store");
                        signals.cancel.cancel();
                    }
                }
                Err(
                    error @ (StoreError::Conflict { .. }
                    | StoreError::OwnerChanged { .. }
                    | StoreError::NotFound(_)),
                ) => {
                    tracing::warn!(
                        run = %id,
                        "the run was taken over ({}); stopping without touching it",
                        error_chain(&error)
                    );
                    signals.abandon.cancel();
                    signals.cancel.cancel();
                    return;
                }
                Err(error) => {
                    tracing::warn!(
                        run = %id,
                        "failed to renew the lease: {}; trying again in {}",
                        error_chain(&error),
                        humantime::format_duration(settings.heartbeat)
                    );
                }
            }
        }
    }
}
