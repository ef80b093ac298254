//! `cargo xtask demo`: the main job on a fresh machine with nothing to configure. Starts the
//! built-in SSH server, writes a temporary fleet file, and dispatches `examples/hello` and
//! `examples/artifacts` with the real command line.

use std::path::Path;

use anyhow::{Context as _, Result, bail};

use crate::targets::Target;
use crate::tf::Tf;

pub fn run(bin: &Path) -> Result<()> {
    let runtime = tokio::runtime::Runtime::new().context("failed to start a tokio runtime")?;
    let target = Target::testkit(&runtime, 1)?;
    let fleet = target.write_fleet("fleet.toml", |machine| {
        machine.name = "demo".into();
        machine.labels = vec!["demo".into()];
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
        "testfleet demo: an in-process SSH server on 127.0.0.1:{}",
        target.machines[0].port
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
