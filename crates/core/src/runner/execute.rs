//! Executing a pending run: the directory check, the dial, the start, and the final record.
//! What happens while the run is running is in [`super::execution`].

use std::borrow::Cow;

use crate::code::{ErrorCode, error_chain};
use crate::error::DispatchError;
use crate::hash::{DirManifest, hash_dir_excluding};
use crate::ids::RunId;
use crate::ports::{SshError, SshSession, StoreError};
use crate::run::{Run, RunStatus, Transition};

use super::execution::Execution;
use super::lease::HeldLease;
use super::recover::Recovery;
use super::{MachineSpec, RunObserver, Runner, StopSignals};

impl Runner {
    /// [`Runner::execute`] under `lease`: every change is guarded on the lease's owner.
    pub(super) async fn execute_leased(
        &self,
        run: Run,
        machine: &MachineSpec,
        manifest: Option<&DirManifest>,
        lease: &HeldLease,
        observer: &dyn RunObserver,
    ) -> Result<Run, DispatchError> {
        let signals = lease.signals();
        let manifest = match checked_manifest(&run, manifest) {
            Ok(manifest) => manifest,
            Err(message) => {
                let ended = self
                    .end_owned_pending(
                        lease,
                        &run,
                        RunStatus::Failed,
                        ErrorCode::TestDirChanged,
                        message,
                    )
                    .await?;
                observer.status(&ended);
                return Ok(ended);
            }
        };
        let env = match self.resolve_env(&run) {
            Ok(env) => env,
            Err(message) => {
                let ended = self
                    .end_owned_pending(lease, &run, RunStatus::Failed, ErrorCode::Internal, message)
                    .await?;
                observer.status(&ended);
                return Ok(ended);
            }
        };
        let session = match self.dial(&run, machine, signals).await {
            Ok(session) => session,
            Err((status, code, message)) => {
                let ended = self
                    .end_owned_pending(lease, &run, status, code, message)
                    .await?;
                observer.status(&ended);
                return Ok(ended);
            }
        };
        let start = lease.guard(Transition::new(
            RunStatus::Pending,
            RunStatus::Running,
            self.clock.now(),
        ));
        let run = match self.store.transition(&run.id, start).await {
            Ok(run) => run,
            Err(error) => {
                close_quietly(session.as_ref()).await;
                return match error {
                    // Cancelled or reaped meanwhile: leave the machine alone.
                    StoreError::Conflict { .. } | StoreError::OwnerChanged { .. } => {
                        Ok(self.store.get(&run.id).await?)
                    }
                    error => Err(error.into()),
                };
            }
        };
        observer.status(&run);

        let execution = Execution {
            runner: self,
            run: &run,
            machine,
            session: session.as_ref(),
            shell: machine.shell(),
            signals,
            observer,
            env: &env,
        };
        let (outcome, layout) = execution.drive(&manifest).await;
        close_quietly(session.as_ref()).await;
        for note in &outcome.notes {
            observer.warning(&run, note);
        }
        let recovery = Recovery {
            fetch_artifacts: outcome.script_started && outcome.artifacts.is_none(),
            why: "the connection could not be trusted to the end",
        };
        let reconnect = outcome.link_down && !signals.abandon.is_cancelled();
        let tests = self
            .read_test_reports(&run, machine, outcome.artifacts.is_some(), signals)
            .await;
        let mut change = lease.guard(outcome.into_transition(self.clock.now()));
        change.tests = tests;
        if reconnect {
            // Unknown until the recovery has looked: a null `remote_cleanup` on an ended run
            // says that testfleet is still finishing the job.
            change.remote_cleanup = None;
        }
        let (ended, ours) = match self.store.transition(&run.id, change).await {
            Ok(ended) => (ended, true),
            // Another process ended it meanwhile (a reaper) or took it over: the stored run
            // wins, and what is left on the machine is the new owner's to deal with.
            Err(StoreError::Conflict { .. } | StoreError::OwnerChanged { .. }) => {
                (self.store.get(&run.id).await?, false)
            }
            Err(error) => return Err(error.into()),
        };
        observer.status(&ended);
        match layout {
            // The run is recorded as ended (a `cancel` or `wait` does not wait for a dead
            // link); what is left on the machine is dealt with now.
            Some(layout) if reconnect && ours => {
                let amendment = self
                    .recover(&ended, machine, &layout, recovery, signals)
                    .await;
                observer.warning(&ended, &amendment.detail);
                let amended = self.store.amend(&ended.id, amendment).await?;
                observer.status(&amended);
                Ok(amended)
            }
            _ => Ok(ended),
        }
    }

    /// The run's variables with their values: the recorded ones, and each secret's from the
    /// runner's [`Secrets`](super::Secrets). On failure: why a secret has no value.
    fn resolve_env(&self, run: &Run) -> Result<Vec<super::ResolvedVar>, String> {
        run.invocation
            .env
            .iter()
            .map(|var| {
                let value = match var.value() {
                    Some(value) => value.to_owned(),
                    None => self.config.secrets.value(var.name()).ok_or_else(|| {
                        format!(
                            "the secret variable {} has no value here: it is read from the \
                             environment of the process that executes the run, and is not set there",
                            var.name()
                        )
                    })?,
                };
                Ok(super::ResolvedVar {
                    name: var.name().to_owned(),
                    value,
                    secret: var.is_secret(),
                })
            })
            .collect()
    }

    /// Dials the machine, unless the run is cancelled first. On failure: how the pending run
    /// ends (status, code, message).
    async fn dial(
        &self,
        run: &Run,
        machine: &MachineSpec,
        signals: &StopSignals,
    ) -> Result<Box<dyn SshSession>, (RunStatus, ErrorCode, String)> {
        let dial_started = std::time::Instant::now();
        let connected = tokio::select! {
            biased;
            () = signals.cancel.cancelled() => {
                return Err((
                    RunStatus::Interrupted,
                    ErrorCode::Interrupted,
                    "the run was cancelled before it started".to_owned(),
                ));
            }
            connected = self.ssh.connect(&machine.ssh) => connected,
        };
        match connected {
            Ok(session) => {
                tracing::debug!(run = %run.id, elapsed = ?dial_started.elapsed(), "connected");
                Ok(session)
            }
            Err(error) => Err((
                RunStatus::Failed,
                error.code(),
                self.dial_message(machine, &error),
            )),
        }
    }

    /// The message recorded for a failed dial: what happened, and the application's remedy.
    fn dial_message(&self, machine: &MachineSpec, error: &SshError) -> String {
        let mut message = error_chain(error);
        if let Some(remedy) = self.config.remedies.for_dial(&machine.name, error) {
            message.push_str("; ");
            message.push_str(&remedy);
        }
        message
    }

    /// Ends a pending run that never ran: `status` (failed or interrupted) with `code` and
    /// `message`, as a compare-and-set on `pending` at the clock's now. When another process
    /// already ended the run, the stored run wins and is returned. This is the one way every
    /// part of testfleet ends a pending run (a failed dial, a changed directory, a worker that
    /// cannot start).
    ///
    /// # Errors
    /// [`StoreError::NotFound`]; [`StoreError::InvalidTransition`] when `status` is not a
    /// terminal status a pending run can take; [`StoreError::Backend`].
    pub async fn end_pending(
        &self,
        id: &RunId,
        status: RunStatus,
        code: ErrorCode,
        message: impl Into<String>,
    ) -> Result<Run, StoreError> {
        let change =
            Transition::new(RunStatus::Pending, status, self.clock.now()).with_error(code, message);
        self.finish_with(id, change).await
    }

    /// Applies a final transition; when another process already ended the run (a lost
    /// compare-and-set) or took it over, the stored run wins and is returned.
    pub async fn finish_with(&self, id: &RunId, change: Transition) -> Result<Run, StoreError> {
        match self.store.transition(id, change).await {
            Ok(run) => Ok(run),
            Err(StoreError::Conflict { .. } | StoreError::OwnerChanged { .. }) => {
                self.store.get(id).await
            }
            Err(error) => Err(error),
        }
    }
}

/// The manifest to upload: the one given, or the directory hashed again. Either way it must
/// hash as when the run was claimed; otherwise the message says why not.
fn checked_manifest<'m>(
    run: &Run,
    manifest: Option<&'m DirManifest>,
) -> Result<Cow<'m, DirManifest>, String> {
    let manifest = match manifest {
        Some(manifest) => Cow::Borrowed(manifest),
        None => match hash_dir_excluding(&run.test_dir, &run.invocation.excludes) {
            Ok(fresh) => Cow::Owned(fresh),
            Err(error) => {
                return Err(format!(
                    "failed to read the test directory again: {}",
                    error_chain(&error)
                ));
            }
        },
    };
    if manifest.hash != run.test_dir_hash {
        return Err(format!(
            "test directory {} now hashes to {}, not {} as when the run was claimed; dispatch again",
            run.test_dir.display(),
            manifest.hash,
            run.test_dir_hash
        ));
    }
    Ok(manifest)
}

pub(super) async fn close_quietly(session: &dyn SshSession) {
    if let Err(error) = session.close().await {
        tracing::debug!("closing the SSH session failed: {}", error_chain(&error));
    }
}
