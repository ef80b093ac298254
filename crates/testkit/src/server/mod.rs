//! An in-process SSH/SFTP server on 127.0.0.1 with fault injection.
//!
//! [`TestServer::start`] serves russh + russh-sftp on `127.0.0.1:0` with a temp folder as the
//! login's home: relative SFTP paths and the working folder of every exec resolve there. Exec
//! runs `sh -c COMMAND` in a new process group (so `kill -TERM -<pgid>` reaches the whole
//! tree, as under sshd). [`ServerConfig`] selects the faults. Dropping the server stops it,
//! its connections and every process it started.

mod sftp;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use russh::keys::ssh_key::LineEnding;
use russh::keys::{Algorithm, HashAlg, PrivateKey, PublicKey};
use russh::server::{Auth, ChannelOpenHandle, Msg, Session};
use russh::{Channel, ChannelId, Sig};
use std::future::Future as _;
use testfleet_core::ports::{HostKeyPolicy, SshTarget};

use tokio::io::AsyncWriteExt as _;
use tokio_util::sync::CancellationToken;

pub use sftp::{HOSTILE_FILE_NAMES, HOSTILE_LINK_NAME};

/// In which order a finished exec reports its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ExitOrder {
    /// exit-status, then EOF, then close (OpenSSH).
    #[default]
    StatusThenEof,
    /// EOF, then exit-status, then close (some other servers).
    EofThenStatus,
}

/// Misbehaviours to inject.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Faults {
    /// Reject every login.
    pub refuse_auth: bool,
    /// Drop the TCP connection once this many bytes were written over SFTP.
    pub drop_after_upload_bytes: Option<u64>,
    /// Drop the TCP connection once this many bytes were read over SFTP.
    pub drop_after_download_bytes: Option<u64>,
    /// Accept exec requests and then never answer them (no output, no exit, no close).
    pub stall_exec: bool,
    /// End exec channels with EOF and close but no exit-status (OpenSSH `ChannelTimeout`).
    pub no_exit_status: bool,
    /// Wait this long before answering each SFTP request.
    pub reply_delay: Option<Duration>,
    /// Listing a folder named `artifacts` also yields [`HOSTILE_FILE_NAMES`] and a symlink
    /// [`HOSTILE_LINK_NAME`] to `/etc`.
    pub hostile_artifacts: bool,
}

/// A scripted answer to an exec under Windows emulation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScriptedExec {
    /// The answer applies to commands containing this text (the empty text matches all).
    pub command_contains: String,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub exit_status: u32,
}

/// Emulation of a Windows host: SFTP paths look like `/C:/Users/ci/…` and exec commands are
/// recorded and answered from a script instead of run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowsEmulation {
    /// The SFTP form of the home folder, e.g. `/C:/Users/ci`.
    pub home: String,
    /// Answers, first match wins; a command matching none exits 0 silently.
    pub replies: Vec<ScriptedExec>,
}

impl Default for WindowsEmulation {
    fn default() -> Self {
        Self {
            home: "/C:/Users/ci".into(),
            replies: Vec::new(),
        }
    }
}

/// What the server accepts and how it misbehaves.
#[derive(Debug, Clone, Default)]
pub struct ServerConfig {
    /// Keys accepted for login besides the generated client key ([`TestServer::client_key_path`]).
    pub authorized_keys: Vec<PublicKey>,
    /// The host key; a fresh ed25519 key when `None`.
    pub host_key: Option<PrivateKey>,
    pub exit_order: ExitOrder,
    pub faults: Faults,
    pub windows: Option<WindowsEmulation>,
}

/// One request the server saw, for assertions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Auth {
        user: String,
        accepted: bool,
    },
    Exec {
        command: String,
    },
    Subsystem {
        name: String,
    },
    Sftp {
        op: &'static str,
        path: String,
    },
    /// A byte-count fault dropped the connection.
    ConnectionDropped,
}

/// State shared by the server's tasks.
pub(crate) struct Inner {
    pub(crate) config: ServerConfig,
    pub(crate) home: PathBuf,
    authorized: Vec<PublicKey>,
    log: Mutex<Vec<Request>>,
    /// Process groups of the execs started, killed when the server is dropped.
    process_groups: Mutex<Vec<u32>>,
    shutdown: CancellationToken,
}

impl Inner {
    pub(crate) fn log(&self, request: Request) {
        self.log
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .push(request);
    }
}

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

        let inner = Arc::new(Inner {
            config,
            home,
            authorized,
            log: Mutex::new(Vec::new()),
            process_groups: Mutex::new(Vec::new()),
            shutdown: CancellationToken::new(),
        });
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
        }
    }

    /// Every request seen so far, in order.
    pub fn requests(&self) -> Vec<Request> {
        self.inner
            .log
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .clone()
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
        let groups = std::mem::take(
            &mut *self
                .inner
                .process_groups
                .lock()
                .unwrap_or_else(|poison| poison.into_inner()),
        );
        for pgid in groups {
            // Signal the group by its id (never by name); a group already gone is fine.
            let _ = signal_group(pgid, Some(nix::sys::signal::Signal::SIGKILL));
        }
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
        let connection = inner.shutdown.child_token();
        let handler = ConnectionHandler {
            inner: Arc::clone(&inner),
            connection: connection.clone(),
            channels: HashMap::new(),
            uploaded: Arc::new(AtomicU64::new(0)),
            downloaded: Arc::new(AtomicU64::new(0)),
        };
        let config = Arc::clone(&config);
        tokio::spawn(async move {
            let socket = DroppableStream {
                inner: socket,
                cancelled: Box::pin(connection.clone().cancelled_owned()),
            };
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

/// A TCP stream that fails every read and write once its token is cancelled, so that the
/// russh session on top of it ends and drops the socket.
struct DroppableStream {
    inner: tokio::net::TcpStream,
    cancelled: std::pin::Pin<Box<tokio_util::sync::WaitForCancellationFutureOwned>>,
}

impl DroppableStream {
    fn check(&mut self, cx: &mut std::task::Context<'_>) -> std::io::Result<()> {
        match self.cancelled.as_mut().poll(cx) {
            std::task::Poll::Ready(()) => Err(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "dropped by a test fault",
            )),
            std::task::Poll::Pending => Ok(()),
        }
    }
}

impl tokio::io::AsyncRead for DroppableStream {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.check(cx)?;
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for DroppableStream {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.check(cx)?;
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        self.check(cx)?;
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// One client connection.
struct ConnectionHandler {
    inner: Arc<Inner>,
    connection: CancellationToken,
    channels: HashMap<ChannelId, Channel<Msg>>,
    uploaded: Arc<AtomicU64>,
    downloaded: Arc<AtomicU64>,
}

impl ConnectionHandler {
    fn accepts(&self, key: &PublicKey) -> bool {
        !self.inner.config.faults.refuse_auth
            && self
                .inner
                .authorized
                .iter()
                .any(|authorized| authorized.key_data() == key.key_data())
    }
}

impl russh::server::Handler for ConnectionHandler {
    type Error = russh::Error;

    async fn auth_publickey_offered(
        &mut self,
        user: &str,
        offer: russh::server::PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        if self.accepts(offer.public_key) {
            Ok(Auth::Accept)
        } else {
            self.inner.log(Request::Auth {
                user: user.to_owned(),
                accepted: false,
            });
            Ok(Auth::reject())
        }
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        key: russh::server::VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        let accepted = self.accepts(key.public_key);
        self.inner.log(Request::Auth {
            user: user.to_owned(),
            accepted,
        });
        Ok(if accepted {
            Auth::Accept
        } else {
            Auth::reject()
        })
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.channels.insert(channel.id(), channel);
        reply.accept().await;
        Ok(())
    }

    async fn exec_request(
        &mut self,
        id: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let command = String::from_utf8_lossy(data).into_owned();
        self.inner.log(Request::Exec {
            command: command.clone(),
        });
        let Some(channel) = self.channels.remove(&id) else {
            session.channel_failure(id)?;
            return Ok(());
        };
        session.channel_success(id)?;
        let inner = Arc::clone(&self.inner);
        let handle = session.handle();
        tokio::spawn(async move {
            let shutdown = inner.shutdown.clone();
            tokio::select! {
                () = shutdown.cancelled() => {}
                () = run_exec(inner, channel, handle, command) => {}
            }
        });
        Ok(())
    }

    async fn subsystem_request(
        &mut self,
        id: ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.inner.log(Request::Subsystem {
            name: name.to_owned(),
        });
        let channel = self.channels.remove(&id);
        let (Some(channel), "sftp") = (channel, name) else {
            session.channel_failure(id)?;
            return Ok(());
        };
        session.channel_success(id)?;
        let handler = sftp::SftpHandler::new(
            Arc::clone(&self.inner),
            self.connection.clone(),
            Arc::clone(&self.uploaded),
            Arc::clone(&self.downloaded),
        );
        let shutdown = self.inner.shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = shutdown.cancelled() => {}
                () = serve_sftp(channel, handler) => {}
            }
        });
        Ok(())
    }
}

/// Pumps an SFTP channel through a duplex pipe to the russh-sftp server loop, then ends the
/// channel like OpenSSH does (exit-status 0, EOF, close), which OpenSSH's `scp` relies on.
async fn serve_sftp(channel: Channel<Msg>, handler: sftp::SftpHandler) {
    let (ours, theirs) = tokio::io::duplex(512 * 1024);
    russh_sftp::server::run(theirs, handler).await;
    let (mut from_sftp, mut to_sftp) = tokio::io::split(ours);
    let (mut read_half, write_half) = channel.split();
    let inbound = async move {
        while let Some(message) = read_half.wait().await {
            match message {
                russh::ChannelMsg::Data { data } if to_sftp.write_all(&data).await.is_err() => {
                    break;
                }
                russh::ChannelMsg::Eof | russh::ChannelMsg::Close => break,
                _ => {}
            }
        }
        // The SFTP loop sees end-of-input and ends, which ends the outbound copy below.
        let _ = to_sftp.shutdown().await;
        // Keep draining so that the connection never stalls on this channel.
        while read_half.wait().await.is_some() {}
    };
    let outbound = async {
        let mut writer = write_half.make_writer();
        let _ = tokio::io::copy(&mut from_sftp, &mut writer).await;
        let _ = writer.flush().await;
        let _ = write_half.exit_status(0).await;
        let _ = write_half.eof().await;
        let _ = write_half.close().await;
    };
    let inbound = tokio::spawn(inbound);
    outbound.await;
    inbound.abort();
}

fn signal_name(signal: i32) -> Sig {
    match signal {
        1 => Sig::HUP,
        2 => Sig::INT,
        3 => Sig::QUIT,
        4 => Sig::ILL,
        6 => Sig::ABRT,
        8 => Sig::FPE,
        9 => Sig::KILL,
        10 => Sig::USR1,
        11 => Sig::SEGV,
        13 => Sig::PIPE,
        14 => Sig::ALRM,
        15 => Sig::TERM,
        other => Sig::Custom(format!("SIG{other}")),
    }
}

/// How an exec ended, to report to the client.
enum Ended {
    Status(u32),
    Signal(Sig),
}

async fn run_exec(
    inner: Arc<Inner>,
    channel: Channel<Msg>,
    handle: russh::server::Handle,
    command: String,
) {
    let id = channel.id();
    let (mut read_half, write_half) = channel.split();
    // Drain what the client sends, passing its data to the command's stdin until EOF: an
    // undrained channel stalls the connection.
    let (stdin_sender, stdin) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
    let drain = tokio::spawn(async move {
        let mut stdin_sender = Some(stdin_sender);
        while let Some(message) = read_half.wait().await {
            match message {
                russh::ChannelMsg::Data { data } => {
                    if let Some(sender) = &stdin_sender {
                        let _ = sender.send(data.to_vec());
                    }
                }
                russh::ChannelMsg::Eof | russh::ChannelMsg::Close => stdin_sender = None,
                _ => {}
            }
        }
    });
    let faults = &inner.config.faults;
    if faults.stall_exec {
        // Never answer: the client must give up on its own.
        std::future::pending::<()>().await;
    }

    let ended = if let Some(windows) = &inner.config.windows {
        let reply = windows
            .replies
            .iter()
            .find(|reply| command.contains(&reply.command_contains));
        if let Some(reply) = reply {
            let _ = write_half.make_writer().write_all(&reply.stdout).await;
            let _ = write_half
                .make_writer_ext(Some(1))
                .write_all(&reply.stderr)
                .await;
        }
        Ended::Status(reply.map_or(0, |reply| reply.exit_status))
    } else {
        run_process(&inner, &write_half, &command, stdin).await
    };

    let send_exit = async {
        if faults.no_exit_status {
            return;
        }
        match ended {
            Ended::Status(status) => {
                let _ = write_half.exit_status(status).await;
            }
            Ended::Signal(signal) => {
                let _ = handle
                    .exit_signal_request(id, signal, false, String::new(), "en".into())
                    .await;
            }
        }
    };
    match inner.config.exit_order {
        ExitOrder::StatusThenEof => {
            send_exit.await;
            let _ = write_half.eof().await;
        }
        ExitOrder::EofThenStatus => {
            let _ = write_half.eof().await;
            send_exit.await;
        }
    }
    let _ = write_half.close().await;
    drain.abort();
}

/// Sends `signal` to the process group `pgid` (`None` only probes that it exists).
fn signal_group(pgid: u32, signal: Option<nix::sys::signal::Signal>) -> nix::Result<()> {
    let pgid = i32::try_from(pgid).map_err(|_| nix::errno::Errno::EINVAL)?;
    nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pgid), signal)
}

/// Stops tracking a process group that no longer exists, so that the server's drop never
/// signals an id the system may have handed to someone else. (An id cannot be reused while its
/// group exists, so a group still alive here is still ours.)
fn forget_group_if_gone(inner: &Inner, pgid: u32) {
    if signal_group(pgid, None).is_err() {
        inner
            .process_groups
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .retain(|tracked| *tracked != pgid);
    }
}

/// Held (shared) while a run's process is spawned, and (exclusive) while an SFTP request has
/// a file open for writing: a child never starts with a copy of a writable descriptor, which
/// would keep another run's freshly uploaded `run.sh` "busy" until the child execs.
static SPAWNING: std::sync::RwLock<()> = std::sync::RwLock::new(());

/// Waits until no spawn is under way and keeps new ones from starting while held.
pub(crate) fn no_spawn_now() -> std::sync::RwLockWriteGuard<'static, ()> {
    SPAWNING
        .write()
        .unwrap_or_else(|poison| poison.into_inner())
}

async fn run_process(
    inner: &Inner,
    write_half: &russh::ChannelWriteHalf<Msg>,
    command: &str,
    mut stdin: tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>,
) -> Ended {
    let mut process = tokio::process::Command::new("sh");
    process
        .arg("-c")
        .arg(command)
        .current_dir(&inner.home)
        .env("HOME", &inner.home)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // A group of its own, like sshd's new session: `kill -TERM -<pgid>` reaches the tree.
        .process_group(0)
        .kill_on_drop(true);
    let spawned = {
        let _spawning = SPAWNING.read().unwrap_or_else(|poison| poison.into_inner());
        // std's spawn returns once the child has exec'd, its inherited copies closed.
        process.spawn()
    };
    let mut child = match spawned {
        Ok(child) => child,
        Err(error) => {
            let _ = write_half
                .make_writer_ext(Some(1))
                .write_all(format!("sh: {error}\n").as_bytes())
                .await;
            return Ended::Status(127);
        }
    };
    let leader = child.id();
    if let Some(pid) = leader {
        inner
            .process_groups
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .push(pid);
    }
    // The client's stdin data, then EOF; a command that does not read it is not held up.
    if let Some(mut child_stdin) = child.stdin.take() {
        tokio::spawn(async move {
            while let Some(data) = stdin.recv().await {
                if child_stdin.write_all(&data).await.is_err() {
                    break;
                }
            }
        });
    }
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    let copy_out = async {
        if let Some(stdout) = stdout.as_mut() {
            let mut writer = write_half.make_writer();
            let _ = tokio::io::copy(stdout, &mut writer).await;
            let _ = writer.flush().await;
        }
    };
    let copy_err = async {
        if let Some(stderr) = stderr.as_mut() {
            let mut writer = write_half.make_writer_ext(Some(1));
            let _ = tokio::io::copy(stderr, &mut writer).await;
            let _ = writer.flush().await;
        }
    };
    tokio::join!(copy_out, copy_err);
    let waited = child.wait().await;
    if let Some(pid) = leader {
        forget_group_if_gone(inner, pid);
    }
    match waited {
        Ok(status) => {
            use std::os::unix::process::ExitStatusExt as _;
            match (status.code(), status.signal()) {
                (Some(code), _) => Ended::Status(u32::try_from(code).unwrap_or(255)),
                (None, Some(signal)) => Ended::Signal(signal_name(signal)),
                (None, None) => Ended::Status(255),
            }
        }
        Err(_) => Ended::Status(255),
    }
}
