//! What commands print: the JSON envelope (`{"ok":true,"data":…}` / `{"ok":false,"error":…}`)
//! with `--json`, human text otherwise, colour only on a terminal and never with `NO_COLOR`.

use std::fmt::Write as _;
use std::io::{IsTerminal as _, Write as _};
use std::time::Duration;

use serde_json::{Value, json};
use testfleet_core::{FailureKind, Run, RunEventRecord, RunStatus, TestSummary};
use testfleet_results::case_label;

use crate::error::{CliError, Exit};

/// What a successful command produced.
#[derive(Debug)]
pub struct Report {
    /// The `data` of the JSON envelope.
    pub data: Value,
    /// The human text for stdout (may be empty when the command already streamed its output).
    pub human: String,
    pub exit: Exit,
}

impl Report {
    pub fn new(data: Value, human: String) -> Self {
        Self {
            data,
            human,
            exit: Exit::Ok,
        }
    }

    pub fn with_exit(mut self, exit: Exit) -> Self {
        self.exit = exit;
        self
    }
}

/// How to print.
#[derive(Debug, Clone, Copy)]
pub struct Style {
    pub json: bool,
    /// ANSI colour on stdout.
    pub color: bool,
    /// ANSI colour on stderr.
    pub color_stderr: bool,
    /// stdout is a terminal (tables get a header row).
    pub stdout_tty: bool,
}

impl Style {
    pub fn detect(json: bool) -> Self {
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|value| !value.is_empty());
        Self {
            json,
            color: !json && !no_color && std::io::stdout().is_terminal(),
            color_stderr: !no_color && std::io::stderr().is_terminal(),
            stdout_tty: !json && std::io::stdout().is_terminal(),
        }
    }

    /// A status word, coloured when allowed.
    pub fn status(&self, status: RunStatus) -> String {
        paint(self.color, status_color(status), status.as_str())
    }
}

fn status_color(status: RunStatus) -> &'static str {
    match status {
        RunStatus::Completed => "32",
        RunStatus::Failed | RunStatus::Timeout => "31",
        RunStatus::Interrupted => "33",
        RunStatus::Queued => "35",
        RunStatus::Pending | RunStatus::Running => "36",
    }
}

fn paint(enabled: bool, code: &str, text: &str) -> String {
    if enabled {
        format!("\x1b[{code}m{text}\x1b[0m")
    } else {
        text.to_owned()
    }
}

/// Prints a command's result and returns the process exit status.
pub fn emit(style: Style, result: Result<Report, CliError>) -> Exit {
    match result {
        Ok(report) => {
            if style.json {
                let mut data = report.data;
                null_missing_artifacts(&mut data);
                print_json(&json!({ "ok": true, "data": data }));
            } else if !report.human.is_empty() {
                let mut stdout = std::io::stdout().lock();
                // A closed stdout (a pipe into `head`) is not worth an error.
                let _ = stdout.write_all(report.human.as_bytes());
                let _ = stdout.flush();
            }
            report.exit
        }
        Err(error) => {
            emit_error(style, &error);
            Exit::for_error(error.code())
        }
    }
}

/// Prints an error: the envelope on stdout with `--json`, a line on stderr otherwise.
pub fn emit_error(style: Style, error: &CliError) {
    let code = error.code();
    if style.json {
        print_json(&json!({
            "ok": false,
            "error": { "code": code, "message": error.message(), "details": error.details() },
        }));
    } else {
        let label = paint(style.color_stderr, "31", &format!("error[{code}]"));
        eprintln!("{label}: {}", error.message());
    }
}

/// In every run record of `value`: `paths.artifacts` is null when nothing was downloaded (no
/// download, or no file), so that it never names a folder that does not exist.
fn null_missing_artifacts(value: &mut Value) {
    match value {
        Value::Object(object) => {
            let downloaded = object
                .get("artifacts")
                .and_then(|artifacts| artifacts.get("files"))
                .and_then(Value::as_u64)
                .is_some_and(|files| files > 0);
            let is_run = object.contains_key("test_dir_hash");
            if is_run
                && !downloaded
                && let Some(paths) = object.get_mut("paths").and_then(Value::as_object_mut)
            {
                paths.insert("artifacts".to_owned(), Value::Null);
            }
            object.values_mut().for_each(null_missing_artifacts);
        }
        Value::Array(items) => items.iter_mut().for_each(null_missing_artifacts),
        _ => {}
    }
}

fn print_json(value: &Value) {
    let mut stdout = std::io::stdout().lock();
    let text = serde_json::to_string_pretty(value).unwrap_or_else(|_| "{\"ok\":false}".into());
    let _ = writeln!(stdout, "{text}");
    let _ = stdout.flush();
}

/// `850ms`, `1.2s`, `2m03s`, `1h02m` (truncated, never rounded up to the next unit).
pub fn human_duration(duration: Duration) -> String {
    let ms = duration.as_millis();
    if ms < 1_000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        format!("{}.{}s", ms / 1_000, (ms % 1_000) / 100)
    } else if ms < 3_600_000 {
        format!("{}m{:02}s", ms / 60_000, (ms / 1000) % 60)
    } else {
        format!("{}h{:02}m", ms / 3_600_000, (ms / 60_000) % 60)
    }
}

/// One line per run, as `list` prints it.
pub fn run_table(style: Style, runs: &[Run]) -> String {
    if runs.is_empty() {
        return "no runs\n".to_owned();
    }
    let mut text = String::new();
    if style.stdout_tty {
        let _ = writeln!(
            text,
            "{:<26}  {:<16} {:<11} {:<24}  TEST DIR",
            "ID", "MACHINE", "STATUS", "CREATED"
        );
    }
    for run in runs {
        let _ = writeln!(
            text,
            "{}  {:<16} {:<11} {}  {}",
            run.id,
            run.machine.as_str(),
            // Pad before colouring so that the columns line up.
            style.status(run.status)
                + &" ".repeat(11usize.saturating_sub(run.status.as_str().len())),
            run.created_at,
            run.test_dir.display()
        );
    }
    text
}

/// Where a queued run stands: `waiting for linux-1: busy with 01J…, 2 ahead`, or for several
/// machines `waiting for linux-1 (busy with 01J…, 2 ahead) or linux-2 (free, 1 ahead)`.
pub fn waiting_line(places: &[testfleet_core::queue::QueuePlace]) -> String {
    let describe = |place: &testfleet_core::queue::QueuePlace| {
        format!(
            "{}, {} ahead",
            place
                .held_by
                .as_ref()
                .map_or_else(|| "free".to_owned(), |run| format!("busy with {run}")),
            place.ahead
        )
    };
    match places {
        [place] => format!("waiting for {}: {}", place.machine, describe(place)),
        places => format!(
            "waiting for {}",
            places
                .iter()
                .map(|place| format!("{} ({})", place.machine, describe(place)))
                .collect::<Vec<_>>()
                .join(" or ")
        ),
    }
}

/// `5 runs: 4 completed, 1 failed` (statuses in lifecycle order), for a fan-out's last line.
pub fn counts_line(runs: &[&Run]) -> String {
    let counts: Vec<String> = testfleet_core::RunStatus::ALL
        .into_iter()
        .filter_map(|status| {
            let n = runs.iter().filter(|run| run.status == status).count();
            (n > 0).then(|| format!("{n} {status}"))
        })
        .collect();
    format!("{} runs: {}\n", runs.len(), counts.join(", "))
}

/// The one-line summary of a run: status, exit code, duration, error, artifacts.
pub fn run_summary(style: Style, run: &Run, reused: bool) -> String {
    let mut line = format!("{} {} {}", run.id, run.machine, style.status(run.status));
    if run.status == testfleet_core::RunStatus::Queued {
        let machines: Vec<&str> = run.waiting_for.iter().map(|m| m.as_str()).collect();
        let _ = write!(line, " waiting for {}", machines.join(" or "));
    }
    if let Some(code) = run.exit_code {
        let _ = write!(line, " exit={code}");
    }
    if let Some(signal) = &run.signal {
        let _ = write!(line, " signal={signal}");
    }
    if let Some(ms) = run.duration_ms {
        let _ = write!(line, " in {}", human_duration(Duration::from_millis(ms)));
    }
    if reused {
        line.push_str(" (reused: this directory was already running there)");
    }
    if let Some(error) = &run.error {
        let _ = write!(line, " {}: {}", error.code, error.message);
    }
    if let Some(tests) = &run.tests {
        let _ = write!(line, " tests: {}", test_counts(tests));
    }
    // Only when the cache helped: otherwise everything was sent, as before the cache.
    if let Some(upload) = run.upload.filter(|upload| upload.cached_files > 0) {
        let _ = write!(line, " {}", upload_counts(&upload));
    }
    match &run.artifacts {
        Some(artifacts) if artifacts.files > 0 || !artifacts.skipped.is_empty() => {
            let _ = write!(
                line,
                " artifacts: {} ({})",
                run.paths.artifacts.display(),
                artifact_counts(artifacts)
            );
        }
        _ if run.status.is_terminal() => {
            let _ = write!(line, " logs: {}", run.paths.dir.display());
        }
        _ => {}
    }
    line.push('\n');
    if let Some(tests) = &run.tests {
        line.push_str(&test_failures(style, tests, "  "));
    }
    line
}

/// `41 passed, 2 failed, 1 skipped`, then `, N errors` when some case errored and
/// `(N unreadable reports)` when some file could not be read.
pub fn test_counts(tests: &TestSummary) -> String {
    let mut text = format!(
        "{} passed, {} failed, {} skipped",
        tests.passed, tests.failed, tests.skipped
    );
    if tests.errors > 0 {
        let _ = write!(text, ", {} error{}", tests.errors, plural(tests.errors));
    }
    if !tests.unreadable.is_empty() {
        let n = tests.unreadable.len() as u64;
        let _ = write!(text, " ({n} unreadable report{})", plural(n));
    }
    text
}

fn plural(n: u64) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// A size as people read it: `512 B`, `4.1 KiB`, `3.0 MiB`, `1.2 GiB` (powers of 1024, one
/// decimal).
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    #[expect(clippy::cast_precision_loss, reason = "one decimal is shown")]
    let mut value = bytes as f64 / 1024.0;
    let mut unit_idx = 0;
    while value >= 1024.0 && unit_idx + 1 < UNITS.len() {
        value /= 1024.0;
        unit_idx += 1;
    }
    format!("{value:.1} {}", UNITS[unit_idx])
}

/// `n` and the noun that goes with it: `1 file`, `0 files`, `2 files`.
pub fn counted(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// One line per failed case (`failed CLASS::NAME: message`), then per unreadable report.
pub fn test_failures(style: Style, tests: &TestSummary, indent: &str) -> String {
    let mut text = String::new();
    for failure in &tests.failures {
        let (word, code) = match failure.kind {
            FailureKind::Failure => ("failed", "31"),
            FailureKind::Error => ("error ", "31"),
        };
        let label = case_label(&failure.suite, failure.classname.as_deref(), &failure.name);
        let _ = write!(text, "{indent}{} {label}", paint(style.color, code, word));
        if !failure.message.is_empty() {
            let _ = write!(text, ": {}", failure.message);
        }
        text.push('\n');
    }
    if tests.failures_omitted > 0 {
        let _ = writeln!(
            text,
            "{indent}… and {} more failed or errored",
            tests.failures_omitted
        );
    }
    for unreadable in &tests.unreadable {
        let _ = writeln!(
            text,
            "{indent}unreadable report {}: {}",
            unreadable.path, unreadable.reason
        );
    }
    text
}

/// Every field of a run, as `status` prints it.
pub fn run_detail(style: Style, run: &Run) -> String {
    let mut text = String::new();
    let mut field = |name: &str, value: String| {
        let _ = writeln!(text, "{name:<13} {value}");
    };
    let opt = |value: Option<String>| value.unwrap_or_else(|| "-".to_owned());
    field("run", run.id.to_string());
    field("machine", format!("{} ({})", run.machine, run.os.as_str()));
    field("status", style.status(run.status));
    if let Some(error) = &run.error {
        field("error", format!("{}: {}", error.code, error.message));
    }
    field("exit code", opt(run.exit_code.map(|c| c.to_string())));
    if let Some(signal) = &run.signal {
        field("signal", signal.clone());
    }
    field("test dir", run.test_dir.display().to_string());
    field("hash", run.test_dir_hash.to_string());
    field("entrypoint", run.entrypoint.clone());
    field("created", run.created_at.to_string());
    field("started", opt(run.started_at.map(|t| t.to_string())));
    field("finished", opt(run.finished_at.map(|t| t.to_string())));
    field(
        "duration",
        opt(run
            .duration_ms
            .map(|ms| human_duration(Duration::from_millis(ms)))),
    );
    field(
        "timeout",
        opt(run
            .timeout_ms
            .map(|ms| humantime::format_duration(Duration::from_millis(ms)).to_string())),
    );
    field("remote dir", opt(run.remote_dir.clone()));
    field(
        "remote tree",
        opt(run
            .remote_cleanup
            .map(|cleanup| cleanup.as_str().to_owned())),
    );
    if let Some(pid) = run.worker_pid {
        field("owner pid", pid.to_string());
    }
    if let Some(expires_at) = run.lease_expires_at {
        field("lease until", expires_at.to_string());
    }
    if let Some(asked) = run.cancel_requested_at {
        field("cancel asked", asked.to_string());
    }
    field(
        "controller",
        opt(run.controller.as_ref().map(ToString::to_string)),
    );
    field("stdout", run.paths.stdout.display().to_string());
    field("stderr", run.paths.stderr.display().to_string());
    field(
        "upload",
        run.upload
            .as_ref()
            .map_or_else(|| "-".to_owned(), upload_counts),
    );
    field(
        "artifacts",
        match &run.artifacts {
            Some(a) if a.files > 0 => {
                format!("{} ({})", run.paths.artifacts.display(), artifact_counts(a))
            }
            Some(a) if !a.skipped.is_empty() => format!("none ({})", artifact_counts(a)),
            Some(_) => "none (the script left no artifacts/)".to_owned(),
            None => "-".to_owned(),
        },
    );
    if let Some(artifacts) = &run.artifacts {
        for skipped in &artifacts.skipped {
            field("  skipped", format!("{}: {}", skipped.path, skipped.reason));
        }
    }
    field(
        "tests",
        match &run.tests {
            Some(tests) if tests.reports.is_empty() => test_counts(tests),
            Some(tests) => format!("{} ({})", test_counts(tests), tests.reports.join(", ")),
            None => "-".to_owned(),
        },
    );
    if let Some(tests) = &run.tests {
        text.push_str(&test_failures(style, tests, &" ".repeat(14)));
    }
    text
}

/// `sent 3 files (2.0 MiB), 997 from the cache (628.1 MiB)`.
pub fn upload_counts(upload: &testfleet_core::UploadSummary) -> String {
    let files = usize::try_from(upload.files).unwrap_or(usize::MAX);
    let mut counts = format!(
        "sent {} ({})",
        counted(files, "file", "files"),
        human_size(upload.bytes)
    );
    if upload.cached_files > 0 {
        let _ = write!(
            counts,
            ", {} from the cache ({})",
            upload.cached_files,
            human_size(upload.cached_bytes)
        );
    }
    counts
}

/// `3 files, 4.1 KiB` (and `, 1 skipped` when some were).
fn artifact_counts(artifacts: &testfleet_core::ArtifactSummary) -> String {
    let files = usize::try_from(artifacts.files).unwrap_or(usize::MAX);
    let mut counts = format!(
        "{}, {}",
        counted(files, "file", "files"),
        human_size(artifacts.bytes)
    );
    if !artifacts.skipped.is_empty() {
        let _ = write!(counts, ", {} skipped", artifacts.skipped.len());
    }
    counts
}

/// A run's event history, one line per event.
pub fn events_table(events: &[RunEventRecord]) -> String {
    let mut text = String::from("events:\n");
    for event in events {
        let from = event.from.map_or("-", RunStatus::as_str);
        let _ = write!(text, "  {}  {from} -> {}", event.at, event.to);
        if let Some(code) = event.code {
            let _ = write!(text, "  {code}");
        }
        if let Some(detail) = &event.detail {
            let _ = write!(text, "  {detail}");
        }
        text.push('\n');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        for (ms, expected) in [
            (0, "0ms"),
            (37, "37ms"),
            (999, "999ms"),
            (1_234, "1.2s"),
            (59_999, "59.9s"),
            (61_000, "1m01s"),
            (3_723_000, "1h02m"),
        ] {
            assert_eq!(human_duration(Duration::from_millis(ms)), expected, "{ms}");
        }
    }

    #[test]
    fn sizes_and_plurals() {
        for (bytes, expected) in [
            (0, "0 B"),
            (1023, "1023 B"),
            (1024, "1.0 KiB"),
            (4_189, "4.1 KiB"),
            (3 * 1024 * 1024, "3.0 MiB"),
            (1_288_490_189, "1.2 GiB"),
        ] {
            assert_eq!(human_size(bytes), expected, "{bytes}");
        }
        assert_eq!(counted(1, "file", "files"), "1 file");
        assert_eq!(counted(0, "file", "files"), "0 files");
        assert_eq!(counted(2, "run", "runs"), "2 runs");
    }

    #[test]
    fn run_tables_have_a_header_row_on_a_terminal_only() {
        use testfleet_core::run::{NewRun, RunPaths};
        use testfleet_core::{Invocation, MachineName, RunId, TargetOs, TestDirHash, Timestamp};
        let id = RunId::from_parts(1_795_000_000_000, 7);
        let run = Run::pending(
            NewRun {
                paths: RunPaths::in_state_dir(std::path::Path::new("/s"), &id),
                id,
                machine: MachineName::parse("m1").expect("valid"),
                os: TargetOs::linux(),
                test_dir: "/t/suite".into(),
                test_dir_hash: TestDirHash::parse(&"ab".repeat(32)).expect("valid"),
                entrypoint: "run.sh".into(),
                invocation: Invocation::default(),
                created_at: Timestamp::from_unix_ms(1_795_000_000_000),
                timeout_ms: None,
                keep_remote: false,
                owner: None,
                lease: Duration::from_secs(30),
                controller: None,
            },
            Timestamp::from_unix_ms(1_795_000_000_000),
        );
        let style = |stdout_tty| Style {
            json: false,
            color: false,
            color_stderr: false,
            stdout_tty,
        };
        let piped = run_table(style(false), std::slice::from_ref(&run));
        let terminal = run_table(style(true), std::slice::from_ref(&run));
        assert!(piped.starts_with(run.id.as_str()), "{piped}");
        let (header, rest) = terminal.split_once('\n').expect("two lines");
        assert!(
            header.starts_with("ID ") && header.ends_with("TEST DIR"),
            "{header}"
        );
        assert_eq!(rest, piped);
        // The header's columns line up with the rows'.
        assert_eq!(header.find("MACHINE"), piped.find("m1"));
    }

    #[test]
    fn artifacts_paths_are_null_when_nothing_was_downloaded() {
        let run = |artifacts: Value| json!({"id": "X", "test_dir_hash": "h", "paths": {"artifacts": "/a"}, "artifacts": artifacts});
        let mut value = json!({"runs": [
            run(Value::Null),
            run(json!({"files": 0, "bytes": 0, "skipped": []})),
            run(json!({"files": 2, "bytes": 10, "skipped": []})),
        ], "run": run(Value::Null)});
        null_missing_artifacts(&mut value);
        assert_eq!(value["runs"][0]["paths"]["artifacts"], Value::Null);
        assert_eq!(value["runs"][1]["paths"]["artifacts"], Value::Null);
        assert_eq!(value["runs"][2]["paths"]["artifacts"], "/a");
        assert_eq!(value["run"]["paths"]["artifacts"], Value::Null);
    }
}
