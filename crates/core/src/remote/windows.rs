//! The PowerShell side of a run on Windows: the exec and kill scripts, sent as
//! `-EncodedCommand` payloads, which sidestep cmd.exe and PowerShell quoting.

use base64::Engine as _;

use super::WindowsShell;
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
         if ($LASTEXITCODE -eq 128) {{ exit 4 }}\r\n\
         exit 0\r\n",
        pid = quote_powershell(&sftp_to_windows_path(pid_file)),
    )
}

/// [`windows_kill_script`] as a [`powershell_command`] for `shell`.
pub fn windows_kill_command(shell: WindowsShell, pid_file: &str) -> String {
    powershell_command(shell, &windows_kill_script(pid_file))
}
