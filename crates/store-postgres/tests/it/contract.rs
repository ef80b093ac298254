//! PostgresStore passes the RunStore contract, every case, each on a fresh schema.

use testfleet_contract::run_store::{Subject, run_store};
use testfleet_store_postgres::PostgresStore;

use crate::support::{cluster, fresh_store};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_store_passes_the_run_store_contract() {
    let cluster = tokio::task::block_in_place(cluster);
    run_store(|| {
        // The factory is called on the runtime's thread; opening blocks.
        let (store, config) = tokio::task::block_in_place(|| fresh_store(&cluster, "contract"));
        Subject::new(store).reopened_by(move || {
            PostgresStore::open(&config).expect("another pool on the same schema opens")
        })
    })
    .await;
}
