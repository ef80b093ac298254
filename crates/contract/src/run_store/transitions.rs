//! Transitions: compare-and-set, the lifecycle's edges, events and outcome fields.

use std::sync::Arc;

use testfleet_core::ErrorCode;
use testfleet_core::ports::{RunStore, StoreError};
use testfleet_core::run::{
    ArtifactSummary, RemoteCleanup, RunEventRecord, RunStatus, SkippedArtifact, Transition,
};

use super::*;

pub(super) async fn compare_and_set_wins_once(store: &Arc<dyn RunStore>) {
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

pub(super) async fn concurrent_transitions_have_one_winner(store: &Arc<dyn RunStore>) {
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

pub(super) async fn invalid_edges_are_refused(store: &Arc<dyn RunStore>) {
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

pub(super) async fn terminal_runs_never_change(store: &Arc<dyn RunStore>) {
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
        let taker = owner(9, Some(9));
        match store.set_owner(&done.id, &taker, LEASE).await {
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

pub(super) async fn events_record_every_transition_in_order(store: &Arc<dyn RunStore>) {
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

pub(super) async fn outcome_fields_follow_run_apply(store: &Arc<dyn RunStore>) {
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
        skipped: vec![SkippedArtifact {
            path: "secret/it's \"odd\"\nname".to_owned(),
            reason: "permission denied".to_owned(),
        }],
    });
    done.remote_cleanup = Some(RemoteCleanup::AlreadyGone);
    apply_and_check(store, &mut run, &mut events, done).await;
    assert_eq!(run.started_at, Some(at(100)));
    assert_eq!(run.finished_at, Some(at(2_600)));
    assert_eq!(run.duration_ms, Some(2_500));
    assert_eq!(run.owner(), None, "a terminal run has no owner");
    assert_eq!(run.lease_expires_at, None, "a terminal run holds no lease");

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
