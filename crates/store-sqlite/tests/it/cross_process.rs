//! The machine lock holds across processes: 16 processes claim one machine on one file at the
//! same moment, and exactly one of them creates the run.
//!
//! The test binary runs itself as each child (`--exact` this test, with [`CHILD_ENV`] set).
//! Every child opens the store (so the fresh file is created and migrated by racing
//! processes), reports that it is ready, waits for the parent's go file, claims, and prints
//! one result line.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use testfleet_core::ports::{Claim, RunFilter, RunStore};
use testfleet_store_sqlite::{DATABASE_FILE, SqliteStore};

use crate::support::new_run;

const CHILD_ENV: &str = "TESTFLEET_STORE_SQLITE_CLAIM_CHILD";
const TEST_NAME: &str = "cross_process::sixteen_processes_claim_one_machine";
const RESULT_PREFIX: &str = "CLAIM-RESULT";
const CHILDREN: usize = 16;
const DEADLINE: Duration = Duration::from_secs(120);

#[test]
fn sixteen_processes_claim_one_machine() {
    if let Ok(spec) = std::env::var(CHILD_ENV) {
        child(&spec);
        return;
    }
    let dir = tempfile::tempdir().expect("the temp dir is writable");
    let db = dir.path().join(DATABASE_FILE);
    let go = dir.path().join("go");
    let exe = std::env::current_exe().expect("the test binary knows its path");

    let mut children = Children(Vec::new());
    for child_idx in 0..CHILDREN {
        let spec = format!("{child_idx}\t{}\t{}", db.display(), dir.path().display());
        let child = Command::new(&exe)
            .args([TEST_NAME, "--exact", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, spec)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the test binary can run itself");
        children.0.push(child);
    }

    // Every child is up and has opened the store: release them together.
    let deadline = Instant::now() + DEADLINE;
    while !(0..CHILDREN).all(|idx| ready_file(dir.path(), idx).exists()) {
        children.fail_if_any_exited();
        assert!(
            Instant::now() < deadline,
            "timed out waiting for the children to be ready"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    fs::write(&go, b"go").expect("the go file can be written");

    let mut outputs = Vec::new();
    for child in children.wait_all(deadline) {
        let stdout = String::from_utf8_lossy(&child.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&child.stderr).into_owned();
        assert!(
            child.status.success(),
            "a child failed: {}\nstdout:\n{stdout}\nstderr:\n{stderr}",
            child.status
        );
        let line = stdout
            .lines()
            .find_map(|line| line.split_once(RESULT_PREFIX).map(|(_, result)| result))
            .unwrap_or_else(|| {
                panic!("a child printed no result\nstdout:\n{stdout}\nstderr:\n{stderr}")
            })
            .trim()
            .to_owned();
        outputs.push(line);
    }

    let created: Vec<&String> = outputs
        .iter()
        .filter(|line| line.starts_with("created "))
        .collect();
    let active: Vec<&String> = outputs
        .iter()
        .filter(|line| line.starts_with("active "))
        .collect();
    assert_eq!(
        created.len(),
        1,
        "exactly one process creates the run: {outputs:?}"
    );
    assert_eq!(
        active.len(),
        CHILDREN - 1,
        "every other process gets the active run: {outputs:?}"
    );
    let winner = created[0].trim_start_matches("created ");
    assert!(
        active
            .iter()
            .all(|line| line.trim_start_matches("active ") == winner),
        "every process got the winner's run {winner}: {outputs:?}"
    );

    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime starts");
    let store = SqliteStore::open(&db).expect("the shared database opens");
    let active_runs = runtime
        .block_on(store.active_runs())
        .expect("active runs can be read");
    let all = runtime
        .block_on(store.list(&RunFilter::default()))
        .expect("runs can be listed");
    assert_eq!(active_runs.len(), 1);
    assert_eq!(active_runs[0].id.as_str(), winner);
    assert_eq!(all.len(), 1, "nothing but the winner was written");
}

fn ready_file(dir: &Path, child_idx: usize) -> PathBuf {
    dir.join(format!("ready-{child_idx}"))
}

/// The children, killed and reaped if the test fails before they exit.
struct Children(Vec<Child>);

impl Children {
    /// A child that exits before the go has crashed: fail with what it said.
    fn fail_if_any_exited(&mut self) {
        let crashed = self
            .0
            .iter_mut()
            .position(|child| matches!(child.try_wait(), Ok(Some(_))));
        if let Some(child_idx) = crashed {
            let child = self.0.swap_remove(child_idx);
            let output = child
                .wait_with_output()
                .expect("an exited child's output can be read");
            panic!(
                "child {child_idx} exited early ({}):\n{}\n{}",
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
    }

    /// Waits (polling, up to `deadline`) until every child has exited, and collects them.
    fn wait_all(mut self, deadline: Instant) -> Vec<Output> {
        while !self
            .0
            .iter_mut()
            .all(|child| matches!(child.try_wait(), Ok(Some(_))))
        {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for the children to exit"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        self.0
            .drain(..)
            .map(|child| {
                child
                    .wait_with_output()
                    .expect("an exited child's output can be read")
            })
            .collect()
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn child(spec: &str) {
    let mut fields = spec.split('\t');
    let (Some(child_idx), Some(db), Some(dir)) = (fields.next(), fields.next(), fields.next())
    else {
        panic!("bad child spec {spec:?}");
    };
    let child_idx: usize = child_idx.parse().expect("the parent passes a number");
    let dir = Path::new(dir);

    let store = SqliteStore::open(Path::new(db)).expect("the child opens the shared database");
    fs::write(ready_file(dir, child_idx), b"ready").expect("the ready file can be written");
    let deadline = Instant::now() + DEADLINE;
    while !dir.join("go").exists() {
        assert!(
            Instant::now() < deadline,
            "child {child_idx} never got the go"
        );
        std::thread::sleep(Duration::from_millis(1));
    }

    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_millis();
    let now_ms = u64::try_from(now_ms).expect("now fits in u64");
    let serial =
        u128::from(std::process::id()) << 8 | u128::try_from(child_idx).expect("few children");
    let hash_byte = u8::try_from(child_idx % 2).expect("0 or 1");
    let new = new_run("contended", hash_byte, now_ms, serial);

    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime starts");
    match runtime.block_on(store.claim(new)) {
        Ok(Claim::Created(run)) => println!("{RESULT_PREFIX} created {}", run.id),
        Ok(Claim::Active(run)) => println!("{RESULT_PREFIX} active {}", run.id),
        Err(error) => panic!(
            "child {child_idx} failed to claim: {}",
            crate::support::chain(&error)
        ),
    }
}
