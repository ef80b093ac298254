//! e2e of the queue: five runs of `-l ci --any --wait` on two machines. Each script appends
//! `start`/`end` lines with nanosecond times and its working directory to a shared log, so
//! that what is checked is what happened on the machines: at most one run per machine at any
//! time, all five complete, and per machine the runs started in the order they were queued.
//! The same check runs for one controller (here) and for two on PostgreSQL (shared.rs).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context as _, Result, bail, ensure};
use serde_json::Value;

use super::{Ctx, Scenario};

pub(super) const SCENARIOS: &[Scenario] = &[Scenario::sshd(
    "-l ci --any --wait: 5 runs on 2 machines, one at a time each, in queue order",
    any_wait_five,
)];

/// How many runs, and the label of the machines they share.
pub(crate) const RUNS: usize = 5;
pub(crate) const LABEL: &str = "ci";

/// The script of run `idx`: logs its start and end around a short sleep.
pub(crate) fn script(idx: usize, log: &Path) -> String {
    let log = log.display();
    format!(
        "# run {idx}\necho \"start $(date +%s%N) $PWD\" >> '{log}'\nsleep 0.7\n\
         echo \"end $(date +%s%N) $PWD\" >> '{log}'\n"
    )
}

/// Checks the five `runs` (as `wait` returned them, in queuing order) against the scripts'
/// `log`. Both machines must have run some.
pub(crate) fn check_five(runs: &[Value], log: &Path) -> Result<()> {
    ensure!(
        runs.len() == RUNS,
        "expected {RUNS} runs, got {}",
        runs.len()
    );
    let text =
        std::fs::read_to_string(log).with_context(|| format!("reading {}", log.display()))?;
    // (start, end) per remote folder.
    let mut times: BTreeMap<String, (Option<u128>, Option<u128>)> = BTreeMap::new();
    for line in text.lines() {
        let mut parts = line.splitn(3, ' ');
        let (Some(what), Some(at), Some(dir)) = (parts.next(), parts.next(), parts.next()) else {
            bail!("malformed log line {line:?}");
        };
        let at: u128 = at.parse().with_context(|| format!("time in {line:?}"))?;
        let entry = times.entry(dir.to_owned()).or_default();
        match what {
            "start" => entry.0 = Some(at),
            "end" => entry.1 = Some(at),
            _ => bail!("malformed log line {line:?}"),
        }
    }
    let mut per_machine: BTreeMap<String, Vec<(usize, u128, u128, String)>> = BTreeMap::new();
    for (idx, run) in runs.iter().enumerate() {
        let id = run["id"].as_str().unwrap_or_default();
        ensure!(
            run["status"] == "completed",
            "run {idx} ({id}) did not complete: {run}"
        );
        let remote = run["remote_dir"].as_str().unwrap_or_default();
        let (dir, (start, end)) = times
            .iter()
            .find(|(dir, _)| dir.starts_with(remote) && !remote.is_empty())
            .with_context(|| format!("run {idx} ({id}, {remote}) logged nothing:\n{text}"))?;
        let (Some(start), Some(end)) = (start, end) else {
            bail!("run {idx} ({dir}) logged no start or no end:\n{text}");
        };
        per_machine
            .entry(run["machine"].as_str().unwrap_or_default().to_owned())
            .or_default()
            .push((idx, *start, *end, id.to_owned()));
    }
    ensure!(
        per_machine.len() == 2,
        "both machines should have run some: {per_machine:?}"
    );
    for (machine, runs) in &mut per_machine {
        runs.sort_by_key(|run| run.1);
        for pair in runs.windows(2) {
            let ((a_idx, _, a_end, a_id), (b_idx, b_start, _, b_id)) = (&pair[0], &pair[1]);
            ensure!(
                a_end <= b_start,
                "{machine} ran {a_id} (run {a_idx}) and {b_id} (run {b_idx}) at the same time"
            );
            ensure!(
                a_idx < b_idx,
                "{machine} started run {b_idx} before run {a_idx}, which was queued first"
            );
        }
    }
    Ok(())
}

fn any_wait_five(ctx: &Ctx<'_>) -> Result<()> {
    let (first, second) = (ctx.machine(0).to_owned(), ctx.machine(1).to_owned());
    let fleet = ctx.target.write_fleet("fleet-queue.toml", |machine| {
        if machine.name == first || machine.name == second {
            machine.labels.push(LABEL.to_owned());
        }
    })?;
    let tf = ctx.tf.with_fleet(&fleet);
    let log = ctx.work.join("queue-five.log");
    if log.exists() {
        std::fs::remove_file(&log)?;
    }
    let mut ids = Vec::new();
    for idx in 0..RUNS {
        let dir = ctx.test_dir(&format!("queue-{idx}"), &script(idx, &log), &[])?;
        let dir = dir.to_str().context("UTF-8")?;
        let call = tf.call(&[
            "run", dir, "-l", LABEL, "--any", "--wait", "--detach", "--json",
        ])?;
        let data = call.expect_code(0)?.data()?;
        let runs = data["runs"].as_array().cloned().unwrap_or_default();
        ensure!(runs.len() == 1, "--any makes one run: {data}");
        ids.push(runs[0]["id"].as_str().unwrap_or_default().to_owned());
    }
    // Three of them wait: two machines, five runs submitted within a second.
    let mut args = vec!["wait"];
    args.extend(ids.iter().map(String::as_str));
    args.extend(["--timeout", "2m", "--json"]);
    let data = tf.call(&args)?.expect_code(0)?.data()?;
    let runs = data["runs"].as_array().cloned().unwrap_or_default();
    check_five(&runs, &log)?;
    // And the queue was used: some run's history starts queued.
    let mut queued = 0;
    for id in &ids {
        let events = tf.call(&["status", id, "--json"])?.expect_code(0)?.data()?["events"].clone();
        if events[0]["to"] == "queued" {
            ensure!(
                events[1]["to"] == "pending" && events[2]["to"] == "running",
                "a queued run is granted, then starts: {events}"
            );
            queued += 1;
        }
    }
    ensure!(queued >= 1, "no run waited in the queue");
    Ok(())
}
