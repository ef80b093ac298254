//! Reading one JUnit XML report within the [`Limits`].
//!
//! Two passes, streamed one into the other. The first, with quick-xml, checks and normalizes: the root must
//! be `<testsuites>` or `<testsuite>` (a lone `<testsuite>` is wrapped), a DTD is refused (so no
//! entity is ever defined, let alone expanded), nesting and the number of cases are bounded,
//! and the attributes that only restate what the elements say (`tests`, `failures`,
//! `timestamp`, …) are dropped, because real reporters write them in forms quick-junit's
//! strict reader refuses (pytest's local timestamps, Surefire's `time="1,234.5"`). The second
//! pass is [`quick_junit::Report::deserialize`] on the normalized bytes.

use std::io::BufRead;
use std::time::Duration;

use quick_junit::{NonSuccessKind, Report, TestCaseStatus, XmlString};
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
    Ok(match parse_junit(input, explicit, limits, max_cases)? {
        Some(report) => Parsed::Report(cases_of(&report, limits)),
        None => Parsed::NotAReport,
    })
}

/// The quick-junit report of `input`, read through the normalizing pass; `None` when its root
/// is not a JUnit element and that is allowed.
pub(crate) fn parse_junit(
    input: impl BufRead,
    explicit: bool,
    limits: &Limits,
    max_cases: usize,
) -> Result<Option<Report>, String> {
    let mut normalizer = Normalizer::new(input, explicit, limits, max_cases);
    let deserialized = Report::deserialize(&mut normalizer);
    // The normalizer's own verdict comes first: quick-junit only saw where it stopped.
    match normalizer.verdict.take() {
        Some(Verdict::NotAReport) => return Ok(None),
        Some(Verdict::Refused(reason)) => return Err(reason),
        None => {}
    }
    deserialized
        .map(Some)
        .map_err(|error| format!("not a valid JUnit report: {error}"))
}

/// Which JUnit element the document's root is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Root {
    Suites,
    Suite,
}

/// Why the normalizing pass stopped before the end of the document.
#[derive(Debug)]
enum Verdict {
    NotAReport,
    Refused(String),
}

/// The first pass, as a [`BufRead`] that quick-junit reads from: the document is checked and
/// rewritten event by event, so that only one event's bytes are held beside quick-junit's
/// report. When it stops (a limit, a DTD, not a report) it ends the stream with an error and
/// keeps the reason in `verdict`.
struct Normalizer<'l, R> {
    reader: Reader<R>,
    /// What quick-junit reads next, from `pos`.
    writer: Writer<Vec<u8>>,
    pos: usize,
    buf: Vec<u8>,
    explicit: bool,
    limits: &'l Limits,
    max_cases: usize,
    root: Option<Root>,
    depth: usize,
    n_cases: usize,
    finished: bool,
    verdict: Option<Verdict>,
}

impl<'l, R: BufRead> Normalizer<'l, R> {
    fn new(input: R, explicit: bool, limits: &'l Limits, max_cases: usize) -> Self {
        Self {
            reader: Reader::from_reader(input),
            writer: Writer::new(Vec::with_capacity(8 * 1024)),
            pos: 0,
            buf: Vec::new(),
            explicit,
            limits,
            max_cases,
            root: None,
            depth: 0,
            n_cases: 0,
            finished: false,
            verdict: None,
        }
    }

    /// Reads one event and writes what quick-junit should see of it. `Ok(false)` at the end.
    fn step(&mut self) -> Result<bool, Verdict> {
        let refused = |reason: String| Verdict::Refused(reason);
        let write_error = |error: std::io::Error| {
            Verdict::Refused(format!("failed to buffer the report: {error}"))
        };
        self.buf.clear();
        let event = match self.reader.read_event_into(&mut self.buf) {
            Ok(event) => event,
            Err(error) => {
                return Err(refused(format!(
                    "not well-formed XML at byte {}: {error}",
                    self.reader.error_position()
                )));
            }
        };
        match event {
            Event::DocType(_) => {
                return Err(refused(
                    "has a DTD (<!DOCTYPE>); DTDs are refused, so no entity is ever expanded"
                        .to_owned(),
                ));
            }
            Event::Decl(_) | Event::PI(_) | Event::Comment(_) => {}
            Event::Start(ref element) | Event::Empty(ref element) => {
                let is_empty = matches!(event, Event::Empty(_));
                let name = element.name();
                if self.root.is_none() {
                    self.root = Some(match name.as_ref() {
                        b"testsuites" => Root::Suites,
                        b"testsuite" => {
                            self.writer
                                .write_event(Event::Start(BytesStart::new("testsuites")))
                                .map_err(write_error)?;
                            Root::Suite
                        }
                        other if self.explicit => {
                            return Err(refused(format!(
                                "not a JUnit report: the root element is <{}>, not <testsuites> or <testsuite>",
                                String::from_utf8_lossy(other)
                            )));
                        }
                        _ => return Err(Verdict::NotAReport),
                    });
                }
                if name.as_ref() == b"testcase" {
                    self.n_cases += 1;
                    if self.n_cases > self.max_cases {
                        return Err(refused(format!(
                            "holds more test cases than the {} left of the limit of {} per run",
                            self.max_cases, self.limits.max_cases
                        )));
                    }
                }
                let cleaned = clean_attributes(element).map_err(refused)?;
                if is_empty {
                    self.writer
                        .write_event(Event::Empty(cleaned))
                        .map_err(write_error)?;
                    if self.depth == 0 {
                        return self.finish();
                    }
                } else {
                    self.depth += 1;
                    if self.depth > self.limits.max_depth {
                        return Err(refused(format!(
                            "nests elements deeper than the limit of {}",
                            self.limits.max_depth
                        )));
                    }
                    self.writer
                        .write_event(Event::Start(cleaned))
                        .map_err(write_error)?;
                }
            }
            Event::End(element) => {
                self.writer
                    .write_event(Event::End(element))
                    .map_err(write_error)?;
                self.depth = self.depth.saturating_sub(1);
                if self.depth == 0 {
                    return self.finish();
                }
            }
            Event::GeneralRef(reference) => {
                if self.root.is_some() {
                    if reference.is_char_ref() {
                        reference.resolve_char_ref().map_err(|error| {
                            refused(format!("has a bad character reference: {error}"))
                        })?;
                    } else {
                        let entity = String::from_utf8_lossy(reference.as_ref()).into_owned();
                        if resolve_predefined_entity(&entity).is_none() {
                            return Err(refused(format!(
                                "uses the entity &{entity}; which nothing defines (DTDs are refused, entities never expanded)"
                            )));
                        }
                    }
                    self.writer
                        .write_event(Event::GeneralRef(reference))
                        .map_err(write_error)?;
                }
            }
            Event::Text(_) | Event::CData(_) if self.root.is_none() => {}
            event @ (Event::Text(_) | Event::CData(_)) => {
                self.writer.write_event(event).map_err(write_error)?;
            }
            Event::Eof => {
                return match self.root {
                    None if self.explicit => Err(refused("holds no XML element".to_owned())),
                    None => Err(Verdict::NotAReport),
                    Some(_) => Err(refused("ends before its root element is closed".to_owned())),
                };
            }
        }
        Ok(true)
    }

    /// The root closed: the wrapper a lone `<testsuite>` got is closed, and nothing after the
    /// root is read.
    fn finish(&mut self) -> Result<bool, Verdict> {
        if self.root == Some(Root::Suite) {
            self.writer
                .write_event(Event::End(quick_xml::events::BytesEnd::new("testsuites")))
                .map_err(|error| {
                    Verdict::Refused(format!("failed to buffer the report: {error}"))
                })?;
        }
        self.finished = true;
        Ok(false)
    }
}

impl<R: BufRead> std::io::Read for Normalizer<'_, R> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        let available = self.fill_buf()?;
        let n = available.len().min(out.len());
        out[..n].copy_from_slice(&available[..n]);
        self.consume(n);
        Ok(n)
    }
}

impl<R: BufRead> BufRead for Normalizer<'_, R> {
    fn fill_buf(&mut self) -> std::io::Result<&[u8]> {
        while self.pos >= self.writer.get_ref().len() && !self.finished {
            if self.verdict.is_some() {
                return Err(std::io::Error::other("the report was refused"));
            }
            self.writer.get_mut().clear();
            self.pos = 0;
            if let Err(verdict) = self.step() {
                self.verdict = Some(verdict);
                return Err(std::io::Error::other("the report was refused"));
            }
        }
        Ok(&self.writer.get_ref()[self.pos..])
    }

    fn consume(&mut self, amount: usize) {
        self.pos = (self.pos + amount).min(self.writer.get_ref().len());
    }
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

/// How a case of a quick-junit report ended, its message and its element's text.
pub(crate) fn outcome_of(
    status: &TestCaseStatus,
) -> (CaseOutcome, Option<&XmlString>, Option<&XmlString>) {
    match status {
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
    }
}

/// The time a report says its tests took: the root's `time`, else the sum of its suites' (a
/// suite without one counts the sum of its cases').
pub(crate) fn duration_of(report: &Report) -> u64 {
    report.time.map_or_else(
        || {
            report.test_suites.iter().fold(0_u64, |total, suite| {
                let suite_ms = suite.time.map_or_else(
                    || {
                        suite.test_cases.iter().fold(0_u64, |sum, case| {
                            sum.saturating_add(case.time.map_or(0, millis))
                        })
                    },
                    millis,
                );
                total.saturating_add(suite_ms)
            })
        },
        millis,
    )
}

/// The number of cases of a report.
pub(crate) fn n_cases(report: &Report) -> usize {
    report.test_suites.iter().map(|s| s.test_cases.len()).sum()
}

/// The cases of a deserialized report.
pub(crate) fn cases_of(report: &Report, limits: &Limits) -> ParsedReport {
    let mut cases = Vec::with_capacity(n_cases(report));
    for suite in &report.test_suites {
        for case in &suite.test_cases {
            let (outcome, message, description) = outcome_of(&case.status);
            let message = message.map(XmlString::as_str).unwrap_or_default();
            let description = description.map(XmlString::as_str).unwrap_or_default();
            cases.push(CaseResult {
                suite: suite.name.as_str().to_owned(),
                classname: case.classname.as_ref().map(|c| c.as_str().to_owned()),
                name: case.name.as_str().to_owned(),
                outcome,
                duration_ms: case.time.map(millis),
                message: first_line(message, description, limits.max_message_chars),
                detail: detail(description, limits.max_detail_bytes),
            });
        }
    }
    ParsedReport {
        cases,
        duration_ms: duration_of(report),
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
