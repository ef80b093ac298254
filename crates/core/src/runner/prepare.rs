//! Preparing a dispatch: the entrypoint from the manifest, the atomic claim, the local folder.

use std::fs::OpenOptions;

use crate::code::ErrorCode;
use crate::error::{BusyMachine, DispatchError};
use crate::hash::DirManifest;
use crate::ids::TestDirHash;
use crate::ports::Claimed;
use crate::queue::ClaimOn;
use crate::run::{NewRun, Run, RunPaths, RunStatus, Transition};

use super::{DispatchRequest, Prepared, Runner};

impl Runner {
    /// Takes the entrypoint from the manifest and claims the machine. Creates the pending run
    /// and its local folder, or returns the active run with the same hash, arguments and
    /// variables (`reused`). A machine that live runs wait for is busy: a claim that does not
    /// wait never jumps the queue.
    ///
    /// # Errors
    /// [`DispatchError::MissingEntrypoint`]; [`DispatchError::MachineBusy`] when another hash,
    /// or the same hash with other arguments or variables, is active on the machine; [`DispatchError::Store`]. Nothing is persisted for these.
    pub async fn prepare(
        &self,
        manifest: &DirManifest,
        request: &DispatchRequest,
    ) -> Result<Prepared, DispatchError> {
        let on = ClaimOn::now(request.machine.name.clone());
        self.prepare_on(manifest, request, &on).await
    }

    /// [`Runner::prepare`] over the candidates of `on` (`request.machine` is the first; they
    /// share its OS): creates the run pending on the least recently used free candidate, or,
    /// when `on.wait`, queued for all of them ([`Prepared::needs_wait`]), or returns the live run
    /// with the same hash on one of them (`reused`).
    ///
    /// # Errors
    /// [`DispatchError::MissingEntrypoint`]; [`DispatchError::MachineBusy`] (one candidate) or
    /// [`DispatchError::MachinesBusy`] (several) when they are busy and the claim may not wait;
    /// [`DispatchError::Store`]. Nothing is persisted for these.
    pub async fn prepare_on(
        &self,
        manifest: &DirManifest,
        request: &DispatchRequest,
        on: &ClaimOn,
    ) -> Result<Prepared, DispatchError> {
        let machine = &request.machine;
        let entrypoint = manifest.entrypoint_for(&machine.os)?;
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
            invocation: request.invocation.clone(),
            created_at: now,
            timeout_ms: request
                .timeout
                .map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX)),
            keep_remote: request.keep_remote,
            owner: request.owner.clone(),
            lease: self.config.lease.duration,
            controller: self.config.controller.clone(),
        };
        let new_hash = new.test_dir_hash.clone();
        let run = match self.store.claim_in(new, on).await? {
            Claimed::Existing(run) => return Ok(Prepared { run, reused: true }),
            Claimed::Busy(runs) => return Err(busy(on, runs, &new_hash)),
            Claimed::Created(run) | Claimed::Queued(run) => run,
        };
        match create_local_files(&run.paths) {
            Ok(()) => Ok(Prepared { run, reused: false }),
            Err(error) => {
                let message = format!(
                    "failed to create the local run folder {}: {}",
                    run.paths.dir.display(),
                    super::logs::describe_io(&error)
                );
                let ended = Transition::new(run.status, RunStatus::Failed, self.clock.now())
                    .with_error(ErrorCode::Internal, message);
                let run = self.finish_with(&run.id, ended).await?;
                Ok(Prepared { run, reused: false })
            }
        }
    }
}

/// The error of a claim that found every candidate busy.
/// What makes the candidates of `on` busy for a new run of the directory `hash`: the runs that
/// hold them (or wait for them first), in candidate order.
fn busy(on: &ClaimOn, runs: Vec<Run>, hash: &TestDirHash) -> DispatchError {
    if let [run] = runs.as_slice()
        && on.machines.len() == 1
    {
        return DispatchError::MachineBusy {
            other_invocation: run.test_dir_hash == *hash,
            machine: on.machines[0].clone(),
            active_run: run.id.clone(),
            active_hash: run.test_dir_hash.clone(),
            queued: run.status == RunStatus::Queued,
        };
    }
    DispatchError::MachinesBusy {
        busy: on
            .machines
            .iter()
            .zip(runs)
            .map(|(machine, run)| BusyMachine {
                machine: machine.clone(),
                run: run.id,
                queued: run.status == RunStatus::Queued,
            })
            .collect(),
    }
}

fn create_local_files(paths: &RunPaths) -> std::io::Result<()> {
    std::fs::create_dir_all(&paths.dir)?;
    for log in [&paths.stdout, &paths.stderr] {
        OpenOptions::new().create(true).append(true).open(log)?;
    }
    Ok(())
}
