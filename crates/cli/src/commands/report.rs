//! `testfleet report`: runs merged into a test × machine matrix, printed as a table or JSON,
//! and written as one merged JUnit document (`--junit`) and one HTML page (`--html`). Also the
//! `--report FILE.html` of `run` and `wait`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value, json};
use testfleet_core::ports::RunFilter;
use testfleet_core::{MachineName, Run, RunId, Timestamp};
use testfleet_results::html::html_report;
use testfleet_results::matrix::SLOWEST;
use testfleet_results::merged::{check, merged_junit};
use testfleet_results::{CaseOutcome, Cell, Limits, Matrix, RunCases};

use crate::cli::ReportArgs;
use crate::config::paths::absolute;
use crate::context::{Context, find_run, parse_run_ref};
use crate::error::{CliError, Exit};
use crate::output::{Report, Style};

/// `report RUN_ID... | --last N | --label L [--junit FILE] [--html FILE]`.
///
/// # Errors
/// `INVALID_ARGUMENT`, `RUN_NOT_FOUND`, `UNKNOWN_MACHINE` and `FLEET_CONFIG_INVALID` (for
/// `--label`), `STORE_ERROR`, `INTERNAL` when a file cannot be written.
pub async fn report(ctx: &Context, args: ReportArgs) -> Result<Report, CliError> {
    for typed in &args.run_ids {
        parse_run_ref(typed)?;
    }
    if args.last == Some(0) {
        return Err(CliError::invalid(
            "--last takes a number of runs of at least 1",
        ));
    }
    let fleet_machines = match &args.label {
        Some(label) => Some(labelled(ctx, label)?),
        None => None,
    };
    let store = ctx.open_and_reap().await?;
    let mut runs: Vec<Run> = Vec::new();
    if let Some(machines) = fleet_machines {
        for machine in machines {
            let newest = store
                .list(&RunFilter {
                    machine: Some(machine),
                    status: None,
                    limit: Some(1),
                })
                .await?;
            runs.extend(newest);
        }
    } else if let Some(last) = args.last {
        let mut newest = store
            .list(&RunFilter {
                limit: Some(last),
                ..RunFilter::default()
            })
            .await?;
        newest.sort_by(|a, b| a.machine.cmp(&b.machine).then_with(|| a.id.cmp(&b.id)));
        runs = newest;
    } else {
        let mut seen: Vec<RunId> = Vec::new();
        for typed in &args.run_ids {
            let run = find_run(store.as_ref(), typed, None).await?;
            if !seen.contains(&run.id) {
                seen.push(run.id.clone());
                runs.push(run);
            }
        }
    }

    let matrix = build(runs).await?;
    let junit = match &args.junit {
        Some(path) => Some(write_junit(&matrix, path)?),
        None => None,
    };
    let html = match &args.html {
        Some(path) => Some(write_html(&matrix, path)?),
        None => None,
    };
    let mut data = to_json(&matrix);
    data["junit"] = json!(junit);
    data["html"] = json!(html);
    let mut human = table(ctx.style, &matrix);
    for (what, path) in [("junit", &junit), ("html", &html)] {
        if let Some(path) = path {
            let _ = writeln!(human, "{what}: {}", path.display());
        }
    }
    Ok(Report::new(data, human))
}

/// The machines of the fleet with `label`, in fleet order.
fn labelled(ctx: &Context, label: &str) -> Result<Vec<MachineName>, CliError> {
    let fleet = ctx.fleet()?;
    let selected = fleet.select(&[], &[label.to_owned()])?;
    Ok(selected.iter().map(|m| m.spec.name.clone()).collect())
}

/// Reads the runs' reports again (on the blocking pool) and merges them.
///
/// # Errors
/// `INTERNAL` if the reading thread panicked.
pub async fn build(runs: Vec<Run>) -> Result<Matrix, CliError> {
    tokio::task::spawn_blocking(move || {
        let limits = Limits::default();
        Matrix::build(
            runs.into_iter()
                .map(|run| RunCases::load(run, &limits))
                .collect(),
        )
    })
    .await
    .map_err(|error| CliError::Internal(format!("reading the reports panicked: {error}")))
}

/// Writes the merged JUnit document, after checking it is what CI servers ingest.
fn write_junit(matrix: &Matrix, path: &Path) -> Result<PathBuf, CliError> {
    let xml = merged_junit(matrix)
        .map_err(|error| CliError::Internal(format!("cannot write the merged JUnit: {error}")))?;
    check(&xml).map_err(|problems| {
        CliError::Internal(format!(
            "the merged JUnit breaks what CI servers need: {}",
            problems.join("; ")
        ))
    })?;
    write(path, xml.as_bytes())
}

/// Writes the HTML page.
///
/// # Errors
/// `INTERNAL` naming the path.
pub fn write_html(matrix: &Matrix, path: &Path) -> Result<PathBuf, CliError> {
    write(
        path,
        html_report(matrix, &Timestamp::now().to_string()).as_bytes(),
    )
}

fn write(path: &Path, bytes: &[u8]) -> Result<PathBuf, CliError> {
    let path = absolute(path);
    std::fs::write(&path, bytes).map_err(|error| CliError::io("write", &path, error))?;
    Ok(path)
}

/// `--report FILE.html` of `run` and `wait`: the page of `runs` is written, and `data` gets
/// `report` (its path, or null when it could not be written: then a warning says why, and a
/// command that would exit 0 exits 3).
pub async fn report_for_runs(
    runs: Vec<Run>,
    path: &Path,
    data: &mut Value,
    exit: Exit,
) -> (String, Exit) {
    let written = match build(runs).await {
        Ok(matrix) => write_html(&matrix, path),
        Err(error) => Err(error),
    };
    match written {
        Ok(path) => {
            data["report"] = json!(path);
            (format!("report: {}\n", path.display()), exit)
        }
        Err(error) => {
            eprintln!("warning: the report was not written: {}", error.message());
            data["report"] = Value::Null;
            let exit = if exit == Exit::Ok {
                Exit::Internal
            } else {
                exit
            };
            (String::new(), exit)
        }
    }
}

fn outcome_word(cell: Option<&Cell>) -> (&'static str, &'static str) {
    match cell.map(|cell| cell.status) {
        Some(CaseOutcome::Passed) => ("pass", "32"),
        Some(CaseOutcome::Failed) => ("FAIL", "31"),
        Some(CaseOutcome::Error) => ("ERROR", "31"),
        Some(CaseOutcome::Skipped) => ("skip", "90"),
        None => ("-", "90"),
    }
}

/// The terminal table: the runs, the totals, every case that failed somewhere (each machine's
/// outcome), and the slowest cases.
fn table(style: Style, matrix: &Matrix) -> String {
    let mut text = String::new();
    if matrix.machines.is_empty() {
        return "no runs to report\n".to_owned();
    }
    let width = matrix
        .machines
        .iter()
        .map(|m| m.name.len())
        .max()
        .unwrap_or(0);
    for column in &matrix.machines {
        let counts = &column.counts;
        let _ = write!(
            text,
            "{:<width$}  {}  {}",
            column.name,
            column.run,
            style.status(column.status)
                + &" ".repeat(11usize.saturating_sub(column.status.as_str().len())),
        );
        match column.source {
            testfleet_results::CaseSource::None => text.push_str(" no test report"),
            source => {
                let _ = write!(
                    text,
                    " {} passed, {} failed, {} skipped",
                    counts.passed, counts.failed, counts.skipped
                );
                if counts.errors > 0 {
                    let _ = write!(text, ", {} errors", counts.errors);
                }
                if source == testfleet_results::CaseSource::Recorded {
                    text.push_str(" (reports gone: recorded failures only)");
                }
            }
        }
        text.push('\n');
        for unreadable in &column.unreadable {
            let _ = writeln!(
                text,
                "{:<width$}  unreadable report {}: {}",
                "", unreadable.path, unreadable.reason
            );
        }
    }
    let summary = &matrix.summary;
    let _ = writeln!(
        text,
        "\n{} cases on {} machines: {} failing, {} platform-specific, {} failing everywhere",
        summary.cases,
        matrix.machines.len(),
        summary.failing,
        summary.platform_specific,
        summary.failing_everywhere
    );
    let failing = matrix.failing();
    if !failing.is_empty() {
        let label_width = failing
            .iter()
            .map(|row| row.label.chars().count())
            .max()
            .unwrap_or(4)
            .max(4);
        let cell_widths: Vec<usize> = matrix
            .machines
            .iter()
            .map(|m| m.name.chars().count().max(5))
            .collect();
        let _ = write!(text, "\n{:<label_width$}", "case");
        for (column, cell_width) in matrix.machines.iter().zip(&cell_widths) {
            let _ = write!(text, "  {:<cell_width$}", column.name);
        }
        text.push('\n');
        for row in failing {
            let _ = write!(text, "{:<label_width$}", row.label);
            for (cell, cell_width) in row.cells.iter().zip(&cell_widths) {
                let (word, code) = outcome_word(cell.as_ref());
                let padding = " ".repeat(cell_width.saturating_sub(word.len()));
                let _ = write!(text, "  {}{padding}", paint(style, code, word));
            }
            if row.platform_specific {
                text.push_str("  platform-specific");
            } else {
                text.push_str("  everywhere");
            }
            text.push('\n');
        }
    }
    let passing = summary.cases - summary.failing;
    if passing > 0 {
        let _ = writeln!(
            text,
            "({passing} cases passed or were skipped on every machine that ran them; --json lists every case)"
        );
    }
    let slowest = matrix.slowest();
    if !slowest.is_empty() {
        let _ = writeln!(text, "\nslowest (at most {SLOWEST}):");
        for row in slowest {
            let _ = write!(text, "  {}", row.label);
            for (column, cell) in matrix.machines.iter().zip(&row.cells) {
                let duration = cell
                    .as_ref()
                    .and_then(|cell| cell.duration_ms)
                    .map_or_else(|| "-".to_owned(), |ms| format!("{ms}ms"));
                let _ = write!(text, "  {} {duration}", column.name);
            }
            text.push('\n');
        }
    }
    text.lines().fold(String::new(), |mut trimmed, line| {
        trimmed.push_str(line.trim_end());
        trimmed.push('\n');
        trimmed
    })
}

fn paint(style: Style, code: &str, text: &str) -> String {
    if style.color {
        format!("\x1b[{code}m{text}\x1b[0m")
    } else {
        text.to_owned()
    }
}

/// The `data` of `report --json`.
fn to_json(matrix: &Matrix) -> Value {
    let runs: Vec<Value> = matrix
        .machines
        .iter()
        .map(|column| {
            json!({
                "id": column.run,
                "machine": column.machine,
                "column": column.name,
                "status": column.status,
                "duration_ms": column.duration_ms,
                "tests_duration_ms": column.tests_duration_ms,
                "counts": column.counts,
                "source": column.source,
                "unreadable": column.unreadable,
            })
        })
        .collect();
    let cases: Vec<Value> = matrix
        .cases
        .iter()
        .map(|row| {
            let mut results = Map::new();
            for (column, cell) in matrix.machines.iter().zip(&row.cells) {
                results.insert(column.name.clone(), json!(cell));
            }
            json!({
                "label": row.label,
                "suite": row.suite,
                "classname": row.classname,
                "name": row.name,
                "platform_specific": row.platform_specific,
                "failed_on": row.failed_on,
                "results": results,
            })
        })
        .collect();
    let slowest: Vec<Value> = matrix
        .slowest()
        .iter()
        .map(|row| {
            let mut durations = Map::new();
            for (column, cell) in matrix.machines.iter().zip(&row.cells) {
                durations.insert(
                    column.name.clone(),
                    json!(cell.as_ref().and_then(|cell| cell.duration_ms)),
                );
            }
            json!({ "label": row.label, "max_ms": row.max_duration_ms(), "durations_ms": durations })
        })
        .collect();
    json!({
        "runs": runs,
        "summary": matrix.summary,
        "cases": cases,
        "slowest": slowest,
    })
}
