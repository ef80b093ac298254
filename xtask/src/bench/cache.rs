//! What the remote cache (`<remote_root>/cache/`) changes: a first run into an empty cache
//! against today's full upload (`--no-cache`), and re-runs with a warm cache against `rsync`
//! into a folder kept on the machine, the tool a user re-running a tree would otherwise script:
//! the same tree again, and the mixed tree with one 2 MiB file changed before every sample.

use std::path::Path;
use std::time::{Duration, SystemTime};

use anyhow::{Context as _, Result};

use super::process::{sh, with_peak_rss};
use super::runs::remote_root;
use super::table::Bench;
use super::{Context, clear, data};
use crate::tf::Tf;

/// The row of the re-runs' reference.
const RSYNC: &str = "rsync -a --delete into a kept folder + ssh run + rsync artifacts";

/// `testfleet run` of `tree_text` into an empty remote cache, so the run inserts every file (a
/// row of the whole-run `group`, next to `--no-cache`). The cache the previous sample filled is
/// removed before every sample, untimed.
pub(super) fn empty_cache_run(
    bench: &mut Bench,
    tf: &Tf,
    remote: &Path,
    group: &'static str,
    tree_text: &str,
) -> Result<()> {
    let cache = remote_root(remote).join("cache");
    bench.measure_after(
        group,
        "testfleet run, empty remote cache",
        || {
            clear(&cache);
            Ok(())
        },
        || with_peak_rss(tf.command(&["run", tree_text, "-m", "bench", "--json"])),
    )?;
    // The second run on a machine: the cache folder is there, the small files are not yet.
    bench.measure_after(
        group,
        SECOND_RUN,
        || {
            // The folder the previous row's runs made (owned by the login), emptied.
            for entry in std::fs::read_dir(&cache)? {
                std::fs::remove_file(entry?.path())?;
            }
            Ok(())
        },
        || with_peak_rss(tf.command(&["run", tree_text, "-m", "bench", "--json"])),
    )
}

/// The row of a run whose files all enter an existing cache.
pub(super) const SECOND_RUN: &str = "testfleet run, files entering an existing cache";

/// The re-runs: the mixed tree, the small tree, and a copy of the mixed tree whose
/// `changing.bin` gets 2 MiB of new random bytes before every sample of both tools.
pub(super) fn re_runs(ctx: &mut Context<'_>, tf: &Tf) -> Result<()> {
    let small = ctx.trees[0].1.clone();
    let mixed = ctx.trees[1].1.clone();
    re_run(ctx, tf, "re-run mixed tree", &mixed, || Ok(()))?;
    re_run(ctx, tf, "re-run 5,000 x 4 KiB", &small, || Ok(()))?;

    let group = "re-run mixed tree, one 2 MiB file changed";
    if !ctx.bench.wants(group) {
        return Ok(());
    }
    let copy = ctx.data.join("changing");
    clear(&copy);
    sh(&format!("cp -a '{}' '{}'", mixed.display(), copy.display()))?;
    let changing = copy.join("changing.bin");
    let mut seed = 0x6A09_E667_F3BC_C908;
    let mut version = 0;
    re_run(ctx, tf, group, &copy, || {
        data::write_random(&changing, 2 * 1024 * 1024, &mut seed)?;
        // rsync's quick check compares whole seconds of mtime and the size, which stays
        // 2 MiB: every version gets a second of its own, or a fast sample could be skipped.
        version += 1;
        std::fs::File::options()
            .write(true)
            .open(&changing)?
            .set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + version))?;
        Ok(())
    })?;
    clear(&copy);
    Ok(())
}

/// One re-run group: `tree` by testfleet with a warm remote cache (and digest cache), and by
/// `rsync` into a folder it filled before; both warmed by one unmeasured run, and `change`
/// called (untimed) before the warm-up and before every sample of both.
fn re_run(
    ctx: &mut Context<'_>,
    tf: &Tf,
    group: &'static str,
    tree: &Path,
    mut change: impl FnMut() -> Result<()>,
) -> Result<()> {
    let Context {
        ref openssh,
        data,
        ref remote,
        ref mut bench,
        ..
    } = *ctx;
    if !bench.wants(group) {
        return Ok(());
    }
    let tree_text = tree.to_str().context("utf-8")?.to_owned();
    let run = ["run", tree_text.as_str(), "-m", "bench", "--json"];
    change()?;
    tf.call(&run)?.expect_code(0)?;
    bench.measure_after(group, "testfleet run (warm cache)", &mut change, || {
        with_peak_rss(tf.command(&run))
    })?;

    let kept = remote.join("kept");
    let back = data.join("back-rsync");
    clear(&kept);
    let ssh = openssh.ssh_command();
    let login = openssh.login();
    let script = format!(
        "rsync -a --delete -e \"{ssh}\" '{tree}/' '{login}:{kept}/' && {run} && \
         rsync -a -e \"{ssh}\" '{login}:{kept}/artifacts/' '{back}/'",
        tree = tree.display(),
        kept = kept.display(),
        back = back.display(),
        run = openssh.ssh_words(&format!("cd {} && sh run.sh", kept.display())),
    );
    change()?;
    sh(&script)?;
    bench.measure_after(
        group,
        RSYNC,
        || {
            clear(&back);
            change()
        },
        || {
            sh(&script)?;
            Ok(None)
        },
    )?;
    clear(&kept);
    clear(&back);
    Ok(())
}
