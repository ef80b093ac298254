//! The matrix as one JUnit document for CI servers: a `<testsuite>` per column (machine),
//! every case's classname prefixed with its machine, so that every (classname, name) pair is
//! unique across the document, and [`check`], the rules GitLab's and Jenkins' readers need.

use std::collections::HashSet;
use std::time::Duration;

use quick_junit::{NonSuccessKind, Property, Report, TestCase, TestCaseStatus, TestSuite};
use quick_xml::Reader;
use quick_xml::events::Event;

use crate::matrix::Matrix;
use crate::parse::CaseOutcome;

/// The name of the merged document's `<testsuites>`.
pub const REPORT_NAME: &str = "testfleet report";

/// The merged JUnit document of `matrix`.
///
/// # Errors
/// quick-junit's serialization error (it writes to memory, so in practice none).
pub fn merged_junit(matrix: &Matrix) -> Result<String, quick_junit::SerializeError> {
    let mut report = Report::new(REPORT_NAME);
    for (column_idx, column) in matrix.machines.iter().enumerate() {
        let mut suite = TestSuite::new(column.name.as_str());
        suite.add_property(Property::new("testfleet.run", column.run.as_str()));
        suite.add_property(Property::new("testfleet.machine", column.machine.as_str()));
        suite.add_property(Property::new("testfleet.status", column.status.as_str()));
        let mut suite_ms = 0_u64;
        for row in &matrix.cases {
            let Some(cell) = &row.cells[column_idx] else {
                continue;
            };
            let mut status = match cell.status {
                CaseOutcome::Passed => TestCaseStatus::success(),
                CaseOutcome::Failed => TestCaseStatus::non_success(NonSuccessKind::Failure),
                CaseOutcome::Error => TestCaseStatus::non_success(NonSuccessKind::Error),
                CaseOutcome::Skipped => TestCaseStatus::skipped(),
            };
            if cell.status != CaseOutcome::Passed {
                status.set_message(cell.message.as_str());
                if !cell.detail.is_empty() {
                    status.set_description(cell.detail.as_str());
                }
            }
            let mut case = TestCase::new(row.name.as_str(), status);
            let group = row
                .classname
                .as_deref()
                .filter(|c| !c.is_empty())
                .unwrap_or(&row.suite);
            case.set_classname(format!("{}.{group}", column.name));
            let ms = cell.duration_ms.unwrap_or(0);
            suite_ms = suite_ms.saturating_add(ms);
            case.set_time(Duration::from_millis(ms));
            suite.add_test_case(case);
        }
        suite.set_time(Duration::from_millis(suite_ms));
        report.add_test_suite(suite);
    }
    report.to_string()
}

/// What [`check`] found in an accepted document.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Checked {
    /// `<testsuite>` names, in order.
    pub suites: Vec<String>,
    /// Every `<testcase>`.
    pub cases: u64,
    /// Those with a `<failure>`.
    pub failures: u64,
    /// Those with an `<error>`.
    pub errors: u64,
    /// Those with a `<skipped>`.
    pub skipped: u64,
}

/// Checks a JUnit document against what GitLab (`artifacts:reports:junit`) and Jenkins (the
/// `junit` step) need to ingest it case by case: well-formed UTF-8 XML without a DTD; a
/// `<testsuites>` root holding only `<testsuite>`s, each with a unique non-empty `name`, and
/// `tests`, `failures`, `errors` and `skipped` counts that match its cases and a `time` that
/// is a non-negative number; each `<testcase>` with a non-empty `name` and `classname`, a
/// numeric `time`, at most one `<failure>`, `<error>` or `<skipped>`, and a (classname, name)
/// pair no other case of the document has.
///
/// # Errors
/// Every rule broken, one message each.
pub fn check(xml: &str) -> Result<Checked, Vec<String>> {
    let mut problems = Vec::new();
    let mut checked = Checked::default();
    let mut reader = Reader::from_str(xml);
    let mut stack: Vec<String> = Vec::new();
    let mut suite_names = HashSet::new();
    let mut case_keys = HashSet::new();
    // The open suite: its declared counts and what its cases add up to.
    let mut suite: Option<SuiteTally> = None;
    let mut statuses_in_case = 0_u32;
    loop {
        let event = match reader.read_event() {
            Ok(event) => event,
            Err(error) => {
                problems.push(format!(
                    "not well-formed XML at byte {}: {error}",
                    reader.error_position()
                ));
                break;
            }
        };
        match event {
            Event::DocType(_) => problems.push("has a DTD".to_owned()),
            Event::Start(ref element) | Event::Empty(ref element) => {
                let is_empty = matches!(event, Event::Empty(_));
                let name = String::from_utf8_lossy(element.name().as_ref()).into_owned();
                let mut attributes = std::collections::HashMap::new();
                for attribute in element.attributes() {
                    match attribute {
                        Ok(attribute) => {
                            let value = attribute
                                .normalized_value(quick_xml::XmlVersion::Implicit1_0)
                                .map(|v| v.into_owned())
                                .unwrap_or_default();
                            attributes.insert(
                                String::from_utf8_lossy(attribute.key.as_ref()).into_owned(),
                                value,
                            );
                        }
                        Err(error) => {
                            problems.push(format!("a bad attribute in <{name}>: {error}"))
                        }
                    }
                }
                let parent = stack.last().map(String::as_str);
                match (parent, name.as_str()) {
                    (None, "testsuites") => {}
                    (None, other) => {
                        problems.push(format!("the root is <{other}>, not <testsuites>"))
                    }
                    (Some("testsuites"), "testsuite") => {
                        let suite_name = attributes.get("name").cloned().unwrap_or_default();
                        if suite_name.is_empty() {
                            problems.push("a <testsuite> has no name".to_owned());
                        } else if !suite_names.insert(suite_name.clone()) {
                            problems.push(format!("two <testsuite>s are named {suite_name:?}"));
                        }
                        check_time(
                            &attributes,
                            &format!("<testsuite name={suite_name:?}>"),
                            &mut problems,
                        );
                        let count = |key: &str| -> Option<u64> {
                            attributes.get(key).and_then(|v| v.parse().ok())
                        };
                        for key in ["tests", "failures", "errors", "skipped"] {
                            if count(key).is_none() {
                                problems.push(format!(
                                    "<testsuite name={suite_name:?}> has no numeric {key}"
                                ));
                            }
                        }
                        checked.suites.push(suite_name.clone());
                        suite = Some(SuiteTally {
                            name: suite_name,
                            declared: [
                                count("tests"),
                                count("failures"),
                                count("errors"),
                                count("skipped"),
                            ],
                            counted: [0; 4],
                        });
                    }
                    (Some("testsuites"), other) => {
                        problems.push(format!("<testsuites> holds a <{other}>"));
                    }
                    (Some("testsuite"), "testcase") => {
                        let case_name = attributes.get("name").cloned().unwrap_or_default();
                        let classname = attributes.get("classname").cloned().unwrap_or_default();
                        if case_name.is_empty() || classname.is_empty() {
                            problems.push(format!(
                                "a <testcase> lacks a name or classname ({classname:?}, {case_name:?})"
                            ));
                        }
                        if !case_keys.insert((classname.clone(), case_name.clone())) {
                            problems.push(format!("two <testcase>s are {classname}::{case_name}"));
                        }
                        check_time(
                            &attributes,
                            &format!("<testcase name={case_name:?}>"),
                            &mut problems,
                        );
                        checked.cases += 1;
                        if let Some(suite) = &mut suite {
                            suite.counted[0] += 1;
                        }
                        statuses_in_case = 0;
                    }
                    (Some("testcase"), status @ ("failure" | "error" | "skipped")) => {
                        statuses_in_case += 1;
                        if statuses_in_case > 1 {
                            problems.push("a <testcase> has more than one status".to_owned());
                        }
                        let slot = match status {
                            "failure" => {
                                checked.failures += 1;
                                1
                            }
                            "error" => {
                                checked.errors += 1;
                                2
                            }
                            _ => {
                                checked.skipped += 1;
                                3
                            }
                        };
                        if let Some(suite) = &mut suite {
                            suite.counted[slot] += 1;
                        }
                    }
                    _ => {}
                }
                if !is_empty {
                    stack.push(name);
                } else if name == "testsuite" {
                    finish_suite(suite.take(), &mut problems);
                }
            }
            Event::End(element) => {
                if element.name().as_ref() == b"testsuite" {
                    finish_suite(suite.take(), &mut problems);
                }
                stack.pop();
            }
            Event::Eof => break,
            _ => {}
        }
    }
    if checked.suites.is_empty() && problems.is_empty() {
        problems.push("holds no <testsuite>".to_owned());
    }
    if problems.is_empty() {
        Ok(checked)
    } else {
        Err(problems)
    }
}

struct SuiteTally {
    name: String,
    /// `tests`, `failures`, `errors`, `skipped` as the attributes say.
    declared: [Option<u64>; 4],
    /// As the cases add up.
    counted: [u64; 4],
}

fn finish_suite(suite: Option<SuiteTally>, problems: &mut Vec<String>) {
    let Some(suite) = suite else { return };
    for ((key, declared), counted) in ["tests", "failures", "errors", "skipped"]
        .iter()
        .zip(suite.declared)
        .zip(suite.counted)
    {
        if let Some(declared) = declared
            && declared != counted
        {
            problems.push(format!(
                "<testsuite name={:?}> says {key}={declared} but holds {counted}",
                suite.name
            ));
        }
    }
}

fn check_time(
    attributes: &std::collections::HashMap<String, String>,
    what: &str,
    problems: &mut Vec<String>,
) {
    match attributes.get("time").map(|t| t.parse::<f64>()) {
        Some(Ok(seconds)) if seconds.is_finite() && seconds >= 0.0 => {}
        Some(_) => problems.push(format!(
            "{what} has a time that is not a non-negative number"
        )),
        None => problems.push(format!("{what} has no time")),
    }
}
