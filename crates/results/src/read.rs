//! Every report of one run: the artifacts folder walked (no symlink followed), each matching
//! file read within the [`Limits`], and the [`TestSummary`] the run records.

use std::fs::File;
use std::io::{BufReader, Read as _};
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use testfleet_core::runner::ReportReader;
use testfleet_core::{FailedCase, FailureKind, TestSummary, UnreadableReport};

use crate::find::ResultGlobs;
use crate::limits::Limits;
use crate::parse::{CaseOutcome, CaseResult, Parsed, ParsedReport, parse_report};

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
        let mut summary = TestSummary {
            reports: self.files.iter().map(|(path, _)| path.clone()).collect(),
            unreadable: self.unreadable.clone(),
            ..TestSummary::default()
        };
        for (_, report) in &self.files {
            summary.duration_ms = summary.duration_ms.saturating_add(report.duration_ms);
        }
        for case in self.cases() {
            summary.total += 1;
            let kind = match case.outcome {
                CaseOutcome::Passed => {
                    summary.passed += 1;
                    continue;
                }
                CaseOutcome::Skipped => {
                    summary.skipped += 1;
                    continue;
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
            if summary.failures.len() < limits.max_listed_failures {
                summary.failures.push(FailedCase {
                    suite: case.suite.clone(),
                    classname: case.classname.clone(),
                    name: case.name.clone(),
                    kind,
                    message: case.message.clone(),
                });
            } else {
                summary.failures_omitted += 1;
            }
        }
        Some(summary)
    }
}

/// Reads the reports under `artifacts_dir` that `globs` match, or only the files `only` names
/// (relative paths, as a summary's `reports` lists them) when given.
///
/// Never fails: every file that cannot be read is listed with why. The folder itself missing
/// means no report.
pub fn read_reports(
    artifacts_dir: &Path,
    globs: &ResultGlobs,
    only: Option<&[String]>,
    limits: &Limits,
) -> RunReports {
    let mut reports = RunReports::default();
    match std::fs::symlink_metadata(artifacts_dir) {
        Ok(meta) if meta.is_dir() => {}
        _ => return reports,
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
            reports.unreadable.push(UnreadableReport {
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
            reports.unreadable.push(refuse(
                "is a symlink; reports are read only from regular files inside the artifacts folder"
                    .to_owned(),
            ));
            continue;
        }
        if !file_type.is_file() {
            reports
                .unreadable
                .push(refuse("is not a regular file".to_owned()));
            continue;
        }
        if budget.files == 0 {
            reports.unreadable.push(refuse(format!(
                "not read: the limit of {} report files per run was reached",
                limits.max_files
            )));
            continue;
        }
        let explicit = only.is_some() || globs.is_explicit();
        match read_one(entry.path(), explicit, limits, &mut budget) {
            Ok(Parsed::Report(report)) => {
                budget.files -= 1;
                budget.cases = budget.cases.saturating_sub(report.cases.len());
                reports.files.push((rel, report));
            }
            Ok(Parsed::NotAReport) => {}
            Err(reason) => reports.unreadable.push(refuse(reason)),
        }
    }
    reports
}

/// The summary of the reports under `artifacts_dir` matching `patterns` (see [`read_reports`]).
/// Patterns that do not compile are listed as unreadable rather than read.
pub fn summarize(
    artifacts_dir: &Path,
    patterns: &[String],
    limits: &Limits,
) -> Option<TestSummary> {
    match ResultGlobs::new(patterns) {
        Ok(globs) => read_reports(artifacts_dir, &globs, None, limits).summary(limits),
        Err(error) => Some(TestSummary {
            unreadable: vec![UnreadableReport {
                path: error.pattern.clone(),
                reason: error.to_string(),
            }],
            ..TestSummary::default()
        }),
    }
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
) -> Result<Parsed, String> {
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
        parse_report(input, explicit, limits, max_cases)
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
