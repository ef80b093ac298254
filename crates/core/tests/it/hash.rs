//! The directory hash: the shared vectors, and properties over generated trees.

use std::collections::BTreeMap;
use std::path::Path;

use base64::Engine as _;
use proptest::prelude::*;
use serde_json::Value;
use testfleet_core::hash::hash_dir;

const VECTORS: &str = include_str!("../data/hash-vectors.json");

/// Creates the entries of one vector case under `root`.
fn create_entries(root: &Path, entries: &[Value]) {
    for entry in entries {
        let rel = entry["path"].as_str().expect("every entry has a path");
        let path = root.join(rel);
        let kind = entry.get("kind").and_then(Value::as_str).unwrap_or("file");
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("temp dir is writable");
        }
        match kind {
            "dir" => std::fs::create_dir_all(&path).expect("temp dir is writable"),
            "symlink" => {
                let target = entry["target"].as_str().expect("a symlink has a target");
                std::os::unix::fs::symlink(target, &path).expect("symlinks can be made");
            }
            "file" => {
                let contents: Vec<u8> =
                    if let Some(text) = entry.get("text").and_then(Value::as_str) {
                        text.as_bytes().to_vec()
                    } else if let Some(b64) = entry.get("b64").and_then(Value::as_str) {
                        base64::engine::general_purpose::STANDARD
                            .decode(b64)
                            .expect("valid base64")
                    } else if let Some(unit) = entry.get("repeat").and_then(Value::as_str) {
                        let times = entry["times"].as_u64().expect("repeat has times");
                        unit.repeat(usize::try_from(times).expect("fits"))
                            .into_bytes()
                    } else {
                        Vec::new()
                    };
                std::fs::write(&path, contents).expect("temp dir is writable");
                let mode = entry.get("mode").and_then(Value::as_str).unwrap_or("644");
                set_mode(&path, u32::from_str_radix(mode, 8).expect("octal mode"));
            }
            other => panic!("unknown entry kind {other}"),
        }
    }
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod works");
}

#[test]
fn every_shared_vector_passes() {
    let vectors: Value = serde_json::from_str(VECTORS).expect("the vectors are JSON");
    let cases = vectors["cases"].as_array().expect("cases is a list");
    assert!(cases.len() >= 15, "the vector file lost cases");
    let mut failures = Vec::new();
    for case in cases {
        let name = case["name"].as_str().expect("a case has a name");
        let dir = tempfile::tempdir().expect("temp dir");
        create_entries(
            dir.path(),
            case["entries"].as_array().expect("entries is a list"),
        );
        let manifest = hash_dir(dir.path()).expect("the vector tree hashes");
        if manifest.hash.as_str() != case["expected"].as_str().expect("expected digest") {
            failures.push(format!("{name}: got {}", manifest.hash));
        }
    }
    assert!(
        failures.is_empty(),
        "vectors failed:\n{}",
        failures.join("\n")
    );
}

#[test]
fn symlinks_and_empty_dirs_are_reported_not_hashed_or_uploaded() {
    let dir = tempfile::tempdir().expect("temp dir");
    create_entries(
        dir.path(),
        &serde_json::from_str::<Vec<Value>>(
            r#"[{"path": "run.sh", "text": "echo\n"},
                {"path": "link", "kind": "symlink", "target": "run.sh"},
                {"path": "sub/deeper/file", "text": "x"},
                {"path": "sub/empty", "kind": "dir"},
                {"path": "lonely", "kind": "dir"},
                {"path": "sub/dirlink", "kind": "symlink", "target": "/etc"}]"#,
        )
        .expect("valid JSON"),
    );
    let manifest = hash_dir(dir.path()).expect("hashes");
    let names = |paths: &[testfleet_core::RelPath]| {
        paths.iter().map(ToString::to_string).collect::<Vec<_>>()
    };
    assert_eq!(names(&manifest.skipped_symlinks), ["link", "sub/dirlink"]);
    assert_eq!(names(&manifest.dirs), ["sub", "sub/deeper"]);
    let files: Vec<_> = manifest
        .files
        .iter()
        .map(|f| f.rel_path.to_string())
        .collect();
    assert_eq!(files, ["run.sh", "sub/deeper/file"]);
    assert_eq!(manifest.total_bytes(), 6);
}

#[test]
fn the_manifest_keeps_sizes_and_permission_bits() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("run.sh"), "#!/bin/sh\n").expect("write");
    set_mode(&dir.path().join("run.sh"), 0o755);
    std::fs::write(dir.path().join("data"), vec![7u8; 70_000]).expect("write");
    set_mode(&dir.path().join("data"), 0o600);
    let manifest = hash_dir(dir.path()).expect("hashes");
    let summary: Vec<_> = manifest
        .files
        .iter()
        .map(|f| (f.rel_path.to_string(), f.size, f.mode))
        .collect();
    assert_eq!(
        summary,
        [
            ("data".to_owned(), 70_000, 0o600),
            ("run.sh".to_owned(), 10, 0o755)
        ]
    );
}

#[test]
fn a_symlinked_root_is_followed() {
    let dir = tempfile::tempdir().expect("temp dir");
    let real = dir.path().join("real");
    std::fs::create_dir(&real).expect("mkdir");
    std::fs::write(real.join("run.sh"), "#!/bin/sh\necho hello\n").expect("write");
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&real, &link).expect("symlink");
    let manifest = hash_dir(&link).expect("a symlinked root is followed");
    assert_eq!(
        manifest.hash.as_str(),
        "b340587a93c0883e20fe684c1455dd07ec41ba55934623b806a6677e8c7f5a5d"
    );
    assert_eq!(
        manifest.root,
        std::fs::canonicalize(&real).expect("canonical")
    );
}

#[test]
fn missing_and_non_directory_roots_are_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("file");
    std::fs::write(&file, "x").expect("write");
    for path in [dir.path().join("absent"), file] {
        let error = hash_dir(&path).expect_err("not a directory");
        assert_eq!(error.code(), testfleet_core::ErrorCode::TestDirNotFound);
        assert!(
            error.to_string().contains(&path.display().to_string()),
            "{error}"
        );
    }
}

#[test]
fn non_utf8_names_hash_as_raw_bytes() {
    use std::os::unix::ffi::OsStrExt;
    let dir = tempfile::tempdir().expect("temp dir");
    let name = std::ffi::OsStr::from_bytes(b"caf\xe9");
    std::fs::write(dir.path().join(name), "x").expect("ext4 takes any bytes");
    let manifest = hash_dir(dir.path()).expect("hashes");
    assert_eq!(manifest.files[0].rel_path.as_bytes(), b"caf\xe9");
    assert_eq!(manifest.files[0].rel_path.to_str(), None);
}

/// A generated tree: relative file path → contents. Names avoid `/` and stay short.
fn tree_strategy() -> impl Strategy<Value = BTreeMap<String, Vec<u8>>> {
    let name = "[a-zA-Z0-9 ._'\"$-]{1,8}".prop_filter("not . or ..", |n| n != "." && n != "..");
    let path = prop::collection::vec(name, 1..4).prop_map(|parts| parts.join("/"));
    prop::collection::btree_map(path, prop::collection::vec(any::<u8>(), 0..64), 1..12).prop_filter(
        "no file is also a directory",
        |tree| {
            tree.keys()
                .all(|a| !tree.keys().any(|b| b.starts_with(&format!("{a}/"))))
        },
    )
}

fn write_tree(root: &Path, tree: &BTreeMap<String, Vec<u8>>, order: &[usize]) {
    let entries: Vec<_> = tree.iter().collect();
    for &idx in order {
        let (rel, contents) = entries[idx];
        let path = root.join(rel);
        std::fs::create_dir_all(path.parent().expect("has a parent")).expect("mkdir");
        std::fs::write(path, contents).expect("write");
    }
}

fn hash_of(tree: &BTreeMap<String, Vec<u8>>) -> String {
    let dir = tempfile::tempdir().expect("temp dir");
    write_tree(dir.path(), tree, &(0..tree.len()).collect::<Vec<_>>());
    hash_dir(dir.path()).expect("hashes").hash.to_string()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn creation_order_does_not_change_the_hash(
        tree in tree_strategy(),
        seed in any::<u64>(),
    ) {
        let mut order: Vec<usize> = (0..tree.len()).collect();
        // A deterministic shuffle from the seed.
        let mut state = seed | 1;
        for idx in (1..order.len()).rev() {
            state ^= state << 13; state ^= state >> 7; state ^= state << 17;
            order.swap(idx, usize::try_from(state % (idx as u64 + 1)).expect("fits"));
        }
        let dir = tempfile::tempdir().expect("temp dir");
        write_tree(dir.path(), &tree, &order);
        prop_assert_eq!(hash_dir(dir.path()).expect("hashes").hash.to_string(), hash_of(&tree));
    }

    #[test]
    fn one_changed_byte_changes_the_hash(
        tree in tree_strategy(),
        pick in any::<prop::sample::Index>(),
        byte in any::<prop::sample::Index>(),
        delta in 1u8..=255,
    ) {
        let original = hash_of(&tree);
        let mut changed = tree.clone();
        let key = changed.keys().nth(pick.index(changed.len())).expect("non-empty").clone();
        let contents = changed.get_mut(&key).expect("present");
        if contents.is_empty() {
            contents.push(delta);
        } else {
            let idx = byte.index(contents.len());
            contents[idx] = contents[idx].wrapping_add(delta);
        }
        prop_assert_ne!(hash_of(&changed), original);
    }

    #[test]
    fn a_renamed_or_added_file_changes_the_hash(
        tree in tree_strategy(),
        pick in any::<prop::sample::Index>(),
    ) {
        let original = hash_of(&tree);
        let key = tree.keys().nth(pick.index(tree.len())).expect("non-empty").clone();
        let mut renamed = tree.clone();
        let contents = renamed.remove(&key).expect("present");
        renamed.insert(format!("{key}~"), contents);
        prop_assert_ne!(hash_of(&renamed), original.clone());

        let mut added = tree.clone();
        added.insert("zz-added".to_owned(), Vec::new());
        if added.len() > tree.len() {
            prop_assert_ne!(hash_of(&added), original);
        }
    }

    #[test]
    fn mode_bits_do_not_change_the_hash(tree in tree_strategy(), modes in prop::collection::vec(0o400u32..0o777, 12)) {
        let dir = tempfile::tempdir().expect("temp dir");
        write_tree(dir.path(), &tree, &(0..tree.len()).collect::<Vec<_>>());
        for (rel, mode) in tree.keys().zip(&modes) {
            set_mode(&dir.path().join(rel), *mode | 0o400);
        }
        prop_assert_eq!(hash_dir(dir.path()).expect("hashes").hash.to_string(), hash_of(&tree));
    }
}

/// The digest cache is consulted only for files whose settled stamp is unchanged: a changed or
/// a new file is read again, and a damaged cache is no cache.
#[test]
fn the_digest_cache_spares_only_unchanged_settled_files() {
    use testfleet_core::hash::{DigestCache, FileStamp, hash_dir_with};

    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("a.txt"), "one").expect("write");
    std::fs::write(dir.path().join("b.txt"), "two").expect("write");
    std::thread::sleep(FileStamp::SETTLE + std::time::Duration::from_millis(200));
    let first = hash_dir(dir.path()).expect("hashes");
    assert!(
        first.files.iter().all(|file| file.stamp.is_some()),
        "settled"
    );
    let cache = DigestCache::of_manifest(&first);
    assert_eq!(cache.len(), 2);
    assert_eq!(DigestCache::decode(&cache.encode()), Some(cache.clone()));

    // A cached digest is taken as it is (a planted one shows that the file was not read).
    let mut planted = first.clone();
    planted.files[0].digest = [7; 32];
    let planted = DigestCache::of_manifest(&planted);
    let cached = hash_dir_with(dir.path(), &planted).expect("hashes");
    assert_eq!(cached.files[0].digest, [7; 32]);
    assert_eq!(cached.files[1].digest, first.files[1].digest);

    // A rewritten file has a new stamp and is read again; a new one has no stamp yet.
    std::fs::write(dir.path().join("a.txt"), "uno").expect("write");
    std::fs::write(dir.path().join("c.txt"), "three").expect("write");
    let again = hash_dir_with(dir.path(), &planted).expect("hashes");
    assert_eq!(again.hash, hash_dir(dir.path()).expect("hashes").hash);
    assert_ne!(again.files[0].digest, [7; 32]);
    assert_eq!(again.files[2].stamp, None, "too new to vouch for");

    for damaged in [
        &b""[..],
        b"not a cache\n",
        b"testfleet digest cache 1\nzz 1 2 3 4 5 00\n",
    ] {
        assert_eq!(DigestCache::decode(damaged), None, "{damaged:?}");
    }
    let file = dir.path().join("cache/digests");
    planted.save(&file).expect("saved");
    assert_eq!(DigestCache::load(&file), planted);
    assert_eq!(
        DigestCache::load(&dir.path().join("missing")),
        DigestCache::default()
    );
}

/// Hashes a tree of `files` (path → contents; a path ending in `/` is an empty folder) with
/// `excludes`, and checks the files kept and the entries left out (`dir/` for a folder).
fn check_excluding(files: &[(&str, &str)], excludes: &[&str], kept: &[&str], left_out: &[&str]) {
    let dir = tempfile::tempdir().expect("temp dir");
    for (path, text) in files {
        let full = dir.path().join(path);
        if path.ends_with('/') {
            std::fs::create_dir_all(&full).expect("mkdir");
        } else {
            std::fs::create_dir_all(full.parent().expect("has a parent")).expect("mkdir");
            std::fs::write(&full, text).expect("write");
        }
    }
    let excludes: Vec<String> = excludes.iter().map(|p| (*p).to_owned()).collect();
    let manifest = testfleet_core::hash::hash_dir_excluding(dir.path(), &excludes).expect("hashes");
    let files: Vec<String> = manifest
        .files
        .iter()
        .map(|f| f.rel_path.to_string())
        .collect();
    assert_eq!(files, kept, "kept, for {excludes:?}");
    let excluded: Vec<String> = manifest
        .excluded
        .iter()
        .map(|e| format!("{}{}", e.rel_path, if e.dir { "/" } else { "" }))
        .collect();
    assert_eq!(excluded, left_out, "left out, for {excludes:?}");

    // What is hashed is what is uploaded: the same hash as a tree holding only what was kept.
    let only_kept = tempfile::tempdir().expect("temp dir");
    for file in &manifest.files {
        let from = dir.path().join(file.rel_path.to_string());
        let to = only_kept.path().join(file.rel_path.to_string());
        std::fs::create_dir_all(to.parent().expect("has a parent")).expect("mkdir");
        std::fs::copy(&from, &to).expect("copy");
    }
    let bare =
        testfleet_core::hash::hash_dir_excluding(only_kept.path(), &excludes).expect("hashes");
    assert_eq!(
        bare.files.len(),
        manifest.files.len(),
        "the copy keeps every file"
    );
    assert_eq!(
        bare.hash, manifest.hash,
        "the hash covers exactly the kept files"
    );
}

#[test]
fn excludes_leave_files_out_of_the_hash_and_the_upload() {
    let tree = [
        ("run.sh", "echo\n"),
        (".git/HEAD", "ref\n"),
        (".git/objects/ab", "x"),
        ("node_modules/a/index.js", "1"),
        ("src/main.log", "log"),
        ("src/keep.log", "log"),
        ("src/lib.rs", "fn f() {}"),
    ];
    // No ignore file: only .git/ is left out, and it is not looked into.
    check_excluding(
        &tree,
        &[],
        &[
            "node_modules/a/index.js",
            "run.sh",
            "src/keep.log",
            "src/lib.rs",
            "src/main.log",
        ],
        &[".git/"],
    );
    check_excluding(
        &tree,
        &["node_modules/", "*.log", "!keep.log"],
        &["run.sh", "src/keep.log", "src/lib.rs"],
        &[".git/", "node_modules/", "src/main.log"],
    );
    // The ignore file, at the root: gitignore syntax, `!.git/` puts .git back.
    let mut with_ignore_file = tree.to_vec();
    with_ignore_file.push((
        ".testfleetignore",
        "# deps\nnode_modules/\n/src/*.log\n!.git/\n",
    ));
    check_excluding(
        &with_ignore_file,
        &[],
        &[
            ".git/HEAD",
            ".git/objects/ab",
            ".testfleetignore",
            "run.sh",
            "src/lib.rs",
        ],
        &["node_modules/", "src/keep.log", "src/main.log"],
    );
    // --exclude comes after the ignore file, so it can put back what the file left out.
    check_excluding(
        &with_ignore_file,
        &["!src/keep.log", "run.sh"],
        &[
            ".git/HEAD",
            ".git/objects/ab",
            ".testfleetignore",
            "src/keep.log",
            "src/lib.rs",
        ],
        &["node_modules/", "run.sh", "src/main.log"],
    );
}

#[test]
fn an_ignore_file_changes_the_hash_and_the_upload_together() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("run.sh"), "echo\n").expect("write");
    std::fs::create_dir(dir.path().join("big")).expect("mkdir");
    std::fs::write(dir.path().join("big/blob"), "x".repeat(1000)).expect("write");
    let before = hash_dir(dir.path()).expect("hashes");
    std::fs::write(dir.path().join(".testfleetignore"), "big/\n").expect("write");
    let after = hash_dir(dir.path()).expect("hashes");
    assert_ne!(before.hash, after.hash);
    assert!(after.ignore_file && !before.ignore_file);
    let files: Vec<String> = after.files.iter().map(|f| f.rel_path.to_string()).collect();
    assert_eq!(files, [".testfleetignore", "run.sh"]);
    assert_eq!(after.total_bytes(), "big/\n".len() as u64 + 5);
}

#[test]
fn bad_ignore_files_and_patterns_are_refused() {
    use testfleet_core::{ErrorCode, HashError};
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("run.sh"), "echo\n").expect("write");
    let bad = testfleet_core::hash::hash_dir_excluding(dir.path(), &["[z-a]".to_owned()])
        .expect_err("an unclosed class is not a gitignore line");
    assert_eq!(bad.code(), ErrorCode::InvalidArgument, "{bad}");
    assert!(matches!(bad, HashError::Exclude(_)), "{bad:?}");
    std::fs::create_dir(dir.path().join(".testfleetignore")).expect("mkdir");
    let error = hash_dir(dir.path()).expect_err("a folder is no ignore file");
    assert_eq!(error.code(), ErrorCode::TestDirUnreadable, "{error}");
    assert!(error.to_string().contains(".testfleetignore"), "{error}");
}
