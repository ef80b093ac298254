//! Host-key verification: unknown, changed, revoked, accept-new.

use testfleet_core::ErrorCode;
use testfleet_core::ports::{HostKeyPolicy, SshError};
use testfleet_testkit::server::{Request, ServerConfig, TestServer, generate_key};

/// The server saw no login and no SFTP request: nothing was sent before verification.
fn nothing_sent(server: &TestServer) {
    let requests = server.requests();
    assert!(
        !requests.iter().any(|request| matches!(
            request,
            Request::Auth { .. } | Request::Sftp { .. } | Request::Exec { .. }
        )),
        "{requests:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_host_is_refused_with_its_fingerprint() {
    let server = TestServer::start(ServerConfig::default()).await;
    let mut target = server.target();
    target.known_hosts = server.client_dir().join("empty_known_hosts");
    let error = crate::connect_err(&target).await;
    match &error {
        SshError::HostKeyUnknown {
            fingerprint, port, ..
        } => {
            assert_eq!(fingerprint, &server.host_key_fingerprint());
            assert_eq!(*port, server.port());
        }
        other => panic!("expected HOST_KEY_UNKNOWN, got {other}"),
    }
    assert!(error.to_string().contains(&server.host_key_fingerprint()));
    assert!(!target.known_hosts.exists(), "strict mode writes nothing");
    nothing_sent(&server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_key_is_refused_whatever_the_policy() {
    let server = TestServer::start(ServerConfig::default()).await;
    let other = generate_key().public_key().to_openssh().expect("encodes");
    let path = server.client_dir().join("changed_known_hosts");
    std::fs::write(
        &path,
        format!("# comment\n[127.0.0.1]:{} {other}\n", server.port()),
    )
    .expect("written");
    for policy in [HostKeyPolicy::Strict, HostKeyPolicy::AcceptNew] {
        let mut target = server.target();
        target.known_hosts = path.clone();
        target.host_key_policy = policy;
        let error = crate::connect_err(&target).await;
        assert!(
            matches!(&error, SshError::HostKeyMismatch { line: Some(2), .. }),
            "{policy:?}: {error}"
        );
    }
    assert_eq!(
        std::fs::read_to_string(&path)
            .expect("readable")
            .lines()
            .count(),
        2,
        "unchanged"
    );
    nothing_sent(&server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_key_is_refused() {
    let server = TestServer::start(ServerConfig::default()).await;
    let path = server.client_dir().join("revoked_known_hosts");
    std::fs::write(
        &path,
        format!(
            "@revoked {}\n{}\n",
            server.known_hosts_line(),
            server.known_hosts_line()
        ),
    )
    .expect("written");
    let mut target = server.target();
    target.known_hosts = path;
    let error = crate::connect_err(&target).await;
    assert_eq!(error.code(), ErrorCode::HostKeyMismatch, "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accept_new_records_the_key_then_strict_accepts_it() {
    let server = TestServer::start(ServerConfig::default()).await;
    let path = server.client_dir().join("new").join("known_hosts");
    let mut target = server.target();
    target.known_hosts = path.clone();
    target.host_key_policy = HostKeyPolicy::AcceptNew;
    crate::connect(&target).await.close().await.expect("closes");
    let recorded = std::fs::read_to_string(&path).expect("known_hosts was written");
    assert_eq!(recorded, format!("{}\n", server.known_hosts_line()));

    target.host_key_policy = HostKeyPolicy::Strict;
    crate::connect(&target).await.close().await.expect("closes");
    assert_eq!(
        std::fs::read_to_string(&path).expect("readable"),
        recorded,
        "nothing appended twice"
    );
    let leftovers: Vec<_> = std::fs::read_dir(path.parent().expect("parent"))
        .expect("listable")
        .collect();
    assert_eq!(leftovers.len(), 1, "no temp file left behind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_lists_and_other_hosts_lines_are_understood() {
    let server = TestServer::start(ServerConfig::default()).await;
    let key = server
        .host_key()
        .public_key()
        .to_openssh()
        .expect("encodes");
    let other = generate_key().public_key().to_openssh().expect("encodes");
    let path = server.client_dir().join("list_known_hosts");
    std::fs::write(
        &path,
        format!(
            "other.example {other}\nfoo,[127.0.0.1]:{},bar {key}\n[127.0.0.1]:1 {other}\n",
            server.port()
        ),
    )
    .expect("written");
    let mut target = server.target();
    target.known_hosts = path;
    crate::connect(&target).await.close().await.expect("closes");
}
