//! A private OpenSSH `sshd` on a free 127.0.0.1 port, with its own host key, client key,
//! `authorized_keys`, `known_hosts` and config in a temp dir. Used by `cargo xtask e2e` and the
//! benchmarks, never by `cargo test` (tests need nothing outside the workspace).
//!
//! The daemon is stopped by its pid when the value is dropped.

use std::fmt;
use std::io::Read as _;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Why the private sshd could not start.
#[derive(Debug)]
pub struct SshdError(String);

impl fmt::Display for SshdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SshdError {}

/// The install hint printed when `sshd` is missing.
pub const INSTALL_HINT: &str = "OpenSSH's sshd is not installed; install it with `apt-get update && apt-get install -y openssh-server` (Debian/Ubuntu)";

/// A running private sshd.
#[derive(Debug)]
pub struct PrivateSshd {
    child: Child,
    dir: tempfile::TempDir,
    port: u16,
    user: String,
}

/// Finds the sshd binary: `PATH`, then the usual sbin folders.
pub fn find_sshd() -> Option<PathBuf> {
    let from_path = std::env::var_os("PATH")
        .map(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join("sshd"))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    from_path
        .into_iter()
        .chain(["/usr/sbin/sshd", "/usr/local/sbin/sshd", "/sbin/sshd"].map(PathBuf::from))
        .find(|candidate| candidate.is_file())
}

fn run(command: &mut Command) -> Result<(), SshdError> {
    let output = command
        .output()
        .map_err(|e| SshdError(format!("failed to run {command:?}: {e}")))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(SshdError(format!(
            "{command:?} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        )))
    }
}

fn keygen(path: &Path) -> Result<(), SshdError> {
    run(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "testfleet", "-f"])
        .arg(path))
}

fn read(path: &Path) -> Result<String, SshdError> {
    std::fs::read_to_string(path)
        .map_err(|e| SshdError(format!("failed to read {}: {e}", path.display())))
}

fn write(path: &Path, contents: &str) -> Result<(), SshdError> {
    std::fs::write(path, contents)
        .map_err(|e| SshdError(format!("failed to write {}: {e}", path.display())))
}

fn free_port() -> Result<u16, SshdError> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .map_err(|e| SshdError(format!("failed to find a free port: {e}")))?;
    listener
        .local_addr()
        .map(|addr| addr.port())
        .map_err(|e| SshdError(e.to_string()))
}

impl PrivateSshd {
    /// Starts sshd for the current user and waits until it accepts connections.
    ///
    /// # Errors
    /// [`SshdError`] with [`INSTALL_HINT`] when sshd is missing; when a key cannot be made or
    /// the daemon exits or does not listen within 10 s (its stderr is in the message).
    pub fn start() -> Result<Self, SshdError> {
        Self::start_for(current_user()?, false)
    }

    /// Like [`Self::start`], but the login is an account that file permissions apply to, as on
    /// a real machine: the current user when it is not root; as root, the dedicated account
    /// [`UNPRIVILEGED_USER`], created on first use (`useradd`, password field `*` so that
    /// sshd does not count it as locked) and kept for later runs.
    ///
    /// # Errors
    /// As [`Self::start`]; also when the account cannot be created.
    pub fn start_unprivileged() -> Result<Self, SshdError> {
        Self::start_unprivileged_with(false)
    }

    /// [`Self::start_unprivileged`], with `LogLevel DEBUG1` written to [`Self::log_path`]
    /// when `debug_log` (where sshd says which `direct-tcpip` channels it opened).
    ///
    /// # Errors
    /// As [`Self::start_unprivileged`].
    pub fn start_unprivileged_with(debug_log: bool) -> Result<Self, SshdError> {
        let user = current_user()?;
        if user != "root" {
            return Self::start_for(user, debug_log);
        }
        ensure_account(UNPRIVILEGED_USER)?;
        Self::start_for(UNPRIVILEGED_USER.to_owned(), debug_log)
    }

    /// The log of a daemon started with `debug_log`.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("sshd.log")
    }

    /// Stops the daemon (by its own pid); it accepts nothing from then on.
    pub fn stop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }

    fn start_for(user: String, debug_log: bool) -> Result<Self, SshdError> {
        let sshd = find_sshd().ok_or_else(|| SshdError(INSTALL_HINT.to_owned()))?;
        let dir = tempfile::Builder::new()
            .prefix("tf-sshd")
            .tempdir()
            .map_err(|e| SshdError(format!("failed to create a temp dir: {e}")))?;
        let path = |name: &str| dir.path().join(name);
        keygen(&path("host_key"))?;
        keygen(&path("client_key"))?;
        write(&path("authorized_keys"), &read(&path("client_key.pub"))?)?;
        // sshd reads authorized_keys as the login user; the private keys stay 0600.
        for (name, mode) in [("", 0o755), ("authorized_keys", 0o644)] {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(path(name), std::fs::Permissions::from_mode(mode))
                .map_err(|e| SshdError(format!("failed to chmod {}: {e}", path(name).display())))?;
        }
        // sshd insists on its privilege-separation directory even when it is not used.
        std::fs::create_dir_all("/run/sshd").ok();

        let mut last_error = String::new();
        for _attempt in 0..3 {
            let port = free_port()?;
            let host_key_pub = read(&path("host_key.pub"))?;
            let key = host_key_pub
                .split_whitespace()
                .take(2)
                .collect::<Vec<_>>()
                .join(" ");
            write(&path("known_hosts"), &format!("[127.0.0.1]:{port} {key}\n"))?;
            write(
                &path("sshd_config"),
                &format!(
                    "Port {port}\nListenAddress 127.0.0.1\nHostKey {host_key}\nPidFile none\n\
                     AuthorizedKeysFile {authorized}\nPasswordAuthentication no\n\
                     KbdInteractiveAuthentication no\nPubkeyAuthentication yes\nUsePAM no\n\
                     PermitRootLogin prohibit-password\nStrictModes no\nAllowUsers {user}\n\
                     Subsystem sftp internal-sftp\nMaxStartups 200\nMaxSessions 200\nLogLevel {level}\n\
                     AllowTcpForwarding yes\n",
                    level = if debug_log { "DEBUG1" } else { "ERROR" },
                    host_key = path("host_key").display(),
                    authorized = path("authorized_keys").display(),
                ),
            )?;
            let mut command = Command::new(&sshd);
            command.arg("-D");
            if debug_log {
                // A file, not the pipe: nobody drains the pipe once the daemon is up.
                command.arg("-E").arg(path("sshd.log"));
            } else {
                command.arg("-e");
            }
            let mut child = command
                .arg("-f")
                .arg(path("sshd_config"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .map_err(|e| SshdError(format!("failed to start {}: {e}", sshd.display())))?;
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if let Ok(Some(status)) = child.try_wait() {
                    let mut stderr = String::new();
                    if let Some(mut pipe) = child.stderr.take() {
                        pipe.read_to_string(&mut stderr).ok();
                    }
                    last_error = format!("sshd exited ({status}): {stderr}");
                    break;
                }
                let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
                if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                    return Ok(Self {
                        child,
                        dir,
                        port,
                        user,
                    });
                }
                if Instant::now() > deadline {
                    child.kill().ok();
                    child.wait().ok();
                    last_error = "sshd did not listen within 10 s".to_owned();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Err(SshdError(format!(
            "failed to start a private sshd: {last_error}"
        )))
    }

    pub fn host(&self) -> &str {
        "127.0.0.1"
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn user(&self) -> &str {
        &self.user
    }

    /// The numeric id of the login user, for telling its processes in the process table.
    ///
    /// # Errors
    /// When `id -u` cannot tell.
    pub fn uid(&self) -> Result<u32, SshdError> {
        let output = Command::new("id")
            .arg("-u")
            .arg(&self.user)
            .output()
            .map_err(|e| SshdError(format!("failed to run id -u: {e}")))?;
        String::from_utf8_lossy(&output.stdout)
            .trim()
            .parse()
            .map_err(|_| SshdError(format!("id -u {} printed no number", self.user)))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn client_key_path(&self) -> PathBuf {
        self.dir.path().join("client_key")
    }

    pub fn known_hosts_path(&self) -> PathBuf {
        self.dir.path().join("known_hosts")
    }

    /// Options for OpenSSH's `ssh`, `sftp` and `scp` that reach this daemon non-interactively
    /// with strict host-key checking (the port is given separately: `-p` for ssh, `-P` for
    /// sftp and scp).
    pub fn client_options(&self) -> Vec<String> {
        vec![
            "-i".into(),
            self.client_key_path().display().to_string(),
            "-o".into(),
            format!("UserKnownHostsFile={}", self.known_hosts_path().display()),
            "-o".into(),
            "StrictHostKeyChecking=yes".into(),
            "-o".into(),
            "BatchMode=yes".into(),
            "-o".into(),
            "IdentitiesOnly=yes".into(),
            "-o".into(),
            "LogLevel=ERROR".into(),
        ]
    }

    /// `ssh` with [`Self::client_options`], the port and `user@127.0.0.1`; append the command.
    pub fn ssh(&self) -> Command {
        let mut command = Command::new("ssh");
        command
            .args(self.client_options())
            .arg("-p")
            .arg(self.port.to_string())
            .arg(format!("{}@127.0.0.1", self.user));
        command
    }
}

impl Drop for PrivateSshd {
    fn drop(&mut self) {
        // Stopped by its own pid, never by name.
        self.child.kill().ok();
        self.child.wait().ok();
    }
}

/// The account [`PrivateSshd::start_unprivileged`] logs in as when run by root.
pub const UNPRIVILEGED_USER: &str = "testfleet-e2e";

/// Creates `user` with a home and `/bin/sh` unless it exists, and makes sure sshd lets it in
/// with a key (`*`: no password, not locked).
fn ensure_account(user: &str) -> Result<(), SshdError> {
    let exists = Command::new("id")
        .arg("-u")
        .arg(user)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    if !exists {
        run(Command::new("useradd").args(["--create-home", "--shell", "/bin/sh", user]))?;
    }
    run(Command::new("usermod").args(["-p", "*", user]))
}

fn current_user() -> Result<String, SshdError> {
    let output = Command::new("id")
        .arg("-un")
        .output()
        .map_err(|e| SshdError(format!("failed to run id -un: {e}")))?;
    let user = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    if user.is_empty() {
        return Err(SshdError(
            "could not tell the current user (id -un printed nothing)".into(),
        ));
    }
    Ok(user)
}
