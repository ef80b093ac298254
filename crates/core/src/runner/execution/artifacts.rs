//! The artifacts step: whatever the script left in `./artifacts/` comes home, whatever the
//! outcome.

use crate::ports::DownloadReport;
use crate::remote::RemoteLayout;
use crate::run::ArtifactSummary;

use super::Execution;
use crate::runner::outcome::Outcome;

impl Execution<'_> {
    /// Downloads the run folder's `artifacts/` into the local run folder; skipped entries are
    /// named in the summary and the notes, a failure becomes the outcome's (or a note when it
    /// already failed).
    pub(super) async fn fetch_artifacts(&self, layout: &RemoteLayout, outcome: &mut Outcome) {
        let download = self
            .session
            .download_dir(layout.artifacts_dir(), &self.run.paths.artifacts);
        let downloaded = tokio::select! {
            biased;
            () = self.signals.abandon.cancelled() => None,
            downloaded = download => Some(downloaded),
        };
        match downloaded {
            None => outcome.notes.push("artifact download abandoned".to_owned()),
            Some(Ok(report)) => outcome.artifacts = Some(summarize(report, &mut outcome.notes)),
            Some(Err(error)) => outcome.record_ssh_failure(&error),
        }
    }
}

/// The summary of a download, the skipped entries listed (up to
/// [`ArtifactSummary::MAX_SKIPPED`]) and told in the notes (the first few, then a count).
pub(crate) fn summarize(report: DownloadReport, notes: &mut Vec<String>) -> ArtifactSummary {
    const TOLD: usize = 10;
    for skipped in report.skipped.iter().take(TOLD) {
        notes.push(format!(
            "skipped artifact {:?}: {}",
            skipped.path, skipped.reason
        ));
    }
    if report.skipped.len() > TOLD {
        notes.push(format!(
            "{} more artifacts skipped (see artifacts.skipped)",
            report.skipped.len() - TOLD
        ));
    }
    let mut skipped = report.skipped;
    skipped.truncate(ArtifactSummary::MAX_SKIPPED);
    ArtifactSummary {
        files: report.files,
        bytes: report.bytes,
        skipped,
    }
}
