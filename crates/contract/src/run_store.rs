//! The RunStore contract suite.
//!
//! [`run_store`] runs every case against a fresh store from the caller's factory. A store
//! passes when every case passes: the fake and every real adapter run the same suite, so they
//! cannot drift apart. The expected state of a run after a transition is always computed with
//! [`Run::apply`] on a local copy, so every store must record exactly what the core says.
//!
//! The concurrency cases spawn tokio tasks; call the suite from a multi-threaded runtime
//! (`#[tokio::test(flavor = "multi_thread")]`) so that the races are real.

use std::any::Any;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use testfleet_core::ports::{Claim, RunFilter, RunStore, StoreError};
use testfleet_core::run::{
    ArtifactSummary, NewRun, Run, RunEventRecord, RunOwner, RunPaths, RunStatus, Transition,
};
use testfleet_core::{ErrorCode, MachineName, RunId, TargetOs, TestDirHash, Timestamp};

/// A store under test, and whatever must stay alive as long as it does (a temp dir …).
pub struct Subject {
    pub store: Arc<dyn RunStore>,
    _guard: Box<dyn Any + Send>,
}

impl Subject {
    /// A store that needs nothing kept alive beside it.
    pub fn new(store: impl RunStore + 'static) -> Self {
        Self::with_guard(store, ())
    }

    /// A store whose backing resources `guard` owns; the guard is dropped after the store's
    /// last case.
    pub fn with_guard(store: impl RunStore + 'static, guard: impl Any + Send) -> Self {
        Self {
            store: Arc::new(store),
            _guard: Box::new(guard),
        }
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
        concurrent_claims_have_one_winner,
    );
}

// ---------------------------------------------------------------------------------------------
// Data

/// 2026-11-28T17:08:43Z, a fixed origin so that every store sees the same times.
const T0_MS: i64 = 1_795_885_723_000;

fn at(offset_ms: i64) -> Timestamp {
    Timestamp::from_unix_ms(T0_MS + offset_ms)
}

fn machine(name: &str) -> MachineName {
    MachineName::parse(name).expect("contract machine names are valid")
}

fn hash(byte: u8) -> TestDirHash {
    TestDirHash::parse(&format!("{byte:02x}").repeat(32)).expect("64 hex digits form a hash")
}

/// A new run on `machine_name` created `offset_ms` after the origin; `serial` keeps ids
/// created in the same millisecond distinct and ordered.
fn new_run(machine_name: &str, hash_byte: u8, offset_ms: i64, serial: u128) -> NewRun {
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
        created_at: at(offset_ms),
        timeout_ms: None,
        keep_remote: false,
        owner: Some(RunOwner {
            pid: 4242,
            start_time: Some(77),
        }),
    }
}

async fn claim_new(store: &Arc<dyn RunStore>, new: NewRun) -> Run {
    match store.claim(new.clone()).await {
        Ok(Claim::Created(run)) => {
            assert_eq!(
                run,
                Run::pending(new),
                "claim must return the run it created"
            );
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
async fn apply_and_check(
    store: &Arc<dyn RunStore>,
    expected: &mut Run,
    expected_events: &mut Vec<RunEventRecord>,
    change: Transition,
) {
    let event = expected
        .apply(&change)
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

async fn must_get(store: &Arc<dyn RunStore>, id: &RunId) -> Run {
    match store.get(id).await {
        Ok(run) => run,
        Err(error) => panic!("get {id}: {error:?}"),
    }
}

async fn must_events(store: &Arc<dyn RunStore>, id: &RunId) -> Vec<RunEventRecord> {
    match store.events(id).await {
        Ok(events) => events,
        Err(error) => panic!("events {id}: {error:?}"),
    }
}

async fn must_list(store: &Arc<dyn RunStore>, filter: RunFilter) -> Vec<RunId> {
    match store.list(&filter).await {
        Ok(runs) => runs.into_iter().map(|run| run.id).collect(),
        Err(error) => panic!("list {filter:?}: {error:?}"),
    }
}

/// Moves a pending run to the terminal `status` along a valid path.
async fn finish(store: &Arc<dyn RunStore>, id: &RunId, status: RunStatus, offset_ms: i64) -> Run {
    let path: &[RunStatus] = match status {
        RunStatus::Completed | RunStatus::Timeout => &[RunStatus::Running, status],
        RunStatus::Failed | RunStatus::Interrupted => &[status],
        RunStatus::Pending => &[],
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

// ---------------------------------------------------------------------------------------------
// Cases

async fn claim_creates_a_pending_run(store: &Arc<dyn RunStore>) {
    let new = new_run("linux-1", 1, 0, 1);
    let run = claim_new(store, new).await;
    assert_eq!(run.status, RunStatus::Pending);
    assert_eq!(must_get(store, &run.id).await, run);
    assert_eq!(
        must_events(store, &run.id).await,
        vec![RunEventRecord::created(&run)]
    );
}

async fn claim_returns_the_active_run(store: &Arc<dyn RunStore>) {
    let active = claim_new(store, new_run("linux-1", 1, 0, 1)).await;

    let same_hash = new_run("linux-1", 1, 10, 2);
    let other_hash = new_run("linux-1", 2, 20, 3);
    for new in [same_hash.clone(), other_hash.clone()] {
        let claim = store.claim(new.clone()).await;
        assert_eq!(
            claim.ok(),
            Some(Claim::Active(active.clone())),
            "claim of {}",
            new.id
        );
        assert!(
            matches!(store.get(&new.id).await, Err(StoreError::NotFound(_))),
            "a refused claim must write nothing"
        );
    }

    // Still held while running, and the running run is what comes back.
    let running = finish(store, &active.id, RunStatus::Running, 30).await;
    let claim = store.claim(other_hash).await;
    assert_eq!(claim.ok(), Some(Claim::Active(running.clone())));

    // Another machine is free.
    claim_new(store, new_run("linux-2", 1, 40, 4)).await;
    assert_eq!(must_list(store, RunFilter::default()).await.len(), 2);
    assert_eq!(
        must_events(store, &running.id).await.len(),
        2,
        "a refused claim logs nothing"
    );
}

async fn terminal_runs_do_not_block_a_claim(store: &Arc<dyn RunStore>) {
    let terminals = [
        RunStatus::Completed,
        RunStatus::Failed,
        RunStatus::Timeout,
        RunStatus::Interrupted,
    ];
    for (idx, status) in terminals.into_iter().enumerate() {
        let offset = i64::try_from(idx).expect("four statuses") * 100;
        let serial = u128::try_from(idx).expect("four statuses") * 2;
        // The same hash again: terminal runs never dedupe.
        let first = claim_new(store, new_run("linux-1", 1, offset, serial)).await;
        finish(store, &first.id, status, offset + 10).await;
        let again = new_run("linux-1", 1, offset + 50, serial + 1);
        let second = claim_new(store, again).await;
        finish(store, &second.id, RunStatus::Failed, offset + 60).await;
    }
    assert_eq!(must_list(store, RunFilter::default()).await.len(), 8);
}

async fn claim_records_every_field(store: &Arc<dyn RunStore>) {
    let mut new = new_run("win-1", 0xab, 0, 1);
    new.os = TargetOs::windows();
    new.entrypoint = "run.ps1".to_owned();
    new.test_dir = PathBuf::from("/home/ci/it's a \"dir\" with ünïcode $HOME");
    new.timeout_ms = Some(u64::MAX);
    new.keep_remote = true;
    new.paths = RunPaths::new(PathBuf::from("/state/runs/odd dir 'quoted'"));
    new.owner = Some(RunOwner {
        pid: u32::MAX,
        start_time: Some(u64::MAX),
    });
    let run = claim_new(store, new).await;
    assert_eq!(must_get(store, &run.id).await, run);

    let mut bare = new_run("linux-1", 0, 1, 2);
    bare.owner = None;
    bare.timeout_ms = Some(0);
    let bare_run = claim_new(store, bare).await;
    assert_eq!(must_get(store, &bare_run.id).await, bare_run);

    let mut no_start_time = new_run("linux-2", 0, 2, 3);
    no_start_time.owner = Some(RunOwner {
        pid: 1,
        start_time: None,
    });
    let run = claim_new(store, no_start_time).await;
    assert_eq!(
        must_get(store, &run.id).await.owner(),
        Some(RunOwner {
            pid: 1,
            start_time: None
        })
    );

    #[cfg(unix)]
    {
        use std::ffi::OsStr;
        use std::os::unix::ffi::OsStrExt;
        let mut raw = new_run("linux-3", 0, 3, 4);
        raw.test_dir = PathBuf::from(OsStr::from_bytes(b"/home/ci/not-utf8-\xff\xfe"));
        let run = claim_new(store, raw).await;
        assert_eq!(
            must_get(store, &run.id).await,
            run,
            "paths are raw bytes on Unix"
        );
    }
}

async fn compare_and_set_wins_once(store: &Arc<dyn RunStore>) {
    let run = claim_new(store, new_run("linux-1", 1, 0, 1)).await;
    let start = Transition::new(RunStatus::Pending, RunStatus::Running, at(10));
    let started = store.transition(&run.id, start.clone()).await;
    assert!(started.is_ok(), "first start: {started:?}");

    let before = must_get(store, &run.id).await;
    let again = store
        .transition(
            &run.id,
            Transition::new(RunStatus::Pending, RunStatus::Running, at(20)),
        )
        .await;
    match again {
        Err(StoreError::Conflict {
            id,
            expected,
            actual,
        }) => {
            assert_eq!(id, run.id);
            assert_eq!(expected, RunStatus::Pending);
            assert_eq!(actual, RunStatus::Running);
        }
        other => panic!("second start: expected Conflict, got {other:?}"),
    }
    assert_eq!(
        must_get(store, &run.id).await,
        before,
        "a lost compare-and-set writes nothing"
    );
    assert_eq!(must_events(store, &run.id).await.len(), 2);
}

async fn concurrent_transitions_have_one_winner(store: &Arc<dyn RunStore>) {
    const RACERS: usize = 16;
    let run = claim_new(store, new_run("linux-1", 1, 0, 1)).await;
    finish(store, &run.id, RunStatus::Running, 10).await;

    // A worker finishing and reapers declaring it lost, all at once.
    let mut tasks = Vec::new();
    for racer_idx in 0..RACERS {
        let store = Arc::clone(store);
        let id = run.id.clone();
        let offset = 100 + i64::try_from(racer_idx).expect("few racers");
        let change = if racer_idx % 2 == 0 {
            Transition::new(RunStatus::Running, RunStatus::Completed, at(offset))
                .with_detail(format!("racer {racer_idx}"))
        } else {
            Transition::new(RunStatus::Running, RunStatus::Interrupted, at(offset))
                .with_error(ErrorCode::WorkerLost, format!("racer {racer_idx}"))
        };
        tasks.push(tokio::spawn(
            async move { store.transition(&id, change).await },
        ));
    }
    let mut winners = Vec::new();
    for task in tasks {
        match task.await.expect("a racer task does not panic") {
            Ok(updated) => winners.push(updated),
            Err(StoreError::Conflict {
                expected: RunStatus::Running,
                actual,
                ..
            }) => {
                assert!(
                    actual.is_terminal(),
                    "a loser sees the winner's status, got {actual}"
                );
            }
            Err(error) => panic!("a racer failed with something other than Conflict: {error:?}"),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one transition wins: {winners:?}");
    let winner = &winners[0];
    assert_eq!(&must_get(store, &run.id).await, winner);
    let events = must_events(store, &run.id).await;
    assert_eq!(
        events.len(),
        3,
        "one event for the single winner: {events:?}"
    );
    assert_eq!(events[2].to, winner.status);
    assert_eq!(
        events[2].at,
        winner.finished_at.expect("a terminal run has finished_at")
    );
}

async fn invalid_edges_are_refused(store: &Arc<dyn RunStore>) {
    let pending = claim_new(store, new_run("linux-1", 1, 0, 1)).await;
    let running = claim_new(store, new_run("linux-2", 1, 1, 2)).await;
    let running = finish(store, &running.id, RunStatus::Running, 5).await;
    for run in [pending, running] {
        let events_before = must_events(store, &run.id).await;
        for to in RunStatus::ALL {
            if run.status.can_become(to) {
                continue;
            }
            let change = Transition::new(run.status, to, at(50));
            match store.transition(&run.id, change).await {
                Err(StoreError::InvalidTransition {
                    id,
                    from,
                    to: refused,
                }) => {
                    assert_eq!((id, from, refused), (run.id.clone(), run.status, to));
                }
                other => panic!(
                    "{} → {to}: expected InvalidTransition, got {other:?}",
                    run.status
                ),
            }
        }
        assert_eq!(
            must_get(store, &run.id).await,
            run,
            "a refused edge writes nothing"
        );
        assert_eq!(must_events(store, &run.id).await, events_before);
    }
}

async fn terminal_runs_never_change(store: &Arc<dyn RunStore>) {
    let terminals = [
        RunStatus::Completed,
        RunStatus::Failed,
        RunStatus::Timeout,
        RunStatus::Interrupted,
    ];
    for (idx, status) in terminals.into_iter().enumerate() {
        let offset = i64::try_from(idx).expect("four statuses") * 100;
        let name = format!("m-{idx}");
        let claimed = claim_new(store, new_run(&name, 1, offset, 1)).await;
        let done = finish(store, &claimed.id, status, offset + 10).await;
        let events_before = must_events(store, &done.id).await;
        for from in RunStatus::ALL {
            for to in RunStatus::ALL {
                let change = Transition::new(from, to, at(offset + 90))
                    .with_error(ErrorCode::Internal, "must not be written");
                let result = store.transition(&done.id, change).await;
                let refused_properly = match &result {
                    Err(StoreError::InvalidTransition { from: f, to: t, .. }) => {
                        from == status && (*f, *t) == (from, to)
                    }
                    Err(StoreError::Conflict {
                        expected, actual, ..
                    }) => from != status && (*expected, *actual) == (from, status),
                    _ => false,
                };
                assert!(
                    refused_properly,
                    "{status} run, change {from} → {to}: {result:?}"
                );
            }
        }
        let owner = RunOwner {
            pid: 9,
            start_time: Some(9),
        };
        match store.set_owner(&done.id, owner).await {
            Err(StoreError::Conflict {
                expected: RunStatus::Pending,
                actual,
                ..
            }) => {
                assert_eq!(actual, status);
            }
            other => panic!("set_owner on a {status} run: expected Conflict, got {other:?}"),
        }
        assert_eq!(
            must_get(store, &done.id).await,
            done,
            "a terminal run never changes"
        );
        assert_eq!(must_events(store, &done.id).await, events_before);
    }
}

async fn events_record_every_transition_in_order(store: &Arc<dyn RunStore>) {
    let mut run = claim_new(store, new_run("linux-1", 1, 0, 1)).await;
    let mut events = vec![RunEventRecord::created(&run)];
    assert_eq!(must_events(store, &run.id).await, events);

    let start = Transition::new(RunStatus::Pending, RunStatus::Running, at(1_000))
        .with_detail("connected to 10.0.0.5:22");
    apply_and_check(store, &mut run, &mut events, start).await;

    let mut fail = Transition::new(RunStatus::Running, RunStatus::Failed, at(3_500))
        .with_error(ErrorCode::NonzeroExit, "run.sh exited with status 3");
    fail.exit_code = Some(3);
    apply_and_check(store, &mut run, &mut events, fail).await;

    let stored = must_events(store, &run.id).await;
    assert_eq!(stored[0].from, None);
    assert_eq!(
        stored[1].detail.as_deref(),
        Some("connected to 10.0.0.5:22")
    );
    assert_eq!(stored[2].code, Some(ErrorCode::NonzeroExit));
    assert_eq!(
        stored[2].detail.as_deref(),
        Some("run.sh exited with status 3")
    );

    // An explicit detail and an error both kept; a pending run failing at dial.
    let mut other = claim_new(store, new_run("linux-2", 1, 10, 2)).await;
    let mut other_events = vec![RunEventRecord::created(&other)];
    let dial = Transition::new(RunStatus::Pending, RunStatus::Failed, at(20))
        .with_error(ErrorCode::DialFailed, "connection refused")
        .with_detail("dialing 10.0.0.6:22");
    apply_and_check(store, &mut other, &mut other_events, dial).await;
    assert_eq!(
        must_events(store, &run.id).await,
        events,
        "events stay per run"
    );
}

async fn outcome_fields_follow_run_apply(store: &Arc<dyn RunStore>) {
    // completed, with artifacts and exit 0
    let mut run = claim_new(store, new_run("linux-1", 1, 0, 1)).await;
    let mut events = vec![RunEventRecord::created(&run)];
    apply_and_check(
        store,
        &mut run,
        &mut events,
        Transition::new(RunStatus::Pending, RunStatus::Running, at(100)),
    )
    .await;
    let mut done = Transition::new(RunStatus::Running, RunStatus::Completed, at(2_600));
    done.exit_code = Some(0);
    done.artifacts = Some(ArtifactSummary {
        files: 3,
        bytes: u64::MAX,
    });
    apply_and_check(store, &mut run, &mut events, done).await;
    assert_eq!(run.started_at, Some(at(100)));
    assert_eq!(run.finished_at, Some(at(2_600)));
    assert_eq!(run.duration_ms, Some(2_500));
    assert_eq!(run.owner(), None, "a terminal run has no owner");

    // timeout, killed by a signal, no artifacts
    let mut run = claim_new(store, new_run("linux-2", 1, 0, 2)).await;
    let mut events = vec![RunEventRecord::created(&run)];
    apply_and_check(
        store,
        &mut run,
        &mut events,
        Transition::new(RunStatus::Pending, RunStatus::Running, at(5)),
    )
    .await;
    let mut timeout = Transition::new(RunStatus::Running, RunStatus::Timeout, at(60_005))
        .with_error(ErrorCode::Timeout, "the exec timeout of 1m elapsed");
    timeout.signal = Some("KILL".to_owned());
    timeout.exit_code = Some(i32::MIN);
    apply_and_check(store, &mut run, &mut events, timeout).await;
    assert_eq!(run.artifacts, None);
    assert_eq!(run.signal.as_deref(), Some("KILL"));

    // interrupted while pending: the duration counts from creation
    let mut run = claim_new(store, new_run("linux-3", 1, 0, 3)).await;
    let mut events = vec![RunEventRecord::created(&run)];
    let lost = Transition::new(RunStatus::Pending, RunStatus::Interrupted, at(750))
        .with_error(ErrorCode::WorkerLost, "worker 4242 is gone");
    apply_and_check(store, &mut run, &mut events, lost).await;
    assert_eq!(run.started_at, None);
    assert_eq!(run.duration_ms, Some(750));
    assert_eq!(
        run.error.as_ref().map(|error| error.code),
        Some(ErrorCode::WorkerLost)
    );
}

async fn list_filters_orders_and_limits(store: &Arc<dyn RunStore>) {
    // Created in this order; a-* on machine a, b-* on machine b.
    let mut ids = Vec::new();
    let plan = [
        ("a", RunStatus::Completed),
        ("b", RunStatus::Failed),
        ("a", RunStatus::Failed),
        ("b", RunStatus::Completed),
        ("a", RunStatus::Completed),
        ("b", RunStatus::Running),
        ("a", RunStatus::Pending),
    ];
    for (idx, (name, status)) in plan.into_iter().enumerate() {
        let offset = i64::try_from(idx).expect("few runs") * 1_000;
        let serial = u128::try_from(idx).expect("few runs");
        let run = claim_new(store, new_run(name, 1, offset, serial)).await;
        finish(store, &run.id, status, offset + 10).await;
        ids.push((name, status, run.id));
    }
    let newest_first = |keep: &dyn Fn(&str, RunStatus) -> bool| -> Vec<RunId> {
        ids.iter()
            .rev()
            .filter(|(name, status, _)| keep(name, *status))
            .map(|(_, _, id)| id.clone())
            .collect()
    };

    let all = must_list(store, RunFilter::default()).await;
    assert_eq!(all, newest_first(&|_, _| true), "newest first");

    let on_a = RunFilter {
        machine: Some(machine("a")),
        ..RunFilter::default()
    };
    assert_eq!(
        must_list(store, on_a).await,
        newest_first(&|name, _| name == "a")
    );

    let completed = RunFilter {
        status: Some(RunStatus::Completed),
        ..RunFilter::default()
    };
    assert_eq!(
        must_list(store, completed).await,
        newest_first(&|_, status| status == RunStatus::Completed)
    );

    let both = RunFilter {
        machine: Some(machine("b")),
        status: Some(RunStatus::Completed),
        limit: None,
    };
    assert_eq!(
        must_list(store, both).await,
        newest_first(&|name, status| name == "b" && status == RunStatus::Completed)
    );

    for limit in [0, 1, 2, 7, 100] {
        let limited = RunFilter {
            limit: Some(limit),
            ..RunFilter::default()
        };
        let expected: Vec<RunId> = newest_first(&|_, _| true).into_iter().take(limit).collect();
        assert_eq!(must_list(store, limited).await, expected, "limit {limit}");
    }
    let limited_on_a = RunFilter {
        machine: Some(machine("a")),
        status: None,
        limit: Some(2),
    };
    let expected: Vec<RunId> = newest_first(&|name, _| name == "a")
        .into_iter()
        .take(2)
        .collect();
    assert_eq!(must_list(store, limited_on_a).await, expected);

    let nowhere = RunFilter {
        machine: Some(machine("nowhere")),
        ..RunFilter::default()
    };
    assert_eq!(must_list(store, nowhere).await, Vec::<RunId>::new());
    let timeouts = RunFilter {
        status: Some(RunStatus::Timeout),
        ..RunFilter::default()
    };
    assert_eq!(must_list(store, timeouts).await, Vec::<RunId>::new());

    // The listed runs are whole records, not only ids.
    let listed = store
        .list(&RunFilter::default())
        .await
        .expect("listing works above");
    for run in listed {
        assert_eq!(must_get(store, &run.id).await, run);
    }
}

async fn active_runs_are_oldest_first_with_owners(store: &Arc<dyn RunStore>) {
    assert_eq!(
        store.active_runs().await.ok(),
        Some(Vec::new()),
        "an empty store"
    );
    let mut expected = Vec::new();
    for idx in 0..5_u8 {
        let offset = i64::from(idx) * 10;
        let mut new = new_run(&format!("m-{idx}"), idx, offset, u128::from(idx));
        new.owner = Some(RunOwner {
            pid: 100 + u32::from(idx),
            start_time: Some(u64::from(idx) << 40),
        });
        let run = claim_new(store, new).await;
        let run = match idx {
            1 => finish(store, &run.id, RunStatus::Completed, offset + 1).await,
            2 => finish(store, &run.id, RunStatus::Running, offset + 1).await,
            4 => finish(store, &run.id, RunStatus::Interrupted, offset + 1).await,
            _ => run,
        };
        if run.status.is_active() {
            expected.push(run);
        }
    }
    let active = store.active_runs().await;
    assert_eq!(
        active.as_ref().ok(),
        Some(&expected),
        "active runs, oldest first, owners kept"
    );
    let owners: Vec<Option<u32>> = expected.iter().map(|run| run.worker_pid).collect();
    assert_eq!(owners, vec![Some(100), Some(102), Some(103)]);
}

async fn set_owner_and_remote_dir(store: &Arc<dyn RunStore>) {
    let run = claim_new(store, new_run("linux-1", 1, 0, 1)).await;
    let events_before = must_events(store, &run.id).await;

    let worker = RunOwner {
        pid: 31_337,
        start_time: Some(123_456_789),
    };
    let owned = store.set_owner(&run.id, worker).await;
    let mut expected = run.clone();
    expected.worker_pid = Some(worker.pid);
    expected.worker_start_time = worker.start_time;
    assert_eq!(
        owned.as_ref().ok(),
        Some(&expected),
        "set_owner returns the updated run"
    );
    assert_eq!(must_get(store, &run.id).await, expected);

    let remote = "/home/ci/.testfleet/runs/it's \"odd\"";
    assert!(store.set_remote_dir(&run.id, remote).await.is_ok());
    expected.remote_dir = Some(remote.to_owned());
    assert_eq!(must_get(store, &run.id).await, expected);

    // Still allowed while running; the owner survives the start.
    let running = finish(store, &run.id, RunStatus::Running, 10).await;
    assert_eq!(running.owner(), Some(worker));
    let no_start_time = RunOwner {
        pid: 7,
        start_time: None,
    };
    let owned = store
        .set_owner(&run.id, no_start_time)
        .await
        .expect("a running run takes an owner");
    assert_eq!(owned.owner(), Some(no_start_time));
    assert_eq!(owned.remote_dir.as_deref(), Some(remote));
    assert!(store.set_remote_dir(&run.id, "/tmp/other").await.is_ok());
    assert_eq!(
        must_get(store, &run.id).await.remote_dir.as_deref(),
        Some("/tmp/other")
    );

    assert_eq!(
        must_events(store, &run.id).await.len(),
        events_before.len() + 1,
        "only the start is an event"
    );
}

/// The reaper's transition is guarded on the owner it saw dead: once another process has
/// taken the run over, the guarded change is refused and writes nothing.
async fn owner_guarded_transitions_need_the_same_owner(store: &Arc<dyn RunStore>) {
    let run = claim_new(store, new_run("linux-1", 1, 0, 1)).await;
    let claimer = run.owner();
    let worker = RunOwner {
        pid: 4242,
        start_time: Some(99),
    };
    let handed_over = store
        .set_owner(&run.id, worker)
        .await
        .expect("the run takes a new owner");
    let events_before = must_events(store, &run.id).await;

    let stale = Transition::new(RunStatus::Pending, RunStatus::Interrupted, at(5))
        .with_error(ErrorCode::WorkerLost, "owner gone")
        .with_owner_guard(claimer);
    match store.transition(&run.id, stale).await {
        Err(StoreError::OwnerChanged { id }) => assert_eq!(id, run.id),
        other => panic!("a stale owner guard must be refused with OwnerChanged: {other:?}"),
    }
    assert_eq!(
        must_get(store, &run.id).await,
        handed_over,
        "nothing written"
    );
    assert_eq!(must_events(store, &run.id).await, events_before);

    let current = Transition::new(RunStatus::Pending, RunStatus::Interrupted, at(6))
        .with_error(ErrorCode::WorkerLost, "owner gone")
        .with_owner_guard(Some(worker));
    let mut expected = handed_over.clone();
    expected.apply(&current).expect("the guard matches");
    let reaped = store
        .transition(&run.id, current)
        .await
        .expect("the guard matches the current owner");
    assert_eq!(reaped, expected);
}

async fn unknown_ids_are_not_found(store: &Arc<dyn RunStore>) {
    claim_new(store, new_run("linux-1", 1, 0, 1)).await;
    let unknown = RunId::from_parts(1, 1);
    let is_not_found = |result: Result<(), StoreError>, what: &str| match result {
        Err(StoreError::NotFound(id)) => assert_eq!(id, unknown, "{what}"),
        other => panic!("{what} of an unknown id: expected NotFound, got {other:?}"),
    };
    is_not_found(store.get(&unknown).await.map(drop), "get");
    is_not_found(
        store
            .transition(
                &unknown,
                Transition::new(RunStatus::Pending, RunStatus::Running, at(1)),
            )
            .await
            .map(drop),
        "transition",
    );
    is_not_found(store.events(&unknown).await.map(drop), "events");
    is_not_found(store.set_remote_dir(&unknown, "/x").await, "set_remote_dir");
    is_not_found(
        store
            .set_owner(
                &unknown,
                RunOwner {
                    pid: 1,
                    start_time: None,
                },
            )
            .await
            .map(drop),
        "set_owner",
    );
    assert_eq!(
        must_list(store, RunFilter::default()).await.len(),
        1,
        "nothing was created"
    );
}

async fn concurrent_claims_have_one_winner(store: &Arc<dyn RunStore>) {
    const CLAIMERS: u8 = 32;
    let mut tasks = Vec::new();
    for claimer_idx in 0..CLAIMERS {
        let store = Arc::clone(store);
        // Half share a hash, half differ: the store does not care, core does.
        let new = new_run(
            "contended",
            claimer_idx % 2,
            i64::from(claimer_idx),
            u128::from(claimer_idx),
        );
        tasks.push(tokio::spawn(async move { store.claim(new).await }));
    }
    let mut created = Vec::new();
    let mut active = Vec::new();
    for task in tasks {
        match task.await.expect("a claimer task does not panic") {
            Ok(Claim::Created(run)) => created.push(run),
            Ok(Claim::Active(run)) => active.push(run),
            Err(error) => panic!("a concurrent claim failed: {error:?}"),
        }
    }
    assert_eq!(
        created.len(),
        1,
        "exactly one claim creates the run: {created:?}"
    );
    let winner = &created[0];
    assert_eq!(active.len(), usize::from(CLAIMERS) - 1);
    assert!(
        active.iter().all(|run| run == winner),
        "every other claimer gets the winner's run"
    );
    assert_eq!(store.active_runs().await.ok(), Some(vec![winner.clone()]));
    let on_machine = RunFilter {
        machine: Some(machine("contended")),
        ..RunFilter::default()
    };
    assert_eq!(must_list(store, on_machine).await, vec![winner.id.clone()]);
}
