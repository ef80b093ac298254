//! Every kind of bad input: its error code, a message that says what to do, exit 2, nothing
//! persisted.

use crate::support::{Env, snapshot};

const FLEET: &str = "[defaults]\nuser = \"tester\"\n\n[machines.m1]\nhost = \"127.0.0.1\"\nport = 1\nlabels = [\"x86\"]\n";

/// Runs `args` with `--json` and without: the code, exit 2, nothing recorded.
fn check(name: &str, env: &Env, args: &[&str], code: &str) {
    let out = env.json(args);
    assert_eq!(out.code, 2, "{name}: {}{}", out.stdout, out.stderr);
    assert_eq!(out.error_code(), code, "{name}");
    assert!(
        !out.json()["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .is_empty()
    );
    let human = env.run(args);
    assert_eq!(human.code, 2, "{name}");
    assert!(human.stdout.is_empty(), "{name}: human errors go to stderr");
    snapshot(
        env,
        &format!("bad_input__{name}"),
        &format!("{}\n--- human stderr ---\n{}", out.stdout, human.stderr),
    );
    // Nothing persisted (a broken fleet file is set aside: `list` reads its `[store]` too).
    let fleet = std::fs::read(env.fleet_file()).ok();
    if fleet.is_some() {
        std::fs::remove_file(env.fleet_file()).expect("rm");
    }
    let runs = env.json(&["list"]).data()["runs"].clone();
    if let Some(fleet) = fleet {
        std::fs::write(env.fleet_file(), fleet).expect("restore the fleet file");
    }
    assert_eq!(runs, serde_json::json!([]), "{name}");
}

#[test]
fn bad_input_is_refused_before_anything_is_recorded() {
    let env = Env::new();
    env.write_fleet(FLEET);
    let good = env.test_dir("good", "echo hi\n");
    let good = good.to_str().expect("utf-8");
    let no_entrypoint = env.root().join("tests/empty");
    std::fs::create_dir_all(&no_entrypoint).expect("mkdir");
    let file = env.root().join("tests/good/run.sh");
    let missing = env.root().join("nope");
    check(
        "missing_dir",
        &env,
        &["run", missing.to_str().expect("utf-8"), "-m", "m1"],
        "TEST_DIR_NOT_FOUND",
    );
    check(
        "file_not_dir",
        &env,
        &["run", file.to_str().expect("utf-8"), "-m", "m1"],
        "TEST_DIR_NOT_FOUND",
    );
    check(
        "missing_entrypoint",
        &env,
        &["run", no_entrypoint.to_str().expect("utf-8"), "-m", "m1"],
        "MISSING_ENTRYPOINT",
    );
    check(
        "unknown_machine",
        &env,
        &["run", good, "-m", "m9"],
        "UNKNOWN_MACHINE",
    );
    check(
        "unknown_label",
        &env,
        &["run", good, "-l", "arm"],
        "UNKNOWN_MACHINE",
    );
    check("no_machine", &env, &["run", good], "INVALID_ARGUMENT");
    check(
        "bad_duration",
        &env,
        &["run", good, "-m", "m1", "--timeout", "5 parsecs"],
        "INVALID_ARGUMENT",
    );
    check(
        "unknown_flag",
        &env,
        &["run", good, "-m", "m1", "--frobnicate"],
        "INVALID_ARGUMENT",
    );
    check(
        "unknown_run",
        &env,
        &["status", "01JD0000000000000000000000"],
        "RUN_NOT_FOUND",
    );
    check(
        "malformed_run_id",
        &env,
        &["logs", "not-a-run"],
        "INVALID_ARGUMENT",
    );
    check(
        "unknown_cancel",
        &env,
        &["cancel", "01JD0000000000000000000000"],
        "RUN_NOT_FOUND",
    );
    check(
        "hash_missing_dir",
        &env,
        &["hash", missing.to_str().expect("utf-8")],
        "TEST_DIR_NOT_FOUND",
    );

    env.write_fleet("[machines.m1]\nhots = \"typo\"\n");
    check(
        "fleet_unknown_key",
        &env,
        &["run", good, "-m", "m1"],
        "FLEET_CONFIG_INVALID",
    );
    env.write_fleet("[machines.m1]\nhost = \"\"\n");
    check(
        "fleet_empty_host",
        &env,
        &["run", good, "-m", "m1"],
        "FLEET_CONFIG_INVALID",
    );
    env.write_fleet("[machines.m1]\nport = 0\n");
    check(
        "fleet_port_zero",
        &env,
        &["machines", "list"],
        "FLEET_CONFIG_INVALID",
    );
    env.write_fleet("[machines.m1]\nkeepalive = \"0s\"\n");
    check(
        "fleet_keepalive_zero",
        &env,
        &["machines", "list"],
        "FLEET_CONFIG_INVALID",
    );
    env.write_fleet("[machines.m1\n");
    check(
        "fleet_syntax",
        &env,
        &["machines", "list"],
        "FLEET_CONFIG_INVALID",
    );
    std::fs::remove_file(env.fleet_file()).expect("rm");
    check(
        "fleet_missing",
        &env,
        &["run", good, "-m", "m1"],
        "FLEET_CONFIG_INVALID",
    );
}
