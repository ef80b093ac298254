//! The SSH servers end-to-end runs talk to: in-process testkit servers, or a private OpenSSH
//! sshd. Either way, a set of fleet machines and a fleet file that reaches them.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use testfleet_testkit::server::{ServerConfig, TestServer};
use testfleet_testkit::sshd::PrivateSshd;

/// Which kind of server a target runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Testkit,
    Sshd,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Self::Testkit => "testkit server",
            Self::Sshd => "OpenSSH sshd",
        }
    }
}

/// One machine of a generated fleet file.
#[derive(Debug, Clone)]
pub struct Machine {
    pub name: String,
    pub port: u16,
    pub user: String,
    pub identity_file: PathBuf,
    pub known_hosts: PathBuf,
    /// Absolute remote root, so runs land in a scratch folder and not in the login's home.
    pub remote_root: PathBuf,
    pub labels: Vec<String>,
    /// More `key = value` lines for the machine's table (`keepalive = "2s"`).
    pub extra: String,
}

/// Servers and the machines that reach them. Dropping it stops the servers.
pub struct Target {
    pub machines: Vec<Machine>,
    /// Scratch space: remote roots, the fleet file, pid records.
    pub scratch: tempfile::TempDir,
    /// The uid the machines log in as.
    pub login_uid: u32,
    _testkit: Vec<TestServer>,
    sshd: Option<PrivateSshd>,
}

impl Target {
    /// `n_machines` testkit servers, one machine each.
    pub fn testkit(runtime: &tokio::runtime::Runtime, n_machines: usize) -> Result<Self> {
        let scratch = scratch_dir()?;
        let mut servers = Vec::new();
        let mut machines = Vec::new();
        for idx in 0..n_machines {
            let server = runtime.block_on(TestServer::start(ServerConfig::default()));
            machines.push(Machine {
                name: format!("m{}", idx + 1),
                port: server.port(),
                user: current_user(),
                identity_file: server.client_key_path(),
                known_hosts: server.known_hosts_path(),
                remote_root: scratch.path().join(format!("remote-m{}", idx + 1)),
                labels: vec!["e2e".into(), format!("slot{}", idx + 1)],
                extra: String::new(),
            });
            servers.push(server);
        }
        Ok(Self {
            machines,
            scratch,
            login_uid: current_uid()?,
            _testkit: servers,
            sshd: None,
        })
    }

    /// One private sshd, reached as `n_machines` machines with separate remote roots, logging in
    /// as an account that file permissions apply to ([`PrivateSshd::start_unprivileged`]).
    pub fn sshd(n_machines: usize) -> Result<Self> {
        let scratch = scratch_dir()?;
        let sshd = PrivateSshd::start_unprivileged().context("failed to start OpenSSH sshd")?;
        let mut target = Self {
            machines: Vec::new(),
            login_uid: sshd.uid().context("the login's uid")?,
            scratch,
            _testkit: Vec::new(),
            sshd: None,
        };
        // The login reaches its remote roots through the scratch dir.
        target.open_to_login(target.scratch(), 0o755)?;
        for idx in 0..n_machines {
            let name = format!("m{}", idx + 1);
            let remote_root = target.remote_root(&format!("remote-{name}"))?;
            target.machines.push(Machine {
                name,
                port: sshd.port(),
                user: sshd.user().to_owned(),
                identity_file: sshd.client_key_path(),
                known_hosts: sshd.known_hosts_path(),
                remote_root,
                labels: vec!["e2e".into(), format!("slot{}", idx + 1)],
                extra: String::new(),
            });
        }
        target.sshd = Some(sshd);
        Ok(target)
    }

    /// The login user when it is not the one running this (a dedicated account).
    pub fn dedicated_login(&self) -> Option<&str> {
        let user = self.machines.first().map(|m| m.user.as_str())?;
        (user != current_user()).then_some(user)
    }

    /// The private sshd's own pid (its sessions are its children).
    pub fn sshd_pid(&self) -> Option<u32> {
        self.sshd.as_ref().map(PrivateSshd::pid)
    }

    /// A fresh remote root `scratch/name`, owned by the login.
    pub fn remote_root(&self, name: &str) -> Result<PathBuf> {
        let path = self.scratch().join(name);
        std::fs::create_dir_all(&path)
            .with_context(|| format!("failed to create {}", path.display()))?;
        std::os::unix::fs::chown(&path, Some(self.login_uid), None)
            .with_context(|| format!("failed to hand {} to the login", path.display()))?;
        Ok(path)
    }

    /// Gives `path` the `mode` the login needs to reach or write it.
    pub fn open_to_login(&self, path: &Path, mode: u32) -> Result<()> {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .with_context(|| format!("failed to chmod {}", path.display()))
    }

    /// Writes a fleet file for these machines, with `edit` applied to each machine first.
    pub fn write_fleet(&self, name: &str, edit: impl Fn(&mut Machine)) -> Result<PathBuf> {
        let machines: Vec<Machine> = self
            .machines
            .iter()
            .map(|machine| {
                let mut machine = machine.clone();
                edit(&mut machine);
                machine
            })
            .collect();
        self.write_machines(name, &machines)
    }

    /// Writes a fleet file of exactly `machines` into the scratch dir.
    pub fn write_machines(&self, name: &str, machines: &[Machine]) -> Result<PathBuf> {
        let mut text = String::new();
        for machine in machines {
            let labels: Vec<String> = machine.labels.iter().map(|l| format!("{l:?}")).collect();
            writeln!(
                text,
                "[machines.{name}]\nhost = \"127.0.0.1\"\nport = {port}\nuser = {user:?}\nos = \"linux\"\n\
                 identity_file = {key:?}\nknown_hosts = {known:?}\nremote_root = {root:?}\nlabels = [{labels}]\n{extra}",
                name = machine.name,
                port = machine.port,
                user = machine.user,
                key = machine.identity_file.display().to_string(),
                known = machine.known_hosts.display().to_string(),
                root = machine.remote_root.display().to_string(),
                labels = labels.join(", "),
                extra = machine.extra,
            )?;
        }
        let path = self.scratch.path().join(name);
        std::fs::write(&path, text)
            .with_context(|| format!("failed to write {}", path.display()))?;
        Ok(path)
    }

    pub fn scratch(&self) -> &Path {
        self.scratch.path()
    }
}

fn scratch_dir() -> Result<tempfile::TempDir> {
    tempfile::Builder::new()
        .prefix("tf-e2e")
        .tempdir_in(scratch_base())
        .context("failed to create a scratch dir")
}

/// Where scratch data goes: tmpfs when there is one, so that the numbers measure the tools and
/// not the disk, and the remote folders of the built-in servers cost what they would on a host.
pub fn scratch_base() -> PathBuf {
    if Path::new("/dev/shm").is_dir() {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    }
}

fn current_uid() -> Result<u32> {
    let output = std::process::Command::new("id")
        .arg("-u")
        .output()
        .context("failed to run id -u")?;
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .context("id -u printed no number")
}

pub fn current_user() -> String {
    std::env::var("USER")
        .ok()
        .filter(|user| !user.is_empty())
        .or_else(|| {
            let output = std::process::Command::new("id").arg("-un").output().ok()?;
            Some(String::from_utf8_lossy(&output.stdout).trim().to_owned())
        })
        .unwrap_or_else(|| "root".to_owned())
}

/// A fresh test directory at `dir` (an old one is removed first) holding only an executable
/// `run.sh` of `#!/bin/sh` and `script`.
pub fn fresh_test_dir(dir: &Path, script: &str) -> Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    if dir.exists() {
        std::fs::remove_dir_all(dir)?;
    }
    std::fs::create_dir_all(dir)?;
    let run_sh = dir.join("run.sh");
    std::fs::write(&run_sh, format!("#!/bin/sh\n{script}"))?;
    std::fs::set_permissions(&run_sh, std::fs::Permissions::from_mode(0o755))?;
    Ok(dir.to_path_buf())
}
