//! Every kind of bad report, each against its limit: the summary names the file and says why,
//! reads the good files beside it, and nothing is read outside the artifacts folder.

use std::time::{Duration, Instant};

use proptest::prelude::*;
use testfleet_results::parse::parse_report;
use testfleet_results::{Limits, ResultGlobs, read_reports};

use crate::support::{Artifacts, big_report, counts, only_unreadable, symlink};

const GOOD: &str =
    r#"<testsuites><testsuite name="s"><testcase name="ok"/></testsuite></testsuites>"#;

/// The summary of a folder holding `bad.xml` with `contents` beside a good report: the good
/// one is read, the bad one listed with a reason containing `fragment`.
fn check_refused(contents: &[u8], limits: &Limits, fragment: &str) {
    let artifacts = Artifacts::new();
    artifacts.write("bad.xml", contents);
    artifacts.write("good.xml", GOOD);
    let started = Instant::now();
    let summary = artifacts.summary_with(&[], limits).expect("a summary");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "bounded time: {:?}",
        started.elapsed()
    );
    let (path, reason) = only_unreadable(&summary);
    assert_eq!(path, "bad.xml");
    assert!(reason.contains(fragment), "{reason:?} lacks {fragment:?}");
    assert_eq!(
        summary.reports,
        ["good.xml"],
        "the good report is still read"
    );
    assert_eq!(counts(&summary), (1, 1, 0, 0, 0));
}

#[test]
fn malformed_xml_is_named_with_its_position() {
    let limits = Limits::default();
    check_refused(
        br#"<testsuites><testsuite name="a"><testcase name="x"></testsuite></testsuites>"#,
        &limits,
        "not well-formed XML at byte",
    );
    check_refused(
        br#"<testsuites><testsuite name="a"><testcase name="x"/>"#,
        &limits,
        "ends before its root element is closed",
    );
    check_refused(
        br#"<testsuites><testsuite name="a" name="b"/></testsuites>"#,
        &limits,
        "bad attribute",
    );
    check_refused(
        b"<testsuites><testsuite name=\"\xff\xfe\"/></testsuites>",
        &limits,
        "not a valid JUnit report",
    );
    check_refused(
        br#"<testsuites><testsuite name="a"><testcase name="x"><failure/><error/></testcase></testsuite></testsuites>"#,
        &limits,
        "multiple main status elements",
    );
}

#[test]
fn an_xml_bomb_is_refused_without_expanding_anything() {
    // The billion laughs: 10^9 "lol"s if expanded.
    let mut bomb =
        String::from("<?xml version=\"1.0\"?>\n<!DOCTYPE lolz [\n <!ENTITY lol \"lol\">\n");
    for level in 1..10 {
        let previous = if level == 1 {
            "lol".to_owned()
        } else {
            format!("lol{}", level - 1)
        };
        bomb.push_str(&format!(
            " <!ENTITY lol{level} \"{}\">\n",
            format!("&{previous};").repeat(10)
        ));
    }
    bomb.push_str("]>\n<testsuites><testsuite name=\"&lol9;\"><testcase name=\"&lol9;\"/></testsuite></testsuites>\n");
    check_refused(bomb.as_bytes(), &Limits::default(), "has a DTD");

    // An external entity is a DTD too: no file is ever read through one.
    check_refused(
        br#"<?xml version="1.0"?><!DOCTYPE t [<!ENTITY xxe SYSTEM "file:///etc/passwd">]><testsuites><testsuite name="&xxe;"/></testsuites>"#,
        &Limits::default(),
        "has a DTD",
    );
    // Without a DTD, an entity nothing defines is refused, in text and in attributes.
    check_refused(
        br#"<testsuites><testsuite name="s"><testcase name="x"><failure>&lol9;</failure></testcase></testsuite></testsuites>"#,
        &Limits::default(),
        "uses the entity &lol9;",
    );
    check_refused(
        br#"<testsuites><testsuite name="&lol9;"/></testsuites>"#,
        &Limits::default(),
        "not a valid JUnit report",
    );
}

#[test]
fn a_report_larger_than_the_size_limit_is_not_read() {
    // 200 MB, sparse: refused on its size alone, before a byte is read.
    let artifacts = Artifacts::new();
    let huge = artifacts.write("huge.xml", "");
    std::fs::File::options()
        .write(true)
        .open(&huge)
        .and_then(|file| file.set_len(200 * 1024 * 1024))
        .expect("a sparse file");
    artifacts.write("good.xml", GOOD);
    let started = Instant::now();
    let summary = artifacts.summary(&[]).expect("a summary");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    let (path, reason) = only_unreadable(&summary);
    assert_eq!(path, "huge.xml");
    assert_eq!(
        reason,
        format!(
            "is {} bytes, larger than the limit of {} bytes per report",
            200 * 1024 * 1024,
            Limits::MAX_FILE_BYTES
        )
    );
    assert_eq!(summary.reports, ["good.xml"]);

    // The limit is the limit: one byte over it is refused, a report at it is read.
    let report = big_report(10);
    let at_limit = Limits {
        max_file_bytes: report.len() as u64,
        ..Limits::default()
    };
    check_refused(
        format!("{report} ").as_bytes(),
        &at_limit,
        "larger than the limit",
    );
    let artifacts = Artifacts::new();
    artifacts.write("exact.xml", &report);
    assert_eq!(
        artifacts.summary_with(&[], &at_limit).map(|s| s.total),
        Some(10)
    );
}

#[test]
fn the_case_limit_counts_over_every_file_of_the_run() {
    let limits = Limits {
        max_cases: 25,
        ..Limits::default()
    };
    check_refused(
        big_report(25).as_bytes(),
        &Limits {
            max_cases: 24,
            ..Limits::default()
        },
        "holds more test cases than the 24 left of the limit of 24 per run",
    );
    let artifacts = Artifacts::new();
    artifacts.write("a.xml", big_report(20));
    artifacts.write("b.xml", big_report(5));
    artifacts.write("c.xml", big_report(1));
    let summary = artifacts.summary_with(&[], &limits).expect("a summary");
    assert_eq!(summary.reports, ["a.xml", "b.xml"]);
    assert_eq!(summary.total, 25);
    let (path, reason) = only_unreadable(&summary);
    assert_eq!(path, "c.xml");
    assert!(reason.contains("0 left of the limit of 25"), "{reason}");
}

#[test]
fn deep_nesting_is_refused_at_the_depth_limit() {
    let nested = |depth: usize| {
        format!(
            "<testsuites><testsuite name=\"s\"><testcase name=\"x\"><system-out>{}{}</system-out></testcase></testsuite></testsuites>",
            "<a>".repeat(depth),
            "</a>".repeat(depth)
        )
    };
    let limits = Limits {
        max_depth: 10,
        ..Limits::default()
    };
    check_refused(nested(7).as_bytes(), &limits, "deeper than the limit of 10");
    let artifacts = Artifacts::new();
    artifacts.write("ok.xml", nested(6));
    assert_eq!(
        artifacts.summary_with(&[], &limits).map(|s| s.total),
        Some(1)
    );
    // A million levels by default: refused at 64, quickly.
    check_refused(
        nested(1_000_000).as_bytes(),
        &Limits::default(),
        "deeper than the limit of 64",
    );
}

#[test]
fn the_file_byte_and_entry_limits_of_a_run() {
    let artifacts = Artifacts::new();
    for idx in 0..4 {
        artifacts.write(&format!("r{idx}.xml"), GOOD);
    }
    let files = Limits {
        max_files: 3,
        ..Limits::default()
    };
    let summary = artifacts.summary_with(&[], &files).expect("a summary");
    assert_eq!(summary.reports, ["r0.xml", "r1.xml", "r2.xml"]);
    assert_eq!(
        only_unreadable(&summary),
        (
            "r3.xml".to_owned(),
            "not read: the limit of 3 report files per run was reached".to_owned()
        )
    );

    let bytes = Limits {
        max_total_bytes: 2 * GOOD.len() as u64,
        ..Limits::default()
    };
    let summary = artifacts.summary_with(&[], &bytes).expect("a summary");
    assert_eq!(summary.reports, ["r0.xml", "r1.xml"]);
    assert_eq!(summary.unreadable.len(), 2);
    assert!(
        summary.unreadable[0]
            .reason
            .contains("report bytes per run")
    );

    let entries = Limits {
        max_entries: 2,
        ..Limits::default()
    };
    let summary = artifacts.summary_with(&[], &entries).expect("a summary");
    assert_eq!(summary.reports, ["r0.xml", "r1.xml"]);
    let (path, reason) = only_unreadable(&summary);
    assert_eq!(path, ".");
    assert!(reason.contains("more than 2 entries"), "{reason}");
}

#[test]
fn a_symlink_is_never_followed() {
    let artifacts = Artifacts::new();
    let outside = artifacts.outside();
    std::fs::write(outside.join("secret.xml"), GOOD).expect("write");
    artifacts.write("good.xml", GOOD);
    // A report that is a symlink to a report outside the folder.
    symlink(
        &outside.join("secret.xml"),
        &artifacts.dir().join("link.xml"),
    );
    // A folder that is a symlink to a folder outside.
    symlink(&outside, &artifacts.dir().join("reports"));
    for patterns in [&[][..], &["**/*.xml"][..], &["reports/*.xml", "*.xml"][..]] {
        let summary = artifacts.summary(patterns).expect("a summary");
        assert_eq!(summary.reports, ["good.xml"], "{patterns:?}");
        let (path, reason) = only_unreadable(&summary);
        assert_eq!(path, "link.xml");
        assert!(reason.contains("is a symlink"), "{reason}");
    }
    // The artifacts folder itself being a symlink reads nothing.
    let other = Artifacts::new();
    symlink(&artifacts.dir(), &other.dir());
    assert_eq!(other.summary(&[]), None);
}

#[test]
fn patterns_that_would_leave_the_folder_read_nothing() {
    let artifacts = Artifacts::new();
    std::fs::write(artifacts.outside().join("out.xml"), GOOD).expect("write");
    artifacts.write("good.xml", GOOD);
    for pattern in ["../outside/*.xml", "/etc/*.xml"] {
        let summary = artifacts.summary(&[pattern]).expect("a summary");
        assert_eq!(summary.reports, Vec::<String>::new());
        assert_eq!(summary.total, 0);
        let (path, reason) = only_unreadable(&summary);
        assert_eq!(path, pattern);
        assert!(reason.contains("invalid results pattern"), "{reason}");
    }
}

#[test]
fn a_named_file_list_reads_exactly_those_files() {
    let artifacts = Artifacts::new();
    artifacts.write("a.xml", GOOD);
    artifacts.write("b.xml", big_report(3));
    let globs = ResultGlobs::new(&[]).expect("the default");
    let only = ["b.xml".to_owned(), "gone.xml".to_owned()];
    let reports = read_reports(&artifacts.dir(), &globs, Some(&only), &Limits::default());
    let paths: Vec<&str> = reports.files.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(paths, ["b.xml"]);
    assert_eq!(reports.cases().count(), 3);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Whatever the bytes, reading them ends with a report or a reason, never a panic.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = parse_report(bytes.as_slice(), true, &Limits::default(), 1_000);
    }

    /// A good report cut or damaged anywhere: a report or a reason, never a panic.
    #[test]
    fn damaged_reports_never_panic(cut in 0_usize..400, byte in any::<u8>(), at in 0_usize..400) {
        let mut bytes = big_report(3).into_bytes();
        bytes.truncate(cut.min(bytes.len()));
        if let Some(slot) = bytes.get_mut(at) {
            *slot = byte;
        }
        let _ = parse_report(bytes.as_slice(), false, &Limits::default(), 1_000);
    }
}
