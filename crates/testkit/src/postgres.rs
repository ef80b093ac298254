//! A private PostgreSQL cluster on a free 127.0.0.1 port: `initdb` and `postgres` on a temp
//! dir, as an unprivileged user (PostgreSQL refuses to run as root: as root the cluster runs as
//! the `postgres` system user, through `setpriv`, which execs, so the pid we hold is the
//! server's). Local and loopback logins are trusted, except for [`PASSWORD_USER`], who must give
//! its password (SCRAM).
//!
//! The server is stopped by its pid when the value is dropped. [`PrivateCluster::stop`] and
//! [`PrivateCluster::start_again`] restart it on the same data and port (to test a restart).
//!
//! A machine without PostgreSQL fails to start it with [`INSTALL_HINT`] in the message: tests
//! that need it fail, never pass silently.

use std::fmt;
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The install hint of a machine without PostgreSQL.
pub const INSTALL_HINT: &str = "PostgreSQL is not installed (no initdb found); install it with `apt-get update && apt-get install -y postgresql` (Debian/Ubuntu), or run `cargo xtask test`, which does";

/// The superuser of the cluster; it logs in without a password from 127.0.0.1.
pub const SUPERUSER: &str = "postgres";

/// A role that must log in with [`PASSWORD`] (SCRAM), for the tests of password sources.
pub const PASSWORD_USER: &str = "tf_password_user";

/// The password of [`PASSWORD_USER`].
pub const PASSWORD: &str = "pw-4f9c-not-in-any-log";

/// The unprivileged system user a cluster runs as when we are root.
const SYSTEM_USER: &str = "postgres";

/// Why the private cluster could not start.
#[derive(Debug)]
pub struct ClusterError(String);

impl fmt::Display for ClusterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ClusterError {}

/// Settings of a new cluster.
#[derive(Debug, Clone, Default)]
pub struct ClusterOptions {
    /// Extra `-c name=value` server settings.
    pub settings: Vec<(String, String)>,
    /// Serve TLS with this certificate and key (PEM files), `ssl = on`.
    pub tls: Option<(PathBuf, PathBuf)>,
}

/// A running private PostgreSQL cluster.
#[derive(Debug)]
pub struct PrivateCluster {
    bin: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
    options: ClusterOptions,
    server: Option<Child>,
}

/// The folder of `initdb` and `postgres`: the newest `/usr/lib/postgresql/N/bin`, else `PATH`.
pub fn find_bin_dir() -> Option<PathBuf> {
    let mut versioned: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .collect();
    versioned.sort();
    if let Some((_, bin)) = versioned.pop() {
        return Some(bin);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .find(|dir| dir.join("initdb").is_file() && dir.join("postgres").is_file())
    })
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// `program` as the cluster's user: itself when we are not root, else through `setpriv` as
/// the `postgres` system user (setpriv execs, so the child's pid is the program's).
fn as_cluster_user(program: &Path) -> Command {
    if is_root() {
        let mut command = Command::new("setpriv");
        command.args([
            "--reuid",
            SYSTEM_USER,
            "--regid",
            SYSTEM_USER,
            "--init-groups",
            "--reset-env",
        ]);
        command.arg(program);
        command
    } else {
        Command::new(program)
    }
}

fn run(command: &mut Command) -> Result<String, ClusterError> {
    let output = command
        .output()
        .map_err(|e| ClusterError(format!("failed to run {command:?}: {e}")))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(ClusterError(format!(
            "{command:?} failed ({}): {}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )))
    }
}

fn free_port() -> Result<u16, ClusterError> {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .map_err(|e| ClusterError(format!("no free loopback port: {e}")))
}

/// Hands `path` to the cluster's user when we are root.
fn give_to_cluster_user(path: &Path) -> Result<(), ClusterError> {
    if is_root() {
        run(Command::new("chown")
            .arg("-R")
            .arg(format!("{SYSTEM_USER}:{SYSTEM_USER}"))
            .arg(path))?;
    }
    Ok(())
}

impl PrivateCluster {
    /// `initdb` and start a cluster with default settings.
    ///
    /// # Errors
    /// With [`INSTALL_HINT`] when PostgreSQL is not installed; when `initdb` or the server fails.
    pub fn start() -> Result<Self, ClusterError> {
        Self::start_with(ClusterOptions::default())
    }

    /// `initdb` and start a cluster with `options`.
    ///
    /// # Errors
    /// As [`PrivateCluster::start`].
    pub fn start_with(options: ClusterOptions) -> Result<Self, ClusterError> {
        let bin = find_bin_dir().ok_or_else(|| ClusterError(INSTALL_HINT.to_owned()))?;
        let dir = tempfile::Builder::new()
            .prefix("testfleet-pg-")
            .tempdir()
            .map_err(|e| ClusterError(format!("no temp dir: {e}")))?;
        // The cluster's user must reach the data dir through the temp dir.
        set_mode(dir.path(), 0o755)?;
        let data = dir.path().join("data");
        let socket = dir.path().join("socket");
        for sub in [&data, &socket] {
            std::fs::create_dir(sub)
                .map_err(|e| ClusterError(format!("cannot create {}: {e}", sub.display())))?;
        }
        set_mode(&data, 0o700)?;
        if let Some((cert, key)) = &options.tls {
            for (from, name) in [(cert, "server.crt"), (key, "server.key")] {
                std::fs::copy(from, dir.path().join(name))
                    .map_err(|e| ClusterError(format!("cannot copy {}: {e}", from.display())))?;
            }
            set_mode(&dir.path().join("server.key"), 0o600)?;
        }
        give_to_cluster_user(dir.path())?;
        run(as_cluster_user(&bin.join("initdb"))
            .args([
                "-A",
                "trust",
                "-U",
                SUPERUSER,
                "-E",
                "UTF8",
                "--no-sync",
                "-D",
            ])
            .arg(&data))?;
        // The password user must give its password; everyone else is trusted.
        let hba = data.join("pg_hba.conf");
        let trusted = std::fs::read_to_string(&hba)
            .map_err(|e| ClusterError(format!("cannot read {}: {e}", hba.display())))?;
        let rules = format!(
            "host all {PASSWORD_USER} 127.0.0.1/32 scram-sha-256\nhost all {PASSWORD_USER} ::1/128 scram-sha-256\n{trusted}"
        );
        std::fs::write(&hba, rules)
            .map_err(|e| ClusterError(format!("cannot write {}: {e}", hba.display())))?;
        give_to_cluster_user(&hba)?;
        let mut cluster = Self {
            bin,
            port: free_port()?,
            dir,
            options,
            server: None,
        };
        cluster.start_again()?;
        cluster.psql(&format!(
            "CREATE ROLE {PASSWORD_USER} LOGIN PASSWORD '{PASSWORD}'; \
             GRANT ALL ON DATABASE postgres TO {PASSWORD_USER}; \
             GRANT ALL ON SCHEMA public TO {PASSWORD_USER};"
        ))?;
        Ok(cluster)
    }

    /// Starts the server (again, after [`PrivateCluster::stop`]) on the same data and port, and
    /// waits until it accepts connections.
    ///
    /// # Errors
    /// When the server exits or does not accept connections within 60 s.
    pub fn start_again(&mut self) -> Result<(), ClusterError> {
        if self.server.is_some() {
            return Ok(());
        }
        let log = std::fs::File::create(self.dir.path().join("server.log"))
            .map_err(|e| ClusterError(format!("cannot create the server log: {e}")))?;
        let log_err = log
            .try_clone()
            .map_err(|e| ClusterError(format!("cannot share the server log: {e}")))?;
        let mut command = as_cluster_user(&self.bin.join("postgres"));
        command
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .arg("-k")
            .arg(self.dir.path().join("socket"))
            .args(["-p", &self.port.to_string()])
            .args(["-c", "listen_addresses=127.0.0.1"])
            .args(["-c", "max_connections=200"]);
        if let Some(_tls) = &self.options.tls {
            let (cert, key) = (
                self.dir.path().join("server.crt"),
                self.dir.path().join("server.key"),
            );
            command
                .args(["-c", "ssl=on"])
                .arg("-c")
                .arg(format!("ssl_cert_file={}", cert.display()))
                .arg("-c")
                .arg(format!("ssl_key_file={}", key.display()));
        }
        for (name, value) in &self.options.settings {
            command.arg("-c").arg(format!("{name}={value}"));
        }
        let child = command
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .map_err(|e| ClusterError(format!("failed to start postgres: {e}")))?;
        self.server = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(child) = self.server.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.server = None;
                return Err(ClusterError(format!(
                    "postgres exited ({status}): {}",
                    self.log()
                )));
            }
            let ready = TcpStream::connect((Ipv4Addr::LOCALHOST, self.port)).is_ok()
                && self.psql("SELECT 1").is_ok();
            if ready {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(ClusterError(format!(
                    "postgres did not accept connections within 60 s: {}",
                    self.log()
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the server (fast shutdown: SIGINT to its pid) and waits for it to exit.
    pub fn stop(&mut self) {
        let Some(mut child) = self.server.take() else {
            return;
        };
        if let Ok(pid) = i32::try_from(child.id()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGINT,
            );
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if matches!(child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// The server's pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.server.as_ref().map(Child::id)
    }

    /// The TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `postgres://USER@127.0.0.1:PORT/DB`.
    pub fn url(&self, user: &str, database: &str) -> String {
        format!("postgres://{user}@127.0.0.1:{}/{database}", self.port)
    }

    /// The superuser's URL to the `postgres` database.
    pub fn superuser_url(&self) -> String {
        self.url(SUPERUSER, "postgres")
    }

    /// Runs SQL as the superuser with `psql`; its output (tuples only).
    ///
    /// # Errors
    /// When `psql` fails.
    pub fn psql(&self, sql: &str) -> Result<String, ClusterError> {
        self.psql_in("postgres", sql)
    }

    /// Runs SQL as the superuser in `database` with `psql`; its output (tuples only).
    ///
    /// # Errors
    /// When `psql` fails.
    pub fn psql_in(&self, database: &str, sql: &str) -> Result<String, ClusterError> {
        run(Command::new(self.bin.join("psql"))
            .args(["-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1"])
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                SUPERUSER,
            ])
            .args(["-d", database, "-c", sql])
            .env_remove("PGPASSWORD")
            .stdin(Stdio::null()))
    }

    /// Creates a database owned by the superuser, open to [`PASSWORD_USER`] too.
    ///
    /// # Errors
    /// When `psql` fails.
    pub fn create_database(&self, name: &str) -> Result<(), ClusterError> {
        self.psql(&format!("CREATE DATABASE \"{name}\""))?;
        self.psql(&format!(
            "GRANT ALL ON DATABASE \"{name}\" TO {PASSWORD_USER}"
        ))?;
        Ok(())
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// The cluster's own folder (data, socket, log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

fn set_mode(path: &Path, mode: u32) -> Result<(), ClusterError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| ClusterError(format!("cannot chmod {}: {e}", path.display())))
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A self-signed CA and a server certificate it signed, for `localhost` and `127.0.0.1`,
/// made with the `openssl` command; the PEM files live in a temp dir.
#[derive(Debug)]
pub struct TestCertificates {
    dir: tempfile::TempDir,
}

impl TestCertificates {
    /// Makes the CA and the server certificate.
    ///
    /// # Errors
    /// When `openssl` is missing or fails.
    pub fn new() -> Result<Self, ClusterError> {
        let dir = tempfile::tempdir().map_err(|e| ClusterError(format!("no temp dir: {e}")))?;
        let path = |name: &str| dir.path().join(name);
        let openssl =
            |args: &[&str]| run(Command::new("openssl").args(args).current_dir(dir.path()));
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=testfleet test CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
        ])?;
        openssl(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ])?;
        std::fs::write(
            path("ext.cnf"),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
        )
        .map_err(|e| ClusterError(format!("cannot write ext.cnf: {e}")))?;
        openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
            "-out",
            "server.crt",
        ])?;
        // Another CA, that signed nothing: a client trusting it must refuse the server.
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=some other CA",
            "-keyout",
            "other.key",
            "-out",
            "other-ca.crt",
        ])?;
        Ok(Self { dir })
    }

    /// The CA certificate (PEM).
    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }

    /// A CA that signed nothing here.
    pub fn other_ca(&self) -> PathBuf {
        self.dir.path().join("other-ca.crt")
    }

    /// The server's certificate and key (PEM), for [`ClusterOptions::tls`].
    pub fn server(&self) -> (PathBuf, PathBuf) {
        (
            self.dir.path().join("server.crt"),
            self.dir.path().join("server.key"),
        )
    }
}
