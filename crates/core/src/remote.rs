//! What testfleet says to a remote machine (`docs/contract.md#remote-side`): the run folder layout, the exec and
//! kill commands for POSIX shells and PowerShell, and the check of names that come back.
//!
//! Everything here is a pure function of its inputs, so that each can be tested by running the
//! string it builds.

use std::fmt;
use std::time::Duration;

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::entrypoint::OsFamily;
use crate::ids::RunId;

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

    /// The absolute remote root.
    pub fn root(&self) -> &str {
        &self.root
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

/// Quotes `text` as one word for any POSIX-family shell: sh, dash, bash, zsh and fish.
///
/// Single quotes keep everything literal in sh; fish however treats `\\` and `\'` as escapes
/// inside single quotes, so backslashes and quotes are placed *outside* the quotes, escaped by a
/// backslash, which every one of these shells reads as the literal character.
pub fn quote_posix(text: &str) -> String {
    let mut quoted = String::with_capacity(text.len() + 2);
    quoted.push('\'');
    for ch in text.chars() {
        match ch {
            '\'' => quoted.push_str("'\\''"),
            '\\' => quoted.push_str("'\\\\'"),
            _ => quoted.push(ch),
        }
    }
    quoted.push('\'');
    quoted
}

/// Quotes `text` as a PowerShell single-quoted string literal. PowerShell also closes a
/// single-quoted string on the typographic quotes U+2018..U+201B, so each is doubled like `'`.
pub fn quote_powershell(text: &str) -> String {
    let mut quoted = String::with_capacity(text.len() + 2);
    quoted.push('\'');
    for ch in text.chars() {
        if matches!(ch, '\'' | '\u{2018}' | '\u{2019}' | '\u{201A}' | '\u{201B}') {
            quoted.push(ch);
        }
        quoted.push(ch);
    }
    quoted.push('\'');
    quoted
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

    /// The command that runs `entrypoint` inside `run_dir` and records its pid in `pid_file`.
    /// Both paths are in SFTP form.
    pub fn exec_command(self, run_dir: &str, pid_file: &str, entrypoint: &str) -> String {
        match self {
            Self::Posix => posix_exec_command(run_dir, pid_file, entrypoint),
            Self::Windows(shell) => windows_exec_command(shell, run_dir, pid_file, entrypoint),
        }
    }

    /// [`RemoteShell::exec_command`] behind a gate (see
    /// [`crate::ports::SshSession::exec_gated`]): the script first reads one line from its
    /// stdin and runs only if it is the gate's open line. `None` for a shell that has no gated
    /// form (Windows), whose command is started only when it may run.
    pub fn gated_exec_command(
        self,
        run_dir: &str,
        pid_file: &str,
        entrypoint: &str,
    ) -> Option<String> {
        match self {
            Self::Posix => Some(posix_gated_command(&posix_exec_script(
                run_dir, pid_file, entrypoint,
            ))),
            Self::Windows(_) => None,
        }
    }

    /// A gated command that removes `run_dir` and `pid_file` (`rm -rf`, one round trip whatever
    /// the size of the folder). `None` for a shell that has no gated form (Windows).
    pub fn gated_cleanup_command(self, run_dir: &str, pid_file: &str) -> Option<String> {
        match self {
            Self::Posix => Some(posix_gated_command(&format!(
                "rm -rf -- {} {}",
                quote_posix(run_dir),
                quote_posix(pid_file)
            ))),
            Self::Windows(_) => None,
        }
    }

    /// The command that kills the process tree whose leader's pid is in `pid_file`.
    pub fn kill_command(self, pid_file: &str, grace: Duration) -> String {
        match self {
            Self::Posix => posix_kill_command(pid_file, grace),
            Self::Windows(shell) => windows_kill_command(shell, pid_file),
        }
    }
}

/// `exec sh -c '<script>'` whose script first waits for the gate's open line on stdin
/// ([`crate::ports::ExecGate::OPEN_LINE`]), and exits with 125 without running anything when
/// stdin ends before it.
pub fn posix_gated_command(script: &str) -> String {
    let gated = format!("read -r gate && [ \"$gate\" = go ] || exit 125; {script}");
    format!("exec sh -c {}", quote_posix(&gated))
}

/// `exec sh -c '<script>'`, where the script enters `run_dir`, writes its pid (the session's
/// process-group leader, because the login shell was replaced by `exec`) and replaces itself
/// with the entrypoint.
pub fn posix_exec_command(run_dir: &str, pid_file: &str, entrypoint: &str) -> String {
    let script = posix_exec_script(run_dir, pid_file, entrypoint);
    format!("exec sh -c {}", quote_posix(&script))
}

fn posix_exec_script(run_dir: &str, pid_file: &str, entrypoint: &str) -> String {
    format!(
        "cd {dir} || exit 126; echo $$ > {pid} || exit 126; [ -x ./{ep} ] || chmod +x ./{ep}; exec ./{ep}",
        dir = quote_posix(run_dir),
        pid = quote_posix(pid_file),
        ep = quote_posix(entrypoint),
    )
}

/// A POSIX script that sends `TERM` to the process group recorded in `pid_file`, waits up to
/// `grace` for it to end and then sends `KILL`. It waits up to 5 s for the pid file to appear
/// (a kill right after the start). Exit status: 0 when the group is gone, 3 when no pid file
/// appeared.
pub fn posix_kill_command(pid_file: &str, grace: Duration) -> String {
    let grace_ticks = grace.as_millis().div_ceil(100);
    let script = format!(
        "f={pid}; i=0; \
         while [ ! -s \"$f\" ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done; \
         pid=$(cat \"$f\" 2>/dev/null); [ -n \"$pid\" ] || exit 3; \
         kill -TERM -\"$pid\" 2>/dev/null || exit 0; \
         i=0; while kill -0 -\"$pid\" 2>/dev/null && [ $i -lt {grace_ticks} ]; do sleep 0.1; i=$((i+1)); done; \
         kill -KILL -\"$pid\" 2>/dev/null; exit 0",
        pid = quote_posix(pid_file),
    );
    format!("exec sh -c {}", quote_posix(&script))
}

/// Converts an SFTP path of a Windows host (`/C:/Users/ci/x`) into a Windows path
/// (`C:\Users\ci\x`). Paths without a drive keep their text with `\` separators.
pub fn sftp_to_windows_path(sftp_path: &str) -> String {
    let bytes = sftp_path.as_bytes();
    let without_slash = if bytes.len() >= 3 && bytes[0] == b'/' && bytes[2] == b':' {
        &sftp_path[1..]
    } else {
        sftp_path
    };
    without_slash.replace('/', "\\")
}

/// `<shell> -NoProfile -NonInteractive -ExecutionPolicy Bypass -EncodedCommand <base64>`.
///
/// EncodedCommand takes base64 of the UTF-16LE script, which sidesteps cmd.exe and PowerShell
/// quoting entirely.
pub fn powershell_command(shell: WindowsShell, script: &str) -> String {
    let utf16: Vec<u8> = script.encode_utf16().flat_map(u16::to_le_bytes).collect();
    let encoded = base64::engine::general_purpose::STANDARD.encode(utf16);
    format!(
        "{} -NoProfile -NonInteractive -ExecutionPolicy Bypass -EncodedCommand {encoded}",
        shell.executable()
    )
}

/// Decodes the script of a [`powershell_command`], for tests and diagnostics.
pub fn decode_powershell_command(command: &str) -> Option<String> {
    let encoded = command.rsplit_once("-EncodedCommand ")?.1.trim();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .ok()?;
    if bytes.len() % 2 != 0 {
        return None;
    }
    let units: Vec<u16> = bytes
        .chunks_exact(2)
        .map(|pair| u16::from_le_bytes([pair[0], pair[1]]))
        .collect();
    String::from_utf16(&units).ok()
}

/// The PowerShell script that enters `run_dir`, writes its `$PID` to `pid_file` (both SFTP paths,
/// converted with [`sftp_to_windows_path`]) and runs `./<entrypoint>`, exiting with its
/// `$LASTEXITCODE`. Lines end with CRLF. A failure to enter the folder or write the pid file stops
/// the script before the entrypoint runs.
pub fn windows_exec_script(run_dir: &str, pid_file: &str, entrypoint: &str) -> String {
    format!(
        "$ErrorActionPreference = 'Stop'\r\n\
         Set-Location -LiteralPath {dir}\r\n\
         Set-Content -LiteralPath {pid} -Value $PID -Encoding ascii\r\n\
         $ErrorActionPreference = 'Continue'\r\n\
         & {ep}\r\n\
         exit $LASTEXITCODE\r\n",
        dir = quote_powershell(&sftp_to_windows_path(run_dir)),
        pid = quote_powershell(&sftp_to_windows_path(pid_file)),
        ep = quote_powershell(&format!("./{entrypoint}")),
    )
}

/// [`windows_exec_script`] as a [`powershell_command`] for `shell`. It has no gate: start it only
/// once the upload is done.
pub fn windows_exec_command(
    shell: WindowsShell,
    run_dir: &str,
    pid_file: &str,
    entrypoint: &str,
) -> String {
    powershell_command(shell, &windows_exec_script(run_dir, pid_file, entrypoint))
}

/// The PowerShell script that reads the pid in `pid_file` (an SFTP path) and kills that process and
/// its children with `taskkill /T /F`. Exit status: 3 when the pid file is missing or empty (it
/// does not wait for one), otherwise 0, whatever `taskkill` reported.
pub fn windows_kill_script(pid_file: &str) -> String {
    format!(
        "$p = Get-Content -LiteralPath {pid} -ErrorAction SilentlyContinue\r\n\
         if (-not $p) {{ exit 3 }}\r\n\
         taskkill /T /F /PID ([int]$p) | Out-Null\r\n\
         exit 0\r\n",
        pid = quote_powershell(&sftp_to_windows_path(pid_file)),
    )
}

/// [`windows_kill_script`] as a [`powershell_command`] for `shell`.
pub fn windows_kill_command(shell: WindowsShell, pid_file: &str) -> String {
    powershell_command(shell, &windows_kill_script(pid_file))
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
