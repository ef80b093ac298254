//! The queue from the command line: `run --wait`, `--any`, `--detach --wait`, `QUEUE_TIMEOUT`,
//! cancelling a queued run, and what `status`, `list` and `machines status` show of it.

use std::path::Path;

use serde_json::Value;

use crate::support::{Env, Servers, gated_script, id_of, poll, run_of, str};

/// A detached run on `machine` that holds it until `marker` exists.
fn blocker(env: &Env, machine: &str, marker: &Path) -> String {
    let dir = env.test_dir(&format!("gate-{machine}"), &gated_script(marker));
    let out = env.json(&["run", str(&dir), "-m", machine, "--detach"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let run = id_of(&run_of(&out));
    env.poll_status(&run, "running", |run| run["status"] == "running");
    run
}

fn statuses(env: &Env, id: &str) -> Vec<String> {
    env.json(&["status", id]).data()["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|event| event["to"].as_str().expect("to").to_owned())
        .collect()
}

#[test]
fn a_waiting_run_is_queued_shown_and_granted_when_the_machine_frees() {
    let servers = Servers::start(1);
    let env = servers.env();
    let marker = env.root().join("release");
    let holder = blocker(&env, "m1", &marker);
    let dir = env.test_dir("queued", "echo queued run\n");

    // Bad input first: nothing is written.
    let bad = env.json(&["run", str(&dir), "-m", "m1", "--wait", "5 parsecs"]);
    assert_eq!(bad.error_code(), "INVALID_ARGUMENT", "{}", bad.stdout);
    assert!(
        bad.stdout.contains("5 parsecs"),
        "the input is quoted: {}",
        bad.stdout
    );
    // Without --wait: busy, as before, and told about --wait.
    let busy = env.json(&["run", str(&dir), "-m", "m1"]);
    assert_eq!(
        busy.code, 2,
        "a single machine's busy claim is a command error"
    );
    assert_eq!(busy.error_code(), "MACHINE_BUSY", "{}", busy.stdout);
    assert!(busy.stdout.contains("--wait"), "{}", busy.stdout);

    // --detach --wait returns at once with the queued run; its worker waits.
    let out = env.json(&["run", str(&dir), "-m", "m1", "--wait", "--detach"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let queued = run_of(&out);
    assert_eq!(queued["status"], "queued", "{queued}");
    assert_eq!(queued["waiting_for"], serde_json::json!(["m1"]));
    let waiter = id_of(&queued);

    // The same directory again: the queued run is returned, not a second one.
    let again = env.json(&["run", str(&dir), "-m", "m1", "--wait", "--detach"]);
    assert_eq!(id_of(&run_of(&again)), waiter, "{}", again.stdout);

    let status = env.json(&["status", &waiter]).data();
    assert_eq!(status["queue"][0]["machine"], "m1", "{status}");
    assert_eq!(status["queue"][0]["held_by"], holder.as_str());
    assert_eq!(status["queue"][0]["ahead"], 0);
    let listed = env.json(&["list", "--status", "queued"]).data();
    let listed: Vec<_> = listed["runs"]
        .as_array()
        .expect("runs")
        .iter()
        .map(id_of)
        .collect();
    assert_eq!(listed, vec![waiter.clone()]);
    let machines = env.json(&["machines", "status"]).data();
    assert_eq!(machines["machines"][0]["name"], "m1", "{machines}");
    assert_eq!(machines["machines"][0]["state"], "busy");
    assert_eq!(machines["machines"][0]["run"], holder.as_str());
    assert_eq!(machines["machines"][0]["waiting"], 1);
    assert_eq!(machines["machines"][0]["next"], waiter.as_str());

    // A second waiter that gives up: QUEUE_TIMEOUT, interrupted, out of the queue.
    let impatient = env.test_dir("impatient", "echo never\n");
    let out = env.json(&["run", str(&impatient), "-m", "m1", "--wait", "1s"]);
    assert_eq!(out.code, 1, "{}\n{}", out.stdout, out.stderr);
    let gave_up = run_of(&out);
    assert_eq!(gave_up["status"], "interrupted", "{gave_up}");
    assert_eq!(gave_up["error"]["code"], "QUEUE_TIMEOUT");
    assert_eq!(gave_up["waiting_for"], serde_json::json!([]));

    // A third, cancelled while it waits: out of the queue at once.
    let cancelled_dir = env.test_dir("cancelled", "echo never\n");
    let out = env.json(&["run", str(&cancelled_dir), "-m", "m1", "--wait", "--detach"]);
    let cancelled = id_of(&run_of(&out));
    let status = env.json(&["status", &cancelled]).data();
    assert_eq!(
        status["queue"][0]["ahead"], 1,
        "behind the first waiter: {status}"
    );
    let out = env.json(&["cancel", &cancelled]);
    assert_eq!(out.code, 0, "{}", out.stdout);
    let run = env.json(&["status", &cancelled]).data()["run"].clone();
    assert_eq!(run["status"], "interrupted", "{run}");
    assert_eq!(
        env.json(&["machines", "status"]).data()["machines"][0]["waiting"],
        1
    );

    std::fs::write(&marker, "").expect("release");
    let done = env.json(&["wait", &waiter]);
    assert_eq!(done.code, 0, "{}", done.stdout);
    assert_eq!(
        statuses(&env, &waiter),
        ["queued", "pending", "running", "completed"]
    );
    let logs = env.run(&["logs", &waiter]);
    assert!(logs.stdout.contains("queued run"), "{}", logs.stdout);
    assert_eq!(statuses(&env, &cancelled), ["queued", "interrupted"]);
    let machines = env.json(&["machines", "status"]).data();
    assert_eq!(machines["machines"][0]["state"], "idle", "{machines}");
    assert_eq!(machines["machines"][0]["waiting"], 0);
}

#[test]
fn any_runs_once_on_a_free_machine_or_names_every_busy_one() {
    let servers = Servers::start(2);
    let env = servers.env();
    let dir = env.test_dir("anywhere", "echo ran once\n");

    // Both free: one run, on one machine.
    let out = env.json(&["run", str(&dir), "-l", "all", "--any"]);
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert_eq!(
        out.data()["runs"].as_array().map(Vec::len),
        Some(1),
        "{}",
        out.stdout
    );
    let first_machine = run_of(&out)["machine"]
        .as_str()
        .expect("machine")
        .to_owned();
    // Again: the other, least recently used, machine.
    let out = env.json(&["run", str(&dir), "-m", "m1", "-m", "m2", "--any"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_ne!(
        run_of(&out)["machine"],
        first_machine.as_str(),
        "load spreads"
    );

    let marker = env.root().join("release");
    let holders = [blocker(&env, "m1", &marker), blocker(&env, "m2", &marker)];
    let busy = env.json(&["run", str(&dir), "-l", "all", "--any"]);
    assert_eq!(busy.code, 2, "one run, so a command error: {}", busy.stdout);
    assert_eq!(busy.error_code(), "MACHINE_BUSY", "{}", busy.stdout);
    let error = &busy.json()["error"];
    let named: Vec<_> = error["details"]["machines"]
        .as_array()
        .expect("every machine tried")
        .iter()
        .map(|m| (m["machine"].clone(), m["run"].clone()))
        .collect();
    assert_eq!(
        named,
        vec![
            (Value::from("m1"), Value::from(holders[0].as_str())),
            (Value::from("m2"), Value::from(holders[1].as_str()))
        ],
        "{}",
        busy.stdout
    );

    let out = env.json(&["run", str(&dir), "-l", "all", "--any", "--wait", "--detach"]);
    let waiter = id_of(&run_of(&out));
    assert_eq!(run_of(&out)["waiting_for"], serde_json::json!(["m1", "m2"]));
    std::fs::write(&marker, "").expect("release");
    assert_eq!(env.json(&["wait", &waiter]).code, 0);
    let run = env.json(&["status", &waiter]).data()["run"].clone();
    assert_eq!(run["status"], "completed", "{run}");
    poll("both machines idle", || {
        env.json(&["machines", "status"]).data()["machines"]
            .as_array()
            .is_some_and(|rows| rows.iter().all(|row| row["state"] == "idle"))
    });
    let runs = env.json(&["list"]).data()["runs"].clone();
    let of_dir = runs
        .as_array()
        .expect("runs")
        .iter()
        .filter(|run| {
            run["test_dir"]
                .as_str()
                .is_some_and(|d| d.ends_with("anywhere"))
        })
        .count();
    assert_eq!(of_dir, 3, "the waiting run ran once: {runs}");
}
