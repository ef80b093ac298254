//! Waiting for a machine (`docs/contract.md#the-queue`): a queued run keeps its owner's lease,
//! asks the store for its grant whenever the store says something changed (or at a poll), and
//! gives up when its wait runs out or it is cancelled.

use std::time::{Duration, Instant};

use crate::code::ErrorCode;
use crate::error::DispatchError;
use crate::ports::StoreError;
use crate::queue::places;
use crate::run::{Run, RunStatus, Transition};

use super::lease::HeldLease;
use super::{RunObserver, Runner, StopSignals};

/// How often the run at the head of a queue asks again on a store that is polled.
const HEAD_POLL: Duration = Duration::from_millis(20);
/// How often it asks on a store that tells every change ([`RunStore::tells_changes`]): only a
/// safety net for a notification that never came.
///
/// [`RunStore::tells_changes`]: crate::ports::RunStore::tells_changes
const TOLD_POLL: Duration = Duration::from_millis(250);
/// How often a run behind others asks again.
const BEHIND_POLL: Duration = Duration::from_millis(500);
/// How often the observer hears where the run stands (and the poll rate is decided).
const LOOK_EVERY: Duration = Duration::from_secs(1);

impl Runner {
    /// Waits until the store grants queued `run` a machine, and returns it then: pending on
    /// that machine, ready for [`Runner::execute`]. Gives up after `limit` (the run ends
    /// `interrupted`/`QUEUE_TIMEOUT`) or on `signals.cancel` (`interrupted`/`INTERRUPTED`), and
    /// returns a run that another process ended meanwhile (a `cancel`, a reaper) as it is.
    /// While it waits, the owner's heartbeat keeps the lease, so that the run keeps its place.
    ///
    /// # Errors
    /// [`DispatchError::Store`] when the store fails.
    pub async fn wait_for_grant(
        &self,
        run: Run,
        limit: Option<Duration>,
        signals: &StopSignals,
        observer: &dyn RunObserver,
    ) -> Result<Run, DispatchError> {
        if run.status != RunStatus::Queued {
            return Ok(run);
        }
        let lease = HeldLease::new(&run, signals);
        tokio::select! {
            biased;
            waited = self.wait_leased(run, limit, &lease, observer) => waited,
            never = self.heartbeat(&lease) => match never {},
        }
    }

    async fn wait_leased(
        &self,
        run: Run,
        limit: Option<Duration>,
        lease: &HeldLease,
        observer: &dyn RunObserver,
    ) -> Result<Run, DispatchError> {
        let started = Instant::now();
        let signals = lease.signals();
        let head_poll = if self.store.tells_changes() {
            TOLD_POLL
        } else {
            HEAD_POLL
        };
        let mut poll = head_poll;
        let mut next_look = Instant::now();
        loop {
            if signals.abandon.is_cancelled() {
                // A heartbeat found another owner: the run is not ours to grant or to end.
                return Err(StoreError::OwnerChanged { id: run.id.clone() }.into());
            }
            let waited = started.elapsed();
            // Before asking for a grant: a cancelled run is never granted by its own owner.
            if signals.cancel.is_cancelled() {
                let message = format!(
                    "the run was cancelled while it waited {} for a machine",
                    humantime::format_duration(round(waited))
                );
                return self
                    .end_queued(lease, &run, ErrorCode::Interrupted, message, observer)
                    .await;
            }
            let token = self.store.change_token();
            let current = self.store.try_grant(&run.id).await?;
            if current.status != RunStatus::Queued {
                if current.status == RunStatus::Pending {
                    tracing::info!(run = %current.id, machine = %current.machine, "granted");
                    observer.status(&current);
                }
                return Ok(current);
            }
            if let Some(limit) = limit
                && waited >= limit
            {
                let machines: Vec<&str> = current.waiting_for.iter().map(|m| m.as_str()).collect();
                let message = format!(
                    "waited {} for {} without being granted it",
                    humantime::format_duration(limit),
                    machines.join(" or ")
                );
                return self
                    .end_queued(lease, &current, ErrorCode::QueueTimeout, message, observer)
                    .await;
            }
            if Instant::now() >= next_look {
                next_look = Instant::now() + LOOK_EVERY;
                let states = self.store.machine_states(&current.waiting_for).await?;
                let now = self.store.now().await?;
                let places = places(&current, &states, now);
                // The run next in line for a machine asks often; one behind others, rarely.
                poll = if places.iter().any(|place| place.ahead == 0) {
                    head_poll
                } else {
                    BEHIND_POLL
                };
                observer.waiting(&current, &places, waited);
            }
            let until_limit = limit.map_or(poll, |limit| limit.saturating_sub(waited));
            tokio::select! {
                () = signals.cancel.cancelled() => {}
                () = self.store.wait_for_change(token, poll.min(until_limit)) => {}
            }
        }
    }

    /// Ends a queued run `interrupted` with `code`, guarded on its owner; a run that another
    /// process ended or took over meanwhile is returned as stored.
    async fn end_queued(
        &self,
        lease: &HeldLease,
        run: &Run,
        code: ErrorCode,
        message: String,
        observer: &dyn RunObserver,
    ) -> Result<Run, DispatchError> {
        let change = Transition::new(RunStatus::Queued, RunStatus::Interrupted, self.clock.now())
            .with_error(code, message);
        let ended = self.finish_with(&run.id, lease.guard(change)).await?;
        observer.status(&ended);
        Ok(ended)
    }
}

/// `waited` to the second, for messages.
fn round(waited: Duration) -> Duration {
    Duration::from_secs(waited.as_secs())
}
