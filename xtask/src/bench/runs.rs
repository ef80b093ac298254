//! Whole runs of the binary against the sshd, against the shell pipelines that do the same:
//! a trivial dispatch, each small tree with a warm and a cold digest cache, and the peak memory
//! of a big upload and of a loud script. The whole runs of the trees and the big upload pass
//! `--no-cache`, so they measure the full upload; what the remote cache changes is measured in
//! `cache.rs` (one row here: each tree into an empty remote cache).

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};

use super::process::{sh, with_peak_rss};
use super::{Context, cache, clear};
use crate::tf::Tf;

/// The machine's `remote_root` in the fleet file of `sshd_tf`: its `cache/` is the remote
/// cache.
pub(super) fn remote_root(remote: &Path) -> PathBuf {
    remote.join("tf")
}

/// `testfleet` with a fleet file that reaches the sshd as the machine `bench`.
pub(super) fn sshd_tf(ctx: &Context<'_>) -> Result<Tf> {
    let Context {
        bin,
        sshd,
        data,
        remote,
        ..
    } = ctx;
    let fleet = data.join("fleet.toml");
    std::fs::write(
        &fleet,
        format!(
            "[machines.bench]\nhost = \"127.0.0.1\"\nport = {}\nuser = {:?}\nos = \"linux\"\nidentity_file = {:?}\nknown_hosts = {:?}\nremote_root = {:?}\n",
            sshd.port(),
            sshd.user(),
            sshd.client_key_path().display().to_string(),
            sshd.known_hosts_path().display().to_string(),
            remote_root(remote).display().to_string(),
        ),
    )?;
    Ok(Tf {
        bin: bin.to_path_buf(),
        fleet,
        state_dir: data.join("state"),
    })
}

/// A run whose script only runs `true`, by testfleet and by `ssh` into a copy made beforehand.
pub(super) fn trivial_dispatch(ctx: &mut Context<'_>, tf: &Tf) -> Result<()> {
    let Context {
        ref openssh,
        ref remote,
        ref trivial,
        ref mut bench,
        ..
    } = *ctx;
    std::fs::create_dir_all(trivial)?;
    std::fs::write(trivial.join("run.sh"), "#!/bin/sh\ntrue\n")?;
    let group = "trivial dispatch";
    let remote_copy = remote.join("script");
    let tree_text = trivial.to_str().context("utf-8")?.to_owned();
    bench.measure(group, "testfleet run", || {
        with_peak_rss(tf.command(&["run", &tree_text, "-m", "bench", "--json"]))
    })?;
    sh(&openssh.ssh_words(&format!(
        "mkdir -p {d} && cp -r {t}/. {d}",
        d = remote_copy.display(),
        t = trivial.display()
    )))?;
    bench.measure(group, "ssh host 'cd dir && sh run.sh'", || {
        sh(&openssh.ssh_words(&format!("cd {} && sh run.sh", remote_copy.display())))?;
        Ok(None)
    })?;
    Ok(())
}

/// The small and the mixed tree run by testfleet without the remote cache (with a cold, then a
/// warm digest cache), by testfleet into an empty remote cache, and by a tar pipeline that
/// uploads, runs and brings the artifacts back.
pub(super) fn whole_runs(ctx: &mut Context<'_>, tf: &Tf) -> Result<()> {
    let Context {
        ref openssh,
        data,
        ref remote,
        ref dest,
        ref trees,
        ref mut bench,
        ..
    } = *ctx;
    let digest_cache = tf.state_dir.join("digests");
    for (label, tree) in trees.iter().take(2) {
        let group = if label.starts_with('5') {
            "whole run 5,000 x 4 KiB"
        } else {
            "whole run mixed tree"
        };
        let tree_text = tree.to_str().context("utf-8")?.to_owned();
        let no_cache = [
            "run",
            tree_text.as_str(),
            "-m",
            "bench",
            "--json",
            "--no-cache",
        ];
        // Without the digest cache of earlier runs: every file is read and hashed.
        bench.measure(group, "testfleet run --no-cache, cold digest cache", || {
            clear(&digest_cache);
            with_peak_rss(tf.command(&no_cache))
        })?;
        bench.measure(group, "testfleet run --no-cache", || {
            with_peak_rss(tf.command(&no_cache))
        })?;
        cache::empty_cache_run(bench, tf, remote, group, &tree_text)?;
        let back = data.join("back");
        bench.measure(group, "tar | ssh 'tar x && sh run.sh && tar c artifacts' | tar x", || {
            clear(dest);
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
    Ok(())
}

/// Peak memory of the big upload through the whole binary (every sample uploads: `--no-cache`).
pub(super) fn big_file(ctx: &mut Context<'_>, tf: &Tf) -> Result<()> {
    let big_text = ctx.trees[2].1.to_str().context("utf-8")?.to_owned();
    ctx.bench
        .measure("whole run 256 MiB", "testfleet run --no-cache", || {
            with_peak_rss(tf.command(&["run", &big_text, "-m", "bench", "--json", "--no-cache"]))
        })
}

/// Peak memory of a foreground run whose script prints 1 GiB (human output, to /dev/null).
pub(super) fn loud_stdout(ctx: &mut Context<'_>, tf: &Tf) -> Result<()> {
    let loud = ctx.data.join("loud");
    std::fs::create_dir_all(&loud)?;
    std::fs::write(
        loud.join("run.sh"),
        "#!/bin/sh\nhead -c 1073741824 /dev/zero | tr '\\0' 'x'\n",
    )?;
    let loud_text = loud.to_str().context("utf-8")?.to_owned();
    ctx.bench
        .measure("1 GiB of stdout, foreground", "testfleet run", || {
            with_peak_rss(tf.command(&["run", &loud_text, "-m", "bench"]))
        })
}
