//! What every command shares: the resolved paths, the fleet file, the store and the runner.

use std::path::PathBuf;
use std::sync::Arc;

use testfleet_core::hash::{DigestCache, DirManifest, hash_resolved_excluding, resolve_test_dir};
use testfleet_core::lookup::LookupError;
use testfleet_core::ports::{RunStore, SshConnector, StoreError, SystemClock, UlidGenerator};
use testfleet_core::runner::{LeaseSettings, ReapedRuns, Runner, RunnerConfig, Watch};
use testfleet_core::{ControllerId, DispatchError, MachineName, Run, RunId, RunRef};
use testfleet_results::JunitReports;
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
    /// The store was opened read-only (a read-only state directory): nothing is reaped.
    pub read_only: std::sync::atomic::AtomicBool,
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
    pub async fn hash_for_run(
        &self,
        dir: PathBuf,
        excludes: Vec<String>,
    ) -> Result<DirManifest, CliError> {
        let cache_dir = self.state_dir().ok().map(|state| state.join("digests"));
        let hashed = tokio::task::spawn_blocking(move || {
            let root = resolve_test_dir(&dir)?;
            let cache_file =
                cache_dir.map(|cache_dir| cache_dir.join(DigestCache::file_name_for(&root)));
            let cached = cache_file
                .as_deref()
                .map(DigestCache::load)
                .unwrap_or_default();
            let manifest = hash_resolved_excluding(root, &cached, &excludes)?;
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
        self.reap(store.as_ref()).await?;
        Ok(store)
    }

    /// Opens the store for a command that only reads runs (`status`, `list`, `logs`), and
    /// reaps. A state directory that cannot be written is still read: the store is opened
    /// read-only, nothing is reaped, and a warning says so.
    ///
    /// # Errors
    /// As [`Context::open_store`], but for a read-only state directory.
    pub async fn open_for_reading(&self) -> Result<Arc<dyn RunStore>, CliError> {
        match self.open_store().await {
            Ok(store) => {
                self.reap(store.as_ref()).await?;
                Ok(store)
            }
            Err(CliError::Store(ref error)) if testfleet_store_sqlite::is_read_only(error) => {
                let path = self.state_dir()?.join(DATABASE_FILE);
                let store = tokio::task::spawn_blocking(move || SqliteStore::open_read_only(&path))
                    .await
                    .map_err(|error| {
                        CliError::Internal(format!("the store opener panicked: {error}"))
                    })??;
                self.read_only
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                eprintln!(
                    "warning: state directory {} is read-only; runs are shown as recorded (a \
                     run whose owner died is not marked WORKER_LOST here)",
                    self.state_dir()?.display()
                );
                Ok(Arc::new(store))
            }
            Err(error) => Err(error),
        }
    }

    /// A runner on `store` with the russh connector and the system clock.
    ///
    /// # Errors
    /// As [`Context::state_dir`].
    pub fn runner(&self, store: Arc<dyn RunStore>) -> Result<Runner, CliError> {
        self.runner_with(store, Arc::new(connector()))
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
        config.reports = Some(Arc::new(JunitReports::default()));
        config.secrets = Arc::new(EnvSecrets);
        Ok(Runner::new(
            store,
            connector,
            Arc::new(SystemClock),
            Arc::new(UlidGenerator::default()),
            config,
        ))
    }
}

/// The russh connector of every command: it says on stderr which host key it recorded when a
/// run or a check accepts a new one (`--accept-new-host-key`).
pub fn connector() -> RusshConnector {
    RusshConnector::new().on_new_host_key(Arc::new(|host, port, fingerprint, known_hosts| {
        eprintln!(
            "note: recorded the host key of {host}:{port}, {fingerprint}, in {} (--accept-new-host-key)",
            known_hosts.display()
        );
    }))
}

/// The values of secret variables (`run -e KEY`): this process's environment, which a detached
/// worker inherits from the `run` that started it.
#[derive(Debug, Clone, Copy)]
struct EnvSecrets;

impl testfleet_core::runner::Secrets for EnvSecrets {
    fn value(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

/// How often waiting commands look at the store again.
pub const POLL_INTERVAL: std::time::Duration = std::time::Duration::from_millis(100);

impl Context {
    /// Reads runs from `store` as every command must: reaping runs whose owner died, or whose
    /// lease expired (they become `interrupted`/`WORKER_LOST`), before each look, and starting a
    /// `_cleanup` for each run so ended that had reached its machine.
    pub fn watch<'a>(&'a self, store: &'a dyn RunStore, probe: &'a ProcessProbe) -> Watch<'a> {
        Watch {
            store,
            clock: &SystemClock,
            probe,
            poll: POLL_INTERVAL,
            reaped: Some(self),
            reap: !self.read_only.load(std::sync::atomic::Ordering::Relaxed),
        }
    }

    /// Marks runs whose owner died, or whose lease expired, `interrupted`/`WORKER_LOST` (see
    /// [`Context::watch`]).
    ///
    /// # Errors
    /// As [`Context::probe`]; [`CliError::Store`].
    pub async fn reap(&self, store: &dyn RunStore) -> Result<Vec<Run>, CliError> {
        let probe = self.probe()?;
        Ok(self.watch(store, &probe).reap().await?)
    }
}

impl ReapedRuns for Context {
    fn reaped(&self, runs: &[Run]) {
        for run in runs.iter().filter(|run| run.remote_dir.is_some()) {
            match crate::detach::spawn(self, run, &["_cleanup", run.id.as_str()]) {
                Ok(pid) => tracing::info!(run = %run.id, pid, "started the cleanup of a lost run"),
                Err(error) => tracing::warn!(
                    run = %run.id,
                    "failed to start the cleanup of a lost run: {}",
                    error.message()
                ),
            }
        }
    }
}

/// Parses a whole run id, as the hidden commands receive it.
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

/// Parses how a run was named on the command line: a whole id, a prefix of at least 4
/// characters, or `last` / `@`.
///
/// # Errors
/// [`CliError::InvalidArgument`] quoting `text` as it was typed.
pub fn parse_run_ref(text: &str) -> Result<RunRef, CliError> {
    RunRef::parse(text).map_err(|error| {
        CliError::invalid(format!(
            "{error}; name a run by its id or the first 4 or more characters of it (`testfleet list` shows them), or `last` for the newest"
        ))
    })
}

/// The run `typed` names (see [`parse_run_ref`]); `machine` restricts `last` to that machine's
/// runs and goes with `last` only.
///
/// # Errors
/// [`CliError::InvalidArgument`] for a malformed reference, an ambiguous prefix (listing the
/// candidates), or a machine given with something else than `last`; [`CliError::RunNotFound`];
/// [`CliError::Store`].
pub async fn find_run(
    store: &dyn RunStore,
    typed: &str,
    machine: Option<&str>,
) -> Result<Run, CliError> {
    let reference = parse_run_ref(typed)?;
    let machine = match machine {
        None => None,
        Some(_) if reference != RunRef::Last => {
            return Err(CliError::invalid(format!(
                "-m/--machine goes with `last` (the newest run of that machine), not with the run id {typed:?}"
            )));
        }
        Some(name) => {
            Some(MachineName::parse(name).map_err(|error| CliError::invalid(error.to_string()))?)
        }
    };
    match testfleet_core::lookup::find_run(store, &reference, machine.as_ref()).await {
        Ok(run) => Ok(run),
        Err(LookupError::NotFound { .. }) => Err(CliError::RunNotFound {
            id: typed.to_owned(),
        }),
        Err(LookupError::NoRuns { machine }) => Err(CliError::NoRuns {
            machine: machine.map(|m| m.to_string()),
        }),
        Err(LookupError::Ambiguous {
            candidates, more, ..
        }) => Err(CliError::AmbiguousRunId {
            typed: typed.to_owned(),
            candidates,
            more,
        }),
        Err(LookupError::Store(error)) => Err(error.into()),
    }
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
