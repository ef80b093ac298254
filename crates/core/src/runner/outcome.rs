//! What happened while a run was running, and the final transition it becomes.

use std::time::Duration;

use crate::code::{ErrorCode, RunError, error_chain};
use crate::ports::{KillOutcome, RemoteExit, SshError};
use crate::run::{ArtifactSummary, RemoteCleanup, Run, RunStatus, Transition, UploadSummary};
use crate::time::Timestamp;

/// Why the runner stopped a running script.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum StopReason {
    TimedOut,
    Cancelled,
}

/// What happened while a run was running.
#[derive(Debug)]
pub(super) struct Outcome {
    pub(super) to: RunStatus,
    pub(super) error: Option<RunError>,
    pub(super) exit_code: Option<i32>,
    pub(super) signal: Option<String>,
    pub(super) artifacts: Option<ArtifactSummary>,
    pub(super) stopped: Option<StopReason>,
    /// The connection cannot be trusted any more (it was lost, or a kill went unanswered):
    /// nothing more is tried on it, and the runner reconnects to finish the job.
    pub(super) link_down: bool,
    /// The entrypoint was released (its gate opened): what it left behind is worth fetching.
    pub(super) script_started: bool,
    /// What is known of the run's processes on the machine.
    pub(super) remote_cleanup: Option<RemoteCleanup>,
    /// What the upload sent; `None` when it did not finish.
    pub(super) upload: Option<UploadSummary>,
    /// Things worth recording that do not decide the status (a failed kill, a refused artifact
    /// name); they go into the final event's detail.
    pub(super) notes: Vec<String>,
}

impl Default for Outcome {
    fn default() -> Self {
        Self {
            to: RunStatus::Completed,
            error: None,
            exit_code: None,
            signal: None,
            artifacts: None,
            stopped: None,
            link_down: false,
            script_started: false,
            remote_cleanup: None,
            upload: None,
            notes: Vec::new(),
        }
    }
}

/// How a remote command ended: its exit, `None` when it did not end after a kill, or the
/// transport's error.
pub(super) type Finished = Result<Option<RemoteExit>, SshError>;

impl Outcome {
    /// Cancelled before the script started.
    pub(super) fn interrupted() -> Self {
        Self {
            to: RunStatus::Interrupted,
            error: Some(RunError::new(
                ErrorCode::Interrupted,
                "the run was cancelled before its script started",
            )),
            ..Self::default()
        }
    }

    /// Failed with `error` (a lost connection is remembered: nothing more is tried on it).
    pub(super) fn failed(error: &SshError) -> Self {
        let mut outcome = Self::default();
        outcome.record_ssh_failure(error);
        outcome
    }

    /// Failed with `code` and `message`.
    pub(super) fn failed_with(code: ErrorCode, message: String) -> Self {
        let mut outcome = Self::default();
        outcome.set_failure(code, message);
        outcome
    }

    /// Records an SSH failure, and whether it lost the connection.
    pub(super) fn record_ssh_failure(&mut self, error: &SshError) {
        if error.code() == ErrorCode::ConnectionLost {
            self.link_down = true;
        }
        self.set_failure(error.code(), error_chain(error));
    }

    /// Records what a kill found.
    pub(super) fn record_kill(&mut self, killed: KillOutcome) {
        self.remote_cleanup = Some(match killed {
            KillOutcome::Killed => RemoteCleanup::Killed,
            KillOutcome::AlreadyGone => RemoteCleanup::AlreadyGone,
            KillOutcome::Survived => RemoteCleanup::Survived,
        });
    }

    /// Records a failure unless an earlier one is already recorded (the first cause wins;
    /// later ones become notes).
    pub(super) fn set_failure(&mut self, code: ErrorCode, message: String) {
        if let Some(first) = &self.error {
            if first.code != code || first.message != message {
                self.notes.push(format!("{code}: {message}"));
            }
            return;
        }
        self.to = RunStatus::Failed;
        self.error = Some(RunError::new(code, message));
    }

    /// Records how the entrypoint ended.
    pub(super) fn record_exit(&mut self, run: &Run, finished: Finished) {
        match finished {
            Ok(Some(RemoteExit::Code(code))) => {
                self.exit_code = Some(code);
                if code != 0 {
                    self.set_failure(
                        ErrorCode::NonzeroExit,
                        format!("{} exited with status {code}", run.entrypoint),
                    );
                }
            }
            Ok(Some(RemoteExit::Signal(signal))) => {
                self.set_failure(
                    ErrorCode::NonzeroExit,
                    format!("{} was killed by signal {signal}", run.entrypoint),
                );
                self.signal = Some(signal);
            }
            Ok(Some(RemoteExit::NoStatus)) => self.set_failure(
                ErrorCode::ConnectionLost,
                format!(
                    "the channel of {} closed without an exit status",
                    run.entrypoint
                ),
            ),
            Ok(None) => self
                .notes
                .push("the remote command did not end after the kill".to_owned()),
            Err(error) => self.record_ssh_failure(&error),
        }
    }

    /// A stop decided by the runner (timeout, cancel) decides the status, whatever the script
    /// did after the kill. The message says whether the kill was confirmed.
    pub(super) fn apply_stop(&mut self, run: &Run) {
        let killed = match self.remote_cleanup {
            Some(RemoteCleanup::Killed | RemoteCleanup::AlreadyGone) => {
                "the remote process tree was killed"
            }
            Some(RemoteCleanup::Survived) => {
                "processes of the run were still alive after KILL (see remote_cleanup)"
            }
            Some(RemoteCleanup::Unreachable) | None => {
                "the kill could not be confirmed; testfleet reconnects to finish it (see \
                 remote_cleanup)"
            }
        };
        match self.stopped {
            Some(StopReason::TimedOut) => {
                let limit = humantime::format_duration(
                    run.timeout_ms
                        .map(Duration::from_millis)
                        .unwrap_or_default(),
                );
                self.to = RunStatus::Timeout;
                self.error = Some(RunError::new(
                    ErrorCode::Timeout,
                    format!(
                        "{} ran longer than the timeout of {limit}; {killed}",
                        run.entrypoint
                    ),
                ));
            }
            Some(StopReason::Cancelled) => {
                self.to = RunStatus::Interrupted;
                self.error = Some(RunError::new(
                    ErrorCode::Interrupted,
                    format!("the run was cancelled; {killed}"),
                ));
            }
            None => {}
        }
    }

    /// The final transition of the running run; the notes join the error message in the
    /// event's detail.
    pub(super) fn into_transition(self, at: Timestamp) -> Transition {
        let mut change = Transition::new(RunStatus::Running, self.to, at);
        if !self.notes.is_empty() {
            let mut detail = self
                .error
                .as_ref()
                .map(|error| error.message.clone())
                .unwrap_or_default();
            for note in &self.notes {
                if !detail.is_empty() {
                    detail.push_str("; ");
                }
                detail.push_str(note);
            }
            change.detail = Some(detail);
        }
        change.error = self.error;
        change.exit_code = self.exit_code;
        change.signal = self.signal;
        change.artifacts = self.artifacts;
        change.remote_cleanup = self.remote_cleanup;
        change.upload = self.upload;
        change
    }
}
