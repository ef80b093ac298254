//! What every command shares: the resolved paths, the fleet file, the store and the runner.

use std::path::PathBuf;
use std::sync::Arc;

use testfleet_core::hash::{DigestCache, DirManifest, hash_resolved, resolve_test_dir};
use testfleet_core::ports::{RunStore, SshConnector, StoreError, SystemClock, UlidGenerator};
use testfleet_core::runner::{LeaseSettings, Runner, RunnerConfig, Watch};
use testfleet_core::{ControllerId, DispatchError, Run, RunId};
use testfleet_ssh::RusshConnector;
use testfleet_store_postgres::{PgConfig, PgEnv, PostgresStore};
use testfleet_store_sqlite::{DATABASE_FILE, SqliteStore};

use crate::cli::GlobalArgs;
use crate::config::paths::absolute;
use crate::config::{Env, Fleet, StoreTable, load_store_table};
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

/// Where the runs are: SQLite in the state directory, or a PostgreSQL database that several
/// controllers share.
#[derive(Debug)]
pub enum StoreLocation {
    Sqlite(PathBuf),
    Postgres(Box<PgConfig>),
}

/// The run store of this command and the owners' leases (`[store]`, `TESTFLEET_STORE_URL`).
#[derive(Debug)]
pub struct StoreChoice {
    pub location: StoreLocation,
    pub lease: LeaseSettings,
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

    /// This controller's id: `TESTFLEET_CONTROLLER_ID`, else the host name.
    ///
    /// # Errors
    /// [`CliError::InvalidArgument`] for an invalid id (or a host name that is not one).
    pub fn controller(&self) -> Result<ControllerId, CliError> {
        let (text, source) = match &self.env.controller_id {
            Some(id) => (id.clone(), "TESTFLEET_CONTROLLER_ID"),
            None => (
                nix::unistd::gethostname()
                    .map(|name| name.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                "the host name",
            ),
        };
        ControllerId::parse(&text).map_err(|error| {
            CliError::invalid(format!(
                "{error} (from {source}); set TESTFLEET_CONTROLLER_ID to a name unique among the controllers that share the run store"
            ))
        })
    }

    /// The probe of owners on this controller.
    ///
    /// # Errors
    /// As [`Context::controller`].
    pub fn probe(&self) -> Result<ProcessProbe, CliError> {
        Ok(ProcessProbe {
            controller: self.controller()?,
        })
    }

    /// The run store and the leases: `TESTFLEET_STORE_URL`, else the fleet file's
    /// `[store] url`, else SQLite in the state directory. A missing fleet file is no error here.
    ///
    /// # Errors
    /// [`CliError::FleetConfig`] for a fleet file that cannot be read or parsed, or a bad
    /// `[store]` table; [`CliError::InvalidArgument`] for a bad `TESTFLEET_STORE_URL`. No
    /// message quotes the URL (it may hold a password).
    pub fn store_choice(&self) -> Result<StoreChoice, CliError> {
        let fleet_file = self.fleet_path().ok();
        let table = match &fleet_file {
            Some(file) => load_store_table(file)?,
            None => StoreTable::default(),
        };
        let file = fleet_file.clone().unwrap_or_default();
        let lease = table.lease_settings(&file)?;
        let location = if let Some(url) = &self.env.store_url {
            let config = PgConfig::parse(url, table.schema.as_deref(), &PgEnv::from_process())
                .map_err(|error| CliError::invalid(format!("TESTFLEET_STORE_URL: {error}")))?;
            StoreLocation::Postgres(Box::new(config))
        } else if let Some(url) = &table.url {
            let config = PgConfig::parse(url, table.schema.as_deref(), &PgEnv::from_process())
                .map_err(|error| StoreTable::url_error(&file, error))?;
            StoreLocation::Postgres(Box::new(config))
        } else {
            StoreLocation::Sqlite(self.state_dir()?.join(DATABASE_FILE))
        };
        Ok(StoreChoice { location, lease })
    }

    /// Opens the run store: the shared PostgreSQL database, or (creating it if needed) the
    /// SQLite file in the state directory. An unreachable database creates nothing.
    ///
    /// # Errors
    /// As [`Context::store_choice`]; [`CliError::Io`] when the state directory cannot be
    /// created; [`CliError::Store`].
    pub async fn open_store(&self) -> Result<Arc<dyn RunStore>, CliError> {
        let choice = self.store_choice()?;
        let opened: Result<Arc<dyn RunStore>, StoreError> = match choice.location {
            StoreLocation::Sqlite(path) => {
                let state_dir = self.state_dir()?;
                std::fs::create_dir_all(&state_dir).map_err(|source| {
                    CliError::io("create the state directory", &state_dir, source)
                })?;
                tokio::task::spawn_blocking(move || {
                    SqliteStore::open(&path).map(|store| Arc::new(store) as Arc<dyn RunStore>)
                })
                .await
                .map_err(|error| {
                    CliError::Internal(format!("the store opener panicked: {error}"))
                })?
            }
            StoreLocation::Postgres(config) => tokio::task::spawn_blocking(move || {
                PostgresStore::open(&config).map(|store| Arc::new(store) as Arc<dyn RunStore>)
            })
            .await
            .map_err(|error| CliError::Internal(format!("the store opener panicked: {error}")))?,
        };
        Ok(opened?)
    }

    /// Opens the store and reaps runs whose owner is gone: what every command that reads runs
    /// does first.
    ///
    /// # Errors
    /// As [`Context::open_store`]; [`CliError::Store`] when reaping fails.
    pub async fn open_and_reap(&self) -> Result<Arc<dyn RunStore>, CliError> {
        let store = self.open_store().await?;
        reap(store.as_ref(), &self.probe()?).await?;
        Ok(store)
    }

    /// A runner on `store` with the russh connector and the system clock.
    ///
    /// # Errors
    /// As [`Context::state_dir`].
    pub fn runner(&self, store: Arc<dyn RunStore>) -> Result<Runner, CliError> {
        self.runner_with(store, Arc::new(RusshConnector::new()))
    }

    /// [`Context::runner`] dialing through `connector`.
    ///
    /// # Errors
    /// As [`Context::runner`].
    pub fn runner_with(
        &self,
        store: Arc<dyn RunStore>,
        connector: Arc<dyn SshConnector>,
    ) -> Result<Runner, CliError> {
        let mut config = RunnerConfig::new(self.state_dir()?);
        config.remedies = Arc::new(RunRemedies);
        config.lease = self.store_choice()?.lease;
        config.controller = Some(self.controller()?);
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
pub fn watch<'a>(store: &'a dyn RunStore, probe: &'a ProcessProbe) -> Watch<'a> {
    Watch {
        store,
        clock: &SystemClock,
        probe,
        poll: POLL_INTERVAL,
    }
}

/// Marks runs whose owner died, or whose lease expired, `interrupted`/`WORKER_LOST`.
///
/// # Errors
/// [`CliError::Store`].
pub async fn reap(store: &dyn RunStore, probe: &ProcessProbe) -> Result<Vec<Run>, CliError> {
    Ok(watch(store, probe).reap().await?)
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
