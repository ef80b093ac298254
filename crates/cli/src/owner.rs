//! Which process owns a run: this controller, this process's pid and start time, and the probe
//! the reaper uses to tell whether an owner on this controller is still alive
//! (`docs/contract.md#owners-and-the-reaper`).

use std::sync::Arc;

use testfleet_core::ports::{RunStore, StoreError};
use testfleet_core::runner::{LeaseSettings, Liveness, OwnerProbe};
use testfleet_core::{ControllerId, RunId, RunOwner};

/// The start time of process `pid` in clock ticks since boot (field 22 of `/proc/PID/stat`),
/// and whether it is a zombie. `None` when the process does not exist or the platform has no
/// `/proc`.
#[cfg(target_os = "linux")]
fn proc_stat(pid: u32) -> Option<(u64, bool)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces or ')'; the fields
    // after the last ')' start with field 3, the state.
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace();
    let state = fields.next()?;
    let start_time = fields.nth(22 - 4)?.parse().ok()?;
    Some((start_time, state == "Z" || state == "X"))
}

/// The start time of process `pid`, when the platform can tell.
pub fn start_time(pid: u32) -> Option<u64> {
    #[cfg(target_os = "linux")]
    {
        proc_stat(pid).map(|(start, _)| start)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = pid;
        None
    }
}

/// The owner record of this process, on `controller`.
pub fn current(controller: &ControllerId) -> RunOwner {
    of_pid(controller, std::process::id())
}

/// The owner record of another process of this controller (a just-spawned worker).
pub fn of_pid(controller: &ControllerId, pid: u32) -> RunOwner {
    RunOwner {
        host: Some(controller.clone()),
        pid,
        start_time: start_time(pid),
    }
}

/// Renews `owner`'s leases of the runs `ids` every heartbeat, until each run ends or is taken
/// over, or the task is aborted: for runs this process owns while no runner drives them yet (a
/// run queued behind a full fan-out, a worker hashing its directory again). Once a runner
/// executes a run, its own heartbeat renews it too.
pub fn keep_leases(
    store: Arc<dyn RunStore>,
    mut ids: Vec<RunId>,
    owner: RunOwner,
    lease: LeaseSettings,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(lease.heartbeat);
        while !ids.is_empty() {
            ticks.tick().await;
            let mut still_owned = Vec::with_capacity(ids.len());
            for id in ids {
                match store.renew_lease(&id, &owner, lease.duration).await {
                    Ok(_) => still_owned.push(id),
                    // Ended, or handed over: no longer ours to keep.
                    Err(
                        StoreError::Conflict { .. }
                        | StoreError::OwnerChanged { .. }
                        | StoreError::NotFound(_),
                    ) => {}
                    Err(error) => {
                        tracing::warn!(run = %id, "failed to renew a lease: {error}");
                        still_owned.push(id);
                    }
                }
            }
            ids = still_owned;
        }
    })
}

/// Whether process `pid` is alive: it exists, is not a zombie, and (where known) started at
/// `recorded_start`.
fn process_alive(pid: u32, recorded_start: Option<u64>) -> bool {
    #[cfg(target_os = "linux")]
    {
        match proc_stat(pid) {
            None | Some((_, true)) => false,
            Some((start, false)) => recorded_start.is_none_or(|recorded| recorded == start),
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        use nix::errno::Errno;
        let _ = recorded_start;
        let Ok(pid) = i32::try_from(pid) else {
            return false;
        };
        matches!(
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None),
            Ok(()) | Err(Errno::EPERM)
        )
    }
}

/// Asks the local process table about owners on this controller. An owner on another
/// controller is [`Liveness::Elsewhere`]: only its lease tells. An owner recorded without a
/// controller (by an older testfleet, before the store was shared) is taken to be local.
#[derive(Debug, Clone)]
pub struct ProcessProbe {
    pub controller: ControllerId,
}

impl ProcessProbe {
    /// Whether `owner` runs on this controller.
    pub fn is_local(&self, owner: &RunOwner) -> bool {
        owner
            .host
            .as_ref()
            .is_none_or(|host| *host == self.controller)
    }
}

impl OwnerProbe for ProcessProbe {
    fn liveness(&self, owner: &RunOwner) -> Liveness {
        if !self.is_local(owner) {
            Liveness::Elsewhere
        } else if process_alive(owner.pid, owner.start_time) {
            Liveness::Alive
        } else {
            Liveness::Dead
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe() -> ProcessProbe {
        ProcessProbe {
            controller: ControllerId::parse("here").expect("a valid id"),
        }
    }

    #[test]
    fn this_process_is_alive_and_a_changed_start_time_is_not() {
        let probe = probe();
        let me = current(&probe.controller);
        assert_eq!(probe.liveness(&me), Liveness::Alive);
        if let Some(start) = me.start_time {
            let mut reused = me.clone();
            reused.start_time = Some(start + 1);
            assert_eq!(probe.liveness(&reused), Liveness::Dead);
        }
    }

    #[test]
    fn a_reaped_child_is_dead_here_and_unknown_elsewhere() {
        let probe = probe();
        let mut child = std::process::Command::new("true")
            .spawn()
            .expect("spawn true");
        let owner = of_pid(&probe.controller, child.id());
        child.wait().expect("reap");
        assert_eq!(probe.liveness(&owner), Liveness::Dead);
        let mut legacy = owner.clone();
        legacy.host = None;
        assert_eq!(probe.liveness(&legacy), Liveness::Dead, "no host: local");
        let mut elsewhere = owner;
        elsewhere.host = Some(ControllerId::parse("there").expect("a valid id"));
        assert_eq!(probe.liveness(&elsewhere), Liveness::Elsewhere);
    }
}
