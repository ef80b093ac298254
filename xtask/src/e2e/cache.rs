//! The machine's file cache (`docs/contract.md#remote-file-cache`) against a real OpenSSH
//! sshd: a test that writes into, truncates, chmods, deletes and renames its inputs does not
//! change what the next run gets; a changed file is all that is sent; a controller killed with
//! SIGKILL in the middle of an upload leaves nothing torn in the cache; and one controller
//! evicting from a cache that another's running run uses breaks nothing.
//!
//! The sshd runs on this host, so a machine's cache, `<remote_root>/cache/`, is a local folder
//! these scenarios read directly: every blob in it must be a regular file whose contents hash
//! to the digest its name starts with, whose permission bits are the mode its name ends with
//! and whose mtime is the stamp. Hashes are `sha256sum`'s, on both sides.

use std::collections::BTreeSet;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, Result, bail, ensure};
use serde_json::Value;

use super::{
    Ctx, Scenario, finish, names_in, only_run, path_of, read, run_args, spawn_run, status_with,
    text, write_file,
};
use crate::tf::{Call, Tf};

pub(super) const SCENARIOS: &[Scenario] = &[
    Scenario::sshd(
        "cache: a test that abuses its inputs does not change the next run's",
        abused_inputs,
    ),
    Scenario::sshd(
        "cache: one changed file sends only its bytes",
        one_changed_file,
    ),
    Scenario::sshd(
        "cache: kill -9 mid-upload, then a re-run gets a correct tree",
        killed_mid_upload,
    ),
    Scenario::sshd(
        "cache: two controllers sharing a machine's cache, one evicting while the other runs",
        shared_eviction,
    ),
    Scenario::sshd(
        "cache: another controller's gc --remote evicts under a running run",
        gc_under_a_run,
    ),
];

/// The mtime of every blob: 2000-01-01T00:00:00Z.
const STAMP: i64 = 946_684_800;

/// The cache limit of a machine whose fleet file names none: 10 GiB.
const DEFAULT_MAX_BYTES: u64 = 10 * 1024 * 1024 * 1024;

/// A script body that checks every file against `sums.txt` (`sha256sum` lines made here).
const CHECK_SUMS: &str = "set -e\nsha256sum --quiet -c sums.txt\necho sums-ok\n";

/// What [`CHECK_SUMS`] prints when every file is right.
const SUMS_OK: &str = "sums-ok\n";

// -- 1 ---------------------------------------------------------------------------------------

/// Prints `sha256 mode path` of every input (not `run.sh`, not `artifacts/`), sorted bytewise.
const LISTING: &str = "export LC_ALL=C\n\
    find . -type f ! -path ./run.sh ! -path './artifacts/*' | sort | while IFS= read -r f; do\n\
    echo \"$(sha256sum < \"$f\" | cut -d ' ' -f 1) $(stat -c %a \"$f\") ${f#./}\"\n\
    done\n";

/// Every way a script can abuse its inputs, each through the run folder's link to a blob.
const ABUSE: &str = "echo more >> append.txt\n\
    : > trunc.bin\n\
    chmod 777 tool.sh\n\
    printf XXXX | dd of=secret.txt bs=1 seek=3 conv=notrunc 2>/dev/null\n\
    rm same-644.txt\n\
    mv sub/dir/nested.txt victim.txt\n";

/// How many of [`ABUSE`]'s changes reach the shared inode (append, truncate, chmod, write in
/// place), so that the next run must send those files again.
const IN_PLACE_ABUSES: u64 = 4;

fn abused_inputs(ctx: &Ctx<'_>) -> Result<()> {
    prime_cache(ctx, 0)?;
    let machine = ctx.machine(0);
    let noise = random_bytes(64 * 1024)?;
    let inputs: [(&str, &[u8], u32); 8] = [
        ("tool.sh", b"#!/bin/sh\necho tool\n", 0o755),
        ("secret.txt", b"secret: 0123456789\n", 0o600),
        ("same-644.txt", b"the same contents, two modes\n", 0o644),
        ("same-600.txt", b"the same contents, two modes\n", 0o600),
        ("append.txt", b"appended to\n", 0o644),
        ("trunc.bin", &noise, 0o644),
        ("victim.txt", b"renamed over\n", 0o644),
        ("sub/dir/nested.txt", b"moved away\n", 0o644),
    ];
    let dir = ctx.test_dir("cache-abuse", &format!("set -e\n{LISTING}{ABUSE}"), &inputs)?;
    let files = tree_files(&dir)?;
    let expected = listing(&files);
    let n_files = files.len() as u64;
    for round in 1..=3 {
        let run = completed(&ctx.run(&dir, machine, &[])?)?;
        let seen = read(&path_of(&run, "stdout"))?;
        ensure!(
            seen == expected,
            "run {round} got other inputs than the test directory holds:\n{seen}wanted:\n{expected}"
        );
        let upload = upload_of(&run)?;
        ensure!(
            upload.files + upload.cached_files == n_files,
            "run {round}: {upload:?} does not add up to the {n_files} files of the test directory"
        );
        if round > 1 {
            ensure!(
                upload.cached_files > 0,
                "run {round} took nothing from the cache: {upload:?}"
            );
            ensure!(
                upload.files >= IN_PLACE_ABUSES,
                "run {round} sent {} files, but the run before wrote into, truncated or chmodded \
                 {IN_PLACE_ABUSES} of them: {upload:?}",
                upload.files
            );
        }
    }
    // The last run broke four blobs; a run that only looks replaces them, and then every blob
    // of the cache is intact.
    let clean = ctx.test_dir("cache-abuse-clean", LISTING, &inputs)?;
    let run = completed(&ctx.run(&clean, machine, &[])?)?;
    let seen = read(&path_of(&run, "stdout"))?;
    ensure!(
        seen == expected,
        "a run after the abuse got other inputs:\n{seen}wanted:\n{expected}"
    );
    intact_blobs(&cache_dir(ctx, 0))?;
    Ok(())
}

/// [`LISTING`]'s output for `files`, computed here.
fn listing(files: &[TreeFile]) -> String {
    files
        .iter()
        .filter(|file| file.rel != "run.sh")
        .map(|file| format!("{} {:o} {}\n", file.sha256, file.mode, file.rel))
        .collect()
}

// -- 2 ---------------------------------------------------------------------------------------

fn one_changed_file(ctx: &Ctx<'_>) -> Result<()> {
    prime_cache(ctx, 1)?;
    let idx = 1;
    let machine = ctx.machine(idx);
    let mut contents = random_files("small/", 20, |i| 1_000 + 97 * i)?;
    contents.push(("big.bin".to_owned(), random_bytes(200 * 1024)?));
    let dir = ctx.test_dir("cache-one-change", "echo ran\n", &as_inputs(&contents))?;
    completed(&ctx.run(&dir, machine, &[])?)?;

    let changed = random_bytes(150_000)?;
    write_file(&dir.join("big.bin"), &changed, 0o644)?;
    let files = tree_files(&dir)?;
    let n_files = files.len() as u64;
    let total: u64 = files.iter().map(|file| file.size).sum();
    let changed_len = changed.len() as u64;
    let upload = upload_of(&completed(&ctx.run(&dir, machine, &[])?)?)?;
    let wanted = Upload {
        files: 1,
        bytes: changed_len,
        cached_files: n_files - 1,
        cached_bytes: total - changed_len,
    };
    ensure!(
        upload == wanted,
        "after big.bin changed to {changed_len} bytes, the upload was {upload:?}; wanted {wanted:?}"
    );

    let upload = upload_of(&completed(&ctx.run(&dir, machine, &["--no-cache"])?)?)?;
    let wanted = Upload {
        files: n_files,
        bytes: total,
        cached_files: 0,
        cached_bytes: 0,
    };
    ensure!(
        upload == wanted,
        "--no-cache uploaded {upload:?}; wanted everything: {wanted:?}"
    );

    // `machines cache` reports what the folder holds.
    let cache = cache_dir(ctx, idx);
    let held = intact_blobs(&cache)?;
    let data = ctx
        .tf
        .call(&["machines", "cache", machine, "--json"])?
        .expect_code(0)?
        .data()?;
    ensure!(
        data["machine"] == machine
            && data["files"] == held.names.len()
            && data["bytes"] == held.bytes
            && data["enabled"] == true
            && data["max_bytes"] == DEFAULT_MAX_BYTES,
        "machines cache said {data}; {} holds {} files, {} bytes (limit {DEFAULT_MAX_BYTES})",
        cache.display(),
        held.names.len(),
        held.bytes
    );
    let path = PathBuf::from(text(&data, "/path"));
    ensure!(
        path.canonicalize().ok() == Some(cache.canonicalize()?),
        "machines cache names the folder {}, not {}",
        path.display(),
        cache.display()
    );
    Ok(())
}

// -- 3 ---------------------------------------------------------------------------------------

/// The big files of the killed upload: 256 MiB in all, so that it takes a while.
const BIG_FILES: usize = 4;
const BIG_FILE_BYTES: usize = 64 * 1024 * 1024;

/// How much of the upload must have arrived before the controller is killed.
const KILL_AFTER: u64 = 1024 * 1024;

fn killed_mid_upload(ctx: &Ctx<'_>) -> Result<()> {
    prime_cache(ctx, 2)?;
    let dir = ctx.test_dir(
        "cache-killed-upload",
        CHECK_SUMS,
        &as_inputs(&random_files("small/", 40, |i| 100 + 1_000 * i)?),
    )?;
    let outcome = (|| {
        for idx in 0..BIG_FILES {
            let path = dir.join(format!("big-{idx}.bin"));
            write_file(&path, &random_bytes(BIG_FILE_BYTES)?, 0o644)?;
        }
        write_sums(&dir)?;
        killed_then_rerun(ctx, &dir)
    })();
    // 256 MiB of tmpfs is memory.
    let _ = std::fs::remove_dir_all(&dir);
    outcome
}

fn killed_then_rerun(ctx: &Ctx<'_>, dir: &Path) -> Result<()> {
    let idx = 2;
    let machine = ctx.machine(idx);
    let runs = ctx.target.machines[idx].remote_root.join("runs");
    let files = tree_files(dir)?;
    let before = names_in(&runs);
    let mut child = spawn_run(&ctx.tf, dir, machine, &[])?;
    // The run's folder under runs/ is named by its id.
    let started = (|| -> Result<String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let new = names_in(&runs)
                .difference(&before)
                .find(|name| runs.join(name).is_dir())
                .cloned();
            if let Some(id) = new
                && bytes_under(&runs.join(&id)) >= KILL_AFTER
            {
                return Ok(id);
            }
            ensure!(
                child.try_wait()?.is_none(),
                "testfleet run ended before {KILL_AFTER} bytes of its upload arrived"
            );
            ensure!(
                Instant::now() < deadline,
                "no upload of {KILL_AFTER} bytes appeared in {} within a minute",
                runs.display()
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    })();
    // SIGKILL; a child that has already exited and been reaped gets no signal.
    let kill = child.kill();
    let killed = finish(child, Duration::from_secs(10))?;
    let id = started.with_context(|| format!("stderr of the run:\n{}", killed.stderr))?;
    kill.context("failed to kill testfleet run")?;
    let folder = runs.join(&id);
    let complete = files
        .iter()
        .filter(|file| {
            std::fs::metadata(folder.join(&file.rel)).is_ok_and(|meta| meta.len() == file.size)
        })
        .count();
    ensure!(
        complete < files.len(),
        "the upload had finished before the kill (all {} files complete in {}): nothing was \
         interrupted",
        files.len(),
        folder.display()
    );
    // The next commands reap the killed run (its owner is gone).
    ctx.wait_until(&id, Duration::from_secs(90), ended)?;

    let run = completed(&ctx.run(dir, machine, &[])?)?;
    let stdout = read(&path_of(&run, "stdout"))?;
    ensure!(stdout == SUMS_OK, "the re-run's check printed {stdout:?}");
    let upload = upload_of(&run)?;
    ensure!(
        upload.files + upload.cached_files == files.len() as u64,
        "the re-run's {upload:?} does not add up to the {} files",
        files.len()
    );
    let held = intact_blobs(&cache_dir(ctx, idx))?;
    let missing = not_cached(&files, &held.names);
    ensure!(
        missing.is_empty(),
        "after the re-run the cache lacks {missing:?}"
    );
    Ok(())
}

/// The total size of the regular files under `dir` (0 while it does not exist).
fn bytes_under(dir: &Path) -> u64 {
    regular_files(dir)
        .unwrap_or_default()
        .iter()
        .filter_map(|path| std::fs::symlink_metadata(path).ok())
        .map(|meta| meta.len())
        .sum()
}

// -- 4 ---------------------------------------------------------------------------------------

/// How long ago the blobs' last use is set: far beyond the 10 minutes eviction spares.
const AGED: Duration = Duration::from_secs(2 * 3600);

/// Controller A runs T1 detached; its script waits at a gate. Once it runs, every blob is
/// made old, and controller B (a state dir of its own, `cache_max = "1KiB"`) runs T2 in the
/// foreground: its run evicts all of A's files. Then A's script checks its files.
///
/// B reaches the machine under a remote root of its own whose `cache` is a symlink to A's:
/// a live run of another controller in the same `runs/` would make the machine busy for B.
/// Nothing reads a blob between the aging and B's eviction (a read may move the atime), which
/// is why A waits at a gate and not for a fixed time.
fn shared_eviction(ctx: &Ctx<'_>) -> Result<()> {
    with_gate(ctx, "cache-share", evict_under_a_run)
}

/// Runs `scenario` with fresh `NAME.started` and `NAME.gate` flag files, and opens the gate
/// afterwards whatever happened: A's script must not wait for a gate a failure left shut.
fn with_gate(
    ctx: &Ctx<'_>,
    name: &str,
    scenario: fn(&Ctx<'_>, &Path, &Path) -> Result<()>,
) -> Result<()> {
    let started = fresh_flag(ctx, &format!("{name}.started"))?;
    let gate = fresh_flag(ctx, &format!("{name}.gate"))?;
    let outcome = scenario(ctx, &started, &gate);
    std::fs::write(&gate, "")?;
    outcome
}

/// A's run on m1 (whose cache is primed): T1, `n_files` random files of `size` bytes and their
/// sums, checked behind the gate; started detached, returned once its script runs.
struct GatedRun {
    id: String,
    dir: PathBuf,
    files: Vec<TreeFile>,
}

fn start_gated(
    ctx: &Ctx<'_>,
    name: &str,
    (n_files, size): (usize, usize),
    started: &Path,
    gate: &Path,
) -> Result<GatedRun> {
    prime_cache(ctx, 0)?;
    let dir = ctx.test_dir(
        name,
        &gated_check(started, gate),
        &as_inputs(&random_files("data/", n_files, |_| size)?),
    )?;
    write_sums(&dir)?;
    let files = tree_files(&dir)?;
    let run = only_run(
        &ctx.run(&dir, ctx.machine(0), &["--detach"])?
            .expect_code(0)?
            .data()?,
    )?;
    let id = text(&run, "/id");
    wait_for_file(started, Duration::from_secs(60))?;
    ctx.wait_until(&id, Duration::from_secs(30), |run| {
        run["status"] == "running"
    })?;
    Ok(GatedRun { id, dir, files })
}

fn evict_under_a_run(ctx: &Ctx<'_>, started: &Path, gate: &Path) -> Result<()> {
    let machine = ctx.machine(0);
    let cache = cache_dir(ctx, 0);
    let t2 = ctx.test_dir(
        "cache-share-t2",
        CHECK_SUMS,
        &as_inputs(&random_files("data/", 12, |_| 32 * 1024)?),
    )?;
    write_sums(&t2)?;
    let t2_files = tree_files(&t2)?;
    let a = start_gated(ctx, "cache-share-t1", (12, 32 * 1024), started, gate)?;
    let missing = not_cached(&a.files, &blob_names(&cache)?);
    ensure!(
        missing.is_empty(),
        "A's upload did not add {missing:?} to the cache"
    );
    let aged = age_blobs(&cache)?;

    let b = controller_b(ctx, machine, &cache)?;
    let b_run = completed(&b.call(&run_args(&t2, machine, &[])?)?)?;
    let b_stdout = read(&path_of(&b_run, "stdout"))?;
    ensure!(b_stdout == SUMS_OK, "B's check printed {b_stdout:?}");
    let held = blob_names(&cache)?;
    let kept: Vec<&str> = a
        .files
        .iter()
        .filter(|file| held.contains(&file.blob()))
        .map(|file| file.rel.as_str())
        .collect();
    ensure!(
        kept.is_empty(),
        "B's run (cache_max 1KiB) left A's files in the cache, {aged} blobs aged 2 h: {kept:?}"
    );
    let lost = not_cached(&t2_files, &held);
    ensure!(
        lost.is_empty(),
        "B's eviction removed files its own run had just used: {lost:?}"
    );
    let a_now = status_with(&ctx.tf, &a.id)?;
    ensure!(
        a_now["status"] == "running",
        "A's run did not run any more while B evicted: {a_now}"
    );

    evicted_yet_checked(ctx, &a, gate, &cache)
}

/// Opens `gate` for A's run and checks that it completed and its check passed although its
/// cached files were evicted while it ran; then that A's re-run sends T1 again, and that the
/// cache holds only intact blobs.
fn evicted_yet_checked(ctx: &Ctx<'_>, a: &GatedRun, gate: &Path, cache: &Path) -> Result<()> {
    std::fs::write(gate, "")?;
    let a_done = ctx.wait_until(&a.id, Duration::from_secs(60), ended)?;
    ensure!(
        a_done["status"] == "completed" && a_done["exit_code"] == 0,
        "A's run, whose cached files were evicted while it ran, did not complete: {a_done}"
    );
    let a_stdout = read(&path_of(&a_done, "stdout"))?;
    ensure!(a_stdout == SUMS_OK, "A's check printed {a_stdout:?}");
    let again = completed(&ctx.run(&a.dir, ctx.machine(0), &[])?)?;
    let upload = upload_of(&again)?;
    let n_files = a.files.len() as u64;
    ensure!(
        upload.files == n_files && upload.cached_files == 0,
        "A's re-run of the evicted T1 ({n_files} files) uploaded {upload:?}"
    );
    intact_blobs(cache)?;
    Ok(())
}

/// A script that says it started (creating `started`), waits up to 2 minutes for `gate` to
/// exist, then checks its files against `sums.txt`.
fn gated_check(started: &Path, gate: &Path) -> String {
    format!(
        "echo started > '{started}'\n\
         i=0\n\
         while [ ! -e '{gate}' ]; do\n  \
           i=$((i + 1)); [ $i -lt 1200 ] || {{ echo 'the gate never opened' >&2; exit 3; }}\n  \
           sleep 0.1\n\
         done\n{CHECK_SUMS}",
        started = started.display(),
        gate = gate.display(),
    )
}

fn gc_under_a_run(ctx: &Ctx<'_>) -> Result<()> {
    with_gate(ctx, "cache-gc", gc_while_gated)
}

/// A runs T1 behind a gate on m1; controller C, with a store of its own and the same remote
/// root but `cache_max = 0`, runs `gc --remote` meanwhile and evicts every (aged) blob; A's
/// run still checks out, and its re-run sends T1 again.
fn gc_while_gated(ctx: &Ctx<'_>, started: &Path, gate: &Path) -> Result<()> {
    let machine = ctx.machine(0);
    let cache = cache_dir(ctx, 0);
    let a = start_gated(ctx, "cache-gc-t1", (10, 16 * 1024), started, gate)?;
    let aged = age_blobs(&cache)?;

    let fleet = ctx.target.write_fleet("fleet.cache-c.toml", |m| {
        if m.name == machine {
            m.extra.push_str("cache_max = 0\n");
        }
    })?;
    let c = Tf {
        fleet,
        state_dir: ctx.target.scratch().join("state-cache-c"),
        ..ctx.tf.clone()
    };
    let call = c.call(&["gc", "--remote", "-m", machine, "--json"])?;
    let data = call.expect_code(0)?.data()?;
    let entry = &data["remote"][0];
    ensure!(
        entry["error"].is_null() && entry["cache_files_removed"] == aged as u64,
        "C's gc --remote of {aged} aged blobs said {entry}"
    );
    let left = blob_names(&cache)?;
    ensure!(left.is_empty(), "gc --remote left {left:?}");
    let a_now = status_with(&ctx.tf, &a.id)?;
    ensure!(
        a_now["status"] == "running",
        "A's run stopped while C evicted: {a_now}"
    );

    evicted_yet_checked(ctx, &a, gate, &cache)
}

/// Controller B: a state dir of its own, and a fleet file in which `machine` has a remote root
/// of its own whose `cache` is `cache`, limited to 1 KiB.
fn controller_b(ctx: &Ctx<'_>, machine: &str, cache: &Path) -> Result<Tf> {
    let root = ctx.target.remote_root("remote-cache-b")?;
    let link = root.join("cache");
    if std::fs::symlink_metadata(&link).is_ok() {
        std::fs::remove_file(&link)?;
    }
    std::os::unix::fs::symlink(cache, &link)
        .with_context(|| format!("failed to link {} to {}", link.display(), cache.display()))?;
    let fleet = ctx.target.write_fleet("fleet.cache-b.toml", |m| {
        if m.name == machine {
            m.remote_root = root.clone();
            m.extra.push_str("cache_max = \"1KiB\"\n");
        }
    })?;
    Ok(Tf {
        fleet,
        state_dir: ctx.target.scratch().join("state-cache-b"),
        ..ctx.tf.clone()
    })
}

/// Sets the last use (atime) of every blob in `cache` [`AGED`] back; returns how many.
fn age_blobs(cache: &Path) -> Result<usize> {
    let names = blob_names(cache)?;
    let then = SystemTime::now() - AGED;
    for name in &names {
        let path = cache.join(name);
        std::fs::File::open(&path)
            .and_then(|file| file.set_times(std::fs::FileTimes::new().set_accessed(then)))
            .with_context(|| format!("failed to age {}", path.display()))?;
    }
    Ok(names.len())
}

/// A path in the work dir for a flag file, absent.
fn fresh_flag(ctx: &Ctx<'_>, name: &str) -> Result<PathBuf> {
    let path = ctx.work.join(name);
    if path.exists() {
        std::fs::remove_file(&path)?;
    }
    Ok(path)
}

fn wait_for_file(path: &Path, limit: Duration) -> Result<()> {
    let deadline = Instant::now() + limit;
    while !path.exists() {
        ensure!(
            Instant::now() < deadline,
            "{} did not appear within {limit:?}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

// -- helpers ---------------------------------------------------------------------------------

/// `upload` of a run record: what was sent, and what came from the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Upload {
    files: u64,
    bytes: u64,
    cached_files: u64,
    cached_bytes: u64,
}

fn upload_of(run: &Value) -> Result<Upload> {
    let field = |name: &str| {
        run["upload"][name]
            .as_u64()
            .with_context(|| format!("upload.{name} of the run is no number: {run}"))
    };
    Ok(Upload {
        files: field("files")?,
        bytes: field("bytes")?,
        cached_files: field("cached_files")?,
        cached_bytes: field("cached_bytes")?,
    })
}

/// The one run of a `run` call, which must have completed with exit code 0.
fn completed(call: &Call) -> Result<Value> {
    let run = only_run(&call.expect_code(0)?.data()?)?;
    ensure!(
        run["status"] == "completed" && run["exit_code"] == 0,
        "the run did not complete: {run}"
    );
    Ok(run)
}

/// Whether a run record is in a terminal status.
fn ended(run: &Value) -> bool {
    matches!(
        run["status"].as_str(),
        Some("completed" | "failed" | "timeout" | "interrupted")
    )
}

/// One file of a test directory, hashed here.
#[derive(Debug)]
struct TreeFile {
    /// Relative to the directory, `/`-separated.
    rel: String,
    sha256: String,
    /// Permission bits.
    mode: u32,
    size: u64,
}

impl TreeFile {
    /// Its name in the cache: digest and mode.
    fn blob(&self) -> String {
        format!("{}-{:o}", self.sha256, self.mode)
    }
}

/// Every regular file under `dir`, sorted bytewise by relative path (as `LC_ALL=C sort`).
fn tree_files(dir: &Path) -> Result<Vec<TreeFile>> {
    let paths = regular_files(dir)?;
    let digests = sha256_of(&paths)?;
    let mut files = paths
        .iter()
        .zip(digests)
        .map(|(path, sha256)| {
            let meta = std::fs::symlink_metadata(path)?;
            Ok(TreeFile {
                rel: path
                    .strip_prefix(dir)?
                    .to_str()
                    .context("test paths are UTF-8")?
                    .to_owned(),
                sha256,
                mode: meta.permissions().mode() & 0o7777,
                size: meta.len(),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    files.sort_by(|a, b| a.rel.cmp(&b.rel));
    Ok(files)
}

/// The regular files under `dir`, sorted (symlinks are not followed).
fn regular_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(next) = todo.pop() {
        for entry in std::fs::read_dir(&next)
            .with_context(|| format!("failed to list {}", next.display()))?
        {
            let entry = entry?;
            let kind = entry.file_type()?;
            if kind.is_dir() {
                todo.push(entry.path());
            } else if kind.is_file() {
                files.push(entry.path());
            }
        }
    }
    files.sort();
    Ok(files)
}

/// The sha256 of each file, in order, as `sha256sum` prints it.
fn sha256_of(paths: &[PathBuf]) -> Result<Vec<String>> {
    let mut digests = Vec::with_capacity(paths.len());
    for chunk in paths.chunks(256) {
        let output = Command::new("sha256sum")
            .arg("--")
            .args(chunk)
            .output()
            .context("failed to run sha256sum")?;
        ensure!(
            output.status.success(),
            "sha256sum failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let listing = String::from_utf8(output.stdout).context("sha256sum printed no text")?;
        for line in listing.lines() {
            let digest = line
                .get(..64)
                .context("a line of sha256sum without a digest")?;
            digests.push(digest.to_owned());
        }
    }
    ensure!(
        digests.len() == paths.len(),
        "sha256sum printed {} digests for {} files",
        digests.len(),
        paths.len()
    );
    Ok(digests)
}

/// Writes `sums.txt` into `dir`: a `sha256sum` line for every other file.
fn write_sums(dir: &Path) -> Result<()> {
    let sums: String = tree_files(dir)?
        .iter()
        .map(|file| format!("{}  {}\n", file.sha256, file.rel))
        .collect();
    write_file(&dir.join("sums.txt"), sums.as_bytes(), 0o644)
}

/// `count` files `{prefix}NN.bin` of random bytes, file `i` being `size(i)` bytes long.
fn random_files(
    prefix: &str,
    count: usize,
    size: impl Fn(usize) -> usize,
) -> Result<Vec<(String, Vec<u8>)>> {
    (0..count)
        .map(|i| Ok((format!("{prefix}{i:02}.bin"), random_bytes(size(i))?)))
        .collect()
}

/// `files` as [`Ctx::test_dir`] takes them, mode 0644.
fn as_inputs(files: &[(String, Vec<u8>)]) -> Vec<(&str, &[u8], u32)> {
    files
        .iter()
        .map(|(rel, contents)| (rel.as_str(), contents.as_slice(), 0o644))
        .collect()
}

/// Random bytes: contents no other scenario's cache entries share.
fn random_bytes(len: usize) -> Result<Vec<u8>> {
    use std::io::Read as _;
    let mut bytes = vec![0; len];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut random| random.read_exact(&mut bytes))
        .context("failed to read /dev/urandom")?;
    Ok(bytes)
}

/// The cache folder of machine `idx`.
/// Makes sure machine `idx` has its cache folder, by a trivial run when it has none: the first
/// run into a new cache folder leaves small files out of it, and these scenarios are about
/// what comes after.
fn prime_cache(ctx: &Ctx<'_>, idx: usize) -> Result<()> {
    if cache_dir(ctx, idx).is_dir() {
        return Ok(());
    }
    let dir = ctx.test_dir(&format!("cache-prime-{idx}"), "true\n", &[])?;
    completed(&ctx.run(&dir, ctx.machine(idx), &[])?)?;
    ensure!(
        cache_dir(ctx, idx).is_dir(),
        "a run on {} made no cache folder",
        ctx.machine(idx)
    );
    Ok(())
}

fn cache_dir(ctx: &Ctx<'_>, idx: usize) -> PathBuf {
    ctx.target.machines[idx].remote_root.join("cache")
}

/// The names in the cache folder, which must exist.
fn blob_names(cache: &Path) -> Result<BTreeSet<String>> {
    ensure!(
        cache.is_dir(),
        "there is no cache folder {}",
        cache.display()
    );
    Ok(names_in(cache))
}

/// The relative paths of the `files` whose blob is not among `names`.
fn not_cached<'a>(files: &'a [TreeFile], names: &BTreeSet<String>) -> Vec<&'a str> {
    files
        .iter()
        .filter(|file| !names.contains(&file.blob()))
        .map(|file| file.rel.as_str())
        .collect()
}

/// What a cache folder holds.
#[derive(Debug)]
struct Blobs {
    names: BTreeSet<String>,
    bytes: u64,
}

/// Checks every entry of the cache folder: a regular file named `<sha256>-<mode>` whose
/// contents have that digest, whose permission bits are that mode and whose mtime is the
/// stamp.
fn intact_blobs(cache: &Path) -> Result<Blobs> {
    let names = blob_names(cache)?;
    let mut bad = Vec::new();
    let mut to_hash = Vec::new();
    let mut bytes = 0;
    for name in &names {
        let path = cache.join(name);
        let meta = std::fs::symlink_metadata(&path)
            .with_context(|| format!("failed to stat {}", path.display()))?;
        let Some((digest, mode)) = name.split_once('-').filter(|(digest, mode)| {
            digest.len() == 64
                && digest
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
                && !mode.is_empty()
                && mode.bytes().all(|b| (b'0'..=b'7').contains(&b))
        }) else {
            bad.push(format!("{name}: not a blob name"));
            continue;
        };
        if !meta.is_file() {
            bad.push(format!(
                "{name}: not a regular file ({:?})",
                meta.file_type()
            ));
            continue;
        }
        let mode = u32::from_str_radix(mode, 8)?;
        let actual = meta.permissions().mode() & 0o7777;
        if actual != mode {
            bad.push(format!("{name}: mode {actual:o}"));
        }
        if meta.mtime() != STAMP {
            bad.push(format!(
                "{name}: mtime {}, not the stamp {STAMP}",
                meta.mtime()
            ));
        }
        bytes += meta.len();
        to_hash.push((name, digest, path));
    }
    let paths: Vec<PathBuf> = to_hash.iter().map(|(_, _, path)| path.clone()).collect();
    for ((name, digest, _), actual) in to_hash.iter().zip(sha256_of(&paths)?) {
        if actual != *digest {
            bad.push(format!("{name}: contents hash to {actual}"));
        }
    }
    if !bad.is_empty() {
        bail!(
            "{} faults among the {} entries of {}:\n  {}",
            bad.len(),
            names.len(),
            cache.display(),
            bad.iter()
                .take(20)
                .cloned()
                .collect::<Vec<_>>()
                .join("\n  ")
        );
    }
    Ok(Blobs { names, bytes })
}
