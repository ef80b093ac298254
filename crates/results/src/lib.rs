//! Test results people can read (`docs/contract.md#test-reports`): the JUnit XML reports a run
//! left among its artifacts, summarized into core's [`TestSummary`], and runs merged into a
//! test × machine [`Matrix`], written as a merged JUnit document and a self-contained HTML
//! page.
//!
//! - [`find`]: which files are reports (glob patterns relative to the artifacts folder, never
//!   outside it, never through a symlink);
//! - [`parse`]: reading one file within the [`Limits`]: size, cases, nesting; no DTD, so no
//!   entity is ever expanded; then [`quick_junit`] builds the report;
//! - [`read`]: every report of a run, and its [`TestSummary`]; [`JunitReports`] is core's
//!   [`ReportReader`](testfleet_core::runner::ReportReader) on top of it;
//! - [`matrix`]: runs merged case by case, platform-specific failures flagged;
//! - [`merged`]: the matrix as one JUnit document (a testsuite per machine) and the checks
//!   GitLab and Jenkins need of it;
//! - [`html`]: the matrix as one HTML page with no external resource.
//!
//! Nothing here changes a run: a report that cannot be read is listed, with why, in
//! [`TestSummary::unreadable`].
//!
//! [`TestSummary`]: testfleet_core::TestSummary
//! [`TestSummary::unreadable`]: testfleet_core::TestSummary::unreadable

pub mod find;
pub mod html;
pub mod limits;
pub mod matrix;
pub mod merged;
pub mod parse;
pub mod read;

pub use find::{GlobError, ResultGlobs};
pub use limits::Limits;
pub use matrix::{CaseRow, CaseSource, Cell, MachineColumn, Matrix, RunCases};

pub use parse::{CaseOutcome, CaseResult, case_label};
pub use read::{JunitReports, RunReports, read_reports, summarize};
