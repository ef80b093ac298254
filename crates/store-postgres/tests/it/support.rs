//! One private cluster per test binary, and a fresh schema per store.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use testfleet_core::run::{NewRun, RunPaths};
use testfleet_core::{MachineName, RunId, TargetOs, TestDirHash, Timestamp};
use testfleet_store_postgres::{PgConfig, PgEnv, PostgresStore};
use testfleet_testkit::postgres::PrivateCluster;

/// A private cluster for one test; it is stopped (by pid) and removed when dropped.
pub fn cluster() -> PrivateCluster {
    match PrivateCluster::start() {
        Ok(cluster) => cluster,
        Err(error) => panic!("the private PostgreSQL cluster did not start: {error}"),
    }
}

/// A schema name no other store of this process uses.
pub fn fresh_schema(prefix: &str) -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{prefix}_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// The superuser's config for `schema`, with no password from the environment.
pub fn config(url: &str, schema: &str) -> PgConfig {
    PgConfig::parse(url, Some(schema), &PgEnv::default()).expect("a valid URL")
}

/// A store on a fresh schema of `cluster`'s `postgres` database.
pub fn fresh_store(cluster: &PrivateCluster, prefix: &str) -> (PostgresStore, PgConfig) {
    let config = config(&cluster.superuser_url(), &fresh_schema(prefix));
    let store = PostgresStore::open(&config).expect("the private cluster opens");
    (store, config)
}

/// A new run without an owner on `machine`; `serial` makes ids distinct.
pub fn new_run(machine: &str, serial: u128) -> NewRun {
    let id = RunId::from_parts(1_795_885_723_000, serial);
    NewRun {
        paths: RunPaths::in_state_dir(&PathBuf::from("/state"), &id),
        id,
        machine: MachineName::parse(machine).expect("a valid name"),
        os: TargetOs::linux(),
        test_dir: PathBuf::from("/home/ci/tests"),
        test_dir_hash: TestDirHash::parse(&"ab".repeat(32)).expect("a hash"),
        entrypoint: "run.sh".to_owned(),
        invocation: testfleet_core::Invocation::default(),
        created_at: Timestamp::from_unix_ms(1_795_885_723_000),
        timeout_ms: None,
        keep_remote: false,
        owner: None,
        lease: Duration::from_secs(30),
        controller: None,
    }
}
