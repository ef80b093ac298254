//! Login failures and their messages.

use russh::keys::ssh_key::LineEnding;
use testfleet_core::ErrorCode;
use testfleet_testkit::server::{ServerConfig, TestServer, generate_key};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_encrypted_key_without_agent_says_so() {
    let server = TestServer::start(ServerConfig::default()).await;
    let encrypted = server
        .client_key()
        .encrypt(&mut russh::keys::key::safe_rng(), "secret")
        .expect("the key can be encrypted");
    let path = server.client_dir().join("id_encrypted");
    std::fs::write(
        &path,
        encrypted
            .to_openssh(LineEnding::LF)
            .expect("encodes")
            .as_bytes(),
    )
    .expect("written");
    let mut target = server.target();
    target.identity_files = vec![path.clone()];
    let error = crate::connect_err(&target).await;
    assert_eq!(error.code(), ErrorCode::AuthFailed);
    let message = error.to_string();
    assert!(message.contains("encrypted"), "{message}");
    assert!(
        message.contains(&format!("ssh-add {}", path.display())),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unauthorized_key_is_auth_failed_and_the_next_key_is_tried() {
    let server = TestServer::start(ServerConfig::default()).await;
    let stranger = server.client_dir().join("id_stranger");
    std::fs::write(
        &stranger,
        generate_key()
            .to_openssh(LineEnding::LF)
            .expect("encodes")
            .as_bytes(),
    )
    .expect("written");
    let mut target = server.target();
    target.identity_files = vec![stranger.clone()];
    let error = crate::connect_err(&target).await;
    assert_eq!(error.code(), ErrorCode::AuthFailed, "{error}");
    assert!(error.to_string().contains("id_stranger"), "{error}");

    target.identity_files = vec![
        stranger,
        server.client_dir().join("missing"),
        server.client_key_path(),
    ];
    crate::connect(&target)
        .await
        .close()
        .await
        .expect("the third key logs in");
}
