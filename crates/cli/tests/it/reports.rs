//! Test reports: runs whose script writes JUnit XML, summarized in the run (`tests`), shown
//! in the summary line, chosen by `results` and `--results`, and merged by `report`.

use std::path::Path;

use serde_json::{Value, json};

use crate::support::{Env, Servers, snapshot};

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

fn str(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
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
