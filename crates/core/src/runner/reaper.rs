//! The reaper: a non-terminal run whose owner is gone becomes `interrupted` with
//! `WORKER_LOST`, so a crashed process never locks a machine
//! (`docs/contract.md#owners-and-the-reaper`).

use crate::code::ErrorCode;
use crate::ports::{Clock, RunStore, StoreError};
use crate::run::{LifecycleEvent, Run, RunOwner, Transition, transition};

/// Tells whether the process that owns a run is still alive.
pub trait OwnerProbe: Send + Sync {
    /// Whether `owner` is alive (and is the same process that was recorded).
    fn is_alive(&self, owner: RunOwner) -> bool;
}

/// Marks every non-terminal run whose owner is gone `interrupted` with `WORKER_LOST`. Returns
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
    for run in store.active_runs().await? {
        let alive = run.owner().is_some_and(|owner| probe.is_alive(owner));
        if alive {
            continue;
        }
        let Ok(to) = transition(run.status, LifecycleEvent::Interrupted) else {
            continue;
        };
        let owner = run.owner().map_or_else(
            || "no owner was recorded".to_owned(),
            |o| format!("pid {}", o.pid),
        );
        // Guarded on the owner seen above: if the run was handed to another process since
        // (a detached worker taking over from the command that claimed it), it is not lost.
        let change = Transition::new(run.status, to, clock.now())
            .with_error(
                ErrorCode::WorkerLost,
                format!("the process that owned this run ({owner}) is gone; the run was abandoned"),
            )
            .with_owner_guard(run.owner());
        match store.transition(&run.id, change).await {
            Ok(run) => {
                tracing::info!(run = %run.id, machine = %run.machine, "reaped a run whose owner is gone");
                reaped.push(run);
            }
            // The owner finished it, or handed it over, meanwhile.
            Err(StoreError::Conflict { .. } | StoreError::OwnerChanged { .. }) => {}
            Err(error) => return Err(error),
        }
    }
    Ok(reaped)
}
