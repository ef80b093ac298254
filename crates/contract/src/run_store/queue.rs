//! The queue (`docs/contract.md#the-queue`): waiters granted in arrival order across handles,
//! dead waiters skipped once (and only once) their lease ran out, cancelled and timed-out
//! waiters out of every queue, and a run waiting for several machines started exactly once.

use std::sync::{Arc, Barrier};

use testfleet_core::ErrorCode;
use testfleet_core::ports::{Claimed, RunStore, StoreError};
use testfleet_core::queue::ClaimOn;
use testfleet_core::run::{NewRun, Run, RunStatus, Transition};

use super::leases::{SHORT_LEASE, wait_for_expiry};
use super::*;

fn on(machines: &[&str], wait: bool) -> ClaimOn {
    ClaimOn {
        machines: machines.iter().map(|name| machine(name)).collect(),
        wait,
    }
}

/// Claims `new` on `machines` with waiting, expecting it queued for all of them.
async fn queue(store: &Arc<dyn RunStore>, new: NewRun, machines: &[&str]) -> Run {
    match store.claim_in(new.clone(), &on(machines, true)).await {
        Ok(Claimed::Queued(run)) => {
            check_queued(&run, &new, machines);
            run
        }
        other => panic!(
            "claim of {} with waiting: expected Queued, got {other:?}",
            new.id
        ),
    }
}

fn check_queued(run: &Run, new: &NewRun, machines: &[&str]) {
    assert_eq!(run.id, new.id);
    assert_eq!(run.status, RunStatus::Queued, "{run:?}");
    let expected: Vec<_> = machines.iter().map(|name| machine(name)).collect();
    assert_eq!(
        run.waiting_for, expected,
        "a queued run waits for every candidate"
    );
    assert!(
        run.queue_seq.is_some(),
        "a queued run has an arrival number"
    );
}

async fn grant(store: &Arc<dyn RunStore>, run: &Run) -> Run {
    match store.try_grant(&run.id).await {
        Ok(run) => run,
        Err(error) => panic!("try_grant {}: {error:?}", run.id),
    }
}

/// Tries to grant `run`, which must stay queued.
async fn must_wait(store: &Arc<dyn RunStore>, run: &Run, why: &str) {
    let after = grant(store, run).await;
    assert_eq!(after.status, RunStatus::Queued, "{why}: {after:?}");
    assert_eq!(must_get(store, &run.id).await.status, RunStatus::Queued);
}

/// Tries to grant `run`, which must become pending on `machine_name`.
async fn must_be_granted(store: &Arc<dyn RunStore>, run: &Run, machine_name: &str) -> Run {
    let granted = grant(store, run).await;
    assert_eq!(
        (granted.status, granted.machine.as_str()),
        (RunStatus::Pending, machine_name),
        "{} must be granted {machine_name}: {granted:?}",
        run.id
    );
    assert!(
        granted.waiting_for.is_empty(),
        "a granted run waits for nothing"
    );
    assert_eq!(
        must_get(store, &run.id).await,
        granted,
        "stored as returned"
    );
    let events = must_events(store, &run.id).await;
    let last = events.last().expect("a granted run has events");
    assert_eq!(
        (last.from, last.to),
        (Some(RunStatus::Queued), RunStatus::Pending)
    );
    granted
}

async fn states(
    store: &Arc<dyn RunStore>,
    machines: &[&str],
) -> Vec<testfleet_core::queue::MachineState> {
    let names: Vec<_> = machines.iter().map(|name| machine(name)).collect();
    match store.machine_states(&names).await {
        Ok(states) => states,
        Err(error) => panic!("machine_states {machines:?}: {error:?}"),
    }
}

/// 16 waiters queued at once from 16 independent handles (as 16 processes would) are granted
/// one at a time, strictly in the order of their arrival numbers, while every remaining waiter
/// asks for the machine concurrently after each finish.
pub(super) async fn waiters_from_independent_handles_are_granted_in_arrival_order(
    subject: &Subject,
) {
    const HANDLES: u8 = 16;
    let store = &subject.store;
    let holder = claim_new(store, new_run("shared", 200, 0, 1000)).await;

    let barrier = Arc::new(Barrier::new(usize::from(HANDLES)));
    let mut threads = Vec::new();
    for idx in 0..HANDLES {
        let reopen = Arc::clone(&subject.reopen);
        let barrier = Arc::clone(&barrier);
        let new = new_run("shared", idx + 1, i64::from(idx) + 1, u128::from(idx));
        threads.push(std::thread::spawn(move || {
            let store = reopen();
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime starts");
            barrier.wait();
            let claimed = runtime.block_on(store.claim_in(new.clone(), &on(&["shared"], true)));
            (new, claimed)
        }));
    }
    let outcomes = tokio::task::spawn_blocking(move || {
        threads
            .into_iter()
            .map(|thread| thread.join().expect("a queuing thread does not panic"))
            .collect::<Vec<_>>()
    })
    .await
    .expect("the joining task does not panic");
    let mut waiters = Vec::new();
    for (new, claimed) in outcomes {
        match claimed {
            Ok(Claimed::Queued(run)) => {
                check_queued(&run, &new, &["shared"]);
                waiters.push(run);
            }
            other => panic!("a claim with waiting from another handle: {other:?}"),
        }
    }
    waiters.sort_by_key(|run| run.queue_seq);
    let seqs: Vec<_> = waiters.iter().map(|run| run.queue_seq).collect();
    let mut distinct = seqs.clone();
    distinct.dedup();
    assert_eq!(distinct, seqs, "arrival numbers are distinct");

    let state = &states(store, &["shared"]).await[0];
    assert_eq!(state.holder.as_ref().map(|run| &run.id), Some(&holder.id));
    assert_eq!(
        state.waiting.iter().map(|run| &run.id).collect::<Vec<_>>(),
        waiters.iter().map(|run| &run.id).collect::<Vec<_>>(),
        "the machine's queue is in arrival order"
    );
    for waiter in waiters.iter().rev() {
        must_wait(store, waiter, "the machine is held").await;
    }

    let mut current = holder.id.clone();
    for (round, expected) in waiters.iter().enumerate() {
        let offset = 1000 + i64::try_from(round).expect("16 rounds") * 10;
        finish(store, &current, RunStatus::Failed, offset).await;
        // Every remaining waiter asks at once, latest arrival first.
        let asks: Vec<_> = waiters[round..]
            .iter()
            .rev()
            .map(|waiter| {
                let store = Arc::clone(store);
                let id = waiter.id.clone();
                tokio::spawn(async move { store.try_grant(&id).await })
            })
            .collect();
        let mut granted = Vec::new();
        for ask in asks {
            match ask.await.expect("a granting task does not panic") {
                Ok(run) if run.status == RunStatus::Pending => granted.push(run.id),
                Ok(run) => assert_eq!(run.status, RunStatus::Queued, "{run:?}"),
                Err(error) => panic!("try_grant: {error:?}"),
            }
        }
        assert_eq!(
            granted,
            vec![expected.id.clone()],
            "round {round}: exactly the earliest waiter is granted"
        );
        let active: Vec<_> = store
            .active_runs()
            .await
            .expect("active runs")
            .into_iter()
            .filter(|run| run.status.holds_machine())
            .map(|run| run.id)
            .collect();
        assert_eq!(
            active,
            vec![expected.id.clone()],
            "one run holds the machine"
        );
        current = expected.id.clone();
    }
    finish(store, &current, RunStatus::Failed, 2000).await;
    assert!(states(store, &["shared"]).await[0].waiting.is_empty());
}

/// A waiter whose owner died keeps its place until its lease runs out, and not a moment after:
/// then the runs behind it are granted, and a claim without waiting finds the machine free.
pub(super) async fn a_dead_waiter_is_skipped_after_its_lease_and_not_before(
    store: &Arc<dyn RunStore>,
) {
    let holder = claim_new(store, new_run("linux-1", 1, 0, 1)).await;
    let mut dead = new_run("linux-1", 2, 10, 2);
    dead.lease = SHORT_LEASE;
    let dead = queue(store, dead, &["linux-1"]).await;
    let alive = queue(store, new_run("linux-1", 3, 20, 3), &["linux-1"]).await;
    finish(store, &holder.id, RunStatus::Completed, 30).await;

    // While the dead waiter's lease holds, it is first in line: the one behind it waits, and a
    // claim that does not wait finds the machine busy with it.
    let before = store_now(store).await;
    assert!(before < dead.lease_expires_at.expect("a lease"));
    must_wait(store, &alive, "a waiter whose lease holds is ahead").await;
    match store.claim(new_run("linux-1", 4, 40, 4)).await {
        Ok(testfleet_core::ports::Claim::Active(run)) => assert_eq!(run.id, dead.id),
        other => panic!("a claim while a live waiter waits: expected Active, got {other:?}"),
    }

    wait_for_expiry(store, &dead).await;
    must_be_granted(store, &alive, "linux-1").await;
    let dead_now = must_get(store, &dead.id).await;
    assert_eq!(
        dead_now.status,
        RunStatus::Queued,
        "skipped, not ended by the grant"
    );

    // The dead waiter cannot take the machine back later either.
    finish(store, &alive.id, RunStatus::Failed, 60).await;
    let claimed = claim_new(store, new_run("linux-1", 5, 70, 5)).await;
    assert_eq!(
        claimed.machine.as_str(),
        "linux-1",
        "the dead waiter does not block"
    );
}

/// Cancelling one waiter and timing out another (both queued → interrupted) takes them out of
/// every queue at once: the next live waiter is granted, nothing else is left waiting, and a
/// claim of a queued run's directory returns that run rather than queuing a second one.
pub(super) async fn cancel_and_queue_timeout_leave_the_queue_consistent(store: &Arc<dyn RunStore>) {
    let holder = claim_new(store, new_run("m1", 1, 0, 1)).await;
    // m2 is held too, so that the first waiter does not get it.
    let other = claim_new(store, new_run("m2", 9, 5, 9)).await;
    let timed_out = queue(store, new_run("m1", 2, 10, 2), &["m1", "m2"]).await;
    let cancelled = queue(store, new_run("m1", 3, 20, 3), &["m1"]).await;
    let last = queue(store, new_run("m1", 4, 30, 4), &["m1"]).await;

    // Idempotency covers queued runs.
    let again = new_run("m1", 3, 35, 5);
    match store.claim_in(again.clone(), &on(&["m1"], true)).await {
        Ok(Claimed::Existing(run)) => assert_eq!(run.id, cancelled.id),
        other => panic!("claim of a queued directory: expected Existing, got {other:?}"),
    }
    assert!(matches!(
        store.get(&again.id).await,
        Err(StoreError::NotFound(_))
    ));

    let mut expected_events = must_events(store, &timed_out.id).await;
    let mut expected = timed_out.clone();
    apply_and_check(
        store,
        &mut expected,
        &mut expected_events,
        Transition::new(RunStatus::Queued, RunStatus::Interrupted, at(40))
            .with_error(ErrorCode::QueueTimeout, "waited 30m for a machine"),
    )
    .await;
    assert_eq!(
        expected.error.as_ref().map(|error| error.code),
        Some(ErrorCode::QueueTimeout)
    );
    assert!(
        expected.waiting_for.is_empty(),
        "an ended run waits for nothing"
    );

    let ended = match store
        .transition(
            &cancelled.id,
            Transition::new(RunStatus::Queued, RunStatus::Interrupted, at(50))
                .with_error(ErrorCode::Interrupted, "cancelled while it waited"),
        )
        .await
    {
        Ok(run) => run,
        Err(error) => panic!("cancel of a queued run: {error:?}"),
    };
    assert_eq!(ended.status, RunStatus::Interrupted);
    // An ended waiter is never granted.
    assert_eq!(
        grant(store, &ended).await,
        ended,
        "an ended run is returned unchanged"
    );

    let queues = states(store, &["m1", "m2"]).await;
    for state in &queues {
        let ids: Vec<_> = state.waiting.iter().map(|run| &run.id).collect();
        let expected: Vec<_> = if state.machine.as_str() == "m1" {
            vec![&last.id]
        } else {
            vec![]
        };
        assert_eq!(ids, expected, "queue of {}", state.machine);
    }
    must_wait(store, &last, "m1 is still held").await;
    finish(store, &holder.id, RunStatus::Completed, 60).await;
    must_be_granted(store, &last, "m1").await;
    finish(store, &other.id, RunStatus::Completed, 70).await;
    assert!(
        states(store, &["m1", "m2"])
            .await
            .iter()
            .all(|state| state.waiting.is_empty()),
        "nothing is left waiting"
    );
}

/// A run for any of several machines: created on a free one (the least recently used), else
/// reported busy with every candidate named, else queued for all of them and granted exactly
/// one, even when it asks from many tasks at once as both machines free.
pub(super) async fn any_of_several_machines_never_starts_twice(store: &Arc<dyn RunStore>) {
    // The least recently used free machine is taken: a1 had a run, a2 never did.
    let used = claim_new(store, new_run("a1", 1, 0, 1)).await;
    finish(store, &used.id, RunStatus::Completed, 5).await;
    let spread = match store
        .claim_in(new_run("a1", 2, 10, 2), &on(&["a1", "a2"], false))
        .await
    {
        Ok(Claimed::Created(run)) => run,
        other => panic!("claim on two free machines: expected Created, got {other:?}"),
    };
    assert_eq!(
        spread.machine.as_str(),
        "a2",
        "the never used machine first"
    );
    let held = claim_new(store, new_run("a1", 3, 20, 3)).await;

    // Both busy, no waiting: busy with each, nothing written.
    let refused = new_run("a1", 4, 30, 4);
    match store
        .claim_in(refused.clone(), &on(&["a1", "a2"], false))
        .await
    {
        Ok(Claimed::Busy(runs)) => assert_eq!(
            runs.iter().map(|run| &run.id).collect::<Vec<_>>(),
            vec![&held.id, &spread.id],
            "every candidate named, in order"
        ),
        other => panic!("claim on two busy machines: expected Busy, got {other:?}"),
    }
    assert!(matches!(
        store.get(&refused.id).await,
        Err(StoreError::NotFound(_))
    ));

    let any = queue(store, new_run("a1", 5, 40, 5), &["a1", "a2"]).await;
    must_wait(store, &any, "both machines held").await;
    finish(store, &held.id, RunStatus::Completed, 50).await;
    finish(store, &spread.id, RunStatus::Completed, 51).await;
    let asks: Vec<_> = (0..8)
        .map(|_| {
            let store = Arc::clone(store);
            let id = any.id.clone();
            tokio::spawn(async move { store.try_grant(&id).await })
        })
        .collect();
    let mut machines = Vec::new();
    for ask in asks {
        match ask.await.expect("a granting task does not panic") {
            Ok(run) => {
                assert_eq!(
                    run.status,
                    RunStatus::Pending,
                    "granted, by one ask or another"
                );
                machines.push(run.machine);
            }
            Err(error) => panic!("try_grant: {error:?}"),
        }
    }
    machines.dedup();
    assert_eq!(
        machines.len(),
        1,
        "one machine, whoever asked: {machines:?}"
    );
    let events = must_events(store, &any.id).await;
    assert_eq!(
        events
            .iter()
            .filter(|event| event.from == Some(RunStatus::Queued))
            .count(),
        1,
        "granted once: {events:?}"
    );
    let granted_on = machines[0].as_str();
    let other = if granted_on == "a1" { "a2" } else { "a1" };
    // The other machine was withdrawn from: free for a claim that does not wait.
    let states = states(store, &["a1", "a2"]).await;
    assert!(states.iter().all(|state| state.waiting.is_empty()));
    let next = claim_new(store, new_run(other, 6, 60, 6)).await;
    assert_eq!(next.machine.as_str(), other);
}
