//! `testfleet machines list|add|remove|check|trust`: the fleet file, and dialing its machines.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use collect::Collect;
use serde_json::{Value, json};
use testfleet_core::ports::{HostKeyPolicy, SshConnector, SshError};
use testfleet_core::{MachineName, OsFamily};
use testfleet_ssh::RusshConnector;

use crate::cli::AddMachineArgs;
use crate::config::{Fleet, FleetMachine};
use crate::context::Context;
use crate::error::{CliError, Exit};
use crate::output::Report;

fn machine_json(machine: &FleetMachine) -> Value {
    let spec = &machine.spec;
    json!({
        "name": spec.name,
        "host": spec.ssh.host,
        "port": spec.ssh.port,
        "user": spec.ssh.user,
        "os": spec.os.as_str(),
        "labels": machine.labels,
        "remote_root": spec.remote_root,
        "timeout_ms": machine.timeout.map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX)),
        "known_hosts": spec.ssh.known_hosts,
        "identity_files": spec.ssh.identity_files,
    })
}

/// `machines list`.
///
/// # Errors
/// `FLEET_CONFIG_INVALID`.
pub fn list(ctx: &Context) -> Result<Report, CliError> {
    let fleet = ctx.fleet()?;
    let mut human = String::new();
    if fleet.machines.is_empty() {
        let _ = writeln!(human, "no machines in {}", fleet.file.display());
    }
    let address = |machine: &FleetMachine| {
        let ssh = &machine.spec.ssh;
        format!("{}@{}:{}", ssh.user, ssh.host, ssh.port)
    };
    let width = fleet
        .machines
        .iter()
        .map(|m| address(m).len())
        .max()
        .unwrap_or(0);
    for machine in &fleet.machines {
        let spec = &machine.spec;
        let line = format!(
            "{:<16} {:<width$}  {:<8} {}",
            spec.name.as_str(),
            address(machine),
            spec.os.as_str(),
            machine.labels.join(",")
        );
        let _ = writeln!(human, "{}", line.trim_end());
    }
    let machines: Vec<Value> = fleet.machines.iter().map(machine_json).collect();
    Ok(Report::new(json!({ "machines": machines }), human))
}

/// `machines add NAME [--host H] [--port P] [--user U] [--os OS] [-l LABEL]...`: edits the
/// fleet file in place (comments and layout kept), creating it if needed.
///
/// # Errors
/// `INVALID_ARGUMENT` (bad name, machine already present); `FLEET_CONFIG_INVALID`.
pub fn add(ctx: &Context, args: &AddMachineArgs) -> Result<Report, CliError> {
    let name =
        MachineName::parse(&args.name).map_err(|error| CliError::invalid(error.to_string()))?;
    let path = ctx.fleet_path()?;
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(error) => return Err(CliError::io("read", &path, error)),
    };
    // Parse first, so that a broken file is reported with its position rather than edited.
    Fleet::parse(&text, &path, &ctx.env, None)?;
    let mut document: toml_edit::DocumentMut = text
        .parse()
        .map_err(|error| CliError::Internal(format!("cannot edit {}: {error}", path.display())))?;
    let machines = document
        .entry("machines")
        .or_insert_with(|| {
            let mut table = toml_edit::Table::new();
            table.set_implicit(true);
            toml_edit::Item::Table(table)
        })
        .as_table_mut()
        .ok_or_else(|| {
            CliError::invalid(format!("`machines` in {} is not a table", path.display()))
        })?;
    if machines.contains_key(name.as_str()) {
        return Err(CliError::invalid(format!(
            "machine {name} is already in {}; remove it first or edit the file",
            path.display()
        )));
    }
    let mut table = toml_edit::Table::new();
    if let Some(host) = &args.host {
        table.insert("host", toml_edit::value(host.as_str()));
    }
    if let Some(port) = args.port {
        table.insert("port", toml_edit::value(i64::from(port)));
    }
    if let Some(user) = &args.user {
        table.insert("user", toml_edit::value(user.as_str()));
    }
    if let Some(os) = &args.os {
        table.insert("os", toml_edit::value(os.as_str()));
    }
    if !args.labels.is_empty() {
        let labels: toml_edit::Array = args.labels.iter().map(String::as_str).collect();
        table.insert("labels", toml_edit::value(labels));
    }
    machines.insert(name.as_str(), toml_edit::Item::Table(table));
    let new_text = document.to_string();
    Fleet::parse(&new_text, &path, &ctx.env, None)?;
    write_fleet(&path, &new_text)?;
    Ok(Report::new(
        json!({ "machine": name, "fleet": path }),
        format!(
            "added {name} to {}; check it with `testfleet machines check {name}`\n",
            path.display()
        ),
    ))
}

/// `machines remove NAME`.
///
/// # Errors
/// `UNKNOWN_MACHINE`; `FLEET_CONFIG_INVALID`.
pub fn remove(ctx: &Context, name: &str) -> Result<Report, CliError> {
    let fleet = ctx.fleet()?;
    fleet.machine(name)?;
    let text = std::fs::read_to_string(&fleet.file)
        .map_err(|error| CliError::io("read", &fleet.file, error))?;
    let mut document: toml_edit::DocumentMut = text.parse().map_err(|error| {
        CliError::Internal(format!("cannot edit {}: {error}", fleet.file.display()))
    })?;
    if let Some(machines) = document
        .get_mut("machines")
        .and_then(toml_edit::Item::as_table_like_mut)
    {
        machines.remove(name);
    }
    write_fleet(&fleet.file, &document.to_string())?;
    Ok(Report::new(
        json!({ "machine": name, "fleet": fleet.file }),
        format!("removed {name} from {}\n", fleet.file.display()),
    ))
}

fn write_fleet(path: &std::path::Path, text: &str) -> Result<(), CliError> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|error| CliError::io("create", parent, error))?;
    }
    std::fs::write(path, text).map_err(|error| CliError::io("write", path, error))
}

/// `machines check [NAME]`: dial, verify the host key, log in, ask the OS; one entry per
/// machine, exit 1 when any failed.
///
/// # Errors
/// `FLEET_CONFIG_INVALID`, `UNKNOWN_MACHINE`.
pub async fn check(ctx: &Context, name: Option<&str>) -> Result<Report, CliError> {
    let fleet = ctx.fleet()?;
    let machines: Vec<&FleetMachine> = match name {
        Some(name) => vec![fleet.machine(name)?],
        None => fleet.machines.iter().collect(),
    };
    let connector = RusshConnector::new();
    let checks = futures::future::join_all(
        machines
            .iter()
            .map(|machine| check_one(&connector, machine)),
    )
    .await;
    let mut human = String::new();
    let mut all_ok = true;
    let mut entries = Vec::new();
    for (machine, result) in machines.iter().zip(checks) {
        let name = machine.spec.name.as_str();
        match result {
            Ok((latency, os)) => {
                let _ = writeln!(
                    human,
                    "{name:<16} ok  {}  {os}",
                    crate::output::human_duration(latency)
                );
                entries.push(json!({
                    "name": name, "ok": true, "latency_ms": u64::try_from(latency.as_millis()).unwrap_or(u64::MAX),
                    "os": os, "error": null,
                }));
            }
            Err(error) => {
                all_ok = false;
                let message = crate::remedy::describe_ssh(name, &error, false);
                let _ = writeln!(human, "{name:<16} {}  {message}", error.code());
                entries.push(json!({
                    "name": name, "ok": false, "latency_ms": null, "os": null,
                    "error": { "code": error.code(), "message": message },
                }));
            }
        }
    }
    let exit = if all_ok { Exit::Ok } else { Exit::RunFailed };
    Ok(Report::new(json!({ "machines": entries }), human).with_exit(exit))
}

async fn check_one(
    connector: &RusshConnector,
    machine: &FleetMachine,
) -> Result<(Duration, String), SshError> {
    let started = Instant::now();
    let session = connector.connect(&machine.spec.ssh).await?;
    let latency = started.elapsed();
    let command = match machine.spec.os.family() {
        OsFamily::Windows => "ver",
        OsFamily::Posix => "uname -sr",
    };
    let mut output = Collect::default();
    let exec = session.exec(command, &mut output).await;
    let _ = session.close().await;
    exec?;
    Ok((
        latency,
        String::from_utf8_lossy(&output.stdout).trim().to_owned(),
    ))
}

/// `machines trust NAME`: shows the offered host key's fingerprint and records it in
/// known_hosts (like OpenSSH's accept-new; a changed key is still refused).
///
/// # Errors
/// `FLEET_CONFIG_INVALID`, `UNKNOWN_MACHINE`; `HOST_KEY_MISMATCH`, `DIAL_FAILED`.
pub async fn trust(
    ctx: &Context,
    name: &str,
    yes: bool,
    pinned: Option<&str>,
) -> Result<Report, CliError> {
    use std::io::IsTerminal as _;
    let pinned_bytes = pinned
        .map(HostKeyPolicy::parse_fingerprint)
        .transpose()
        .map_err(|reason| CliError::invalid(format!("--fingerprint: {reason}")))?;
    let interactive = !ctx.style.json && std::io::stdin().is_terminal();
    let fleet = ctx.fleet()?;
    let machine = fleet.machine(name)?;
    let connector = RusshConnector::new();
    let target = &machine.spec.ssh;
    let fingerprint = match connector.connect(target).await {
        Ok(session) => {
            let _ = session.close().await;
            return Ok(Report::new(
                json!({ "machine": name, "added": false, "fingerprint": null, "known_hosts": target.known_hosts }),
                format!(
                    "{name}: the host key is already trusted in {}\n",
                    target.known_hosts.display()
                ),
            ));
        }
        // Login failed, so the host key was accepted: it is already trusted.
        Err(SshError::AuthFailed { .. }) => {
            return Ok(Report::new(
                json!({ "machine": name, "added": false, "fingerprint": null, "known_hosts": target.known_hosts }),
                format!(
                    "{name}: the host key is already trusted in {} (but login failed: check user and keys)\n",
                    target.known_hosts.display()
                ),
            ));
        }
        Err(SshError::HostKeyUnknown {
            fingerprint,
            host,
            port,
            ..
        }) if host == target.host && port == target.port => fingerprint,
        // Any other unknown key is a jump host's: it is trusted on its own (as a machine of
        // the fleet, or with ssh), never as this machine's.
        Err(error) => return Err(error.into()),
    };
    if let Some(pinned) = pinned
        && fingerprint.trim_end_matches('=') != pinned.trim_end_matches('=')
    {
        return Err(CliError::PinnedKeyMismatch(format!(
            "{name} ({}:{}) offered {fingerprint}, not the {pinned} you pinned; nothing was added \
             to {}",
            target.host,
            target.port,
            target.known_hosts.display()
        )));
    }
    if pinned.is_none() && !yes {
        if !interactive {
            return Err(CliError::invalid(format!(
                "{name} offers the host key {fingerprint}, and stdin is not a terminal (or --json \
                 is on), so nobody can confirm it: verify it, then pass --fingerprint \
                 {fingerprint} (or --yes)"
            )));
        }
        eprint!(
            "{name} ({}:{}) offers the host key {fingerprint}.\nAdd it to {}? [y/N] ",
            target.host,
            target.port,
            target.known_hosts.display()
        );
        let mut answer = String::new();
        let _ = std::io::stdin().read_line(&mut answer);
        if !matches!(answer.trim(), "y" | "Y" | "yes" | "YES" | "Yes") {
            return Ok(Report::new(
                json!({ "machine": name, "added": false, "fingerprint": fingerprint, "known_hosts": target.known_hosts }),
                format!("{name}: not trusted; nothing was added to {}\n", target.known_hosts.display()),
            )
            .with_exit(crate::error::Exit::RunFailed));
        }
    }
    // The key recorded is the one shown (or pinned): another key offered now is refused.
    let shown = HostKeyPolicy::parse_fingerprint(&fingerprint)
        .map_err(|reason| CliError::Internal(format!("the offered fingerprint: {reason}")))?;
    let mut accepting = target.clone();
    accepting.host_key_policy = HostKeyPolicy::AcceptPinned(pinned_bytes.unwrap_or(shown));
    match connector.connect(&accepting).await {
        Ok(session) => {
            let _ = session.close().await;
        }
        Err(SshError::AuthFailed { .. }) => {}
        Err(error) => return Err(error.into()),
    }
    Ok(Report::new(
        json!({ "machine": name, "added": true, "fingerprint": fingerprint, "known_hosts": target.known_hosts }),
        format!(
            "{name} ({}:{}) offered {fingerprint}; added to {}\n",
            target.host,
            target.port,
            target.known_hosts.display()
        ),
    ))
}

mod collect {
    //! An [`ExecOutput`] that keeps a short command's output in memory.
    use testfleet_core::ports::{ExecOutput, OutputStream};

    #[derive(Debug, Default)]
    pub struct Collect {
        pub stdout: Vec<u8>,
    }

    #[async_trait::async_trait]
    impl ExecOutput for Collect {
        async fn write(&mut self, stream: OutputStream, data: &[u8]) {
            if stream == OutputStream::Stdout && self.stdout.len() < 4096 {
                self.stdout.extend_from_slice(data);
            }
        }
    }
}
