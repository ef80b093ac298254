//! The command line (`docs/contract.md#commands`), declared with clap.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use testfleet_core::RunStatus;

/// Send a test directory to machines of a fleet over SSH, run it there, bring the results home.
#[derive(Debug, Parser)]
#[command(name = "testfleet", version, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Options accepted anywhere on the line.
#[derive(Debug, Clone, Args)]
pub struct GlobalArgs {
    /// The fleet file [default: $XDG_CONFIG_HOME/testfleet/fleet.toml]
    #[arg(long, global = true, env = "TESTFLEET_FLEET", value_name = "FILE")]
    pub fleet: Option<PathBuf>,
    /// The local state directory [default: $XDG_STATE_HOME/testfleet]
    #[arg(long, global = true, env = "TESTFLEET_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Print exactly one JSON document on stdout
    #[arg(long, global = true)]
    pub json: bool,
    /// Log diagnostics to stderr (-v debug, -vv trace); RUST_LOG works too
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a test directory on one or more machines
    #[command(
        after_help = "Examples:\n  testfleet run ./suite -m linux-1\n  testfleet run ./suite -l linux --detach --json\n  testfleet run ./suite -m linux-1 -e MODE=fast -e API_TOKEN -- --filter net\n  testfleet run ./suite -l ci --any --wait 30m"
    )]
    Run(RunArgs),
    /// Run a run's directory again on its machine, with its arguments and variables
    #[command(
        after_help = "Examples:\n  testfleet rerun last\n  testfleet rerun 01M8RF --detach\n  testfleet rerun last --wait 30m"
    )]
    Rerun {
        #[arg(value_name = "RUN_ID", help = RUN_ID_HELP, add = clap_complete::ArgValueCompleter::new(crate::complete::run_ids))]
        run_id: String,
        #[arg(short, long, value_name = "NAME", help = LAST_ON_MACHINE_HELP, add = clap_complete::ArgValueCompleter::new(crate::complete::machine_names))]
        machine: Option<String>,
        /// Start the run in the background and print it at once
        #[arg(long)]
        detach: bool,
        /// Wait in line for the machine if it is busy, as `run --wait [DUR]`
        #[arg(long, value_name = "DUR", num_args = 0..=1, default_missing_value = "forever", value_parser = wait_limit)]
        wait: Option<WaitLimit>,
        /// Send every file, not only what the machine's file cache lacks
        #[arg(long)]
        no_cache: bool,
    },
    /// Show one run (and its event history with --events)
    #[command(
        after_help = "Examples:\n  testfleet status last\n  testfleet status 01M8RF --events\n  testfleet status @ -m linux-1 --json"
    )]
    Status {
        #[arg(value_name = "RUN_ID", help = RUN_ID_HELP, add = clap_complete::ArgValueCompleter::new(crate::complete::run_ids))]
        run_id: String,
        #[arg(short, long, value_name = "NAME", help = LAST_ON_MACHINE_HELP, add = clap_complete::ArgValueCompleter::new(crate::complete::machine_names))]
        machine: Option<String>,
        /// Also show the run's event history
        #[arg(long)]
        events: bool,
    },
    /// Wait until runs are finished
    #[command(
        after_help = "Examples:\n  testfleet wait 01M8RF --timeout 30m\n  testfleet wait last -m linux-1 --json"
    )]
    Wait {
        #[arg(required = true, value_name = "RUN_ID", help = RUN_ID_HELP, add = clap_complete::ArgValueCompleter::new(crate::complete::run_ids))]
        run_ids: Vec<String>,
        #[arg(short, long, value_name = "NAME", help = LAST_ON_MACHINE_HELP, add = clap_complete::ArgValueCompleter::new(crate::complete::machine_names))]
        machine: Option<String>,
        /// Give up after this long (90s, 30m, 1h30m)
        #[arg(long, value_parser = duration, value_name = "DUR")]
        timeout: Option<Duration>,
        /// Write the HTML test report of the runs to this file at the end
        #[arg(long, value_name = "FILE.html")]
        report: Option<PathBuf>,
    },
    /// Print a run's output (stdout unless --stderr)
    #[command(
        after_help = "Examples:\n  testfleet logs last\n  testfleet logs 01M8RF --stderr\n  testfleet logs @ -f"
    )]
    Logs {
        #[arg(value_name = "RUN_ID", help = RUN_ID_HELP, add = clap_complete::ArgValueCompleter::new(crate::complete::run_ids))]
        run_id: String,
        #[arg(short, long, value_name = "NAME", help = LAST_ON_MACHINE_HELP, add = clap_complete::ArgValueCompleter::new(crate::complete::machine_names))]
        machine: Option<String>,
        /// The remote stderr instead of stdout
        #[arg(long)]
        stderr: bool,
        /// Keep printing new output until the run is finished
        #[arg(short, long)]
        follow: bool,
    },
    /// List runs, newest first
    #[command(
        after_help = "Examples:\n  testfleet list\n  testfleet list -m linux-1 --status failed --limit 5"
    )]
    List {
        /// Only runs on this machine
        #[arg(short, long, value_name = "NAME", add = clap_complete::ArgValueCompleter::new(crate::complete::machine_names))]
        machine: Option<String>,
        /// Only runs with this status
        #[arg(long, value_parser = status_parser())]
        status: Option<RunStatus>,
        /// At most this many runs
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// Stop a run: kill its remote process tree, fetch its artifacts
    #[command(after_help = "Examples:\n  testfleet cancel last\n  testfleet cancel 01M8RF --json")]
    Cancel {
        #[arg(value_name = "RUN_ID", help = RUN_ID_HELP, add = clap_complete::ArgValueCompleter::new(crate::complete::run_ids))]
        run_id: String,
        #[arg(short, long, value_name = "NAME", help = LAST_ON_MACHINE_HELP, add = clap_complete::ArgValueCompleter::new(crate::complete::machine_names))]
        machine: Option<String>,
    },
    /// Merge runs into a test × machine matrix (table, --json, --junit FILE, --html FILE)
    #[command(
        after_help = "Examples:\n  testfleet report --last 3\n  testfleet report --label linux --junit merged.xml --html report.html"
    )]
    Report(ReportArgs),
    /// Show and edit the machines of the fleet file
    #[command(subcommand)]
    #[command(
        after_help = "Examples:\n  testfleet machines list\n  testfleet machines check\n  testfleet machines trust linux-1 --fingerprint SHA256:…"
    )]
    Machines(MachinesCommand),
    /// Print the hash of a test directory (what `run` would upload)
    #[command(
        after_help = "Examples:\n  testfleet hash ./suite\n  testfleet hash ./suite --exclude '*.log' -v --json"
    )]
    Hash {
        #[arg(value_name = "DIR", help = DIR_HELP)]
        dir: PathBuf,
        /// Leave out what this gitignore pattern matches, as `run --exclude` does (repeatable)
        #[arg(long = "exclude", value_name = "GLOB")]
        excludes: Vec<String>,
    },
    /// Delete the local folders (logs, artifacts) of old finished runs (--remote: also prune
    /// the machines)
    ///
    /// With --remote, each machine's file cache is evicted down to its cache_max, and the
    /// remote folders of finished runs that were kept or lost their owner are removed.
    #[command(
        after_help = "Examples:\n  testfleet gc --dry-run\n  testfleet gc --older-than 30d\n  testfleet gc --remote -m linux-1 --dry-run"
    )]
    Gc {
        /// Only runs finished longer ago than this
        #[arg(long, value_parser = duration, default_value = "7d", value_name = "DUR")]
        older_than: Duration,
        /// Only list what would be removed
        #[arg(long)]
        dry_run: bool,
        /// Also on the machines: evict their file caches down to cache_max, and remove the
        /// remote folders of finished runs that were kept (--keep-remote) or lost their owner
        #[arg(long)]
        remote: bool,
        /// With --remote: only these machines (repeatable) [default: every machine]
        #[arg(short, long = "machine", value_name = "NAME", requires = "remote", add = clap_complete::ArgValueCompleter::new(crate::complete::machine_names))]
        machines: Vec<String>,
    },
    /// Print a shell completion script
    #[command(
        after_help = "Examples:\n  testfleet completions bash > ~/.local/share/bash-completion/completions/testfleet\n  testfleet completions zsh > \"${fpath[1]}/_testfleet\""
    )]
    Completions { shell: clap_complete::Shell },
    /// Execute a pending run detached (started by `run --detach`)
    #[command(name = "_worker", hide = true)]
    Worker {
        run_id: String,
        #[arg(long)]
        accept_new_host_key: bool,
        /// How long a queued run may wait for its machine, as `run --detach --wait` was given it
        #[arg(long, value_name = "DUR", num_args = 0..=1, default_missing_value = "forever", value_parser = wait_limit)]
        wait: Option<WaitLimit>,
        /// The run's `--results` patterns, as `run --detach` was given them
        #[arg(long = "results", value_name = "GLOB")]
        results: Vec<String>,
        /// Send every file, as `run --no-cache` asked
        #[arg(long)]
        no_cache: bool,
    },
    /// Finish a run whose owner died: kill what is left of it, fetch its artifacts, remove its
    /// remote folder (started by the reaper)
    #[command(name = "_cleanup", hide = true)]
    Cleanup { run_id: String },
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[arg(value_name = "DIR", help = DIR_HELP)]
    pub dir: PathBuf,
    /// A machine to run on (repeat for several)
    #[arg(short, long = "machine", value_name = "NAME", add = clap_complete::ArgValueCompleter::new(crate::complete::machine_names))]
    pub machines: Vec<String>,
    /// Run on every machine with this label (repeatable)
    #[arg(short, long = "label", value_name = "LABEL", add = clap_complete::ArgValueCompleter::new(crate::complete::labels))]
    pub labels: Vec<String>,
    /// Kill the test after this long (90s, 30m, 1h30m) [default: the fleet file's timeout]
    #[arg(long, value_parser = duration, value_name = "DUR")]
    pub timeout: Option<Duration>,
    /// Start the run(s) in the background and print them at once
    #[arg(long)]
    pub detach: bool,
    /// Keep the remote run folder afterwards
    #[arg(long)]
    pub keep_remote: bool,
    /// Send every file, not only what the machine's file cache lacks
    #[arg(long)]
    pub no_cache: bool,
    /// Record an unknown host key in known_hosts (like OpenSSH's accept-new)
    #[arg(long)]
    pub accept_new_host_key: bool,
    /// Where the JUnit reports are among the artifacts (repeatable) [default: the fleet
    /// file's results, else **/*.xml]
    #[arg(long = "results", value_name = "GLOB")]
    pub results: Vec<String>,
    /// Write the HTML test report of the runs to this file at the end (not with --detach)
    #[arg(long, value_name = "FILE.html", conflicts_with = "detach")]
    pub report: Option<PathBuf>,
    /// Set a variable for the script: KEY=VALUE is recorded with the run; KEY alone is a
    /// secret, its value taken from this environment and never stored (repeatable)
    #[arg(short = 'e', long = "env", value_name = "KEY[=VALUE]")]
    pub env: Vec<String>,
    /// Leave out of the hash and the upload what this gitignore pattern matches, after
    /// .testfleetignore (repeatable)
    #[arg(long = "exclude", value_name = "GLOB")]
    pub excludes: Vec<String>,
    /// Arguments for run.sh / run.ps1, passed exactly, after `--`
    #[arg(last = true, value_name = "ARGS")]
    pub args: Vec<String>,
    /// Wait for a busy machine instead of failing with MACHINE_BUSY: the run is queued and
    /// granted the machine in turn; give up after DUR (90s, 30m) [default: no limit]
    #[arg(long, value_name = "DUR", num_args = 0..=1, default_missing_value = "forever", value_parser = wait_limit)]
    pub wait: Option<WaitLimit>,
    /// Run once, on one of the selected machines: a free one (least recently used first), or,
    /// with --wait, the first that frees
    #[arg(long)]
    pub any: bool,
    /// At most N runs executing at once (and N logins dialed ahead); the rest wait their turn here
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_PARALLEL, value_parser = clap::value_parser!(u16).range(1..))]
    pub max_parallel: u16,
}

/// `--max-parallel` when not given, like ClusterShell's fanout.
pub const DEFAULT_MAX_PARALLEL: u16 = 64;

/// How long `run --wait` may wait for a machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitLimit {
    /// `--wait` alone: until granted (or cancelled).
    Forever,
    /// `--wait DUR`.
    For(Duration),
}

impl WaitLimit {
    /// The limit as the runner takes it: `None` for none.
    pub fn limit(self) -> Option<Duration> {
        match self {
            Self::Forever => None,
            Self::For(limit) => Some(limit),
        }
    }
}

fn wait_limit(text: &str) -> Result<WaitLimit, String> {
    if text == "forever" {
        return Ok(WaitLimit::Forever);
    }
    crate::config::parse_duration(text)
        .map(WaitLimit::For)
        .map_err(|error| {
            format!("{error} (to wait without a limit, give --wait alone, after the directory)")
        })
}

/// What every `DIR` argument is.
const DIR_HELP: &str = "The test directory: holds run.sh (run.ps1 for Windows) at its root; .git/ and what its .testfleetignore lists are left out";

/// What every `RUN_ID` argument accepts.
const RUN_ID_HELP: &str =
    "The run: its id, the first 4 or more characters of it, or `last` (or `@`) for the newest run";

/// `-m` beside a `RUN_ID`.
const LAST_ON_MACHINE_HELP: &str = "With `last`: the newest run of this machine";

/// Which runs `report` merges: ids, the newest N, or each labelled machine's newest.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("runs").required(true).multiple(false).args(["run_ids", "last", "label"])))]
pub struct ReportArgs {
    /// The runs to merge, one column each: ids, the first 4 or more characters of ids, or
    /// `last`
    #[arg(value_name = "RUN_ID", add = clap_complete::ArgValueCompleter::new(crate::complete::run_ids))]
    pub run_ids: Vec<String>,
    /// The newest N runs
    #[arg(long, value_name = "N")]
    pub last: Option<usize>,
    /// The newest run of every machine with this label
    #[arg(long, value_name = "LABEL", add = clap_complete::ArgValueCompleter::new(crate::complete::labels))]
    pub label: Option<String>,
    /// Also write the merged JUnit document (one testsuite per machine) to this file
    #[arg(long, value_name = "FILE")]
    pub junit: Option<PathBuf>,
    /// Also write the HTML report (one self-contained page) to this file
    #[arg(long, value_name = "FILE")]
    pub html: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum MachinesCommand {
    /// List the machines of the fleet file
    #[command(after_help = "Examples:\n  testfleet machines list --json")]
    List,
    /// Add a machine to the fleet file
    #[command(
        after_help = "Examples:\n  testfleet machines add linux-1 --host 10.0.0.5 --user ci -l linux\n  testfleet machines add win-1 --host 10.0.0.9 --os windows"
    )]
    Add(AddMachineArgs),
    /// Remove a machine from the fleet file
    #[command(after_help = "Examples:\n  testfleet machines remove linux-1")]
    Remove {
        #[arg(add = clap_complete::ArgValueCompleter::new(crate::complete::machine_names))]
        name: String,
    },
    /// Dial machines (all without NAME): host key, login, OS and latency
    #[command(
        after_help = "Examples:\n  testfleet machines check\n  testfleet machines check linux-1 --json"
    )]
    Check {
        #[arg(add = clap_complete::ArgValueCompleter::new(crate::complete::machine_names))]
        name: Option<String>,
    },
    /// Show a machine's host key fingerprint and add it to known_hosts
    #[command(
        after_help = "Examples:\n  testfleet machines trust linux-1\n  testfleet machines trust linux-1 --fingerprint SHA256:rkWhiMS48jTYga8LQRSwwgSV7tqbLob3vYWGsy4yuB4"
    )]
    Trust {
        #[arg(add = clap_complete::ArgValueCompleter::new(crate::complete::machine_names))]
        name: String,
        /// Trust the key without asking (needed when stdin is not a terminal)
        #[arg(long, short = 'y')]
        yes: bool,
        /// Trust the key only if it has this fingerprint (SHA256:… as `ssh-keygen -lf`
        /// prints it); another key is refused
        #[arg(long, value_name = "SHA256:…")]
        fingerprint: Option<String>,
    },
    /// Show each machine as idle or busy (with which run, since when) and how many runs wait
    /// for it
    #[command(
        after_help = "Examples:\n  testfleet machines status\n  testfleet machines status linux-1 linux-2 --json"
    )]
    Status {
        /// Only these machines [default: every machine of the fleet file]
        #[arg(add = clap_complete::ArgValueCompleter::new(crate::complete::machine_names))]
        names: Vec<String>,
    },
    /// Show how many files the machine's file cache holds, and how large it is
    #[command(
        after_help = "Examples:\n  testfleet machines cache linux-1\n  testfleet machines cache linux-1 --json"
    )]
    Cache {
        #[arg(add = clap_complete::ArgValueCompleter::new(crate::complete::machine_names))]
        name: String,
    },
}

#[derive(Debug, Args)]
pub struct AddMachineArgs {
    pub name: String,
    /// Host name or address [default: NAME, looked up in ~/.ssh/config]
    #[arg(long)]
    pub host: Option<String>,
    #[arg(long)]
    pub port: Option<u16>,
    #[arg(long)]
    pub user: Option<String>,
    /// linux, macos, freebsd, windows, …
    #[arg(long)]
    pub os: Option<String>,
    /// A label (repeatable)
    #[arg(short, long = "label", value_name = "LABEL", add = clap_complete::ArgValueCompleter::new(crate::complete::labels))]
    pub labels: Vec<String>,
}

/// A run status as a flag value: the names of the run record, listed in `--help` and offered
/// to completion.
fn status_parser() -> impl clap::builder::TypedValueParser<Value = RunStatus> {
    use clap::builder::TypedValueParser as _;
    clap::builder::PossibleValuesParser::new(RunStatus::ALL.map(RunStatus::as_str))
        .map(|text| RunStatus::parse(&text).expect("every possible value names a status"))
}

fn duration(text: &str) -> Result<Duration, String> {
    crate::config::parse_duration(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn global_options_are_accepted_anywhere() {
        let cli = Cli::try_parse_from(["testfleet", "list", "--json", "--state-dir", "/s"])
            .expect("valid");
        assert!(cli.global.json);
        assert_eq!(cli.global.state_dir, Some(PathBuf::from("/s")));
        let cli = Cli::try_parse_from(["testfleet", "--json", "-v", "hash", "."]).expect("valid");
        assert!(cli.global.json);
        assert_eq!(cli.global.verbose, 1);
    }
}
