//! Which process owns a run: this process's pid and start time, and the probe the reaper uses
//! to tell whether an owner is still alive (`docs/contract.md#owners-and-the-reaper`).

use testfleet_core::RunOwner;
use testfleet_core::runner::OwnerProbe;

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

/// The owner record of this process.
pub fn current() -> RunOwner {
    let pid = std::process::id();
    RunOwner {
        pid,
        start_time: start_time(pid),
    }
}

/// The owner record of another process (a just-spawned worker).
pub fn of_pid(pid: u32) -> RunOwner {
    RunOwner {
        pid,
        start_time: start_time(pid),
    }
}

/// Alive means: the pid exists, is not a zombie, and (where known) started when recorded.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessProbe;

impl OwnerProbe for ProcessProbe {
    fn is_alive(&self, owner: RunOwner) -> bool {
        #[cfg(target_os = "linux")]
        {
            match proc_stat(owner.pid) {
                None => false,
                Some((_, true)) => false,
                Some((start, false)) => owner.start_time.is_none_or(|recorded| recorded == start),
            }
        }
        #[cfg(not(target_os = "linux"))]
        {
            use nix::errno::Errno;
            let Ok(pid) = i32::try_from(owner.pid) else {
                return false;
            };
            matches!(
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None),
                Ok(()) | Err(Errno::EPERM)
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive_and_a_changed_start_time_is_not() {
        let me = current();
        assert!(ProcessProbe.is_alive(me));
        if let Some(start) = me.start_time {
            let reused = RunOwner {
                pid: me.pid,
                start_time: Some(start + 1),
            };
            assert!(!ProcessProbe.is_alive(reused));
        }
    }

    #[test]
    fn a_reaped_child_is_dead() {
        let mut child = std::process::Command::new("true")
            .spawn()
            .expect("spawn true");
        let owner = of_pid(child.id());
        child.wait().expect("reap");
        assert!(!ProcessProbe.is_alive(owner));
    }
}
