//! Runs merged into the matrix, and the matrix as merged JUnit and as HTML.

use std::path::Path;

use testfleet_core::run::{NewRun, RunPaths};
use testfleet_core::{
    MachineName, Run, RunId, RunStatus, TargetOs, TestDirHash, TestSummary, Timestamp,
};
use testfleet_results::html::html_report;
use testfleet_results::merged::{check, merged_junit};
use testfleet_results::parse::CaseOutcome;
use testfleet_results::{CaseSource, Limits, Matrix, RunCases, summarize};

use crate::support::Artifacts;

/// A report with `test_adds` passing, `test_locale` as given, `test_slow` skipped, and
/// `test_broken` failing.
fn report(locale: &str, extra: &str) -> String {
    format!(
        r#"<testsuites><testsuite name="unit" time="1.5">
<testcase classname="unit.core" name="test_adds" time="0.1"/>
<testcase classname="unit.core" name="test_locale" time="0.2">{locale}</testcase>
<testcase classname="unit.core" name="test_slow" time="1.2"><skipped message="slow"/></testcase>
<testcase classname="unit.core" name="test_broken" time="0.05"><error message="panicked at 'boom'">thread panicked at 'boom'
  src/lib.rs:7</error></testcase>
{extra}</testsuite></testsuites>"#
    )
}

const LOCALE_FAILS: &str =
    r#"<failure message="expected UTF-8, got C">assertion failed: utf8 &lt;locale&gt;</failure>"#;

/// A completed (or failed) run on `machine` whose artifacts hold `xml` as `junit.xml`.
fn run_with(state: &Path, machine: &str, serial: u128, xml: &str) -> Run {
    let id = RunId::from_parts(1_795_000_000_000, serial);
    let paths = RunPaths::in_state_dir(state, &id);
    let mut run = Run::pending(
        NewRun {
            paths,
            id,
            machine: MachineName::parse(machine).expect("valid"),
            os: TargetOs::linux(),
            test_dir: "/t".into(),
            test_dir_hash: TestDirHash::parse(&"ab".repeat(32)).expect("valid"),
            entrypoint: "run.sh".into(),
            invocation: testfleet_core::Invocation::default(),
            created_at: Timestamp::from_unix_ms(1_795_000_000_000),
            timeout_ms: None,
            keep_remote: false,
            owner: None,
            lease: std::time::Duration::from_secs(30),
            controller: None,
        },
        Timestamp::from_unix_ms(1_795_000_000_000),
    );
    let artifacts = &run.paths.artifacts;
    std::fs::create_dir_all(artifacts).expect("mkdir");
    std::fs::write(artifacts.join("junit.xml"), xml).expect("write");
    run.tests = summarize(artifacts, &[], &Limits::default());
    run.status = if run.tests.as_ref().is_some_and(|t| t.not_passed() > 0) {
        RunStatus::Failed
    } else {
        RunStatus::Completed
    };
    run.duration_ms = Some(2_000 + u64::try_from(serial).expect("small"));
    run
}

fn three_machines(state: &Path) -> Matrix {
    let runs = vec![
        run_with(state, "m1", 1, &report("", "")),
        run_with(state, "m2", 2, &report(LOCALE_FAILS, "")),
        run_with(
            state,
            "m3",
            3,
            &report(
                "",
                r#"<testcase classname="unit.gpu" name="test_cuda" time="0.3"/>"#,
            ),
        ),
    ];
    Matrix::build(
        runs.into_iter()
            .map(|run| RunCases::load(run, &Limits::default()))
            .collect(),
    )
}

#[test]
fn a_failure_on_one_machine_only_is_platform_specific() {
    let state = tempfile::tempdir().expect("temp dir");
    let matrix = three_machines(state.path());
    let names: Vec<&str> = matrix.machines.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["m1", "m2", "m3"]);
    assert!(
        matrix
            .machines
            .iter()
            .all(|m| m.source == CaseSource::Reports)
    );
    let labels: Vec<&str> = matrix.cases.iter().map(|r| r.label.as_str()).collect();
    assert_eq!(
        labels,
        [
            "unit.core::test_adds",
            "unit.core::test_locale",
            "unit.core::test_slow",
            "unit.core::test_broken",
            "unit.gpu::test_cuda"
        ]
    );
    let row = |label: &str| {
        matrix
            .cases
            .iter()
            .find(|row| row.label == label)
            .expect("the row")
    };
    let locale = row("unit.core::test_locale");
    assert!(locale.platform_specific);
    assert_eq!(locale.failed_on, ["m2"]);
    let statuses: Vec<Option<CaseOutcome>> = locale
        .cells
        .iter()
        .map(|cell| cell.as_ref().map(|c| c.status))
        .collect();
    assert_eq!(
        statuses,
        [
            Some(CaseOutcome::Passed),
            Some(CaseOutcome::Failed),
            Some(CaseOutcome::Passed)
        ]
    );
    let broken = row("unit.core::test_broken");
    assert!(
        !broken.platform_specific,
        "failing everywhere is a code bug"
    );
    assert_eq!(broken.failed_on, ["m1", "m2", "m3"]);
    let cuda = row("unit.gpu::test_cuda");
    assert!(
        cuda.cells[0].is_none() && cuda.cells[2].is_some(),
        "only on m3"
    );
    assert_eq!(matrix.summary.cases, 5);
    assert_eq!(matrix.summary.failing, 2);
    assert_eq!(matrix.summary.platform_specific, 1);
    assert_eq!(matrix.summary.failing_everywhere, 1);
    assert_eq!(matrix.summary.counts.total, 13);
    let slowest: Vec<&str> = matrix.slowest().iter().map(|r| r.label.as_str()).collect();
    assert_eq!(slowest[0], "unit.core::test_slow");
    assert_eq!(
        matrix.failing()[0].label,
        "unit.core::test_locale",
        "platform-specific first"
    );
}

#[test]
fn the_merged_junit_has_a_suite_per_machine_and_unique_cases() {
    let state = tempfile::tempdir().expect("temp dir");
    let matrix = three_machines(state.path());
    let xml = merged_junit(&matrix).expect("serializes");
    let checked = check(&xml).unwrap_or_else(|problems| panic!("{problems:#?}\n{xml}"));
    assert_eq!(checked.suites, ["m1", "m2", "m3"]);
    assert_eq!(checked.cases, 13);
    assert_eq!(checked.failures, 1, "test_locale on m2");
    assert_eq!(checked.errors, 3, "test_broken everywhere");
    assert_eq!(checked.skipped, 3);
    assert!(
        xml.contains(r#"<testcase name="test_locale" classname="m2.unit.core" time="0.200">"#),
        "{xml}"
    );
    assert!(xml.contains("expected UTF-8, got C"), "the message is kept");
    // And what we write, we read.
    let summary = {
        let artifacts = Artifacts::new();
        artifacts.write("merged.xml", &xml);
        artifacts
            .summary(&[])
            .expect("the merged document is a report")
    };
    assert_eq!(summary.total, 13);
    assert_eq!(summary.unreadable, []);
}

#[test]
fn the_check_refuses_what_ci_servers_would_not_ingest() {
    let suite = |name: &str, cases: &str, counts: &str| {
        format!(r#"<testsuite name="{name}" {counts} time="0.1">{cases}</testsuite>"#)
    };
    let ok_counts = r#"tests="1" failures="0" errors="0" skipped="0""#;
    let case = r#"<testcase name="a" classname="m1.x" time="0.1"/>"#;
    let wrap = |inner: String| format!("<testsuites>{inner}</testsuites>");
    assert!(check(&wrap(suite("m1", case, ok_counts))).is_ok());
    for (xml, fragment) in [
        (
            wrap(
                suite("m1", case, ok_counts)
                    + &suite("m1", case.replace("m1.", "m2.").as_str(), ok_counts),
            ),
            "two <testsuite>s are named",
        ),
        (
            wrap(suite(
                "m1",
                &format!("{case}{case}"),
                r#"tests="2" failures="0" errors="0" skipped="0""#,
            )),
            "two <testcase>s are m1.x::a",
        ),
        (
            wrap(suite(
                "m1",
                case,
                r#"tests="2" failures="0" errors="0" skipped="0""#,
            )),
            "says tests=2 but holds 1",
        ),
        (
            wrap(suite("m1", r#"<testcase name="a" time="0.1"/>"#, ok_counts)),
            "lacks a name or classname",
        ),
        (wrap(suite("", case, ok_counts)), "has no name"),
        (
            wrap(suite(
                "m1",
                r#"<testcase name="a" classname="x" time="-1"/>"#,
                ok_counts,
            )),
            "not a non-negative number",
        ),
        (suite("m1", case, ok_counts), "the root is <testsuite>"),
        (
            format!("<!DOCTYPE x>{}", wrap(suite("m1", case, ok_counts))),
            "has a DTD",
        ),
        ("<testsuites><testsuite".to_owned(), "not well-formed"),
    ] {
        match check(&xml) {
            Ok(checked) => panic!("{xml} passed: {checked:?}"),
            Err(problems) => assert!(
                problems.iter().any(|p| p.contains(fragment)),
                "{problems:?} lacks {fragment:?}"
            ),
        }
    }
}

#[test]
fn the_html_page_shows_every_machine_and_failure_and_fetches_nothing() {
    let state = tempfile::tempdir().expect("temp dir");
    let matrix = three_machines(state.path());
    let page = html_report(&matrix, "2026-12-01T10:00:00Z");
    for machine in ["m1", "m2", "m3"] {
        assert!(page.contains(&format!(
            "<div class=\"machine\" data-machine=\"{machine}\""
        )));
    }
    assert!(page.contains(
        r#"<tr data-case="unit.core::test_locale" data-platform-specific="true" data-failed-on="m2">"#
    ));
    assert!(
        page.contains(r#"data-status="failed" data-total="4" data-passed="1" data-failed="1" data-errors="1" data-skipped="1""#),
        "m2's counts"
    );
    assert_eq!(
        page.matches("<details class=\"failure\"").count(),
        4,
        "1 + 3 failures"
    );
    assert!(
        page.contains("assertion failed: utf8 &lt;locale&gt;"),
        "escaped detail"
    );
    for external in [
        "src=", "href=", "url(", "@import", "<script", "<link", "http://", "https://",
    ] {
        assert!(
            !page.contains(external),
            "the page must fetch nothing: {external}"
        );
    }
}

#[test]
fn a_case_twice_in_one_run_and_a_machine_twice_in_the_matrix_stay_distinct() {
    let state = tempfile::tempdir().expect("temp dir");
    let twice = r#"<testsuites><testsuite name="s"><testcase classname="c" name="same"/><testcase classname="c" name="same"><failure message="x"/></testcase></testsuite></testsuites>"#;
    let runs = vec![
        run_with(state.path(), "m1", 1, twice),
        run_with(state.path(), "m1", 2, twice),
    ];
    let ids: Vec<String> = runs.iter().map(|r| r.id.to_string()).collect();
    let matrix = Matrix::build(
        runs.into_iter()
            .map(|run| RunCases::load(run, &Limits::default()))
            .collect(),
    );
    let names: Vec<String> = matrix.machines.iter().map(|m| m.name.clone()).collect();
    assert_eq!(
        names,
        [format!("m1 ({})", ids[0]), format!("m1 ({})", ids[1])]
    );
    let labels: Vec<&str> = matrix.cases.iter().map(|r| r.label.as_str()).collect();
    assert_eq!(labels, ["c::same", "c::same (2)"]);
    check(&merged_junit(&matrix).expect("serializes")).expect("unique suites and cases");
}

#[test]
fn a_run_whose_reports_are_gone_shows_its_recorded_failures() {
    let state = tempfile::tempdir().expect("temp dir");
    let run = run_with(state.path(), "m2", 2, &report(LOCALE_FAILS, ""));
    std::fs::remove_dir_all(&run.paths.dir).expect("gc");
    let no_tests = {
        let mut run = run_with(state.path(), "m3", 3, "<testsuites/>");
        run.tests = None::<TestSummary>;
        run
    };
    let matrix = Matrix::build(vec![
        RunCases::load(run, &Limits::default()),
        RunCases::load(no_tests, &Limits::default()),
    ]);
    assert_eq!(matrix.machines[0].source, CaseSource::Recorded);
    assert_eq!(matrix.machines[0].counts.total, 4, "the recorded counts");
    assert_eq!(matrix.machines[1].source, CaseSource::None);
    let labels: Vec<&str> = matrix.cases.iter().map(|r| r.label.as_str()).collect();
    assert_eq!(labels, ["unit.core::test_locale", "unit.core::test_broken"]);
}
