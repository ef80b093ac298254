//! The local process table, read from `/proc`, for tests that check that no process of a run
//! survives a kill, and the script that builds such a process tree.

use std::path::Path;
use std::time::{Duration, Instant};

/// The state letter and process group of `pid`, from `/proc/PID/stat`.
fn state_and_group(pid: u32) -> Option<(char, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is parenthesised and may hold spaces or parentheses: split after the
    // last `)`. Then: state ppid pgrp …
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let group = fields.nth(1)?.parse().ok()?;
    Some((state, group))
}

/// Whether `pid` exists and has not exited (a zombie has exited; only its reaping is pending).
pub fn is_alive(pid: u32) -> bool {
    state_and_group(pid).is_some_and(|(state, _)| state != 'Z')
}

/// The live members of process group `pgid`.
pub fn live_group_members(pgid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_string_lossy().parse::<u32>().ok())
        .filter(|pid| {
            state_and_group(*pid).is_some_and(|(state, group)| state != 'Z' && group == pgid)
        })
        .collect()
}

/// Sends `KILL` to the process group `pgid` (by its id, never by name; a group that is gone
/// is fine), for tests that must leave nothing behind when they fail.
pub fn kill_group(pgid: u32) {
    if let Ok(pgid) = i32::try_from(pgid)
        && pgid > 1
    {
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(pgid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// Sends `KILL` to process `pid` (by its id; a process that is gone is fine).
pub fn kill_pid(pid: u32) {
    if let Ok(pid) = i32::try_from(pid)
        && pid > 1
    {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// The pids written one per line in `path`; none when the file does not exist yet.
pub fn read_pids(path: &Path) -> Vec<u32> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.trim().parse().ok())
        .collect()
}

/// Waits up to `limit` for every pid to end and returns those still alive then.
pub fn survivors_after(pids: &[u32], limit: Duration) -> Vec<u32> {
    let deadline = Instant::now() + limit;
    loop {
        let survivors: Vec<u32> = pids.iter().copied().filter(|pid| is_alive(*pid)).collect();
        if survivors.is_empty() || Instant::now() >= deadline {
            return survivors;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A POSIX script body that appends to `record` its own pid, a child's, a grandchild's and the
/// grandchild's parent's (4 pids), then waits for them; each sleeps `seconds`.
pub fn tree_script(record: &Path, seconds: u32) -> String {
    format!(
        "echo $$ >> '{r}'\n\
         sleep {seconds} & echo $! >> '{r}'\n\
         sh -c 'sleep {seconds} & echo $! >> \"$1\"; wait' sh '{r}' & echo $! >> '{r}'\n\
         echo started\n\
         wait\n",
        r = record.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive_and_in_its_group() {
        let me = std::process::id();
        assert!(is_alive(me));
        let (_, group) = state_and_group(me).expect("our own stat is readable");
        assert!(live_group_members(group).contains(&me));
        assert!(!is_alive(u32::MAX));
    }
}
