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

/// A database whose default isolation is SERIALIZABLE makes PostgreSQL refuse conflicting
/// writes with SQLSTATE 40001: the suite still passes (its races included), because those are
/// retried, and the server's log shows that they happened.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_store_passes_the_contract_under_serializable_isolation() {
    let cluster = tokio::task::block_in_place(cluster);
    cluster
        .create_database("strict")
        .expect("a database is created");
    cluster
        .psql("ALTER DATABASE strict SET default_transaction_isolation TO 'serializable'")
        .expect("the isolation is set");
    let url = cluster.url(testfleet_testkit::postgres::SUPERUSER, "strict");
    run_store(|| {
        let config = crate::support::config(&url, &crate::support::fresh_schema("strict"));
        let store =
            tokio::task::block_in_place(|| PostgresStore::open(&config)).expect("the store opens");
        Subject::new(store).reopened_by(move || {
            PostgresStore::open(&config).expect("another pool on the same schema opens")
        })
    })
    .await;
    let log = cluster.log();
    assert!(
        log.contains("could not serialize access"),
        "the races met serialization failures, and they were retried; server log:\n{log}"
    );
}
