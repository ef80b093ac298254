//! Turns SIGINT and SIGTERM into the runner's stop signals: the first one cancels (the remote
//! process tree is killed, artifacts still fetched), the second abandons the cleanup.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use testfleet_core::runner::StopSignals;
use tokio::signal::unix::{SignalKind, signal};

use crate::error::CliError;

/// What the first signal stops in a command that executes runs.
pub const STOPS_RUNS: &str = "stopping the run(s), fetching artifacts (again to abandon)";

/// Stop signals wired to the process's SIGINT and SIGTERM.
#[derive(Debug, Clone)]
pub struct SignalWatch {
    pub signals: StopSignals,
    interrupted: Arc<AtomicBool>,
}

impl SignalWatch {
    /// Installs the handlers (they replace the default "die at once"). With `announce`, the
    /// first signal prints `interrupted: ` and `what_stops`, which says what this process stops
    /// (a run it executes is stopped; a run it only follows goes on).
    ///
    /// # Errors
    /// [`CliError::Internal`] when a handler cannot be installed.
    pub fn install(announce: bool, what_stops: &'static str) -> Result<Self, CliError> {
        let install = |kind| {
            signal(kind).map_err(|error| {
                CliError::Internal(format!("cannot install a signal handler: {error}"))
            })
        };
        let mut interrupt = install(SignalKind::interrupt())?;
        let mut terminate = install(SignalKind::terminate())?;
        let watch = Self {
            signals: StopSignals::default(),
            interrupted: Arc::new(AtomicBool::new(false)),
        };
        let task_watch = watch.clone();
        tokio::spawn(async move {
            let mut received = 0u32;
            loop {
                tokio::select! {
                    _ = interrupt.recv() => {}
                    _ = terminate.recv() => {}
                }
                received += 1;
                task_watch.interrupted.store(true, Ordering::SeqCst);
                if received == 1 {
                    if announce {
                        eprintln!("interrupted: {what_stops}");
                    }
                    task_watch.signals.cancel.cancel();
                } else {
                    if announce {
                        eprintln!("interrupted again: abandoning the cleanup");
                    }
                    task_watch.signals.abandon.cancel();
                    break;
                }
            }
        });
        Ok(watch)
    }

    /// Whether a signal arrived.
    pub fn interrupted(&self) -> bool {
        self.interrupted.load(Ordering::SeqCst)
    }
}
