//! The process groups a server's execs run in: tracking them, forgetting the ones that are
//! gone, and killing the rest when the server is dropped.

use std::sync::Mutex;

use nix::sys::signal::Signal;

/// Process groups of the execs started, by the id of their leader.
#[derive(Default)]
pub(super) struct ProcessGroups(Mutex<Vec<u32>>);

impl ProcessGroups {
    fn tracked(&self) -> std::sync::MutexGuard<'_, Vec<u32>> {
        self.0.lock().unwrap_or_else(|poison| poison.into_inner())
    }

    /// Tracks the group that the process `pgid` leads.
    pub(super) fn track(&self, pgid: u32) {
        self.tracked().push(pgid);
    }

    /// Stops tracking a process group that no longer exists, so that the server's drop never
    /// signals an id the system may have handed to someone else. (An id cannot be reused while
    /// its group exists, so a group still alive here is still ours.)
    pub(super) fn forget_if_gone(&self, pgid: u32) {
        if signal_group(pgid, None).is_err() {
            self.tracked().retain(|tracked| *tracked != pgid);
        }
    }

    /// Kills every group still tracked, and stops tracking them.
    pub(super) fn kill_all(&self) {
        let groups = std::mem::take(&mut *self.tracked());
        for pgid in groups {
            // Signal the group by its id (never by name); a group already gone is fine.
            let _ = signal_group(pgid, Some(Signal::SIGKILL));
        }
    }
}

/// Sends `signal` to the process group `pgid` (`None` only probes that it exists).
fn signal_group(pgid: u32, signal: Option<Signal>) -> nix::Result<()> {
    let pgid = i32::try_from(pgid).map_err(|_| nix::errno::Errno::EINVAL)?;
    nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pgid), signal)
}
