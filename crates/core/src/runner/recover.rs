//! Finishing the job when the connection could not be trusted to the end: it was lost, a kill
//! went unanswered, or the process that owned the run died (`docs/contract.md#remote-side`).
//!
//! The run is already terminal (so that a `cancel` or `wait` never waits for a dead link); the
//! runner dials the machine again, a bounded number of times, kills whatever of the run is
//! still alive, fetches the artifacts that exist, removes the remote folder, and records what
//! was and was not done as an [`Amendment`].

use std::time::Duration;

use crate::code::error_chain;
use crate::ports::{KillOutcome, KillRequest, SshSession, StoreError};
use crate::remote::RemoteLayout;
use crate::run::{Amendment, RemoteCleanup, Run};

use super::execute::close_quietly;
use super::execution::summarize;
use super::{MachineSpec, Runner, StopSignals};

/// How many times the machine is dialed again.
const RECONNECT_TRIES: u32 = 3;
/// The pause before the second try; it grows by as much before each later one.
const RECONNECT_PAUSE: Duration = Duration::from_secs(1);

/// What a recovery is asked to do besides the kill.
#[derive(Debug, Clone, Copy)]
pub(super) struct Recovery {
    /// The script ran: fetch what it left in `artifacts/`.
    pub(super) fetch_artifacts: bool,
    /// Why the job is finished late, for the record ("after the connection was lost").
    pub(super) why: &'static str,
}

impl Runner {
    /// Finishes a run whose owner died (the reaper ended it `WORKER_LOST`): reconnects to its
    /// machine, kills what is left of it, fetches its artifacts, removes its remote folder
    /// (unless `--keep-remote`), and records what was done. A run that never reached the machine
    /// (no remote folder) is returned as it is.
    ///
    /// # Errors
    /// [`StoreError`] when the amendment cannot be recorded.
    pub async fn finish_lost_run(
        &self,
        run: &Run,
        machine: &MachineSpec,
        signals: &StopSignals,
    ) -> Result<Run, StoreError> {
        let Some(run_dir) = run.remote_dir.as_deref() else {
            return Ok(run.clone());
        };
        let layout = RemoteLayout::of_run_dir(run_dir, &run.id);
        let recovery = Recovery {
            fetch_artifacts: run.started_at.is_some(),
            why: "after its owner was lost",
        };
        let amendment = self.recover(run, machine, &layout, recovery, signals).await;
        self.store.amend(&run.id, amendment).await
    }

    /// Dials the machine again and finishes the job; says what was done.
    pub(super) async fn recover(
        &self,
        run: &Run,
        machine: &MachineSpec,
        layout: &RemoteLayout,
        recovery: Recovery,
        signals: &StopSignals,
    ) -> Amendment {
        let mut done = Vec::new();
        let (remote_cleanup, artifacts) = match self.reconnect(machine, signals).await {
            Ok(session) => {
                let outcome = self
                    .finish_on(session.as_ref(), run, machine, layout, recovery, &mut done)
                    .await;
                close_quietly(session.as_ref()).await;
                outcome
            }
            Err(reason) => {
                done.push(format!(
                    "could not reach the machine again ({reason}); processes of the run may \
                     still be running there"
                ));
                (RemoteCleanup::Unreachable, None)
            }
        };
        let tests = self
            .read_test_reports(run, machine, artifacts.is_some(), signals)
            .await;
        Amendment {
            at: self.clock.now(),
            remote_cleanup: Some(remote_cleanup),
            artifacts,
            tests,
            detail: format!("{}: {}", recovery.why, done.join("; ")),
        }
    }

    async fn reconnect(
        &self,
        machine: &MachineSpec,
        signals: &StopSignals,
    ) -> Result<Box<dyn SshSession>, String> {
        let mut last_error = String::new();
        for attempt in 0..RECONNECT_TRIES {
            if attempt > 0 {
                tokio::select! {
                    () = signals.abandon.cancelled() => return Err("abandoned".to_owned()),
                    () = tokio::time::sleep(RECONNECT_PAUSE * attempt) => {}
                }
            }
            let connected = tokio::select! {
                () = signals.abandon.cancelled() => return Err("abandoned".to_owned()),
                connected = self.ssh.connect(&machine.ssh) => connected,
            };
            match connected {
                Ok(session) => return Ok(session),
                Err(error) => last_error = error_chain(&error),
            }
        }
        Err(format!("{RECONNECT_TRIES} tries, the last: {last_error}"))
    }

    /// Kill, artifacts and cleanup over a fresh connection.
    async fn finish_on(
        &self,
        session: &dyn SshSession,
        run: &Run,
        machine: &MachineSpec,
        layout: &RemoteLayout,
        recovery: Recovery,
        done: &mut Vec<String>,
    ) -> (RemoteCleanup, Option<crate::run::ArtifactSummary>) {
        let kill = KillRequest {
            shell: machine.shell(),
            pid_file: layout.pid_file().to_owned(),
            run_id: run.id.to_string(),
            grace: self.config.kill_grace,
        };
        // Bounded: a machine that stops answering must not hang the recovery. The connection
        // is new, so the kill may take its whole grace and more.
        let kill_wait = self.config.kill_wait;
        let killed = tokio::time::timeout(kill_wait, session.kill(&kill))
            .await
            .unwrap_or_else(|_| {
                Err(crate::ports::SshError::ExecFailed {
                    reason: format!(
                        "the kill was not confirmed within {}",
                        humantime::format_duration(kill_wait)
                    ),
                    source: None,
                })
            });
        let remote_cleanup = match killed {
            Ok(KillOutcome::Killed) => {
                done.push("reconnected and killed what was left of the run".to_owned());
                RemoteCleanup::Killed
            }
            Ok(KillOutcome::AlreadyGone) => {
                done.push("reconnected: nothing of the run was alive".to_owned());
                RemoteCleanup::AlreadyGone
            }
            Ok(KillOutcome::Survived) => {
                done.push("reconnected, but processes of the run survived KILL".to_owned());
                RemoteCleanup::Survived
            }
            Err(error) => {
                done.push(format!(
                    "reconnected, but the kill failed: {}",
                    error_chain(&error)
                ));
                RemoteCleanup::Unreachable
            }
        };
        let mut artifacts = None;
        if recovery.fetch_artifacts {
            match session
                .download_dir(layout.artifacts_dir(), &run.paths.artifacts)
                .await
            {
                Ok(report) => {
                    let summary = summarize(report, done);
                    done.push(format!("fetched {} artifact file(s)", summary.files));
                    artifacts = Some(summary);
                }
                Err(error) => done.push(format!(
                    "failed to fetch the artifacts: {}",
                    error_chain(&error)
                )),
            }
        }
        if run.keep_remote {
            done.push("kept the remote folder (--keep-remote)".to_owned());
        } else {
            let removed = async {
                session.remove(layout.run_dir()).await?;
                session.remove(layout.pid_file()).await
            };
            match removed.await {
                Ok(()) => done.push("removed the remote folder".to_owned()),
                Err(error) => done.push(format!(
                    "failed to remove the remote folder: {}",
                    error_chain(&error)
                )),
            }
        }
        (remote_cleanup, artifacts)
    }
}
