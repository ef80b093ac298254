//! Every injected fault yields its error code through the adapter.

use std::time::Duration;

use testfleet_contract::ssh::Captured;
use testfleet_core::ErrorCode;
use testfleet_core::hash::hash_dir;
use testfleet_core::ports::{NoProgress, SshError};
use testfleet_testkit::server::{Faults, ServerConfig, TestServer};

fn with_faults(faults: Faults) -> ServerConfig {
    ServerConfig {
        faults,
        ..ServerConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_auth_is_auth_failed() {
    let server = TestServer::start(with_faults(Faults {
        refuse_auth: true,
        ..Faults::default()
    }))
    .await;
    let error = crate::connect_err(&server.target()).await;
    assert_eq!(error.code(), ErrorCode::AuthFailed, "{error}");
    assert!(
        error.to_string().contains("id_ed25519"),
        "names the key tried: {error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_port_is_dial_failed() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    drop(listener);
    let server = TestServer::start(ServerConfig::default()).await;
    let mut target = server.target();
    target.port = port;
    let error = crate::connect_err(&target).await;
    assert_eq!(error.code(), ErrorCode::DialFailed, "{error}");

    target.host = "no-such-host.invalid".into();
    let error = crate::connect_err(&target).await;
    assert_eq!(error.code(), ErrorCode::DialFailed, "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_never_speaks_is_a_dial_timeout() {
    // Accepts TCP but never sends an SSH banner.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let server = TestServer::start(ServerConfig::default()).await;
    let mut target = server.target();
    target.port = port;
    target.connect_timeout = Duration::from_millis(300);
    let held = tokio::spawn(async move { listener.accept().await.map(|(socket, _)| socket) });
    let error = crate::connect_err(&target).await;
    assert_eq!(error.code(), ErrorCode::DialFailed, "{error}");
    assert!(error.to_string().contains("timed out"), "{error}");
    held.abort();
}

/// A jump host that accepts TCP and never speaks, with a generous connect timeout of its own:
/// the machine's connect timeout bounds the whole chain, and the failure names the hop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_jump_host_is_bounded_by_the_machines_connect_timeout() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let server = TestServer::start(ServerConfig::default()).await;
    let mut hop = server.target();
    hop.port = port;
    hop.connect_timeout = Duration::from_secs(120);
    let mut target = server.target();
    target.connect_timeout = Duration::from_millis(500);
    target.jumps = vec![hop];
    let held = tokio::spawn(async move { listener.accept().await.map(|(socket, _)| socket) });
    // Far below the hop's own 120 s: only the chain's deadline can end it this soon.
    let error = tokio::time::timeout(Duration::from_secs(30), crate::connect_err(&target))
        .await
        .expect("the chain's deadline ends the dial, not the hop's");
    assert_eq!(error.code(), ErrorCode::DialFailed, "{error}");
    let message = error.to_string();
    assert!(message.contains("timed out"), "{message}");
    assert!(
        message.contains(&format!("jump host 127.0.0.1:{port}")),
        "names the hop: {message}"
    );
    held.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_dropped_during_upload_is_connection_lost() {
    let server = TestServer::start(with_faults(Faults {
        drop_after_upload_bytes: Some(200_000),
        ..Faults::default()
    }))
    .await;
    let local = tempfile::tempdir().expect("temp dir");
    crate::write_file(local.path(), "big.bin", &vec![7u8; 2 * 1024 * 1024], 0o644);
    let manifest = hash_dir(local.path()).expect("hashes");
    let session = crate::connect(&server.target()).await;
    let error = session
        .upload(&manifest, "up", &NoProgress)
        .await
        .expect_err("the upload fails");
    assert_eq!(error.code(), ErrorCode::ConnectionLost, "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_dropped_during_download_is_connection_lost() {
    let server = TestServer::start(with_faults(Faults {
        drop_after_download_bytes: Some(200_000),
        ..Faults::default()
    }))
    .await;
    crate::write_file(
        server.home(),
        "out/artifacts/big.bin",
        &vec![7u8; 2 * 1024 * 1024],
        0o644,
    );
    let dest = tempfile::tempdir().expect("temp dir");
    let session = crate::connect(&server.target()).await;
    let error = session
        .download_dir("out/artifacts", dest.path())
        .await
        .expect_err("the download fails");
    assert_eq!(error.code(), ErrorCode::ConnectionLost, "{error}");
    // The exec channel is gone with the connection too.
    let mut output = Captured::default();
    let error = session
        .exec("true", &mut output)
        .await
        .expect_err("the connection is gone");
    assert_eq!(error.code(), ErrorCode::ConnectionLost, "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_exec_waits_for_its_caller_and_leaves_the_session_usable() {
    let server = TestServer::start(with_faults(Faults {
        stall_exec: true,
        ..Faults::default()
    }))
    .await;
    let session = crate::connect(&server.target()).await;
    let mut output = Captured::default();
    let outcome = tokio::time::timeout(
        Duration::from_millis(500),
        session.exec("echo never", &mut output),
    )
    .await;
    assert!(
        outcome.is_err(),
        "the exec never ends on its own: {outcome:?}"
    );
    let home = session
        .realpath(".")
        .await
        .expect("the session still works");
    assert_eq!(std::path::Path::new(&home), server.home());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_replies_still_transfer_correctly() {
    let server = TestServer::start(with_faults(Faults {
        reply_delay: Some(Duration::from_millis(5)),
        ..Faults::default()
    }))
    .await;
    let local = tempfile::tempdir().expect("temp dir");
    for n_file in 0..20 {
        crate::write_file(
            local.path(),
            &format!("d{}/f{n_file}", n_file % 3),
            format!("{n_file}").as_bytes(),
            0o644,
        );
    }
    let manifest = hash_dir(local.path()).expect("hashes");
    let session = crate::connect(&server.target()).await;
    let stats = session
        .upload(&manifest, "slow", &NoProgress)
        .await
        .expect("the upload succeeds");
    assert_eq!(stats.files, 20);
    for n_file in 0..20 {
        let path = server
            .home()
            .join(format!("slow/d{}/f{n_file}", n_file % 3));
        assert_eq!(
            std::fs::read_to_string(path).expect("uploaded"),
            format!("{n_file}")
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_changed_after_hashing_is_test_dir_changed() {
    let server = TestServer::start(ServerConfig::default()).await;
    let local = tempfile::tempdir().expect("temp dir");
    crate::write_file(local.path(), "a.txt", b"one", 0o644);
    crate::write_file(local.path(), "sub/b.txt", b"two", 0o644);
    let manifest = hash_dir(local.path()).expect("hashes");
    let session = crate::connect(&server.target()).await;
    for (change, contents) in [
        ("same size", &b"TWO"[..]),
        ("grown", b"two and more"),
        ("shrunk", b"t"),
    ] {
        std::fs::write(local.path().join("sub/b.txt"), contents).expect("rewritten");
        let error = session
            .upload(&manifest, "changed", &NoProgress)
            .await
            .expect_err("the change is caught");
        assert!(
            matches!(&error, SshError::TestDirChanged { path } if path == "sub/b.txt"),
            "{change}: {error}"
        );
    }
    std::fs::remove_file(local.path().join("sub/b.txt")).expect("removed");
    let error = session
        .upload(&manifest, "changed", &NoProgress)
        .await
        .expect_err("the removal is caught");
    assert_eq!(error.code(), ErrorCode::TestDirChanged, "{error}");
}

/// A file whose stamp vouches for it is sent without hashing it again; a change after hashing
/// still moves its change time and is caught, small files (read whole) and large (streamed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_is_caught_also_when_the_stamp_vouched_for_the_file() {
    use testfleet_core::hash::FileStamp;
    // Longer than any file system's change-time tick, so that a rewrite shows.
    let tick = Duration::from_millis(50);
    let server = TestServer::start(ServerConfig::default()).await;
    let session = crate::connect(&server.target()).await;
    let big = vec![5u8; 300 * 1024];
    for (name, size) in [("small.txt", 3), ("big.bin", big.len())] {
        let local = tempfile::tempdir().expect("temp dir");
        crate::write_file(local.path(), name, &big[..size], 0o644);
        tokio::time::sleep(tick).await;
        let mut manifest = hash_dir(local.path()).expect("hashes");
        // As if the file had settled long before it was hashed.
        let metadata = std::fs::metadata(local.path().join(name)).expect("stat");
        manifest.files[0].stamp = FileStamp::of(&metadata);
        assert!(manifest.files[0].stamp.is_some());

        session
            .upload(&manifest, "vouched", &NoProgress)
            .await
            .expect("an unchanged file uploads");
        assert_eq!(
            std::fs::read(server.home().join("vouched").join(name)).expect("uploaded"),
            &big[..size]
        );

        tokio::time::sleep(tick).await;
        std::fs::write(local.path().join(name), vec![9u8; size]).expect("rewritten, same size");
        let error = session
            .upload(&manifest, "vouched", &NoProgress)
            .await
            .expect_err("the change is caught");
        assert!(
            matches!(&error, SshError::TestDirChanged { path } if path == name),
            "{name}: {error}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_utf8_path_is_upload_failed_naming_it() {
    use std::os::unix::ffi::OsStrExt as _;
    let server = TestServer::start(ServerConfig::default()).await;
    let local = tempfile::tempdir().expect("temp dir");
    let name = std::ffi::OsStr::from_bytes(b"bad-\xff.txt");
    std::fs::write(local.path().join(name), b"x")
        .expect("a non-UTF-8 name can be written on Linux");
    let manifest = hash_dir(local.path()).expect("hashes");
    let session = crate::connect(&server.target()).await;
    let error = session
        .upload(&manifest, "bad", &NoProgress)
        .await
        .expect_err("refused");
    assert!(
        matches!(&error, SshError::UploadFailed { path, .. } if path.starts_with("bad-")),
        "{error}"
    );
    assert!(
        !server.home().join("bad").exists(),
        "nothing was sent before the refusal"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_reports_progress_and_preserves_modes() {
    use std::os::unix::fs::PermissionsExt as _;
    use std::sync::Mutex;
    use testfleet_core::ports::{ProgressSink, TransferProgress};

    #[derive(Default)]
    struct Record(Mutex<Vec<TransferProgress>>);
    impl ProgressSink for Record {
        fn progress(&self, progress: TransferProgress) {
            self.0.lock().expect("not poisoned").push(progress);
        }
    }

    let server = TestServer::start(ServerConfig::default()).await;
    let local = tempfile::tempdir().expect("temp dir");
    crate::write_file(local.path(), "run.sh", b"#!/bin/sh\n", 0o755);
    crate::write_file(local.path(), "ro.txt", b"read only", 0o444);
    crate::write_file(local.path(), "big.bin", &vec![1u8; 1024 * 1024], 0o640);
    let manifest = hash_dir(local.path()).expect("hashes");
    let session = crate::connect(&server.target()).await;
    let record = Record::default();
    session
        .upload(&manifest, "modes", &record)
        .await
        .expect("uploads");
    for (rel, mode) in [("run.sh", 0o755), ("ro.txt", 0o444), ("big.bin", 0o640)] {
        let actual = std::fs::metadata(server.home().join("modes").join(rel))
            .expect("exists")
            .permissions()
            .mode();
        assert_eq!(actual & 0o777, mode, "{rel}");
    }
    let seen = record.0.into_inner().expect("not poisoned");
    let last = seen.last().expect("progress was reported");
    assert_eq!((last.files_done, last.files_total), (3, 3));
    assert_eq!(last.bytes_done, manifest.total_bytes());
    assert!(
        seen.len() > 4,
        "progress during the big file too: {}",
        seen.len()
    );
}
