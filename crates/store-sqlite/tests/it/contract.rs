//! SqliteStore passes the RunStore contract; other handles are other pools on the same file.

use testfleet_contract::run_store::{Subject, run_store};
use testfleet_store_sqlite::{DATABASE_FILE, SqliteStore};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_store_passes_the_run_store_contract() {
    run_store(|| {
        let dir = tempfile::tempdir().expect("the temp dir is writable");
        let path = dir.path().join(DATABASE_FILE);
        let store = SqliteStore::open(&path).expect("a fresh database opens");
        Subject::with_guard(store, dir)
            .reopened_by(move || SqliteStore::open(&path).expect("the database opens again"))
    })
    .await;
}
