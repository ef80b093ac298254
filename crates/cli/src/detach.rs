//! Background processes of testfleet itself: the `_worker` that executes a detached run, and the
//! `_cleanup` that finishes a run whose owner died. Each is started with this command's global
//! options, its output appended to the run's `worker.log`, and outlives this process (it calls
//! `setsid` itself).

use std::process::Stdio;

use testfleet_core::Run;

use crate::context::Context;
use crate::error::CliError;

/// Starts `testfleet <args>` in the background for `run`; returns its pid.
///
/// # Errors
/// [`CliError::Io`] when the executable or the log cannot be found or opened, or the process
/// cannot be started.
pub fn spawn(ctx: &Context, run: &Run, args: &[&str]) -> Result<u32, CliError> {
    let exe = std::env::current_exe()
        .map_err(|error| CliError::io("find the testfleet executable", "current_exe", error))?;
    let log_path = run.paths.worker_log();
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|error| CliError::io("open", &log_path, error))?;
    let log_err = log
        .try_clone()
        .map_err(|error| CliError::io("open", &log_path, error))?;
    let mut command = std::process::Command::new(exe);
    command
        .arg("--state-dir")
        .arg(ctx.state_dir()?)
        .arg("--fleet")
        .arg(ctx.fleet_path()?);
    for _ in 0..ctx.global.verbose {
        command.arg("-v");
    }
    command.args(args);
    // It records itself (or acts) as this same controller.
    command.env("TESTFLEET_CONTROLLER_ID", ctx.controller()?.as_str());
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(log_err))
        .spawn()
        .map_err(|error| CliError::io("start", format!("testfleet {}", args.join(" ")), error))?;
    // The child is not waited for: it outlives this process.
    Ok(child.id())
}
