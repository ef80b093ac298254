//! Everything between a run's start and its final status, as named steps: the remote
//! [`folders`], the [`upload`], the [`exec`] of the entrypoint (and its kill), the
//! [`artifacts`], and the [`cleanup`] of the remote folder.
//!
//! On a POSIX host the entrypoint's command (and, for a large folder, the `rm -rf` of the
//! cleanup) is started behind a gate before the upload, so that the host's session start
//! overlaps the upload; the gate opens when the upload is done (the cleanup's after the
//! download). Windows commands start when they may run.

mod artifacts;
mod cleanup;
mod exec;
mod folders;
mod upload;

use crate::code::ErrorCode;
use crate::hash::DirManifest;
use crate::ports::SshSession;
use crate::remote::{RemoteLayout, RemoteShell};
use crate::run::Run;

use super::logs::LogSink;
use super::outcome::Outcome;
use super::{RunObserver, Runner, StopSignals};

/// One running run and what its steps need.
pub(super) struct Execution<'a> {
    pub(super) runner: &'a Runner,
    pub(super) run: &'a Run,
    pub(super) session: &'a dyn SshSession,
    pub(super) shell: RemoteShell,
    /// The machine's remote root, as the fleet names it.
    pub(super) remote_root: &'a str,
    pub(super) signals: &'a StopSignals,
    pub(super) observer: &'a dyn RunObserver,
}

impl Execution<'_> {
    /// Runs every step and says what happened.
    pub(super) async fn drive(&self, manifest: &DirManifest) -> Outcome {
        let started = std::time::Instant::now();
        let layout = match self.remote_folders().await {
            Ok(layout) => layout,
            Err(outcome) => return outcome,
        };
        tracing::debug!(run = %self.run.id, elapsed = ?started.elapsed(), "remote folders ready");
        let outcome = self
            .with_cleanup(&layout, manifest, self.run_script(&layout, manifest))
            .await;
        tracing::debug!(run = %self.run.id, elapsed = ?started.elapsed(), "cleanup ended");
        for note in &outcome.notes {
            self.observer.warning(self.run, note);
        }
        outcome
    }

    /// Upload, exec (with the timeout and stop signals, the kill when needed), then the
    /// artifacts.
    async fn run_script(&self, layout: &RemoteLayout, manifest: &DirManifest) -> Outcome {
        let mut logs = match LogSink::open(self.run, self.observer) {
            Ok(logs) => logs,
            Err(error) => {
                let message = format!(
                    "failed to open the local log files in {}: {error}",
                    self.run.paths.dir.display()
                );
                return Outcome::failed_with(ErrorCode::Internal, message);
            }
        };
        let (keeper, mut exec) = self.start_exec(layout, &mut logs);
        let ended_at_gate = match self.upload(layout, manifest, &mut exec).await {
            Ok(ended_at_gate) => ended_at_gate,
            Err(failed) => return self.end_before_start(failed, keeper, exec).await,
        };
        tracing::debug!(run = %self.run.id, "upload ended");
        let mut outcome = Outcome::default();
        let finished = match ended_at_gate {
            Some(ended) => Err(exec::ended_at_gate(self.run, ended)),
            None => {
                keeper.open();
                self.wait_or_stop(layout, &mut exec, &mut outcome).await
            }
        };
        drop(exec);
        tracing::debug!(run = %self.run.id, "remote command ended");
        outcome.record_exit(self.run, finished);
        outcome.apply_stop(self.run);
        if let Some(error) = logs.take_error() {
            let message = format!(
                "failed to write the local logs in {}: {error}",
                self.run.paths.dir.display()
            );
            outcome.set_failure(ErrorCode::Internal, message);
        }
        // Artifacts, whatever the outcome, unless the connection is gone.
        if !outcome.connection_lost {
            self.fetch_artifacts(layout, &mut outcome).await;
        }
        outcome
    }
}
