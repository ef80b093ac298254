//! Before a run's script may start, the machine has a say: what other runs left under
//! `<root>/runs/` is looked at (`docs/contract.md#remote-side`).
//!
//! - A run the store knows as ended whose processes are still alive is an orphan (its
//!   connection died before its tree did): it is killed and its folder removed.
//! - A live run the store does not know belongs to another controller with a store of its own:
//!   the machine is in fact busy, and that run is left alone.
//! - Dead remnants (a pid file with nothing alive behind it, a folder of a run the store knows as
//!   ended) are removed.
//!
//! This runs beside the upload and decides before the gate opens. It costs one SFTP listing
//! when the machine is clean, and a probe command only when other runs' pid files are there.
//! Windows hosts are not probed: testfleet cannot tell their processes apart.

use std::collections::BTreeMap;

use crate::code::error_chain;
use crate::ids::RunId;
use crate::ports::{KillOutcome, KillRequest, OutputTail, RemoteExit, StoreError};
use crate::remote::{RemoteLayout, join_remote};
use crate::run::Run;

use super::Execution;

/// What the look at other runs found.
#[derive(Debug, Default)]
pub(super) struct Cleared {
    /// What was done, for the run's events.
    pub(super) notes: Vec<String>,
    /// Why the machine is busy after all, when it is.
    pub(super) busy: Option<String>,
}

/// Another run's traces under `runs/`.
#[derive(Debug, Default)]
struct Traces {
    has_pid_file: bool,
    has_folder: bool,
    /// Whether something of it is alive (probed; `None` when not probed).
    alive: Option<bool>,
}

impl Execution<'_> {
    /// Looks at the other runs under `<root>/runs/` and deals with them.
    pub(super) async fn clear_leftovers(&self, layout: &RemoteLayout) -> Cleared {
        let mut cleared = Cleared::default();
        let Some(probe) = self
            .shell
            .probe_command(layout.runs_dir(), self.run.id.as_str())
        else {
            return cleared;
        };
        let mut others = match self.other_runs(layout).await {
            Ok(others) if others.is_empty() => return cleared,
            Ok(others) => others,
            Err(note) => {
                cleared.notes.push(note);
                return cleared;
            }
        };
        if others.values().any(|traces| traces.has_pid_file)
            && let Err(note) = self.probe(&probe, &mut others).await
        {
            cleared.notes.push(note);
            return cleared;
        }
        for (id, traces) in others {
            let known = match self.runner.store.get(&id).await {
                Ok(run) => Some(run),
                Err(StoreError::NotFound(_)) => None,
                Err(error) => {
                    cleared.notes.push(format!(
                        "failed to look up run {id}: {}",
                        error_chain(&error)
                    ));
                    continue;
                }
            };
            self.deal_with(layout, &id, &traces, known.as_ref(), &mut cleared)
                .await;
            if cleared.busy.is_some() {
                break;
            }
        }
        cleared
    }

    /// The other runs that left a pid file or a folder, by id (names that are no run id are
    /// not testfleet's and are left alone).
    async fn other_runs(&self, layout: &RemoteLayout) -> Result<BTreeMap<RunId, Traces>, String> {
        let names = self
            .session
            .list_dir(layout.runs_dir())
            .await
            .map_err(|error| {
                format!(
                    "failed to list {}: {}",
                    layout.runs_dir(),
                    error_chain(&error)
                )
            })?;
        let mut others: BTreeMap<RunId, Traces> = BTreeMap::new();
        for name in names {
            let (stem, is_pid_file) = match name.strip_suffix(".pid") {
                Some(stem) => (stem, true),
                None => (name.as_str(), false),
            };
            let Ok(id) = RunId::parse(stem) else { continue };
            if id == self.run.id {
                continue;
            }
            let traces = others.entry(id).or_default();
            if is_pid_file {
                traces.has_pid_file = true;
            } else {
                traces.has_folder = true;
            }
        }
        Ok(others)
    }

    /// Asks the machine which of the runs with a pid file still have something alive.
    async fn probe(
        &self,
        command: &str,
        others: &mut BTreeMap<RunId, Traces>,
    ) -> Result<(), String> {
        let mut output = OutputTail::default();
        let exit = self
            .session
            .exec(command, &mut output)
            .await
            .map_err(|error| format!("failed to probe other runs: {}", error_chain(&error)))?;
        if exit != RemoteExit::Code(0) {
            return Err(format!(
                "the probe of other runs ended with {exit:?}: {}",
                output.text()
            ));
        }
        for line in output.text().lines() {
            let Some((state, id)) = line.split_once(' ') else {
                continue;
            };
            if let Some(traces) = RunId::parse(id).ok().and_then(|id| others.get_mut(&id)) {
                traces.alive = Some(state == "live");
            }
        }
        Ok(())
    }

    /// Kills an orphan, removes remnants, or finds the machine busy.
    async fn deal_with(
        &self,
        layout: &RemoteLayout,
        id: &RunId,
        traces: &Traces,
        known: Option<&Run>,
        cleared: &mut Cleared,
    ) {
        let alive = traces.alive == Some(true);
        match known {
            Some(run) if run.status.is_active() => {
                cleared.busy = Some(format!(
                    "machine {} is busy with run {id}, which runs on machine {} from the same \
                     remote folder {}",
                    self.run.machine,
                    run.machine,
                    layout.runs_dir()
                ));
            }
            None if alive => {
                cleared.busy = Some(format!(
                    "machine {} is busy with run {id}, which another controller started (its \
                     store is not this one); it was left alone",
                    self.run.machine
                ));
            }
            Some(run) if alive => {
                let killed = self.kill_orphan(layout, id).await;
                let removed = self.remove_traces(layout, id).await;
                cleared.notes.push(format!(
                    "run {id}, which ended {}, was still alive on the machine: {killed}; {removed}",
                    run.status
                ));
            }
            // Dead: a pid file with nothing alive behind it, or a folder of a run that ended.
            Some(_) | None if traces.has_pid_file || known.is_some() => {
                let removed = self.remove_traces(layout, id).await;
                cleared.notes.push(format!(
                    "run {id} had left remnants on the machine: {removed}"
                ));
            }
            // A folder without a pid file that no store here knows: another controller's run
            // may be uploading into it.
            _ => {}
        }
    }

    async fn kill_orphan(&self, layout: &RemoteLayout, id: &RunId) -> String {
        let kill = KillRequest {
            shell: self.shell,
            pid_file: format!("{}.pid", join_remote(layout.runs_dir(), id.as_str())),
            run_id: id.to_string(),
            grace: self.runner.config.kill_grace,
        };
        match self.session.kill(&kill).await {
            Ok(KillOutcome::Killed) => "killed it".to_owned(),
            Ok(KillOutcome::AlreadyGone) => "it ended meanwhile".to_owned(),
            Ok(KillOutcome::Survived) => "processes of it survived KILL".to_owned(),
            Err(error) => format!("failed to kill it: {}", error_chain(&error)),
        }
    }

    async fn remove_traces(&self, layout: &RemoteLayout, id: &RunId) -> String {
        let folder = join_remote(layout.runs_dir(), id.as_str());
        let pid_file = format!("{folder}.pid");
        for path in [&folder, &pid_file] {
            if let Err(error) = self.session.remove(path).await {
                return format!("failed to remove {path}: {}", error_chain(&error));
            }
        }
        "removed its folder".to_owned()
    }
}
