//! The test reports of a run: once its artifacts are home, the runner asks the application's
//! [`ReportReader`] what they say, and the final transition records it with the status.

use std::fmt;
use std::path::Path;

use async_trait::async_trait;

use crate::run::Run;
use crate::summary::TestSummary;

use super::{MachineSpec, Runner, StopSignals};

/// Reads the test reports (JUnit XML, …) a run left among its downloaded artifacts.
///
/// The runner calls it once per run, after the artifact download and before the final
/// status is recorded, and only when the download took place. What it returns is recorded in
/// [`Run::tests`] by the same compare-and-set as the status.
#[async_trait]
pub trait ReportReader: Send + Sync + fmt::Debug {
    /// Summarizes the reports under `artifacts_dir` whose path relative to it matches one of
    /// `globs` (`/`-separated glob patterns; empty: the reader's default).
    ///
    /// Reading a report never fails a run, so this returns no error: a file that cannot be
    /// read (malformed, too large, a symlink, …) is listed in
    /// [`TestSummary::unreadable`]. `None` means that no file is a test report. An
    /// implementation MUST NOT read anything outside `artifacts_dir` (it follows no symlink)
    /// and MUST bound its memory and time whatever the files hold.
    async fn summarize(&self, artifacts_dir: &Path, globs: &[String]) -> Option<TestSummary>;
}

impl Runner {
    /// What the run's test reports say, when a reader is configured and the artifacts were
    /// downloaded (`downloaded`: by the run, or late by its recovery); `None` otherwise, or when
    /// the caller abandons the run meanwhile.
    pub(super) async fn read_test_reports(
        &self,
        run: &Run,
        machine: &MachineSpec,
        downloaded: bool,
        signals: &StopSignals,
    ) -> Option<TestSummary> {
        let reader = self.config.reports.as_ref()?;
        if !downloaded {
            return None;
        }
        tokio::select! {
            biased;
            () = signals.abandon.cancelled() => None,
            summary = reader.summarize(&run.paths.artifacts, &machine.results) => summary,
        }
    }
}
