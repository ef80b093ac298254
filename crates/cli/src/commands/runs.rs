//! Commands that read and manage recorded runs: `status`, `wait`, `list`, `logs`, `cancel`,
//! `gc`. Each reaps lost runs first, so a crashed owner never shows as running.

use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::path::Path;
use std::time::Duration;

use serde_json::json;
use testfleet_core::ports::{RunFilter, StoreError};
use testfleet_core::{MachineName, Run, RunStatus, Timestamp, Transition};

use crate::context::{Context, POLL_INTERVAL, find_run, get_run};
use crate::error::{CliError, Exit};
use crate::output::{self, Report};
/// How long `cancel` waits for the owner to record the run's end.
const CANCEL_DEADLINE: Duration = Duration::from_secs(90);

/// `status RUN_ID [--events]`.
///
/// # Errors
/// `INVALID_ARGUMENT`, `RUN_NOT_FOUND`, `STORE_ERROR`.
pub async fn status(
    ctx: &Context,
    run_id: &str,
    machine: Option<&str>,
    show_events: bool,
) -> Result<Report, CliError> {
    crate::context::parse_run_ref(run_id)?;
    let store = ctx.open_for_reading().await?;
    let run = find_run(store.as_ref(), run_id, machine).await?;
    let events = store.events(&run.id).await?;
    let files_removed = run.status.is_terminal() && !run.paths.dir.exists();
    let mut human = output::run_detail(ctx.style, &run);
    // A queued run: where it stands in each machine's queue.
    let queue = if run.status == RunStatus::Queued {
        let states = store.machine_states(&run.waiting_for).await?;
        let places = testfleet_core::queue::places(&run, &states, store.now().await?);
        human.push_str(&format!(
            "{:<13} {}\n",
            "queue",
            output::waiting_line(&places)
        ));
        Some(
            places
                .iter()
                .map(|place| {
                    json!({ "machine": place.machine, "held_by": place.held_by, "ahead": place.ahead })
                })
                .collect::<Vec<_>>(),
        )
    } else {
        None
    };
    if files_removed {
        human.push_str(&format!(
            "local files  removed: {} is gone (`testfleet gc`); the logs and artifacts above are no longer there\n",
            run.paths.dir.display()
        ));
    }
    if show_events {
        human.push_str(&output::events_table(&events));
    }
    Ok(Report::new(
        json!({ "run": run, "events": events, "queue": queue, "files_removed": files_removed }),
        human,
    ))
}

/// `list [-m NAME] [--status S] [--limit N]`.
///
/// # Errors
/// `INVALID_ARGUMENT`, `STORE_ERROR`.
pub async fn list(
    ctx: &Context,
    machine: Option<&str>,
    status: Option<RunStatus>,
    limit: usize,
) -> Result<Report, CliError> {
    let machine = machine
        .map(MachineName::parse)
        .transpose()
        .map_err(|error| CliError::invalid(error.to_string()))?;
    let store = ctx.open_for_reading().await?;
    let runs = store
        .list(&RunFilter {
            machine,
            status,
            limit: Some(limit),
        })
        .await?;
    let human = output::run_table(ctx.style, &runs);
    Ok(Report::new(json!({ "runs": runs }), human))
}

/// Exit status of a command whose job was to see runs finish.
pub fn runs_exit(runs: &[Run]) -> Exit {
    if runs.iter().all(|run| run.status == RunStatus::Completed) {
        Exit::Ok
    } else {
        Exit::RunFailed
    }
}

/// `wait RUN_ID... [--timeout DUR]`: polls until every run is terminal or the timeout elapses
/// (then the runs are reported as they are, exit 1).
///
/// # Errors
/// `INVALID_ARGUMENT`, `RUN_NOT_FOUND`, `STORE_ERROR`.
pub async fn wait(
    ctx: &Context,
    run_ids: &[String],
    machine: Option<&str>,
    timeout: Option<Duration>,
    report: Option<&Path>,
) -> Result<Report, CliError> {
    for typed in run_ids {
        crate::context::parse_run_ref(typed)?;
    }
    let store = ctx.open_and_reap().await?;
    let mut ids = Vec::with_capacity(run_ids.len());
    for typed in run_ids {
        ids.push(find_run(store.as_ref(), typed, machine).await?.id);
    }
    let give_up = async {
        match timeout {
            Some(timeout) => tokio::time::sleep(timeout).await,
            None => std::future::pending().await,
        }
    };
    let probe = ctx.probe()?;
    let runs = ctx
        .watch(store.as_ref(), &probe)
        .until_terminal(&ids, give_up)
        .await?;
    let mut human: String = runs
        .iter()
        .map(|run| output::run_summary(ctx.style, run, false))
        .collect();
    let mut exit = runs_exit(&runs);
    let mut data = json!({ "runs": runs, "errors": [] });
    if let Some(path) = report {
        let (line, with_report) =
            crate::commands::report::report_for_runs(runs, path, &mut data, exit).await;
        human.push_str(&line);
        exit = with_report;
    }
    Ok(Report::new(data, human).with_exit(exit))
}

/// `logs RUN_ID [--stderr] [-f]`: the log file's bytes; with `-f`, new bytes as they are
/// appended until the run is terminal.
///
/// # Errors
/// `INVALID_ARGUMENT`, `RUN_NOT_FOUND`, `STORE_ERROR`, `INTERNAL` (unreadable log).
pub async fn logs(
    ctx: &Context,
    run_id: &str,
    machine: Option<&str>,
    stderr: bool,
    follow: bool,
) -> Result<Report, CliError> {
    crate::context::parse_run_ref(run_id)?;
    let store = ctx.open_for_reading().await?;
    let probe = ctx.probe()?;
    let mut run = find_run(store.as_ref(), run_id, machine).await?;
    let id = run.id.clone();
    let path = if stderr {
        run.paths.stderr.clone()
    } else {
        run.paths.stdout.clone()
    };
    if let Some(controller) = run.controller.as_ref().filter(|c| **c != probe.controller) {
        return Err(CliError::LogsOnOtherController {
            id: run.id.to_string(),
            controller: controller.to_string(),
            path,
        });
    }
    if run.status.is_terminal() && !run.paths.dir.exists() {
        return Err(CliError::LogsRemoved {
            id: run.id.to_string(),
            dir: run.paths.dir.clone(),
        });
    }
    let stream = if stderr { "stderr" } else { "stdout" };
    let mut offset = 0u64;
    let mut collected = Vec::new();
    let mut stdout = std::io::stdout();
    loop {
        // Read what is there before looking at the status, so that nothing written before
        // the run ended is missed.
        let terminal_before_read = run.status.is_terminal();
        let chunk = read_from(&path, offset)?;
        offset += chunk.len() as u64;
        if ctx.style.json {
            collected.extend_from_slice(&chunk);
        } else if !chunk.is_empty() {
            let _ = stdout.write_all(&chunk);
            let _ = stdout.flush();
        }
        if !follow || terminal_before_read {
            break;
        }
        tokio::time::sleep(POLL_INTERVAL).await;
        ctx.reap(store.as_ref()).await?;
        run = get_run(store.as_ref(), &id).await?;
    }
    Ok(Report::new(
        json!({
            "run": run.id,
            "stream": stream,
            "path": path,
            "content": String::from_utf8_lossy(&collected),
        }),
        String::new(),
    ))
}

/// The bytes of `path` from `offset` on; nothing when the file does not exist yet.
pub(crate) fn read_from(path: &Path, offset: u64) -> Result<Vec<u8>, CliError> {
    let mut file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(CliError::io("read", path, error)),
    };
    let mut bytes = Vec::new();
    file.seek(SeekFrom::Start(offset))
        .and_then(|_| file.read_to_end(&mut bytes))
        .map_err(|error| CliError::io("read", path, error))?;
    Ok(bytes)
}

/// `cancel RUN_ID`: records a cancel request in the store (the owner acts on it at its next
/// heartbeat, on whatever controller it runs) and sends SIGTERM to a live owner on this
/// controller at once, then waits for the run to be terminal. A run without a live owner was
/// already reaped when the store was opened.
///
/// # Errors
/// `INVALID_ARGUMENT`, `RUN_NOT_FOUND`, `STORE_ERROR`, `INTERNAL` (the owner cannot be
/// signalled).
pub async fn cancel(
    ctx: &Context,
    run_id: &str,
    machine: Option<&str>,
) -> Result<Report, CliError> {
    use testfleet_core::runner::{Liveness, OwnerProbe as _};

    crate::context::parse_run_ref(run_id)?;
    let store = ctx.open_and_reap().await?;
    let probe = ctx.probe()?;
    let mut run = find_run(store.as_ref(), run_id, machine).await?;
    let id = run.id.clone();
    let mut exit = Exit::Ok;
    if run.status == RunStatus::Queued {
        // Out of the queue at once, whoever waits with it: nothing ran, nothing to kill.
        let change = Transition::new(RunStatus::Queued, RunStatus::Interrupted, Timestamp::now())
            .with_error(
                testfleet_core::ErrorCode::Interrupted,
                "the run was cancelled (testfleet cancel) while it waited for a machine",
            );
        match store.transition(&id, change).await {
            Ok(ended) => run = ended,
            // Granted meanwhile: cancel it as an active run.
            Err(StoreError::Conflict { .. }) => run = get_run(store.as_ref(), &id).await?,
            Err(error) => return Err(error.into()),
        }
    }
    if run.status.is_active() {
        run = match store.request_cancel(&id).await {
            Ok(run) => run,
            Err(StoreError::NotFound(id)) => return Err(id.into()),
            Err(error) => return Err(error.into()),
        };
        if let Some(owner) = run
            .owner()
            .filter(|owner| probe.liveness(owner) == Liveness::Alive)
        {
            let pid = i32::try_from(owner.pid)
                .map_err(|_| CliError::Internal(format!("pid {} out of range", owner.pid)))?;
            match nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            ) {
                Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
                Err(error) => {
                    return Err(CliError::Internal(format!(
                        "cannot signal pid {pid}, the owner of run {id}: {error}"
                    )));
                }
            }
        }
        let ids = [id.clone()];
        let runs = ctx
            .watch(store.as_ref(), &probe)
            .until_terminal(&ids, tokio::time::sleep(CANCEL_DEADLINE))
            .await?;
        if let Some(current) = runs.into_iter().next() {
            run = current;
        }
        if !run.status.is_terminal() {
            eprintln!(
                "warning: run {id} is still {} after {}s; its owner did not stop it yet",
                run.status,
                CANCEL_DEADLINE.as_secs()
            );
            exit = Exit::RunFailed;
        }
    }
    let human = output::run_summary(ctx.style, &run, false);
    Ok(Report::new(json!({ "run": run }), human).with_exit(exit))
}

/// `gc [--older-than DUR]`: deletes the local folders (logs, artifacts) of terminal runs that
/// finished longer ago than `older_than`. The run records stay (the store has no deletion).
///
/// # Errors
/// `STORE_ERROR`; `INTERNAL` when a folder cannot be removed.
pub async fn gc(ctx: &Context, older_than: Duration, dry_run: bool) -> Result<Report, CliError> {
    let store = ctx.open_and_reap().await?;
    let here = ctx.controller()?;
    let runs = store.list(&RunFilter::default()).await?;
    let now = Timestamp::now();
    let mut removed = Vec::new();
    for run in runs {
        let old_enough = run
            .finished_at
            .is_some_and(|finished| now.since(finished) >= older_than);
        // Only this controller's folders: another controller's runs name paths on its host.
        let ours = run
            .controller
            .as_ref()
            .is_none_or(|controller| *controller == here);
        if ours && run.status.is_terminal() && old_enough && run.paths.dir.exists() {
            if !dry_run {
                std::fs::remove_dir_all(&run.paths.dir)
                    .map_err(|error| CliError::io("remove", &run.paths.dir, error))?;
            }
            removed.push(run.id);
        }
    }
    if dry_run {
        let mut human = if removed.is_empty() {
            format!(
                "nothing to remove: no finished run with a local folder is older than {}\n",
                humantime::format_duration(older_than)
            )
        } else {
            format!(
                "would remove the local folders (logs, artifacts) of {}:\n",
                output::counted(removed.len(), "run", "runs")
            )
        };
        for id in &removed {
            human.push_str(&format!("  {id}\n"));
        }
        return Ok(Report::new(
            json!({ "removed": [], "would_remove": removed, "dry_run": true }),
            human,
        ));
    }
    let human = if removed.is_empty() {
        format!(
            "nothing to remove: no finished run with a local folder is older than {}\n",
            humantime::format_duration(older_than)
        )
    } else {
        format!(
            "removed the local folders (logs, artifacts) of {}; their records stay in `testfleet list`\n",
            output::counted(removed.len(), "run", "runs")
        )
    };
    Ok(Report::new(json!({ "removed": removed }), human))
}
