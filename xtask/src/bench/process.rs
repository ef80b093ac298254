//! Running the measured commands: a shell pipeline, or a command under GNU time for its peak
//! memory.

use std::process::{Command, Stdio};

use anyhow::{Context as _, Result, bail};

/// Runs `script` with `sh -c`, failing with its stderr when it fails.
pub(super) fn sh(script: &str) -> Result<()> {
    let output = Command::new("sh")
        .arg("-c")
        .arg(script)
        .stdin(Stdio::null())
        .output()?;
    if !output.status.success() {
        bail!(
            "`{script}` failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

/// Runs a command (its program, arguments and environment) under GNU time and returns its peak
/// RSS in KiB. Its output is discarded, except a `--json` document, which a failure shows.
pub(super) fn with_peak_rss(command: Command) -> Result<Option<u64>> {
    let program = command.get_program().to_owned();
    let args: Vec<_> = command.get_args().map(ToOwned::to_owned).collect();
    // A JSON document is small and says why a run failed; human output may be a GiB.
    let json = args.iter().any(|arg| arg == "--json");
    let mut timed = Command::new("/usr/bin/time");
    timed
        .arg("-f")
        .arg("TF_MAXRSS=%M")
        .arg(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(if json { Stdio::piped() } else { Stdio::null() });
    for (key, value) in command.get_envs() {
        if let Some(value) = value {
            timed.env(key, value);
        }
    }
    let output = timed
        .output()
        .context("failed to run /usr/bin/time (apt-get install time)")?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        bail!(
            "command failed ({}): {stderr}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stdout)
        );
    }
    Ok(stderr
        .lines()
        .rev()
        .find_map(|line| line.strip_prefix("TF_MAXRSS="))
        .and_then(|kib| kib.trim().parse().ok()))
}
