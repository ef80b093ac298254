//! Leases and cancel requests, by the store's own clock; claims from independent handles.

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use testfleet_core::ErrorCode;
use testfleet_core::ports::{Claim, RunStore, StoreError};
use testfleet_core::run::{Run, RunStatus, Transition};

use super::*;

/// A lease short enough to wait for.
pub(super) const SHORT_LEASE: Duration = Duration::from_millis(300);
/// How long a case waits for the store's clock to pass a short lease.
const EXPIRY_DEADLINE: Duration = Duration::from_secs(20);

pub(super) async fn claims_start_the_owners_lease_by_the_store_clock(store: &Arc<dyn RunStore>) {
    // claim_new checks the lease of every claim against the store's clock; here, leases of
    // several lengths, and a run without an owner, which holds none.
    for (idx, lease) in [Duration::from_millis(1), LEASE, Duration::from_secs(86_400)]
        .into_iter()
        .enumerate()
    {
        let serial = u128::try_from(idx).expect("three leases");
        let mut new = new_run(&format!("m-{idx}"), 1, 0, serial);
        new.lease = lease;
        claim_new(store, new).await;
    }
    let mut bare = new_run("m-bare", 1, 0, 9);
    bare.owner = None;
    let run = claim_new(store, bare).await;
    assert_eq!(run.lease_expires_at, None, "no owner, no lease");
    assert_eq!(must_get(store, &run.id).await.lease_expires_at, None);
}

pub(super) async fn renewals_extend_the_lease_by_the_store_clock(store: &Arc<dyn RunStore>) {
    let run = claim_new(store, new_run("linux-1", 1, 0, 1)).await;
    let holder = run.owner().expect("the contract's runs have an owner");
    let events_before = must_events(store, &run.id).await;
    for lease in [Duration::from_secs(3_600), Duration::from_millis(1), LEASE] {
        let before = store_now(store).await;
        let renewed = store.renew_lease(&run.id, &holder, lease).await;
        let after = store_now(store).await;
        let Ok(renewed) = renewed else {
            panic!("renewing the lease of its owner: {renewed:?}");
        };
        check_lease(&renewed, before, after, lease, "renew_lease");
        let mut expected = run.clone();
        expected.lease_expires_at = renewed.lease_expires_at;
        assert_eq!(
            renewed, expected,
            "a renewal changes the lease and nothing else"
        );
        assert_eq!(
            must_get(store, &run.id).await,
            renewed,
            "the renewal is stored"
        );
    }
    // Renewed while running, too; renewals are not events.
    let running = finish(store, &run.id, RunStatus::Running, 10).await;
    let renewed = store
        .renew_lease(&run.id, &holder, LEASE)
        .await
        .expect("a running run's owner renews");
    assert_eq!(renewed.status, RunStatus::Running);
    assert_eq!(renewed.started_at, running.started_at);
    assert_eq!(
        must_events(store, &run.id).await.len(),
        events_before.len() + 1,
        "only the start is an event"
    );
}

pub(super) async fn renewals_are_refused_after_a_takeover(store: &Arc<dyn RunStore>) {
    let run = claim_new(store, new_run("linux-1", 1, 0, 1)).await;
    let claimer = run.owner().expect("the contract's runs have an owner");
    let worker = owner(5_150, Some(1));
    let handed_over = store
        .set_owner(&run.id, &worker, LEASE)
        .await
        .expect("the run takes a new owner");

    match store.renew_lease(&run.id, &claimer, LEASE).await {
        Err(StoreError::OwnerChanged { id }) => assert_eq!(id, run.id),
        other => panic!("renewal by the former owner: expected OwnerChanged, got {other:?}"),
    }
    // An owner on another controller with the same pid is another owner.
    let mut elsewhere = worker.clone();
    elsewhere.host = Some(ControllerId::parse("ctl-2.example").expect("a valid id"));
    match store.renew_lease(&run.id, &elsewhere, LEASE).await {
        Err(StoreError::OwnerChanged { .. }) => {}
        other => {
            panic!("renewal by a same-pid owner elsewhere: expected OwnerChanged, got {other:?}")
        }
    }
    assert_eq!(
        must_get(store, &run.id).await,
        handed_over,
        "nothing written"
    );

    // Reaped (or ended by anyone): the owner's renewal is refused as a conflict.
    let lost = Transition::new(RunStatus::Pending, RunStatus::Interrupted, at(5))
        .with_error(ErrorCode::WorkerLost, "owner gone")
        .with_owner_guard(Some(worker.clone()));
    let ended = store
        .transition(&run.id, lost)
        .await
        .expect("the guard matches the current owner");
    assert_eq!(
        ended.lease_expires_at, None,
        "a terminal run holds no lease"
    );
    match store.renew_lease(&run.id, &worker, LEASE).await {
        Err(StoreError::Conflict {
            expected: RunStatus::Pending,
            actual: RunStatus::Interrupted,
            ..
        }) => {}
        other => panic!("renewal of a terminal run: expected Conflict, got {other:?}"),
    }
    assert_eq!(must_get(store, &run.id).await, ended, "nothing written");
}

/// Waits, by the store's clock, until `run`'s lease has passed.
pub(super) async fn wait_for_expiry(store: &Arc<dyn RunStore>, run: &Run) {
    let expires_at = run.lease_expires_at.expect("the run holds a lease");
    let deadline = Instant::now() + EXPIRY_DEADLINE;
    while store_now(store).await <= expires_at {
        assert!(
            Instant::now() < deadline,
            "the store's clock did not pass {expires_at} within {EXPIRY_DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub(super) async fn an_expired_lease_lets_the_reaper_in(store: &Arc<dyn RunStore>) {
    let reap = |run: &Run| {
        Transition::new(run.status, RunStatus::Interrupted, at(50))
            .with_error(ErrorCode::WorkerLost, "the lease expired")
            .with_expired_lease_guard(run.owner())
    };

    // A lease that holds: the guarded change is refused, whoever asks.
    let held = claim_new(store, new_run("linux-1", 1, 0, 1)).await;
    let events_before = must_events(store, &held.id).await;
    match store.transition(&held.id, reap(&held)).await {
        Err(StoreError::LeaseHeld { id }) => assert_eq!(id, held.id),
        other => panic!("reaping a run whose lease holds: expected LeaseHeld, got {other:?}"),
    }
    assert_eq!(must_get(store, &held.id).await, held, "nothing written");
    assert_eq!(must_events(store, &held.id).await, events_before);

    // A short lease that runs out, and an owner that renews in time after all.
    let mut short = new_run("linux-2", 1, 0, 2);
    short.lease = SHORT_LEASE;
    let renewed_late = claim_new(store, short).await;
    wait_for_expiry(store, &renewed_late).await;
    let holder = renewed_late.owner().expect("an owner");
    let renewed = store
        .renew_lease(&renewed_late.id, &holder, LEASE)
        .await
        .expect("an owner renews an expired lease that nobody acted on");
    match store.transition(&renewed.id, reap(&renewed_late)).await {
        Err(StoreError::LeaseHeld { .. }) => {}
        other => panic!("reaping after the owner renewed: expected LeaseHeld, got {other:?}"),
    }

    // A short lease that runs out: the reaper's change goes through, and only once.
    let mut short = new_run("linux-3", 1, 0, 3);
    short.lease = SHORT_LEASE;
    let expiring = claim_new(store, short).await;
    let running = finish(store, &expiring.id, RunStatus::Running, 10).await;
    wait_for_expiry(store, &running).await;
    let change = reap(&running);
    let mut expected = running.clone();
    let mut expected_events = must_events(store, &running.id).await;
    expected_events.push(
        expected
            .apply(&change, store_now(store).await)
            .expect("the lease has expired by the store's clock"),
    );
    let reaped = store.transition(&running.id, change.clone()).await;
    assert_eq!(
        reaped.as_ref().ok(),
        Some(&expected),
        "the reaper's change: {reaped:?}"
    );
    assert_eq!(must_events(store, &running.id).await, expected_events);
    match store.transition(&running.id, change).await {
        Err(StoreError::Conflict { .. }) => {}
        other => panic!("a second reap: expected Conflict, got {other:?}"),
    }
    // The machine is free again.
    claim_new(store, new_run("linux-3", 2, 100, 4)).await;
}

pub(super) async fn cancel_requests_are_recorded_for_the_owner(store: &Arc<dyn RunStore>) {
    let run = claim_new(store, new_run("linux-1", 1, 0, 1)).await;
    let holder = run.owner().expect("an owner");
    let events_before = must_events(store, &run.id).await;

    let before = store_now(store).await;
    let asked = store.request_cancel(&run.id).await;
    let after = store_now(store).await;
    let Ok(asked) = asked else {
        panic!("a cancel request on a pending run: {asked:?}");
    };
    let requested_at = asked.cancel_requested_at.expect("the request is recorded");
    assert!(
        before <= requested_at && requested_at <= after,
        "the request is timed by the store's clock ({before} ≤ {requested_at} ≤ {after})"
    );
    let mut expected = run.clone();
    expected.cancel_requested_at = Some(requested_at);
    assert_eq!(asked, expected, "a request changes nothing else");
    assert_eq!(must_get(store, &run.id).await, expected);

    // The owner sees it when it renews; a second request keeps the first time; a hand-over
    // keeps it.
    let renewed = store
        .renew_lease(&run.id, &holder, LEASE)
        .await
        .expect("the owner renews");
    assert_eq!(renewed.cancel_requested_at, Some(requested_at));
    let again = store
        .request_cancel(&run.id)
        .await
        .expect("a second request");
    assert_eq!(again.cancel_requested_at, Some(requested_at));
    let worker = owner(77, None);
    let handed = store
        .set_owner(&run.id, &worker, LEASE)
        .await
        .expect("a hand-over");
    assert_eq!(handed.cancel_requested_at, Some(requested_at));
    assert_eq!(
        must_events(store, &run.id).await,
        events_before,
        "requests are not events"
    );

    // It stays on the record once the run ends; a terminal run is returned unchanged.
    let ended = finish(store, &run.id, RunStatus::Interrupted, 10).await;
    assert_eq!(ended.cancel_requested_at, Some(requested_at));
    let done = claim_new(store, new_run("linux-2", 1, 20, 2)).await;
    let done = finish(store, &done.id, RunStatus::Completed, 30).await;
    assert_eq!(
        store.request_cancel(&done.id).await.ok(),
        Some(done.clone())
    );
    assert_eq!(must_get(store, &done.id).await.cancel_requested_at, None);
}

/// Sixteen handles opened as other processes would (each on its own thread, with its own
/// runtime), all claiming one machine at once: exactly one creates the run.
pub(super) async fn claims_from_independent_handles_have_one_winner(subject: &Subject) {
    const HANDLES: u8 = 16;
    let barrier = Arc::new(Barrier::new(usize::from(HANDLES)));
    let mut threads = Vec::new();
    for handle_idx in 0..HANDLES {
        let reopen = Arc::clone(&subject.reopen);
        let barrier = Arc::clone(&barrier);
        let new = new_run(
            "shared",
            handle_idx % 3,
            i64::from(handle_idx),
            u128::from(handle_idx),
        );
        threads.push(std::thread::spawn(move || {
            let store = reopen();
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime starts");
            barrier.wait();
            runtime.block_on(store.claim(new))
        }));
    }
    let outcomes: Vec<Result<Claim, StoreError>> = tokio::task::spawn_blocking(move || {
        threads
            .into_iter()
            .map(|thread| thread.join().expect("a claiming thread does not panic"))
            .collect()
    })
    .await
    .expect("the joining task does not panic");
    let mut created = Vec::new();
    let mut active = Vec::new();
    for outcome in outcomes {
        match outcome {
            Ok(Claim::Created(run)) => created.push(run),
            Ok(Claim::Active(run)) => active.push(run),
            Err(error) => panic!("a claim from another handle failed: {error:?}"),
        }
    }
    assert_eq!(
        created.len(),
        1,
        "exactly one handle creates the run: {created:?}"
    );
    let winner = &created[0];
    assert!(
        active.iter().all(|run| run.id == winner.id),
        "every other handle gets the winner's run"
    );
    let store = &subject.store;
    assert_eq!(store.active_runs().await.ok(), Some(vec![winner.clone()]));
    assert_eq!(
        must_list(store, RunFilter::default()).await,
        vec![winner.id.clone()],
        "nothing but the winner was written"
    );
}
