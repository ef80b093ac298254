//! The queue of runs waiting for machines (`docs/contract.md#the-queue`): what a claim does when
//! the machine is taken, and which waiter a freed machine goes to. Every store gathers the same
//! facts ([`MachineState`]) inside its own transaction and lets these functions decide, so that
//! all stores queue and grant alike.
//!
//! - A machine is **free** when no run holds it (pending or running) and no **live** waiter
//!   waits for it ([`Run::is_live_waiter`]: queued, with an owner whose lease has not run out).
//!   A run that does not wait takes a free machine only: it never jumps the queue.
//! - A queued run is **granted** a machine that no run holds and for which no live waiter
//!   arrived before it (a lower [`Run::queue_seq`]). A waiter whose owner died stops blocking
//!   the runs behind it as soon as its lease runs out.
//! - Among several machines that would do (`run --any`), the least recently used one is taken
//!   (the one whose newest run is the oldest, a never used one first), so that load spreads.

use crate::ids::{MachineName, RunId};
use crate::run::{NewRun, Run};
use crate::time::Timestamp;

/// What a store knows of one machine when it claims or grants it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineState {
    /// The machine.
    pub machine: MachineName,
    /// The run that holds it (pending or running), if any.
    pub holder: Option<Run>,
    /// The queued runs waiting for it, live or not, lowest arrival first.
    pub waiting: Vec<Run>,
    /// The id of its newest run of any status; `None` when it never had one.
    pub newest: Option<RunId>,
}

impl MachineState {
    /// The waiters that count at `now`, lowest arrival first.
    pub fn live_waiters(&self, now: Timestamp) -> impl Iterator<Item = &Run> {
        self.waiting
            .iter()
            .filter(move |run| run.is_live_waiter(now))
    }

    /// No run holds the machine and no live waiter waits for it.
    pub fn is_free(&self, now: Timestamp) -> bool {
        self.holder.is_none() && self.live_waiters(now).next().is_none()
    }

    /// What makes the machine busy for a claim: its holder, else its first live waiter.
    pub fn busy_with(&self, now: Timestamp) -> Option<&Run> {
        self.holder
            .as_ref()
            .or_else(|| self.live_waiters(now).next())
    }
}

/// Where a claim may land, and whether it may wait.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimOn {
    /// The candidate machines: one, or the set of `run --any` (in the order given). A run is
    /// created on one of them.
    pub machines: Vec<MachineName>,
    /// Queue when no candidate is free (`run --wait`) instead of reporting them busy.
    pub wait: bool,
}

impl ClaimOn {
    /// One machine, no waiting: the plain claim.
    pub fn now(machine: MachineName) -> Self {
        Self {
            machines: vec![machine],
            wait: false,
        }
    }
}

/// What a store decided for a claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimDecision {
    /// Create the run pending on this free machine.
    Create(MachineName),
    /// Create the run queued, waiting for every candidate.
    Queue,
    /// Return this live run with the same hash instead (idempotency).
    Existing(Box<Run>),
    /// Create nothing: every candidate is busy (with these runs, in candidate order).
    Busy(Vec<Run>),
}

/// Whether `run` is a live run of the same invocation as `new` (the same test directory hash,
/// arguments and variables: [`Invocation::same_key`](crate::run::Invocation::same_key)) on one
/// of `machines`: it holds one of them, or is a live waiter for one of them. Such a run is
/// returned by the claim of `new` (idempotency) instead of a new one.
pub fn is_same_live_run(run: &Run, new: &NewRun, machines: &[MachineName], now: Timestamp) -> bool {
    if run.test_dir_hash != new.test_dir_hash || !run.invocation.same_key(&new.invocation) {
        return false;
    }
    if run.status.holds_machine() {
        return machines.contains(&run.machine);
    }
    run.is_live_waiter(now) && run.waiting_for.iter().any(|m| machines.contains(m))
}

/// Decides a claim over the candidates' `states` (one per machine of `on`, in any order);
/// `same` is a live run with the new run's hash on a candidate, when the store found one
/// ([`is_same_live_run`]).
pub fn claim_choice(
    on: &ClaimOn,
    states: &[MachineState],
    same: Option<Run>,
    now: Timestamp,
) -> ClaimDecision {
    if let Some(same) = same {
        return ClaimDecision::Existing(Box::new(same));
    }
    let ordered = in_candidate_order(&on.machines, states);
    if let Some(free) = least_recently_used(ordered.iter().copied().filter(|s| s.is_free(now))) {
        return ClaimDecision::Create(free.machine.clone());
    }
    if on.wait {
        return ClaimDecision::Queue;
    }
    ClaimDecision::Busy(
        ordered
            .iter()
            .filter_map(|state| state.busy_with(now).cloned())
            .collect(),
    )
}

/// The machine a queued `run` is granted now, given the `states` of the machines it waits for;
/// `None` while it must wait (every such machine is held, or has a live waiter ahead of it).
pub fn grant_choice(run: &Run, states: &[MachineState], now: Timestamp) -> Option<MachineName> {
    let seq = run.queue_seq?;
    let ordered = in_candidate_order(&run.waiting_for, states);
    let eligible = ordered.iter().copied().filter(|state| {
        state.holder.is_none()
            && !state
                .live_waiters(now)
                .any(|other| other.id != run.id && other.queue_seq.is_some_and(|o| o < seq))
    });
    least_recently_used(eligible).map(|state| state.machine.clone())
}

/// Where a queued run stands for one machine it waits for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuePlace {
    /// The machine.
    pub machine: MachineName,
    /// The run that holds it now, if any.
    pub held_by: Option<RunId>,
    /// How many live waiters arrived before the run.
    pub ahead: usize,
}

/// Where queued `run` stands in the queue of each machine of `states`.
pub fn places(run: &Run, states: &[MachineState], now: Timestamp) -> Vec<QueuePlace> {
    states
        .iter()
        .map(|state| QueuePlace {
            machine: state.machine.clone(),
            held_by: state.holder.as_ref().map(|holder| holder.id.clone()),
            ahead: ahead_of(run, state, now),
        })
        .collect()
}

/// The live waiters ahead of `run` for `state`'s machine.
pub fn ahead_of(run: &Run, state: &MachineState, now: Timestamp) -> usize {
    let Some(seq) = run.queue_seq else {
        return 0;
    };
    state
        .live_waiters(now)
        .filter(|other| other.id != run.id && other.queue_seq.is_some_and(|o| o < seq))
        .count()
}

/// The states of `machines`, in that order (a machine without a state is left out).
fn in_candidate_order<'a>(
    machines: &[MachineName],
    states: &'a [MachineState],
) -> Vec<&'a MachineState> {
    machines
        .iter()
        .filter_map(|machine| states.iter().find(|state| state.machine == *machine))
        .collect()
}

/// The least recently used of `states`: a never used one first, then the oldest newest run;
/// ties go to the earlier one.
fn least_recently_used<'a>(
    states: impl Iterator<Item = &'a MachineState>,
) -> Option<&'a MachineState> {
    states.min_by(|a, b| match (&a.newest, &b.newest) {
        (None, None) => std::cmp::Ordering::Equal,
        (None, Some(_)) => std::cmp::Ordering::Less,
        (Some(_), None) => std::cmp::Ordering::Greater,
        (Some(x), Some(y)) => x.cmp(y),
    })
}
