//! Where a running run's output and progress go: the log files and the observer.

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::Path;

use async_trait::async_trait;

use crate::ports::{ExecOutput, OutputStream, ProgressSink, TransferProgress};
use crate::run::Run;

use super::RunObserver;

/// Passes upload progress to the observer.
pub(super) struct ObserverProgress<'a> {
    pub(super) run: &'a Run,
    pub(super) observer: &'a dyn RunObserver,
}

impl ProgressSink for ObserverProgress<'_> {
    fn progress(&self, progress: TransferProgress) {
        self.observer.upload_progress(self.run, progress);
    }
}

/// Appends output to the run's log files as it arrives and passes it to the observer. Writes
/// go straight to the files (no buffering), so `logs -f` sees them at once and memory does not
/// grow with the output.
pub(super) struct LogSink<'a> {
    run: &'a Run,
    observer: &'a dyn RunObserver,
    stdout: File,
    stderr: File,
    error: Option<std::io::Error>,
}

impl<'a> LogSink<'a> {
    pub(super) fn open(run: &'a Run, observer: &'a dyn RunObserver) -> std::io::Result<Self> {
        let open = |path: &Path| OpenOptions::new().create(true).append(true).open(path);
        Ok(Self {
            run,
            observer,
            stdout: open(&run.paths.stdout)?,
            stderr: open(&run.paths.stderr)?,
            error: None,
        })
    }

    /// The first write error, if any.
    pub(super) fn take_error(&mut self) -> Option<std::io::Error> {
        self.error.take()
    }
}

#[async_trait]
impl ExecOutput for LogSink<'_> {
    async fn write(&mut self, stream: OutputStream, data: &[u8]) {
        let file = match stream {
            OutputStream::Stdout => &mut self.stdout,
            OutputStream::Stderr => &mut self.stderr,
        };
        if self.error.is_none()
            && let Err(error) = file.write_all(data)
        {
            self.error = Some(error);
        }
        self.observer.output(self.run, stream, data);
    }
}

/// A local file error in words that say what to do: a full disk and a read-only folder are
/// named as such.
pub(super) fn describe_io(error: &std::io::Error) -> String {
    match error.kind() {
        std::io::ErrorKind::StorageFull => {
            format!("the disk is full ({error}); free some space, or use another state directory")
        }
        std::io::ErrorKind::ReadOnlyFilesystem | std::io::ErrorKind::PermissionDenied => {
            format!("the folder cannot be written ({error}); use another state directory")
        }
        _ => error.to_string(),
    }
}
