//! FakeStore passes the RunStore contract, and its failure switch works.

use testfleet_contract::fake_store::FakeStore;
use testfleet_contract::run_store::{Subject, run_store};
use testfleet_core::ports::{RunFilter, RunStore, StoreError};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fake_store_passes_the_run_store_contract() {
    run_store(|| Subject::new(FakeStore::new())).await;
}

/// Leases follow the store's clock, not the caller's: the suite passes with the fake's clock an
/// hour ahead of, or behind, the system clock.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fake_store_with_a_skewed_clock_passes_the_contract() {
    for skew_ms in [3_600_000, -3_600_000] {
        run_store(|| {
            let store = FakeStore::new();
            store.skew_clock(skew_ms);
            Subject::new(store)
        })
        .await;
    }
}

#[tokio::test]
async fn a_broken_fake_store_fails_every_call_until_healed() {
    let store = FakeStore::default();
    store.set_broken(Some("disk on fire"));
    match store.list(&RunFilter::default()).await {
        Err(StoreError::Backend { message, .. }) => assert_eq!(message, "disk on fire"),
        other => panic!("expected a backend error, got {other:?}"),
    }
    store.set_broken(None);
    assert_eq!(
        store.list(&RunFilter::default()).await.ok(),
        Some(Vec::new())
    );
}
