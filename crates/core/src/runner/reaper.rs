//! The reaper: a non-terminal run whose owner is gone becomes `interrupted` with
//! `WORKER_LOST`, so a crashed process never locks a machine
//! (`docs/contract.md#owners-and-the-reaper`).
//!
//! An owner is gone when it ran on this controller and its process has exited (the probe
//! says so at once), or when its lease has expired by the store's clock (whatever controller
//! it ran on: only its heartbeat could have told that it is alive).

use crate::code::ErrorCode;
use crate::ports::{Clock, RunStore, StoreError};
use crate::run::{LifecycleEvent, Run, RunOwner, Transition, transition};
use crate::time::Timestamp;

/// What the local process table says about an owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    /// The owner runs on this controller and is alive (the same process that was recorded).
    Alive,
    /// The owner ran on this controller and its process is gone.
    Dead,
    /// The owner runs on another controller: only its lease can tell.
    Elsewhere,
}

/// Tells whether the process that owns a run is still alive.
pub trait OwnerProbe: Send + Sync {
    /// What is known about `owner` from here.
    fn liveness(&self, owner: &RunOwner) -> Liveness;
}

/// Marks every non-terminal run whose owner is gone `interrupted` with `WORKER_LOST`: the
/// owner ran here and its process is gone, or its lease expired by the store's clock. Returns
/// the runs it ended.
///
/// # Errors
/// [`StoreError::Backend`] when the store fails.
pub async fn reap_lost_runs(
    store: &dyn RunStore,
    clock: &dyn Clock,
    probe: &dyn OwnerProbe,
) -> Result<Vec<Run>, StoreError> {
    let mut reaped = Vec::new();
    // Read once, and only when a lease must be looked at.
    let mut store_now: Option<Timestamp> = None;
    for run in store.active_runs().await? {
        let Ok(to) = transition(run.status, LifecycleEvent::Interrupted) else {
            continue;
        };
        let owner = run.owner();
        // Guarded on the owner seen here: if the run was handed to another process since (a
        // detached worker taking over from the command that claimed it), it is not lost. A
        // lease decision is guarded on the lease too, checked by the store's clock at the
        // write, so a renewal that comes first wins.
        let (guarded, message) = match &owner {
            None => (
                Transition::new(run.status, to, clock.now()).with_owner_guard(None),
                "the process that owned this run (no owner was recorded) is gone; the run was \
                 abandoned"
                    .to_owned(),
            ),
            Some(found) => match probe.liveness(found) {
                Liveness::Dead => (
                    Transition::new(run.status, to, clock.now()).with_owner_guard(owner.clone()),
                    format!(
                        "the process that owned this run ({}) is gone; the run was abandoned",
                        describe(found)
                    ),
                ),
                Liveness::Alive | Liveness::Elsewhere => {
                    let now = match store_now {
                        Some(now) => now,
                        None => *store_now.insert(store.now().await?),
                    };
                    if !run.lease_expired(now) {
                        continue;
                    }
                    let expired_at = run
                        .lease_expires_at
                        .map_or_else(String::new, |at| format!(" at {at}"));
                    (
                        Transition::new(run.status, to, clock.now())
                            .with_expired_lease_guard(owner.clone()),
                        format!(
                            "the lease of the process that owned this run ({}) expired{expired_at} \
                             without renewal; the run was abandoned",
                            describe(found)
                        ),
                    )
                }
            },
        };
        let change = guarded.with_error(ErrorCode::WorkerLost, message);
        match store.transition(&run.id, change).await {
            Ok(run) => {
                tracing::info!(run = %run.id, machine = %run.machine, "reaped a run whose owner is gone");
                reaped.push(run);
            }
            // The owner finished it, handed it over, or renewed its lease meanwhile.
            Err(
                StoreError::Conflict { .. }
                | StoreError::OwnerChanged { .. }
                | StoreError::LeaseHeld { .. },
            ) => {}
            Err(error) => return Err(error),
        }
    }
    Ok(reaped)
}

/// `pid N on controller C`, or `pid N` for an owner recorded without its controller.
fn describe(owner: &RunOwner) -> String {
    match &owner.host {
        Some(host) => format!("pid {} on controller {host}", owner.pid),
        None => format!("pid {}", owner.pid),
    }
}
