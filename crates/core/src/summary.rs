//! What the test reports of a run said (`docs/contract.md#test-reports`): the counts, the
//! first failed cases, and which report files were read or could not be.
//!
//! Core only holds the record; reading JUnit XML is the job of a
//! [`ReportReader`](crate::runner::ReportReader) that the application plugs into the runner.

use serde::{Deserialize, Serialize};

/// The summary of the test reports a run left among its artifacts. The counts add up:
/// `total = passed + failed + errors + skipped`.
///
/// Fields carry `#[serde(default)]`, so that a summary recorded by another version of
/// testfleet (with fields added or missing) still reads.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct TestSummary {
    /// Test cases in the reports read.
    pub total: u64,
    /// Cases that passed.
    pub passed: u64,
    /// Cases that failed (a `<failure>`).
    pub failed: u64,
    /// Cases that were skipped (a `<skipped>`).
    pub skipped: u64,
    /// Cases that ended in an error (an `<error>`: the test did not run to its assertion).
    pub errors: u64,
    /// The time the reports say the tests took, in milliseconds.
    pub duration_ms: u64,
    /// The failed and errored cases, in report order; the reader bounds the list.
    pub failures: Vec<FailedCase>,
    /// Failed and errored cases beyond those listed in `failures`.
    pub failures_omitted: u64,
    /// The report files read, relative to the run's artifacts folder, `/`-separated.
    pub reports: Vec<String>,
    /// The files that matched as reports but could not be read, and why.
    pub unreadable: Vec<UnreadableReport>,
}

impl TestSummary {
    /// Cases that did not pass and were not skipped: `failed + errors`.
    pub fn not_passed(&self) -> u64 {
        self.failed.saturating_add(self.errors)
    }
}

/// One case that failed or ended in an error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailedCase {
    /// The name of the `<testsuite>` that holds it.
    pub suite: String,
    /// The case's `classname`, when the report gives one.
    #[serde(default)]
    pub classname: Option<String>,
    /// The case's `name`.
    pub name: String,
    /// A failure or an error.
    pub kind: FailureKind,
    /// The first line of its message (the `message` attribute, else the element's text),
    /// bounded by the reader; empty when there is none.
    #[serde(default)]
    pub message: String,
}

/// How a case did not pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailureKind {
    /// `<failure>`: an assertion failed.
    Failure,
    /// `<error>`: the test ended in an unexpected error.
    Error,
}

/// A file that matched as a test report but could not be read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnreadableReport {
    /// The file, relative to the run's artifacts folder, `/`-separated.
    pub path: String,
    /// Why it could not be read.
    pub reason: String,
}
