//! Reading and amending records: listing, active runs, owners, remote folders, unknown ids.

use std::sync::Arc;

use testfleet_core::ports::{RunFilter, RunStore, StoreError};
use testfleet_core::run::{
    Amendment, ArtifactSummary, RemoteCleanup, RunEventRecord, RunStatus, SkippedArtifact,
    Transition, UploadSummary,
};
use testfleet_core::{
    ErrorCode, FailedCase, FailureKind, RunId, RunIdPrefix, TestSummary, UnreadableReport,
};

use super::*;

pub(super) async fn list_filters_orders_and_limits(store: &Arc<dyn RunStore>) {
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

pub(super) async fn active_runs_are_oldest_first_with_owners(store: &Arc<dyn RunStore>) {
    assert_eq!(
        store.active_runs().await.ok(),
        Some(Vec::new()),
        "an empty store"
    );
    let mut expected = Vec::new();
    for idx in 0..5_u8 {
        let offset = i64::from(idx) * 10;
        let mut new = new_run(&format!("m-{idx}"), idx, offset, u128::from(idx));
        new.owner = Some(owner(100 + u32::from(idx), Some(u64::from(idx) << 40)));
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

pub(super) async fn set_owner_and_remote_dir(store: &Arc<dyn RunStore>) {
    let run = claim_new(store, new_run("linux-1", 1, 0, 1)).await;
    let events_before = must_events(store, &run.id).await;

    let worker = owner(31_337, Some(123_456_789));
    let before = store_now(store).await;
    let owned = store.set_owner(&run.id, &worker, LEASE).await;
    let after = store_now(store).await;
    let mut expected = run.clone();
    expected
        .hand_over(&worker, LEASE, before)
        .expect("a pending run takes an owner");
    let Ok(owned) = owned else {
        panic!("set_owner of a pending run: {owned:?}");
    };
    check_lease(&owned, before, after, LEASE, "set_owner");
    expected.lease_expires_at = owned.lease_expires_at;
    assert_eq!(owned, expected, "set_owner returns the updated run");
    assert_eq!(must_get(store, &run.id).await, expected);

    let remote = "/home/ci/.testfleet/runs/it's \"odd\"";
    assert!(store.set_remote_dir(&run.id, remote).await.is_ok());
    expected.remote_dir = Some(remote.to_owned());
    assert_eq!(must_get(store, &run.id).await, expected);

    // Still allowed while running; the owner survives the start.
    let running = finish(store, &run.id, RunStatus::Running, 10).await;
    assert_eq!(running.owner(), Some(worker.clone()));
    let no_start_time = owner(7, None);
    let owned = store
        .set_owner(&run.id, &no_start_time, LEASE)
        .await
        .expect("a running run takes an owner");
    assert_eq!(owned.owner(), Some(no_start_time.clone()));
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
pub(super) async fn owner_guarded_transitions_need_the_same_owner(store: &Arc<dyn RunStore>) {
    let run = claim_new(store, new_run("linux-1", 1, 0, 1)).await;
    let claimer = run.owner();
    let worker = owner(4242, Some(99));
    let handed_over = store
        .set_owner(&run.id, &worker, LEASE)
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
    expected
        .apply(&current, store_now(store).await)
        .expect("the guard matches");
    let reaped = store
        .transition(&run.id, current)
        .await
        .expect("the guard matches the current owner");
    assert_eq!(reaped, expected);
}

pub(super) async fn unknown_ids_are_not_found(store: &Arc<dyn RunStore>) {
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
            .set_owner(&unknown, &owner(1, None), LEASE)
            .await
            .map(drop),
        "set_owner",
    );
    is_not_found(
        store
            .renew_lease(&unknown, &owner(1, None), LEASE)
            .await
            .map(drop),
        "renew_lease",
    );
    is_not_found(
        store.request_cancel(&unknown).await.map(drop),
        "request_cancel",
    );
    assert_eq!(
        must_list(store, RunFilter::default()).await.len(),
        1,
        "nothing was created"
    );
}

/// What testfleet learns after a run ended (it reconnected and cleaned up) is recorded on the
/// terminal run, with an event; an active run cannot be amended.
pub(super) async fn amendments_record_what_was_learnt_after_the_end(store: &Arc<dyn RunStore>) {
    let active = claim_new(store, new_run("linux-1", 1, 0, 1)).await;
    let amendment = Amendment {
        at: at(50),
        remote_cleanup: Some(RemoteCleanup::Killed),
        artifacts: None,
        tests: None,
        detail: "reconnected and killed what was left of the run".to_owned(),
    };
    match store.amend(&active.id, amendment.clone()).await {
        Err(StoreError::Conflict { id, actual, .. }) => {
            assert_eq!((id, actual), (active.id.clone(), RunStatus::Pending));
        }
        other => panic!("amending an active run: expected Conflict, got {other:?}"),
    }
    assert_eq!(must_get(store, &active.id).await, active, "nothing written");

    let ended = finish(store, &active.id, RunStatus::Timeout, 10).await;
    let mut expected = ended.clone();
    let mut expected_events = must_events(store, &ended.id).await;
    expected_events.push(
        expected
            .amend(&amendment)
            .expect("a terminal run takes amendments"),
    );
    let amended = store.amend(&ended.id, amendment).await;
    assert_eq!(amended.ok().as_ref(), Some(&expected));
    assert_eq!(must_get(store, &ended.id).await, expected);
    assert_eq!(must_events(store, &ended.id).await, expected_events);
    assert_eq!(expected.remote_cleanup, Some(RemoteCleanup::Killed));
    assert_eq!(expected.status, RunStatus::Timeout, "the status stays");

    // A later amendment with artifacts keeps the cleanup it does not mention.
    let artifacts = ArtifactSummary {
        files: 2,
        bytes: 9,
        skipped: vec![SkippedArtifact {
            path: "locked".to_owned(),
            reason: "permission denied".to_owned(),
        }],
    };
    let second = Amendment {
        at: at(60),
        remote_cleanup: None,
        artifacts: Some(artifacts.clone()),
        tests: None,
        detail: "fetched 2 artifact file(s)".to_owned(),
    };
    let amended = store
        .amend(&ended.id, second)
        .await
        .expect("a second amendment");
    assert_eq!(amended.artifacts, Some(artifacts));
    assert_eq!(amended.remote_cleanup, Some(RemoteCleanup::Killed));
    assert_eq!(must_get(store, &ended.id).await, amended);

    let unknown = RunId::from_parts(1, 1);
    let missing = Amendment {
        at: at(70),
        remote_cleanup: None,
        artifacts: None,
        tests: None,
        detail: String::new(),
    };
    assert!(matches!(
        store.amend(&unknown, missing).await,
        Err(StoreError::NotFound(id)) if id == unknown
    ));
}

/// What a run's test reports said (`tests`) is recorded by the final transition and read back
/// whole by `get` and `list`: every count at its extremes, odd strings, optional fields empty
/// and set.
pub(super) async fn tests_round_trip(store: &Arc<dyn RunStore>) {
    let summary = TestSummary {
        total: u64::MAX,
        passed: u64::MAX - 3,
        failed: 2,
        skipped: 0,
        errors: 1,
        duration_ms: 86_400_000,
        failures: vec![
            FailedCase {
                suite: "suite \"quoted\" ünïcode".to_owned(),
                classname: Some("pkg.Class$Inner".to_owned()),
                name: "it's <odd> & 'quoted'".to_owned(),
                kind: FailureKind::Failure,
                message: "expected 4, got 5 \\ 😀".to_owned(),
            },
            FailedCase {
                suite: String::new(),
                classname: None,
                name: "errs".to_owned(),
                kind: FailureKind::Error,
                message: String::new(),
            },
        ],
        failures_omitted: 1,
        reports: vec!["junit.xml".to_owned(), "nested/dir/report.xml".to_owned()],
        unreadable: vec![UnreadableReport {
            path: "broken.xml".to_owned(),
            reason: "not well-formed XML at byte 12".to_owned(),
        }],
    };

    let mut run = claim_new(store, new_run("linux-1", 1, 0, 1)).await;
    assert_eq!(run.tests, None, "a new run has no tests");
    let mut events = vec![RunEventRecord::created(&run)];
    apply_and_check(
        store,
        &mut run,
        &mut events,
        Transition::new(RunStatus::Pending, RunStatus::Running, at(1)),
    )
    .await;
    let mut done = Transition::new(RunStatus::Running, RunStatus::Failed, at(2))
        .with_error(ErrorCode::NonzeroExit, "run.sh exited with status 1");
    done.exit_code = Some(1);
    done.tests = Some(summary.clone());
    // What the upload sent and what the file cache supplied goes with it.
    let upload = UploadSummary {
        files: 3,
        bytes: 2 * 1024 * 1024,
        cached_files: 997,
        cached_bytes: u64::from(u32::MAX) + 7,
    };
    done.upload = Some(upload);
    apply_and_check(store, &mut run, &mut events, done).await;
    assert_eq!(run.tests.as_ref(), Some(&summary));
    assert_eq!(run.upload, Some(upload));

    // An empty summary (reports found, no case in them) is not the same as none.
    let mut other = claim_new(store, new_run("linux-2", 1, 10, 2)).await;
    let mut other_events = vec![RunEventRecord::created(&other)];
    let mut empty = Transition::new(RunStatus::Pending, RunStatus::Running, at(11));
    apply_and_check(store, &mut other, &mut other_events, empty.clone()).await;
    empty = Transition::new(RunStatus::Running, RunStatus::Completed, at(12));
    empty.exit_code = Some(0);
    empty.tests = Some(TestSummary::default());
    apply_and_check(store, &mut other, &mut other_events, empty).await;
    assert_eq!(other.tests, Some(TestSummary::default()));

    let listed = store
        .list(&RunFilter::default())
        .await
        .expect("listing works");
    let by_id = |id: &RunId| listed.iter().find(|listed| &listed.id == id).cloned();
    assert_eq!(by_id(&run.id), Some(run), "list returns the tests too");
    assert_eq!(by_id(&other.id), Some(other));
}

pub(super) async fn id_prefixes_find_runs_newest_first(store: &Arc<dyn RunStore>) {
    // Two runs created in the same millisecond share their first 10 characters (the time);
    // a third, a second later, shares only the first few.
    let first = claim_new(store, new_run("a", 1, 0, 1)).await;
    let second = claim_new(store, new_run("b", 1, 0, 1 << 75)).await;
    let later = claim_new(store, new_run("c", 1, 1_000, 1)).await;
    let find = |typed: &str, limit: usize| {
        let prefix = RunIdPrefix::parse(typed).expect("the case's prefixes are valid");
        let store = Arc::clone(store);
        async move {
            match store.find_by_id_prefix(&prefix, limit).await {
                Ok(runs) => runs.into_iter().map(|run| run.id).collect::<Vec<_>>(),
                Err(error) => panic!("find_by_id_prefix {prefix}: {error:?}"),
            }
        }
    };
    let shared = &first.id.as_str()[..4];
    assert_eq!(
        later.id.as_str()[..4],
        *shared,
        "the case needs ids one second apart to share 4 characters"
    );
    assert_eq!(
        find(shared, 10).await,
        vec![later.id.clone(), second.id.clone(), first.id.clone()],
        "every run whose id starts with {shared}, newest first"
    );
    assert_eq!(
        find(shared, 2).await,
        vec![later.id.clone(), second.id.clone()],
        "at most `limit`, newest first"
    );
    assert_eq!(
        find(&first.id.as_str()[..10], 10).await,
        vec![second.id.clone(), first.id.clone()],
        "the same millisecond"
    );
    assert_eq!(
        find(&first.id.as_str()[..25], 10).await,
        vec![first.id.clone()],
        "25 characters name one run"
    );
    assert_eq!(
        find(&first.id.as_str()[..12].to_lowercase(), 10).await,
        find(&first.id.as_str()[..12], 10).await,
        "a prefix typed in lower case"
    );
    assert_eq!(find("7ZZZ", 10).await, Vec::<RunId>::new(), "no match");
    assert_eq!(find(shared, 0).await, Vec::<RunId>::new(), "limit 0");
    // The runs found are whole records.
    let found = store
        .find_by_id_prefix(
            &RunIdPrefix::parse(&first.id.as_str()[..25]).expect("valid"),
            1,
        )
        .await
        .expect("the lookup works above");
    assert_eq!(found, vec![must_get(store, &first.id).await]);
}
