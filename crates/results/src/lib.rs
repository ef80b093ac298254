//! Test results people can read (`docs/contract.md#test-reports`): the JUnit XML reports a run
//! left among its artifacts, summarized into core's [`TestSummary`].
//!
//! - [`find`]: which files are reports (glob patterns relative to the artifacts folder, never
//!   outside it, never through a symlink);
//! - [`parse`]: reading one file within the [`Limits`]: size, cases, nesting; no DTD, so no
//!   entity is ever expanded; then [`quick_junit`] builds the report;
//! - [`read`]: every report of a run, and its [`TestSummary`]; [`JunitReports`] is core's
//!   [`ReportReader`](testfleet_core::runner::ReportReader) on top of it;
//!
//! Nothing here changes a run: a report that cannot be read is listed, with why, in
//! [`TestSummary::unreadable`].
//!
//! [`TestSummary`]: testfleet_core::TestSummary
//! [`TestSummary::unreadable`]: testfleet_core::TestSummary::unreadable

pub mod find;
pub mod limits;
pub mod parse;
pub mod read;

pub use find::{GlobError, ResultGlobs};
pub use limits::Limits;

pub use parse::{CaseOutcome, CaseResult, case_label};
pub use read::{JunitReports, RunReports, read_reports, summarize};
