//! The runner: prepares a dispatch (entrypoint, atomic claim, local folder) and executes a
//! pending run through the SSH port, recording every step in the store (DESIGN §2–3).
//!
//! Preflight errors come back as [`DispatchError`] and persist nothing. Once a run exists,
//! every failure is recorded in the run and the run is returned.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use crate::entrypoint::{TargetOs, resolve_entrypoint};
use crate::error::{DispatchError, ErrorCode, RunError, error_chain};
use crate::hash::{DigestCache, DirManifest, HashError, hash_dir, hash_dir_with};
use crate::ids::{MachineName, RunId};
use crate::ports::{
    Claim, Clock, ExecGate, ExecOutput, KillRequest, OutputStream, OutputTail, ProgressSink,
    RemoteExit, RunIdGenerator, RunStore, SshConnector, SshError, SshSession, SshTarget,
    StoreError, TransferProgress,
};
use crate::remote::{RemoteLayout, RemoteShell, WindowsShell, join_remote};
use crate::run::{
    ArtifactSummary, DispatchedRun, LifecycleEvent, NewRun, Run, RunOwner, RunPaths, RunStatus,
    Transition, transition,
};

/// Settings of the runner itself.
#[derive(Debug, Clone)]
pub struct RunnerConfig {
    /// The local state directory; run folders go under `<state_dir>/runs/`.
    pub state_dir: PathBuf,
    /// Time between `TERM` and `KILL` when a run is killed.
    pub kill_grace: Duration,
    /// How long to wait, after a kill, for the remote command's channel to end.
    pub kill_wait: Duration,
}

impl RunnerConfig {
    pub const DEFAULT_KILL_GRACE: Duration = Duration::from_secs(10);

    pub fn new(state_dir: PathBuf) -> Self {
        Self {
            state_dir,
            kill_grace: Self::DEFAULT_KILL_GRACE,
            kill_wait: Self::DEFAULT_KILL_GRACE + Duration::from_secs(10),
        }
    }
}

/// One machine of the fleet, resolved: everything the runner needs to reach and use it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineSpec {
    pub name: MachineName,
    pub os: TargetOs,
    pub windows_shell: WindowsShell,
    /// The remote root, relative to the login directory unless absolute.
    pub remote_root: String,
    pub ssh: SshTarget,
}

impl MachineSpec {
    pub const DEFAULT_REMOTE_ROOT: &str = ".testfleet";

    fn shell(&self) -> RemoteShell {
        RemoteShell::for_family(self.os.family(), self.windows_shell)
    }
}

/// What to dispatch where.
#[derive(Debug, Clone)]
pub struct DispatchRequest {
    pub machine: MachineSpec,
    /// The exec timeout; none when `None`.
    pub timeout: Option<Duration>,
    pub keep_remote: bool,
    /// The process that will own the run while it is not terminal.
    pub owner: Option<RunOwner>,
}

/// The result of [`Runner::prepare`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepared {
    pub run: Run,
    /// An active run with the same hash was returned instead of a new one.
    pub reused: bool,
}

impl Prepared {
    /// Whether this is a new pending run that [`Runner::execute`] should carry out.
    pub fn needs_execution(&self) -> bool {
        !self.reused && self.run.status == RunStatus::Pending
    }
}

/// How a caller stops a run: `cancel` kills the remote command and still downloads the
/// artifacts and cleans up; `abandon` also stops waiting for that cleanup. Either way the run
/// ends `interrupted`.
#[derive(Debug, Clone, Default)]
pub struct StopSignals {
    pub cancel: CancellationToken,
    pub abandon: CancellationToken,
}

/// Watches a run as it executes. Every method has a default that does nothing.
pub trait RunObserver: Send + Sync {
    /// The run changed status (its new state).
    fn status(&self, _run: &Run) {}
    /// Upload progress of a run.
    fn upload_progress(&self, _run: &Run, _progress: TransferProgress) {}
    /// Bytes of the remote command's output, as they arrive.
    fn output(&self, _run: &Run, _stream: OutputStream, _data: &[u8]) {}
    /// Something worth telling the user that does not change the run's status (a refused
    /// artifact name, a failed cleanup).
    fn warning(&self, _run: &Run, _message: &str) {}
}

/// An observer that ignores everything.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoObserver;

impl RunObserver for NoObserver {}

/// Drives dispatches through the ports.
#[derive(Clone)]
pub struct Runner {
    store: Arc<dyn RunStore>,
    ssh: Arc<dyn SshConnector>,
    clock: Arc<dyn Clock>,
    ids: Arc<dyn RunIdGenerator>,
    config: RunnerConfig,
}

impl fmt::Debug for Runner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Runner")
            .field("store", &self.store)
            .field("config", &self.config)
            .finish()
    }
}

impl Runner {
    pub fn new(
        store: Arc<dyn RunStore>,
        ssh: Arc<dyn SshConnector>,
        clock: Arc<dyn Clock>,
        ids: Arc<dyn RunIdGenerator>,
        config: RunnerConfig,
    ) -> Self {
        Self {
            store,
            ssh,
            clock,
            ids,
            config,
        }
    }

    pub fn store(&self) -> &Arc<dyn RunStore> {
        &self.store
    }

    pub fn config(&self) -> &RunnerConfig {
        &self.config
    }

    /// Hashes `test_dir`, prepares and executes the run on one machine: the whole dispatch.
    /// Hashing blocks the calling thread; callers that fan out hash once with [`hash_dir`] and
    /// use [`Runner::prepare`] and [`Runner::execute`] instead.
    ///
    /// # Errors
    /// The preflight errors of [`hash_test_dir`] and [`Runner::prepare`]; a store failure.
    pub async fn dispatch(
        &self,
        test_dir: &Path,
        request: &DispatchRequest,
        signals: &StopSignals,
        observer: &dyn RunObserver,
    ) -> Result<DispatchedRun, DispatchError> {
        let manifest = hash_test_dir(test_dir)?;
        let prepared = self.prepare(&manifest, request).await?;
        if !prepared.needs_execution() {
            return Ok(DispatchedRun {
                run: prepared.run,
                reused: prepared.reused,
            });
        }
        let run = self
            .execute(
                prepared.run,
                &request.machine,
                Some(&manifest),
                signals,
                observer,
            )
            .await?;
        Ok(DispatchedRun { run, reused: false })
    }

    /// Resolves the entrypoint and claims the machine. Creates the pending run and its local
    /// folder, or returns the active run with the same hash (`reused`).
    ///
    /// # Errors
    /// [`DispatchError::MissingEntrypoint`]; [`DispatchError::MachineBusy`] when another hash
    /// is active on the machine; [`DispatchError::Store`]. Nothing is persisted for these.
    pub async fn prepare(
        &self,
        manifest: &DirManifest,
        request: &DispatchRequest,
    ) -> Result<Prepared, DispatchError> {
        let machine = &request.machine;
        let entrypoint = resolve_entrypoint(&manifest.root, &machine.os)?;
        let now = self.clock.now();
        let id = self.ids.next_id(now);
        let new = NewRun {
            paths: RunPaths::in_state_dir(&self.config.state_dir, &id),
            id,
            machine: machine.name.clone(),
            os: machine.os.clone(),
            test_dir: manifest.root.clone(),
            test_dir_hash: manifest.hash.clone(),
            entrypoint: entrypoint.to_owned(),
            created_at: now,
            timeout_ms: request
                .timeout
                .map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX)),
            keep_remote: request.keep_remote,
            owner: request.owner,
        };
        match self.store.claim(new).await? {
            Claim::Active(run) if run.test_dir_hash == manifest.hash => {
                Ok(Prepared { run, reused: true })
            }
            Claim::Active(run) => Err(DispatchError::MachineBusy {
                machine: run.machine,
                active_run: run.id,
                active_hash: run.test_dir_hash,
            }),
            Claim::Created(run) => match create_local_files(&run.paths) {
                Ok(()) => Ok(Prepared { run, reused: false }),
                Err(error) => {
                    let message = format!(
                        "failed to create the local run folder {}: {error}",
                        run.paths.dir.display()
                    );
                    let change =
                        Transition::new(RunStatus::Pending, RunStatus::Failed, self.clock.now())
                            .with_error(ErrorCode::Internal, message);
                    let run = self.finish_with(&run.id, change).await?;
                    Ok(Prepared { run, reused: false })
                }
            },
        }
    }

    /// Carries out a pending run: dial, start, upload, exec (with the timeout and stop
    /// signals), download the artifacts, clean up, and record the final status. A run that is
    /// no longer pending is returned as it is.
    ///
    /// `manifest` is the one the run was claimed with; when `None` (a detached worker) the test
    /// directory is hashed again and must still match.
    ///
    /// # Errors
    /// [`DispatchError::Store`] when the store fails; every other failure is recorded in the
    /// returned run.
    pub async fn execute(
        &self,
        run: Run,
        machine: &MachineSpec,
        manifest: Option<&DirManifest>,
        signals: &StopSignals,
        observer: &dyn RunObserver,
    ) -> Result<Run, DispatchError> {
        if run.status != RunStatus::Pending {
            return Ok(run);
        }
        let rehashed;
        let manifest = match manifest {
            Some(manifest) => manifest,
            None => match hash_dir(&run.test_dir) {
                Ok(fresh) => {
                    rehashed = fresh;
                    &rehashed
                }
                Err(error) => {
                    let message = format!(
                        "failed to read the test directory again: {}",
                        error_chain(&error)
                    );
                    return self
                        .end_pending(&run, ErrorCode::TestDirChanged, message, observer)
                        .await;
                }
            },
        };
        if manifest.hash != run.test_dir_hash {
            let message = format!(
                "test directory {} now hashes to {}, not {} as when the run was claimed; dispatch again",
                run.test_dir.display(),
                manifest.hash,
                run.test_dir_hash
            );
            return self
                .end_pending(&run, ErrorCode::TestDirChanged, message, observer)
                .await;
        }

        let dial_started = std::time::Instant::now();
        let session = tokio::select! {
            biased;
            () = signals.cancel.cancelled() => {
                return self.interrupt_pending(&run, observer).await;
            }
            connected = self.ssh.connect(&machine.ssh) => match connected {
                Ok(session) => session,
                Err(error) => {
                    let message = error.describe_for(machine.name.as_str(), true);
                    return self.end_pending(&run, error.code(), message, observer).await;
                }
            },
        };

        tracing::debug!(run = %run.id, elapsed = ?dial_started.elapsed(), "connected");
        let start = Transition::new(RunStatus::Pending, RunStatus::Running, self.clock.now());
        let run = match self.store.transition(&run.id, start).await {
            Ok(run) => run,
            Err(StoreError::Conflict { .. }) => {
                // Cancelled or reaped meanwhile: leave the machine alone.
                close_quietly(session.as_ref()).await;
                return Ok(self.store.get(&run.id).await?);
            }
            Err(error) => {
                close_quietly(session.as_ref()).await;
                return Err(error.into());
            }
        };
        observer.status(&run);

        let outcome = self
            .drive(&run, machine, manifest, session.as_ref(), signals, observer)
            .await;
        close_quietly(session.as_ref()).await;
        let mut change = Transition::new(RunStatus::Running, outcome.to, self.clock.now());
        change.error = outcome.error;
        change.exit_code = outcome.exit_code;
        change.signal = outcome.signal;
        change.artifacts = outcome.artifacts;
        if !outcome.notes.is_empty() {
            let mut detail = change
                .error
                .as_ref()
                .map(|e| e.message.clone())
                .unwrap_or_default();
            for note in &outcome.notes {
                if !detail.is_empty() {
                    detail.push_str("; ");
                }
                detail.push_str(note);
            }
            change.detail = Some(detail);
        }
        let run = self.finish_with(&run.id, change).await?;
        observer.status(&run);
        Ok(run)
    }

    /// Everything between `start` and the final status, on a running run.
    ///
    /// On a POSIX host the entrypoint's command (and, for a large folder, the `rm -rf` of the
    /// cleanup) is started behind a gate before the upload, so that the host's session start
    /// overlaps the upload; the gate opens when the upload is done (the cleanup's after the
    /// download). Windows commands start when they may run.
    async fn drive(
        &self,
        run: &Run,
        machine: &MachineSpec,
        manifest: &DirManifest,
        session: &dyn SshSession,
        signals: &StopSignals,
        observer: &dyn RunObserver,
    ) -> Outcome {
        let started = std::time::Instant::now();

        // Remote folders. The remote root must exist before realpath can resolve it.
        let runs_dir = join_remote(&machine.remote_root, "runs");
        let prepared = async {
            session.create_dir_all(&runs_dir).await?;
            let root = session.realpath(&machine.remote_root).await?;
            Ok::<_, SshError>(RemoteLayout {
                root,
                run_id: run.id.clone(),
            })
        };
        let layout = tokio::select! {
            biased;
            () = signals.cancel.cancelled() => return Outcome::default().interrupted(),
            prepared = prepared => match prepared {
                Ok(layout) => layout,
                Err(error) => return Outcome::default().failed(&error),
            },
        };
        let run_dir = layout.run_dir();
        let pid_file = layout.pid_file();
        tracing::debug!(run = %run.id, elapsed = ?started.elapsed(), "remote folders ready");
        if let Err(error) = self.store.set_remote_dir(&run.id, &run_dir).await {
            return Outcome::default().failed_with(ErrorCode::StoreError, error_chain(&error));
        }

        let shell = machine.shell();
        let n_entries = manifest.files.len() + manifest.dirs.len();
        let cleanup_command = (!run.keep_remote && n_entries >= RM_CLEANUP_MIN_ENTRIES)
            .then(|| shell.gated_cleanup_command(&run_dir, &pid_file))
            .flatten();
        let (cleanup_keeper, cleanup_gate) = ExecGate::new();
        let cleanup_channel = async {
            let command = cleanup_command.as_ref()?;
            let mut output = OutputTail::default();
            let ended = session.exec_gated(command, cleanup_gate, &mut output).await;
            Some((ended, output))
        };
        let main = async {
            let mut outcome = self
                .upload_and_run(run, &shell, &layout, manifest, session, signals, observer)
                .await;
            tracing::debug!(run = %run.id, elapsed = ?started.elapsed(), "exec and download ended");
            let clean = !run.keep_remote && !outcome.connection_lost;
            if clean {
                cleanup_keeper.open();
            } else {
                drop(cleanup_keeper);
            }
            outcome.cleanup_pending = clean;
            outcome
        };
        // The gated cleanup runs beside everything else; it is bounded by the abandon signal
        // once the rest is done.
        tokio::pin!(main);
        tokio::pin!(cleanup_channel);
        let mut removed = None;
        let mut outcome = loop {
            tokio::select! {
                outcome = &mut main => break outcome,
                ended = &mut cleanup_channel, if removed.is_none() => removed = Some(ended),
            }
        };
        if outcome.cleanup_pending {
            if removed.is_none() {
                removed = tokio::select! {
                    biased;
                    () = signals.abandon.cancelled() => None,
                    ended = &mut cleanup_channel => Some(ended),
                };
            }
            let removed_by_rm = match removed {
                Some(Some((Ok(RemoteExit::Code(0)), _))) => true,
                Some(Some((ended, output))) => {
                    tracing::debug!(
                        run = %run.id,
                        "rm -rf of the remote run folder ended with {ended:?}: {}; removing it over SFTP",
                        output.text()
                    );
                    false
                }
                Some(None) | None => false,
            };
            if !removed_by_rm && !signals.abandon.is_cancelled() {
                let cleanup = async {
                    for path in [run_dir.as_str(), pid_file.as_str()] {
                        if let Err(error) = session.remove(path).await {
                            outcome.notes.push(format!(
                                "failed to remove remote {path}: {}",
                                error_chain(&error)
                            ));
                        }
                    }
                };
                tokio::select! {
                    biased;
                    () = signals.abandon.cancelled() => {}
                    () = cleanup => {}
                }
            }
        }
        tracing::debug!(run = %run.id, elapsed = ?started.elapsed(), "cleanup ended");
        for note in &outcome.notes {
            observer.warning(run, note);
        }
        outcome
    }

    /// Upload, exec (with the timeout and stop signals, the kill when needed), then the
    /// artifacts.
    #[expect(
        clippy::too_many_arguments,
        reason = "one private step of drive, called once"
    )]
    async fn upload_and_run(
        &self,
        run: &Run,
        shell: &RemoteShell,
        layout: &RemoteLayout,
        manifest: &DirManifest,
        session: &dyn SshSession,
        signals: &StopSignals,
        observer: &dyn RunObserver,
    ) -> Outcome {
        let mut outcome = Outcome::default();
        let run_dir = layout.run_dir();
        let mut logs = match LogSink::open(run, observer) {
            Ok(logs) => logs,
            Err(error) => {
                let message = format!(
                    "failed to open the local log files in {}: {error}",
                    run.paths.dir.display()
                );
                return outcome.failed_with(ErrorCode::Internal, message);
            }
        };

        // The command is created now; a gated one is also started now, and waits for the
        // upload at its gate. An ungated one starts when first polled, after the upload.
        let gated_command = shell.gated_exec_command(&run_dir, &layout.pid_file(), &run.entrypoint);
        let command = gated_command
            .clone()
            .unwrap_or_else(|| shell.exec_command(&run_dir, &layout.pid_file(), &run.entrypoint));
        let (keeper, gate) = ExecGate::new();
        let mut exec: std::pin::Pin<Box<dyn Future<Output = ExecResult> + Send + '_>> =
            if gated_command.is_some() {
                Box::pin(session.exec_gated(&command, gate, &mut logs))
            } else {
                Box::pin(session.exec(&command, &mut logs))
            };

        // Upload. From here on the remote folder exists and is cleaned up whatever happens.
        let manifest = with_executable_entrypoint(manifest, *shell, &run.entrypoint);
        let progress = ObserverProgress { run, observer };
        let mut ended_at_gate = None;
        let uploaded = {
            let upload = session.upload(&manifest, &run_dir, &progress);
            tokio::pin!(upload);
            loop {
                tokio::select! {
                    biased;
                    () = signals.cancel.cancelled() => break Err(None),
                    uploaded = &mut upload => break uploaded.map_err(Some),
                    ended = &mut exec, if gated_command.is_some() && ended_at_gate.is_none() => {
                        ended_at_gate = Some(ended);
                    }
                }
            }
        };
        let failed_before_start = match uploaded {
            Ok(_) => None,
            Err(None) => Some(Outcome::default().interrupted()),
            Err(Some(error)) => Some(Outcome::default().failed(&error)),
        };
        if let Some(failed) = failed_before_start {
            // The gated command ends without running anything once its keeper is gone.
            drop(keeper);
            outcome = failed;
            if gated_command.is_some() && ended_at_gate.is_none() && !outcome.connection_lost {
                let drained = tokio::time::timeout(self.config.kill_wait, &mut exec);
                tokio::select! {
                    biased;
                    () = signals.abandon.cancelled() => {}
                    _ = drained => {}
                }
            }
            return outcome;
        }
        tracing::debug!(run = %run.id, "upload ended");

        let timeout = run.timeout_ms.map(Duration::from_millis);
        let finished = if let Some(ended) = ended_at_gate {
            // The command's channel ended while it waited: it never started the entrypoint.
            match ended {
                Ok(exit) => Err(SshError::ExecFailed {
                    reason: format!(
                        "the remote command ended ({exit:?}) before it was allowed to start {}",
                        run.entrypoint
                    ),
                    source: None,
                }),
                Err(error) => Err(error),
            }
        } else {
            keeper.open();
            let stop = tokio::select! {
                biased;
                finished = &mut exec => Err(finished),
                () = signals.cancel.cancelled() => Ok(StopReason::Cancelled),
                () = sleep_or_forever(timeout) => Ok(StopReason::TimedOut),
            };
            match stop {
                Err(finished) => finished.map(Some),
                Ok(reason) => {
                    let kill = KillRequest {
                        shell: *shell,
                        pid_file: layout.pid_file(),
                        grace: self.config.kill_grace,
                    };
                    // The kill and the rest of the exec run together, and both are bounded:
                    // a host that stops answering must not hang the run.
                    let kill_and_drain = async { tokio::join!(session.kill(&kill), &mut exec) };
                    let bounded = tokio::time::timeout(self.config.kill_wait, kill_and_drain);
                    let (killed, finished) = tokio::select! {
                        biased;
                        () = signals.abandon.cancelled() => (None, Ok(None)),
                        both = bounded => match both {
                            Ok((killed, finished)) => (Some(killed), finished.map(Some)),
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
                            humantime::format_duration(self.config.kill_wait)
                        )),
                    }
                    outcome.stopped = Some(reason);
                    finished
                }
            }
        };
        drop(exec);
        let log_error = logs.take_error();
        tracing::debug!(run = %run.id, "remote command ended");

        // How the command ended.
        match finished {
            Ok(Some(RemoteExit::Code(code))) => {
                outcome.exit_code = Some(code);
                if code != 0 {
                    outcome.set_failure(
                        ErrorCode::NonzeroExit,
                        format!("{} exited with status {code}", run.entrypoint),
                    );
                }
            }
            Ok(Some(RemoteExit::Signal(signal))) => {
                outcome.set_failure(
                    ErrorCode::NonzeroExit,
                    format!("{} was killed by signal {signal}", run.entrypoint),
                );
                outcome.signal = Some(signal);
            }
            Ok(Some(RemoteExit::NoStatus)) => outcome.set_failure(
                ErrorCode::ConnectionLost,
                format!(
                    "the channel of {} closed without an exit status",
                    run.entrypoint
                ),
            ),
            Ok(None) => outcome
                .notes
                .push("the remote command did not end after the kill".to_owned()),
            Err(error) => {
                outcome.connection_lost = error.code() == ErrorCode::ConnectionLost;
                outcome.set_failure(error.code(), error_chain(&error));
            }
        }
        match outcome.stopped {
            Some(StopReason::TimedOut) => {
                let limit = humantime::format_duration(timeout.unwrap_or_default());
                outcome.to = RunStatus::Timeout;
                outcome.error = Some(RunError::new(
                    ErrorCode::Timeout,
                    format!(
                        "{} ran longer than the timeout of {limit}; the remote process tree was killed",
                        run.entrypoint
                    ),
                ));
            }
            Some(StopReason::Cancelled) => {
                outcome.to = RunStatus::Interrupted;
                outcome.error = Some(RunError::new(
                    ErrorCode::Interrupted,
                    "the run was cancelled; the remote process tree was killed",
                ));
            }
            None => {}
        }
        if let Some(error) = log_error {
            let message = format!(
                "failed to write the local logs in {}: {error}",
                run.paths.dir.display()
            );
            outcome.set_failure(ErrorCode::Internal, message);
        }

        // Artifacts, whatever the outcome, unless the connection is gone.
        if outcome.connection_lost {
            return outcome;
        }
        let artifacts_dir = layout.artifacts_dir();
        let download = session.download_dir(&artifacts_dir, &run.paths.artifacts);
        let downloaded = tokio::select! {
            biased;
            () = signals.abandon.cancelled() => None,
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
            Some(Err(error)) => {
                outcome.connection_lost = error.code() == ErrorCode::ConnectionLost;
                outcome.set_failure(error.code(), error_chain(&error));
            }
        }
        outcome
    }

    /// Ends a pending run `failed` with `code` (dial, host key, login, changed directory).
    async fn end_pending(
        &self,
        run: &Run,
        code: ErrorCode,
        message: String,
        observer: &dyn RunObserver,
    ) -> Result<Run, DispatchError> {
        let change = Transition::new(RunStatus::Pending, RunStatus::Failed, self.clock.now())
            .with_error(code, message);
        let run = self.finish_with(&run.id, change).await?;
        observer.status(&run);
        Ok(run)
    }

    async fn interrupt_pending(
        &self,
        run: &Run,
        observer: &dyn RunObserver,
    ) -> Result<Run, DispatchError> {
        let change = Transition::new(RunStatus::Pending, RunStatus::Interrupted, self.clock.now())
            .with_error(
                ErrorCode::Interrupted,
                "the run was cancelled before it started",
            );
        let run = self.finish_with(&run.id, change).await?;
        observer.status(&run);
        Ok(run)
    }

    /// Applies a final transition; when another process already ended the run (a lost
    /// compare-and-set), the stored run wins and is returned.
    async fn finish_with(&self, id: &RunId, change: Transition) -> Result<Run, DispatchError> {
        match self.store.transition(id, change).await {
            Ok(run) => Ok(run),
            Err(StoreError::Conflict { .. }) => Ok(self.store.get(id).await?),
            Err(error) => Err(error.into()),
        }
    }
}

/// Hashes a test directory for a dispatch, mapping a missing directory to its preflight error.
///
/// # Errors
/// [`DispatchError::TestDirNotFound`] when the path is missing or not a directory;
/// [`DispatchError::Hash`] when a file in it cannot be read.
pub fn hash_test_dir(test_dir: &Path) -> Result<DirManifest, DispatchError> {
    hash_test_dir_with(test_dir, &DigestCache::default())
}

/// [`hash_test_dir`] with the digests of an earlier hash (see [`hash_dir_with`]).
///
/// # Errors
/// As [`hash_test_dir`].
pub fn hash_test_dir_with(
    test_dir: &Path,
    cache: &DigestCache,
) -> Result<DirManifest, DispatchError> {
    hash_dir_with(test_dir, cache).map_err(|error| match error {
        HashError::NotADirectory { path, source } => {
            DispatchError::TestDirNotFound { path, source }
        }
        error @ HashError::Io { .. } => DispatchError::Hash(error),
    })
}

/// Tells whether the process that owns a run is still alive.
pub trait OwnerProbe: Send + Sync {
    fn is_alive(&self, owner: RunOwner) -> bool;
}

/// Marks every non-terminal run whose owner is gone `interrupted` with `WORKER_LOST`, so a
/// crashed process never locks a machine. Returns the runs it ended.
///
/// # Errors
/// [`StoreError::Backend`] when the store fails.
pub async fn reap_lost_runs(
    store: &dyn RunStore,
    clock: &dyn Clock,
    probe: &dyn OwnerProbe,
) -> Result<Vec<Run>, StoreError> {
    let mut reaped = Vec::new();
    for run in store.active_runs().await? {
        let alive = run.owner().is_some_and(|owner| probe.is_alive(owner));
        if alive {
            continue;
        }
        let to = match transition(run.status, LifecycleEvent::Interrupted) {
            Ok(to) => to,
            Err(_) => continue,
        };
        let owner = run.owner().map_or_else(
            || "no owner was recorded".to_owned(),
            |o| format!("pid {}", o.pid),
        );
        // Guarded on the owner seen above: if the run was handed to another process since
        // (a detached worker taking over from the command that claimed it), it is not lost.
        let change = Transition::new(run.status, to, clock.now())
            .with_error(
                ErrorCode::WorkerLost,
                format!("the process that owned this run ({owner}) is gone; the run was abandoned"),
            )
            .with_owner_guard(run.owner());
        match store.transition(&run.id, change).await {
            Ok(run) => reaped.push(run),
            // The owner finished it, or handed it over, meanwhile.
            Err(StoreError::Conflict { .. } | StoreError::OwnerChanged { .. }) => {}
            Err(error) => return Err(error),
        }
    }
    Ok(reaped)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StopReason {
    TimedOut,
    Cancelled,
}

/// What happened while a run was running.
#[derive(Debug)]
struct Outcome {
    to: RunStatus,
    error: Option<RunError>,
    exit_code: Option<i32>,
    signal: Option<String>,
    artifacts: Option<ArtifactSummary>,
    stopped: Option<StopReason>,
    connection_lost: bool,
    /// The remote run folder is to be removed.
    cleanup_pending: bool,
    notes: Vec<String>,
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
            connection_lost: false,
            cleanup_pending: false,
            notes: Vec::new(),
        }
    }
}

impl Outcome {
    fn interrupted(mut self) -> Self {
        self.to = RunStatus::Interrupted;
        self.error = Some(RunError::new(
            ErrorCode::Interrupted,
            "the run was cancelled before its script started",
        ));
        self
    }

    fn failed(mut self, error: &SshError) -> Self {
        self.connection_lost = error.code() == ErrorCode::ConnectionLost;
        self.failed_with(error.code(), error_chain(error))
    }

    fn failed_with(mut self, code: ErrorCode, message: String) -> Self {
        self.set_failure(code, message);
        self
    }

    /// Records a failure unless an earlier one is already recorded (the first cause wins;
    /// later ones become notes).
    fn set_failure(&mut self, code: ErrorCode, message: String) {
        if let Some(first) = &self.error {
            if first.code != code || first.message != message {
                self.notes.push(format!("{code}: {message}"));
            }
            return;
        }
        self.to = RunStatus::Failed;
        self.error = Some(RunError::new(code, message));
    }
}

/// The manifest to upload: on POSIX the entrypoint goes up executable, as the exec script's
/// `chmod +x` would make it (mode bits are not hashed), which spares the host that process.
fn with_executable_entrypoint<'m>(
    manifest: &'m DirManifest,
    shell: RemoteShell,
    entrypoint: &str,
) -> std::borrow::Cow<'m, DirManifest> {
    use std::borrow::Cow;
    if shell != RemoteShell::Posix {
        return Cow::Borrowed(manifest);
    }
    let found = manifest
        .files
        .iter()
        .position(|file| file.rel_path.to_str() == Some(entrypoint));
    match found {
        Some(idx) if manifest.files[idx].mode & 0o111 != 0o111 => {
            let mut owned = manifest.clone();
            owned.files[idx].mode |= 0o111;
            Cow::Owned(owned)
        }
        _ => Cow::Borrowed(manifest),
    }
}

/// What an exec future gives.
type ExecResult = Result<RemoteExit, SshError>;

/// From this many uploaded entries on, a POSIX run folder is removed with one `rm -rf` (its
/// channel started, gated, before the upload) rather than one pipelined SFTP request per
/// entry; below it the SFTP removal takes a few requests and no process on the host.
const RM_CLEANUP_MIN_ENTRIES: usize = 64;

async fn sleep_or_forever(limit: Option<Duration>) {
    match limit {
        Some(limit) => tokio::time::sleep(limit).await,
        None => std::future::pending().await,
    }
}

async fn close_quietly(session: &dyn SshSession) {
    if let Err(error) = session.close().await {
        tracing::debug!("closing the SSH session failed: {}", error_chain(&error));
    }
}

fn create_local_files(paths: &RunPaths) -> std::io::Result<()> {
    std::fs::create_dir_all(&paths.dir)?;
    for log in [&paths.stdout, &paths.stderr] {
        OpenOptions::new().create(true).append(true).open(log)?;
    }
    Ok(())
}

struct ObserverProgress<'a> {
    run: &'a Run,
    observer: &'a dyn RunObserver,
}

impl ProgressSink for ObserverProgress<'_> {
    fn progress(&self, progress: TransferProgress) {
        self.observer.upload_progress(self.run, progress);
    }
}

/// Appends output to the run's log files as it arrives and passes it to the observer. Writes
/// go straight to the files (no buffering), so `logs -f` sees them at once and memory does not
/// grow with the output.
struct LogSink<'a> {
    run: &'a Run,
    observer: &'a dyn RunObserver,
    stdout: File,
    stderr: File,
    error: Option<std::io::Error>,
}

impl<'a> LogSink<'a> {
    fn open(run: &'a Run, observer: &'a dyn RunObserver) -> std::io::Result<Self> {
        let open = |path: &Path| OpenOptions::new().create(true).append(true).open(path);
        Ok(Self {
            run,
            observer,
            stdout: open(&run.paths.stdout)?,
            stderr: open(&run.paths.stderr)?,
            error: None,
        })
    }

    fn take_error(&mut self) -> Option<std::io::Error> {
        self.error.take()
    }
}

#[async_trait]
impl ExecOutput for LogSink<'_> {
    async fn write(&mut self, stream: OutputStream, data: &[u8]) {
        let file = match stream {
            OutputStream::Stdout => &mut self.stdout,
            OutputStream::Stderr => &mut self.stderr,
        };
        if self.error.is_none()
            && let Err(error) = file.write_all(data)
        {
            self.error = Some(error);
        }
        self.observer.output(self.run, stream, data);
    }
}
