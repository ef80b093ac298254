//! SqliteStore passes the RunStore contract.

use testfleet_contract::run_store::{Subject, run_store};
use testfleet_store_sqlite::{DATABASE_FILE, SqliteStore};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_store_passes_the_run_store_contract() {
    run_store(|| {
        let dir = tempfile::tempdir().expect("the temp dir is writable");
        let store =
            SqliteStore::open(&dir.path().join(DATABASE_FILE)).expect("a fresh database opens");
        Subject::with_guard(store, dir)
    })
    .await;
}
