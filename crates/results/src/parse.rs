//! Reading one JUnit XML report within the [`Limits`].
//!
//! Two passes over the bytes. The first, with quick-xml, checks and normalizes: the root must
//! be `<testsuites>` or `<testsuite>` (a lone `<testsuite>` is wrapped), a DTD is refused (so no
//! entity is ever defined, let alone expanded), nesting and the number of cases are bounded,
//! and the attributes that only restate what the elements say (`tests`, `failures`,
//! `timestamp`, …) are dropped, because real reporters write them in forms quick-junit's
//! strict reader refuses (pytest's local timestamps, Surefire's `time="1,234.5"`). The second
//! pass is [`quick_junit::Report::deserialize`] on the normalized bytes.

use std::io::BufRead;
use std::time::Duration;

use quick_junit::{NonSuccessKind, Report, TestCaseStatus};
use quick_xml::escape::resolve_predefined_entity;
use quick_xml::events::{BytesStart, Event};
use quick_xml::{Reader, Writer};
use serde::Serialize;

use crate::limits::Limits;

/// How one test case ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CaseOutcome {
    /// No `<failure>`, `<error>` or `<skipped>`.
    Passed,
    /// `<failure>`.
    Failed,
    /// `<error>`.
    Error,
    /// `<skipped>`.
    Skipped,
}

impl CaseOutcome {
    /// The stable lower-case word (`"passed"`).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Passed => "passed",
            Self::Failed => "failed",
            Self::Error => "error",
            Self::Skipped => "skipped",
        }
    }

    /// A failure or an error.
    pub const fn is_failure(self) -> bool {
        matches!(self, Self::Failed | Self::Error)
    }
}

/// How a case is named to people: `classname::name`, or `suite::name` when the report gives
/// no classname (CI servers list cases by class and name).
pub fn case_label(suite: &str, classname: Option<&str>, name: &str) -> String {
    match classname.filter(|c| !c.is_empty()) {
        Some(classname) => format!("{classname}::{name}"),
        None if !suite.is_empty() => format!("{suite}::{name}"),
        None => name.to_owned(),
    }
}

/// One test case of a report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaseResult {
    /// The name of its `<testsuite>`.
    pub suite: String,
    /// Its `classname`, when given.
    pub classname: Option<String>,
    /// Its `name`.
    pub name: String,
    /// How it ended.
    pub outcome: CaseOutcome,
    /// Its `time`, in milliseconds.
    pub duration_ms: Option<u64>,
    /// The first line of its failure, error or skip message; empty when there is none.
    pub message: String,
    /// The text of its `<failure>`, `<error>` or `<skipped>` element (a stack trace, say),
    /// bounded by [`Limits::max_detail_bytes`]; empty when there is none.
    pub detail: String,
}

/// What one report file holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedReport {
    /// Its cases, in document order.
    pub cases: Vec<CaseResult>,
    /// The time it says the tests took: the root's `time`, else the sum of its suites' (a
    /// suite without one counts the sum of its cases').
    pub duration_ms: u64,
}

/// The verdict on one XML document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// A JUnit report.
    Report(ParsedReport),
    /// Well-formed up to its root element, which is not a JUnit one (only when the file was
    /// found by the default pattern, which matches any `.xml`).
    NotAReport,
}

/// Reads one report from `input`, refusing it (with a reason that reads after the file's
/// name) when it breaks a limit or is no JUnit report. `max_cases` is what is left of the
/// run's case budget. `explicit`: the file was named by a given pattern, so a non-JUnit root
/// is an error rather than [`Parsed::NotAReport`].
///
/// # Errors
/// The reason the report cannot be read.
pub fn parse_report(
    input: impl BufRead,
    explicit: bool,
    limits: &Limits,
    max_cases: usize,
) -> Result<Parsed, String> {
    let Some(normalized) = normalize(input, explicit, limits, max_cases)? else {
        return Ok(Parsed::NotAReport);
    };
    let report = Report::deserialize(normalized.as_slice())
        .map_err(|error| format!("not a valid JUnit report: {error}"))?;
    drop(normalized);
    Ok(Parsed::Report(cases_of(&report, limits)))
}

/// Which JUnit element the document's root is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Root {
    Suites,
    Suite,
}

/// The first pass: the document checked and rewritten for quick-junit, or `None` when its
/// root is not a JUnit element and that is allowed.
fn normalize(
    input: impl BufRead,
    explicit: bool,
    limits: &Limits,
    max_cases: usize,
) -> Result<Option<Vec<u8>>, String> {
    let mut reader = Reader::from_reader(input);
    let mut writer = Writer::new(Vec::new());
    let mut buf = Vec::new();
    let mut root: Option<Root> = None;
    let mut depth = 0_usize;
    let mut n_cases = 0_usize;
    let write_error = |error: std::io::Error| format!("failed to buffer the report: {error}");
    loop {
        let event = reader.read_event_into(&mut buf).map_err(|error| {
            format!(
                "not well-formed XML at byte {}: {error}",
                reader.error_position()
            )
        })?;
        match event {
            Event::DocType(_) => {
                return Err(
                    "has a DTD (<!DOCTYPE>); DTDs are refused, so no entity is ever expanded"
                        .to_owned(),
                );
            }
            Event::Decl(_) | Event::PI(_) | Event::Comment(_) => {}
            Event::Start(ref element) | Event::Empty(ref element) => {
                let is_empty = matches!(event, Event::Empty(_));
                let name = element.name();
                if root.is_none() {
                    root = Some(match name.as_ref() {
                        b"testsuites" => Root::Suites,
                        b"testsuite" => {
                            writer
                                .write_event(Event::Start(BytesStart::new("testsuites")))
                                .map_err(write_error)?;
                            Root::Suite
                        }
                        other if explicit => {
                            return Err(format!(
                                "not a JUnit report: the root element is <{}>, not <testsuites> or <testsuite>",
                                String::from_utf8_lossy(other)
                            ));
                        }
                        _ => return Ok(None),
                    });
                }
                if name.as_ref() == b"testcase" {
                    n_cases += 1;
                    if n_cases > max_cases {
                        return Err(format!(
                            "holds more test cases than the {max_cases} left of the limit of {} per run",
                            limits.max_cases
                        ));
                    }
                }
                let cleaned = clean_attributes(element)?;
                if is_empty {
                    writer
                        .write_event(Event::Empty(cleaned))
                        .map_err(write_error)?;
                } else {
                    depth += 1;
                    if depth > limits.max_depth {
                        return Err(format!(
                            "nests elements deeper than the limit of {}",
                            limits.max_depth
                        ));
                    }
                    writer
                        .write_event(Event::Start(cleaned))
                        .map_err(write_error)?;
                }
                if is_empty && depth == 0 {
                    return finish(writer, root);
                }
            }
            Event::End(element) => {
                writer
                    .write_event(Event::End(element))
                    .map_err(write_error)?;
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    return finish(writer, root);
                }
            }
            Event::GeneralRef(reference) => {
                if root.is_none() {
                    continue;
                }
                if reference.is_char_ref() {
                    reference
                        .resolve_char_ref()
                        .map_err(|error| format!("has a bad character reference: {error}"))?;
                } else {
                    let entity = String::from_utf8_lossy(reference.as_ref()).into_owned();
                    if resolve_predefined_entity(&entity).is_none() {
                        return Err(format!(
                            "uses the entity &{entity}; which nothing defines (DTDs are refused, entities never expanded)"
                        ));
                    }
                }
                writer
                    .write_event(Event::GeneralRef(reference))
                    .map_err(write_error)?;
            }
            Event::Text(_) | Event::CData(_) if root.is_none() => {}
            event @ (Event::Text(_) | Event::CData(_)) => {
                writer.write_event(event).map_err(write_error)?;
            }
            Event::Eof => {
                return match root {
                    None if explicit => Err("holds no XML element".to_owned()),
                    None => Ok(None),
                    Some(_) => Err("ends before its root element is closed".to_owned()),
                };
            }
        }
        buf.clear();
    }
}

/// Closes the wrapper a lone `<testsuite>` got.
fn finish(mut writer: Writer<Vec<u8>>, root: Option<Root>) -> Result<Option<Vec<u8>>, String> {
    if root == Some(Root::Suite) {
        writer
            .write_event(Event::End(quick_xml::events::BytesEnd::new("testsuites")))
            .map_err(|error| format!("failed to buffer the report: {error}"))?;
    }
    Ok(Some(writer.into_inner()))
}

/// Attributes that only restate what the elements say (or that testfleet does not use), which
/// reporters write in forms quick-junit refuses.
const DROPPED: &[&[u8]] = &[
    b"tests",
    b"failures",
    b"errors",
    b"skipped",
    b"disabled",
    b"assertions",
    b"timestamp",
    b"uuid",
];

/// The JUnit elements whose attributes quick-junit parses.
fn is_junit_element(name: &[u8]) -> bool {
    matches!(
        name,
        b"testsuites"
            | b"testsuite"
            | b"testcase"
            | b"failure"
            | b"error"
            | b"skipped"
            | b"flakyFailure"
            | b"flakyError"
            | b"rerunFailure"
            | b"rerunError"
    )
}

/// The element with the attributes quick-junit would refuse dropped or repaired: `time` with
/// thousands separators loses them, an unreadable `time` is dropped, and a suite or case
/// without a `name` gets an empty one.
fn clean_attributes(element: &BytesStart<'_>) -> Result<BytesStart<'static>, String> {
    let name = element.name();
    let tag = String::from_utf8_lossy(name.as_ref()).into_owned();
    if !is_junit_element(name.as_ref()) {
        return Ok(element.clone().into_owned());
    }
    let mut cleaned = BytesStart::new(tag.clone());
    let mut has_name = false;
    for attribute in element.attributes() {
        let attribute =
            attribute.map_err(|error| format!("has a bad attribute in <{tag}>: {error}"))?;
        let key = attribute.key.as_ref();
        if DROPPED.contains(&key) {
            continue;
        }
        if key == b"time" {
            if let Some(seconds) = seconds(&attribute.value) {
                cleaned.push_attribute(("time", seconds.as_str()));
            }
            continue;
        }
        has_name |= key == b"name";
        cleaned.push_attribute((key, attribute.value.as_ref()));
    }
    if !has_name && matches!(name.as_ref(), b"testsuite" | b"testcase") {
        cleaned.push_attribute(("name", ""));
    }
    Ok(cleaned)
}

/// A `time` value quick-junit accepts: a finite, non-negative number of seconds, thousands
/// separators removed.
fn seconds(raw: &[u8]) -> Option<String> {
    let text: String = std::str::from_utf8(raw)
        .ok()?
        .trim()
        .chars()
        .filter(|c| *c != ',')
        .collect();
    let value: f64 = text.parse().ok()?;
    (0.0..1e12).contains(&value).then_some(text)
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// The cases of a deserialized report.
fn cases_of(report: &Report, limits: &Limits) -> ParsedReport {
    let mut cases = Vec::with_capacity(report.test_suites.iter().map(|s| s.test_cases.len()).sum());
    let mut suites_ms = 0_u64;
    for suite in &report.test_suites {
        let mut cases_ms = 0_u64;
        for case in &suite.test_cases {
            let duration_ms = case.time.map(millis);
            cases_ms = cases_ms.saturating_add(duration_ms.unwrap_or(0));
            let (outcome, message, description) = match &case.status {
                TestCaseStatus::Success { .. } => (CaseOutcome::Passed, None, None),
                TestCaseStatus::NonSuccess {
                    kind,
                    message,
                    description,
                    ..
                } => {
                    let outcome = match kind {
                        NonSuccessKind::Failure => CaseOutcome::Failed,
                        NonSuccessKind::Error => CaseOutcome::Error,
                    };
                    (outcome, message.as_ref(), description.as_ref())
                }
                TestCaseStatus::Skipped {
                    message,
                    description,
                    ..
                } => (CaseOutcome::Skipped, message.as_ref(), description.as_ref()),
            };
            let message = message.map(|m| m.as_str()).unwrap_or_default();
            let description = description.map(|d| d.as_str()).unwrap_or_default();
            cases.push(CaseResult {
                suite: suite.name.as_str().to_owned(),
                classname: case.classname.as_ref().map(|c| c.as_str().to_owned()),
                name: case.name.as_str().to_owned(),
                outcome,
                duration_ms,
                message: first_line(message, description, limits.max_message_chars),
                detail: detail(description, limits.max_detail_bytes),
            });
        }
        suites_ms = suites_ms.saturating_add(suite.time.map_or(cases_ms, millis));
    }
    ParsedReport {
        cases,
        duration_ms: report.time.map_or(suites_ms, millis),
    }
}

/// The first non-empty line of the message, else of the text, at most `max_chars` characters.
pub(crate) fn first_line(message: &str, description: &str, max_chars: usize) -> String {
    let line = [message, description]
        .into_iter()
        .flat_map(str::lines)
        .map(str::trim)
        .find(|line| !line.is_empty())
        .unwrap_or_default();
    truncate_chars(line, max_chars)
}

fn truncate_chars(text: &str, max_chars: usize) -> String {
    match text.char_indices().nth(max_chars) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

/// The element's text (a stack trace, an assertion's diff), at most `max_bytes` bytes.
fn detail(description: &str, max_bytes: usize) -> String {
    let mut text = description.trim().to_owned();
    if text.len() > max_bytes {
        let mut cut = max_bytes;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push('…');
    }
    text
}
