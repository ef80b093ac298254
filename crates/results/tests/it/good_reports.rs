//! Reports as real reporters write them, and what their summary says.

use testfleet_core::{FailedCase, FailureKind, TestSummary};
use testfleet_results::Limits;

use crate::support::{Artifacts, big_counts, big_report, counts};

/// pytest's `--junitxml` (a local timestamp without offset, which quick-junit alone refuses).
const PYTEST: &str = r#"<?xml version="1.0" encoding="utf-8"?><testsuites name="pytest tests"><testsuite name="pytest" errors="0" failures="1" skipped="1" tests="4" time="0.051" timestamp="2026-12-01T10:20:30.123456" hostname="box"><testcase classname="tests.test_math" name="test_adds" time="0.001" /><testcase classname="tests.test_math" name="test_subtracts" time="0.002"><failure message="assert 4 == 5&#10; +  where 4 = sub(9, 5)">def test_subtracts():
&gt;       assert sub(9, 5) == 5
E       assert 4 == 5

tests/test_math.py:9: AssertionError</failure></testcase><testcase classname="tests.test_math" name="test_divides" time="0.000"><skipped type="pytest.skip" message="needs numpy">tests/test_math.py:12: needs numpy</skipped></testcase><testcase classname="tests.test_io" name="test_reads" time="0.040"><properties><property name="os" value="linux"/></properties><system-out>read 3 files</system-out></testcase></testsuite></testsuites>"#;

/// Maven Surefire: a lone `<testsuite>` root, a thousands separator in `time`, an `<error>`.
const SUREFIRE: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<testsuite xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" name="com.example.AppTest" time="1,234.5" tests="3" errors="1" skipped="0" failures="0">
  <properties><property name="java.version" value="21"/></properties>
  <testcase name="starts" classname="com.example.AppTest" time="0.01"/>
  <testcase name="stops" classname="com.example.AppTest" time="1,200.25"/>
  <testcase name="restarts" classname="com.example.AppTest" time="0.3">
    <error message="NullPointerException: config" type="java.lang.NullPointerException"><![CDATA[java.lang.NullPointerException: config
	at com.example.App.restart(App.java:42)]]></error>
    <system-out><![CDATA[restarting]]></system-out>
  </testcase>
</testsuite>
"#;

#[test]
fn a_pytest_report_is_summarized() {
    let artifacts = Artifacts::new();
    artifacts.write("junit.xml", PYTEST);
    let summary = artifacts.summary(&[]).expect("a report");
    assert_eq!(counts(&summary), (4, 2, 1, 1, 0));
    assert_eq!(summary.duration_ms, 51, "the suite's time");
    assert_eq!(summary.reports, ["junit.xml"]);
    assert_eq!(summary.unreadable, []);
    assert_eq!(
        summary.failures,
        [FailedCase {
            suite: "pytest".into(),
            classname: Some("tests.test_math".into()),
            name: "test_subtracts".into(),
            kind: FailureKind::Failure,
            message: "assert 4 == 5".into(),
        }],
        "the first line of the message"
    );
}

#[test]
fn a_surefire_report_with_a_lone_testsuite_root_is_summarized() {
    let artifacts = Artifacts::new();
    artifacts.write(
        "target/surefire-reports/TEST-com.example.AppTest.xml",
        SUREFIRE,
    );
    let summary = artifacts
        .summary(&["target/surefire-reports/*.xml"])
        .expect("a report");
    assert_eq!(counts(&summary), (3, 2, 0, 0, 1));
    assert_eq!(summary.duration_ms, 1_234_500, "`1,234.5` seconds");
    assert_eq!(summary.failures.len(), 1);
    assert_eq!(summary.failures[0].kind, FailureKind::Error);
    assert_eq!(summary.failures[0].name, "restarts");
    assert_eq!(summary.failures[0].message, "NullPointerException: config");
}

#[test]
fn a_failure_without_a_message_attribute_uses_the_first_line_of_its_text() {
    let artifacts = Artifacts::new();
    artifacts.write(
        "jest.xml",
        r#"<testsuites><testsuite name="math"><testcase name="adds">
<failure>

   Error: expect(received).toBe(expected)
   Expected: 5
</failure></testcase><testcase name="flaky passes"><flakyFailure message="timed out"/></testcase></testsuite></testsuites>"#,
    );
    let summary = artifacts.summary(&[]).expect("a report");
    assert_eq!(counts(&summary), (2, 1, 1, 0, 0), "a flaky pass passed");
    assert_eq!(summary.failures[0].classname, None);
    assert_eq!(
        summary.failures[0].message,
        "Error: expect(received).toBe(expected)"
    );
}

#[test]
fn several_files_add_up_in_path_order_and_other_xml_is_not_a_report() {
    let artifacts = Artifacts::new();
    artifacts.write("b/junit.xml", SUREFIRE);
    artifacts.write("a.xml", PYTEST);
    artifacts.write(
        "coverage.xml",
        r#"<?xml version="1.0"?><coverage line-rate="0.9"/>"#,
    );
    artifacts.write("notes.txt", "not xml at all");
    artifacts.write("empty.xml", "");
    let summary = artifacts.summary(&[]).expect("reports");
    assert_eq!(summary.reports, ["a.xml", "b/junit.xml"]);
    assert_eq!(counts(&summary), (7, 4, 1, 1, 1));
    assert_eq!(summary.duration_ms, 51 + 1_234_500);
    assert_eq!(
        summary.unreadable,
        [],
        "the default pattern skips XML that is not JUnit"
    );
    let names: Vec<&str> = summary.failures.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names, ["test_subtracts", "restarts"]);

    // A given pattern says the file is a report: then a non-JUnit root is listed.
    let summary = artifacts.summary(&["*.xml"]).expect("reports");
    assert_eq!(summary.reports, ["a.xml"]);
    let unreadable: Vec<(&str, &str)> = summary
        .unreadable
        .iter()
        .map(|u| (u.path.as_str(), u.reason.as_str()))
        .collect();
    assert_eq!(
        unreadable,
        [
            (
                "coverage.xml",
                "not a JUnit report: the root element is <coverage>, not <testsuites> or <testsuite>"
            ),
            ("empty.xml", "holds no XML element"),
        ]
    );
}

#[test]
fn no_report_means_no_summary_and_an_empty_report_is_a_summary() {
    let artifacts = Artifacts::new();
    assert_eq!(artifacts.summary(&[]), None, "no artifacts folder");
    artifacts.write("log.txt", "hello");
    artifacts.write("pom.xml", "<project/>");
    assert_eq!(artifacts.summary(&[]), None, "no JUnit file");
    artifacts.write("reports/none.xml", "<testsuites/>");
    assert_eq!(
        artifacts.summary(&[]),
        Some(TestSummary {
            reports: vec!["reports/none.xml".into()],
            ..TestSummary::default()
        })
    );
    assert_eq!(
        artifacts.summary(&["other/*.xml"]),
        None,
        "nothing matches the given pattern"
    );
}

#[test]
fn the_listed_failures_are_bounded_and_the_rest_counted() {
    let artifacts = Artifacts::new();
    artifacts.write("big.xml", big_report(100));
    let limits = Limits {
        max_listed_failures: 3,
        max_message_chars: 6,
        ..Limits::default()
    };
    let summary = artifacts.summary_with(&[], &limits).expect("a report");
    let (failed, _, _) = big_counts(100);
    assert_eq!(summary.failed, failed);
    assert_eq!(summary.failures.len(), 3);
    assert_eq!(summary.failures_omitted, failed - 3);
    assert_eq!(summary.failures[1].name, "case_000007");
    assert_eq!(
        summary.failures[1].message, "case 7…",
        "six characters kept"
    );
}

#[test]
fn one_hundred_thousand_cases_are_read() {
    let artifacts = Artifacts::new();
    artifacts.write("big.xml", big_report(100_000));
    let summary = artifacts.summary(&[]).expect("a report");
    let (failed, skipped, passed) = big_counts(100_000);
    assert_eq!(counts(&summary), (100_000, passed, failed, skipped, 0));
    assert_eq!(summary.duration_ms, 12_500);
    assert_eq!(
        summary.failures.len(),
        Limits::default().max_listed_failures
    );
    assert_eq!(
        summary.failures_omitted,
        failed - u64::try_from(Limits::default().max_listed_failures).expect("small")
    );
}
