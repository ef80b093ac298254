//! The PowerShell side of a run on Windows: the exec and kill scripts, sent as
//! `-EncodedCommand` payloads, which sidestep cmd.exe and PowerShell quoting.

use base64::Engine as _;

use super::WindowsShell;
use super::posix::{RunScript, testfleet_vars};
use super::quote::quote_powershell;

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

/// The PowerShell script that enters the run folder, writes its `$PID` to the pid file (both
/// SFTP paths, converted with [`sftp_to_windows_path`]), sets the entrypoint's variables (the
/// user's, then `TESTFLEET_RUN_ID`, `TESTFLEET_MACHINE` and `TESTFLEET_ARTIFACTS`) and runs
/// `./<entrypoint>` with its arguments, each one single-quoted literal, exiting with its
/// `$LASTEXITCODE`. Lines end with CRLF. A failure to enter the folder or write the pid file
/// stops the script before the entrypoint runs. There is no stdin to read secrets from: their
/// values are in the script like the others.
pub fn windows_exec_script(script: &RunScript<'_>) -> String {
    let mut vars = String::new();
    for var in script.env {
        vars.push_str(&format!(
            "$env:{} = {}\r\n",
            var.name,
            quote_powershell(var.value)
        ));
    }
    let artifacts = sftp_to_windows_path(&super::join_remote(script.run_dir, "artifacts"));
    for (name, value) in testfleet_vars(script, artifacts) {
        vars.push_str(&format!("$env:{name} = {}\r\n", quote_powershell(&value)));
    }
    let args: String = script
        .args
        .iter()
        .map(|arg| format!(" {}", quote_powershell(arg)))
        .collect();
    format!(
        "$ErrorActionPreference = 'Stop'\r\n\
         Set-Location -LiteralPath {dir}\r\n\
         Set-Content -LiteralPath {pid} -Value $PID -Encoding ascii\r\n\
         {vars}\
         $ErrorActionPreference = 'Continue'\r\n\
         & {ep}{args}\r\n\
         exit $LASTEXITCODE\r\n",
        dir = quote_powershell(&sftp_to_windows_path(script.run_dir)),
        pid = quote_powershell(&sftp_to_windows_path(script.pid_file)),
        ep = quote_powershell(&format!("./{}", script.entrypoint)),
    )
}

/// [`windows_exec_script`] as a [`powershell_command`] for `shell`. It has no gate: start it only
/// once the upload is done.
pub fn windows_exec_command(shell: WindowsShell, script: &RunScript<'_>) -> String {
    powershell_command(shell, &windows_exec_script(script))
}

/// The PowerShell script that reads the pid in `pid_file` (an SFTP path) and kills that process and
/// its children with `taskkill /T /F`. Exit status: 3 when the pid file is missing or empty (it
/// does not wait for one), otherwise 0, whatever `taskkill` reported.
pub fn windows_kill_script(pid_file: &str) -> String {
    format!(
        "$p = Get-Content -LiteralPath {pid} -ErrorAction SilentlyContinue\r\n\
         if (-not $p) {{ exit 3 }}\r\n\
         taskkill /T /F /PID ([int]$p) | Out-Null\r\n\
         if ($LASTEXITCODE -eq 128) {{ exit 4 }}\r\n\
         exit 0\r\n",
        pid = quote_powershell(&sftp_to_windows_path(pid_file)),
    )
}

/// [`windows_kill_script`] as a [`powershell_command`] for `shell`.
pub fn windows_kill_command(shell: WindowsShell, pid_file: &str) -> String {
    powershell_command(shell, &windows_kill_script(pid_file))
}
