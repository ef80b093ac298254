//! `cargo xtask bench`: testfleet side by side with the tools a user would otherwise script,
//! against the same private OpenSSH sshd (and testkit servers for the fan-out), in one run,
//! printed as a table with ratios and peak memory. No timed assertion anywhere: the table is the
//! result. Runs in the release profile (`cargo xtask bench` re-executes itself that way).
//! `BENCH_SAMPLES=N` sets the samples per row (3); `BENCH_ONLY=TEXT` measures only the groups
//! whose name contains TEXT, e.g. `BENCH_ONLY="256 MiB"`.
//!
//! Data and remote destinations live on `/dev/shm` when it exists: this machine's unjournaled
//! ext4 makes re-created small files slow, which would measure the disk, not the transport.

mod adapter;
mod cache;
mod data;
mod fan_out;
mod openssh;
mod process;
pub mod queue;
pub mod results;
mod runs;
pub(crate) mod store;
mod table;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context as _, Result};
use testfleet_core::ports::{SshConnector, SshTarget};
use testfleet_ssh::{ConnectorOptions, RusshConnector};
use testfleet_testkit::sshd::PrivateSshd;

use openssh::Openssh;
use table::Bench;

/// What the benchmark groups share: the private sshd and the tools that reach it, the generated
/// data, and the table the rows go to.
struct Context<'a> {
    /// The release binary the whole runs start.
    bin: &'a Path,
    runtime: tokio::runtime::Runtime,
    sshd: &'a PrivateSshd,
    openssh: Openssh<'a>,
    connector: Arc<dyn SshConnector>,
    ssh_target: SshTarget,
    /// Holds the generated data, the remote destinations and the runs' state.
    data: &'a Path,
    remote: PathBuf,
    /// Where the uploads and the tar pipelines put the trees.
    dest: PathBuf,
    /// The generated trees, by label: many small files, a mixed tree, one big file.
    trees: [(&'static str, PathBuf); 3],
    /// A test whose `run.sh` only runs `true`: written by the trivial dispatch, sent again by
    /// the fan-out.
    trivial: PathBuf,
    bench: Bench,
}

pub fn run(bin: &Path) -> Result<()> {
    let bench = Bench::from_env();
    // The transfer rows drive the adapter on a runtime like the one `testfleet` builds for one
    // machine: one worker thread. The built-in servers of the fan-out get their own.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let sshd = PrivateSshd::start().context("failed to start OpenSSH sshd")?;
    let data = tempfile::Builder::new()
        .prefix("tf-bench")
        .tempdir_in(crate::targets::scratch_base())?;
    let mut ctx = Context::new(bin, runtime, &sshd, data.path(), bench)?;

    adapter::uploads(&mut ctx)?;
    adapter::download(&mut ctx)?;
    adapter::connect_exec(&mut ctx)?;
    let tf = runs::sshd_tf(&ctx)?;
    runs::trivial_dispatch(&mut ctx, &tf)?;
    runs::whole_runs(&mut ctx, &tf)?;
    cache::re_runs(&mut ctx, &tf)?;
    runs::big_file(&mut ctx, &tf)?;
    runs::loud_stdout(&mut ctx, &tf)?;
    let fan_out_cpu = fan_out::fan_outs(&mut ctx)?;
    let long_lines = fan_out::long_lines(&mut ctx)?;

    ctx.bench.print(RATIOS);
    for line in [fan_out_cpu, long_lines].into_iter().flatten() {
        println!("{line}");
    }
    Ok(())
}

impl<'a> Context<'a> {
    /// Generates the data under `data` and readies the adapter for `sshd`.
    fn new(
        bin: &'a Path,
        runtime: tokio::runtime::Runtime,
        sshd: &'a PrivateSshd,
        data: &'a Path,
        bench: Bench,
    ) -> Result<Self> {
        let remote = data.join("remote");
        std::fs::create_dir_all(&remote)?;
        eprintln!("generating data under {}", data.display());
        let trees = [
            ("5,000 x 4 KiB", data.join("small")),
            ("mixed 2,000 files", data.join("mixed")),
            ("1 x 256 MiB", data.join("big")),
        ];
        data::small_tree(&trees[0].1)?;
        data::mixed_tree(&trees[1].1)?;
        data::big_file(&trees[2].1)?;

        let connector: Arc<dyn SshConnector> =
            Arc::new(RusshConnector::with_options(ConnectorOptions {
                use_agent: false,
                default_identities: false,
                ..ConnectorOptions::default()
            }));
        Ok(Self {
            bin,
            runtime,
            sshd,
            openssh: Openssh { sshd },
            connector,
            ssh_target: openssh::target_for(sshd),
            data,
            dest: remote.join("dest"),
            remote,
            trees,
            trivial: data.join("trivial"),
            bench,
        })
    }
}

/// Removes `path` and what it holds, if it is there.
fn clear(path: &Path) {
    if path.exists() {
        std::fs::remove_dir_all(path).ok();
    }
}

/// The rows whose ratio the table shows: group, testfleet's work, the reference's, the target.
const RATIOS: &[(&str, &str, &str, &str)] = &[
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
        "testfleet run --no-cache",
        "tar | ssh 'tar x && sh run.sh && tar c artifacts' | tar x",
        ">= 1x",
    ),
    (
        "whole run 5,000 x 4 KiB",
        "testfleet run --no-cache, cold digest cache",
        "tar | ssh 'tar x && sh run.sh && tar c artifacts' | tar x",
        ">= 1x",
    ),
    (
        "whole run 5,000 x 4 KiB",
        "testfleet run, empty remote cache",
        "testfleet run --no-cache",
        "within 5% (>= 0.95x)",
    ),
    (
        "whole run 5,000 x 4 KiB",
        "testfleet run, files entering an existing cache",
        "testfleet run --no-cache",
        "— (the second run on a machine)",
    ),
    (
        "whole run mixed tree",
        "testfleet run --no-cache",
        "tar | ssh 'tar x && sh run.sh && tar c artifacts' | tar x",
        ">= 1x",
    ),
    (
        "whole run mixed tree",
        "testfleet run --no-cache, cold digest cache",
        "tar | ssh 'tar x && sh run.sh && tar c artifacts' | tar x",
        ">= 1x",
    ),
    (
        "whole run mixed tree",
        "testfleet run, empty remote cache",
        "testfleet run --no-cache",
        "within 5% (>= 0.95x)",
    ),
    (
        "whole run mixed tree",
        "testfleet run, files entering an existing cache",
        "testfleet run --no-cache",
        "— (the second run on a machine)",
    ),
    (
        "re-run mixed tree",
        "testfleet run (warm cache)",
        "rsync -a --delete into a kept folder + ssh run + rsync artifacts",
        ">= 2x",
    ),
    (
        "re-run 5,000 x 4 KiB",
        "testfleet run (warm cache)",
        "rsync -a --delete into a kept folder + ssh run + rsync artifacts",
        ">= 2x",
    ),
    (
        "re-run mixed tree, one 2 MiB file changed",
        "testfleet run (warm cache)",
        "rsync -a --delete into a kept folder + ssh run + rsync artifacts",
        ">= 2x",
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
];
