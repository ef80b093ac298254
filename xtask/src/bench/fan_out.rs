//! Fan-out to 32 in-process testkit servers against a run on one of them: a trivial run and
//! a one-second run, and where the CPU of a fan-out goes; and the memory of a fan-out whose
//! scripts print one endless line each.

use std::process::Command;

use anyhow::{Context as _, Result, ensure};

use super::Context;
use super::process::with_peak_rss;
use crate::targets::Target;
use crate::tf::Tf;

/// One machine against 32, for a trivial run and a one-second run; then, when the trivial
/// group is measured, the CPU breakdown of a 32-machine fan-out, to print below the table.
pub(super) fn fan_outs(ctx: &mut Context<'_>) -> Result<Option<String>> {
    let Context {
        bin,
        data,
        ref trivial,
        ref mut bench,
        ..
    } = *ctx;
    let servers_runtime = tokio::runtime::Runtime::new()?;
    let fan = Target::testkit(&servers_runtime, 32)?;
    let fan_fleet = fan.write_fleet("fleet.toml", |_| {})?;
    let fan_tf = Tf {
        bin: bin.to_path_buf(),
        fleet: fan_fleet,
        state_dir: fan.scratch().join("state"),
    };
    // A trivial run, then one that takes a second (sleeping), as a real test does: whether the
    // runs overlap rather than queue, with testfleet's own overhead a small part of the time.
    let second = data.join("one-second");
    std::fs::create_dir_all(&second)?;
    std::fs::write(second.join("run.sh"), "#!/bin/sh\nsleep 1\n")?;
    let names: Vec<String> = (1..=32).map(|idx| format!("m{idx}")).collect();
    let trivial_text = trivial.to_str().context("utf-8")?.to_owned();
    let second_text = second.to_str().context("utf-8")?.to_owned();
    for (group, dir) in [
        ("fan-out (testkit servers)", &trivial_text),
        ("fan-out, 1 s run (testkit servers)", &second_text),
    ] {
        bench.measure(group, "1 machine", || {
            with_peak_rss(fan_tf.command(&["run", dir, "-m", "m1", "--json"]))
        })?;
        let args = fan_out_args(dir, &names);
        bench.measure(group, "32 machines", || {
            with_peak_rss(fan_tf.command(&args))
        })?;
    }
    let fan_args = fan_out_args(&trivial_text, &names);
    Ok(if bench.wants("fan-out (testkit servers)") {
        Some(fan_out_cpu(&fan_tf, &fan_args)?)
    } else {
        None
    })
}

/// Where the CPU of a 32-machine fan-out goes. The servers run in this process and start the
/// runs' shells as its children; testfleet's own share comes from bash's `times`, which reads
/// getrusage (GNU time rounds to 10 ms).
fn fan_out_cpu(fan_tf: &Tf, fan_args: &[&str]) -> Result<String> {
    let n_rounds = 5;
    let before = cpu_ticks()?;
    let mut client_secs = 0.0;
    for _ in 0..n_rounds {
        let mut command = Command::new("bash");
        command
            .arg("-c")
            .arg("\"$@\" >/dev/null && times")
            .arg("bash")
            .arg(&fan_tf.bin)
            .args(fan_tf.command(fan_args).get_args())
            .envs(
                fan_tf
                    .command(&[])
                    .get_envs()
                    .filter_map(|(key, value)| Some((key, value?))),
            );
        let output = command.output()?;
        ensure!(output.status.success(), "fan-out failed: {output:?}");
        // `times` prints the shell's own times, then its children's: `0m0.052s 0m0.016s`.
        let stdout = String::from_utf8_lossy(&output.stdout);
        let children = stdout.lines().last().context("bash printed no times")?;
        for field in children.split_whitespace() {
            let (minutes, seconds) = field
                .trim_end_matches('s')
                .split_once('m')
                .context("unexpected times output")?;
            client_secs += minutes.parse::<f64>()? * 60.0 + seconds.parse::<f64>()?;
        }
    }
    let after = cpu_ticks()?;
    let per_round = |ticks: u64| ticks as f64 * 10.0 / f64::from(n_rounds);
    let client_ms = client_secs * 1000.0 / f64::from(n_rounds);
    let servers_ms = per_round(after.0 - before.0);
    let hosts_ms = (per_round(after.1 - before.1) - client_ms).max(0.0);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    Ok(format!(
        "CPU of one 32-machine fan-out (mean of {n_rounds}): testfleet {client_ms:.0} ms, built-in \
         servers {servers_ms:.0} ms, shells they start for the runs {hosts_ms:.0} ms; on {} cores \
         no schedule is shorter than {:.0} ms",
        cores,
        (client_ms + servers_ms + hosts_ms) / cores as f64,
    ))
}

/// `testfleet run DIR --json -m m1 … -m mN`.
fn fan_out_args<'a>(dir: &'a str, names: &'a [String]) -> Vec<&'a str> {
    let mut args = vec!["run", dir, "--json"];
    for name in names {
        args.push("-m");
        args.push(name);
    }
    args
}

/// CPU time of this process and of its waited-for children, in clock ticks (1/100 s).
fn cpu_ticks() -> Result<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat
        .rsplit_once(')')
        .context("unexpected /proc/self/stat")?
        .1;
    let fields: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(4)
        .map(|field| field.parse().unwrap_or(0))
        .collect();
    ensure!(fields.len() == 4, "unexpected /proc/self/stat");
    Ok((fields[0] + fields[1], fields[2] + fields[3]))
}

const LONG_LINES: &str = "50 MB on one line per machine, human output (testkit servers)";
/// The memory a fan-out in human mode may take, whatever the length of its lines.
const LONG_LINES_TARGET_KIB: u64 = 64 * 1024;

/// Peak RSS of a human-mode fan-out to 2 machines whose scripts each print 50 MB without a
/// newline (the terminal observer holds the unfinished line of each machine), against the same
/// run on one machine; returns the line that says whether it is under the target.
pub(super) fn long_lines(ctx: &mut Context<'_>) -> Result<Option<String>> {
    if !ctx.bench.wants(LONG_LINES) {
        return Ok(None);
    }
    let servers_runtime = tokio::runtime::Runtime::new()?;
    let pair = Target::testkit(&servers_runtime, 2)?;
    let tf = Tf {
        bin: ctx.bin.to_path_buf(),
        fleet: pair.write_fleet("fleet.toml", |_| {})?,
        state_dir: pair.scratch().join("state"),
    };
    let dir = ctx.data.join("long-line");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(
        dir.join("run.sh"),
        "#!/bin/sh\nhead -c 52428800 /dev/zero | tr '\\0' 'x'\n",
    )?;
    let dir = dir.to_str().context("utf-8")?.to_owned();
    ctx.bench.measure(LONG_LINES, "1 machine", || {
        with_peak_rss(tf.command(&["run", &dir, "-m", "m1"]))
    })?;
    ctx.bench.measure(LONG_LINES, "2 machines", || {
        with_peak_rss(tf.command(&["run", &dir, "-m", "m1", "-m", "m2"]))
    })?;
    let mib = |kib: u64| kib as f64 / 1024.0;
    let two = ctx
        .bench
        .peak_rss_of(LONG_LINES, "2 machines")
        .context("the 2-machine row has no peak RSS")?;
    let one = ctx.bench.peak_rss_of(LONG_LINES, "1 machine").unwrap_or(0);
    ensure!(two > 0, "no peak RSS measured");
    Ok(Some(format!(
        "memory: 2 machines each printing 50 MB on one line (human output) peak at {:.1} MiB \
         (one machine: {:.1} MiB); target < {:.0} MiB: {}",
        mib(two),
        mib(one),
        mib(LONG_LINES_TARGET_KIB),
        if two < LONG_LINES_TARGET_KIB {
            "met"
        } else {
            "NOT MET"
        }
    )))
}
