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

/// What GNU time measured of a command.
pub(super) struct Usage {
    pub(super) wall_secs: f64,
    /// User plus system CPU seconds.
    pub(super) cpu_secs: f64,
    pub(super) peak_rss_kib: u64,
    /// Its stdout when it printed a `--json` document (discarded otherwise).
    pub(super) stdout: String,
}

/// Runs a command (its program, arguments and environment) under GNU time and returns its peak
/// RSS in KiB. Its output is discarded, except a `--json` document, which a failure shows.
pub(super) fn with_peak_rss(command: Command) -> Result<Option<u64>> {
    Ok(Some(under_time(command)?.peak_rss_kib))
}

/// Runs a command (its program, arguments and environment) under GNU time, failing with its
/// stderr (and its `--json` document) when it fails.
pub(super) fn under_time(command: Command) -> Result<Usage> {
    let program = command.get_program().to_owned();
    let args: Vec<_> = command.get_args().map(ToOwned::to_owned).collect();
    // A JSON document is small and says why a run failed; human output may be a GiB.
    let json = args.iter().any(|arg| arg == "--json");
    let mut timed = Command::new("/usr/bin/time");
    timed
        .arg("-f")
        .arg("TF_TIME=%e %U %S %M")
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
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() {
        bail!("command failed ({}): {stderr}\n{stdout}", output.status);
    }
    let figures = stderr
        .lines()
        .rev()
        .find_map(|line| line.strip_prefix("TF_TIME="))
        .context("GNU time printed nothing")?;
    let parts: Vec<f64> = figures
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()
        .with_context(|| format!("GNU time printed {figures:?}"))?;
    let [wall_secs, user, system, rss_kib] = parts[..] else {
        bail!("unexpected GNU time output {figures:?}");
    };
    Ok(Usage {
        wall_secs,
        cpu_secs: user + system,
        peak_rss_kib: rss_kib as u64,
        stdout,
    })
}
