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

/// Whatever a database's default isolation, the suite passes, its races included: claims and
/// grants pin READ COMMITTED under their machines' locks (so that they see what the lock's
/// previous holder committed, which a snapshot taken before the lock, as REPEATABLE READ and
/// SERIALIZABLE take it, would miss); the other writes are compare-and-sets, and a 40001 they
/// meet under SERIALIZABLE is retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_store_passes_the_contract_under_stricter_isolation() {
    let cluster = tokio::task::block_in_place(cluster);
    for (database, isolation) in [
        ("strict", "serializable"),
        ("repeatable", "repeatable read"),
    ] {
        cluster
            .create_database(database)
            .expect("a database is created");
        cluster
            .psql(&format!(
                "ALTER DATABASE {database} SET default_transaction_isolation TO '{isolation}'"
            ))
            .expect("the isolation is set");
        let url = cluster.url(testfleet_testkit::postgres::SUPERUSER, database);
        eprintln!("default_transaction_isolation = {isolation}");
        run_store(|| {
            let config = crate::support::config(&url, &crate::support::fresh_schema(database));
            let store = tokio::task::block_in_place(|| PostgresStore::open(&config))
                .expect("the store opens");
            Subject::new(store).reopened_by(move || {
                PostgresStore::open(&config).expect("another pool on the same schema opens")
            })
        })
        .await;
    }
}
