//! Everything between a run's start and its final status, as named steps: the remote
//! [`folders`], the [`leftovers`] of other runs, the [`upload`], the [`exec`] of the entrypoint
//! (and its kill), the [`artifacts`], and the [`cleanup`] of the remote folder.
//!
//! On a POSIX host the entrypoint's command (and, for a large folder, the `rm -rf` of the
//! cleanup) is started behind a gate before the upload, so that the host's session start
//! overlaps the upload; the gate opens when the upload is done and the machine is known to be
//! free of other runs (the cleanup's after the download). Windows commands start when they may
//! run.

mod artifacts;
mod cleanup;
mod exec;
mod folders;
mod leftovers;
mod upload;

pub(super) use artifacts::summarize;

use crate::code::ErrorCode;
use crate::hash::DirManifest;
use crate::ports::{RemoteExit, SshSession};
use crate::remote::{RemoteLayout, RemoteShell};
use crate::run::{RemoteCleanup, Run};

use super::logs::{LogSink, describe_io};
use super::outcome::Outcome;
use super::{MachineSpec, RunObserver, Runner, StopSignals};

/// One running run and what its steps need.
pub(super) struct Execution<'a> {
    pub(super) runner: &'a Runner,
    pub(super) run: &'a Run,
    pub(super) machine: &'a MachineSpec,
    pub(super) session: &'a dyn SshSession,
    pub(super) shell: RemoteShell,
    pub(super) signals: &'a StopSignals,
    pub(super) observer: &'a dyn RunObserver,
    /// The entrypoint's variables, secrets' values included.
    pub(super) env: &'a [super::ResolvedVar],
}

impl Execution<'_> {
    /// Runs every step and says what happened, with the run's remote layout once its folders
    /// exist.
    pub(super) async fn drive(&self, manifest: &DirManifest) -> (Outcome, Option<RemoteLayout>) {
        let started = std::time::Instant::now();
        let layout = match self.remote_folders().await {
            Ok(layout) => layout,
            Err(outcome) => return (outcome, None),
        };
        tracing::debug!(run = %self.run.id, elapsed = ?started.elapsed(), "remote folders ready");
        let outcome = self
            .with_cleanup(&layout, manifest, self.run_script(&layout, manifest))
            .await;
        tracing::debug!(run = %self.run.id, elapsed = ?started.elapsed(), "cleanup ended");
        (outcome, Some(layout))
    }

    /// Upload (beside the look at other runs' leftovers), exec (with the timeout and stop
    /// signals, the kill when needed), then the artifacts.
    async fn run_script(&self, layout: &RemoteLayout, manifest: &DirManifest) -> Outcome {
        let mut logs = match LogSink::open(self.run, self.observer) {
            Ok(logs) => logs,
            Err(error) => {
                let message = format!(
                    "failed to open the local log files in {}: {}",
                    self.run.paths.dir.display(),
                    describe_io(&error)
                );
                return Outcome::failed_with(ErrorCode::Internal, message);
            }
        };
        let (keeper, mut exec) = self.start_exec(layout, &mut logs);
        let cache = self.file_cache(layout);
        let (uploaded, cleared) = tokio::join!(
            self.upload(layout, manifest, cache.as_ref(), &mut exec),
            self.clear_leftovers(layout)
        );
        let mut notes = cleared.notes;
        let (ended_at_gate, stats) = match (uploaded, cleared.busy) {
            (Ok(uploaded), None) => uploaded,
            (Ok(_), Some(busy)) => {
                let failed = Outcome::failed_with(ErrorCode::MachineBusy, busy);
                return self.end_before_start(failed, keeper, exec, notes).await;
            }
            (Err(failed), _) => return self.end_before_start(failed, keeper, exec, notes).await,
        };
        tracing::debug!(run = %self.run.id, "upload ended");
        let mut outcome = Outcome {
            upload: Some(stats.into()),
            ..Outcome::default()
        };
        outcome.notes.append(&mut notes);
        let finished = match ended_at_gate {
            Some(ended) => Err(exec::ended_at_gate(self.run, ended)),
            None => {
                keeper.open_with(&exec.gate_payload);
                outcome.script_started = true;
                // The cache is pruned while the script runs, on the connection's SFTP session.
                let (finished, pruned) = tokio::join!(
                    self.wait_or_stop(layout, &mut exec, &mut outcome),
                    self.prune_cache(cache.as_ref(), stats.files > 0)
                );
                outcome.notes.extend(pruned);
                finished
            }
        };
        drop(exec);
        tracing::debug!(run = %self.run.id, "remote command ended");
        self.record_end(layout, finished, &mut outcome).await;
        if let Some(error) = logs.take_error() {
            let message = format!(
                "failed to write the local logs in {}: {}",
                self.run.paths.dir.display(),
                describe_io(&error)
            );
            outcome.set_failure(ErrorCode::Internal, message);
        }
        // Artifacts, whatever the outcome, unless the connection cannot be trusted.
        if !outcome.link_down && outcome.script_started {
            self.fetch_artifacts(layout, &mut outcome).await;
        }
        outcome
    }

    /// Records how the command ended, and what is then known of the run's processes.
    async fn record_end(
        &self,
        layout: &RemoteLayout,
        finished: super::outcome::Finished,
        outcome: &mut Outcome,
    ) {
        let ended_on_its_own = outcome.stopped.is_none();
        match &finished {
            // The POSIX wrapper takes the rest of the tree down with the entrypoint before it
            // exits; a Windows host gets no such sweep, so nothing is claimed there.
            Ok(Some(RemoteExit::Code(_) | RemoteExit::Signal(_)))
                if ended_on_its_own && self.shell == RemoteShell::Posix =>
            {
                outcome.remote_cleanup = Some(RemoteCleanup::AlreadyGone);
            }
            // The channel closed without saying how: make sure on the same connection.
            Ok(Some(RemoteExit::NoStatus)) if ended_on_its_own => {
                self.kill_to_be_sure(layout, outcome).await;
            }
            _ => {}
        }
        outcome.record_exit(self.run, finished);
        outcome.apply_stop(self.run);
    }
}
