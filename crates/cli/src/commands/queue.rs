//! `machines status`: the queue made visible — each machine idle or busy (with which run, since
//! when) and how many runs wait for it.

use std::fmt::Write as _;

use serde_json::{Value, json};
use testfleet_core::MachineName;
use testfleet_core::queue::MachineState;

use crate::context::Context;
use crate::error::CliError;
use crate::output::Report;

/// `machines status [NAME]...`.
///
/// # Errors
/// `FLEET_CONFIG_INVALID`, `UNKNOWN_MACHINE`, `STORE_ERROR`.
pub async fn machines_status(ctx: &Context, names: &[String]) -> Result<Report, CliError> {
    let fleet = ctx.fleet()?;
    let machines: Vec<MachineName> = if names.is_empty() {
        fleet.machines.iter().map(|m| m.spec.name.clone()).collect()
    } else {
        names
            .iter()
            .map(|name| fleet.machine(name).map(|m| m.spec.name.clone()))
            .collect::<Result<_, _>>()?
    };
    let store = ctx.open_for_reading().await?;
    let states = store.machine_states(&machines).await?;
    let now = store.now().await?;
    let mut human = String::new();
    let mut rows = Vec::new();
    for state in &states {
        let waiting = state.live_waiters(now).count();
        let _ = writeln!(human, "{}", describe(state, waiting).trim_end());
        rows.push(row(state, waiting, state.live_waiters(now).next()));
    }
    if states.is_empty() {
        let _ = writeln!(human, "no machines in {}", fleet.file.display());
    }
    Ok(Report::new(json!({ "machines": rows }), human))
}

/// `linux-1  busy  01J… (running since 2026-12-01T10:00:00.000Z)  2 waiting`.
fn describe(state: &MachineState, waiting: usize) -> String {
    let held = match &state.holder {
        Some(run) => format!(
            "busy  {} ({} since {})",
            run.id,
            run.status,
            run.started_at.unwrap_or(run.created_at)
        ),
        None => "idle".to_owned(),
    };
    let waiting = match waiting {
        0 => String::new(),
        n => format!("  {n} waiting"),
    };
    format!("{:<16} {held}{waiting}", state.machine.as_str())
}

fn row(state: &MachineState, waiting: usize, next: Option<&testfleet_core::Run>) -> Value {
    let holder = state.holder.as_ref();
    json!({
        "name": state.machine,
        "state": if holder.is_some() { "busy" } else { "idle" },
        "run": holder.map(|run| run.id.clone()),
        "run_status": holder.map(|run| run.status),
        "since": holder.map(|run| run.started_at.unwrap_or(run.created_at)),
        "waiting": waiting,
        "next": next.map(|run| run.id.clone()),
    })
}
