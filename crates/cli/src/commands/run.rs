//! `testfleet run`: hash once, check every machine's entrypoint, claim each machine, then
//! either execute the runs here concurrently (streaming their output) or hand each to a
//! detached `_worker` process.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::{Value, json};
use testfleet_core::ports::{HostKeyPolicy, OutputStream, SshConnector};
use testfleet_core::queue::ClaimOn;
use testfleet_core::runner::{DispatchRequest, MachineSpec, Prepared, RunObserver, Runner};
use testfleet_core::{
    DirManifest, DispatchError, DispatchedRun, EnvVar, ErrorCode, Invocation, MachineName, Run,
    RunId, RunOwner, RunStatus, Timestamp, Transition,
};
use testfleet_results::ResultGlobs;

use crate::cli::RunArgs;
use crate::commands::hash::warn_skipped;
use crate::commands::signals::SignalWatch;
use crate::commands::terminal::TerminalObserver;
use crate::config::FleetMachine;
use crate::context::{Context, get_run};
use crate::error::{CliError, Exit};
use crate::output::{self, Report};
use crate::owner::{self, ProcessProbe};
use crate::predial::Predialer;

/// A machine whose claim was refused in a fan-out.
#[derive(Debug)]
struct MachineError {
    machine: String,
    code: ErrorCode,
    message: String,
}

impl MachineError {
    fn to_json(&self) -> Value {
        json!({ "machine": self.machine, "code": self.code, "message": self.message })
    }
}

/// `run DIR (-m NAME)... [-l LABEL]...`.
///
/// # Errors
/// Whole-command errors before any claim: `TEST_DIR_NOT_FOUND`, `MISSING_ENTRYPOINT`,
/// `UNKNOWN_MACHINE`, `FLEET_CONFIG_INVALID`, `INVALID_ARGUMENT`; `MACHINE_BUSY` for a single
/// machine; `STORE_ERROR`.
pub async fn run(ctx: &Context, args: RunArgs) -> Result<Report, CliError> {
    ResultGlobs::new(&args.results).map_err(|error| CliError::invalid(error.to_string()))?;
    let invocation = invocation(&args, |name| std::env::var_os(name).is_some())?;
    let fleet = ctx.fleet()?;
    let selected = fleet.select(&args.machines, &args.labels)?;
    // A foreground run logs in while the directory is hashed and the machines are claimed (a
    // detached worker dials on its own).
    let predialer = Arc::new(Predialer::new(Arc::new(crate::context::connector())));
    if !args.detach && args.dir.is_dir() {
        // As many logins at once as runs may execute at once.
        for machine in selected.iter().take(usize::from(args.max_parallel)) {
            predialer.dial(run_spec(machine, &args).ssh);
        }
    }
    let dispatched = dispatch(ctx, args, invocation, &selected, predialer.clone()).await;
    predialer.close_unused().await;
    dispatched
}

/// `rerun RUN_ID [-m NAME] [--detach] [--wait [DUR]]`: the run's directory on its machine again, with its
/// arguments, variables (a secret's value read from this environment again), excludes,
/// timeout and `--keep-remote`.
///
/// # Errors
/// As [`run`]; `INVALID_ARGUMENT`/`RUN_NOT_FOUND` for the id.
pub async fn rerun(
    ctx: &Context,
    run_id: &str,
    machine: Option<&str>,
    detach: bool,
    wait: Option<crate::cli::WaitLimit>,
    no_cache: bool,
) -> Result<Report, CliError> {
    let store = ctx.open_for_reading().await?;
    let old = crate::context::find_run(store.as_ref(), run_id, machine).await?;
    drop(store);
    let args = RunArgs {
        dir: old.test_dir.clone(),
        machines: vec![old.machine.to_string()],
        labels: Vec::new(),
        timeout: old.timeout_ms.map(std::time::Duration::from_millis),
        detach,
        keep_remote: old.keep_remote,
        no_cache,
        accept_new_host_key: false,
        results: Vec::new(),
        report: None,
        env: old
            .invocation
            .env
            .iter()
            .map(|var| match var.value() {
                Some(value) => format!("{}={value}", var.name()),
                None => var.name().to_owned(),
            })
            .collect(),
        excludes: old.invocation.excludes.clone(),
        args: old.invocation.args.clone(),
        wait,
        any: false,
        max_parallel: crate::cli::DEFAULT_MAX_PARALLEL,
    };
    run(ctx, args).await
}

/// What the script is given, from `-e`, `--exclude` and `-- ARGS`. `is_set` says whether a
/// variable is in this environment: a secret (`-e KEY`) must be, or the run could not have it.
///
/// # Errors
/// `INVALID_ARGUMENT` for a bad name, a NUL byte, a variable given twice, an unset secret or a
/// bad `--exclude` pattern.
pub fn invocation(args: &RunArgs, is_set: impl Fn(&str) -> bool) -> Result<Invocation, CliError> {
    let invalid = |error: &dyn std::fmt::Display| CliError::invalid(format!("-e: {error}"));
    let mut env = Vec::with_capacity(args.env.len());
    for given in &args.env {
        let var = match given.split_once('=') {
            Some((name, value)) => EnvVar::public(name, value).map_err(|e| invalid(&e))?,
            None => {
                let var = EnvVar::secret(given).map_err(|e| invalid(&e))?;
                if !is_set(given) {
                    return Err(CliError::invalid(format!(
                        "-e {given}: {given} is not set in this environment; -e {given} passes \
                         its value from here as a secret, -e {given}=VALUE sets (and records) a value"
                    )));
                }
                var
            }
        };
        env.push(var);
    }
    let invocation = Invocation {
        args: args.args.clone(),
        env,
        excludes: args.excludes.clone(),
    };
    invocation
        .check()
        .map_err(|e| CliError::invalid(e.to_string()))?;
    testfleet_core::hash::check_excludes(&invocation.excludes)
        .map_err(|e| CliError::invalid(e.to_string()))?;
    Ok(invocation)
}

/// The machine as a run sees it: the fleet's, with `--accept-new-host-key` and `--results`
/// applied.
fn run_spec(machine: &FleetMachine, args: &RunArgs) -> MachineSpec {
    let mut spec = machine.spec.clone();
    if args.accept_new_host_key {
        spec.ssh.host_key_policy = HostKeyPolicy::AcceptNew;
    }
    if !args.results.is_empty() {
        spec.results.clone_from(&args.results);
    }
    if args.no_cache {
        spec.cache_max = None;
    }
    spec
}

async fn dispatch(
    ctx: &Context,
    args: RunArgs,
    invocation: Invocation,
    selected: &[&FleetMachine],
    connector: Arc<dyn SshConnector>,
) -> Result<Report, CliError> {
    let manifest = ctx
        .hash_for_run(args.dir.clone(), invocation.excludes.clone())
        .await?;
    warn_skipped(&manifest);
    // Every machine's entrypoint is checked before any machine is claimed.
    for machine in selected {
        manifest
            .entrypoint_for(&machine.spec.os)
            .map_err(DispatchError::from)?;
    }

    if args.any {
        same_os(selected)?;
    }
    let store = ctx.open_and_reap().await?;
    let runner = ctx.runner_with(store.clone(), connector)?;
    let controller = ctx.controller()?;
    let me = owner::current(&controller);
    // One claim per machine; with --any, one claim over all of them.
    let units: Vec<Vec<&FleetMachine>> = if args.any {
        vec![selected.to_vec()]
    } else {
        selected.iter().map(|machine| vec![*machine]).collect()
    };
    let single = units.len() == 1;
    let mut prepared_runs: Vec<(DispatchRequest, Prepared)> = Vec::new();
    let mut errors: Vec<MachineError> = Vec::new();
    for unit in &units {
        let first = unit[0];
        let request = DispatchRequest {
            machine: run_spec(first, &args),
            timeout: args.timeout.or(first.timeout),
            keep_remote: args.keep_remote,
            owner: Some(me.clone()),
            invocation: invocation.clone(),
        };
        let on = ClaimOn {
            machines: unit
                .iter()
                .map(|machine| machine.spec.name.clone())
                .collect(),
            wait: args.wait.is_some(),
        };
        match runner.prepare_on(&manifest, &request, &on).await {
            Ok(prepared) => prepared_runs.push((request, prepared)),
            Err(error) if single => return Err(error.into()),
            Err(error) => {
                let error = CliError::from(error);
                errors.push(MachineError {
                    machine: first.spec.name.to_string(),
                    code: error.code(),
                    message: error.message(),
                });
            }
        }
    }
    // The machines a granted run may land on, as runs see them.
    let specs: HashMap<MachineName, MachineSpec> = selected
        .iter()
        .map(|machine| (machine.spec.name.clone(), run_spec(machine, &args)))
        .collect();

    let results = if args.detach {
        detach_all(ctx, &runner, prepared_runs, &args).await?
    } else {
        // Runs started here (or waiting to start) are stopped by Ctrl-C; runs only followed go
        // on.
        let n_executed = prepared_runs
            .iter()
            .filter(|(_, prepared)| prepared.needs_execution() || prepared.needs_wait())
            .count();
        let what_stops = match (n_executed, prepared_runs.len() - n_executed) {
            (_, 0) => crate::commands::signals::STOPS_RUNS,
            (0, _) => {
                "no longer following the run(s), which go on (`testfleet cancel ID` stops one)"
            }
            _ => {
                "stopping the run(s) started here, fetching artifacts (again to abandon); \
                 the run(s) only followed go on"
            }
        };
        let watch = SignalWatch::install(!ctx.style.json, what_stops)?;
        let queued = keep_queued_leases(&runner, &prepared_runs, &me, &args);
        let foreground = Foreground {
            ctx,
            runner: &runner,
            manifest: &manifest,
            specs: &specs,
            watch: &watch,
            args: &args,
        };
        let results = foreground.run_all(prepared_runs, !single || args.any).await;
        if let Some(keeper) = queued {
            keeper.abort();
        }
        let results = results?;
        if watch.interrupted() {
            return Ok(with_report(
                report(ctx, &results, &errors, Exit::Interrupted),
                &args,
                &results,
            )
            .await);
        }
        results
    };
    let exit = if !errors.is_empty()
        || (!args.detach && results.iter().any(|r| r.run.status != RunStatus::Completed))
        || (args.detach
            && results
                .iter()
                .any(|r| r.run.status.is_terminal() && r.run.status != RunStatus::Completed))
    {
        Exit::RunFailed
    } else {
        Exit::Ok
    };
    Ok(with_report(report(ctx, &results, &errors, exit), &args, &results).await)
}

/// `--report FILE.html`: the HTML test report of the runs, written once they ended.
async fn with_report(mut output: Report, args: &RunArgs, results: &[DispatchedRun]) -> Report {
    let Some(path) = &args.report else {
        return output;
    };
    let runs = results.iter().map(|result| result.run.clone()).collect();
    let (line, exit) =
        crate::commands::report::report_for_runs(runs, path, &mut output.data, output.exit).await;
    output.human.push_str(&line);
    output.exit = exit;
    output
}

fn report(ctx: &Context, results: &[DispatchedRun], errors: &[MachineError], exit: Exit) -> Report {
    let mut human: String = results
        .iter()
        .map(|result| output::run_summary(ctx.style, &result.run, result.reused))
        .collect();
    for error in errors {
        human.push_str(&format!(
            "{}: {}: {}\n",
            error.machine, error.code, error.message
        ));
    }
    if results.len() + errors.len() > 1 {
        let runs: Vec<&Run> = results.iter().map(|result| &result.run).collect();
        human.push_str(&output::counts_line(&runs));
        if !errors.is_empty() {
            human.push_str(&format!("{} machines refused\n", errors.len()));
        }
    }
    let data = json!({
        "runs": results,
        "errors": errors.iter().map(MachineError::to_json).collect::<Vec<_>>(),
    });
    Report::new(data, human).with_exit(exit)
}

/// What executing runs in this process needs.
struct Foreground<'a> {
    ctx: &'a Context,
    runner: &'a Runner,
    manifest: &'a DirManifest,
    /// The selected machines, by name, as runs see them: where a granted run executes.
    specs: &'a HashMap<MachineName, MachineSpec>,
    watch: &'a SignalWatch,
    args: &'a RunArgs,
}

impl Foreground<'_> {
    /// Executes the new runs here, at most `--max-parallel` at once; queued runs wait for their
    /// machine first (without a slot), reused ones are followed until they end.
    async fn run_all(
        &self,
        prepared_runs: Vec<(DispatchRequest, Prepared)>,
        prefix: bool,
    ) -> Result<Vec<DispatchedRun>, CliError> {
        let observer = TerminalObserver::new(self.ctx, prefix, prepared_runs.len());
        let slots = tokio::sync::Semaphore::new(usize::from(self.args.max_parallel));
        let (observer, slots) = (&observer, &slots);
        let results: Vec<Result<DispatchedRun, CliError>> = futures::future::join_all(
            prepared_runs
                .into_iter()
                .map(|(request, prepared)| self.run_one(request, prepared, slots, observer)),
        )
        .await;
        observer.finish();
        results.into_iter().collect()
    }

    async fn run_one(
        &self,
        request: DispatchRequest,
        prepared: Prepared,
        slots: &tokio::sync::Semaphore,
        observer: &TerminalObserver,
    ) -> Result<DispatchedRun, CliError> {
        let (runner, signals) = (self.runner, &self.watch.signals);
        if prepared.reused {
            return follow(self.ctx, runner, &prepared.run, self.watch, observer)
                .await
                .map(|run| DispatchedRun { run, reused: true });
        }
        let mut run = prepared.run;
        if run.status == RunStatus::Queued {
            let limit = self.args.wait.and_then(crate::cli::WaitLimit::limit);
            run = Box::pin(runner.wait_for_grant(run, limit, signals, observer)).await?;
            observer.done_waiting(&run);
        }
        if run.status != RunStatus::Pending {
            return Ok(DispatchedRun { run, reused: false });
        }
        let spec = self
            .specs
            .get(&run.machine)
            .cloned()
            .unwrap_or(request.machine);
        let _slot = slots
            .acquire()
            .await
            .map_err(|_| CliError::Internal("the run slots were closed".to_owned()))?;
        let run =
            Box::pin(runner.execute(run, &spec, Some(self.manifest), signals, observer)).await?;
        Ok(DispatchedRun { run, reused: false })
    }
}

/// `--any` runs one entrypoint wherever it lands: the machines must share their OS.
fn same_os(selected: &[&FleetMachine]) -> Result<(), CliError> {
    let Some(first) = selected.first() else {
        return Ok(());
    };
    match selected
        .iter()
        .find(|machine| machine.spec.os.family() != first.spec.os.family())
    {
        Some(other) => Err(CliError::invalid(format!(
            "--any runs one test on one machine of the set, so the machines must share their OS: \
             {} is {}, {} is {}; select machines of one OS (a label, or -m)",
            first.spec.name, first.spec.os, other.spec.name, other.spec.os
        ))),
        None => Ok(()),
    }
}

/// Runs beyond the `--max-parallel` executing at once wait for a slot, and nothing renews
/// their leases meanwhile: this task renews the leases of every new run of the command each
/// heartbeat until it ends (the runner's own heartbeat takes over once a run executes), so that
/// a run waiting for a slot keeps its machine.
fn keep_queued_leases(
    runner: &Runner,
    prepared_runs: &[(DispatchRequest, Prepared)],
    me: &RunOwner,
    args: &RunArgs,
) -> Option<tokio::task::JoinHandle<()>> {
    let ids: Vec<RunId> = prepared_runs
        .iter()
        .filter(|(_, prepared)| prepared.needs_execution() || prepared.needs_wait())
        .map(|(_, prepared)| prepared.run.id.clone())
        .collect();
    if ids.len() <= usize::from(args.max_parallel) {
        return None;
    }
    Some(owner::keep_leases(
        Arc::clone(runner.store()),
        ids,
        me.clone(),
        runner.config().lease,
    ))
}

/// Follows a run another process owns until it is terminal (or until we are interrupted): says
/// so at once, and streams its output from its logs as they grow.
async fn follow(
    ctx: &Context,
    runner: &Runner,
    run: &Run,
    watch_signals: &SignalWatch,
    observer: &TerminalObserver,
) -> Result<Run, CliError> {
    let (state, machine) = if run.status == RunStatus::Queued {
        (
            "already waiting for a machine",
            run.waiting_for.first().unwrap_or(&run.machine),
        )
    } else {
        ("already running", &run.machine)
    };
    eprintln!(
        "{machine}: {} is {state} as {}, following its output (Ctrl-C stops following, not the run)",
        run.test_dir.display(),
        run.id
    );
    let (mut stdout_offset, mut stderr_offset) = (0u64, 0u64);
    let mut pump = |observer: &TerminalObserver| {
        for (stream, path, offset) in [
            (OutputStream::Stdout, &run.paths.stdout, &mut stdout_offset),
            (OutputStream::Stderr, &run.paths.stderr, &mut stderr_offset),
        ] {
            if let Ok(bytes) = crate::commands::runs::read_from(path, *offset)
                && !bytes.is_empty()
            {
                *offset += bytes.len() as u64;
                observer.output(run, stream, &bytes);
            }
        }
    };
    let waiting = wait_for(ctx, runner, &run.id, watch_signals);
    tokio::pin!(waiting);
    let mut tick = tokio::time::interval(crate::context::POLL_INTERVAL);
    let ended = loop {
        tokio::select! {
            ended = &mut waiting => break ended,
            _ = tick.tick() => pump(observer),
        }
    };
    if !watch_signals.interrupted() {
        pump(observer);
    }
    ended
}

/// Polls a run another process owns until it is terminal (or until we are interrupted).
async fn wait_for(
    ctx: &Context,
    runner: &Runner,
    id: &RunId,
    watch_signals: &SignalWatch,
) -> Result<Run, CliError> {
    let ids = [id.clone()];
    let probe = ProcessProbe {
        controller: runner
            .config()
            .controller
            .clone()
            .ok_or_else(|| CliError::Internal("the runner names no controller".to_owned()))?,
    };
    let runs = ctx
        .watch(runner.store().as_ref(), &probe)
        .until_terminal(&ids, watch_signals.signals.cancel.cancelled())
        .await?;
    runs.into_iter()
        .next()
        .ok_or_else(|| CliError::Internal(format!("run {id} vanished while waiting")))
}

/// Spawns one `_worker` per new run and makes it the run's owner before returning.
async fn detach_all(
    ctx: &Context,
    runner: &Runner,
    prepared_runs: Vec<(DispatchRequest, Prepared)>,
    args: &RunArgs,
) -> Result<Vec<DispatchedRun>, CliError> {
    let store = runner.store().as_ref();
    let controller = ctx.controller()?;
    let lease = runner.config().lease.duration;
    let mut results = Vec::with_capacity(prepared_runs.len());
    for (_, prepared) in prepared_runs {
        if !prepared.needs_execution() && !prepared.needs_wait() {
            results.push(DispatchedRun {
                run: prepared.run,
                reused: prepared.reused,
            });
            continue;
        }
        let run = match spawn_worker(ctx, &prepared.run, args) {
            Ok(pid) => match store
                .set_owner(&prepared.run.id, &owner::of_pid(&controller, pid), lease)
                .await
            {
                Ok(run) => run,
                // The worker already finished it.
                Err(testfleet_core::ports::StoreError::Conflict { .. }) => {
                    get_run(store, &prepared.run.id).await?
                }
                Err(error) => return Err(error.into()),
            },
            Err(error) => {
                let failed =
                    Transition::new(prepared.run.status, RunStatus::Failed, Timestamp::now())
                        .with_error(ErrorCode::Internal, error.message());
                runner.finish_with(&prepared.run.id, failed).await?
            }
        };
        results.push(DispatchedRun { run, reused: false });
    }
    Ok(results)
}

/// Starts `testfleet _worker RUN_ID` with its output in the run's `worker.log`.
fn spawn_worker(ctx: &Context, run: &Run, args: &RunArgs) -> Result<u32, CliError> {
    let mut argv = vec!["_worker".to_owned(), run.id.to_string()];
    if args.accept_new_host_key {
        argv.push("--accept-new-host-key".to_owned());
    }
    if run.status == RunStatus::Queued {
        match args.wait.and_then(crate::cli::WaitLimit::limit) {
            Some(limit) => argv.push(format!("--wait={}", humantime::format_duration(limit))),
            None => argv.push("--wait".to_owned()),
        }
    }
    for pattern in &args.results {
        argv.push("--results".to_owned());
        argv.push(pattern.clone());
    }
    if args.no_cache {
        argv.push("--no-cache".to_owned());
    }
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    crate::detach::spawn(ctx, run, &argv)
}
