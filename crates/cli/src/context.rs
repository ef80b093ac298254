//! What every command shares: the resolved paths, the fleet file, the store and the runner.

use std::path::PathBuf;
use std::sync::Arc;

use testfleet_core::hash::{DigestCache, DirManifest, hash_resolved, resolve_test_dir};
use testfleet_core::ports::{RunStore, SshConnector, StoreError, SystemClock, UlidGenerator};
use testfleet_core::runner::{Runner, RunnerConfig, Watch};
use testfleet_core::{DispatchError, Run, RunId};
use testfleet_results::JunitReports;
use testfleet_ssh::RusshConnector;
use testfleet_store_sqlite::{DATABASE_FILE, SqliteStore};

use crate::cli::GlobalArgs;
use crate::config::paths::absolute;
use crate::config::{Env, Fleet};
use crate::error::CliError;
use crate::output::Style;
use crate::owner::ProcessProbe;
use crate::remedy::RunRemedies;

/// The environment of one command.
#[derive(Debug)]
pub struct Context {
    pub global: GlobalArgs,
    pub env: Env,
    pub style: Style,
}

impl Context {
    /// The state directory (`docs/contract.md#local-state`), absolute.
    ///
    /// # Errors
    /// [`CliError::InvalidArgument`] when neither a flag, `TESTFLEET_STATE_DIR`, the XDG
    /// variable nor HOME says where it is.
    pub fn state_dir(&self) -> Result<PathBuf, CliError> {
        self.global
            .state_dir
            .clone()
            .or_else(|| self.env.default_state_dir())
            .map(|dir| absolute(&dir))
            .ok_or_else(|| {
                CliError::invalid(
                    "no state directory: HOME is unset; pass --state-dir or set TESTFLEET_STATE_DIR",
                )
            })
    }

    /// The fleet file path (`docs/contract.md#fleet-file`), absolute.
    ///
    /// # Errors
    /// [`CliError::FleetConfig`] when nothing says where it is.
    pub fn fleet_path(&self) -> Result<PathBuf, CliError> {
        self.global
            .fleet
            .clone()
            .or_else(|| self.env.default_fleet_file())
            .map(|file| absolute(&file))
            .ok_or_else(|| CliError::FleetConfig {
                message: "no fleet file: HOME is unset; pass --fleet or set TESTFLEET_FLEET"
                    .to_owned(),
                file: PathBuf::new(),
                line: None,
                column: None,
            })
    }

    /// Reads and parses the fleet file.
    ///
    /// # Errors
    /// [`CliError::FleetConfig`].
    pub fn fleet(&self) -> Result<Fleet, CliError> {
        Fleet::load(&self.fleet_path()?, &self.env)
    }

    /// Hashes a test directory for a run. The digests go to a cache in the state directory
    /// (`digests/<sha256 of the directory's path>`), so that the next run reads only files whose
    /// stamp changed (see `testfleet_core::hash::DigestCache`). A cache that cannot be read or
    /// written only costs a full hash.
    ///
    /// # Errors
    /// The hashing errors of `hash_dir`.
    pub async fn hash_for_run(&self, dir: PathBuf) -> Result<DirManifest, CliError> {
        let cache_dir = self.state_dir().ok().map(|state| state.join("digests"));
        let hashed = tokio::task::spawn_blocking(move || {
            let root = resolve_test_dir(&dir)?;
            let cache_file =
                cache_dir.map(|cache_dir| cache_dir.join(DigestCache::file_name_for(&root)));
            let cached = cache_file
                .as_deref()
                .map(DigestCache::load)
                .unwrap_or_default();
            let manifest = hash_resolved(root, &cached)?;
            if let Some(file) = cache_file {
                let fresh = DigestCache::of_manifest(&manifest);
                if fresh != cached
                    && let Err(error) = fresh.save(&file)
                {
                    tracing::debug!(
                        "failed to save the digest cache {}: {error}",
                        file.display()
                    );
                }
            }
            Ok::<_, DispatchError>(manifest)
        })
        .await
        .map_err(|error| CliError::Internal(format!("hashing panicked: {error}")))?;
        Ok(hashed?)
    }

    /// Opens (creating it if needed) the run database in the state directory.
    ///
    /// # Errors
    /// [`CliError::Io`] when the state directory cannot be created; [`CliError::Store`].
    pub async fn open_store(&self) -> Result<Arc<SqliteStore>, CliError> {
        let state_dir = self.state_dir()?;
        std::fs::create_dir_all(&state_dir)
            .map_err(|source| CliError::io("create the state directory", &state_dir, source))?;
        let path = state_dir.join(DATABASE_FILE);
        let store = tokio::task::spawn_blocking(move || SqliteStore::open(&path))
            .await
            .map_err(|error| CliError::Internal(format!("the store opener panicked: {error}")))??;
        Ok(Arc::new(store))
    }

    /// Opens the store and reaps runs whose owner is gone: what every command that reads runs
    /// does first.
    ///
    /// # Errors
    /// As [`Context::open_store`]; [`CliError::Store`] when reaping fails.
    pub async fn open_and_reap(&self) -> Result<Arc<SqliteStore>, CliError> {
        let store = self.open_store().await?;
        reap(store.as_ref()).await?;
        Ok(store)
    }

    /// A runner on `store` with the russh connector and the system clock.
    ///
    /// # Errors
    /// As [`Context::state_dir`].
    pub fn runner(&self, store: Arc<SqliteStore>) -> Result<Runner, CliError> {
        self.runner_with(store, Arc::new(RusshConnector::new()))
    }

    /// [`Context::runner`] dialing through `connector`.
    ///
    /// # Errors
    /// As [`Context::runner`].
    pub fn runner_with(
        &self,
        store: Arc<SqliteStore>,
        connector: Arc<dyn SshConnector>,
    ) -> Result<Runner, CliError> {
        let mut config = RunnerConfig::new(self.state_dir()?);
        config.remedies = Arc::new(RunRemedies);
        config.reports = Some(Arc::new(JunitReports::default()));
        Ok(Runner::new(
            store,
            connector,
            Arc::new(SystemClock),
            Arc::new(UlidGenerator::default()),
            config,
        ))
    }
}

/// How often waiting commands look at the store again.
pub const POLL_INTERVAL: std::time::Duration = std::time::Duration::from_millis(100);

/// Reads runs from `store` as every command must: reaping runs whose owner died (they become
/// `interrupted`/`WORKER_LOST`) before each look.
pub fn watch(store: &dyn RunStore) -> Watch<'_> {
    Watch {
        store,
        clock: &SystemClock,
        probe: &ProcessProbe,
        poll: POLL_INTERVAL,
    }
}

/// Marks runs whose owner died `interrupted`/`WORKER_LOST`.
///
/// # Errors
/// [`CliError::Store`].
pub async fn reap(store: &dyn RunStore) -> Result<Vec<Run>, CliError> {
    Ok(watch(store).reap().await?)
}

/// Parses a run id given on the command line.
///
/// # Errors
/// [`CliError::InvalidArgument`] when it is not a run id.
pub fn parse_run_id(text: &str) -> Result<RunId, CliError> {
    RunId::parse(text).map_err(|error| {
        CliError::invalid(format!(
            "{error}; run ids are the 26-character ids `testfleet list` shows"
        ))
    })
}

/// The run with this id.
///
/// # Errors
/// [`CliError::RunNotFound`]; [`CliError::Store`].
pub async fn get_run(store: &dyn RunStore, id: &RunId) -> Result<Run, CliError> {
    match store.get(id).await {
        Ok(run) => Ok(run),
        Err(StoreError::NotFound(id)) => Err(id.into()),
        Err(error) => Err(error.into()),
    }
}
