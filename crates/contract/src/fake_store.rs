//! An in-memory RunStore with the same atomic claim and compare-and-set as the real one.
//!
//! Every operation holds one mutex for its whole duration, so a claim or a transition is as
//! atomic here as an `IMMEDIATE` transaction is in SQLite. The fake passes the same contract
//! suite ([`crate::run_store`]) as every real store.
//!
//! Its clock ([`RunStore::now`]) is the system clock plus a skew that tests can set and move
//! ([`FakeStore::skew_clock`]), so that a test can show that leases follow the store's clock
//! and not the caller's, and can expire a lease without sleeping.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use testfleet_core::ports::{Claimed, RunFilter, RunStore, StoreError};
use testfleet_core::queue::{
    ClaimDecision, ClaimOn, MachineState, claim_choice, grant_choice, is_same_live_run,
};
use testfleet_core::run::{
    Amendment, ApplyError, NewRun, Run, RunEventRecord, RunOwner, RunStatus, Transition,
};
use testfleet_core::{MachineName, RunId, RunIdPrefix, Timestamp};

/// An in-memory [`RunStore`].
#[derive(Debug, Default)]
pub struct FakeStore {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Ordered by id, hence by creation time.
    runs: BTreeMap<RunId, Run>,
    events: HashMap<RunId, Vec<RunEventRecord>>,
    /// When set, every operation fails with this backend message.
    broken: Option<String>,
    /// Milliseconds added to the system clock to make this store's clock.
    skew_ms: i64,
    /// The last arrival number given to a queued run.
    queue_seq: u64,
}

impl Inner {
    fn check_broken(&self) -> Result<(), StoreError> {
        match &self.broken {
            Some(message) => Err(StoreError::Backend {
                message: message.clone(),
                source: None,
            }),
            None => Ok(()),
        }
    }

    fn now(&self) -> Timestamp {
        Timestamp::from_unix_ms(Timestamp::now().unix_ms().saturating_add(self.skew_ms))
    }

    /// A machine's holder, waiters and newest started run, as every store gathers them.
    fn machine_state(&self, machine: &MachineName) -> MachineState {
        let holder = self
            .runs
            .values()
            .find(|run| run.machine == *machine && run.status.holds_machine())
            .cloned();
        let mut waiting: Vec<Run> = self
            .runs
            .values()
            .filter(|run| run.status == RunStatus::Queued && run.waiting_for.contains(machine))
            .cloned()
            .collect();
        waiting.sort_by_key(|run| run.queue_seq);
        let newest = self
            .runs
            .values()
            .filter(|run| run.machine == *machine && run.started_at.is_some())
            .map(|run| run.id.clone())
            .max();
        MachineState {
            machine: machine.clone(),
            holder,
            waiting,
            newest,
        }
    }

    fn run_mut(&mut self, id: &RunId) -> Result<&mut Run, StoreError> {
        self.runs
            .get_mut(id)
            .ok_or_else(|| StoreError::NotFound(id.clone()))
    }
}

impl FakeStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes every later operation fail with [`StoreError::Backend`] carrying `message`
    /// (`None` heals the store). Lets tests exercise a failing store.
    pub fn set_broken(&self, message: Option<&str>) {
        self.lock().broken = message.map(str::to_owned);
    }

    /// Moves this store's clock by `skew_ms` milliseconds more (negative: back) from the
    /// system clock.
    pub fn skew_clock(&self, skew_ms: i64) {
        let mut inner = self.lock();
        inner.skew_ms = inner.skew_ms.saturating_add(skew_ms);
    }

    /// Moves this store's clock forward by `by`: leases expire without waiting.
    pub fn advance_clock(&self, by: Duration) {
        self.skew_clock(i64::try_from(by.as_millis()).unwrap_or(i64::MAX));
    }

    /// Every run, oldest first, whatever the broken state.
    pub fn all_runs(&self) -> Vec<Run> {
        self.lock().runs.values().cloned().collect()
    }

    /// Applies `change` at this store's now to the run `id`, under the lock; a refused change
    /// writes nothing.
    fn change(
        &self,
        id: &RunId,
        change: impl FnOnce(&mut Run, Timestamp) -> Result<(), ApplyError>,
    ) -> Result<Run, StoreError> {
        let mut inner = self.lock();
        inner.check_broken()?;
        let now = inner.now();
        let run = inner.run_mut(id)?;
        change(run, now).map_err(|error| StoreError::refused(id, error))?;
        Ok(run.clone())
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic in another test thread must not hide this store's state from the rest.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[async_trait]
impl RunStore for FakeStore {
    async fn now(&self) -> Result<Timestamp, StoreError> {
        let inner = self.lock();
        inner.check_broken()?;
        Ok(inner.now())
    }

    async fn claim_in(&self, new: NewRun, on: &ClaimOn) -> Result<Claimed, StoreError> {
        let mut inner = self.lock();
        inner.check_broken()?;
        let now = inner.now();
        let same = inner
            .runs
            .values()
            .find(|run| is_same_live_run(run, &new, &on.machines, now))
            .cloned();
        let states: Vec<MachineState> = on
            .machines
            .iter()
            .map(|machine| inner.machine_state(machine))
            .collect();
        let run = match claim_choice(on, &states, same, now) {
            ClaimDecision::Existing(run) => return Ok(Claimed::Existing(*run)),
            ClaimDecision::Busy(runs) => return Ok(Claimed::Busy(runs)),
            ClaimDecision::Create(machine) => {
                let mut new = new;
                new.machine = machine;
                Run::pending(new, now)
            }
            ClaimDecision::Queue => {
                inner.queue_seq += 1;
                Run::queued(new, on.machines.clone(), inner.queue_seq, now)
            }
        };
        if inner.runs.contains_key(&run.id) {
            return Err(StoreError::Backend {
                message: format!("run id {} is already recorded", run.id),
                source: None,
            });
        }
        inner
            .events
            .insert(run.id.clone(), vec![RunEventRecord::created(&run)]);
        inner.runs.insert(run.id.clone(), run.clone());
        Ok(if run.status == RunStatus::Queued {
            Claimed::Queued(run)
        } else {
            Claimed::Created(run)
        })
    }

    async fn try_grant(&self, id: &RunId) -> Result<Run, StoreError> {
        let mut inner = self.lock();
        inner.check_broken()?;
        let now = inner.now();
        let run = inner.run_mut(id)?.clone();
        if run.status != RunStatus::Queued {
            return Ok(run);
        }
        let states: Vec<MachineState> = run
            .waiting_for
            .iter()
            .map(|machine| inner.machine_state(machine))
            .collect();
        let Some(machine) = grant_choice(&run, &states, now) else {
            return Ok(run);
        };
        let mut granted = run;
        let event = granted
            .grant(&machine, now)
            .map_err(|error| StoreError::refused(id, error))?;
        *inner.run_mut(id)? = granted.clone();
        inner.events.entry(id.clone()).or_default().push(event);
        Ok(granted)
    }

    async fn machine_states(
        &self,
        machines: &[MachineName],
    ) -> Result<Vec<MachineState>, StoreError> {
        let inner = self.lock();
        inner.check_broken()?;
        Ok(machines
            .iter()
            .map(|machine| inner.machine_state(machine))
            .collect())
    }

    async fn get(&self, id: &RunId) -> Result<Run, StoreError> {
        let mut inner = self.lock();
        inner.check_broken()?;
        inner.run_mut(id).map(|run| run.clone())
    }

    async fn find_by_id_prefix(
        &self,
        prefix: &RunIdPrefix,
        limit: usize,
    ) -> Result<Vec<Run>, StoreError> {
        let inner = self.lock();
        inner.check_broken()?;
        Ok(inner
            .runs
            .values()
            .rev()
            .filter(|run| prefix.matches(&run.id))
            .take(limit)
            .cloned()
            .collect())
    }

    async fn transition(&self, id: &RunId, change: Transition) -> Result<Run, StoreError> {
        let mut inner = self.lock();
        inner.check_broken()?;
        let now = inner.now();
        let run = inner.run_mut(id)?;
        // Apply to a copy so that a refused change leaves the stored run untouched.
        let mut updated = run.clone();
        let event = updated
            .apply(&change, now)
            .map_err(|error| StoreError::refused(id, error))?;
        *run = updated.clone();
        inner.events.entry(id.clone()).or_default().push(event);
        Ok(updated)
    }

    async fn set_remote_dir(&self, id: &RunId, remote_dir: &str) -> Result<(), StoreError> {
        let mut inner = self.lock();
        inner.check_broken()?;
        inner.run_mut(id)?.remote_dir = Some(remote_dir.to_owned());
        Ok(())
    }

    async fn amend(&self, id: &RunId, amendment: Amendment) -> Result<Run, StoreError> {
        let mut inner = self.lock();
        inner.check_broken()?;
        let run = inner.run_mut(id)?;
        let mut updated = run.clone();
        let event = updated
            .amend(&amendment)
            .map_err(|error| StoreError::refused(id, error))?;
        *run = updated.clone();
        inner.events.entry(id.clone()).or_default().push(event);
        Ok(updated)
    }

    async fn set_owner(
        &self,
        id: &RunId,
        owner: &RunOwner,
        lease: Duration,
    ) -> Result<Run, StoreError> {
        self.change(id, |run, now| run.hand_over(owner, lease, now))
    }

    async fn renew_lease(
        &self,
        id: &RunId,
        owner: &RunOwner,
        lease: Duration,
    ) -> Result<Run, StoreError> {
        self.change(id, |run, now| run.renew_lease(owner, lease, now))
    }

    async fn request_cancel(&self, id: &RunId) -> Result<Run, StoreError> {
        self.change(id, |run, now| {
            run.request_cancel(now);
            Ok(())
        })
    }

    async fn list(&self, filter: &RunFilter) -> Result<Vec<Run>, StoreError> {
        let inner = self.lock();
        inner.check_broken()?;
        let matching = inner
            .runs
            .values()
            .rev()
            .filter(|run| {
                filter
                    .machine
                    .as_ref()
                    .is_none_or(|machine| run.machine == *machine)
            })
            .filter(|run| filter.status.is_none_or(|status| run.status == status))
            .take(filter.limit.unwrap_or(usize::MAX))
            .cloned()
            .collect();
        Ok(matching)
    }

    async fn events(&self, id: &RunId) -> Result<Vec<RunEventRecord>, StoreError> {
        let inner = self.lock();
        inner.check_broken()?;
        if !inner.runs.contains_key(id) {
            return Err(StoreError::NotFound(id.clone()));
        }
        Ok(inner.events.get(id).cloned().unwrap_or_default())
    }

    async fn active_runs(&self) -> Result<Vec<Run>, StoreError> {
        let inner = self.lock();
        inner.check_broken()?;
        Ok(inner
            .runs
            .values()
            .filter(|run| run.status.is_active())
            .cloned()
            .collect())
    }
}
