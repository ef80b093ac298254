//! Claims: the machine lock, idempotency of the active run, and every recorded field.

use std::path::PathBuf;
use std::sync::Arc;

use testfleet_core::TargetOs;
use testfleet_core::ports::{Claim, RunFilter, RunStore, StoreError};
use testfleet_core::run::{RunEventRecord, RunPaths, RunStatus};

use super::*;

pub(super) async fn claim_creates_a_pending_run(store: &Arc<dyn RunStore>) {
    let new = new_run("linux-1", 1, 0, 1);
    let run = claim_new(store, new).await;
    assert_eq!(run.status, RunStatus::Pending);
    assert_eq!(must_get(store, &run.id).await, run);
    assert_eq!(
        must_events(store, &run.id).await,
        vec![RunEventRecord::created(&run)]
    );
}

pub(super) async fn claim_returns_the_active_run(store: &Arc<dyn RunStore>) {
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

pub(super) async fn terminal_runs_do_not_block_a_claim(store: &Arc<dyn RunStore>) {
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

pub(super) async fn claim_records_every_field(store: &Arc<dyn RunStore>) {
    let mut new = new_run("win-1", 0xab, 0, 1);
    new.os = TargetOs::windows();
    new.entrypoint = "run.ps1".to_owned();
    new.test_dir = PathBuf::from("/home/ci/it's a \"dir\" with ünïcode $HOME");
    new.timeout_ms = Some(u64::MAX);
    new.keep_remote = true;
    new.paths = RunPaths::new(PathBuf::from("/state/runs/odd dir 'quoted'"));
    new.owner = Some(owner(u32::MAX, Some(u64::MAX)));
    let run = claim_new(store, new).await;
    assert_eq!(must_get(store, &run.id).await, run);

    let mut bare = new_run("linux-1", 0, 1, 2);
    bare.owner = None;
    bare.timeout_ms = Some(0);
    let bare_run = claim_new(store, bare).await;
    assert_eq!(must_get(store, &bare_run.id).await, bare_run);

    let mut no_start_time = new_run("linux-2", 0, 2, 3);
    no_start_time.owner = Some(owner(1, None));
    let run = claim_new(store, no_start_time).await;
    assert_eq!(must_get(store, &run.id).await.owner(), Some(owner(1, None)));

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

pub(super) async fn concurrent_claims_have_one_winner(store: &Arc<dyn RunStore>) {
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
