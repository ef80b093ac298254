//! The upload step: the manifest goes up into the run folder while a gated command waits.

use std::borrow::Cow;

use crate::hash::DirManifest;
use crate::ports::{FileCache, TransferStats};
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
    /// Through the machine's file cache unless it has none. Returns what was sent.
    ///
    /// On failure or cancel: the outcome of a run whose script never started.
    pub(super) async fn upload(
        &self,
        layout: &RemoteLayout,
        manifest: &DirManifest,
        cache: Option<&FileCache>,
        exec: &mut Started<'_>,
    ) -> Result<(Option<ExecResult>, TransferStats), Outcome> {
        let manifest = with_executable_entrypoint(manifest, self.shell, &self.run.entrypoint);
        let progress = ObserverProgress {
            run: self.run,
            observer: self.observer,
        };
        let upload = async {
            match cache {
                Some(cache) => {
                    let session = self.session;
                    session
                        .upload_cached(&manifest, layout.run_dir(), cache, &progress)
                        .await
                }
                None => {
                    self.session
                        .upload(&manifest, layout.run_dir(), &progress)
                        .await
                }
            }
        };
        tokio::pin!(upload);
        let mut ended_at_gate = None;
        loop {
            tokio::select! {
                biased;
                () = self.signals.cancel.cancelled() => return Err(Outcome::interrupted()),
                uploaded = &mut upload => {
                    return match uploaded {
                        Ok(stats) => Ok((ended_at_gate, stats)),
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

impl Execution<'_> {
    /// The machine's file cache, if it has one: POSIX hosts only (a Windows file's mode bits
    /// mean nothing, and its SFTP server may not link).
    pub(super) fn file_cache(&self, layout: &RemoteLayout) -> Option<FileCache> {
        let max_bytes = self.machine.cache_max?;
        if self.shell != RemoteShell::Posix {
            tracing::debug!(run = %self.run.id, "no file cache on a Windows host: sending every file");
            return None;
        }
        Some(FileCache {
            dir: layout.cache_dir(),
            max_bytes,
        })
    }

    /// Evicts from the machine's file cache what no longer fits, after an upload that added to
    /// it. A failure is only a note: the run does not depend on it.
    pub(super) async fn prune_cache(
        &self,
        cache: Option<&FileCache>,
        added: bool,
    ) -> Option<String> {
        let cache = cache.filter(|_| added)?;
        match self.session.prune_cache(cache, false).await {
            Ok(removed) => {
                if removed.files > 0 {
                    tracing::debug!(
                        run = %self.run.id,
                        files = removed.files,
                        bytes = removed.bytes,
                        "evicted from the file cache"
                    );
                }
                None
            }
            Err(error) => Some(format!("the file cache could not be pruned: {error}")),
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
