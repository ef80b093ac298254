//! A run store that keeps everything in memory, behind one lock.
//!
//! The lock makes each operation atomic, which is what the port asks: a claim either creates
//! the run or returns the machine's active one, and a transition is a compare-and-set whose
//! event is appended in the same step. The core decides what a transition records
//! ([`Run::apply`]); the store only keeps the result. Its clock, which leases follow, is the
//! system clock.

use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use testfleet_core::ports::{Claim, RunFilter, RunStore, StoreError};
use testfleet_core::run::{Amendment, NewRun, Run, RunEventRecord, RunOwner, Transition};
use testfleet_core::{RunId, RunIdPrefix, Timestamp};

/// Runs in memory, oldest first, each with its event history.
#[derive(Debug, Default)]
pub struct MemoryStore(Mutex<Vec<(Run, Vec<RunEventRecord>)>>);

impl MemoryStore {
    /// Runs `work` on the run `id` under the lock.
    fn with_run<T>(
        &self,
        id: &RunId,
        work: impl FnOnce(&mut (Run, Vec<RunEventRecord>)) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut runs = self.0.lock().unwrap_or_else(|poison| poison.into_inner());
        match runs.iter_mut().find(|(run, _)| &run.id == id) {
            Some(entry) => work(entry),
            None => Err(StoreError::NotFound(id.clone())),
        }
    }

    fn runs(&self) -> Vec<Run> {
        let runs = self.0.lock().unwrap_or_else(|poison| poison.into_inner());
        runs.iter().map(|(run, _)| run.clone()).collect()
    }
}

#[async_trait]
impl RunStore for MemoryStore {
    async fn now(&self) -> Result<Timestamp, StoreError> {
        Ok(Timestamp::now())
    }

    async fn claim(&self, new: NewRun) -> Result<Claim, StoreError> {
        let mut runs = self.0.lock().unwrap_or_else(|poison| poison.into_inner());
        let held = runs
            .iter()
            .find(|(run, _)| run.machine == new.machine && run.status.is_active());
        if let Some((active, _)) = held {
            return Ok(Claim::Active(active.clone()));
        }
        let run = Run::pending(new, Timestamp::now());
        runs.push((run.clone(), vec![RunEventRecord::created(&run)]));
        Ok(Claim::Created(run))
    }

    async fn get(&self, id: &RunId) -> Result<Run, StoreError> {
        self.with_run(id, |(run, _)| Ok(run.clone()))
    }

    async fn find_by_id_prefix(
        &self,
        prefix: &RunIdPrefix,
        limit: usize,
    ) -> Result<Vec<Run>, StoreError> {
        let mut runs: Vec<Run> = self
            .runs()
            .into_iter()
            .filter(|run| prefix.matches(&run.id))
            .collect();
        runs.sort_by(|a, b| b.id.cmp(&a.id));
        runs.truncate(limit);
        Ok(runs)
    }

    async fn transition(&self, id: &RunId, change: Transition) -> Result<Run, StoreError> {
        self.with_run(id, |(run, events)| {
            let mut next = run.clone();
            let event = next
                .apply(&change, Timestamp::now())
                .map_err(|e| StoreError::refused(id, e))?;
            events.push(event);
            *run = next.clone();
            Ok(next)
        })
    }

    async fn amend(&self, id: &RunId, amendment: Amendment) -> Result<Run, StoreError> {
        self.with_run(id, |(run, events)| {
            let mut next = run.clone();
            let event = next
                .amend(&amendment)
                .map_err(|e| StoreError::refused(id, e))?;
            events.push(event);
            *run = next.clone();
            Ok(next)
        })
    }

    async fn set_remote_dir(&self, id: &RunId, remote_dir: &str) -> Result<(), StoreError> {
        self.with_run(id, |(run, _)| {
            run.remote_dir = Some(remote_dir.to_owned());
            Ok(())
        })
    }

    async fn set_owner(
        &self,
        id: &RunId,
        owner: &RunOwner,
        lease: Duration,
    ) -> Result<Run, StoreError> {
        self.with_run(id, |(run, _)| {
            run.hand_over(owner, lease, Timestamp::now())
                .map_err(|e| StoreError::refused(id, e))?;
            Ok(run.clone())
        })
    }

    async fn renew_lease(
        &self,
        id: &RunId,
        owner: &RunOwner,
        lease: Duration,
    ) -> Result<Run, StoreError> {
        self.with_run(id, |(run, _)| {
            run.renew_lease(owner, lease, Timestamp::now())
                .map_err(|e| StoreError::refused(id, e))?;
            Ok(run.clone())
        })
    }

    async fn request_cancel(&self, id: &RunId) -> Result<Run, StoreError> {
        self.with_run(id, |(run, _)| {
            run.request_cancel(Timestamp::now());
            Ok(run.clone())
        })
    }

    async fn list(&self, filter: &RunFilter) -> Result<Vec<Run>, StoreError> {
        let wanted = |run: &Run| {
            filter.machine.as_ref().is_none_or(|m| &run.machine == m)
                && filter.status.is_none_or(|s| run.status == s)
        };
        let mut runs: Vec<Run> = self.runs().into_iter().filter(wanted).collect();
        runs.sort_by(|a, b| b.id.cmp(&a.id));
        runs.truncate(filter.limit.unwrap_or(usize::MAX));
        Ok(runs)
    }

    async fn events(&self, id: &RunId) -> Result<Vec<RunEventRecord>, StoreError> {
        self.with_run(id, |(_, events)| Ok(events.clone()))
    }

    async fn active_runs(&self) -> Result<Vec<Run>, StoreError> {
        let mut active: Vec<Run> = self
            .runs()
            .into_iter()
            .filter(|r| r.status.is_active())
            .collect();
        active.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(active)
    }
}
