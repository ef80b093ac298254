//! `cargo xtask bench`: testfleet side by side with the tools a user would otherwise script,
//! against the same private OpenSSH sshd (and testkit servers for the fan-out), in one run,
//! printed as a table with ratios and peak memory. No timed assertion anywhere: the table is the
//! result. Runs in the release profile (`cargo xtask bench` re-executes itself that way).
//! `BENCH_SAMPLES=N` sets the samples per row (3); `BENCH_ONLY=TEXT` measures only the groups
//! whose name contains TEXT, e.g. `BENCH_ONLY="256 MiB"`.
//!
//! Data and remote destinations live on `/dev/shm` when it exists: this machine's unjournaled
//! ext4 makes re-created small files slow, which would measure the disk, not the transport.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use testfleet_core::hash::hash_dir;
use testfleet_core::ports::{HostKeyPolicy, NoProgress, SshConnector, SshTarget};
use testfleet_ssh::{ConnectorOptions, RusshConnector};
use testfleet_testkit::sshd::PrivateSshd;

use crate::targets::Target;
use crate::tf::Tf;

/// One measured row.
struct Row {
    group: &'static str,
    name: String,
    time: Duration,
    peak_rss_kib: Option<u64>,
}

struct Bench {
    rows: Vec<Row>,
    samples: usize,
    /// `BENCH_ONLY`: measure only the groups whose name contains it.
    only: Option<String>,
}

impl Bench {
    fn wants(&self, group: &str) -> bool {
        self.only.as_deref().is_none_or(|only| group.contains(only))
    }

    fn measure(
        &mut self,
        group: &'static str,
        name: impl Into<String>,
        mut work: impl FnMut() -> Result<Option<u64>>,
    ) -> Result<()> {
        if !self.wants(group) {
            return Ok(());
        }
        let name = name.into();
        eprintln!("  {group}: {name}");
        let mut times = Vec::new();
        let mut peak = None;
        for _ in 0..self.samples {
            let started = Instant::now();
            let rss = work().with_context(|| format!("{group}: {name}"))?;
            times.push(started.elapsed());
            peak = peak.max(rss);
        }
        times.sort();
        self.rows.push(Row {
            group,
            name,
            time: times[times.len() / 2],
            peak_rss_kib: peak,
        });
        Ok(())
    }

    fn time_of(&self, group: &str, name: &str) -> Option<Duration> {
        self.rows
            .iter()
            .find(|row| row.group == group && row.name == name)
            .map(|row| row.time)
    }

    fn print(&self, ratios: &[(&str, &str, &str, &str)]) {
        println!("\n| group | work | median | peak RSS |");
        println!("|---|---|---|---|");
        for row in &self.rows {
            let rss = row.peak_rss_kib.map_or("—".to_owned(), |kib| {
                format!("{:.1} MiB", kib as f64 / 1024.0)
            });
            println!(
                "| {} | {} | {:.0} ms | {rss} |",
                row.group,
                row.name,
                row.time.as_secs_f64() * 1e3
            );
        }
        println!("\n| ratio | value | target |");
        println!("|---|---|---|");
        for (group, ours, theirs, target) in ratios {
            if let (Some(ours_time), Some(theirs_time)) =
                (self.time_of(group, ours), self.time_of(group, theirs))
            {
                let ratio = theirs_time.as_secs_f64() / ours_time.as_secs_f64();
                println!("| {group}: {theirs} / {ours} | {ratio:.2}x | {target} |");
            }
        }
        println!("(ratio > 1: testfleet is faster)");
    }
}

fn sh(script: &str) -> Result<()> {
    let output = Command::new("sh")
        .arg("-c")
        .arg(script)
        .stdin(Stdio::null())
        .output()?;
    if !output.status.success() {
        bail!(
            "`{script}` failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

/// Runs a command (its program, arguments and environment) under GNU time and returns its peak
/// RSS in KiB. Its output is discarded, except a `--json` document, which a failure shows.
fn with_peak_rss(command: Command) -> Result<Option<u64>> {
    let program = command.get_program().to_owned();
    let args: Vec<_> = command.get_args().map(ToOwned::to_owned).collect();
    // A JSON document is small and says why a run failed; human output may be a GiB.
    let json = args.iter().any(|arg| arg == "--json");
    let mut timed = Command::new("/usr/bin/time");
    timed
        .arg("-f")
        .arg("TF_MAXRSS=%M")
        .arg(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(if json { Stdio::piped() } else { Stdio::null() });
    for (key, value) in command.get_envs() {
        if let Some(value) = value {
            timed.env(key, value);
        }
    }
    let output = timed
        .output()
        .context("failed to run /usr/bin/time (apt-get install time)")?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        bail!(
            "command failed ({}): {stderr}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stdout)
        );
    }
    Ok(stderr
        .lines()
        .rev()
        .find_map(|line| line.strip_prefix("TF_MAXRSS="))
        .and_then(|kib| kib.trim().parse().ok()))
}

/// xorshift bytes, so compression cannot flatter anyone.
fn fill(buffer: &mut [u8], seed: &mut u64) {
    for chunk in buffer.chunks_mut(8) {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        chunk.copy_from_slice(&seed.to_le_bytes()[..chunk.len()]);
    }
}

fn write_random(path: &Path, len: usize, seed: &mut u64) -> Result<()> {
    let mut data = vec![0u8; len];
    fill(&mut data, seed);
    std::fs::write(path, data).with_context(|| format!("failed to write {}", path.display()))
}

const RUN_SCRIPT: &str = "#!/bin/sh\nmkdir -p artifacts && cp run.sh artifacts/done.txt\n";

fn small_tree(dir: &Path) -> Result<()> {
    let mut seed = 0x9E37_79B9_7F4A_7C15;
    for idx in 0..5_000 {
        let sub = dir.join(format!("d{:02}", idx / 100));
        std::fs::create_dir_all(&sub)?;
        write_random(&sub.join(format!("f{idx:04}")), 4096, &mut seed)?;
    }
    std::fs::write(dir.join("run.sh"), RUN_SCRIPT)?;
    Ok(())
}

/// ~2,000 files from 100 B to 2 MiB, log-uniform (most small, a few large), ~420 MB.
fn mixed_tree(dir: &Path) -> Result<()> {
    let mut seed = 0x2545_F491_4F6C_DD1D;
    for idx in 0..2_000 {
        let sub = dir.join(format!("m{:02}", idx / 50));
        std::fs::create_dir_all(&sub)?;
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let unit = (seed % 10_000) as f64 / 10_000.0;
        let len = (100.0 * (2.0 * 1024.0 * 1024.0 / 100.0_f64).powf(unit)) as usize;
        write_random(&sub.join(format!("f{idx:04}")), len, &mut seed)?;
    }
    std::fs::write(dir.join("run.sh"), RUN_SCRIPT)?;
    Ok(())
}

fn big_file(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut seed = 0x1234_5678_9ABC_DEF1;
    write_random(&dir.join("big.bin"), 256 * 1024 * 1024, &mut seed)?;
    std::fs::write(dir.join("run.sh"), RUN_SCRIPT)?;
    Ok(())
}

struct Openssh<'a> {
    sshd: &'a PrivateSshd,
}

impl Openssh<'_> {
    fn login(&self) -> String {
        format!("{}@127.0.0.1", self.sshd.user())
    }

    fn sftp_batch(&self, batch: &str) -> Result<()> {
        let batch_file = self.sshd.dir().join("batch");
        std::fs::write(&batch_file, batch)?;
        let status = Command::new("sftp")
            .args(self.sshd.client_options())
            .arg("-P")
            .arg(self.sshd.port().to_string())
            .arg("-b")
            .arg(&batch_file)
            .arg(self.login())
            .stdout(Stdio::null())
            .status()?;
        ensure!(status.success(), "sftp -b failed: {status}");
        Ok(())
    }

    fn scp_dir(&self, local: &Path, remote: &Path) -> Result<()> {
        let status = Command::new("scp")
            .args(self.sshd.client_options())
            .arg("-q")
            .arg("-r")
            .arg("-P")
            .arg(self.sshd.port().to_string())
            .arg(local)
            .arg(format!("{}:{}", self.login(), remote.display()))
            .status()?;
        ensure!(status.success(), "scp -r failed: {status}");
        Ok(())
    }

    /// `ssh host REMOTE_COMMAND` as one shell word list, for pipelines.
    fn ssh_words(&self, remote_command: &str) -> String {
        let mut words: Vec<String> = vec!["ssh".into()];
        words.extend(
            self.sshd
                .client_options()
                .into_iter()
                .map(|w| format!("'{w}'")),
        );
        words.push(format!("-p {}", self.sshd.port()));
        words.push(self.login());
        words.push(format!("'{remote_command}'"));
        words.join(" ")
    }
}

fn target_for(sshd: &PrivateSshd) -> SshTarget {
    SshTarget {
        host: "127.0.0.1".into(),
        port: sshd.port(),
        user: sshd.user().into(),
        identity_files: vec![sshd.client_key_path()],
        known_hosts: sshd.known_hosts_path(),
        host_key_policy: HostKeyPolicy::Strict,
        connect_timeout: SshTarget::DEFAULT_CONNECT_TIMEOUT,
        keepalive_interval: SshTarget::DEFAULT_KEEPALIVE_INTERVAL,
        keepalive_max: SshTarget::DEFAULT_KEEPALIVE_MAX,
    }
}

pub fn run(bin: &Path) -> Result<()> {
    let samples = std::env::var("BENCH_SAMPLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    // The transfer rows drive the adapter on a runtime like the one `testfleet` builds for one
    // machine: one worker thread. The built-in servers of the fan-out get their own.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let sshd = PrivateSshd::start().context("failed to start OpenSSH sshd")?;
    let openssh = Openssh { sshd: &sshd };
    let data = tempfile::Builder::new()
        .prefix("tf-bench")
        .tempdir_in(crate::targets::scratch_base())?;
    let remote = data.path().join("remote");
    std::fs::create_dir_all(&remote)?;
    eprintln!("generating data under {}", data.path().display());
    let trees = [
        ("5,000 x 4 KiB", data.path().join("small")),
        ("mixed 2,000 files", data.path().join("mixed")),
        ("1 x 256 MiB", data.path().join("big")),
    ];
    small_tree(&trees[0].1)?;
    mixed_tree(&trees[1].1)?;
    big_file(&trees[2].1)?;

    let connector: Arc<dyn SshConnector> =
        Arc::new(RusshConnector::with_options(ConnectorOptions {
            use_agent: false,
            default_identities: false,
            ..ConnectorOptions::default()
        }));
    let ssh_target = target_for(&sshd);
    let mut bench = Bench {
        rows: Vec::new(),
        samples,
        only: std::env::var("BENCH_ONLY")
            .ok()
            .filter(|only| !only.is_empty()),
    };
    let dest = remote.join("dest");
    let clear = |path: &Path| {
        if path.exists() {
            std::fs::remove_dir_all(path).ok();
        }
    };

    // -- uploads ------------------------------------------------------------------------------
    for (label, tree) in &trees {
        let group: &'static str = match *label {
            "5,000 x 4 KiB" => "upload 5,000 x 4 KiB",
            "mixed 2,000 files" => "upload mixed tree",
            _ => "upload 256 MiB",
        };
        let manifest = hash_dir(tree)?;
        bench.measure(group, "testfleet (russh, pipelined)", || {
            clear(&dest);
            runtime.block_on(async {
                let session = connector.connect(&ssh_target).await?;
                session
                    .create_dir_all(dest.to_str().context("utf-8")?)
                    .await?;
                session
                    .upload(&manifest, dest.to_str().context("utf-8")?, &NoProgress)
                    .await?;
                session.close().await.ok();
                anyhow::Ok(())
            })?;
            Ok(None)
        })?;
        bench.measure(group, "sftp -b put -r", || {
            clear(&dest);
            openssh.sftp_batch(&format!("put -r {} {}\n", tree.display(), dest.display()))?;
            Ok(None)
        })?;
        bench.measure(group, "scp -r", || {
            clear(&dest);
            openssh.scp_dir(tree, &dest)?;
            Ok(None)
        })?;
        bench.measure(group, "tar c | ssh tar x", || {
            clear(&dest);
            sh(&format!(
                "tar c -C '{}' . | {}",
                tree.display(),
                openssh.ssh_words(&format!("mkdir -p {d} && tar x -C {d}", d = dest.display()))
            ))?;
            Ok(None)
        })?;
    }

    // -- download -----------------------------------------------------------------------------
    let artifacts = remote.join("art").join("artifacts");
    std::fs::create_dir_all(&artifacts)?;
    std::fs::copy(trees[2].1.join("big.bin"), artifacts.join("big.bin"))?;
    let local = data.path().join("download");
    bench.measure("download 256 MiB", "testfleet (russh, pipelined)", || {
        clear(&local);
        runtime.block_on(async {
            let session = connector.connect(&ssh_target).await?;
            let report = session
                .download_dir(artifacts.to_str().context("utf-8")?, &local)
                .await?;
            ensure!(
                report.bytes == 256 * 1024 * 1024,
                "downloaded {} bytes",
                report.bytes
            );
            session.close().await.ok();
            anyhow::Ok(())
        })?;
        Ok(None)
    })?;
    bench.measure("download 256 MiB", "sftp -b get -r", || {
        clear(&local);
        openssh.sftp_batch(&format!(
            "get -r {} {}\n",
            artifacts.display(),
            local.display()
        ))?;
        Ok(None)
    })?;
    clear(&artifacts);

    // -- dispatch overhead: connect + auth + exec `true` -------------------------------------------
    bench.measure("connect + auth + exec true", "testfleet (russh)", || {
        runtime.block_on(async {
            let session = connector.connect(&ssh_target).await?;
            let mut sink = testfleet_testkit::contract::ssh::Captured::default();
            let exit = session.exec("true", &mut sink).await?;
            ensure!(
                exit == testfleet_core::ports::RemoteExit::Code(0),
                "exec true: {exit:?}"
            );
            session.close().await.ok();
            anyhow::Ok(())
        })?;
        Ok(None)
    })?;
    bench.measure("connect + auth + exec true", "ssh host true", || {
        sh(&openssh.ssh_words("true"))?;
        Ok(None)
    })?;

    // -- whole runs with the binary -----------------------------------------------------------
    let fleet = data.path().join("fleet.toml");
    std::fs::write(
        &fleet,
        format!(
            "[machines.bench]\nhost = \"127.0.0.1\"\nport = {}\nuser = {:?}\nos = \"linux\"\nidentity_file = {:?}\nknown_hosts = {:?}\nremote_root = {:?}\n",
            sshd.port(),
            sshd.user(),
            sshd.client_key_path().display().to_string(),
            sshd.known_hosts_path().display().to_string(),
            remote.join("tf").display().to_string(),
        ),
    )?;
    let tf = Tf {
        bin: bin.to_path_buf(),
        fleet,
        state_dir: data.path().join("state"),
    };
    let trivial = data.path().join("trivial");
    std::fs::create_dir_all(&trivial)?;
    std::fs::write(trivial.join("run.sh"), "#!/bin/sh\ntrue\n")?;
    let mut run_rows = vec![("trivial dispatch", trivial.clone())];
    run_rows.extend(trees.iter().take(2).map(|(label, tree)| {
        let group = if label.starts_with('5') {
            "whole run 5,000 x 4 KiB"
        } else {
            "whole run mixed tree"
        };
        (group, tree.clone())
    }));
    let remote_copy = remote.join("script");
    let digest_cache = tf.state_dir.join("digests");
    for (group, tree) in &run_rows {
        let tree_text = tree.to_str().context("utf-8")?.to_owned();
        if *group != "trivial dispatch" {
            // Without the digest cache of earlier runs: every file is read and hashed.
            bench.measure(group, "testfleet run, cold digest cache", || {
                clear(&digest_cache);
                with_peak_rss(tf.command(&["run", &tree_text, "-m", "bench", "--json"]))
            })?;
        }
        bench.measure(group, "testfleet run", || {
            with_peak_rss(tf.command(&["run", &tree_text, "-m", "bench", "--json"]))
        })?;
        if *group == "trivial dispatch" {
            sh(&openssh.ssh_words(&format!(
                "mkdir -p {d} && cp -r {t}/. {d}",
                d = remote_copy.display(),
                t = trivial.display()
            )))?;
            bench.measure(group, "ssh host 'cd dir && sh run.sh'", || {
                sh(&openssh.ssh_words(&format!("cd {} && sh run.sh", remote_copy.display())))?;
                Ok(None)
            })?;
        } else {
            let back = data.path().join("back");
            bench.measure(group, "tar | ssh 'tar x && sh run.sh && tar c artifacts' | tar x", || {
                clear(&dest);
                clear(&back);
                std::fs::create_dir_all(&back)?;
                sh(&format!(
                    "tar c -C '{}' . | {} | tar x -C '{}'",
                    tree.display(),
                    openssh.ssh_words(&format!(
                        "mkdir -p {d} && tar x -C {d} && cd {d} && sh run.sh >&2 && tar c -C artifacts .",
                        d = dest.display()
                    )),
                    back.display()
                ))?;
                Ok(None)
            })?;
        }
    }
    // Peak memory of the big upload through the whole binary.
    let big_text = trees[2].1.to_str().context("utf-8")?.to_owned();
    bench.measure("whole run 256 MiB", "testfleet run", || {
        with_peak_rss(tf.command(&["run", &big_text, "-m", "bench", "--json"]))
    })?;

    // Peak memory of a foreground run whose script prints 1 GiB (human output, to /dev/null).
    let loud = data.path().join("loud");
    std::fs::create_dir_all(&loud)?;
    std::fs::write(
        loud.join("run.sh"),
        "#!/bin/sh\nhead -c 1073741824 /dev/zero | tr '\\0' 'x'\n",
    )?;
    let loud_text = loud.to_str().context("utf-8")?.to_owned();
    bench.measure("1 GiB of stdout, foreground", "testfleet run", || {
        with_peak_rss(tf.command(&["run", &loud_text, "-m", "bench"]))
    })?;

    // -- fan-out to testkit servers -------------------------------------------------------------
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
    let second = data.path().join("one-second");
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
    let fan_out_cpu = if bench.wants("fan-out (testkit servers)") {
        Some(fan_out_cpu(&fan_tf, &fan_args)?)
    } else {
        None
    };

    bench.print(&[
        (
            "upload 5,000 x 4 KiB",
            "testfleet (russh, pipelined)",
            "sftp -b put -r",
            ">= 3x",
        ),
        (
            "upload 5,000 x 4 KiB",
            "testfleet (russh, pipelined)",
            "tar c | ssh tar x",
            ">= 0.67x",
        ),
        (
            "upload mixed tree",
            "testfleet (russh, pipelined)",
            "sftp -b put -r",
            "—",
        ),
        (
            "upload 256 MiB",
            "testfleet (russh, pipelined)",
            "sftp -b put -r",
            ">= 1.25x",
        ),
        (
            "download 256 MiB",
            "testfleet (russh, pipelined)",
            "sftp -b get -r",
            ">= 1x",
        ),
        (
            "trivial dispatch",
            "testfleet run",
            "ssh host 'cd dir && sh run.sh'",
            ">= 1.43x (<= 0.7x the time)",
        ),
        (
            "whole run 5,000 x 4 KiB",
            "testfleet run",
            "tar | ssh 'tar x && sh run.sh && tar c artifacts' | tar x",
            ">= 1x",
        ),
        (
            "whole run 5,000 x 4 KiB",
            "testfleet run, cold digest cache",
            "tar | ssh 'tar x && sh run.sh && tar c artifacts' | tar x",
            ">= 1x",
        ),
        (
            "whole run mixed tree",
            "testfleet run",
            "tar | ssh 'tar x && sh run.sh && tar c artifacts' | tar x",
            ">= 1x",
        ),
        (
            "whole run mixed tree",
            "testfleet run, cold digest cache",
            "tar | ssh 'tar x && sh run.sh && tar c artifacts' | tar x",
            ">= 1x",
        ),
        (
            "fan-out (testkit servers)",
            "32 machines",
            "1 machine",
            ">= 0.5x (32 within 2x of 1)",
        ),
        (
            "fan-out, 1 s run (testkit servers)",
            "32 machines",
            "1 machine",
            "— (a trivial run is the target)",
        ),
    ]);
    if let Some(fan_out_cpu) = fan_out_cpu {
        println!("{fan_out_cpu}");
    }
    Ok(())
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
