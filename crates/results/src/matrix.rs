//! Runs merged into a test × machine matrix: each case's outcome per machine, failures that
//! happen on some machines and not on others flagged platform-specific, and the slowest cases.
//!
//! A run's cases come from its reports, read again from its local artifacts (the files its
//! `tests.reports` names). When those are gone (`gc`), the failures the run recorded stand in
//! for them, and the column says so.

use std::collections::HashMap;

use serde::Serialize;
use testfleet_core::{FailureKind, Run, RunStatus, UnreadableReport};

use crate::find::ResultGlobs;
use crate::limits::Limits;
use crate::parse::{CaseOutcome, CaseResult, case_label};
use crate::read::read_reports;

/// Where a run's cases came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CaseSource {
    /// Its reports, read again: every case.
    Reports,
    /// Its reports are gone: only the failed cases it recorded.
    Recorded,
    /// It recorded no test report.
    None,
}

/// One run's cases, ready to be merged.
#[derive(Debug, Clone)]
pub struct RunCases {
    /// The run.
    pub run: Run,
    /// Its cases, in report order.
    pub cases: Vec<CaseResult>,
    /// Where they came from.
    pub source: CaseSource,
    /// Its reports that could not be read (when it ran, or now).
    pub unreadable: Vec<UnreadableReport>,
}

impl RunCases {
    /// The cases of `run`, its reports read again within `limits`.
    pub fn load(run: Run, limits: &Limits) -> Self {
        let Some(tests) = &run.tests else {
            return Self {
                run,
                cases: Vec::new(),
                source: CaseSource::None,
                unreadable: Vec::new(),
            };
        };
        let mut unreadable = tests.unreadable.clone();
        let globs = ResultGlobs::new(&[]).expect("the default pattern compiles");
        let reports = read_reports(&run.paths.artifacts, &globs, Some(&tests.reports), limits);
        if reports.files.len() == tests.reports.len() {
            unreadable.extend(reports.unreadable.iter().cloned());
            let cases = reports.cases().cloned().collect();
            return Self {
                run,
                cases,
                source: CaseSource::Reports,
                unreadable,
            };
        }
        let cases = tests
            .failures
            .iter()
            .map(|failure| CaseResult {
                suite: failure.suite.clone(),
                classname: failure.classname.clone(),
                name: failure.name.clone(),
                outcome: match failure.kind {
                    FailureKind::Failure => CaseOutcome::Failed,
                    FailureKind::Error => CaseOutcome::Error,
                },
                duration_ms: None,
                message: failure.message.clone(),
                detail: String::new(),
            })
            .collect();
        Self {
            run,
            cases,
            source: CaseSource::Recorded,
            unreadable,
        }
    }
}

/// Case counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    /// Every case.
    pub total: u64,
    /// Passed.
    pub passed: u64,
    /// Failed (`<failure>`).
    pub failed: u64,
    /// Errored (`<error>`).
    pub errors: u64,
    /// Skipped.
    pub skipped: u64,
}

impl Counts {
    fn add(&mut self, outcome: CaseOutcome) {
        self.total += 1;
        match outcome {
            CaseOutcome::Passed => self.passed += 1,
            CaseOutcome::Failed => self.failed += 1,
            CaseOutcome::Error => self.errors += 1,
            CaseOutcome::Skipped => self.skipped += 1,
        }
    }
}

/// One column: a run on a machine.
#[derive(Debug, Clone, Serialize)]
pub struct MachineColumn {
    /// The column's name: the machine, or `machine (run id)` when the machine has several runs
    /// in the matrix. Unique.
    pub name: String,
    /// The machine.
    pub machine: String,
    /// The run.
    pub run: String,
    /// The run's status.
    pub status: RunStatus,
    /// The run's duration.
    pub duration_ms: Option<u64>,
    /// What its reports say the tests took.
    pub tests_duration_ms: u64,
    /// Its cases by outcome (as the run recorded them when its reports are gone).
    pub counts: Counts,
    /// Where its cases came from.
    pub source: CaseSource,
    /// Its reports that could not be read.
    pub unreadable: Vec<UnreadableReport>,
}

/// A case on one machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Cell {
    /// How it ended there.
    pub status: CaseOutcome,
    /// Its time there.
    pub duration_ms: Option<u64>,
    /// The first line of its message; empty when none.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// The text of its failure element, bounded (not in JSON: the merged JUnit and the HTML
    /// page carry it).
    #[serde(skip)]
    pub detail: String,
}

/// One row: a case, and its cell on each machine (`None`: not in that machine's reports).
#[derive(Debug, Clone, Serialize)]
pub struct CaseRow {
    /// How people call it: `classname::name` (see [`case_label`]).
    pub label: String,
    /// Its suite.
    pub suite: String,
    /// Its classname.
    pub classname: Option<String>,
    /// Its name; a second case of the same name in one run gets ` (2)`, so names are unique.
    pub name: String,
    /// Failed or errored on some machine and passed on another.
    pub platform_specific: bool,
    /// The columns where it failed or errored.
    pub failed_on: Vec<String>,
    /// Its cells, one per column, in column order.
    #[serde(skip)]
    pub cells: Vec<Option<Cell>>,
}

impl CaseRow {
    /// Failed or errored on at least one machine.
    pub fn failed_somewhere(&self) -> bool {
        !self.failed_on.is_empty()
    }

    /// The longest time it took on any machine.
    pub fn max_duration_ms(&self) -> u64 {
        self.cells
            .iter()
            .flatten()
            .filter_map(|cell| cell.duration_ms)
            .max()
            .unwrap_or(0)
    }
}

/// What the matrix says as a whole.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct MatrixSummary {
    /// Distinct cases (rows).
    pub cases: u64,
    /// Cases that failed or errored somewhere.
    pub failing: u64,
    /// Of those, failing on some machines and passing on others.
    pub platform_specific: u64,
    /// Of those, failing on every machine that ran them.
    pub failing_everywhere: u64,
    /// Every cell by outcome.
    pub counts: Counts,
}

/// The merged runs.
#[derive(Debug, Clone)]
pub struct Matrix {
    /// The columns, in the order the runs were given.
    pub machines: Vec<MachineColumn>,
    /// The rows, in order of first appearance (column by column, in report order).
    pub cases: Vec<CaseRow>,
    /// The totals.
    pub summary: MatrixSummary,
}

/// Rows listed as the slowest.
pub const SLOWEST: usize = 10;

impl Matrix {
    /// Merges `runs` (one column each) case by case. Cases are the same case when their
    /// classname (or suite, without one) and name are.
    pub fn build(runs: Vec<RunCases>) -> Self {
        let mut per_machine: HashMap<String, usize> = HashMap::new();
        for run in &runs {
            *per_machine
                .entry(run.run.machine.as_str().to_owned())
                .or_default() += 1;
        }
        let n_columns = runs.len();
        let mut machines = Vec::with_capacity(n_columns);
        let mut cases: Vec<CaseRow> = Vec::new();
        let mut row_of: HashMap<(String, String), usize> = HashMap::new();
        for (column_idx, run) in runs.into_iter().enumerate() {
            let machine = run.run.machine.as_str().to_owned();
            let name = if per_machine.get(&machine).copied().unwrap_or(0) > 1 {
                format!("{machine} ({})", run.run.id)
            } else {
                machine.clone()
            };
            let mut counts = Counts::default();
            let mut seen: HashMap<(String, String), u32> = HashMap::new();
            for case in run.cases {
                counts.add(case.outcome);
                let group = case
                    .classname
                    .clone()
                    .filter(|c| !c.is_empty())
                    .unwrap_or_else(|| case.suite.clone());
                let occurrence = seen.entry((group.clone(), case.name.clone())).or_default();
                *occurrence += 1;
                let unique_name = if *occurrence == 1 {
                    case.name.clone()
                } else {
                    format!("{} ({occurrence})", case.name)
                };
                let key = (group, unique_name.clone());
                let row_idx = *row_of.entry(key).or_insert_with(|| {
                    cases.push(CaseRow {
                        label: case_label(&case.suite, case.classname.as_deref(), &unique_name),
                        suite: case.suite.clone(),
                        classname: case.classname.clone(),
                        name: unique_name,
                        platform_specific: false,
                        failed_on: Vec::new(),
                        cells: vec![None; n_columns],
                    });
                    cases.len() - 1
                });
                cases[row_idx].cells[column_idx] = Some(Cell {
                    status: case.outcome,
                    duration_ms: case.duration_ms,
                    message: case.message,
                    detail: case.detail,
                });
            }
            let tests_duration_ms = run.run.tests.as_ref().map_or(0, |t| t.duration_ms);
            if run.source == CaseSource::Recorded
                && let Some(tests) = &run.run.tests
            {
                counts = Counts {
                    total: tests.total,
                    passed: tests.passed,
                    failed: tests.failed,
                    errors: tests.errors,
                    skipped: tests.skipped,
                };
            }
            machines.push(MachineColumn {
                name,
                machine,
                run: run.run.id.to_string(),
                status: run.run.status,
                duration_ms: run.run.duration_ms,
                tests_duration_ms,
                counts,
                source: run.source,
                unreadable: run.unreadable,
            });
        }
        let mut summary = MatrixSummary::default();
        for row in &mut cases {
            let mut passed_somewhere = false;
            for (column, cell) in machines.iter().zip(&row.cells) {
                let Some(cell) = cell else { continue };
                summary.counts.add(cell.status);
                passed_somewhere |= cell.status == CaseOutcome::Passed;
                if cell.status.is_failure() {
                    row.failed_on.push(column.name.clone());
                }
            }
            row.platform_specific = row.failed_somewhere() && passed_somewhere;
            summary.cases += 1;
            if row.failed_somewhere() {
                summary.failing += 1;
                if row.platform_specific {
                    summary.platform_specific += 1;
                } else if !passed_somewhere
                    && row
                        .cells
                        .iter()
                        .flatten()
                        .all(|cell| cell.status.is_failure())
                {
                    summary.failing_everywhere += 1;
                }
            }
        }
        Self {
            machines,
            cases,
            summary,
        }
    }

    /// The rows that failed or errored somewhere, platform-specific ones first.
    pub fn failing(&self) -> Vec<&CaseRow> {
        let mut failing: Vec<&CaseRow> =
            self.cases.iter().filter(|r| r.failed_somewhere()).collect();
        failing.sort_by_key(|row| !row.platform_specific);
        failing
    }

    /// The [`SLOWEST`] rows by their longest time on any machine, slowest first.
    pub fn slowest(&self) -> Vec<&CaseRow> {
        let mut rows: Vec<&CaseRow> = self
            .cases
            .iter()
            .filter(|row| row.max_duration_ms() > 0)
            .collect();
        rows.sort_by_key(|row| std::cmp::Reverse(row.max_duration_ms()));
        rows.truncate(SLOWEST);
        rows
    }
}
