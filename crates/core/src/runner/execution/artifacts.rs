//! The artifacts step: whatever the script left in `./artifacts/` comes home, whatever the
//! outcome.

use crate::remote::RemoteLayout;
use crate::run::ArtifactSummary;

use super::Execution;
use crate::runner::outcome::Outcome;

impl Execution<'_> {
    /// Downloads the run folder's `artifacts/` into the local run folder; refused names become
    /// notes, a failure becomes the outcome's (or a note when it already failed).
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
            Some(Ok(report)) => {
                outcome.artifacts = Some(ArtifactSummary {
                    files: report.files,
                    bytes: report.bytes,
                });
                for refused in report.refused {
                    outcome.notes.push(format!(
                        "refused artifact {:?}: {}",
                        refused.path, refused.reason
                    ));
                }
            }
            Some(Err(error)) => outcome.record_ssh_failure(&error),
        }
    }
}
