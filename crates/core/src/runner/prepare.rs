//! Preparing a dispatch: the entrypoint from the manifest, the atomic claim, the local folder.

use std::fs::OpenOptions;

use crate::code::ErrorCode;
use crate::error::DispatchError;
use crate::hash::DirManifest;
use crate::ports::Claim;
use crate::run::{NewRun, RunPaths, RunStatus};

use super::{DispatchRequest, Prepared, Runner};

impl Runner {
    /// Takes the entrypoint from the manifest and claims the machine. Creates the pending run
    /// and its local folder, or returns the active run with the same hash, arguments and
    /// variables (`reused`).
    ///
    /// # Errors
    /// [`DispatchError::MissingEntrypoint`]; [`DispatchError::MachineBusy`] when another hash,
    /// or the same hash with other arguments or variables, is active on the machine; [`DispatchError::Store`]. Nothing is persisted for these.
    pub async fn prepare(
        &self,
        manifest: &DirManifest,
        request: &DispatchRequest,
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
        match self.store.claim(new).await? {
            Claim::Active(run)
                if run.test_dir_hash == manifest.hash
                    && run.invocation.same_key(&request.invocation) =>
            {
                Ok(Prepared { run, reused: true })
            }
            Claim::Active(run) => Err(DispatchError::MachineBusy {
                other_invocation: run.test_dir_hash == manifest.hash,
                machine: run.machine,
                active_run: run.id,
                active_hash: run.test_dir_hash,
            }),
            Claim::Created(run) => match create_local_files(&run.paths) {
                Ok(()) => Ok(Prepared { run, reused: false }),
                Err(error) => {
                    let message = format!(
                        "failed to create the local run folder {}: {}",
                        run.paths.dir.display(),
                        super::logs::describe_io(&error)
                    );
                    let run = self
                        .end_pending(&run.id, RunStatus::Failed, ErrorCode::Internal, message)
                        .await?;
                    Ok(Prepared { run, reused: false })
                }
            },
        }
    }
}

fn create_local_files(paths: &RunPaths) -> std::io::Result<()> {
    std::fs::create_dir_all(&paths.dir)?;
    for log in [&paths.stdout, &paths.stderr] {
        OpenOptions::new().create(true).append(true).open(log)?;
    }
    Ok(())
}
