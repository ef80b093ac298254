//! Integration tests of the russh adapter against testkit's in-process server.

mod artifacts;
mod auth;
mod cache;
mod contract;
mod exec;
mod faults;
mod host_keys;
mod kill;
mod runner;

use std::sync::Arc;

use testfleet_core::ports::{SshConnector, SshError, SshSession, SshTarget};
use testfleet_ssh::{ConnectorOptions, RusshConnector};

/// A connector that uses neither the developer's ssh-agent nor their `~/.ssh` keys.
pub fn connector() -> Arc<RusshConnector> {
    Arc::new(RusshConnector::with_options(ConnectorOptions {
        use_agent: false,
        default_identities: false,
        ..ConnectorOptions::default()
    }))
}

pub async fn try_connect(target: &SshTarget) -> Result<Box<dyn SshSession>, SshError> {
    connector().connect(target).await
}

/// The error of a connection that must fail.
pub async fn connect_err(target: &SshTarget) -> SshError {
    match try_connect(target).await {
        Ok(_) => panic!("connected although it must fail"),
        Err(error) => error,
    }
}

pub async fn connect(target: &SshTarget) -> Box<dyn SshSession> {
    match try_connect(target).await {
        Ok(session) => session,
        Err(error) => panic!("connect failed: {error}"),
    }
}

/// Writes `contents` at `root/rel` with `mode`, creating folders.
pub fn write_file(root: &std::path::Path, rel: &str, contents: &[u8], mode: u32) {
    use std::os::unix::fs::PermissionsExt as _;
    let path = root.join(rel);
    std::fs::create_dir_all(path.parent().expect("a file has a parent")).expect("folder created");
    std::fs::write(&path, contents).expect("file written");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("mode set");
}
