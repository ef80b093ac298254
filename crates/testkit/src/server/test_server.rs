//! The server's lifecycle: [`TestServer::start`] listens and accepts connections, its
//! accessors tell a test how to reach it, and dropping it stops it and what it started.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use russh::keys::ssh_key::LineEnding;
use russh::keys::{Algorithm, HashAlg, PrivateKey};
use testfleet_core::ports::{HostKeyPolicy, SshTarget};

use super::config::{Request, ServerConfig};
use super::drop_stream::DroppableStream;
use super::handler::ConnectionHandler;
use super::state::Inner;

/// A running in-process SSH server.
pub struct TestServer {
    inner: Arc<Inner>,
    addr: SocketAddr,
    host_key: PrivateKey,
    client_key: PrivateKey,
    /// Holds `home/` and `client/` (the client key and a known_hosts file).
    dir: tempfile::TempDir,
    accept_task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for TestServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestServer")
            .field("addr", &self.addr)
            .field("home", &self.inner.home)
            .finish_non_exhaustive()
    }
}

/// A fresh ed25519 key.
pub fn generate_key() -> PrivateKey {
    PrivateKey::random(&mut russh::keys::key::safe_rng(), Algorithm::Ed25519)
        .expect("ed25519 key generation cannot fail with a working RNG")
}

impl TestServer {
    /// Starts a server on `127.0.0.1:0`.
    ///
    /// # Panics
    /// When the temp folder or the listening socket cannot be created: the test cannot run.
    pub async fn start(config: ServerConfig) -> TestServer {
        let dir = tempfile::tempdir().expect("a temp dir is needed for the server's home");
        let home = dir.path().join("home");
        std::fs::create_dir(&home).expect("the home folder can be created in a fresh temp dir");
        let home = home.canonicalize().expect("the home folder exists");
        let client_dir = dir.path().join("client");
        std::fs::create_dir(&client_dir)
            .expect("the client folder can be created in a fresh temp dir");

        let host_key = config.host_key.clone().unwrap_or_else(generate_key);
        let client_key = generate_key();
        let key_path = client_dir.join("id_ed25519");
        let key_text = client_key
            .to_openssh(LineEnding::LF)
            .expect("an ed25519 key encodes");
        std::fs::write(&key_path, key_text.as_bytes()).expect("the client key can be written");
        set_private(&key_path);

        let mut authorized = config.authorized_keys.clone();
        authorized.push(client_key.public_key().clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding 127.0.0.1:0 works");
        let addr = listener
            .local_addr()
            .expect("a bound socket has an address");

        let inner = Arc::new(Inner::new(config, home, authorized));
        let russh_config = Arc::new(russh::server::Config {
            keys: vec![host_key.clone()],
            // Rejections are instant: tests try wrong keys on purpose, and OpenSSH's initial
            // "none" probe would otherwise cost a second.
            auth_rejection_time: Duration::ZERO,
            auth_rejection_time_initial: Some(Duration::ZERO),
            inactivity_timeout: None,
            window_size: 16 * 1024 * 1024,
            maximum_packet_size: 65535,
            nodelay: true,
            ..russh::server::Config::default()
        });
        let accept_task = tokio::spawn(accept_loop(listener, russh_config, Arc::clone(&inner)));
        let server = TestServer {
            inner,
            addr,
            host_key,
            client_key,
            dir,
            accept_task,
        };
        std::fs::write(
            server.known_hosts_path(),
            format!("{}\n", server.known_hosts_line()),
        )
        .expect("the known_hosts file can be written");
        server
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The login's home folder (relative SFTP paths and exec working folders resolve here).
    pub fn home(&self) -> &Path {
        &self.inner.home
    }

    pub fn host_key(&self) -> &PrivateKey {
        &self.host_key
    }

    /// `SHA256:…` of the host key, as the adapter reports it.
    pub fn host_key_fingerprint(&self) -> String {
        self.host_key
            .public_key()
            .fingerprint(HashAlg::Sha256)
            .to_string()
    }

    /// `[127.0.0.1]:PORT ssh-ed25519 AAAA…`.
    pub fn known_hosts_line(&self) -> String {
        let key = self
            .host_key
            .public_key()
            .to_openssh()
            .expect("an ed25519 key encodes");
        format!("[127.0.0.1]:{} {key}", self.port())
    }

    /// A known_hosts file holding [`TestServer::known_hosts_line`].
    pub fn known_hosts_path(&self) -> PathBuf {
        self.dir.path().join("client").join("known_hosts")
    }

    /// An unencrypted ed25519 key the server accepts.
    pub fn client_key_path(&self) -> PathBuf {
        self.dir.path().join("client").join("id_ed25519")
    }

    pub fn client_key(&self) -> &PrivateKey {
        &self.client_key
    }

    /// A folder for the test's own client-side files (it is removed with the server).
    pub fn client_dir(&self) -> PathBuf {
        self.dir.path().join("client")
    }

    /// A target that reaches this server with the client key and the known_hosts file.
    pub fn target(&self) -> SshTarget {
        SshTarget {
            host: "127.0.0.1".into(),
            port: self.port(),
            user: "tester".into(),
            identity_files: vec![self.client_key_path()],
            known_hosts: self.known_hosts_path(),
            host_key_policy: HostKeyPolicy::Strict,
            connect_timeout: Duration::from_secs(10),
            keepalive_interval: SshTarget::DEFAULT_KEEPALIVE_INTERVAL,
            keepalive_max: SshTarget::DEFAULT_KEEPALIVE_MAX,
            jumps: Vec::new(),
            identities_only: false,
        }
    }

    /// Drops every live connection abruptly (the TCP stream fails under the session), as a lost
    /// network would; the server goes on accepting new ones.
    pub fn drop_connections(&self) {
        self.inner.drop_connections();
    }

    /// Every request seen so far, in order.
    pub fn requests(&self) -> Vec<Request> {
        self.inner.requests()
    }

    /// The commands of every exec seen so far.
    pub fn exec_commands(&self) -> Vec<String> {
        self.requests()
            .into_iter()
            .filter_map(|request| match request {
                Request::Exec { command } => Some(command),
                _ => None,
            })
            .collect()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.inner.shutdown.cancel();
        self.accept_task.abort();
        self.inner.process_groups.kill_all();
    }
}

#[cfg(unix)]
fn set_private(path: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    config: Arc<russh::server::Config>,
    inner: Arc<Inner>,
) {
    loop {
        let accepted = tokio::select! {
            () = inner.shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let Ok((socket, _peer)) = accepted else {
            continue;
        };
        let _ = socket.set_nodelay(true);
        let connection = inner.connection_token();
        let handler = ConnectionHandler::new(Arc::clone(&inner), connection.clone());
        let config = Arc::clone(&config);
        tokio::spawn(async move {
            let socket = DroppableStream::new(socket, connection);
            let session = match russh::server::run_stream(config, socket, handler).await {
                Ok(session) => session,
                Err(error) => {
                    tracing::debug!(%error, "test server: handshake failed");
                    return;
                }
            };
            // Cancelling fails the socket under the session, which then ends and closes it: an
            // abrupt connection loss.
            if let Err(error) = session.await {
                tracing::debug!(%error, "test server: connection ended");
            }
        });
    }
}
