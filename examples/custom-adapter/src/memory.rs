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
use testfleet_core::ports::{Claimed, RunFilter, RunStore, StoreError};
use testfleet_core::queue::{
    ClaimDecision, ClaimOn, MachineState, claim_choice, grant_choice, is_same_live_run,
};
use testfleet_core::run::{
    Amendment, NewRun, Run, RunEventRecord, RunOwner, RunStatus, Transition,
};
use testfleet_core::{MachineName, RunId, RunIdPrefix, Timestamp};

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

    async fn claim_in(&self, new: NewRun, on: &ClaimOn) -> Result<Claimed, StoreError> {
        let mut runs = self.0.lock().unwrap_or_else(|poison| poison.into_inner());
        let now = Timestamp::now();
        let same = runs
            .iter()
            .map(|(run, _)| run)
            .find(|run| is_same_live_run(run, &new, &on.machines, now))
            .cloned();
        let states: Vec<MachineState> = on
            .machines
            .iter()
            .map(|machine| machine_state(&runs, machine))
            .collect();
        let run = match claim_choice(on, &states, same, now) {
            ClaimDecision::Existing(run) => return Ok(Claimed::Existing(*run)),
            ClaimDecision::Busy(runs) => return Ok(Claimed::Busy(runs)),
            ClaimDecision::Create(machine) => Run::pending(NewRun { machine, ..new }, now),
            ClaimDecision::Queue => {
                let seq = runs
                    .iter()
                    .filter_map(|(run, _)| run.queue_seq)
                    .max()
                    .unwrap_or(0)
                    + 1;
                Run::queued(new, on.machines.clone(), seq, now)
            }
        };
        runs.push((run.clone(), vec![RunEventRecord::created(&run)]));
        Ok(if run.status == RunStatus::Queued {
            Claimed::Queued(run)
        } else {
            Claimed::Created(run)
        })
    }

    async fn try_grant(&self, id: &RunId) -> Result<Run, StoreError> {
        let mut runs = self.0.lock().unwrap_or_else(|poison| poison.into_inner());
        let now = Timestamp::now();
        let Some(index) = runs.iter().position(|(run, _)| run.id == *id) else {
            return Err(StoreError::NotFound(id.clone()));
        };
        let run = runs[index].0.clone();
        if run.status != RunStatus::Queued {
            return Ok(run);
        }
        let states: Vec<MachineState> = run
            .waiting_for
            .iter()
            .map(|machine| machine_state(&runs, machine))
            .collect();
        let Some(machine) = grant_choice(&run, &states, now) else {
            return Ok(run);
        };
        let mut granted = run;
        let event = granted
            .grant(&machine, now)
            .map_err(|e| StoreError::refused(id, e))?;
        runs[index].0 = granted.clone();
        runs[index].1.push(event);
        Ok(granted)
    }

    async fn machine_states(
        &self,
        machines: &[MachineName],
    ) -> Result<Vec<MachineState>, StoreError> {
        let runs = self.0.lock().unwrap_or_else(|poison| poison.into_inner());
        Ok(machines
            .iter()
            .map(|machine| machine_state(&runs, machine))
            .collect())
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

/// A machine's holder, waiters (arrival order) and newest started run.
fn machine_state(runs: &[(Run, Vec<RunEventRecord>)], machine: &MachineName) -> MachineState {
    let runs = runs.iter().map(|(run, _)| run);
    let mut waiting: Vec<Run> = runs
        .clone()
        .filter(|run| run.status == RunStatus::Queued && run.waiting_for.contains(machine))
        .cloned()
        .collect();
    waiting.sort_by_key(|run| run.queue_seq);
    MachineState {
        machine: machine.clone(),
        holder: runs
            .clone()
            .find(|run| run.machine == *machine && run.status.holds_machine())
            .cloned(),
        waiting,
        newest: runs
            .filter(|run| run.machine == *machine && run.started_at.is_some())
            .map(|run| run.id.clone())
            .max(),
    }
}
