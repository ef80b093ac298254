//! Report fixtures and a folder to put them in.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use testfleet_core::TestSummary;
use testfleet_results::{Limits, summarize};

/// An artifacts folder in a temp dir.
pub struct Artifacts {
    pub root: tempfile::TempDir,
}

impl Artifacts {
    pub fn new() -> Self {
        Self {
            root: tempfile::tempdir().expect("a temp dir"),
        }
    }

    /// The artifacts folder itself (created on first write).
    pub fn dir(&self) -> PathBuf {
        self.root.path().join("artifacts")
    }

    /// A folder beside the artifacts folder, outside it.
    pub fn outside(&self) -> PathBuf {
        let dir = self.root.path().join("outside");
        std::fs::create_dir_all(&dir).expect("mkdir");
        dir
    }

    pub fn write(&self, rel: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let path = self.dir().join(rel);
        std::fs::create_dir_all(path.parent().expect("a parent")).expect("mkdir");
        std::fs::write(&path, contents).expect("write");
        path
    }

    pub fn summary(&self, patterns: &[&str]) -> Option<TestSummary> {
        self.summary_with(patterns, &Limits::default())
    }

    pub fn summary_with(&self, patterns: &[&str], limits: &Limits) -> Option<TestSummary> {
        let patterns: Vec<String> = patterns.iter().map(|p| (*p).to_owned()).collect();
        summarize(&self.dir(), &patterns, limits)
    }
}

/// `(total, passed, failed, skipped, errors)`.
pub fn counts(summary: &TestSummary) -> (u64, u64, u64, u64, u64) {
    (
        summary.total,
        summary.passed,
        summary.failed,
        summary.skipped,
        summary.errors,
    )
}

/// The one unreadable file of a summary and its reason.
pub fn only_unreadable(summary: &TestSummary) -> (String, String) {
    assert_eq!(summary.unreadable.len(), 1, "{summary:#?}");
    let unreadable = &summary.unreadable[0];
    (unreadable.path.clone(), unreadable.reason.clone())
}

/// A `<testsuites>` report with one suite of `n_cases` cases: every seventh fails, every
/// eleventh is skipped, the rest pass.
pub fn big_report(n_cases: usize) -> String {
    let mut xml = String::with_capacity(n_cases * 80);
    xml.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites name=\"big\">\n");
    xml.push_str("<testsuite name=\"big.suite\" time=\"12.5\">\n");
    for case_idx in 0..n_cases {
        let _ = write!(
            xml,
            "<testcase classname=\"big.mod{}\" name=\"case_{case_idx:06}\" time=\"0.001\"",
            case_idx % 100
        );
        if case_idx % 7 == 0 {
            let _ = writeln!(
                xml,
                "><failure message=\"case {case_idx} failed\">assert left == right</failure></testcase>"
            );
        } else if case_idx % 11 == 0 {
            xml.push_str("><skipped/></testcase>\n");
        } else {
            xml.push_str("/>\n");
        }
    }
    xml.push_str("</testsuite>\n</testsuites>\n");
    xml
}

/// How many cases of `big_report(n)` fail, are skipped, pass.
pub fn big_counts(n_cases: usize) -> (u64, u64, u64) {
    let failed = (0..n_cases).filter(|i| i % 7 == 0).count();
    let skipped = (0..n_cases).filter(|i| i % 7 != 0 && i % 11 == 0).count();
    let as_u64 = |n: usize| u64::try_from(n).expect("fits");
    (
        as_u64(failed),
        as_u64(skipped),
        as_u64(n_cases - failed - skipped),
    )
}

pub fn symlink(target: &Path, link: &Path) {
    std::fs::create_dir_all(link.parent().expect("a parent")).expect("mkdir");
    std::os::unix::fs::symlink(target, link).expect("symlink");
}
