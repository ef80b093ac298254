//! Choosing the run store: `[store] url` and `TESTFLEET_STORE_URL`, a store that cannot be
//! reached, passwords that never show, and two controllers sharing a private PostgreSQL.

use std::process::Command;

use testfleet_testkit::postgres::{PASSWORD, PASSWORD_USER, PrivateCluster};

use crate::support::{Env, Out, Servers};

fn cluster() -> PrivateCluster {
    match PrivateCluster::start() {
        Ok(cluster) => cluster,
        Err(error) => panic!("the private PostgreSQL cluster did not start: {error}"),
    }
}

/// `args` with `--json` and `-vv`, with `envs` set.
fn call(env: &Env, envs: &[(&str, &str)], args: &[&str]) -> Out {
    let mut command: Command = env.command(args);
    command.arg("--json").arg("-vv").envs(envs.iter().copied());
    let output = command.output().expect("start testfleet");
    Out {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

#[test]
fn an_unreachable_store_is_a_store_error_naming_host_and_port_and_creates_nothing() {
    let servers = Servers::start(1);
    let env = servers.env();
    let dir = env.test_dir("hello", "echo hello\n");
    let port = free_port();
    let url = format!("postgres://ci:hunter2-secret@127.0.0.1:{port}/fleet");
    for args in [
        vec!["run", dir.to_str().expect("utf-8"), "-m", "m1"],
        vec!["list"],
    ] {
        let out = call(&env, &[("TESTFLEET_STORE_URL", &url)], &args);
        assert_eq!(out.code, 3, "{args:?}: {}{}", out.stdout, out.stderr);
        assert_eq!(out.error_code(), "STORE_ERROR");
        let message = out.json()["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(message.contains(&format!("127.0.0.1:{port}")), "{message}");
        assert!(
            !format!("{}{}", out.stdout, out.stderr).contains("hunter2"),
            "the password is never shown: {}{}",
            out.stdout,
            out.stderr
        );
    }
    // Nothing half-created: no run folder, no SQLite file (only the digest cache of the hashed
    // directory, a documented side effect of `run`).
    assert!(!env.state_dir().join("runs").exists(), "no run folder");
    assert!(
        !env.state_dir().join("testfleet.db").exists(),
        "no SQLite file"
    );
}

#[test]
fn a_bad_store_url_is_refused_without_quoting_it() {
    let env = Env::new();
    env.write_fleet("[store]\nurl = \"mysql://u:hunter2@db/x\"\n");
    let out = call(&env, &[], &["list"]);
    assert_eq!(out.code, 2);
    assert_eq!(out.error_code(), "FLEET_CONFIG_INVALID");
    assert!(!out.stdout.contains("hunter2"), "{}", out.stdout);
    let out = call(
        &env,
        &[(
            "TESTFLEET_STORE_URL",
            "postgres://u:hunter2@db/x?sslmode=sometimes",
        )],
        &["list"],
    );
    assert_eq!(out.code, 2);
    assert_eq!(out.error_code(), "INVALID_ARGUMENT");
    assert!(!out.stdout.contains("hunter2"), "{}", out.stdout);
    env.write_fleet("[store]\nlease = \"2s\"\nheartbeat = \"5s\"\n");
    let out = call(&env, &[], &["list"]);
    assert_eq!(out.error_code(), "FLEET_CONFIG_INVALID", "{}", out.stdout);
}

#[test]
fn two_controllers_share_runs_through_postgres_and_logs_stay_home() {
    let cluster = cluster();
    cluster.create_database("fleet").expect("a database");
    let servers = Servers::start(1);
    let a = servers.env();
    let b = servers.env();
    // The password comes from PGPASSWORD; the URL has none.
    let url = cluster.url(PASSWORD_USER, "fleet");
    let fleet = format!(
        "{}\n[store]\nurl = \"{url}\"\nschema = \"team_1\"\n",
        servers.fleet()
    );
    a.write_fleet(&fleet);
    b.write_fleet(&fleet);
    let as_a = [
        ("TESTFLEET_CONTROLLER_ID", "ctl-a"),
        ("PGPASSWORD", PASSWORD),
    ];
    let as_b = [
        ("TESTFLEET_CONTROLLER_ID", "ctl-b"),
        ("PGPASSWORD", PASSWORD),
    ];

    let dir = a.test_dir("hello", "echo hello from a\n");
    let out = call(
        &a,
        &as_a,
        &["run", dir.to_str().expect("utf-8"), "-m", "m1"],
    );
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let run = out.data()["runs"][0].clone();
    let id = run["id"].as_str().expect("an id").to_owned();
    assert_eq!(run["controller"], "ctl-a");
    assert_eq!(run["status"], "completed");
    assert!(
        !a.root().join("state").join("testfleet.db").exists(),
        "no SQLite file"
    );

    // B sees it, by list and status; its logs are on A.
    let listed = call(&b, &as_b, &["list"]);
    assert_eq!(listed.code, 0, "{}{}", listed.stdout, listed.stderr);
    assert_eq!(listed.data()["runs"][0]["id"], id.as_str());
    let status = call(&b, &as_b, &["status", &id]);
    assert_eq!(status.data()["run"]["status"], "completed");
    let logs = call(&b, &as_b, &["logs", &id]);
    assert_eq!(logs.code, 2, "{}", logs.stdout);
    assert_eq!(logs.error_code(), "LOGS_ON_OTHER_CONTROLLER");
    let details = logs.json()["error"]["details"].clone();
    assert_eq!(details["controller"], "ctl-a");
    assert_eq!(details["run"], id.as_str());
    assert_eq!(details["path"], run["paths"]["stdout"]);
    let message = logs.json()["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        message.contains("ctl-a") && message.contains("stdout.log"),
        "{message}"
    );
    let home = call(&a, &as_a, &["logs", &id]);
    assert_eq!(home.data()["content"], "hello from a\n");

    // Without the password, B cannot log in; no output ever shows the password.
    let refused = call(&b, &[("TESTFLEET_CONTROLLER_ID", "ctl-b")], &["list"]);
    assert_eq!(refused.code, 3);
    assert_eq!(refused.error_code(), "STORE_ERROR");
    for out in [&out, &listed, &status, &logs, &home, &refused] {
        assert!(
            !format!("{}{}", out.stdout, out.stderr).contains(PASSWORD),
            "the password is never shown"
        );
    }
    // Nothing stores it: not the state dirs, not the database.
    for env in [&a, &b] {
        let stored = Command::new("grep")
            .args(["-r", "-l", PASSWORD])
            .arg(env.root())
            .output()
            .expect("grep runs");
        assert!(
            stored.stdout.is_empty(),
            "{}",
            String::from_utf8_lossy(&stored.stdout)
        );
    }
    let dumped = cluster
        .psql_in(
            "fleet",
            "SELECT string_agg(t::text, ' ') FROM team_1.runs t",
        )
        .expect("psql");
    assert!(
        dumped.contains(&id) && !dumped.contains(PASSWORD),
        "{dumped}"
    );
}

#[test]
fn runs_queued_behind_a_full_fan_out_keep_their_leases() {
    // 33 machines: one more than run executes at once, so the last run waits for a slot,
    // longer than its lease; a `list` meanwhile must not reap it.
    let servers = Servers::start(33);
    let env = Env::new();
    env.write_fleet(&format!(
        "{}\n[store]\nlease = \"1s\"\nheartbeat = \"200ms\"\n",
        servers.fleet()
    ));
    let dir = env.test_dir("slow", "sleep 2\n");
    let mut fan_out = env.command(&["run", dir.to_str().expect("utf-8"), "-l", "all", "--json"]);
    let child = fan_out
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start testfleet");
    std::thread::sleep(std::time::Duration::from_millis(1_600));
    let listed = call(&env, &[], &["list", "--limit", "100"]);
    assert_eq!(listed.code, 0, "{}{}", listed.stdout, listed.stderr);
    let output = child.wait_with_output().expect("the fan-out ends");
    let out = Out {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    };
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let runs = out.data()["runs"].as_array().cloned().unwrap_or_default();
    assert_eq!(runs.len(), 33);
    assert!(
        runs.iter().all(|run| run["status"] == "completed"),
        "every run completed, none reaped: {runs:?}"
    );
}
