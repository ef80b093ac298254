//! The exec step: the entrypoint's command is started (gated on POSIX, before the upload),
//! released, and waited for under the timeout and the stop signals; a timeout or cancel kills
//! the remote process tree over a second channel while the command's output is still drained.

use std::pin::Pin;
use std::time::Duration;

use crate::code::error_chain;
use crate::ports::{ExecGate, GateKeeper, KillOutcome, KillRequest, RemoteExit, SshError};
use crate::remote::{RemoteLayout, RunScript, ScriptVar};
use crate::run::{RemoteCleanup, Run};

use super::Execution;
use crate::runner::logs::LogSink;
use crate::runner::outcome::{Finished, Outcome, StopReason};

/// What an exec future gives.
pub(super) type ExecResult = Result<RemoteExit, SshError>;

/// The entrypoint's command, started or about to start.
pub(super) struct Started<'f> {
    pub(super) future: Pin<Box<dyn Future<Output = ExecResult> + Send + 'f>>,
    /// The command was sent at once and waits at its gate (POSIX); otherwise it starts when
    /// first polled, after the upload.
    pub(super) gated: bool,
    /// The future has completed and must not be polled again.
    pub(super) done: bool,
    /// What the gate writes after its line when it opens: the secrets (POSIX).
    pub(super) gate_payload: Vec<u8>,
}

impl Execution<'_> {
    /// Creates the command; a gated one is also started now, and waits for the upload at its
    /// gate.
    pub(super) fn start_exec<'f>(
        &'f self,
        layout: &RemoteLayout,
        logs: &'f mut LogSink<'_>,
    ) -> (GateKeeper, Started<'f>) {
        let env: Vec<ScriptVar<'_>> = self
            .env
            .iter()
            .map(|var| ScriptVar {
                name: &var.name,
                value: &var.value,
                secret: var.secret,
            })
            .collect();
        let script = RunScript {
            run_dir: layout.run_dir(),
            pid_file: layout.pid_file(),
            entrypoint: &self.run.entrypoint,
            run_id: self.run.id.as_str(),
            machine: self.run.machine.as_str(),
            args: &self.run.invocation.args,
            env: &env,
            grace: self.runner.config.kill_grace,
        };
        let gate_payload = self.shell.gate_payload(&script);
        let gated_command = self.shell.gated_exec_command(&script);
        let (keeper, gate) = ExecGate::new();
        let started = match gated_command {
            Some(command) => Started {
                future: Box::pin(
                    async move { self.session.exec_gated(&command, gate, logs).await },
                ),
                gated: true,
                done: false,
                gate_payload,
            },
            None => {
                let command = self.shell.exec_command(&script);
                Started {
                    future: Box::pin(async move { self.session.exec(&command, logs).await }),
                    gated: false,
                    done: false,
                    gate_payload,
                }
            }
        };
        (keeper, started)
    }

    /// The script never started (the upload failed or was cancelled, or the machine is busy):
    /// the gated command ends without running anything once its keeper is gone. Its channel is
    /// drained, bounded, unless the connection is lost; a refused gate (exit 125) shows that
    /// nothing of the run is alive.
    pub(super) async fn end_before_start(
        &self,
        mut failed: Outcome,
        keeper: GateKeeper,
        mut exec: Started<'_>,
        mut notes: Vec<String>,
    ) -> Outcome {
        failed.notes.append(&mut notes);
        drop(keeper);
        if exec.gated && !exec.done && !failed.link_down {
            let drained = tokio::time::timeout(self.kill_wait(), &mut exec.future);
            let ended = tokio::select! {
                biased;
                () = self.signals.abandon.cancelled() => None,
                ended = drained => ended.ok(),
            };
            if let Some(Ok(RemoteExit::Code(125))) = ended {
                failed.remote_cleanup = Some(RemoteCleanup::AlreadyGone);
            }
        }
        failed
    }

    /// Waits for the released command to end, or stops it on timeout or cancel.
    pub(super) async fn wait_or_stop(
        &self,
        layout: &RemoteLayout,
        exec: &mut Started<'_>,
        outcome: &mut Outcome,
    ) -> Finished {
        let timeout = self.run.timeout_ms.map(Duration::from_millis);
        let reason = tokio::select! {
            biased;
            finished = &mut exec.future => {
                exec.done = true;
                return finished.map(Some);
            }
            () = self.signals.cancel.cancelled() => StopReason::Cancelled,
            () = sleep_or_forever(timeout) => StopReason::TimedOut,
        };
        outcome.stopped = Some(reason);
        self.kill_and_drain(layout, exec, outcome).await
    }

    /// How long a kill and the drain of the command may take together: the grace, and one
    /// keepalive interval for the answer (a link that stops answering must not hang the run),
    /// never more than the runner's `kill_wait`.
    pub(super) fn kill_wait(&self) -> Duration {
        let config = &self.runner.config;
        config
            .kill_wait
            .min(config.kill_grace + self.machine.ssh.keepalive_interval)
    }

    /// The request that kills everything of this run.
    pub(super) fn kill_request(&self, layout: &RemoteLayout) -> KillRequest {
        KillRequest {
            shell: self.shell,
            pid_file: layout.pid_file().to_owned(),
            run_id: self.run.id.to_string(),
            grace: self.runner.config.kill_grace,
        }
    }

    /// Kills the remote tree while the command's channel is drained; both are bounded by
    /// [`Execution::kill_wait`] and by the abandon signal. `Ok(None)`: the command did not end.
    /// A kill that was not confirmed leaves the link untrusted, so that the runner reconnects.
    async fn kill_and_drain(
        &self,
        layout: &RemoteLayout,
        exec: &mut Started<'_>,
        outcome: &mut Outcome,
    ) -> Finished {
        let kill = self.kill_request(layout);
        let kill_and_drain = async { tokio::join!(self.session.kill(&kill), &mut exec.future) };
        let bounded = tokio::time::timeout(self.kill_wait(), kill_and_drain);
        let (killed, finished) = tokio::select! {
            biased;
            () = self.signals.abandon.cancelled() => (None, Ok(None)),
            both = bounded => match both {
                Ok((killed, finished)) => {
                    exec.done = true;
                    (Some(killed), finished.map(Some))
                }
                Err(_elapsed) => (None, Ok(None)),
            },
        };
        self.record_kill(killed, outcome);
        finished
    }

    /// A channel that closed without an exit status: kill whatever is left, on the same
    /// connection, bounded like any kill.
    pub(super) async fn kill_to_be_sure(&self, layout: &RemoteLayout, outcome: &mut Outcome) {
        let kill = self.kill_request(layout);
        let bounded = tokio::time::timeout(self.kill_wait(), self.session.kill(&kill));
        let killed = tokio::select! {
            biased;
            () = self.signals.abandon.cancelled() => None,
            killed = bounded => killed.ok(),
        };
        self.record_kill(killed, outcome);
    }

    /// What a kill found (`None`: it did not finish in time, or was abandoned).
    fn record_kill(&self, killed: Option<Result<KillOutcome, SshError>>, outcome: &mut Outcome) {
        match killed {
            Some(Ok(found)) => outcome.record_kill(found),
            Some(Err(error)) => {
                outcome.link_down = true;
                outcome.notes.push(format!(
                    "failed to kill the remote process tree: {}",
                    error_chain(&error)
                ));
            }
            None => {
                outcome.link_down = true;
                outcome.notes.push(format!(
                    "the kill was not confirmed within {}",
                    humantime::format_duration(self.kill_wait())
                ));
            }
        }
    }
}

/// The error of a command whose channel ended while it waited at its gate: it never started
/// the entrypoint.
pub(super) fn ended_at_gate(run: &Run, ended: ExecResult) -> SshError {
    match ended {
        Ok(exit) => SshError::ExecFailed {
            reason: format!(
                "the remote command ended ({exit:?}) before it was allowed to start {}",
                run.entrypoint
            ),
            source: None,
        },
        Err(error) => error,
    }
}

async fn sleep_or_forever(limit: Option<Duration>) {
    match limit {
        Some(limit) => tokio::time::sleep(limit).await,
        None => std::future::pending().await,
    }
}
