//! The shared SSH contract suite, run against the adapter and the in-process server.

use std::sync::Arc;

use testfleet_contract::ssh::{ContractHost, TargetFactory, ssh};
use testfleet_testkit::server::{Faults, ServerConfig, TestServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adapter_passes_the_ssh_contract() {
    let normal = TestServer::start(ServerConfig::default()).await;
    let no_status = TestServer::start(ServerConfig {
        faults: Faults {
            no_exit_status: true,
            ..Faults::default()
        },
        ..ServerConfig::default()
    })
    .await;
    let (normal_target, no_status_target) = (normal.target(), no_status.target());
    let targets: TargetFactory = Arc::new(move |host| {
        Some(match host {
            ContractHost::Normal => normal_target.clone(),
            ContractHost::NoExitStatus => no_status_target.clone(),
        })
    });
    ssh(crate::connector(), targets).await;
}
