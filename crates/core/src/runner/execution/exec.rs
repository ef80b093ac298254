//! The exec step: the entrypoint's command is started (gated on POSIX, before the upload),
//! released, and waited for under the timeout and the stop signals; a timeout or cancel kills
//! the remote process tree over a second channel while the command's output is still drained.

use std::pin::Pin;
use std::time::Duration;

use crate::code::error_chain;
use crate::ports::{ExecGate, GateKeeper, KillRequest, RemoteExit, SshError};
use crate::remote::RemoteLayout;
use crate::run::Run;

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
}

impl Execution<'_> {
    /// Creates the command; a gated one is also started now, and waits for the upload at its
    /// gate.
    pub(super) fn start_exec<'f>(
        &'f self,
        layout: &RemoteLayout,
        logs: &'f mut LogSink<'_>,
    ) -> (GateKeeper, Started<'f>) {
        let (run_dir, pid_file) = (layout.run_dir(), layout.pid_file());
        let gated_command = self
            .shell
            .gated_exec_command(run_dir, pid_file, &self.run.entrypoint);
        let (keeper, gate) = ExecGate::new();
        let started = match gated_command {
            Some(command) => Started {
                future: Box::pin(
                    async move { self.session.exec_gated(&command, gate, logs).await },
                ),
                gated: true,
                done: false,
            },
            None => {
                let command = self
                    .shell
                    .exec_command(run_dir, pid_file, &self.run.entrypoint);
                Started {
                    future: Box::pin(async move { self.session.exec(&command, logs).await }),
                    gated: false,
                    done: false,
                }
            }
        };
        (keeper, started)
    }

    /// The upload failed or was cancelled: the gated command ends without running anything
    /// once its keeper is gone; its channel is drained, bounded, unless the connection is lost.
    pub(super) async fn end_before_start(
        &self,
        failed: Outcome,
        keeper: GateKeeper,
        mut exec: Started<'_>,
    ) -> Outcome {
        drop(keeper);
        if exec.gated && !exec.done && !failed.connection_lost {
            let drained = tokio::time::timeout(self.runner.config.kill_wait, &mut exec.future);
            tokio::select! {
                biased;
                () = self.signals.abandon.cancelled() => {}
                _ = drained => {}
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

    /// Kills the remote process tree while the command's channel is drained; both are bounded
    /// by the kill wait (a host that stops answering must not hang the run) and by the abandon
    /// signal. `Ok(None)`: the command did not end.
    async fn kill_and_drain(
        &self,
        layout: &RemoteLayout,
        exec: &mut Started<'_>,
        outcome: &mut Outcome,
    ) -> Finished {
        let config = &self.runner.config;
        let kill = KillRequest {
            shell: self.shell,
            pid_file: layout.pid_file().to_owned(),
            grace: config.kill_grace,
        };
        let kill_and_drain = async { tokio::join!(self.session.kill(&kill), &mut exec.future) };
        let bounded = tokio::time::timeout(config.kill_wait, kill_and_drain);
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
        match killed {
            Some(Ok(())) => {}
            Some(Err(error)) => outcome.notes.push(format!(
                "failed to kill the remote process tree: {}",
                error_chain(&error)
            )),
            None => outcome.notes.push(format!(
                "the kill did not finish within {}",
                humantime::format_duration(config.kill_wait)
            )),
        }
        finished
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
