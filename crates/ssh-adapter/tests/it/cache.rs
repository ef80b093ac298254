//! The machine's file cache through the adapter, against the in-process server with
//! `hardlink@openssh.com` (and one without it): what is sent, what is linked, what a test's
//! abuse of its inputs changes, eviction, and an upload cut off half-way.

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::Path;
use std::time::{Duration, SystemTime};

use sha2::{Digest as _, Sha256};
use testfleet_core::hash::hash_dir;
use testfleet_core::ports::{FileCache, NoProgress, SshSession, TransferStats};
use testfleet_core::{DirManifest, ErrorCode};
use testfleet_testkit::server::{Faults, ServerConfig, TestServer};

/// The mtime every cached file carries (2000-01-01T00:00:00Z).
const STAMP: i64 = 946_684_800;

async fn server(hardlink: bool, faults: Faults) -> TestServer {
    TestServer::start(ServerConfig {
        hardlink,
        faults,
        ..ServerConfig::default()
    })
    .await
}

fn cache(max_bytes: u64) -> FileCache {
    FileCache {
        dir: "root/cache".into(),
        max_bytes,
    }
}

/// A test directory with an executable, a private file, two files with the same contents and
/// different modes, and one in a subfolder.
fn test_dir() -> (tempfile::TempDir, DirManifest) {
    let local = tempfile::tempdir().expect("temp dir");
    crate::write_file(local.path(), "run.sh", b"#!/bin/sh\ntrue\n", 0o755);
    crate::write_file(local.path(), "data.txt", b"data\n", 0o644);
    crate::write_file(local.path(), "secret.txt", b"secret\n", 0o600);
    crate::write_file(local.path(), "same-a.txt", b"same\n", 0o644);
    crate::write_file(local.path(), "same-b.txt", b"same\n", 0o600);
    crate::write_file(local.path(), "sub/big.bin", &vec![9u8; 300_000], 0o644);
    let manifest = hash_dir(local.path()).expect("hashes");
    (local, manifest)
}

async fn upload(
    session: &dyn SshSession,
    manifest: &DirManifest,
    run: &str,
    cache: &FileCache,
) -> TransferStats {
    session
        .create_dir_all("root/runs")
        .await
        .expect("runs folder");
    session
        .upload_cached(manifest, &format!("root/runs/{run}"), cache, &NoProgress)
        .await
        .expect("upload")
}

/// Every file of `manifest` is in `dir` with its contents and mode, and nothing else is.
fn assert_tree(manifest: &DirManifest, dir: &Path) {
    let mut found = 0;
    for file in &manifest.files {
        let rel = file.rel_path.to_str().expect("utf-8");
        let path = dir.join(rel);
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{rel}: {e}"));
        assert_eq!(
            Sha256::digest(&bytes).as_slice(),
            file.digest,
            "{rel} has other contents"
        );
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode() & 0o7777;
        assert_eq!(mode, file.mode & 0o7777, "{rel} has mode {mode:o}");
        found += 1;
    }
    let on_disk = walkdir_files(dir);
    assert_eq!(on_disk, found, "the run folder holds other files too");
}

fn walkdir_files(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .expect("list")
        .map(|entry| {
            let entry = entry.expect("entry");
            if entry.file_type().expect("type").is_dir() {
                walkdir_files(&entry.path())
            } else {
                1
            }
        })
        .sum()
}

/// Every name in the cache is `<sha256 of its contents>-<its mode>`, with the stamp mtime.
fn assert_cache_sound(dir: &Path) -> usize {
    let mut n_blobs = 0;
    for entry in std::fs::read_dir(dir).expect("cache listed") {
        let entry = entry.expect("entry");
        let name = entry.file_name().into_string().expect("utf-8");
        let (digest, mode) = name.split_once('-').expect("digest-mode");
        let bytes = std::fs::read(entry.path()).expect("read");
        assert_eq!(
            hex(&Sha256::digest(&bytes)),
            digest,
            "{name} holds other contents"
        );
        let metadata = entry.metadata().expect("stat");
        assert_eq!(format!("{:o}", metadata.mode() & 0o7777), mode, "{name}");
        assert_eq!(metadata.mtime(), STAMP, "{name}");
        n_blobs += 1;
    }
    n_blobs
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Makes the cache folder, so that the next upload is not the first into it (which leaves its
/// small files out).
async fn existing_cache(session: &dyn SshSession) {
    session
        .create_dir_all("root/cache")
        .await
        .expect("cache folder");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_re_run_links_what_the_cache_holds_and_sends_nothing() {
    let server = server(true, Faults::default()).await;
    let (_local, manifest) = test_dir();
    let session = crate::connect(&server.target()).await;
    let cache = cache(FileCache::DEFAULT_MAX_BYTES);

    // The first upload into a new cache folder adds only the large file to it.
    let first = upload(session.as_ref(), &manifest, "one", &cache).await;
    assert_eq!(
        (first.files, first.bytes, first.cached_files),
        (6, manifest.total_bytes(), 0)
    );
    assert_tree(&manifest, &server.home().join("root/runs/one"));
    assert_eq!(assert_cache_sound(&server.home().join("root/cache")), 1);
    // The next one sends the small files again and adds them: same contents, two modes, two
    // cached files.
    let again = upload(session.as_ref(), &manifest, "again", &cache).await;
    assert_eq!(
        (again.files, again.cached_files, again.cached_bytes),
        (5, 1, 300_000)
    );
    assert_tree(&manifest, &server.home().join("root/runs/again"));
    assert_eq!(assert_cache_sound(&server.home().join("root/cache")), 6);

    let second = upload(session.as_ref(), &manifest, "two", &cache).await;
    assert_eq!((second.files, second.bytes), (0, 0), "{second:?}");
    assert_eq!(
        (second.cached_files, second.cached_bytes),
        (6, manifest.total_bytes())
    );
    assert_tree(&manifest, &server.home().join("root/runs/two"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_test_does_to_its_inputs_never_reaches_the_next_run() {
    let server = server(true, Faults::default()).await;
    let (_local, manifest) = test_dir();
    let session = crate::connect(&server.target()).await;
    let cache = cache(FileCache::DEFAULT_MAX_BYTES);
    existing_cache(session.as_ref()).await;
    upload(session.as_ref(), &manifest, "one", &cache).await;

    // The "test" of run one abuses its inputs, which share inodes with the cache.
    let one = server.home().join("root/runs/one");
    use std::io::Write as _;
    std::fs::OpenOptions::new()
        .append(true)
        .open(one.join("data.txt"))
        .and_then(|mut file| file.write_all(b"appended"))
        .expect("append");
    std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(one.join("sub/big.bin"))
        .expect("truncate");
    std::fs::set_permissions(
        one.join("secret.txt"),
        std::fs::Permissions::from_mode(0o777),
    )
    .expect("chmod");
    // A write of the same size, then the mtime put back by hand: beyond detection, and
    // documented as such; the size-preserving write alone is caught by the mtime.
    std::fs::write(one.join("same-a.txt"), b"SAME\n").expect("rewrite");
    std::fs::remove_file(one.join("same-b.txt")).expect("delete");
    std::fs::rename(one.join("run.sh"), one.join("moved.sh")).expect("rename");

    let second = upload(session.as_ref(), &manifest, "two", &cache).await;
    assert_tree(&manifest, &server.home().join("root/runs/two"));
    // data.txt, big.bin, secret.txt and same-a.txt changed through the shared inode and were
    // sent again; the deleted and the renamed file left the cached copies as they were.
    assert_eq!((second.files, second.cached_files), (4, 2), "{second:?}");
    assert_eq!(assert_cache_sound(&server.home().join("root/cache")), 6);
    let third = upload(session.as_ref(), &manifest, "three", &cache).await;
    assert_eq!((third.files, third.cached_files), (0, 6), "{third:?}");
    assert_tree(&manifest, &server.home().join("root/runs/three"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_hardlinks_gets_every_file_sent() {
    let server = server(false, Faults::default()).await;
    let (_local, manifest) = test_dir();
    let session = crate::connect(&server.target()).await;
    let cache = cache(FileCache::DEFAULT_MAX_BYTES);
    upload(session.as_ref(), &manifest, "one", &cache).await;
    let second = upload(session.as_ref(), &manifest, "two", &cache).await;
    assert_eq!((second.files, second.cached_files), (6, 0), "{second:?}");
    assert_tree(&manifest, &server.home().join("root/runs/two"));
    let usage = session.cache_usage("root/cache").await.expect("usage");
    assert_eq!(usage.files, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eviction_goes_by_last_use_and_spares_what_was_just_used() {
    let server = server(true, Faults::default()).await;
    let (_local, manifest) = test_dir();
    let session = crate::connect(&server.target()).await;
    existing_cache(session.as_ref()).await;
    upload(session.as_ref(), &manifest, "one", &cache(0)).await;
    let dir = server.home().join("root/cache");
    let usage = session.cache_usage("root/cache").await.expect("usage");
    assert_eq!((usage.files, usage.bytes), (6, manifest.total_bytes()));

    // Used just now: protected even from a limit of 0.
    let removed = session.prune_cache(&cache(0), false).await.expect("prune");
    assert_eq!(removed.files, 0);

    // Last used two hours ago, all but big.bin's (one hour): the oldest go first, until the
    // cache fits in 300,000 bytes.
    let big = manifest
        .files
        .iter()
        .find(|file| file.size == 300_000)
        .expect("big.bin");
    for entry in std::fs::read_dir(&dir).expect("list") {
        let path = entry.expect("entry").path();
        let hours = if path.to_string_lossy().contains(&hex(&big.digest)) {
            1
        } else {
            2
        };
        let atime = SystemTime::now() - Duration::from_secs(hours * 3600);
        let times = std::fs::FileTimes::new()
            .set_accessed(atime)
            .set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(STAMP as u64));
        std::fs::File::open(&path)
            .and_then(|file| file.set_times(times))
            .expect("times set");
    }
    let would = session
        .prune_cache(&cache(300_000), true)
        .await
        .expect("dry run");
    assert_eq!(would.files, 5);
    // Counted, not read: reading a file moves its atime.
    assert_eq!(walkdir_files(&dir), 6, "a dry run removes nothing");
    let removed = session
        .prune_cache(&cache(300_000), false)
        .await
        .expect("prune");
    assert_eq!(
        (removed.files, removed.bytes),
        (5, manifest.total_bytes() - 300_000)
    );
    assert_eq!(assert_cache_sound(&dir), 1);
    // The run folder keeps its own links.
    assert_tree(&manifest, &server.home().join("root/runs/one"));
    // And the next run sends what was evicted.
    let again = upload(
        session.as_ref(),
        &manifest,
        "two",
        &cache(FileCache::DEFAULT_MAX_BYTES),
    )
    .await;
    assert_eq!((again.files, again.cached_files), (5, 1), "{again:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_cut_off_half_way_leaves_no_partial_file_in_the_cache() {
    let (_local, manifest) = {
        let local = tempfile::tempdir().expect("temp dir");
        for idx in 0..8 {
            crate::write_file(
                local.path(),
                &format!("f{idx}.bin"),
                &vec![idx; 200_000],
                0o644,
            );
        }
        let manifest = hash_dir(local.path()).expect("hashes");
        (local, manifest)
    };
    let server = server(
        true,
        Faults {
            drop_after_upload_bytes: Some(700_000),
            ..Faults::default()
        },
    )
    .await;
    let session = crate::connect(&server.target()).await;
    session
        .create_dir_all("root/runs")
        .await
        .expect("runs folder");
    existing_cache(session.as_ref()).await;
    let error = session
        .upload_cached(
            &manifest,
            "root/runs/one",
            &cache(FileCache::DEFAULT_MAX_BYTES),
            &NoProgress,
        )
        .await
        .expect_err("the connection drops");
    assert_eq!(error.code(), ErrorCode::ConnectionLost, "{error}");
    let n_blobs = assert_cache_sound(&server.home().join("root/cache"));
    assert!(
        n_blobs < 8,
        "{n_blobs} cached although the upload was cut off"
    );
}
