//! The first step: the remote root and `runs/` folder exist, and the run's remote folder is
//! recorded.

use crate::code::{ErrorCode, error_chain};
use crate::ports::SshError;
use crate::remote::{RemoteLayout, join_remote};

use super::Execution;
use crate::runner::outcome::Outcome;

impl Execution<'_> {
    /// Creates `<remote_root>/runs/`, resolves the remote root (realpath needs it to exist)
    /// and records the run's remote folder in the store.
    pub(super) async fn remote_folders(&self) -> Result<RemoteLayout, Outcome> {
        let remote_root = self.machine.remote_root.as_str();
        let runs_dir = join_remote(remote_root, "runs");
        let resolved = async {
            self.session.create_dir_all(&runs_dir).await?;
            let root = self.session.realpath(remote_root).await?;
            Ok::<_, SshError>(RemoteLayout::new(root, &self.run.id))
        };
        let layout = tokio::select! {
            biased;
            () = self.signals.cancel.cancelled() => return Err(Outcome::interrupted()),
            resolved = resolved => resolved.map_err(|error| Outcome::failed(&error))?,
        };
        if let Err(error) = self
            .runner
            .store
            .set_remote_dir(&self.run.id, layout.run_dir())
            .await
        {
            return Err(Outcome::failed_with(
                ErrorCode::StoreError,
                error_chain(&error),
            ));
        }
        Ok(layout)
    }
}
