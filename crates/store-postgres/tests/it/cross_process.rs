//! The machine lock holds across processes: 16 processes claim one machine of one shared
//! schema at the same moment, and exactly one of them creates the run. The test binary runs
//! itself as each child (`--exact` this test, with [`CHILD_ENV`] set).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use testfleet_core::ports::{Claim, RunFilter, RunStore};
use testfleet_store_postgres::PostgresStore;

use crate::support::{cluster, config, fresh_schema};

const CHILD_ENV: &str = "TESTFLEET_STORE_POSTGRES_CLAIM_CHILD";
const TEST_NAME: &str = "cross_process::sixteen_processes_claim_one_machine";
const CHILDREN: usize = 16;

#[test]
fn sixteen_processes_claim_one_machine() {
    if let Ok(spec) = std::env::var(CHILD_ENV) {
        child(&spec);
        return;
    }
    let cluster = cluster();
    let schema = fresh_schema("processes");
    let url = cluster.superuser_url();
    // Every child migrates the fresh schema too: only one may.
    let go_at = std::time::SystemTime::now() + Duration::from_secs(3);
    let go_ms = go_at
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_millis();
    let exe = std::env::current_exe().expect("the test binary knows its path");
    let children: Vec<_> = (0..CHILDREN)
        .map(|child_idx| {
            Command::new(&exe)
                .args([TEST_NAME, "--exact", "--nocapture", "--test-threads=1"])
                .env(CHILD_ENV, format!("{child_idx}\t{url}\t{schema}\t{go_ms}"))
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("the test binary runs itself")
        })
        .collect();
    let mut results = Vec::new();
    for child in children {
        let output = child.wait_with_output().expect("a child ends");
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(
            output.status.success(),
            "a child failed: {stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let line = stdout
            .lines()
            .find_map(|line| line.split_once("CLAIM-RESULT ").map(|(_, result)| result))
            .unwrap_or_else(|| panic!("a child printed no result: {stdout}"))
            .to_owned();
        results.push(line);
    }
    let created: Vec<_> = results
        .iter()
        .filter(|r| r.starts_with("created "))
        .collect();
    assert_eq!(
        created.len(),
        1,
        "exactly one process creates the run: {results:?}"
    );
    let winner = created[0].trim_start_matches("created ");
    assert!(
        results.iter().all(|r| r.ends_with(winner)),
        "every process got the winner's run: {results:?}"
    );
    let store = PostgresStore::open(&config(&url, &schema)).expect("opens");
    let all = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
        .block_on(store.list(&RunFilter::default()))
        .expect("lists");
    assert_eq!(all.len(), 1, "nothing but the winner was written: {all:?}");
}

fn child(spec: &str) {
    let fields: Vec<&str> = spec.split('\t').collect();
    let [child_idx, url, schema, go_ms] = fields[..] else {
        panic!("bad child spec {spec:?}");
    };
    let child_idx: u128 = child_idx.parse().expect("a number");
    let go_ms: u128 = go_ms.parse().expect("a number");
    let store = PostgresStore::open(&config(url, schema)).expect("the child opens the store");
    let now_ms = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after 1970")
            .as_millis()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while now_ms() < go_ms && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    let mut new = crate::support::new_run("contended", child_idx);
    new.test_dir_hash =
        testfleet_core::TestDirHash::parse(&format!("{:02x}", child_idx % 2).repeat(32))
            .expect("a hash");
    let claimed = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime")
        .block_on(store.claim(new))
        .expect("the claim succeeds");
    match claimed {
        Claim::Created(run) => println!("CLAIM-RESULT created {}", run.id),
        Claim::Active(run) => println!("CLAIM-RESULT active {}", run.id),
    }
}
