//! Watching runs from outside: reaping lost owners and waiting until runs are terminal. Every
//! command that reads or waits for runs goes through [`Watch`].

use std::time::Duration;

use crate::ids::RunId;
use crate::ports::{Clock, RunStore, StoreError};
use crate::run::Run;

use super::reaper::{OwnerProbe, reap_lost_runs};

/// Told about the runs the reaper ended, so that the application can finish them on their
/// machines (see [`Runner::finish_lost_run`](super::Runner::finish_lost_run)).
pub trait ReapedRuns: Send + Sync {
    /// The reaper just ended these runs (`WORKER_LOST`).
    fn reaped(&self, runs: &[Run]);
}

/// Reads runs the way a watcher must: reaping runs whose owner is gone first, so that a crashed
/// owner never shows as running.
#[derive(Clone, Copy)]
pub struct Watch<'a> {
    /// Where the runs are.
    pub store: &'a dyn RunStore,
    /// The clock the reaper records with.
    pub clock: &'a dyn Clock,
    /// How the reaper tells a live owner.
    pub probe: &'a dyn OwnerProbe,
    /// Time between two looks while waiting.
    pub poll: Duration,
    /// Told about every run the reaper ends, when set.
    pub reaped: Option<&'a dyn ReapedRuns>,
    /// Reap at all: `false` for a store that cannot be written (runs are then read as
    /// recorded).
    pub reap: bool,
}

impl std::fmt::Debug for Watch<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch")
            .field("store", &self.store)
            .field("poll", &self.poll)
            .finish_non_exhaustive()
    }
}

impl Watch<'_> {
    /// Reaps runs whose owner is gone; returns the runs it ended.
    ///
    /// # Errors
    /// [`StoreError::Backend`].
    pub async fn reap(&self) -> Result<Vec<Run>, StoreError> {
        if !self.reap {
            return Ok(Vec::new());
        }
        let reaped = reap_lost_runs(self.store, self.clock, self.probe).await?;
        if let Some(hook) = self.reaped
            && !reaped.is_empty()
        {
            hook.reaped(&reaped);
        }
        Ok(reaped)
    }

    /// Reaps, then reads the runs `ids`, in that order.
    ///
    /// # Errors
    /// [`StoreError::NotFound`] for an unknown id; [`StoreError::Backend`].
    pub async fn runs(&self, ids: &[RunId]) -> Result<Vec<Run>, StoreError> {
        self.reap().await?;
        let mut runs = Vec::with_capacity(ids.len());
        for id in ids {
            runs.push(self.store.get(id).await?);
        }
        Ok(runs)
    }

    /// Looks at the runs `ids` every [`Watch::poll`] until every one is terminal, or until
    /// `give_up` completes (a deadline, a cancellation); returns the runs as they are then.
    /// The runs are read once more after giving up, so nothing that ended meanwhile is missed.
    ///
    /// # Errors
    /// As [`Watch::runs`].
    pub async fn until_terminal(
        &self,
        ids: &[RunId],
        give_up: impl Future<Output = ()>,
    ) -> Result<Vec<Run>, StoreError> {
        tokio::pin!(give_up);
        let mut gave_up = false;
        loop {
            let runs = self.runs(ids).await?;
            if gave_up || runs.iter().all(|run| run.status.is_terminal()) {
                return Ok(runs);
            }
            tokio::select! {
                () = tokio::time::sleep(self.poll) => {}
                () = &mut give_up => gave_up = true,
            }
        }
    }
}
