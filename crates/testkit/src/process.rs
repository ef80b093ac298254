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

/// The live processes whose real user id is `uid`, with their command names: what a login
/// user has left running on this host.
pub fn processes_of(uid: u32) -> Vec<(u32, String)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_string_lossy().parse::<u32>().ok())
        .filter(|pid| is_alive(*pid))
        .filter_map(|pid| {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
            let real_uid: u32 = status
                .lines()
                .find_map(|line| line.strip_prefix("Uid:"))?
                .split_whitespace()
                .next()?
                .parse()
                .ok()?;
            let name = status
                .lines()
                .find_map(|line| line.strip_prefix("Name:"))
                .map(|name| name.trim().to_owned())
                .unwrap_or_default();
            (real_uid == uid).then_some((pid, name))
        })
        .collect()
}

/// The live children of `pid`, with their command names.
pub fn children_of(pid: u32) -> Vec<(u32, String)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_string_lossy().parse::<u32>().ok())
        .filter_map(|child| {
            let stat = std::fs::read_to_string(format!("/proc/{child}/stat")).ok()?;
            let (name, rest) = stat.rsplit_once(')')?;
            let name = name.split_once('(')?.1.to_owned();
            let mut fields = rest.split_whitespace();
            let state = fields.next()?;
            let parent: u32 = fields.next()?.parse().ok()?;
            (parent == pid && state != "Z").then_some((child, name))
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

/// A POSIX script body whose processes try every way out of a run: a background child, one
/// that calls `setsid` (a session and group of its own), a double fork (re-parented to init),
/// and one that ignores `TERM` and `HUP`. It appends each pid to `record` (6 pids, its own
/// first) and waits; each sleeps `seconds`. Only the run's marker finds them all.
pub fn escape_script(record: &Path, seconds: u32) -> String {
    format!(
        "echo $$ >> '{r}'\n\
         sleep {seconds} & echo $! >> '{r}'\n\
         setsid sh -c 'echo $$ >> \"$1\"; exec sleep {seconds}' sh '{r}' &\n\
         ( ( sleep {seconds} & echo $! >> '{r}' ) & )\n\
         sh -c 'trap \"\" TERM HUP; echo $$ >> \"$1\"; sleep {seconds} & echo $! >> \"$1\"; wait' sh '{r}' &\n\
         echo started\n\
         wait\n",
        r = record.display()
    )
}

/// How many pids [`escape_script`] records.
pub const ESCAPE_SCRIPT_PIDS: usize = 6;

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
