//! The hidden background commands: `_worker RUN_ID` executes a pending run claimed by
//! `run --detach`, in a session of its own, as the run's owner (SIGTERM or SIGINT cancel the
//! run); `_cleanup RUN_ID` finishes a run the reaper ended because its owner died.

use serde_json::json;
use testfleet_core::ports::{HostKeyPolicy, StoreError};
use testfleet_core::runner::{NoObserver, Runner};
use testfleet_core::{Run, RunStatus};

use crate::commands::signals::SignalWatch;
use crate::context::{Context, get_run, parse_run_id};
use crate::error::CliError;
use crate::output::Report;
use crate::owner;

/// What `run --detach` hands its worker.
#[derive(Debug, Default)]
pub struct WorkerArgs {
    /// `--accept-new-host-key`.
    pub accept_new_host_key: bool,
    /// How long a queued run may wait for its machine; `None`: as long as it takes.
    pub wait: Option<std::time::Duration>,
    /// The run's `--results` patterns.
    pub results: Vec<String>,
    /// `--no-cache`.
    pub no_cache: bool,
}

/// Executes the run `run_id`.
///
/// # Errors
/// `INVALID_ARGUMENT`, `RUN_NOT_FOUND`, `STORE_ERROR`; problems with the machine are recorded
/// in the run instead.
pub async fn worker(ctx: &Context, run_id: &str, args: &WorkerArgs) -> Result<Report, CliError> {
    let WorkerArgs {
        accept_new_host_key,
        wait,
        ref results,
        no_cache,
    } = *args;
    // A session of our own: the terminal's Ctrl-C and hangup no longer reach us.
    if let Err(error) = nix::unistd::setsid() {
        tracing::warn!(%error, "setsid failed; the worker stays in its parent's session");
    }
    let watch = SignalWatch::install(false, super::signals::STOPS_RUNS)?;
    let id = parse_run_id(run_id)?;
    let store = ctx.open_store().await?;
    let lease = ctx.store_choice()?.lease.duration;
    let me = owner::current(&ctx.controller()?);
    let run = match store.set_owner(&id, &me, lease).await {
        Ok(run) => run,
        Err(StoreError::Conflict { .. }) => return Ok(done(get_run(store.as_ref(), &id).await?)),
        Err(error) => return Err(error.into()),
    };
    if !matches!(run.status, RunStatus::Pending | RunStatus::Queued) {
        return Ok(done(run));
    }
    tracing::info!(run = %run.id, machine = %run.machine, status = %run.status, "worker started");
    let runner = ctx.runner(store.clone())?;
    // A queued run waits for its machine here first (`run --detach --wait`).
    let run = runner
        .wait_for_grant(run, wait, &watch.signals, &NoObserver)
        .await?;
    if run.status != RunStatus::Pending {
        tracing::info!(run = %run.id, status = %run.status, "the run ended while it waited");
        return Ok(done(run));
    }
    // Until the runner's heartbeat starts, the lease is kept here: hashing a large directory
    // again may take longer than a lease.
    let keeper = owner::keep_leases(
        store.clone(),
        vec![run.id.clone()],
        me.clone(),
        runner.config().lease,
    );
    let fleet = match ctx.fleet() {
        Ok(fleet) => fleet,
        Err(error) => return fail(&runner, &run, &error).await,
    };
    let machine = match fleet.machine(run.machine.as_str()) {
        Ok(machine) => machine,
        Err(error) => return fail(&runner, &run, &error).await,
    };
    let mut spec = machine.spec.clone();
    if accept_new_host_key {
        spec.ssh.host_key_policy = HostKeyPolicy::AcceptNew;
    }
    if !results.is_empty() {
        spec.results.clone_from(results);
    }
    if no_cache {
        spec.cache_max = None;
    }
    // Hashed again (with the digest cache) to check that the directory is still the one
    // claimed; when that fails, the runner hashes once more and records why.
    let manifest = ctx
        .hash_for_run(run.test_dir.clone(), run.invocation.excludes.clone())
        .await
        .ok();
    keeper.abort();
    let run = runner
        .execute(run, &spec, manifest.as_ref(), &watch.signals, &NoObserver)
        .await?;
    tracing::info!(run = %run.id, status = %run.status, "worker finished");
    Ok(done(run))
}

fn done(run: Run) -> Report {
    let human = format!("{} {}\n", run.id, run.status);
    Report::new(json!({ "run": run }), human)
}

/// Ends the pending run `failed` with the error's code: the worker could not even start it.
async fn fail(runner: &Runner, run: &Run, error: &CliError) -> Result<Report, CliError> {
    let run = runner
        .end_pending(&run.id, RunStatus::Failed, error.code(), error.message())
        .await?;
    Ok(done(run))
}

/// Finishes the run `run_id`, which the reaper ended (`WORKER_LOST`): reconnects to its machine,
/// kills what is left of it, fetches its artifacts and removes its remote folder, then records
/// what was done. A run already finished that way, or that never reached its machine, is left
/// as it is.
///
/// # Errors
/// `INVALID_ARGUMENT`, `RUN_NOT_FOUND`, `STORE_ERROR`.
pub async fn cleanup(ctx: &Context, run_id: &str) -> Result<Report, CliError> {
    if let Err(error) = nix::unistd::setsid() {
        tracing::warn!(%error, "setsid failed; the cleanup stays in its parent's session");
    }
    let watch = SignalWatch::install(false, super::signals::STOPS_RUNS)?;
    let id = parse_run_id(run_id)?;
    let store = ctx.open_store().await?;
    let run = get_run(store.as_ref(), &id).await?;
    if run.status.is_active() || run.remote_cleanup.is_some() || run.remote_dir.is_none() {
        return Ok(done(run));
    }
    let runner = ctx.runner(store.clone())?;
    let machine = ctx
        .fleet()
        .and_then(|fleet| fleet.machine(run.machine.as_str()).map(|m| m.spec.clone()));
    let run = match machine {
        Ok(machine) => {
            tracing::info!(run = %run.id, machine = %run.machine, "cleaning up a lost run");
            runner
                .finish_lost_run(&run, &machine, &watch.signals)
                .await?
        }
        Err(error) => {
            let amendment = testfleet_core::Amendment {
                at: testfleet_core::Timestamp::now(),
                remote_cleanup: Some(testfleet_core::RemoteCleanup::Unreachable),
                artifacts: None,
                tests: None,
                detail: format!(
                    "after its owner was lost: could not reach the machine: {}",
                    error.message()
                ),
            };
            store.amend(&run.id, amendment).await?
        }
    };
    tracing::info!(run = %run.id, remote_cleanup = ?run.remote_cleanup, "cleanup finished");
    Ok(done(run))
}
