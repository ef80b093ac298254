//! The upload step: the manifest goes up into the run folder while a gated command waits.

use std::borrow::Cow;

use crate::hash::DirManifest;
use crate::remote::{RemoteLayout, RemoteShell};

use super::Execution;
use super::exec::{ExecResult, Started};
use crate::runner::logs::ObserverProgress;
use crate::runner::outcome::Outcome;

impl Execution<'_> {
    /// Uploads the manifest into the run folder. A gated command that ends while it waits
    /// (its channel failed) is remembered and returned; the upload goes on, so that the run
    /// fails with the command's error and not half-way through an upload.
    ///
    /// On failure or cancel: the outcome of a run whose script never started.
    pub(super) async fn upload(
        &self,
        layout: &RemoteLayout,
        manifest: &DirManifest,
        exec: &mut Started<'_>,
    ) -> Result<Option<ExecResult>, Outcome> {
        let manifest = with_executable_entrypoint(manifest, self.shell, &self.run.entrypoint);
        let progress = ObserverProgress {
            run: self.run,
            observer: self.observer,
        };
        let upload = self.session.upload(&manifest, layout.run_dir(), &progress);
        tokio::pin!(upload);
        let mut ended_at_gate = None;
        loop {
            tokio::select! {
                biased;
                () = self.signals.cancel.cancelled() => return Err(Outcome::interrupted()),
                uploaded = &mut upload => {
                    return match uploaded {
                        Ok(_) => Ok(ended_at_gate),
                        Err(error) => Err(Outcome::failed(&error)),
                    };
                }
                ended = &mut exec.future, if exec.gated && !exec.done => {
                    exec.done = true;
                    ended_at_gate = Some(ended);
                }
            }
        }
    }
}

/// The manifest to upload: on POSIX the entrypoint goes up executable, as the exec script's
/// `chmod +x` would make it (mode bits are not hashed), which spares the host that process.
fn with_executable_entrypoint<'m>(
    manifest: &'m DirManifest,
    shell: RemoteShell,
    entrypoint: &str,
) -> Cow<'m, DirManifest> {
    if shell != RemoteShell::Posix {
        return Cow::Borrowed(manifest);
    }
    let found = manifest
        .files
        .iter()
        .position(|file| file.rel_path.to_str() == Some(entrypoint));
    match found {
        Some(idx) if manifest.files[idx].mode & 0o111 != 0o111 => {
            let mut owned = manifest.clone();
            owned.files[idx].mode |= 0o111;
            Cow::Owned(owned)
        }
        _ => Cow::Borrowed(manifest),
    }
}
