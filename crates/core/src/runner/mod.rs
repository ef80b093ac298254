//! The runner: prepares a dispatch (entrypoint, atomic claim, local folder) and executes a
//! pending run through the SSH port, recording every step in the store
//! (`docs/contract.md#lifecycle`, `docs/contract.md#remote-side`).
//!
//! Preflight errors come back as [`DispatchError`] and persist nothing. Once a run exists,
//! every failure is recorded in the run and the run is returned.
//!
//! - [`prepare`](Runner::prepare) claims the machine;
//! - [`execute`](Runner::execute) dials, starts, and hands the running run to the execution
//!   steps (remote folders, upload, exec, kill, artifacts, cleanup);
//! - [`end_pending`](Runner::end_pending) ends a run that never ran;
//! - [`reap_lost_runs`] and [`Watch`] serve the commands that read runs.

mod execute;
mod execution;
mod lease;
mod logs;
mod outcome;
mod prepare;
mod queue;
mod reaper;
mod recover;
mod reports;
mod wait;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::entrypoint::TargetOs;
use crate::error::DispatchError;
use crate::hash::hash_dir_excluding;
use crate::ids::{ControllerId, MachineName};
use crate::ports::{
    Clock, OutputStream, RunIdGenerator, RunStore, SshConnector, SshError, SshTarget,
    TransferProgress,
};
use crate::queue::QueuePlace;
use crate::remote::{RemoteShell, WindowsShell};
use crate::run::{DispatchedRun, Invocation, Run, RunOwner};

pub use lease::LeaseSettings;
pub use reaper::{Liveness, OwnerProbe, reap_lost_runs};
pub use reports::ReportReader;
pub use wait::{ReapedRuns, Watch};

/// Settings of the runner itself.
#[derive(Debug, Clone)]
pub struct RunnerConfig {
    /// The local state directory; run folders go under `<state_dir>/runs/`.
    pub state_dir: PathBuf,
    /// Time between `TERM` and `KILL` when a run is killed.
    pub kill_grace: Duration,
    /// How long to wait, after a kill, for the remote command's channel to end.
    pub kill_wait: Duration,
    /// What the application tells its users to do about a failure.
    pub remedies: Arc<dyn Remedies>,
    /// The owner's lease and heartbeat.
    pub lease: LeaseSettings,
    /// The controller the runs it claims belong to ([`Run::controller`]).
    pub controller: Option<ControllerId>,
    /// Reads the test reports among a run's artifacts into [`Run::tests`]; none by default,
    /// and then no run records tests.
    pub reports: Option<Arc<dyn ReportReader>>,
    /// Where the values of the runs' secret variables come from ([`NoSecrets`] by default:
    /// a run with a secret then fails before it dials).
    pub secrets: Arc<dyn Secrets>,
}

impl RunnerConfig {
    /// The default time between `TERM` and `KILL`.
    pub const DEFAULT_KILL_GRACE: Duration = Duration::from_secs(10);

    /// The default settings, with run folders under `state_dir`.
    pub fn new(state_dir: PathBuf) -> Self {
        Self {
            state_dir,
            kill_grace: Self::DEFAULT_KILL_GRACE,
            kill_wait: Self::DEFAULT_KILL_GRACE + Duration::from_secs(10),
            remedies: Arc::new(NoRemedies),
            lease: LeaseSettings::default(),
            controller: None,
            reports: None,
            secrets: Arc::new(NoSecrets),
        }
    }
}

/// Where the values of secret variables ([`EnvVar::secret`](crate::EnvVar::secret)) come from
/// when a run executes: they are never recorded, so the process that executes the run reads
/// them (an application reads its own environment).
pub trait Secrets: Send + Sync + fmt::Debug {
    /// The value of the secret `name`; `None` when there is none here.
    fn value(&self, name: &str) -> Option<String>;
}

/// No secret has a value.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoSecrets;

impl Secrets for NoSecrets {
    fn value(&self, _name: &str) -> Option<String> {
        None
    }
}

/// A variable of a run with its value, only while the run executes.
#[derive(Clone)]
pub(crate) struct ResolvedVar {
    pub(crate) name: String,
    pub(crate) value: String,
    pub(crate) secret: bool,
}

impl fmt::Debug for ResolvedVar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A secret's value never reaches a log.
        f.debug_struct("ResolvedVar")
            .field("name", &self.name)
            .field("value", &if self.secret { "<secret>" } else { &self.value })
            .finish()
    }
}

/// What an application tells its users to do about a failure. Core's messages say what
/// happened; only the application knows its own commands and flags, so the remedy it returns
/// is appended to the message recorded in the run (after `"; "`).
pub trait Remedies: Send + Sync + fmt::Debug {
    /// A remedy for `error`, met while dialing `machine`; `None` for none.
    fn for_dial(&self, machine: &MachineName, error: &SshError) -> Option<String>;
}

/// No remedies: messages say only what happened.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoRemedies;

impl Remedies for NoRemedies {
    fn for_dial(&self, _machine: &MachineName, _error: &SshError) -> Option<String> {
        None
    }
}

/// One machine of the fleet, resolved: everything the runner needs to reach and use it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineSpec {
    /// The machine's name in the fleet.
    pub name: MachineName,
    /// Its operating system, which picks the entrypoint and the shell.
    pub os: TargetOs,
    /// The PowerShell a Windows machine runs scripts with.
    pub windows_shell: WindowsShell,
    /// The remote root, relative to the login directory unless absolute.
    pub remote_root: String,
    /// Where the test reports of its runs are: `/`-separated glob patterns relative to the
    /// run's artifacts folder, handed to the [`ReportReader`]; empty: the reader's default.
    pub results: Vec<String>,
    /// The size limit of its file cache (`docs/contract.md#remote-file-cache`); `None`: no
    /// cache, every run sends its whole test directory (`cache = false`, `--no-cache`).
    pub cache_max: Option<u64>,
    /// How to reach it.
    pub ssh: SshTarget,
}

impl MachineSpec {
    /// The remote root unless the fleet file says otherwise.
    pub const DEFAULT_REMOTE_ROOT: &str = ".testfleet";

    /// How the machine's shell is spoken to.
    pub fn shell(&self) -> RemoteShell {
        RemoteShell::for_family(self.os.family(), self.windows_shell)
    }
}

/// What to dispatch where.
#[derive(Debug, Clone)]
pub struct DispatchRequest {
    /// The machine to run on.
    pub machine: MachineSpec,
    /// The exec timeout; none when `None`.
    pub timeout: Option<Duration>,
    /// Keep the remote run folder afterwards.
    pub keep_remote: bool,
    /// The process that will own the run while it is not terminal.
    pub owner: Option<RunOwner>,
    /// The entrypoint's arguments and variables, and the hash's `--exclude` patterns. With the
    /// hash, the arguments and the variables decide whether an active run is reused.
    pub invocation: Invocation,
}

/// The result of [`Runner::prepare`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepared {
    /// The new pending run, or the active run that was returned instead.
    pub run: Run,
    /// An active run with the same hash was returned instead of a new one.
    pub reused: bool,
}

impl Prepared {
    /// Whether this is a new pending run that [`Runner::execute`] should carry out.
    pub fn needs_execution(&self) -> bool {
        !self.reused && self.run.status == crate::run::RunStatus::Pending
    }

    /// Whether this is a new queued run that [`Runner::wait_for_grant`] should wait with, then
    /// execute.
    pub fn needs_wait(&self) -> bool {
        !self.reused && self.run.status == crate::run::RunStatus::Queued
    }
}

/// How a caller stops a run: `cancel` kills the remote command and still downloads the
/// artifacts and cleans up; `abandon` also stops waiting for that cleanup. Either way the run
/// ends `interrupted`.
#[derive(Debug, Clone, Default)]
pub struct StopSignals {
    /// Kill the remote command, then fetch the artifacts and clean up.
    pub cancel: CancellationToken,
    /// Stop waiting for the kill, the artifacts and the cleanup.
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
    /// A queued run is still waiting, `waited` so far: where it stands in each machine's queue
    /// (told about once a second).
    fn waiting(&self, _run: &Run, _places: &[QueuePlace], _waited: Duration) {}
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
    /// A runner on these ports.
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

    /// The run store.
    pub fn store(&self) -> &Arc<dyn RunStore> {
        &self.store
    }

    /// The clock.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// The runner's settings.
    pub fn config(&self) -> &RunnerConfig {
        &self.config
    }

    /// Hashes `test_dir`, prepares and executes the run on one machine: the whole dispatch.
    /// Hashing blocks the calling thread; callers that fan out hash once with
    /// [`hash_dir_excluding`] and
    /// use [`Runner::prepare`] and [`Runner::execute`] instead.
    ///
    /// # Errors
    /// [`DispatchError::TestDirNotFound`] and [`DispatchError::Hash`] from hashing; the
    /// preflight errors of [`Runner::prepare`]; a store failure.
    pub async fn dispatch(
        &self,
        test_dir: &Path,
        request: &DispatchRequest,
        signals: &StopSignals,
        observer: &dyn RunObserver,
    ) -> Result<DispatchedRun, DispatchError> {
        let manifest = hash_dir_excluding(test_dir, &request.invocation.excludes)?;
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
}
