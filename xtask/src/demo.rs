//! `cargo xtask demo`: the main job on a fresh machine with nothing to configure. Starts the
//! built-in SSH server, writes a temporary fleet file, and dispatches `examples/hello` and
//! `examples/artifacts` with the real command line, then `examples/junit` to two servers at
//! once, whose JUnit report becomes the runs' test summary and an HTML report.

use std::path::Path;

use anyhow::{Context as _, Result, bail};

use crate::targets::Target;
use crate::tf::Tf;

pub fn run(bin: &Path) -> Result<()> {
    let runtime = tokio::runtime::Runtime::new().context("failed to start a tokio runtime")?;
    let target = Target::testkit(&runtime, 2)?;
    // The first server is `demo`; both carry the label `junit`.
    let fleet = target.write_fleet("fleet.toml", |machine| {
        if machine.name == "m1" {
            machine.name = "demo".into();
            machine.labels = vec!["demo".into(), "junit".into()];
        } else {
            machine.name = "demo-2".into();
            machine.labels = vec!["junit".into()];
        }
    })?;
    // The state dir outlives the demo so that its logs and artifacts can be looked at.
    let state_dir = crate::root().join("target").join("testfleet-demo");
    if state_dir.exists() {
        std::fs::remove_dir_all(&state_dir)
            .with_context(|| format!("failed to clear {}", state_dir.display()))?;
    }
    let tf = Tf {
        bin: bin.to_path_buf(),
        fleet: fleet.clone(),
        state_dir: state_dir.clone(),
    };
    let examples = crate::root().join("examples");

    println!(
        "testfleet demo: in-process SSH servers on 127.0.0.1:{} and 127.0.0.1:{}",
        target.machines[0].port, target.machines[1].port
    );
    println!(
        "fleet file: {}\n{}",
        fleet.display(),
        std::fs::read_to_string(&fleet)?
    );
    for example in ["hello", "artifacts"] {
        let dir = examples.join(example);
        let dir_text = dir.to_str().context("the examples path is UTF-8")?;
        println!("$ testfleet run {dir_text} -m demo");
        let status = tf.command(&["run", dir_text, "-m", "demo"]).status()?;
        println!();
        if !status.success() {
            bail!("testfleet run {dir_text} failed ({status})");
        }
    }
    // A test suite that writes JUnit XML, on both machines at once: the summary lines say
    // how many cases passed, failed and were skipped, and which failed; --report writes the
    // test × machine page. Its script exits 1 (a case fails, as in a real suite).
    let junit = examples.join("junit");
    let junit_text = junit.to_str().context("the examples path is UTF-8")?;
    let report = state_dir.join("junit-report.html");
    let report_text = report.to_str().context("the state path is UTF-8")?;
    println!("$ testfleet run {junit_text} -l junit --report {report_text}");
    let status = tf
        .command(&["run", junit_text, "-l", "junit", "--report", report_text])
        .status()?;
    println!();
    if status.code() != Some(1) || !report.is_file() {
        bail!(
            "testfleet run {junit_text} should fail one case on both machines and write {report_text} ({status})"
        );
    }
    println!("$ testfleet report --label junit");
    tf.command(&["report", "--label", "junit"]).status()?;
    println!("\nHTML report of the junit runs: {}\n", report.display());

    println!("$ testfleet list");
    tf.command(&["list"]).status()?;
    println!(
        "\nrun folders (logs and artifacts) are under {}",
        state_dir.join("runs").display()
    );
    for entry in std::fs::read_dir(state_dir.join("runs"))?.flatten() {
        for file in walk(&entry.path()) {
            println!("  {}", file.display());
        }
    }
    println!(
        "\nlook again with: {} --state-dir {} list",
        bin.display(),
        state_dir.display()
    );
    Ok(())
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        let mut entries: Vec<_> = entries.flatten().map(|e| e.path()).collect();
        entries.sort();
        for path in entries {
            if path.is_dir() {
                files.extend(walk(&path));
            } else {
                files.push(path);
            }
        }
    }
    files
}
