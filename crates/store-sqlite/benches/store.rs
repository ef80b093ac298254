//! Throughput of the SQLite run store: `cargo bench -p testfleet-store-sqlite`.
//!
//! Prints one table: whole run lifecycles (claim, start, complete) per second on a fresh
//! database, and the median time to list the newest 50 runs of one machine among 100,000.
//! Targets: at least 2,000 lifecycles/s; a listing under 5 ms.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use testfleet_core::ports::{Claim, RunFilter, RunStore};
use testfleet_core::run::{NewRun, RunPaths, RunStatus, Transition};
use testfleet_core::{MachineName, RunId, TargetOs, TestDirHash, Timestamp};
use testfleet_store_sqlite::{DATABASE_FILE, SqliteStore};

const LIFECYCLES: u64 = 10_000;
const LIST_RUNS: u64 = 100_000;
const LIST_MACHINES: u64 = 100;
const LIST_QUERIES: usize = 20;
const LIST_LIMIT: usize = 50;
/// Concurrent writers used to fill the listing database; each owns every fourth machine, so
/// that two writers never claim the same one.
const FILL_WRITERS: u64 = 4;

fn new_run(machine: &str, serial: u64) -> NewRun {
    // Ids sort like the runs were created one millisecond apart.
    let unix_ms = 1_795_885_723_000 + serial;
    let id = RunId::from_parts(unix_ms, u128::from(serial));
    NewRun {
        paths: RunPaths::in_state_dir(&PathBuf::from("/state"), &id),
        id,
        machine: MachineName::parse(machine).expect("bench machine names are valid"),
        os: TargetOs::linux(),
        test_dir: PathBuf::from("/home/ci/tests/hello"),
        test_dir_hash: TestDirHash::parse(&"ab".repeat(32)).expect("64 hex digits form a hash"),
        entrypoint: "run.sh".to_owned(),
        created_at: Timestamp::from_unix_ms(i64::try_from(unix_ms).expect("fits in i64")),
        timeout_ms: Some(1_800_000),
        keep_remote: false,
        owner: None,
        lease: Duration::from_secs(30),
        controller: None,
    }
}

async fn lifecycle(store: &dyn RunStore, machine: &str, serial: u64) {
    let Ok(Claim::Created(run)) = store.claim(new_run(machine, serial)).await else {
        panic!("the bench claims a free machine");
    };
    let at = run.created_at;
    let start = Transition::new(RunStatus::Pending, RunStatus::Running, at);
    store
        .transition(&run.id, start)
        .await
        .expect("the start is recorded");
    let mut done = Transition::new(RunStatus::Running, RunStatus::Completed, at);
    done.exit_code = Some(0);
    store
        .transition(&run.id, done)
        .await
        .expect("the completion is recorded");
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .build()
        .expect("a runtime starts");
    let dir = tempfile::tempdir().expect("the temp dir is writable");

    // Lifecycles, one after another, as one process dispatching runs would.
    let store = SqliteStore::open(&dir.path().join(DATABASE_FILE)).expect("a fresh database opens");
    let started = Instant::now();
    runtime.block_on(async {
        for serial in 0..LIFECYCLES {
            lifecycle(&store, "linux-1", serial).await;
        }
    });
    let lifecycle_secs = started.elapsed().as_secs_f64();
    let per_sec = LIFECYCLES as f64 / lifecycle_secs;

    // Listing among many runs of many machines.
    let list_dir = dir.path().join("list");
    std::fs::create_dir(&list_dir).expect("the list dir is created");
    let store: Arc<dyn RunStore> =
        Arc::new(SqliteStore::open(&list_dir.join(DATABASE_FILE)).expect("a fresh database opens"));
    let fill_started = Instant::now();
    runtime.block_on(async {
        let mut writers = Vec::new();
        for writer_idx in 0..FILL_WRITERS {
            let store = Arc::clone(&store);
            writers.push(tokio::spawn(async move {
                let mut serial = writer_idx;
                while serial < LIST_RUNS {
                    let machine_idx = writer_idx
                        + FILL_WRITERS * (serial / FILL_WRITERS % (LIST_MACHINES / FILL_WRITERS));
                    let machine = format!("m-{machine_idx}");
                    lifecycle(store.as_ref(), &machine, serial).await;
                    serial += FILL_WRITERS;
                }
            }));
        }
        for writer in writers {
            writer.await.expect("a writer does not panic");
        }
    });
    let fill_secs = fill_started.elapsed().as_secs_f64();

    let filter = RunFilter {
        machine: Some(MachineName::parse("m-42").expect("a valid name")),
        status: None,
        limit: Some(LIST_LIMIT),
    };
    let mut timings: Vec<Duration> = runtime.block_on(async {
        let mut timings = Vec::new();
        for _ in 0..LIST_QUERIES {
            let started = Instant::now();
            let runs = store.list(&filter).await.expect("runs can be listed");
            timings.push(started.elapsed());
            assert_eq!(runs.len(), LIST_LIMIT);
        }
        timings
    });
    timings.sort();
    let median_ms = timings[timings.len() / 2].as_secs_f64() * 1_000.0;
    let worst_ms = timings[timings.len() - 1].as_secs_f64() * 1_000.0;

    println!("{:<58} {:>16} {:>10}", "benchmark", "result", "target");
    println!(
        "{:<58} {:>16} {:>10}",
        format!("claim+start+complete, {LIFECYCLES} runs ({lifecycle_secs:.2} s)"),
        format!("{per_sec:.0} lifecycles/s"),
        ">= 2000"
    );
    println!(
        "{:<58} {:>16} {:>10}",
        format!(
            "list newest {LIST_LIMIT} of 1 machine among {LIST_RUNS} (median of {LIST_QUERIES})"
        ),
        format!("{median_ms:.3} ms"),
        "< 5 ms"
    );
    println!(
        "{:<58} {:>16}",
        "  slowest of those queries",
        format!("{worst_ms:.3} ms")
    );
    println!(
        "{:<58} {:>16}",
        format!("  filling {LIST_RUNS} lifecycles with {FILL_WRITERS} concurrent writers"),
        format!("{:.0} lifecycles/s", LIST_RUNS as f64 / fill_secs)
    );
}
