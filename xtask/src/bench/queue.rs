//! `cargo xtask bench queue`: the queue, measured end to end with the release binary.
//!
//! - **Grant latency**, SQLite and PostgreSQL (a private cluster): a run holds the machine (an
//!   in-process test server) until a marker file appears; a foreground `run --wait` of another
//!   directory queues behind it. Then the marker is created, and the latency is from the
//!   holder's script writing its last timestamp to the waiter's script writing its first, both
//!   read from the same clock (`date +%s%N`). Median, min and max of 20.
//! - **Fan-out to 500** in-process test servers with `--max-parallel 64`, a trivial run:
//!   testfleet's wall time, peak RSS and own CPU (user + system, from GNU time; the servers run
//!   in this process and are not counted), per run; and a 64-machine fan-out beside it for scale.
//!
//! Targets (docs/contract.md#the-queue; checked by reading the table, never asserted): grant
//! latency < 100 ms on SQLite and < 50 ms on PostgreSQL; at 500 machines peak RSS < 128 MiB
//! and ≤ 3 ms of testfleet's CPU per run.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use testfleet_testkit::postgres::PrivateCluster;

use super::process::under_time;
use crate::targets::{Target, fresh_test_dir};
use crate::tf::Tf;

const SAMPLES: usize = 20;
const FAN_OUT: usize = 500;
const MAX_PARALLEL: &str = "64";

pub fn run(bin: &Path) -> Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    let mut lines = Vec::new();

    let one = Target::testkit(&runtime, 1)?;
    let sqlite_fleet = one.write_fleet("fleet-sqlite.toml", |_| {})?;
    lines.push(grant_latency(bin, &one, &sqlite_fleet, "SQLite")?);
    let cluster = PrivateCluster::start().context("failed to start PostgreSQL")?;
    cluster.create_database("bench")?;
    let pg_fleet = one.write_fleet("fleet-pg.toml", |_| {})?;
    let mut text = std::fs::read_to_string(&pg_fleet)?;
    text.push_str(&format!(
        "\n[store]\nurl = \"{}\"\n",
        cluster.url(testfleet_testkit::postgres::SUPERUSER, "bench")
    ));
    std::fs::write(&pg_fleet, text)?;
    lines.push(grant_latency(bin, &one, &pg_fleet, "PostgreSQL")?);
    drop(cluster);

    eprintln!("starting {FAN_OUT} test servers");
    let many = Target::testkit(&runtime, FAN_OUT)?;
    let fleet = many.write_fleet("fleet.toml", |_| {})?;
    let trivial = many.scratch().join("trivial");
    std::fs::create_dir_all(&trivial)?;
    std::fs::write(trivial.join("run.sh"), "#!/bin/sh\ntrue\n")?;
    for machines in [64, FAN_OUT] {
        lines.push(fan_out(bin, &many, &fleet, &trivial, machines)?);
    }

    println!("\n| queue | value | target |");
    println!("|---|---|---|");
    for line in lines {
        println!("{line}");
    }
    Ok(())
}

/// The median grant latency over [`SAMPLES`] hand-overs on `target`'s machine.
fn grant_latency(bin: &Path, target: &Target, fleet: &Path, store: &str) -> Result<String> {
    let tf = Tf {
        bin: bin.to_path_buf(),
        fleet: fleet.to_path_buf(),
        state_dir: target.scratch().join(format!("state-{store}")),
    };
    let machine = target.machines[0].name.clone();
    let work = target.scratch().join(format!("latency-{store}"));
    std::fs::create_dir_all(&work)?;
    eprintln!("  grant latency, {store}: {SAMPLES} hand-overs");
    let mut latencies = Vec::new();
    // Where each hand-over's time went: the holder's wrap-up (script end → its finished_at),
    // the grant (→ the waiter's queued → pending event), the waiter's start (→ its script).
    let mut parts: [Vec<i128>; 4] = Default::default();
    for sample in 0..SAMPLES {
        let marker = work.join(format!("release-{sample}"));
        let held_until = work.join(format!("holder-{sample}"));
        let started_at = work.join(format!("waiter-{sample}"));
        let holder = fresh_test_dir(
            &work.join(format!("holder-dir-{sample}")),
            &format!(
                "while [ ! -e '{m}' ]; do sleep 0.005; done\ndate +%s%N > '{h}'\n",
                m = marker.display(),
                h = held_until.display()
            ),
        )?;
        let waiter = fresh_test_dir(
            &work.join(format!("waiter-dir-{sample}")),
            &format!("date +%s%N > '{}'\n", started_at.display()),
        )?;
        let holder_run = tf
            .call(&["run", path(&holder)?, "-m", &machine, "--detach", "--json"])?
            .expect_code(0)?
            .data()?["runs"][0]["id"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let mut waiting = tf
            .command(&["run", path(&waiter)?, "-m", &machine, "--wait", "--json"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?;
        poll(Duration::from_secs(30), || {
            let data = tf.call(&["list", "--status", "queued", "--json"])?.data()?;
            Ok(data["runs"].as_array().is_some_and(|runs| !runs.is_empty()))
        })
        .context("the waiter never queued")?;
        std::fs::write(&marker, "")?;
        let status = waiting.wait()?;
        ensure!(status.success(), "the waiting run failed: {status}");
        let held = tf
            .call(&["wait", &holder_run, "--json"])?
            .expect_code(0)?
            .data()?["runs"][0]
            .clone();
        let waiter_run = tf.call(&["list", "--limit", "1", "--json"])?.data()?["runs"][0]["id"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let events = tf.call(&["status", &waiter_run, "--json"])?.data()?["events"].clone();
        let granted_at = events
            .as_array()
            .and_then(|events| events.iter().find(|e| e["from"] == "queued"))
            .and_then(|event| event["at"].as_str())
            .context("the waiter was never granted")?
            .to_owned();
        let ms_of = |text: &str| -> Result<i128> {
            Ok(i128::from(
                testfleet_core::Timestamp::parse_rfc3339(text)
                    .with_context(|| format!("time {text:?}"))?
                    .unix_ms(),
            ))
        };
        let finished = ms_of(held["finished_at"].as_str().unwrap_or_default())?;
        let granted = ms_of(&granted_at)?;
        let waiter_started = ms_of(
            tf.call(&["status", &waiter_run, "--json"])?.data()?["run"]["started_at"]
                .as_str()
                .unwrap_or_default(),
        )?;
        let read = |file: &PathBuf| -> Result<u128> {
            Ok(std::fs::read_to_string(file)
                .with_context(|| format!("reading {}", file.display()))?
                .trim()
                .parse()?)
        };
        let (end, start) = (read(&held_until)?, read(&started_at)?);
        ensure!(start > end, "the waiter started before the holder ended");
        latencies.push(Duration::from_nanos(u64::try_from(start - end)?));
        let (end_ms, start_ms) = (
            i128::try_from(end / 1_000_000)?,
            i128::try_from(start / 1_000_000)?,
        );
        parts[0].push(finished - end_ms);
        parts[1].push(granted - finished);
        parts[2].push(waiter_started - granted);
        parts[3].push(start_ms - waiter_started);
    }
    let medians: Vec<i128> = parts
        .iter_mut()
        .map(|part| {
            part.sort_unstable();
            part[part.len() / 2]
        })
        .collect();
    latencies.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let target = if store == "SQLite" {
        "< 100 ms"
    } else {
        "< 50 ms"
    };
    Ok(format!(
        "| grant latency, {store} (holder's script ends → waiter's script starts), median of \
         {SAMPLES} | {:.1} ms (min {:.1}, max {:.1}); medians: holder wraps up {} ms, grant {} \
         ms, waiter connected {} ms, its script started {} ms later | {target} |",
        ms(latencies[SAMPLES / 2]),
        ms(latencies[0]),
        ms(latencies[SAMPLES - 1]),
        medians[0],
        medians[1],
        medians[2],
        medians[3],
    ))
}

/// One fan-out of the trivial run to the first `machines` machines, under GNU time.
fn fan_out(
    bin: &Path,
    target: &Target,
    fleet: &Path,
    dir: &Path,
    machines: usize,
) -> Result<String> {
    let tf = Tf {
        bin: bin.to_path_buf(),
        fleet: fleet.to_path_buf(),
        state_dir: target.scratch().join(format!("state-fan-{machines}")),
    };
    let mut args = vec!["run".to_owned(), path(dir)?.to_owned()];
    for machine in &target.machines[..machines] {
        args.extend(["-m".to_owned(), machine.name.clone()]);
    }
    args.extend(["--max-parallel", MAX_PARALLEL, "--json"].map(str::to_owned));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    eprintln!("  fan-out to {machines} machines, --max-parallel {MAX_PARALLEL}");
    let usage = under_time(tf.command(&args))?;
    let json: serde_json::Value = serde_json::from_str(&usage.stdout)?;
    let completed = json["data"]["runs"].as_array().map_or(0, |runs| {
        runs.iter()
            .filter(|run| run["status"] == "completed")
            .count()
    });
    ensure!(
        completed == machines,
        "{completed} of {machines} runs completed"
    );
    let (wall, cpu) = (usage.wall_secs, usage.cpu_secs);
    let per_run_ms = cpu * 1e3 / machines as f64;
    Ok(format!(
        "| fan-out to {machines} test servers, --max-parallel {MAX_PARALLEL}, trivial run | \
         {wall:.2} s wall, peak RSS {:.1} MiB, testfleet CPU {:.2} s = {per_run_ms:.2} ms/run | \
         {} |",
        usage.peak_rss_kib as f64 / 1024.0,
        cpu,
        if machines == FAN_OUT {
            "< 128 MiB, ≤ 3 ms/run"
        } else {
            "—"
        }
    ))
}

fn path(dir: &Path) -> Result<&str> {
    dir.to_str().context("scratch paths are UTF-8")
}

fn poll(limit: Duration, mut check: impl FnMut() -> Result<bool>) -> Result<()> {
    let deadline = Instant::now() + limit;
    while !check()? {
        if Instant::now() > deadline {
            bail!("gave up after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}
