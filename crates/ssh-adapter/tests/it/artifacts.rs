//! Downloading artifacts: hostile names and symlinks are refused and nothing escapes.

use std::collections::BTreeSet;
use std::path::Path;

use testfleet_testkit::server::{
    Faults, HOSTILE_FILE_NAMES, HOSTILE_LINK_NAME, ServerConfig, TestServer,
};

fn all_files(root: &Path) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("listable") {
            let entry = entry.expect("readable");
            let path = entry.path();
            if entry.file_type().expect("typed").is_dir() {
                stack.push(path.clone());
            }
            found.insert(
                path.strip_prefix(root)
                    .expect("inside")
                    .to_string_lossy()
                    .into_owned(),
            );
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_names_and_symlinks_are_refused_and_reported() {
    let server = TestServer::start(ServerConfig {
        faults: Faults {
            hostile_artifacts: true,
            ..Faults::default()
        },
        ..ServerConfig::default()
    })
    .await;
    crate::write_file(server.home(), "run/artifacts/report.txt", b"ok", 0o644);
    crate::write_file(server.home(), "run/artifacts/sub/deeper/x.log", b"x", 0o600);
    crate::write_file(server.home(), "run/escape", b"outside", 0o644);
    std::os::unix::fs::symlink("/etc", server.home().join("run/artifacts/real-link"))
        .expect("symlink");
    std::os::unix::fs::symlink(
        "/etc/hostname",
        server.home().join("run/artifacts/sub/file-link"),
    )
    .expect("symlink");

    let local = tempfile::tempdir().expect("temp dir");
    let dest = local.path().join("runs/r1/artifacts");
    let session = crate::connect(&server.target()).await;
    let report = session
        .download_dir("run/artifacts", &dest)
        .await
        .expect("the download succeeds");

    assert_eq!((report.files, report.bytes), (2, 3), "{report:?}");
    let refused: BTreeSet<&str> = report
        .skipped
        .iter()
        .map(|entry| entry.path.as_str())
        .collect();
    let mut expected: BTreeSet<&str> = HOSTILE_FILE_NAMES.into_iter().collect();
    expected.extend([HOSTILE_LINK_NAME, "real-link", "sub/file-link"]);
    assert_eq!(refused, expected, "{report:?}");
    for entry in &report.skipped {
        assert!(!entry.reason.is_empty());
    }
    // Only the two regular files, inside the destination; nothing anywhere else.
    assert_eq!(
        all_files(local.path()),
        [
            "runs",
            "runs/r1",
            "runs/r1/artifacts",
            "runs/r1/artifacts/report.txt",
            "runs/r1/artifacts/sub",
            "runs/r1/artifacts/sub/deeper",
            "runs/r1/artifacts/sub/deeper/x.log"
        ]
        .into_iter()
        .map(str::to_owned)
        .collect::<BTreeSet<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_artifacts_folder_that_is_a_symlink_is_not_followed() {
    let server = TestServer::start(ServerConfig::default()).await;
    std::fs::create_dir_all(server.home().join("run")).expect("created");
    std::os::unix::fs::symlink("/etc", server.home().join("run/artifacts")).expect("symlink");
    let local = tempfile::tempdir().expect("temp dir");
    let session = crate::connect(&server.target()).await;
    let report = session
        .download_dir("run/artifacts", &local.path().join("a"))
        .await
        .expect("succeeds");
    assert_eq!(report.files, 0);
    assert_eq!(report.skipped.len(), 1, "{report:?}");
    assert!(all_files(local.path()).len() <= 1);
}
