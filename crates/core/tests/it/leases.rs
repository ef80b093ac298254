//! Owners that are leases: the heartbeat renews them, the reaper ends a run whose lease expired
//! by the store's clock, a cancel request in the store cancels the run as SIGTERM would, and a
//! runner whose run was taken over stops without touching it.

use std::time::{Duration, Instant};

use testfleet_contract::fake_ssh::FakeScript;
use testfleet_core::hash::hash_dir;
use testfleet_core::ports::RunStore as _;
use testfleet_core::runner::{
    LeaseSettings, Liveness, NoObserver, OwnerProbe, StopSignals, reap_lost_runs,
};
use testfleet_core::{ControllerId, ErrorCode, Run, RunOwner, RunStatus};

use crate::runner::{Harness, StepClock, harness, harness_with, local_owner, machine, request};

/// Says what it is told about every owner.
struct Says(Liveness);

impl OwnerProbe for Says {
    fn liveness(&self, _owner: &RunOwner) -> Liveness {
        self.0
    }
}

fn remote_owner(pid: u32) -> RunOwner {
    RunOwner {
        host: Some(ControllerId::parse("ctl-there").expect("a valid id")),
        pid,
        start_time: Some(3),
    }
}

async fn claim(h: &Harness, name: &str, owner: RunOwner) -> Run {
    let manifest = hash_dir(h.test_dir.path()).expect("hashes");
    let mut req = request(machine(name, "linux"));
    req.owner = Some(owner);
    h.runner.prepare(&manifest, &req).await.expect("claims").run
}

/// Polls `check` on the stored run every 10 ms until it holds, for up to 10 s.
async fn wait_until(h: &Harness, run: &Run, what: &str, check: impl Fn(&Run) -> bool) -> Run {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let stored = h.store.get(&run.id).await.expect("the run exists");
        if check(&stored) {
            return stored;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: never happened: {stored:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_lease_of_another_controller_is_reaped_only_once_it_expired_by_the_store_clock() {
    let h = harness(FakeScript::default());
    let run = claim(&h, "m-1", remote_owner(4_000_000)).await;
    let expires_at = run.lease_expires_at.expect("a claimed run holds a lease");
    let store_now = h.store.now().await.expect("the clock");
    let left = expires_at.since(store_now);
    assert!(
        left <= LeaseSettings::DEFAULT_DURATION
            && left > LeaseSettings::DEFAULT_DURATION - Duration::from_secs(5),
        "the lease lasts the default 30 s from the claim: {left:?} left"
    );

    // Another controller's owner, seen from here: not before the lease expired ...
    let elsewhere = Says(Liveness::Elsewhere);
    let clock = StepClock::default();
    h.store
        .advance_clock(LeaseSettings::DEFAULT_DURATION - Duration::from_secs(1));
    let reaped = reap_lost_runs(h.store.as_ref(), &clock, &elsewhere).await;
    assert_eq!(reaped.expect("reaps").len(), 0, "the lease still holds");
    assert_eq!(
        h.store.get(&run.id).await.expect("exists").status,
        RunStatus::Pending
    );

    // ... and once it has, by the store's clock (the reaper's own clock never moved).
    h.store.advance_clock(Duration::from_secs(2));
    let reaped = reap_lost_runs(h.store.as_ref(), &clock, &elsewhere)
        .await
        .expect("reaps");
    assert_eq!(reaped.len(), 1);
    let lost = &reaped[0];
    assert_eq!(lost.status, RunStatus::Interrupted);
    let error = lost.error.clone().expect("an error");
    assert_eq!(error.code, ErrorCode::WorkerLost);
    assert!(
        error
            .message
            .contains("pid 4000000 on controller ctl-there")
            && error.message.contains("lease")
            && error.message.contains("expired"),
        "{}",
        error.message
    );
    assert_eq!(lost.lease_expires_at, None);
}

#[tokio::test]
async fn a_live_local_owner_whose_lease_expired_is_reaped_and_a_dead_one_at_once() {
    let h = harness(FakeScript::default());
    let alive_but_expired = claim(&h, "m-1", local_owner(1, Some(1))).await;
    let clock = StepClock::default();
    assert!(
        reap_lost_runs(h.store.as_ref(), &clock, &Says(Liveness::Alive))
            .await
            .expect("reaps")
            .is_empty()
    );
    h.store.advance_clock(LeaseSettings::DEFAULT_DURATION);
    let reaped = reap_lost_runs(h.store.as_ref(), &clock, &Says(Liveness::Alive))
        .await
        .expect("reaps");
    assert_eq!(
        reaped.iter().map(|r| &r.id).collect::<Vec<_>>(),
        [&alive_but_expired.id]
    );

    // The fast path: a dead local owner is reaped although its lease holds.
    let dead = claim(&h, "m-2", local_owner(4_000_000, Some(1))).await;
    let reaped = reap_lost_runs(h.store.as_ref(), &clock, &Says(Liveness::Dead))
        .await
        .expect("reaps");
    assert_eq!(reaped.iter().map(|r| &r.id).collect::<Vec<_>>(), [&dead.id]);
    let message = reaped[0].error.clone().expect("an error").message;
    assert!(message.contains("is gone"), "{message}");
}

/// Executes `run` on machine `m-1` in a task of its own.
fn spawn_execute(
    h: &Harness,
    run: &Run,
) -> tokio::task::JoinHandle<Result<Run, testfleet_core::DispatchError>> {
    let runner = h.runner.clone();
    let run = run.clone();
    tokio::spawn(async move {
        runner
            .execute(
                run,
                &machine("m-1", "linux"),
                None,
                &StopSignals::default(),
                &NoObserver,
            )
            .await
    })
}

fn short_leases(config: &mut testfleet_core::runner::RunnerConfig) {
    config.lease = LeaseSettings {
        duration: Duration::from_millis(400),
        heartbeat: Duration::from_millis(50),
    };
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_heartbeat_renews_the_lease_while_the_run_runs() {
    let h = harness_with(FakeScript::default(), short_leases);
    h.ssh
        .edit_script(|s| s.exec.duration = Duration::from_millis(1_500));
    let run = claim(&h, "m-1", local_owner(1, Some(1))).await;
    let first_lease = run.lease_expires_at.expect("a lease");
    let executing = spawn_execute(&h, &run);
    // Well past the first lease, the run still holds a lease that the heartbeat moved on, and
    // a reaper elsewhere finds nothing to reap.
    tokio::time::sleep(Duration::from_millis(900)).await;
    let stored = h.store.get(&run.id).await.expect("exists");
    assert_eq!(stored.status, RunStatus::Running);
    let renewed = stored.lease_expires_at.expect("still a lease");
    assert!(
        renewed > first_lease.after(Duration::from_millis(400)),
        "renewed to {renewed}, first {first_lease}"
    );
    let reaped = reap_lost_runs(
        h.store.as_ref(),
        &StepClock::default(),
        &Says(Liveness::Elsewhere),
    )
    .await
    .expect("reaps");
    assert!(
        reaped.is_empty(),
        "a renewed lease is not reaped: {reaped:?}"
    );
    let done = executing.await.expect("no panic").expect("recorded");
    assert_eq!(done.status, RunStatus::Completed, "{done:?}");
    assert_eq!(done.lease_expires_at, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_request_in_the_store_cancels_like_sigterm() {
    let h = harness_with(FakeScript::default(), short_leases);
    h.ssh.edit_script(|s| {
        s.exec.duration = Duration::from_secs(600);
        s.download.files = vec![("partial.txt".into(), b"p".to_vec())];
    });
    let run = claim(&h, "m-1", local_owner(1, Some(1))).await;
    let store = h.store.clone();
    let id = run.id.clone();
    let requester = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        store
            .request_cancel(&id)
            .await
            .expect("the request is recorded")
    });
    let started = Instant::now();
    let done = h
        .runner
        .execute(
            run.clone(),
            &machine("m-1", "linux"),
            None,
            &StopSignals::default(),
            &NoObserver,
        )
        .await
        .expect("recorded");
    let asked = requester.await.expect("no panic");
    assert!(asked.cancel_requested_at.is_some());
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "cancelled quickly"
    );
    assert_eq!(done.status, RunStatus::Interrupted, "{done:?}");
    assert_eq!(done.error.map(|e| e.code), Some(ErrorCode::Interrupted));
    assert_eq!(done.signal.as_deref(), Some("TERM"));
    assert_eq!(
        done.artifacts.map(|a| a.files),
        Some(1),
        "artifacts still fetched"
    );
    let calls = h.ssh.call_names();
    assert_eq!(
        calls[calls.len() - 6..],
        ["exec", "kill", "download", "remove", "remove", "close"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_whose_run_was_taken_over_stops_without_touching_it() {
    let h = harness_with(FakeScript::default(), short_leases);
    h.ssh
        .edit_script(|s| s.exec.duration = Duration::from_secs(600));
    let run = claim(&h, "m-1", local_owner(1, Some(1))).await;
    let executing = spawn_execute(&h, &run);
    let running = wait_until(&h, &run, "the run starts", |r| {
        r.status == RunStatus::Running
    })
    .await;
    // Another process takes the run over (as a reaper's WORKER_LOST or a new owner would).
    let taker = remote_owner(77);
    let taken = h
        .store
        .set_owner(&run.id, &taker, Duration::from_secs(600))
        .await
        .expect("taken over");
    let events_before = h.event_trail(&run.id).await;
    let returned = tokio::time::timeout(Duration::from_secs(10), executing)
        .await
        .expect("the runner stops at its next heartbeat")
        .expect("no panic")
        .expect("returns the stored run");
    assert_eq!(
        returned.status,
        RunStatus::Running,
        "not ended by the old owner"
    );
    assert_eq!(returned.owner(), Some(taker));
    let stored = h.store.get(&run.id).await.expect("exists");
    assert_eq!(stored, taken, "the run was not touched after the takeover");
    assert_eq!(h.event_trail(&run.id).await, events_before);
    assert_eq!(running.started_at, stored.started_at);
    let calls = h.ssh.call_names();
    assert!(
        !calls
            .iter()
            .any(|call| *call == "kill" || *call == "download"),
        "nothing more is done on the machine: {calls:?}"
    );
}
