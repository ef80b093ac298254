//! Test reports: runs whose script writes JUnit XML, summarized in the run (`tests`), shown
//! in the summary line, chosen by `results` and `--results`, and merged by `report`.

use serde_json::{Value, json};

use crate::support::{Env, Servers, snapshot, str};

/// A fan-out whose `test_locale` fails on m2 only, and whose m3 also leaves a broken report.
/// Each machine has its own remote root, which is how the script knows where it runs.
pub const SCRIPT: &str = r#"mkdir -p artifacts/reports
locale=''
case "$PWD" in
  *testfleet-m2/*) locale='<failure message="expected UTF-8, got C&#10;at locale.rs:3">assertion failed: utf8</failure>' ;;
esac
cat > artifacts/reports/junit.xml <<EOF
<?xml version="1.0" encoding="UTF-8"?>
<testsuites name="unit">
  <testsuite name="unit" time="0.6" timestamp="2026-12-01T10:00:00">
    <testcase classname="unit.core" name="test_adds" time="0.1"/>
    <testcase classname="unit.core" name="test_locale" time="0.2">$locale</testcase>
    <testcase classname="unit.core" name="test_slow" time="0.3"><skipped message="slow"/></testcase>
  </testsuite>
</testsuites>
EOF
case "$PWD" in
  *testfleet-m3/*) printf '<testsuites><testsuite name="x">' > artifacts/reports/broken.xml ;;
esac
[ -z "$locale" ]
"#;

/// Three machines, each with its own remote root, and `results` in the defaults.
pub fn env_with_reports(servers: &Servers) -> Env {
    let env = Env::new();
    let mut fleet = servers.fleet().replace(
        "[defaults]\n",
        "[defaults]\nresults = [\"reports/*.xml\"]\n",
    );
    for machine in ["m1", "m2", "m3"] {
        fleet = fleet.replace(
            &format!("[machines.{machine}]\n"),
            &format!("[machines.{machine}]\nremote_root = \".testfleet-{machine}\"\n"),
        );
    }
    env.write_fleet(&fleet);
    env
}

/// `machine`, `status` and `tests` of each run.
fn tests_of(data: &Value) -> Value {
    let runs = data["runs"].as_array().expect("runs");
    Value::Array(
        runs.iter()
            .map(|run| json!({"machine": run["machine"], "status": run["status"], "tests": run["tests"]}))
            .collect(),
    )
}

#[test]
fn a_fan_out_records_and_prints_what_its_reports_said() {
    let servers = Servers::start(3);
    let env = env_with_reports(&servers);
    let dir = env.test_dir("junit", SCRIPT);
    let args = ["run", str(&dir), "-m", "m1", "-m", "m2", "-m", "m3"];
    let out = env.json(&args);
    assert_eq!(
        out.code, 1,
        "m2's script fails: {}{}",
        out.stdout, out.stderr
    );
    let data = out.data();
    let tests = tests_of(&data);
    assert_eq!(tests[0]["tests"]["failed"], 0);
    assert_eq!(tests[1]["tests"]["failed"], 1);
    assert_eq!(
        tests[1]["tests"]["failures"][0]["message"], "expected UTF-8, got C",
        "the first line"
    );
    assert_eq!(
        tests[2]["tests"]["unreadable"][0]["path"],
        "reports/broken.xml"
    );
    assert_eq!(
        tests[2]["tests"]["reports"],
        json!(["reports/junit.xml"]),
        "the broken report is listed, the good one read"
    );
    assert_eq!(
        tests[2]["status"], "completed",
        "a broken report changes no status"
    );
    snapshot(
        &env,
        "run_tests_json",
        &serde_json::to_string_pretty(&tests).expect("json"),
    );

    let human = env.run(&args);
    assert_eq!(human.code, 1, "{}", human.stderr);
    assert!(
        human
            .stdout
            .contains(" tests: 1 passed, 1 failed, 1 skipped "),
        "{}",
        human.stdout
    );
    snapshot(&env, "run_tests_human", &human.stdout);

    let m2 = data["runs"][1]["id"].as_str().expect("id");
    let status = env.run(&["status", m2]);
    assert!(
        status
            .stdout
            .contains("tests         1 passed, 1 failed, 1 skipped (reports/junit.xml)\n"),
        "{}",
        status.stdout
    );
}

#[test]
fn results_on_the_command_line_replace_the_fleet_file_s() {
    let servers = Servers::start(3);
    let env = env_with_reports(&servers);
    let dir = env.test_dir("junit", SCRIPT);

    // Only the good report: the broken one is not looked at.
    let out = env.json(&[
        "run",
        str(&dir),
        "-m",
        "m3",
        "--results",
        "reports/junit.xml",
    ]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let run = &out.data()["runs"][0];
    assert_eq!(run["tests"]["unreadable"], json!([]));
    assert_eq!(run["tests"]["total"], 3);

    // Nothing there: no tests.
    let out = env.json(&["run", str(&dir), "-m", "m3", "--results", "none/*.xml"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.data()["runs"][0]["tests"], Value::Null);

    // A detached run's worker gets the patterns too.
    let out = env.json(&[
        "run",
        str(&dir),
        "-m",
        "m3",
        "--detach",
        "--results",
        "reports/broken.xml",
    ]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let id = out.data()["runs"][0]["id"].as_str().expect("id").to_owned();
    let waited = env.json(&["wait", &id]);
    let tests = &waited.data()["runs"][0]["tests"];
    assert_eq!(tests["reports"], json!([]), "{tests}");
    assert_eq!(tests["unreadable"][0]["path"], "reports/broken.xml");

    // A pattern that would leave the artifacts folder is a usage error; nothing is recorded.
    let out = env.json(&["run", str(&dir), "-m", "m1", "--results", "../*.xml"]);
    assert_eq!(out.code, 2);
    assert_eq!(out.error_code(), "INVALID_ARGUMENT");
    assert_eq!(
        env.json(&["list"]).data()["runs"].as_array().map(Vec::len),
        Some(3)
    );
}

#[test]
fn report_merges_runs_into_a_matrix_table_json_junit_and_html() {
    let servers = Servers::start(3);
    let env = env_with_reports(&servers);
    let dir = env.test_dir("junit", SCRIPT);
    let page = env.root().join("fan-out.html");
    let out = env.json(&[
        "run",
        str(&dir),
        "-m",
        "m1",
        "-m",
        "m2",
        "-m",
        "m3",
        "--report",
        str(&page),
    ]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert_eq!(out.data()["report"], json!(str(&page)));
    let html = std::fs::read_to_string(&page).expect("run --report wrote the page");
    assert!(html.contains(
        r#"data-case="unit.core::test_locale" data-platform-specific="true" data-failed-on="m2""#
    ));
    let ids: Vec<String> = out.data()["runs"]
        .as_array()
        .expect("runs")
        .iter()
        .map(|run| run["id"].as_str().expect("id").to_owned())
        .collect();

    let mut args: Vec<&str> = vec!["report"];
    args.extend(ids.iter().map(String::as_str));
    let table = env.run(&args);
    assert_eq!(table.code, 0, "{}", table.stderr);
    assert!(
        table
            .stdout
            .contains("unit.core::test_locale  pass   FAIL   pass   platform-specific\n"),
        "{}",
        table.stdout
    );
    snapshot(&env, "report_table", &table.stdout);

    let junit = env.root().join("merged.xml");
    let html = env.root().join("report.html");
    let mut json_args = args.clone();
    json_args.extend(["--junit", str(&junit), "--html", str(&html)]);
    let report = env.json(&json_args);
    assert_eq!(report.code, 0, "{}", report.stderr);
    let data = report.data();
    assert_eq!(data["summary"]["platform_specific"], 1);
    assert_eq!(data["cases"][1]["label"], "unit.core::test_locale");
    assert_eq!(data["cases"][1]["failed_on"], json!(["m2"]));
    assert_eq!(data["cases"][1]["results"]["m2"]["status"], "failed");
    assert_eq!(data["cases"][1]["results"]["m1"]["status"], "passed");
    assert_eq!(data["junit"], json!(str(&junit)));
    snapshot(&env, "report_json", &report.stdout);
    let xml = std::fs::read_to_string(&junit).expect("the merged JUnit");
    let checked = testfleet_results::merged::check(&xml).expect("GitLab and Jenkins accept it");
    assert_eq!(checked.suites, ["m1", "m2", "m3"]);
    assert_eq!((checked.cases, checked.failures), (9, 1));
    assert!(html.is_file());

    // The same runs, chosen by count and by label.
    for selection in [
        &["report", "--last", "3", "--json"][..],
        &["report", "--label", "all", "--json"][..],
    ] {
        let other = env.run(selection);
        assert_eq!(other.code, 0, "{}", other.stderr);
        assert_eq!(other.data()["cases"], data["cases"], "{selection:?}");
    }

    // wait --report writes the page of the runs it waited for.
    let waited_page = env.root().join("waited.html");
    let mut wait_args: Vec<&str> = vec!["wait"];
    wait_args.extend(ids.iter().map(String::as_str));
    wait_args.extend(["--report", str(&waited_page)]);
    let waited = env.json(&wait_args);
    assert_eq!(waited.code, 1, "m2 failed");
    assert_eq!(waited.data()["report"], json!(str(&waited_page)));
    assert!(waited_page.is_file());

    // A page that cannot be written: a warning, report null, and exit 3 where it was 0.
    let nowhere = env.root().join("missing-dir/page.html");
    let m1 = ids[0].as_str();
    let waited = env.json(&["wait", m1, "--report", str(&nowhere)]);
    assert_eq!(waited.code, 3, "{}", waited.stderr);
    assert_eq!(waited.data()["report"], Value::Null);
    assert!(
        waited
            .stderr
            .contains("warning: the report was not written"),
        "{}",
        waited.stderr
    );
}

#[test]
fn report_refuses_what_it_cannot_select() {
    let servers = Servers::start(1);
    let env = servers.env();
    for (args, code) in [
        (&["report"][..], "INVALID_ARGUMENT"),
        (&["report", "--last", "0"][..], "INVALID_ARGUMENT"),
        (
            &["report", "--last", "2", "--label", "all"][..],
            "INVALID_ARGUMENT",
        ),
        (&["report", "not-a-run-id"][..], "INVALID_ARGUMENT"),
        (
            &["report", "01JD0000000000000000000000"][..],
            "RUN_NOT_FOUND",
        ),
        (&["report", "--label", "nope"][..], "UNKNOWN_MACHINE"),
    ] {
        let out = env.json(args);
        assert_eq!(
            (out.code, out.error_code()),
            (2, code.to_owned()),
            "{args:?}: {}",
            out.stdout
        );
    }
    let empty = env.json(&["report", "--last", "5"]);
    assert_eq!(empty.code, 0);
    assert_eq!(empty.data()["runs"], json!([]));
    assert_eq!(
        env.run(&["report", "--last", "5"]).stdout,
        "no runs to report\n"
    );
}

/// Hostile and broken reports end up in `tests.unreadable`; the run itself completes with its
/// status, exit code, artifacts and events as if they were not there.
#[test]
fn bad_reports_never_change_a_run() {
    let servers = Servers::start(1);
    let env = servers.env();
    let script = r#"mkdir -p artifacts
printf '<testsuites><testsuite name="ok"><testcase name="fine"/></testsuite></testsuites>' > artifacts/good.xml
printf '<testsuites><testsuite name="a"><testcase name="x"></testsuite>' > artifacts/malformed.xml
cat > artifacts/bomb.xml <<'XML'
<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;"><!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">]>
<testsuites><testsuite name="&lol2;"/></testsuites>
XML
head -c 34000000 /dev/zero > artifacts/huge.xml
echo done
"#;
    let dir = env.test_dir("bad-reports", script);
    let out = env.json(&["run", str(&dir), "-m", "m1"]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let run = &out.data()["runs"][0];
    assert_eq!(run["status"], "completed");
    assert_eq!(run["exit_code"], 0);
    assert_eq!(run["error"], Value::Null);
    assert_eq!(run["artifacts"]["files"], 4);
    let tests = &run["tests"];
    assert_eq!(tests["reports"], json!(["good.xml"]));
    assert_eq!(tests["total"], 1);
    let unreadable: Vec<(String, String)> = tests["unreadable"]
        .as_array()
        .expect("unreadable")
        .iter()
        .map(|u| {
            (
                u["path"].as_str().unwrap_or_default().to_owned(),
                u["reason"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    let paths: Vec<&str> = unreadable.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(paths, ["bomb.xml", "huge.xml", "malformed.xml"]);
    assert!(unreadable[0].1.contains("has a DTD"), "{unreadable:?}");
    assert!(
        unreadable[1].1.contains("larger than the limit"),
        "{unreadable:?}"
    );
    assert!(
        unreadable[2].1.contains("not well-formed XML"),
        "{unreadable:?}"
    );
    let id = run["id"].as_str().expect("id");
    let events = env.json(&["status", id]).data()["events"].clone();
    assert_eq!(
        events[2]["detail"],
        Value::Null,
        "the final event has no note about reports"
    );
}
