//! What testfleet keeps on the machines themselves: `machines cache NAME` shows a machine's file
//! cache, `gc --remote` prunes it and removes the run folders nothing else removes
//! (`docs/contract.md#remote-file-cache`).

use std::fmt::Write as _;
use std::time::Duration;

use serde_json::{Value, json};
use testfleet_core::ports::{CacheUsage, FileCache, RunFilter, SshConnector, SshError, SshSession};
use testfleet_core::remote::{RemoteLayout, join_remote};
use testfleet_core::{ErrorCode, Run, Timestamp};

use crate::config::FleetMachine;
use crate::context::Context;
use crate::error::{CliError, Exit};
use crate::output::{Report, counted, human_size};

/// The absolute remote root of a machine, or `None` when it does not exist yet (nothing was
/// ever run there).
async fn remote_root(session: &dyn SshSession, machine: &FleetMachine) -> Option<String> {
    session.realpath(&machine.spec.remote_root).await.ok()
}

/// `machines cache NAME`: how much the machine's file cache holds.
///
/// # Errors
/// `FLEET_CONFIG_INVALID`, `UNKNOWN_MACHINE`; the dial's and the listing's codes.
pub async fn cache(ctx: &Context, name: &str) -> Result<Report, CliError> {
    let fleet = ctx.fleet()?;
    let machine = fleet.machine(name)?;
    let connector = crate::context::connector();
    let session = connector.connect(&machine.spec.ssh).await?;
    let root = remote_root(session.as_ref(), machine).await;
    let path = join_remote(
        root.as_deref().unwrap_or(&machine.spec.remote_root),
        "cache",
    );
    let usage = match root {
        Some(_) => session.cache_usage(&path).await,
        None => Ok(CacheUsage::default()),
    };
    let _ = session.close().await;
    let usage = usage?;
    let limit = machine.spec.cache_max;
    let files = usize::try_from(usage.files).unwrap_or(usize::MAX);
    let mut human = format!(
        "{name}: {}, {} in {path}",
        counted(files, "file", "files"),
        human_size(usage.bytes)
    );
    match limit {
        Some(max) => {
            let _ = write!(human, " (limit {})", human_size(max));
        }
        None => human.push_str(" (the cache is off for this machine: cache = false)"),
    }
    human.push('\n');
    Ok(Report::new(
        json!({
            "machine": name,
            "path": path,
            "files": usage.files,
            "bytes": usage.bytes,
            "max_bytes": limit,
            "enabled": limit.is_some(),
        }),
        human,
    ))
}

/// What `gc --remote` did (or would do) on one machine.
struct Pruned {
    cache: CacheUsage,
    run_dirs: Vec<String>,
}

/// `gc --remote`: on each machine, the cache pruned to its limit and the remote folders of
/// finished runs older than `older_than` that were kept or whose owner was lost removed. One
/// entry per machine (`data` is their list); exit 1 when a machine could not be cleaned.
///
/// # Errors
/// `FLEET_CONFIG_INVALID`, `UNKNOWN_MACHINE`, `STORE_ERROR`.
pub async fn gc_remote(
    ctx: &Context,
    names: &[String],
    older_than: Duration,
    dry_run: bool,
) -> Result<Report, CliError> {
    let fleet = ctx.fleet()?;
    let machines: Vec<&FleetMachine> = if names.is_empty() {
        fleet.machines.iter().collect()
    } else {
        names
            .iter()
            .map(|name| fleet.machine(name))
            .collect::<Result<_, _>>()?
    };
    let store = ctx.open_for_reading().await?;
    let runs = store.list(&RunFilter::default()).await?;
    drop(store);
    let now = Timestamp::now();
    let connector = crate::context::connector();
    let results = futures::future::join_all(machines.iter().map(|machine| {
        let leftovers: Vec<&Run> = runs
            .iter()
            .filter(|run| run.machine == machine.spec.name && left_behind(run, now, older_than))
            .collect();
        prune_machine(&connector, machine, leftovers, dry_run)
    }))
    .await;
    let mut entries = Vec::new();
    let mut human = String::new();
    let mut exit = Exit::Ok;
    let verb = if dry_run { "would remove" } else { "removed" };
    for (machine, result) in machines.iter().zip(results) {
        let name = machine.spec.name.as_str();
        match result {
            Ok(pruned) => {
                let files = usize::try_from(pruned.cache.files).unwrap_or(usize::MAX);
                let _ = writeln!(
                    human,
                    "{name}: {verb} {} ({}) from the cache and {}",
                    counted(files, "file", "files"),
                    human_size(pruned.cache.bytes),
                    counted(pruned.run_dirs.len(), "run folder", "run folders"),
                );
                entries.push(json!({
                    "machine": name,
                    "cache_files_removed": pruned.cache.files,
                    "cache_bytes_removed": pruned.cache.bytes,
                    "run_dirs_removed": pruned.run_dirs,
                    "error": null,
                }));
            }
            Err(error) => {
                exit = Exit::RunFailed;
                let message = crate::remedy::describe_ssh(name, &error, false);
                let _ = writeln!(human, "{name}: {}  {message}", error.code());
                entries.push(json!({
                    "machine": name,
                    "cache_files_removed": 0,
                    "cache_bytes_removed": 0,
                    "run_dirs_removed": [],
                    "error": { "code": error.code(), "message": message },
                }));
            }
        }
    }
    Ok(Report::new(Value::Array(entries), human).with_exit(exit))
}

/// Whether `run` is finished, older than `older_than`, and left a remote folder that nothing
/// else removes: it was kept (`--keep-remote`), or its owner was lost.
fn left_behind(run: &Run, now: Timestamp, older_than: Duration) -> bool {
    let lost = run
        .error
        .as_ref()
        .is_some_and(|error| error.code == ErrorCode::WorkerLost);
    run.status.is_terminal()
        && run.remote_dir.is_some()
        && (run.keep_remote || lost)
        && run
            .finished_at
            .is_some_and(|finished| now.since(finished) >= older_than)
}

async fn prune_machine(
    connector: &dyn SshConnector,
    machine: &FleetMachine,
    leftovers: Vec<&Run>,
    dry_run: bool,
) -> Result<Pruned, SshError> {
    let session = connector.connect(&machine.spec.ssh).await?;
    let pruned = prune_on(session.as_ref(), machine, &leftovers, dry_run).await;
    let _ = session.close().await;
    pruned
}

async fn prune_on(
    session: &dyn SshSession,
    machine: &FleetMachine,
    leftovers: &[&Run],
    dry_run: bool,
) -> Result<Pruned, SshError> {
    let Some(root) = remote_root(session, machine).await else {
        return Ok(Pruned {
            cache: CacheUsage::default(),
            run_dirs: Vec::new(),
        });
    };
    let cache = FileCache {
        dir: join_remote(&root, "cache"),
        max_bytes: machine.spec.cache_max.unwrap_or(0),
    };
    let cache = session.prune_cache(&cache, dry_run).await?;
    // Only folders still there count: a listing of `runs/` says which.
    let runs_dir = join_remote(&root, "runs");
    let present = session.list_dir(&runs_dir).await?;
    let mut run_dirs = Vec::new();
    for run in leftovers {
        let Some(remote_dir) = &run.remote_dir else {
            continue;
        };
        if !present.iter().any(|name| name == run.id.as_str()) {
            continue;
        }
        if !dry_run {
            let layout = RemoteLayout::of_run_dir(remote_dir, &run.id);
            session.remove(layout.run_dir()).await?;
            session.remove(layout.pid_file()).await?;
        }
        run_dirs.push(run.id.to_string());
    }
    Ok(Pruned { cache, run_dirs })
}

/// `gc --remote`'s report: the local part's, with the machines' entries as `remote` and
/// their lines after its own.
pub fn merge(local: Report, remote: Report) -> Report {
    let mut data = local.data;
    data["remote"] = remote.data;
    Report::new(data, format!("{}{}", local.human, remote.human)).with_exit(remote.exit)
}
