//! Helpers shared by the test modules.

use std::path::{Path, PathBuf};

use testfleet_core::ports::StoreError;
use testfleet_core::run::{NewRun, RunOwner, RunPaths};
use testfleet_core::{MachineName, RunId, TargetOs, TestDirHash, Timestamp, error_chain};

/// A new run on `machine`; `serial` makes ids distinct.
pub fn new_run(machine: &str, hash_byte: u8, unix_ms: u64, serial: u128) -> NewRun {
    let id = RunId::from_parts(unix_ms, serial);
    NewRun {
        paths: RunPaths::in_state_dir(Path::new("/state"), &id),
        id,
        machine: MachineName::parse(machine).expect("test machine names are valid"),
        os: TargetOs::linux(),
        test_dir: PathBuf::from("/home/ci/tests/hello"),
        test_dir_hash: TestDirHash::parse(&format!("{hash_byte:02x}").repeat(32))
            .expect("64 hex digits form a hash"),
        entrypoint: "run.sh".to_owned(),
        invocation: testfleet_core::Invocation::default(),
        created_at: Timestamp::from_unix_ms(i64::try_from(unix_ms).expect("test times fit in i64")),
        timeout_ms: Some(60_000),
        keep_remote: false,
        owner: Some(RunOwner {
            host: None,
            pid: std::process::id(),
            start_time: None,
        }),
        lease: std::time::Duration::from_secs(30),
        controller: None,
    }
}

/// The error's message with its whole source chain.
pub fn chain(error: &StoreError) -> String {
    error_chain(error)
}
