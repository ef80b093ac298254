//! Bad input is refused with a message that names the path and why, and nothing is written.

use std::fs;
use std::path::Path;

use testfleet_core::ErrorCode;
use testfleet_store_sqlite::{DATABASE_FILE, SqliteStore};

use crate::support::chain;

/// Opens `db`, expects a failure, and checks that the message chain holds every fragment.
fn check_refused(db: &Path, fragments: &[&str]) {
    let error = SqliteStore::open(db).expect_err("the database must be refused");
    assert_eq!(error.code(), ErrorCode::StoreError);
    let message = chain(&error);
    for fragment in fragments {
        assert!(
            message.contains(fragment),
            "{fragment:?} missing from: {message}"
        );
    }
}

#[test]
fn a_file_that_is_not_a_database_is_refused_untouched() {
    let dir = tempfile::tempdir().expect("the temp dir is writable");
    let db = dir.path().join(DATABASE_FILE);
    let junk: Vec<u8> = b"this is a shopping list, not a database\n".repeat(200);
    for contents in [&junk[..], b"x", &[0xff_u8; 4096][..]] {
        fs::write(&db, contents).expect("the junk file is written");
        check_refused(
            &db,
            &[
                &db.display().to_string(),
                "is not an SQLite database",
                "left untouched",
            ],
        );
        assert_eq!(
            fs::read(&db).expect("the junk is readable"),
            contents,
            "nothing was overwritten"
        );
        let siblings = fs::read_dir(dir.path())
            .expect("the dir is readable")
            .count();
        assert_eq!(siblings, 1, "no journal or WAL file was created");
    }
}

#[test]
fn a_missing_state_directory_is_named() {
    let dir = tempfile::tempdir().expect("the temp dir is writable");
    let state_dir = dir.path().join("no-such-state-dir");
    let db = state_dir.join(DATABASE_FILE);
    check_refused(&db, &[&state_dir.display().to_string(), "does not exist"]);
    assert!(!state_dir.exists(), "the state directory is not created");
}

#[test]
fn a_state_directory_under_a_regular_file_is_named() {
    // Root may write anywhere, so unwritable directories are made with a file in the path.
    let dir = tempfile::tempdir().expect("the temp dir is writable");
    let file = dir.path().join("plain-file");
    fs::write(&file, b"not a directory").expect("the file is written");

    check_refused(
        &file.join(DATABASE_FILE),
        &[&file.display().to_string(), "is not a directory"],
    );

    let below = file.join("child");
    check_refused(
        &below.join(DATABASE_FILE),
        &[&below.display().to_string(), "Not a directory"],
    );
    assert_eq!(
        fs::read(&file).expect("the file is readable"),
        b"not a directory"
    );
}

#[test]
fn a_directory_in_place_of_the_database_is_named() {
    let dir = tempfile::tempdir().expect("the temp dir is writable");
    let db = dir.path().join(DATABASE_FILE);
    fs::create_dir(&db).expect("the directory is created");
    check_refused(&db, &[&db.display().to_string(), "is a directory"]);
}
