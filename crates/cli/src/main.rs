//! The `testfleet` binary: parses the command line, runs one command, prints its result as
//! human text or as one JSON document, and exits with the code of
//! `docs/contract.md#exit-codes`.
//!
//! This is the only crate that knows clap, the JSON envelope and exit codes.

mod cli;
mod commands;
mod complete;
mod config;
mod context;
mod detach;
mod error;
mod output;
mod owner;
mod predial;
mod remedy;

use std::process::ExitCode;

use clap::Parser as _;
use clap::error::ErrorKind;

use crate::cli::{Cli, Command, MachinesCommand};
use crate::config::Env;
use crate::context::Context;
use crate::error::{CliError, Exit};
use crate::output::{Report, Style};

fn main() -> anyhow::Result<ExitCode> {
    // `COMPLETE=bash testfleet` prints the registration of dynamic completions, and the shell
    // then calls testfleet with COMPLETE set for each word; without COMPLETE this does nothing.
    clap_complete::CompleteEnv::with_factory(visible_command).complete();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => return Ok(usage_error(&error)),
    };
    init_tracing(&cli);
    let style = Style::detect(cli.global.json);
    let ctx = Context {
        global: cli.global.clone(),
        env: Env::from_process(),
        style,
        read_only: std::sync::atomic::AtomicBool::new(false),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(worker_threads(&cli.command))
        .enable_all()
        .build()?;
    let result = runtime.block_on(execute(&ctx, cli.command));
    let exit = output::emit(style, result);
    // Do not wait for blocking tasks (a store call, a hash) that nothing awaits any more.
    runtime.shutdown_background();
    Ok(ExitCode::from(exit.code()))
}

/// One worker thread per machine the command may talk to, at most one per core. One SSH
/// connection is one task's work: more workers only add wake-ups across threads (on a busy
/// 2-core host, one worker took a 256 MiB upload from 1.2× to 1.5× the speed of `sftp -b`).
/// Hashing and the store use their own threads either way.
fn worker_threads(command: &Command) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let machines = match command {
        Command::Run(args) if args.labels.is_empty() => args.machines.len(),
        Command::Worker { .. } | Command::Cleanup { .. } | Command::Rerun { .. } => 1,
        _ => cores,
    };
    machines.clamp(1, cores)
}

/// Help and version print normally; every other clap error is `INVALID_ARGUMENT`, exit 2, in
/// JSON when `--json` is on the line.
fn usage_error(error: &clap::Error) -> ExitCode {
    if matches!(
        error.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        let _ = error.print();
        let code = if error.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
            Exit::Usage
        } else {
            Exit::Ok
        };
        return ExitCode::from(code.code());
    }
    let json = std::env::args().any(|arg| arg == "--json");
    let style = Style::detect(json);
    if json {
        let message = first_line(&error.render().to_string());
        output::emit_error(style, &CliError::invalid(message));
    } else {
        let _ = error.print();
    }
    ExitCode::from(Exit::Usage.code())
}

fn first_line(text: &str) -> String {
    let line = text.lines().next().unwrap_or_default();
    line.strip_prefix("error: ").unwrap_or(line).to_owned()
}

fn init_tracing(cli: &Cli) {
    use tracing_subscriber::EnvFilter;
    let worker = matches!(
        cli.command,
        Command::Worker { .. } | Command::Cleanup { .. }
    );
    let level = match cli.global.verbose {
        0 if worker => "info",
        0 => "warn",
        1 => "debug",
        _ => "trace",
    };
    let filter = if cli.global.verbose == 0 {
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level))
    } else {
        EnvFilter::new(level)
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(Style::detect(true).color_stderr)
        .try_init();
}

async fn execute(ctx: &Context, command: Command) -> Result<Report, CliError> {
    match command {
        Command::Run(args) => commands::run::run(ctx, args).await,
        Command::Rerun {
            run_id,
            machine,
            detach,
            wait,
            no_cache,
        } => commands::run::rerun(ctx, &run_id, machine.as_deref(), detach, wait, no_cache).await,
        Command::Status {
            run_id,
            machine,
            events,
        } => commands::runs::status(ctx, &run_id, machine.as_deref(), events).await,
        Command::Wait {
            run_ids,
            machine,
            timeout,
            report,
        } => {
            commands::runs::wait(
                ctx,
                &run_ids,
                machine.as_deref(),
                timeout,
                report.as_deref(),
            )
            .await
        }
        Command::Report(args) => commands::report::report(ctx, args).await,
        Command::Logs {
            run_id,
            machine,
            stderr,
            follow,
        } => commands::runs::logs(ctx, &run_id, machine.as_deref(), stderr, follow).await,
        Command::List {
            machine,
            status,
            limit,
        } => commands::runs::list(ctx, machine.as_deref(), status, limit).await,
        Command::Cancel { run_id, machine } => {
            commands::runs::cancel(ctx, &run_id, machine.as_deref()).await
        }
        Command::Machines(command) => match command {
            MachinesCommand::List => commands::machines::list(ctx),
            MachinesCommand::Add(args) => commands::machines::add(ctx, &args),
            MachinesCommand::Remove { name } => commands::machines::remove(ctx, &name),
            MachinesCommand::Check { name } => {
                commands::machines::check(ctx, name.as_deref()).await
            }
            MachinesCommand::Trust {
                name,
                yes,
                fingerprint,
            } => commands::machines::trust(ctx, &name, yes, fingerprint.as_deref()).await,
            MachinesCommand::Status { names } => {
                commands::queue::machines_status(ctx, &names).await
            }
            MachinesCommand::Cache { name } => commands::remote::cache(ctx, &name).await,
        },
        Command::Hash { dir, excludes } => commands::hash::hash(ctx, dir, excludes).await,
        Command::Gc {
            older_than,
            dry_run,
            remote,
            machines,
        } => {
            let local = commands::runs::gc(ctx, older_than, dry_run).await?;
            if remote {
                let pruned =
                    commands::remote::gc_remote(ctx, &machines, older_than, dry_run).await?;
                Ok(commands::remote::merge(local, pruned))
            } else {
                Ok(local)
            }
        }
        Command::Completions { shell } => {
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut visible_command(), "testfleet", &mut out);
            Ok(Report::new(
                serde_json::json!({ "shell": shell.to_string(), "script": String::from_utf8_lossy(&out) }),
                String::from_utf8_lossy(&out).into_owned(),
            ))
        }
        Command::Worker {
            run_id,
            accept_new_host_key,
            wait,
            results,
            no_cache,
        } => {
            let wait = wait.and_then(cli::WaitLimit::limit);
            let worker = commands::worker::WorkerArgs {
                accept_new_host_key,
                wait,
                results,
                no_cache,
            };
            commands::worker::worker(ctx, &run_id, &worker).await
        }
        Command::Cleanup { run_id } => commands::worker::cleanup(ctx, &run_id).await,
    }
}

/// The command line as completions offer it: without the hidden commands (`_worker`,
/// `_cleanup`), which only testfleet itself starts. clap cannot remove a subcommand, so the
/// command is built again from its arguments and visible subcommands.
fn visible_command() -> clap::Command {
    use clap::CommandFactory as _;
    let full = Cli::command();
    let visible: Vec<clap::Command> = full
        .get_subcommands()
        .filter(|sub| !sub.is_hide_set())
        .cloned()
        .collect();
    let mut rebuilt = clap::Command::new("testfleet")
        .version(env!("CARGO_PKG_VERSION"))
        .subcommand_required(true);
    for arg in full.get_arguments() {
        rebuilt = rebuilt.arg(arg.clone());
    }
    rebuilt.subcommands(visible)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workers(line: &[&str]) -> usize {
        worker_threads(&Cli::try_parse_from(line).expect("a valid line").command)
    }

    #[test]
    fn one_worker_per_machine_at_most_one_per_core() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(workers(&["testfleet", "run", "d", "-m", "a"]), 1);
        assert_eq!(workers(&["testfleet", "_worker", "01J"]), 1);
        assert_eq!(
            workers(&["testfleet", "run", "d", "-m", "a", "-m", "b", "-m", "c"]),
            3.min(cores)
        );
        // Labels may select any number of machines.
        assert_eq!(workers(&["testfleet", "run", "d", "-l", "linux"]), cores);
        assert_eq!(workers(&["testfleet", "machines", "check"]), cores);
    }
}
