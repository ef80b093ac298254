//! What testfleet says to a remote machine (`docs/contract.md#remote-side`): the run folder
//! layout, the scripts for POSIX shells ([`posix`]) and PowerShell ([`windows`]), their quoting
//! ([`quote`]), and the check of names that come back.
//!
//! Everything here is a pure function of its inputs, so that each can be tested by running the
//! string it builds.

pub mod posix;
pub mod quote;
pub mod windows;

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::entrypoint::OsFamily;
use crate::ids::RunId;

pub use posix::{
    KILL_ALREADY_GONE, KILL_NO_PID_FILE, KILL_SURVIVORS, RunScript, ScriptVar, posix_exec_command,
    posix_gated_cleanup_command, posix_gated_command, posix_gated_exec_command, posix_kill_command,
    posix_probe_command, posix_secret_lines, testfleet_vars,
};
pub use quote::{quote_posix, quote_powershell};
pub use windows::{
    decode_powershell_command, powershell_command, sftp_to_windows_path, windows_exec_command,
    windows_exec_script, windows_kill_command, windows_kill_script,
};

/// Where one run lives on the remote machine, in SFTP path form
/// (`docs/contract.md#remote-side`). Every path is computed once, when the layout is made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteLayout {
    root: String,
    runs_dir: String,
    run_dir: String,
    pid_file: String,
    artifacts_dir: String,
}

impl RemoteLayout {
    /// The layout of run `run_id` under the absolute remote root `root` (as SFTP `realpath`
    /// returned it).
    pub fn new(root: String, run_id: &RunId) -> Self {
        let runs_dir = join_remote(&root, "runs");
        let run_dir = join_remote(&runs_dir, run_id.as_str());
        Self {
            pid_file: format!("{run_dir}.pid"),
            artifacts_dir: join_remote(&run_dir, "artifacts"),
            root,
            runs_dir,
            run_dir,
        }
    }

    /// The layout of run `run_id` whose folder is `run_dir` (`<root>/runs/<id>`, as a run
    /// records it in `remote_dir`).
    pub fn of_run_dir(run_dir: &str, run_id: &RunId) -> Self {
        let suffix = format!("/runs/{run_id}");
        match run_dir.strip_suffix(&suffix) {
            Some(root) => Self::new(root.to_owned(), run_id),
            None => {
                let runs_dir = run_dir
                    .rsplit_once('/')
                    .map_or(String::new(), |(parent, _)| parent.to_owned());
                let root = runs_dir
                    .rsplit_once('/')
                    .map_or(String::new(), |(parent, _)| parent.to_owned());
                Self {
                    pid_file: format!("{run_dir}.pid"),
                    artifacts_dir: join_remote(run_dir, "artifacts"),
                    root,
                    runs_dir,
                    run_dir: run_dir.to_owned(),
                }
            }
        }
    }

    /// The absolute remote root.
    pub fn root(&self) -> &str {
        &self.root
    }

    /// `<root>/cache`: the machine's file cache (`docs/contract.md#remote-file-cache`).
    pub fn cache_dir(&self) -> String {
        join_remote(&self.root, "cache")
    }

    /// `<root>/runs`: the parent of every run folder and of the control files.
    pub fn runs_dir(&self) -> &str {
        &self.runs_dir
    }

    /// `<root>/runs/<run-id>`: the script's working directory.
    pub fn run_dir(&self) -> &str {
        &self.run_dir
    }

    /// `<root>/runs/<run-id>.pid`: beside the run folder, never inside it.
    pub fn pid_file(&self) -> &str {
        &self.pid_file
    }

    /// `<root>/runs/<run-id>/artifacts`: what the script leaves for download.
    pub fn artifacts_dir(&self) -> &str {
        &self.artifacts_dir
    }
}

/// Joins an SFTP path and a child name with exactly one `/`.
pub fn join_remote(parent: &str, child: &str) -> String {
    if parent.is_empty() {
        child.to_owned()
    } else if parent.ends_with('/') {
        format!("{parent}{child}")
    } else {
        format!("{parent}/{child}")
    }
}

/// The PowerShell executable a Windows machine runs scripts with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WindowsShell {
    /// Windows PowerShell 5.1, `powershell.exe`.
    #[default]
    Powershell,
    /// PowerShell 7+, `pwsh`.
    Pwsh,
}

impl WindowsShell {
    /// The program a command line starts: `powershell.exe` or `pwsh`. (Its
    /// [`Display`](fmt::Display) form is the fleet file's `shell` value instead: `powershell` or
    /// `pwsh`.)
    pub fn executable(self) -> &'static str {
        match self {
            Self::Powershell => "powershell.exe",
            Self::Pwsh => "pwsh",
        }
    }
}

impl fmt::Display for WindowsShell {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Powershell => "powershell",
            Self::Pwsh => "pwsh",
        })
    }
}

/// How a machine's shell is spoken to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemoteShell {
    /// A POSIX shell, whatever the login shell is (sh, dash, bash, zsh, fish): every command is
    /// `exec sh -c '<script>'`, and commands can be gated.
    Posix,
    /// PowerShell on Windows, started as this executable: every command is an `-EncodedCommand`
    /// script, and commands cannot be gated.
    Windows(WindowsShell),
}

impl RemoteShell {
    /// The shell of a machine of `family`; `windows_shell` matters only for [`OsFamily::Windows`].
    pub fn for_family(family: OsFamily, windows_shell: WindowsShell) -> Self {
        match family {
            OsFamily::Posix => Self::Posix,
            OsFamily::Windows => Self::Windows(windows_shell),
        }
    }

    /// The command that runs the entrypoint in the run folder, recording its pid, once it may
    /// run: its stdin is not watched (POSIX) and it has no gate. On POSIX it still kills what is
    /// left of its tree when the entrypoint ends.
    pub fn exec_command(self, script: &RunScript<'_>) -> String {
        match self {
            Self::Posix => posix_exec_command(script),
            Self::Windows(shell) => windows_exec_command(shell, script),
        }
    }

    /// What the runner writes on a gated command's stdin right after the gate's line: the
    /// secrets of `script` ([`posix_secret_lines`]); nothing for a shell without a gate (its
    /// secrets are in its command).
    pub fn gate_payload(self, script: &RunScript<'_>) -> Vec<u8> {
        match self {
            Self::Posix => posix_secret_lines(script.env),
            Self::Windows(_) => Vec::new(),
        }
    }

    /// The command behind a gate (see [`crate::ports::SshSession::exec_gated`]): it records its
    /// pid, reads one line from its stdin and runs the entrypoint only if it is the gate's open
    /// line; then the end of its stdin kills the run's whole tree. `None` for a shell that has no
    /// gated form (Windows), whose command is started only when it may run.
    pub fn gated_exec_command(self, script: &RunScript<'_>) -> Option<String> {
        match self {
            Self::Posix => Some(posix_gated_exec_command(script)),
            Self::Windows(_) => None,
        }
    }

    /// A gated command that makes `run_dir` writable by its owner and removes it and `pid_file`
    /// (one round trip whatever the size of the folder). `None` for a shell that has no gated
    /// form (Windows).
    pub fn gated_cleanup_command(self, run_dir: &str, pid_file: &str) -> Option<String> {
        match self {
            Self::Posix => Some(posix_gated_cleanup_command(run_dir, pid_file)),
            Self::Windows(_) => None,
        }
    }

    /// The command that kills everything of run `run_id`, whose wrapper's pid is in `pid_file`
    /// (see [`posix_kill_command`] for its exit statuses; on Windows `taskkill /T` of that pid).
    pub fn kill_command(self, pid_file: &str, run_id: &str, grace: Duration) -> String {
        match self {
            Self::Posix => posix_kill_command(pid_file, run_id, grace),
            Self::Windows(shell) => windows_kill_command(shell, pid_file),
        }
    }

    /// The command that tells which other runs left pid files in `runs_dir`, and whether
    /// anything of each is alive ([`posix_probe_command`]). `None` on Windows, where testfleet
    /// does not look for other runs' processes.
    pub fn probe_command(self, runs_dir: &str, own_id: &str) -> Option<String> {
        match self {
            Self::Posix => Some(posix_probe_command(runs_dir, own_id)),
            Self::Windows(_) => None,
        }
    }
}

/// Why a name that came from the remote side was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("refused remote name {name:?}: {reason}")]
pub struct BadRemoteName {
    /// The name as the remote side sent it.
    pub name: String,
    /// Which rule the name broke.
    pub reason: &'static str,
}

/// Checks one directory-entry name from the remote side before it becomes a local path: no
/// empty name, no `.` or `..`, no `/` or `\` inside, no NUL, no drive prefix like `C:`.
///
/// # Errors
/// [`BadRemoteName`] saying which rule the name broke.
pub fn check_remote_name(name: &str) -> Result<(), BadRemoteName> {
    let refuse = |reason| {
        Err(BadRemoteName {
            name: name.to_owned(),
            reason,
        })
    };
    if name.is_empty() {
        return refuse("empty name");
    }
    if name == "." || name == ".." {
        return refuse("'.' and '..' are not file names");
    }
    if name.contains('/') || name.contains('\\') {
        return refuse("contains a path separator");
    }
    if name.contains('\0') {
        return refuse("contains NUL");
    }
    let bytes = name.as_bytes();
    if bytes.len() >= 2 && bytes[1] == b':' && bytes[0].is_ascii_alphabetic() {
        return refuse("starts with a drive prefix");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout() {
        let layout = RemoteLayout::new(
            "/home/ci/.testfleet".into(),
            &RunId::parse("01JD0000000000000000000000").expect("a valid ulid"),
        );
        assert_eq!(
            layout.run_dir(),
            "/home/ci/.testfleet/runs/01JD0000000000000000000000"
        );
        assert_eq!(
            layout.pid_file(),
            "/home/ci/.testfleet/runs/01JD0000000000000000000000.pid"
        );
        assert_eq!(
            layout.artifacts_dir(),
            "/home/ci/.testfleet/runs/01JD0000000000000000000000/artifacts"
        );
        assert_eq!(
            RemoteLayout::of_run_dir(
                layout.run_dir(),
                &RunId::parse("01JD0000000000000000000000").expect("a valid ulid")
            ),
            layout
        );
        assert_eq!(join_remote("/", "x"), "/x");
        assert_eq!(join_remote("", "x"), "x");
    }

    #[test]
    fn windows_paths() {
        for (sftp, windows) in [
            ("/C:/Users/x", r"C:\Users\x"),
            (
                "/c:/Users/ci/.testfleet/runs/A",
                r"c:\Users\ci\.testfleet\runs\A",
            ),
            ("C:/Users/x", r"C:\Users\x"),
            (".testfleet/runs", r".testfleet\runs"),
        ] {
            assert_eq!(sftp_to_windows_path(sftp), windows, "{sftp}");
        }
    }

    #[test]
    fn powershell_quoting() {
        assert_eq!(quote_powershell("a'b"), "'a''b'");
        assert_eq!(quote_powershell("a\u{2019}b"), "'a\u{2019}\u{2019}b'");
        assert_eq!(quote_powershell("$x `y"), "'$x `y'");
    }

    #[test]
    fn remote_names() {
        for ok in [
            "a",
            "report.xml",
            ".hidden",
            "..x",
            "x..",
            "日本",
            "a b",
            "C",
        ] {
            assert_eq!(check_remote_name(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            "../escape",
            "/abs/path",
            "a/b",
            "a\\b",
            "a\0b",
            "C:",
            "c:x",
        ] {
            assert!(check_remote_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn powershell_payload_round_trips() {
        let command = powershell_command(WindowsShell::Pwsh, "Write-Output 'é'\r\n");
        assert!(command.starts_with(
            "pwsh -NoProfile -NonInteractive -ExecutionPolicy Bypass -EncodedCommand "
        ));
        assert_eq!(
            decode_powershell_command(&command).as_deref(),
            Some("Write-Output 'é'\r\n")
        );
    }
}
