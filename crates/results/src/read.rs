//! Every report of one run: the artifacts folder walked (no symlink followed), each matching
//! file read within the [`Limits`], and the [`TestSummary`] the run records.

use std::fs::File;
use std::io::{BufReader, Read as _};
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use quick_junit::Report;
use testfleet_core::runner::ReportReader;
use testfleet_core::{FailedCase, FailureKind, TestSummary, UnreadableReport};

use crate::find::ResultGlobs;
use crate::limits::Limits;
use crate::parse::{
    CaseOutcome, CaseResult, ParsedReport, cases_of, duration_of, first_line, n_cases, outcome_of,
    parse_junit,
};

/// What one run's reports hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunReports {
    /// The reports read, by path relative to the artifacts folder, in path order.
    pub files: Vec<(String, ParsedReport)>,
    /// The files that matched but could not be read.
    pub unreadable: Vec<UnreadableReport>,
}

impl RunReports {
    /// Whether any file was a report (read or not).
    pub fn found_any(&self) -> bool {
        !self.files.is_empty() || !self.unreadable.is_empty()
    }

    /// Every case of every report read, in path then document order.
    pub fn cases(&self) -> impl Iterator<Item = &CaseResult> {
        self.files
            .iter()
            .flat_map(|(_, report)| report.cases.iter())
    }

    /// The summary a run records; `None` when no file was a report.
    pub fn summary(&self, limits: &Limits) -> Option<TestSummary> {
        if !self.found_any() {
            return None;
        }
        let mut tally = Tally::new(limits);
        for (path, report) in &self.files {
            tally.file(path, report.duration_ms);
            for case in &report.cases {
                tally.case(case.outcome, || FailedCase {
                    suite: case.suite.clone(),
                    classname: case.classname.clone(),
                    name: case.name.clone(),
                    kind: FailureKind::Failure,
                    message: case.message.clone(),
                });
            }
        }
        Some(tally.finish(self.unreadable.clone()))
    }
}

/// A summary being added up, case by case.
struct Tally<'l> {
    limits: &'l Limits,
    summary: TestSummary,
}

impl<'l> Tally<'l> {
    fn new(limits: &'l Limits) -> Self {
        Self {
            limits,
            summary: TestSummary::default(),
        }
    }

    fn file(&mut self, path: &str, duration_ms: u64) {
        self.summary.reports.push(path.to_owned());
        self.summary.duration_ms = self.summary.duration_ms.saturating_add(duration_ms);
    }

    /// Counts a case; `failed` builds its entry (its kind is set here) only when it is listed.
    fn case(&mut self, outcome: CaseOutcome, failed: impl FnOnce() -> FailedCase) {
        let summary = &mut self.summary;
        summary.total += 1;
        let kind = match outcome {
            CaseOutcome::Passed => {
                summary.passed += 1;
                return;
            }
            CaseOutcome::Skipped => {
                summary.skipped += 1;
                return;
            }
            CaseOutcome::Failed => {
                summary.failed += 1;
                FailureKind::Failure
            }
            CaseOutcome::Error => {
                summary.errors += 1;
                FailureKind::Error
            }
        };
        if summary.failures.len() < self.limits.max_listed_failures {
            let mut entry = failed();
            entry.kind = kind;
            summary.failures.push(entry);
        } else {
            summary.failures_omitted += 1;
        }
    }

    fn finish(mut self, unreadable: Vec<UnreadableReport>) -> TestSummary {
        self.summary.unreadable = unreadable;
        self.summary
    }
}

/// Reads the reports under `artifacts_dir` that `globs` match, or only the files `only` names
/// (relative paths, as a summary's `reports` lists them) when given, keeping every case.
///
/// Never fails: every file that cannot be read is listed with why. The folder itself missing
/// means no report.
pub fn read_reports(
    artifacts_dir: &Path,
    globs: &ResultGlobs,
    only: Option<&[String]>,
    limits: &Limits,
) -> RunReports {
    let mut files = Vec::new();
    let unreadable = visit_reports(artifacts_dir, globs, only, limits, |path, report| {
        files.push((path.to_owned(), cases_of(report, limits)));
    });
    RunReports { files, unreadable }
}

/// The summary of the reports under `artifacts_dir` matching `patterns` (see [`read_reports`]),
/// added up while each report is read, so that no case outlives its report. Patterns that do
/// not compile are listed as unreadable rather than read.
pub fn summarize(
    artifacts_dir: &Path,
    patterns: &[String],
    limits: &Limits,
) -> Option<TestSummary> {
    let globs = match ResultGlobs::new(patterns) {
        Ok(globs) => globs,
        Err(error) => {
            return Some(TestSummary {
                unreadable: vec![UnreadableReport {
                    path: error.pattern.clone(),
                    reason: error.to_string(),
                }],
                ..TestSummary::default()
            });
        }
    };
    let mut tally = Tally::new(limits);
    let mut any = false;
    let unreadable = visit_reports(artifacts_dir, &globs, None, limits, |path, report| {
        any = true;
        tally.file(path, duration_of(report));
        for suite in &report.test_suites {
            for case in &suite.test_cases {
                let (outcome, message, description) = outcome_of(&case.status);
                tally.case(outcome, || FailedCase {
                    suite: suite.name.as_str().to_owned(),
                    classname: case.classname.as_ref().map(|c| c.as_str().to_owned()),
                    name: case.name.as_str().to_owned(),
                    kind: FailureKind::Failure,
                    message: first_line(
                        message.map(|m| m.as_str()).unwrap_or_default(),
                        description.map(|d| d.as_str()).unwrap_or_default(),
                        limits.max_message_chars,
                    ),
                });
            }
        }
    });
    (any || !unreadable.is_empty()).then(|| tally.finish(unreadable))
}

/// Walks the artifacts folder and hands each report read to `visit`, in path order; returns
/// the files that matched but could not be read.
fn visit_reports(
    artifacts_dir: &Path,
    globs: &ResultGlobs,
    only: Option<&[String]>,
    limits: &Limits,
    mut visit: impl FnMut(&str, &Report),
) -> Vec<UnreadableReport> {
    let mut unreadable = Vec::new();
    match std::fs::symlink_metadata(artifacts_dir) {
        Ok(meta) if meta.is_dir() => {}
        _ => return unreadable,
    }
    let mut budget = Budget {
        bytes: limits.max_total_bytes,
        cases: limits.max_cases,
        files: limits.max_files,
    };
    let walk = walkdir::WalkDir::new(artifacts_dir)
        .follow_links(false)
        .min_depth(1)
        .max_depth(64)
        .sort_by_file_name();
    for (entry_idx, entry) in walk.into_iter().enumerate() {
        if entry_idx >= limits.max_entries {
            unreadable.push(UnreadableReport {
                path: ".".to_owned(),
                reason: format!(
                    "the artifacts folder has more than {} entries; the rest were not looked at",
                    limits.max_entries
                ),
            });
            break;
        }
        let Ok(entry) = entry else {
            // An unreadable folder: nothing under it can be matched.
            continue;
        };
        let Some(rel) = relative(artifacts_dir, entry.path()) else {
            continue;
        };
        let file_type = entry.file_type();
        if file_type.is_dir() {
            continue;
        }
        let wanted = only.map_or_else(|| globs.matches(&rel), |only| only.contains(&rel));
        if !wanted {
            continue;
        }
        let refuse = |reason: String| UnreadableReport {
            path: rel.clone(),
            reason,
        };
        if file_type.is_symlink() {
            unreadable.push(refuse(
                "is a symlink; reports are read only from regular files inside the artifacts folder"
                    .to_owned(),
            ));
            continue;
        }
        if !file_type.is_file() {
            unreadable.push(refuse("is not a regular file".to_owned()));
            continue;
        }
        if budget.files == 0 {
            unreadable.push(refuse(format!(
                "not read: the limit of {} report files per run was reached",
                limits.max_files
            )));
            continue;
        }
        let explicit = only.is_some() || globs.is_explicit();
        match read_one(entry.path(), explicit, limits, &mut budget) {
            Ok(Some(report)) => {
                budget.files -= 1;
                budget.cases = budget.cases.saturating_sub(n_cases(&report));
                visit(&rel, &report);
            }
            Ok(None) => {}
            Err(reason) => unreadable.push(refuse(reason)),
        }
    }
    unreadable
}

/// What is left of the run's limits.
struct Budget {
    bytes: u64,
    cases: usize,
    files: usize,
}

/// The path of `path` below `root`, `/`-separated; `None` when it is not valid UTF-8.
fn relative(root: &Path, path: &Path) -> Option<String> {
    let rel = path.strip_prefix(root).ok()?;
    let parts: Option<Vec<&str>> = rel.components().map(|c| c.as_os_str().to_str()).collect();
    Some(parts?.join("/"))
}

/// Reads one regular file within the limits. The file opened must be the one the walk saw:
/// if it was replaced (by a symlink, say) in between, it is refused.
fn read_one(
    path: &Path,
    explicit: bool,
    limits: &Limits,
    budget: &mut Budget,
) -> Result<Option<Report>, String> {
    let seen =
        std::fs::symlink_metadata(path).map_err(|error| format!("cannot be read: {error}"))?;
    let file = File::open(path).map_err(|error| format!("cannot be read: {error}"))?;
    let opened = file
        .metadata()
        .map_err(|error| format!("cannot be read: {error}"))?;
    if !same_file(&seen, &opened) || !opened.is_file() {
        return Err("changed while it was read".to_owned());
    }
    let size = opened.len();
    if size > limits.max_file_bytes {
        return Err(format!(
            "is {size} bytes, larger than the limit of {} bytes per report",
            limits.max_file_bytes
        ));
    }
    if size > budget.bytes {
        return Err(format!(
            "not read: the limit of {} report bytes per run was reached",
            limits.max_total_bytes
        ));
    }
    budget.bytes -= size;
    // A file that grows while it is read stops at the limit and fails to parse.
    let input = BufReader::new(file.take(limits.max_file_bytes));
    let max_cases = budget.cases;
    let parsed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        parse_junit(input, explicit, limits, max_cases)
    }));
    match parsed {
        Ok(parsed) => parsed,
        Err(_) => {
            Err("made the JUnit reader fail (a bug in it); the report was skipped".to_owned())
        }
    }
}

#[cfg(unix)]
fn same_file(a: &std::fs::Metadata, b: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    a.dev() == b.dev() && a.ino() == b.ino()
}

#[cfg(not(unix))]
fn same_file(a: &std::fs::Metadata, b: &std::fs::Metadata) -> bool {
    a.is_file() && b.is_file() && a.len() == b.len()
}

/// Core's [`ReportReader`] for JUnit XML: [`summarize`] on the blocking pool.
#[derive(Debug, Clone, Default)]
pub struct JunitReports {
    limits: Arc<Limits>,
}

impl JunitReports {
    /// A reader with these limits.
    pub fn with_limits(limits: Limits) -> Self {
        Self {
            limits: Arc::new(limits),
        }
    }
}

#[async_trait]
impl ReportReader for JunitReports {
    async fn summarize(&self, artifacts_dir: &Path, globs: &[String]) -> Option<TestSummary> {
        let dir = artifacts_dir.to_path_buf();
        let globs = globs.to_vec();
        let limits = Arc::clone(&self.limits);
        match tokio::task::spawn_blocking(move || summarize(&dir, &globs, &limits)).await {
            Ok(summary) => summary,
            Err(error) => {
                tracing::warn!(%error, "reading the test reports failed");
                Some(TestSummary {
                    unreadable: vec![UnreadableReport {
                        path: ".".to_owned(),
                        reason: format!("the report reader failed: {error}"),
                    }],
                    ..TestSummary::default()
                })
            }
        }
    }
}
