//! Values the shell completes as they are typed, once `source <(COMPLETE=bash testfleet)` (or
//! zsh, fish, …) registered testfleet: machine names and labels from the fleet file, run ids
//! from the run store. A completer never fails: what it cannot read, it does not offer.

use std::ffi::OsStr;

use clap_complete::CompletionCandidate;
use testfleet_core::ports::RunFilter;

use crate::cli::GlobalArgs;
use crate::config::Env;
use crate::context::{Context, StoreLocation};
use crate::output::Style;

/// The context of a completion: only the environment says where the fleet file and the state
/// directory are (the flags before the word being completed are not known here).
fn context() -> Context {
    Context {
        global: GlobalArgs {
            fleet: std::env::var_os("TESTFLEET_FLEET").map(Into::into),
            state_dir: std::env::var_os("TESTFLEET_STATE_DIR").map(Into::into),
            json: false,
            verbose: 0,
        },
        env: Env::from_process(),
        style: Style::detect(true),
        read_only: std::sync::atomic::AtomicBool::new(false),
    }
}

fn starting_with(
    current: &OsStr,
    words: impl IntoIterator<Item = (String, String)>,
) -> Vec<CompletionCandidate> {
    let current = current.to_string_lossy().to_ascii_lowercase();
    words
        .into_iter()
        .filter(|(word, _)| word.to_ascii_lowercase().starts_with(&current))
        .map(|(word, help)| CompletionCandidate::new(word).help(Some(help.into())))
        .collect()
}

/// The machines of the fleet file, with their host.
pub fn machine_names(current: &OsStr) -> Vec<CompletionCandidate> {
    let Ok(fleet) = context().fleet() else {
        return Vec::new();
    };
    starting_with(
        current,
        fleet.machines.iter().map(|machine| {
            (
                machine.spec.name.to_string(),
                format!("{}@{}", machine.spec.ssh.user, machine.spec.ssh.host),
            )
        }),
    )
}

/// The labels of the fleet file, with how many machines have each.
pub fn labels(current: &OsStr) -> Vec<CompletionCandidate> {
    let Ok(fleet) = context().fleet() else {
        return Vec::new();
    };
    let mut counts = std::collections::BTreeMap::<String, usize>::new();
    for machine in &fleet.machines {
        for label in &machine.labels {
            *counts.entry(label.clone()).or_default() += 1;
        }
    }
    starting_with(
        current,
        counts
            .into_iter()
            .map(|(label, n)| (label, crate::output::counted(n, "machine", "machines"))),
    )
}

/// `last`, then the newest 30 runs of the store, with machine and status. An SQLite store
/// that does not exist yet is not created.
pub fn run_ids(current: &OsStr) -> Vec<CompletionCandidate> {
    let ctx = context();
    let Ok(choice) = ctx.store_choice() else {
        return Vec::new();
    };
    if let StoreLocation::Sqlite(path) = &choice.location
        && !path.exists()
    {
        return Vec::new();
    }
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return Vec::new();
    };
    let runs = runtime.block_on(async {
        let store = ctx.open_store().await.ok()?;
        store
            .list(&RunFilter {
                limit: Some(30),
                ..RunFilter::default()
            })
            .await
            .ok()
    });
    let mut words = vec![("last".to_owned(), "the newest run".to_owned())];
    words.extend(runs.unwrap_or_default().into_iter().map(|run| {
        (
            run.id.to_string(),
            format!("{} {} {}", run.machine, run.status, run.created_at),
        )
    }));
    starting_with(current, words)
}
