//! The cleanup step: the remote run folder and its pid file are removed after the download,
//! unless `--keep-remote` or the connection is gone.
//!
//! A POSIX folder of [`RM_CLEANUP_MIN_ENTRIES`] entries or more is removed by one `rm -rf`
//! whose channel was started, gated, beside the script; smaller folders, Windows hosts and a
//! failed `rm` are removed with pipelined SFTP requests.

use crate::code::error_chain;
use crate::hash::DirManifest;
use crate::ports::{ExecGate, OutputTail, RemoteExit};
use crate::remote::RemoteLayout;

use super::Execution;
use crate::runner::outcome::Outcome;

/// From this many uploaded entries on, a POSIX run folder is removed with one `rm -rf` rather
/// than one pipelined SFTP request per entry; below it the SFTP removal takes a few requests
/// and no process on the host.
const RM_CLEANUP_MIN_ENTRIES: usize = 64;

impl Execution<'_> {
    /// Runs `main` (everything from the upload to the artifacts) beside the gated `rm -rf` of a
    /// large folder, then removes the remote folder: by that `rm`, or over SFTP.
    pub(super) async fn with_cleanup(
        &self,
        layout: &RemoteLayout,
        manifest: &DirManifest,
        main: impl Future<Output = Outcome>,
    ) -> Outcome {
        let n_entries = manifest.files.len() + manifest.dirs.len();
        let command = (!self.run.keep_remote && n_entries >= RM_CLEANUP_MIN_ENTRIES)
            .then(|| {
                self.shell
                    .gated_cleanup_command(layout.run_dir(), layout.pid_file())
            })
            .flatten();
        let (keeper, gate) = ExecGate::new();
        let rm = async {
            let command = command.as_ref()?;
            let mut output = OutputTail::default();
            let ended = self.session.exec_gated(command, gate, &mut output).await;
            Some((ended, output))
        };
        tokio::pin!(main);
        tokio::pin!(rm);
        // The `rm` channel is drained while the rest runs, so that it never stalls the
        // connection.
        let mut removed = None;
        let mut outcome = loop {
            tokio::select! {
                outcome = &mut main => break outcome,
                ended = &mut rm, if removed.is_none() => removed = Some(ended),
            }
        };
        if self.run.keep_remote || outcome.link_down {
            // The gated `rm` ends without removing anything once its keeper is gone.
            drop(keeper);
            return outcome;
        }
        keeper.open();
        if removed.is_none() {
            removed = tokio::select! {
                biased;
                () = self.signals.abandon.cancelled() => None,
                ended = &mut rm => Some(ended),
            };
        }
        let removed_by_rm = match removed {
            Some(Some((Ok(RemoteExit::Code(0)), _))) => true,
            Some(Some((ended, output))) => {
                tracing::debug!(
                    run = %self.run.id,
                    "rm -rf of the remote run folder ended with {ended:?}: {}; removing it over SFTP",
                    output.text()
                );
                false
            }
            Some(None) | None => false,
        };
        if !removed_by_rm && !self.signals.abandon.is_cancelled() {
            self.remove_over_sftp(layout, &mut outcome).await;
        }
        outcome
    }

    /// Removes the run folder and the pid file with SFTP requests, bounded by the abandon
    /// signal; failures become notes.
    async fn remove_over_sftp(&self, layout: &RemoteLayout, outcome: &mut Outcome) {
        let remove = async {
            for path in [layout.run_dir(), layout.pid_file()] {
                if let Err(error) = self.session.remove(path).await {
                    outcome.notes.push(format!(
                        "failed to remove remote {path}: {}",
                        error_chain(&error)
                    ));
                }
            }
        };
        tokio::select! {
            biased;
            () = self.signals.abandon.cancelled() => {}
            () = remove => {}
        }
    }
}
