//! The RunStore contract suite.
//!
//! [`run_store`] runs every case against a fresh store from the caller's factory. A store
//! passes when every case passes: the fake and every real adapter run the same suite, so they
//! cannot drift apart. The expected state of a run after a transition is always computed with
//! [`Run::apply`] on a local copy, so every store must record exactly what the core says.
//!
//! The concurrency cases spawn tokio tasks; call the suite from a multi-threaded runtime
//! (`#[tokio::test(flavor = "multi_thread")]`) so that the races are real.
//!
//! Leases are checked against the store's own clock ([`RunStore::now`]), never the caller's:
//! a lease set at a claim, a renewal or a hand-over must end between the store's now before
//! and after the call, plus the lease; the lease cases wait, by the store's clock, for a short
//! lease to run out.
//!
//! A [`Subject`] can also open further, independent handles on the same store
//! ([`Subject::reopened_by`]), as other processes would: for a database a new connection pool,
//! for an in-memory store the same memory. The case `claims_from_independent_handles_have_one_winner`
//! claims one machine from 16 handles, each on its own thread and runtime.

mod claims;
mod leases;
mod queue;
mod records;
mod transitions;

use std::any::Any;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use testfleet_core::ports::{Claim, RunFilter, RunStore};
use testfleet_core::run::{NewRun, Run, RunEventRecord, RunOwner, RunPaths, RunStatus, Transition};
use testfleet_core::{
    ControllerId, EnvVar, Invocation, MachineName, RunId, TargetOs, TestDirHash, Timestamp,
};

/// Opens another, independent handle on the same store.
pub type Reopen = Arc<dyn Fn() -> Arc<dyn RunStore> + Send + Sync>;

/// A store under test, and whatever must stay alive as long as it does (a temp dir …).
pub struct Subject {
    pub store: Arc<dyn RunStore>,
    reopen: Reopen,
    _guard: Box<dyn Any + Send>,
}

impl Subject {
    /// A store that needs nothing kept alive beside it.
    pub fn new(store: impl RunStore + 'static) -> Self {
        Self::with_guard(store, ())
    }

    /// A store whose backing resources `guard` owns; the guard is dropped after the store's
    /// last case. Until [`Subject::reopened_by`] says otherwise, another handle on it is the
    /// same store (right for a store in memory).
    pub fn with_guard(store: impl RunStore + 'static, guard: impl Any + Send) -> Self {
        let store: Arc<dyn RunStore> = Arc::new(store);
        let same = Arc::clone(&store);
        Self {
            store,
            reopen: Arc::new(move || Arc::clone(&same)),
            _guard: Box::new(guard),
        }
    }

    /// How another process would open the same store: `reopen` is called once per handle, on
    /// a thread of its own outside any async runtime, and must return a handle that shares
    /// nothing in memory with the others (a new connection pool on the same database).
    pub fn reopened_by<S: RunStore + 'static>(
        mut self,
        reopen: impl Fn() -> S + Send + Sync + 'static,
    ) -> Self {
        self.reopen = Arc::new(move || Arc::new(reopen()) as Arc<dyn RunStore>);
        self
    }
}

impl fmt::Debug for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subject")
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

/// Runs the whole contract, each case against a fresh store from `make_store`.
///
/// # Panics
/// When the store breaks the contract; the message names the case and what differed.
pub async fn run_store(make_store: impl Fn() -> Subject) {
    macro_rules! cases {
        ($($case:ident),* $(,)?) => {$(
            {
                let subject = make_store();
                eprintln!("run_store contract: {}", stringify!($case));
                $case(&subject.store).await;
            }
        )*};
    }
    use claims::*;
    use leases::*;
    use queue::*;
    use records::*;
    use transitions::*;
    {
        let subject = make_store();
        eprintln!("run_store contract: claims_from_independent_handles_have_one_winner");
        claims_from_independent_handles_have_one_winner(&subject).await;
    }
    {
        let subject = make_store();
        eprintln!(
            "run_store contract: waiters_from_independent_handles_are_granted_in_arrival_order"
        );
        waiters_from_independent_handles_are_granted_in_arrival_order(&subject).await;
    }
    cases!(
        claim_creates_a_pending_run,
        claim_returns_the_active_run,
        terminal_runs_do_not_block_a_claim,
        claim_records_every_field,
        compare_and_set_wins_once,
        concurrent_transitions_have_one_winner,
        invalid_edges_are_refused,
        terminal_runs_never_change,
        events_record_every_transition_in_order,
        outcome_fields_follow_run_apply,
        list_filters_orders_and_limits,
        active_runs_are_oldest_first_with_owners,
        set_owner_and_remote_dir,
        owner_guarded_transitions_need_the_same_owner,
        unknown_ids_are_not_found,
        tests_round_trip,
        concurrent_claims_have_one_winner,
        amendments_record_what_was_learnt_after_the_end,
        claims_start_the_owners_lease_by_the_store_clock,
        renewals_extend_the_lease_by_the_store_clock,
        renewals_are_refused_after_a_takeover,
        an_expired_lease_lets_the_reaper_in,
        cancel_requests_are_recorded_for_the_owner,
        a_dead_waiter_is_skipped_after_its_lease_and_not_before,
        cancel_and_queue_timeout_leave_the_queue_consistent,
        any_of_several_machines_never_starts_twice,
        id_prefixes_find_runs_newest_first,
    );
}

// ---------------------------------------------------------------------------------------------
// Data shared by the cases

/// 2026-11-28T17:08:43Z, a fixed origin so that every store sees the same times.
pub(super) const T0_MS: i64 = 1_795_885_723_000;

pub(super) fn at(offset_ms: i64) -> Timestamp {
    Timestamp::from_unix_ms(T0_MS + offset_ms)
}

pub(super) fn machine(name: &str) -> MachineName {
    MachineName::parse(name).expect("contract machine names are valid")
}

/// The lease of the contract's owners: long enough never to expire during a case.
pub(super) const LEASE: Duration = Duration::from_secs(600);

/// The controller of the contract's runs and owners.
pub(super) fn controller() -> ControllerId {
    ControllerId::parse("ctl-1.example").expect("a valid controller id")
}

/// An owner on [`controller`].
pub(super) fn owner(pid: u32, start_time: Option<u64>) -> RunOwner {
    RunOwner {
        host: Some(controller()),
        pid,
        start_time,
    }
}

/// The store's own clock.
pub(super) async fn store_now(store: &Arc<dyn RunStore>) -> Timestamp {
    match store.now().await {
        Ok(now) => now,
        Err(error) => panic!("the store's clock: {error:?}"),
    }
}

/// Checks that `run`'s lease ends `lease` after a store time between `before` and `after`.
pub(super) fn check_lease(
    run: &Run,
    before: Timestamp,
    after: Timestamp,
    lease: Duration,
    what: &str,
) {
    let Some(expires_at) = run.lease_expires_at else {
        panic!("{what}: run {} holds no lease: {run:?}", run.id);
    };
    assert!(
        before.after(lease) <= expires_at && expires_at <= after.after(lease),
        "{what}: the lease of run {} ends at {expires_at}, not {lease:?} after the store's clock \
         between {before} and {after}",
        run.id
    );
}

pub(super) fn hash(byte: u8) -> TestDirHash {
    TestDirHash::parse(&format!("{byte:02x}").repeat(32)).expect("64 hex digits form a hash")
}

/// A new run on `machine_name` created `offset_ms` after the origin; `serial` keeps ids
/// created in the same millisecond distinct and ordered.
pub(super) fn new_run(machine_name: &str, hash_byte: u8, offset_ms: i64, serial: u128) -> NewRun {
    let unix_ms = u64::try_from(T0_MS + offset_ms).expect("contract times are after 1970");
    let id = RunId::from_parts(unix_ms, serial);
    let test_dir = PathBuf::from(format!("/home/ci/tests/{machine_name}"));
    NewRun {
        paths: RunPaths::in_state_dir(&PathBuf::from("/state"), &id),
        id,
        machine: machine(machine_name),
        os: TargetOs::linux(),
        test_dir,
        test_dir_hash: hash(hash_byte),
        entrypoint: "run.sh".to_owned(),
        invocation: invocation(),
        created_at: at(offset_ms),
        timeout_ms: None,
        keep_remote: false,
        owner: Some(owner(4242, Some(77))),
        lease: LEASE,
        controller: Some(controller()),
    }
}

/// What the contract's runs are given: arguments with quotes, spaces, a newline and `$`, a
/// recorded variable, a secret (whose value no store sees) and an exclude, so that every store
/// must keep all of it exactly.
pub(super) fn invocation() -> Invocation {
    Invocation {
        args: vec![
            "--filter".to_owned(),
            "it's \"quoted\" $HOME\nline 2".to_owned(),
            String::new(),
        ],
        env: vec![
            EnvVar::public("MODE", "fast 'n' $loud\n").expect("a valid variable"),
            EnvVar::secret("API_TOKEN").expect("a valid name"),
        ],
        excludes: vec!["*.log".to_owned(), "!keep.log".to_owned()],
    }
}

/// Claims `new` on an idle machine and checks the run: exactly [`Run::pending`], with a lease
/// by the store's clock.
pub(super) async fn claim_new(store: &Arc<dyn RunStore>, new: NewRun) -> Run {
    let before = store_now(store).await;
    let claimed = store.claim(new.clone()).await;
    let after = store_now(store).await;
    match claimed {
        Ok(Claim::Created(run)) => {
            let mut expected = Run::pending(new.clone(), before);
            if new.owner.is_some() {
                check_lease(&run, before, after, new.lease, "claim");
                expected.lease_expires_at = run.lease_expires_at;
            }
            assert_eq!(run, expected, "claim must return the run it created");
            run
        }
        other => panic!(
            "claim of {} on an idle machine: expected Created, got {other:?}",
            new.id
        ),
    }
}

/// Applies `change` to `expected` locally and through the store, and checks that the store
/// returned, stored and logged exactly what [`Run::apply`] says.
pub(super) async fn apply_and_check(
    store: &Arc<dyn RunStore>,
    expected: &mut Run,
    expected_events: &mut Vec<RunEventRecord>,
    change: Transition,
) {
    let event = expected
        .apply(&change, store_now(store).await)
        .expect("the contract only applies valid changes");
    expected_events.push(event);
    let returned = store.transition(&expected.id, change.clone()).await;
    assert_eq!(
        returned.as_ref().ok(),
        Some(&*expected),
        "transition {change:?}: {returned:?}"
    );
    assert_eq!(
        store.get(&expected.id).await.ok().as_ref(),
        Some(&*expected),
        "stored run"
    );
    assert_eq!(
        store.events(&expected.id).await.ok().as_ref(),
        Some(&*expected_events),
        "event history after {change:?}"
    );
}

pub(super) async fn must_get(store: &Arc<dyn RunStore>, id: &RunId) -> Run {
    match store.get(id).await {
        Ok(run) => run,
        Err(error) => panic!("get {id}: {error:?}"),
    }
}

pub(super) async fn must_events(store: &Arc<dyn RunStore>, id: &RunId) -> Vec<RunEventRecord> {
    match store.events(id).await {
        Ok(events) => events,
        Err(error) => panic!("events {id}: {error:?}"),
    }
}

pub(super) async fn must_list(store: &Arc<dyn RunStore>, filter: RunFilter) -> Vec<RunId> {
    match store.list(&filter).await {
        Ok(runs) => runs.into_iter().map(|run| run.id).collect(),
        Err(error) => panic!("list {filter:?}: {error:?}"),
    }
}

/// Moves a pending run to the terminal `status` along a valid path.
pub(super) async fn finish(
    store: &Arc<dyn RunStore>,
    id: &RunId,
    status: RunStatus,
    offset_ms: i64,
) -> Run {
    let path: &[RunStatus] = match status {
        RunStatus::Completed | RunStatus::Timeout => &[RunStatus::Running, status],
        RunStatus::Failed | RunStatus::Interrupted => &[status],
        RunStatus::Pending | RunStatus::Queued => &[],
        RunStatus::Running => &[RunStatus::Running],
    };
    let mut run = must_get(store, id).await;
    for (step_idx, &to) in path.iter().enumerate() {
        let step_at = at(offset_ms + i64::try_from(step_idx).expect("two steps at most"));
        let change = Transition::new(run.status, to, step_at);
        run = match store.transition(id, change).await {
            Ok(run) => run,
            Err(error) => panic!("moving {id} to {to}: {error:?}"),
        };
    }
    run
}
