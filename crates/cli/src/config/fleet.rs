//! The fleet file (`docs/contract.md#fleet-file`): parsed strictly (unknown keys are errors,
//! with file, line and column), `[defaults]` overridden per machine, and each machine resolved
//! into the [`MachineSpec`] the runner needs, with `~/.ssh/config` filling what the file leaves
//! out.

use std::collections::BTreeMap;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};
use ssh2_config::{ParseRule, SshConfig};
use testfleet_core::MachineName;
use testfleet_core::TargetOs;
use testfleet_core::ports::{FileCache, HostKeyPolicy, SshTarget};
use testfleet_core::remote::WindowsShell;
use testfleet_core::runner::{LeaseSettings, MachineSpec};
use testfleet_results::ResultGlobs;

use super::paths::Env;
use crate::error::CliError;

/// Declares a table of the fleet file: its own keys, then the keys that `[defaults]` sets for
/// every machine and each machine may set for itself. serde's `flatten` does not combine with
/// `deny_unknown_fields`, so the shared keys are written once, here, and expanded into both
/// tables.
macro_rules! fleet_table {
    ($(#[$meta:meta])* struct $name:ident { $($own:tt)* }) => {
        $(#[$meta])*
        #[derive(Debug, Default, Deserialize)]
        #[serde(deny_unknown_fields)]
        struct $name {
            $($own)*
            user: Option<String>,
            #[serde(default, deserialize_with = "ssh_port")]
            port: Option<u16>,
            os: Option<String>,
            shell: Option<WindowsShell>,
            identity_file: Option<String>,
            known_hosts: Option<String>,
            remote_root: Option<String>,
            #[serde(default, deserialize_with = "duration")]
            timeout: Option<Duration>,
            #[serde(default, deserialize_with = "positive_duration")]
            keepalive: Option<Duration>,
            #[serde(default, deserialize_with = "positive_count")]
            keepalive_max: Option<u32>,
            proxy_jump: Option<String>,
            results: Option<Vec<String>>,
            cache: Option<bool>,
            #[serde(default, deserialize_with = "byte_size")]
            cache_max: Option<u64>,
        }
    };
}

fleet_table! {
    /// `[defaults]`: the shared keys only.
    struct Defaults {}
}

fleet_table! {
    /// One `[machines.NAME]` table: `host` and `labels`, then the shared keys.
    struct MachineEntry {
        #[serde(default, deserialize_with = "non_empty")]
        host: Option<String>,
        #[serde(default)]
        labels: Vec<String>,
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FleetFile {
    #[serde(default)]
    defaults: Defaults,
    #[serde(default)]
    machines: BTreeMap<MachineName, MachineEntry>,
    #[serde(default)]
    store: StoreTable,
}

/// `[store]`: which run store the controllers share, and the owners' leases.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreTable {
    /// `postgres://user@host:5432/db`; absent: SQLite in the state directory.
    pub url: Option<String>,
    /// The PostgreSQL schema (default `testfleet`), unless the URL names one.
    pub schema: Option<String>,
    /// How long an owner's lease lasts.
    #[serde(default, deserialize_with = "duration")]
    pub lease: Option<Duration>,
    /// How often an owner renews its lease.
    #[serde(default, deserialize_with = "duration")]
    pub heartbeat: Option<Duration>,
}

fn duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Duration>, D::Error> {
    let text = String::deserialize(deserializer)?;
    parse_duration(&text)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

fn positive_duration<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Duration>, D::Error> {
    match duration(deserializer)? {
        Some(zero) if zero.is_zero() => Err(serde::de::Error::custom(
            "a keepalive interval of 0 would send none; use a duration such as 5s or 15s",
        )),
        other => Ok(other),
    }
}

fn positive_count<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<u32>, D::Error> {
    match u32::deserialize(deserializer)? {
        0 => Err(serde::de::Error::custom(
            "keepalive_max must be at least 1 (keepalives missed in a row before the connection \
             counts as lost)",
        )),
        count => Ok(Some(count)),
    }
}

/// A size: a number of bytes, or text such as `10GiB`, `500 MB`, `1.5 GiB`.
fn byte_size<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Size {
        Bytes(u64),
        Text(String),
    }
    match Size::deserialize(deserializer)? {
        Size::Bytes(bytes) => Ok(Some(bytes)),
        Size::Text(text) => parse_size(&text)
            .map(Some)
            .map_err(serde::de::Error::custom),
    }
}

/// Parses a size such as `10GiB`, `500MB` or `4096` (bytes).
///
/// # Errors
/// A message naming the text and the expected form.
pub fn parse_size(text: &str) -> Result<u64, String> {
    text.trim()
        .parse::<bytesize::ByteSize>()
        .map(|size| size.as_u64())
        .map_err(|error| {
            format!("invalid size {text:?} ({error}); expected a size such as 500MiB or 10GiB")
        })
}

fn ssh_port<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<u16>, D::Error> {
    match u16::deserialize(deserializer)? {
        0 => Err(serde::de::Error::custom(
            "port 0 is not a valid SSH port; use 1 to 65535 (22 unless the machine says otherwise)",
        )),
        port => Ok(Some(port)),
    }
}

fn non_empty<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    let text = String::deserialize(deserializer)?;
    if text.trim().is_empty() {
        return Err(serde::de::Error::custom(
            "host is empty; give a host name or address, or leave `host` out to use the machine's \
             name",
        ));
    }
    Ok(Some(text))
}

/// Parses a humantime duration (`90s`, `30m`, `1h30m`) with a message that says what is wanted.
///
/// # Errors
/// A message naming the text and the expected form.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim()).map_err(|error| {
        format!(
            "invalid duration {text:?} ({error}); expected a duration such as 90s, 30m or 1h30m"
        )
    })
}

/// One machine of the fleet, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetMachine {
    pub spec: MachineSpec,
    pub labels: Vec<String>,
    /// The exec timeout of runs on this machine unless `--timeout` says otherwise.
    pub timeout: Option<Duration>,
}

/// The parsed fleet file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fleet {
    pub file: PathBuf,
    /// The machines, sorted by name.
    pub machines: Vec<FleetMachine>,
    /// The `[store]` table.
    pub store: StoreTable,
}

impl StoreTable {
    /// The owners' lease: `lease` (default 30 s) renewed every `heartbeat` (default 10 s, and
    /// never more than a third of the lease when only `lease` is given).
    ///
    /// # Errors
    /// [`CliError::FleetConfig`] for a zero duration, or a heartbeat not shorter than the lease.
    pub fn lease_settings(&self, file: &Path) -> Result<LeaseSettings, CliError> {
        let duration = self.lease.unwrap_or(LeaseSettings::DEFAULT_DURATION);
        let heartbeat = self
            .heartbeat
            .unwrap_or_else(|| LeaseSettings::DEFAULT_HEARTBEAT.min(duration / 3));
        if duration.is_zero() || heartbeat.is_zero() || heartbeat >= duration {
            return Err(fleet_error(
                file,
                None,
                format!(
                    "[store]: the heartbeat ({}) must be shorter than the lease ({}), and neither zero",
                    humantime::format_duration(heartbeat),
                    humantime::format_duration(duration)
                ),
            ));
        }
        Ok(LeaseSettings {
            duration,
            heartbeat,
        })
    }

    /// A message about the `[store] url` of `file`.
    pub fn url_error(file: &Path, message: impl std::fmt::Display) -> CliError {
        fleet_error(file, None, format!("[store] url: {message}"))
    }
}

/// The `[store]` table of the fleet file at `file`, parsed as strictly as the whole file; the
/// empty table when the file does not exist (commands that only read runs work without a
/// fleet file).
///
/// # Errors
/// [`CliError::FleetConfig`] when the file exists but cannot be read or parsed.
pub fn load_store_table(file: &Path) -> Result<StoreTable, CliError> {
    let text = match std::fs::read_to_string(file) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            return Ok(StoreTable::default());
        }
        Err(error) => {
            return Err(fleet_error(
                file,
                None,
                format!("cannot read fleet file {}: {error}", file.display()),
            ));
        }
    };
    Ok(parse_file(&text, file)?.store)
}

fn parse_file(text: &str, file: &Path) -> Result<FleetFile, CliError> {
    toml::from_str(text).map_err(|error| {
        let position = error.span().map(|span| line_column(text, span.start));
        fleet_error(file, position, error.message().trim().to_owned())
    })
}

impl Fleet {
    /// Reads and parses the fleet file at `file`, with `~/.ssh/config` from `env`.
    ///
    /// # Errors
    /// [`CliError::FleetConfig`] when the file is missing, unreadable, malformed or
    /// inconsistent, or when `~/.ssh/config` cannot be parsed.
    pub fn load(file: &Path, env: &Env) -> Result<Self, CliError> {
        let text = std::fs::read_to_string(file).map_err(|error| {
            let remedy = if error.kind() == std::io::ErrorKind::NotFound {
                "; create it (see `testfleet machines add --help`) or point --fleet / TESTFLEET_FLEET at one"
            } else {
                ""
            };
            fleet_error(file, None, format!("cannot read fleet file {}: {error}{remedy}", file.display()))
        })?;
        let ssh_config = load_ssh_config(env)?;
        Self::parse(&text, file, env, ssh_config.as_ref())
    }

    /// Parses fleet file text.
    ///
    /// # Errors
    /// [`CliError::FleetConfig`] with the line and column of the offending key or value.
    pub fn parse(
        text: &str,
        file: &Path,
        env: &Env,
        ssh_config: Option<&SshConfig>,
    ) -> Result<Self, CliError> {
        let parsed = parse_file(text, file)?;
        let mut machines = Vec::with_capacity(parsed.machines.len());
        let mut jump_specs = Vec::with_capacity(parsed.machines.len());
        for (name, entry) in parsed.machines {
            let (machine, jumps) = resolve(&name, entry, &parsed.defaults, env, ssh_config)
                .map_err(|message| fleet_error(file, None, format!("machine {name}: {message}")))?;
            machines.push(machine);
            jump_specs.push(jumps);
        }
        // Jump hosts last: a hop may name another machine of the fleet.
        let resolved: Vec<FleetMachine> = machines.clone();
        for (machine, specs) in machines.iter_mut().zip(&jump_specs) {
            let name = machine.spec.name.to_string();
            machine.spec.ssh.jumps = resolve_jumps(
                &name,
                specs,
                &machine.spec.ssh,
                &resolved,
                &jump_specs,
                env,
                ssh_config,
                0,
            )
            .map_err(|message| fleet_error(file, None, format!("machine {name}: {message}")))?;
        }
        Ok(Self {
            file: file.to_path_buf(),
            machines,
            store: parsed.store,
        })
    }

    /// The machine called `name`.
    ///
    /// # Errors
    /// [`CliError::UnknownMachine`] listing the known names.
    pub fn machine(&self, name: &str) -> Result<&FleetMachine, CliError> {
        self.machines
            .iter()
            .find(|machine| machine.spec.name.as_str() == name)
            .ok_or_else(|| CliError::UnknownMachine {
                message: format!(
                    "machine {name:?} is not in the fleet file {}; known machines: {}",
                    self.file.display(),
                    self.known_names().join(", ")
                ),
                name: name.to_owned(),
                known: self.known_names(),
            })
    }

    /// The machines named by `names` and those carrying one of `labels`, each once, in the
    /// order named (then fleet order for labels).
    ///
    /// # Errors
    /// [`CliError::UnknownMachine`] for an unknown name or a label no machine carries;
    /// [`CliError::InvalidArgument`] when neither names nor labels are given.
    pub fn select(
        &self,
        names: &[String],
        labels: &[String],
    ) -> Result<Vec<&FleetMachine>, CliError> {
        if names.is_empty() && labels.is_empty() {
            return Err(CliError::invalid(format!(
                "no machine given; name one with -m NAME or select by label with -l LABEL (machines: {})",
                self.known_names().join(", ")
            )));
        }
        let mut selected: Vec<&FleetMachine> = Vec::new();
        for name in names {
            let machine = self.machine(name)?;
            if !selected.iter().any(|m| m.spec.name == machine.spec.name) {
                selected.push(machine);
            }
        }
        for label in labels {
            let mut matched = false;
            for machine in self.machines.iter().filter(|m| m.labels.contains(label)) {
                matched = true;
                if !selected.iter().any(|m| m.spec.name == machine.spec.name) {
                    selected.push(machine);
                }
            }
            if !matched {
                let mut known: Vec<String> = self
                    .machines
                    .iter()
                    .flat_map(|m| m.labels.clone())
                    .collect();
                known.sort();
                known.dedup();
                return Err(CliError::UnknownMachine {
                    message: format!(
                        "no machine of the fleet file {} has the label {label:?}; known labels: {}",
                        self.file.display(),
                        known.join(", ")
                    ),
                    name: label.clone(),
                    known,
                });
            }
        }
        Ok(selected)
    }

    fn known_names(&self) -> Vec<String> {
        self.machines
            .iter()
            .map(|m| m.spec.name.to_string())
            .collect()
    }
}

fn fleet_error(file: &Path, position: Option<(usize, usize)>, message: String) -> CliError {
    let (line, column) = position.unzip();
    let message = match position {
        Some((line, column)) => format!(
            "invalid fleet file {}, line {line}, column {column}: {message}",
            file.display()
        ),
        None if message.starts_with("cannot read") => message,
        None => format!("invalid fleet file {}: {message}", file.display()),
    };
    CliError::FleetConfig {
        message,
        file: file.to_path_buf(),
        line,
        column,
    }
}

/// 1-based line and column (in characters) of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before.get(line_start..).map_or(0, |s| s.chars().count()) + 1;
    (line, column)
}

/// Parses `~/.ssh/config` when it exists.
/// How `~/.ssh/config` is read: unknown directives are skipped, and those ssh2-config does not
/// interpret itself are kept (`UserKnownHostsFile`, `StrictHostKeyChecking`, …) for testfleet
/// to read.
const SSH_CONFIG_RULES: ParseRule =
    ParseRule::ALLOW_UNKNOWN_FIELDS.union(ParseRule::ALLOW_UNSUPPORTED_FIELDS);

fn load_ssh_config(env: &Env) -> Result<Option<SshConfig>, CliError> {
    let Some(path) = env.ssh_config_file() else {
        return Ok(None);
    };
    let file = match std::fs::File::open(&path) {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(CliError::io("read", path, error)),
    };
    let mut config = SshConfig::default();
    if let Some(home) = &env.home {
        config = config.home_dir(home);
    }
    config
        .parse(&mut BufReader::new(file), SSH_CONFIG_RULES)
        .map(Some)
        .map_err(|error| CliError::FleetConfig {
            message: format!("cannot parse {}: {error}", path.display()),
            file: path,
            line: None,
            column: None,
        })
}

/// Resolves one machine. Precedence: the machine's table, then `~/.ssh/config` for the host
/// (it is specific to that host), then `[defaults]`, then the built-in defaults.
fn resolve(
    name: &MachineName,
    entry: MachineEntry,
    defaults: &Defaults,
    env: &Env,
    ssh_config: Option<&SshConfig>,
) -> Result<(FleetMachine, Vec<String>), String> {
    let alias = entry.host.clone().unwrap_or_else(|| name.to_string());
    let ssh = ssh_config.map(|config| config.query(&alias));
    // `proxy_jump` of the machine, else ProxyJump of ~/.ssh/config, else [defaults]; `none`
    // (any case) means none.
    let jumps: Vec<String> = match entry
        .proxy_jump
        .clone()
        .map(|spec| split_jumps(&spec))
        .or_else(|| ssh.as_ref().and_then(|params| params.proxy_jump.clone()))
        // The defaults' chain does not apply to a machine of it (the bastion itself).
        .or_else(|| {
            defaults.proxy_jump.as_deref().map(|spec| {
                let hops = split_jumps(spec);
                match hops.iter().position(|hop| hop == name.as_str()) {
                    Some(idx) => hops[..idx].to_vec(),
                    None => hops,
                }
            })
        }) {
        Some(list) if list.iter().any(|hop| hop.eq_ignore_ascii_case("none")) => Vec::new(),
        Some(list) => list,
        None => Vec::new(),
    };
    let options = ssh.as_ref().map(SshOptions::of).unwrap_or_default();
    let host = ssh
        .as_ref()
        .and_then(|params| params.host_name.clone())
        .unwrap_or(alias);
    let port = entry
        .port
        .or_else(|| ssh.as_ref().and_then(|params| params.port))
        .or(defaults.port)
        .unwrap_or(22);
    if port == 0 {
        return Err("port 0 is not a valid SSH port".to_owned());
    }
    let user = entry
        .user
        .or_else(|| ssh.as_ref().and_then(|params| params.user.clone()))
        .or_else(|| defaults.user.clone())
        .or_else(|| env.user.clone())
        .ok_or_else(|| {
            "no user: set `user` in the machine or in [defaults] (USER is unset)".to_owned()
        })?;
    let mut identity_files: Vec<PathBuf> = entry
        .identity_file
        .or_else(|| defaults.identity_file.clone())
        .map(|path| env.expand_tilde(&path))
        .into_iter()
        .collect();
    if let Some(files) = ssh.as_ref().and_then(|params| params.identity_file.clone()) {
        for file in files {
            let file = env.expand_tilde(&file.to_string_lossy());
            if !identity_files.contains(&file) {
                identity_files.push(file);
            }
        }
    }
    let known_hosts = entry
        .known_hosts
        .map(|path| env.expand_tilde(&path))
        .or_else(|| {
            options
                .known_hosts
                .as_deref()
                .map(|path| env.expand_tilde(path))
        })
        .or_else(|| {
            defaults
                .known_hosts
                .as_deref()
                .map(|path| env.expand_tilde(path))
        })
        .unwrap_or_else(|| env.expand_tilde("~/.ssh/known_hosts"));
    let os = entry
        .os
        .or_else(|| defaults.os.clone())
        .unwrap_or_else(|| "linux".to_owned());
    if os.trim().is_empty() {
        return Err("os is empty; use linux, macos, freebsd, windows, …".to_owned());
    }
    let remote_root = entry
        .remote_root
        .or_else(|| defaults.remote_root.clone())
        .unwrap_or_else(|| MachineSpec::DEFAULT_REMOTE_ROOT.to_owned());
    let results = entry
        .results
        .or_else(|| defaults.results.clone())
        .unwrap_or_default();
    ResultGlobs::new(&results).map_err(|error| error.to_string())?;
    let cache_max = entry.cache.or(defaults.cache).unwrap_or(true).then(|| {
        entry
            .cache_max
            .or(defaults.cache_max)
            .unwrap_or(FileCache::DEFAULT_MAX_BYTES)
    });
    Ok((
        FleetMachine {
            spec: MachineSpec {
                name: name.clone(),
                os: TargetOs::new(&os),
                windows_shell: entry.shell.or(defaults.shell).unwrap_or_default(),
                remote_root,
                results,
                cache_max,
                ssh: SshTarget {
                    host,
                    port,
                    user,
                    identity_files,
                    known_hosts,
                    host_key_policy: options.host_key_policy,
                    connect_timeout: options
                        .connect_timeout
                        .unwrap_or(SshTarget::DEFAULT_CONNECT_TIMEOUT),
                    keepalive_interval: entry
                        .keepalive
                        .or(defaults.keepalive)
                        .unwrap_or(SshTarget::DEFAULT_KEEPALIVE_INTERVAL),
                    keepalive_max: entry
                        .keepalive_max
                        .or(defaults.keepalive_max)
                        .unwrap_or(SshTarget::DEFAULT_KEEPALIVE_MAX),
                    jumps: Vec::new(),
                    identities_only: options.identities_only,
                },
            },
            labels: entry.labels,
            timeout: entry.timeout.or(defaults.timeout),
        },
        jumps,
    ))
}

/// `a,b , c` → `["a", "b", "c"]`.
fn split_jumps(spec: &str) -> Vec<String> {
    spec.split(',')
        .map(str::trim)
        .filter(|hop| !hop.is_empty())
        .map(str::to_owned)
        .collect()
}

/// What testfleet takes from `~/.ssh/config` for a host besides HostName, Port, User and
/// IdentityFile.
#[derive(Debug, Default)]
struct SshOptions {
    /// `ConnectTimeout`.
    connect_timeout: Option<Duration>,
    /// The first file of `UserKnownHostsFile`.
    known_hosts: Option<String>,
    /// `IdentitiesOnly yes`.
    identities_only: bool,
    /// `StrictHostKeyChecking accept-new` is accept-new; anything else (`no` included, which
    /// testfleet never honours) is strict.
    host_key_policy: HostKeyPolicy,
}

impl SshOptions {
    fn of(params: &ssh2_config::HostParams) -> Self {
        let field = |name: &str| {
            params
                .unsupported_fields
                .iter()
                .chain(&params.ignored_fields)
                .find(|(key, _)| key.eq_ignore_ascii_case(name))
                .and_then(|(_, args)| args.first().cloned())
        };
        Self {
            connect_timeout: params.connect_timeout.filter(|timeout| !timeout.is_zero()),
            known_hosts: field("userknownhostsfile")
                .filter(|path| !path.eq_ignore_ascii_case("none")),
            identities_only: field("identitiesonly")
                .is_some_and(|value| value.eq_ignore_ascii_case("yes")),
            host_key_policy: match field("stricthostkeychecking") {
                Some(value) if value.eq_ignore_ascii_case("accept-new") => HostKeyPolicy::AcceptNew,
                _ => HostKeyPolicy::Strict,
            },
        }
    }
}

/// The jump hosts of a machine, first hop first, from its `proxy_jump` (or ProxyJump) list:
/// each is a machine of the fleet (with that machine's own jump hosts before it), or
/// `[user@]host[:port]`, looked up in `~/.ssh/config` like a machine's host. A hop has the
/// machine's known_hosts (unless the hop's own ssh config names one), the machine's identity
/// files after its own, its own connect timeout.
#[expect(
    clippy::too_many_arguments,
    reason = "the fleet being resolved, passed down one level at a time"
)]
fn resolve_jumps(
    machine_name: &str,
    specs: &[String],
    target: &SshTarget,
    machines: &[FleetMachine],
    all_specs: &[Vec<String>],
    env: &Env,
    ssh_config: Option<&SshConfig>,
    depth: usize,
) -> Result<Vec<SshTarget>, String> {
    if depth > 8 {
        return Err(format!(
            "the jump hosts of {machine_name} go round in a loop (or deeper than 8)"
        ));
    }
    let mut hops = Vec::new();
    for spec in specs {
        if let Some(idx) = machines.iter().position(|m| m.spec.name.as_str() == spec) {
            let hop_machine = &machines[idx];
            if hop_machine.spec.name.as_str() == machine_name {
                return Err(format!("{machine_name} cannot be its own jump host"));
            }
            hops.extend(resolve_jumps(
                spec,
                &all_specs[idx],
                &hop_machine.spec.ssh,
                machines,
                all_specs,
                env,
                ssh_config,
                depth + 1,
            )?);
            let mut hop = hop_machine.spec.ssh.clone();
            hop.jumps = Vec::new();
            hops.push(hop);
            continue;
        }
        let (user, rest) = match spec.split_once('@') {
            Some((user, rest)) => (Some(user.to_owned()), rest),
            None => (None, spec.as_str()),
        };
        let (alias, port) = match rest.rsplit_once(':') {
            Some((host, port)) if !host.contains(':') => (
                host.to_owned(),
                Some(
                    port.parse::<u16>()
                        .ok()
                        .filter(|p| *p != 0)
                        .ok_or_else(|| format!("jump host {spec:?}: {port:?} is not a TCP port"))?,
                ),
            ),
            _ => (
                rest.trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_owned(),
                None,
            ),
        };
        if alias.is_empty() {
            return Err(format!("jump host {spec:?} has no host"));
        }
        let params = ssh_config.map(|config| config.query(&alias));
        let options = params.as_ref().map(SshOptions::of).unwrap_or_default();
        let mut identity_files: Vec<PathBuf> = params
            .as_ref()
            .and_then(|p| p.identity_file.clone())
            .unwrap_or_default()
            .iter()
            .map(|file| env.expand_tilde(&file.to_string_lossy()))
            .collect();
        for file in &target.identity_files {
            if !identity_files.contains(file) {
                identity_files.push(file.clone());
            }
        }
        hops.push(SshTarget {
            host: params
                .as_ref()
                .and_then(|p| p.host_name.clone())
                .unwrap_or_else(|| alias.clone()),
            port: port
                .or_else(|| params.as_ref().and_then(|p| p.port))
                .unwrap_or(22),
            user: user
                .or_else(|| params.as_ref().and_then(|p| p.user.clone()))
                .or_else(|| env.user.clone())
                .ok_or_else(|| format!("jump host {spec:?}: no user (USER is unset)"))?,
            identity_files,
            known_hosts: options
                .known_hosts
                .as_deref()
                .map_or_else(|| target.known_hosts.clone(), |path| env.expand_tilde(path)),
            host_key_policy: options.host_key_policy,
            connect_timeout: options.connect_timeout.unwrap_or(target.connect_timeout),
            keepalive_interval: target.keepalive_interval,
            keepalive_max: target.keepalive_max,
            jumps: Vec::new(),
            identities_only: options.identities_only || target.identities_only,
        });
    }
    Ok(hops)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> Env {
        Env {
            home: Some("/home/me".into()),
            user: Some("me".into()),
            xdg_config_home: None,
            xdg_state_home: None,
            ..Env::default()
        }
    }

    fn parse(text: &str) -> Result<Fleet, CliError> {
        Fleet::parse(text, Path::new("/etc/fleet.toml"), &env(), None)
    }

    fn parse_with_ssh(text: &str, ssh: &str) -> Fleet {
        let config = SshConfig::default()
            .home_dir("/home/me")
            .parse(&mut ssh.as_bytes(), SSH_CONFIG_RULES)
            .expect("valid ssh config");
        Fleet::parse(text, Path::new("/etc/fleet.toml"), &env(), Some(&config)).expect("valid")
    }

    /// Checks the error of a broken fleet file: its message and position.
    fn check_error(text: &str, line: usize, column: usize, fragment: &str) {
        match parse(text) {
            Err(CliError::FleetConfig {
                message,
                line: got_line,
                column: got_column,
                ..
            }) => {
                assert_eq!(
                    (got_line, got_column),
                    (Some(line), Some(column)),
                    "{message}"
                );
                assert!(message.contains(fragment), "{message:?} lacks {fragment:?}");
                assert!(message.contains("/etc/fleet.toml"), "{message}");
            }
            other => panic!("expected a fleet error, got {other:?}"),
        }
    }

    const EXAMPLE: &str = r#"
[defaults]
user = "ci"
identity_file = "~/.ssh/id_ed25519"
known_hosts = "~/.ssh/known_hosts"
remote_root = ".testfleet"
timeout = "30m"

[machines.linux-1]
host = "10.0.0.5"
port = 2222
os = "linux"
labels = ["x86_64", "ubuntu-24.04"]
timeout = "90s"

[machines.win-1]
host = "win1.lab"
os = "Windows"
shell = "pwsh"
user = "admin"
"#;

    #[test]
    fn the_design_example_parses_with_defaults_overridden_per_machine() {
        let fleet = parse(EXAMPLE).expect("valid");
        let [linux, windows] = fleet.machines.as_slice() else {
            panic!("two machines expected");
        };
        assert_eq!(linux.spec.name.as_str(), "linux-1");
        assert_eq!(linux.spec.ssh.host, "10.0.0.5");
        assert_eq!(linux.spec.ssh.port, 2222);
        assert_eq!(linux.spec.ssh.user, "ci");
        assert_eq!(
            linux.spec.ssh.identity_files,
            vec![PathBuf::from("/home/me/.ssh/id_ed25519")]
        );
        assert_eq!(
            linux.spec.ssh.known_hosts,
            PathBuf::from("/home/me/.ssh/known_hosts")
        );
        assert_eq!(linux.timeout, Some(Duration::from_secs(90)));
        assert_eq!(linux.labels, ["x86_64", "ubuntu-24.04"]);
        assert_eq!(windows.spec.os.as_str(), "windows");
        assert_eq!(windows.spec.windows_shell, WindowsShell::Pwsh);
        assert_eq!(windows.spec.ssh.user, "admin");
        assert_eq!(windows.spec.ssh.port, 22);
        assert_eq!(windows.timeout, Some(Duration::from_secs(30 * 60)));
    }

    #[test]
    fn built_in_defaults() {
        let fleet = parse("[machines.box]\n").expect("valid");
        let machine = &fleet.machines[0];
        assert_eq!(machine.spec.ssh.host, "box");
        assert_eq!(machine.spec.ssh.port, 22);
        assert_eq!(machine.spec.ssh.user, "me");
        assert_eq!(machine.spec.remote_root, ".testfleet");
        assert_eq!(machine.spec.os.as_str(), "linux");
        assert_eq!(
            machine.spec.ssh.known_hosts,
            PathBuf::from("/home/me/.ssh/known_hosts")
        );
        assert!(machine.spec.ssh.identity_files.is_empty());
        assert_eq!(machine.timeout, None);
    }

    #[test]
    fn ssh_config_fills_what_the_fleet_leaves_out() {
        let ssh = "Host box\n  HostName 192.0.2.7\n  Port 2200\n  User deploy\n  IdentityFile ~/.ssh/box_key\n";
        let fleet = parse_with_ssh("[defaults]\nuser = \"ci\"\n[machines.box]\n", ssh);
        let machine = &fleet.machines[0];
        assert_eq!(machine.spec.ssh.host, "192.0.2.7");
        assert_eq!(machine.spec.ssh.port, 2200);
        assert_eq!(machine.spec.ssh.user, "deploy");
        assert_eq!(
            machine.spec.ssh.identity_files,
            vec![PathBuf::from("/home/me/.ssh/box_key")]
        );
        // The machine's own table wins over ~/.ssh/config.
        let fleet = parse_with_ssh("[machines.box]\nport = 22\nuser = \"root\"\n", ssh);
        assert_eq!(fleet.machines[0].spec.ssh.port, 22);
        assert_eq!(fleet.machines[0].spec.ssh.user, "root");
    }

    #[test]
    fn jump_hosts_come_from_the_fleet_or_ssh_config() {
        let hops = |fleet: &Fleet, name: &str| {
            fleet
                .machine(name)
                .expect("in the fleet")
                .spec
                .ssh
                .jumps
                .iter()
                .map(|hop| format!("{}@{}:{}", hop.user, hop.host, hop.port))
                .collect::<Vec<_>>()
        };
        // A fleet machine (its own jump hosts first), then user@host:port.
        let fleet = parse(
            "[machines.outer]\nhost = \"10.0.0.1\"\nuser = \"ops\"\n\
             [machines.inner]\nhost = \"10.0.1.1\"\nproxy_jump = \"outer\"\n\
             [machines.box]\nhost = \"10.0.2.2\"\nproxy_jump = \"inner, ci@jump.example:2222\"\n\
             [machines.direct]\nproxy_jump = \"none\"\n",
        )
        .expect("valid");
        assert_eq!(
            hops(&fleet, "box"),
            ["ops@10.0.0.1:22", "me@10.0.1.1:22", "ci@jump.example:2222"]
        );
        assert!(hops(&fleet, "direct").is_empty());
        // A chain of [defaults]: every machine goes through it, but the bastion itself.
        let fleet = parse(
            "[defaults]\nproxy_jump = \"bastion\"\n[machines.bastion]\nhost = \"b\"\n[machines.box]\n",
        )
        .expect("valid");
        assert!(hops(&fleet, "bastion").is_empty());
        assert_eq!(hops(&fleet, "box"), ["me@b:22"]);
        assert!(
            parse("[machines.a]\nproxy_jump = \"a\"\n").is_err(),
            "its own jump host"
        );
        assert!(
            parse("[machines.a]\nproxy_jump = \"h:0\"\n").is_err(),
            "port 0"
        );

        // ~/.ssh/config: ProxyJump (the hop looked up there too), UserKnownHostsFile,
        // ConnectTimeout, IdentitiesOnly, StrictHostKeyChecking accept-new (never no).
        let ssh = "Host box\n  HostName 192.0.2.7\n  ProxyJump bast\n  UserKnownHostsFile ~/.ssh/lab_hosts\n  \
                   ConnectTimeout 4\n  IdentitiesOnly yes\n  StrictHostKeyChecking accept-new\n\
                   Host bast\n  HostName 192.0.2.1\n  Port 2022\n  User jump\n\
                   Host other\n  StrictHostKeyChecking no\n  ProxyJump none\n";
        let fleet = parse_with_ssh("[machines.box]\n[machines.other]\n", ssh);
        let machine = fleet.machine("box").expect("in the fleet");
        assert_eq!(hops(&fleet, "box"), ["jump@192.0.2.1:2022"]);
        assert_eq!(
            machine.spec.ssh.known_hosts,
            PathBuf::from("/home/me/.ssh/lab_hosts")
        );
        assert_eq!(
            machine.spec.ssh.jumps[0].known_hosts,
            machine.spec.ssh.known_hosts
        );
        assert_eq!(machine.spec.ssh.connect_timeout, Duration::from_secs(4));
        assert!(machine.spec.ssh.identities_only);
        assert_eq!(machine.spec.ssh.host_key_policy, HostKeyPolicy::AcceptNew);
        let other = fleet.machine("other").expect("in the fleet");
        assert_eq!(
            other.spec.ssh.host_key_policy,
            HostKeyPolicy::Strict,
            "never `no`"
        );
        assert!(other.spec.ssh.jumps.is_empty());
        // The fleet's proxy_jump wins over ProxyJump.
        let fleet = parse_with_ssh("[machines.box]\nproxy_jump = \"none\"\n", ssh);
        assert!(hops(&fleet, "box").is_empty());
    }

    #[test]
    fn results_patterns_come_from_the_machine_else_the_defaults() {
        let fleet = parse(
            "[defaults]\nresults = [\"reports/**/*.xml\"]\n[machines.a]\n[machines.b]\nresults = [\"out/*.xml\", \"junit.xml\"]\n",
        )
        .expect("valid");
        assert_eq!(fleet.machines[0].spec.results, ["reports/**/*.xml"]);
        assert_eq!(fleet.machines[1].spec.results, ["out/*.xml", "junit.xml"]);
        let fleet = parse("[machines.a]\n").expect("valid");
        assert!(
            fleet.machines[0].spec.results.is_empty(),
            "the reader's default"
        );
        match parse("[machines.a]\nresults = [\"../secrets/*.xml\"]\n") {
            Err(CliError::FleetConfig { message, line, .. }) => {
                assert!(
                    message.contains("machine a: invalid results pattern"),
                    "{message}"
                );
                assert_eq!(line, None);
            }
            other => panic!("a pattern leaving the artifacts folder is refused: {other:?}"),
        }
        check_error("[defaults]\nresults = \"*.xml\"\n", 2, 11, "invalid type");
    }

    #[test]
    fn broken_files_name_the_line_and_column() {
        check_error("[machines.a]\nhots = \"x\"\n", 2, 1, "unknown field `hots`");
        check_error(
            "[defaults]\ntimeot = \"1m\"\n",
            2,
            1,
            "unknown field `timeot`",
        );
        check_error("[machine.a]\n", 1, 2, "unknown field `machine`");
        check_error(
            "[machines.a]\ntimeout = \"5 parsecs\"\n",
            2,
            11,
            "invalid duration",
        );
        check_error("[machines.a]\nport = 70000\n", 2, 8, "");
        check_error(
            "[machines.a]\nport = 0\n",
            2,
            8,
            "port 0 is not a valid SSH port",
        );
        check_error(
            "[defaults]\nport = 0\n",
            2,
            8,
            "port 0 is not a valid SSH port",
        );
        check_error("[machines.a]\nhost = \"\"\n", 2, 8, "host is empty");
        check_error(
            "[machines.a]\nkeepalive = \"0s\"\n",
            2,
            13,
            "keepalive interval of 0",
        );
        check_error("[machines.a]\nkeepalive_max = 0\n", 2, 17, "at least 1");
        check_error("[machines.a]\nshell = \"bash\"\n", 2, 9, "unknown variant");
        check_error("[machines.\"a b\"]\n", 1, 11, "invalid machine name");
        check_error("[machines.a\n", 1, 12, "");
    }

    #[test]
    fn selecting_machines() {
        let fleet = parse(EXAMPLE).expect("valid");
        let names = |selected: Vec<&FleetMachine>| {
            selected
                .iter()
                .map(|m| m.spec.name.to_string())
                .collect::<Vec<_>>()
        };
        let by_label = fleet.select(&[], &["x86_64".into()]).expect("known label");
        assert_eq!(names(by_label), ["linux-1"]);
        let both = fleet
            .select(&["win-1".into(), "linux-1".into()], &["x86_64".into()])
            .expect("known");
        assert_eq!(names(both), ["win-1", "linux-1"]);
        assert!(matches!(
            fleet.select(&["nope".into()], &[]),
            Err(CliError::UnknownMachine { .. })
        ));
        assert!(matches!(
            fleet.select(&[], &["arm".into()]),
            Err(CliError::UnknownMachine { .. })
        ));
        assert!(matches!(
            fleet.select(&[], &[]),
            Err(CliError::InvalidArgument { .. })
        ));
    }
}
