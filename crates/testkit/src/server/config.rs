//! What a test asks of the server: the faults to inject, the exit order, Windows emulation,
//! and the requests the server records for assertions.

use std::time::Duration;

use russh::keys::{PrivateKey, PublicKey};

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
    ///
    /// [`HOSTILE_FILE_NAMES`]: super::HOSTILE_FILE_NAMES
    /// [`HOSTILE_LINK_NAME`]: super::HOSTILE_LINK_NAME
    pub hostile_artifacts: bool,
    /// Files and folders with one of these names answer "permission denied" when opened or
    /// listed (as mode 000 does for an unprivileged user; the server runs as whoever runs the
    /// tests, root included).
    pub unreadable_names: Vec<String>,
    /// Writes fail with a bare "failure" once this many bytes were written over SFTP, and
    /// `statvfs@openssh.com` then says the disk has no free space (a full remote disk).
    pub disk_full_after_bytes: Option<u64>,
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
    ///
    /// [`TestServer::client_key_path`]: super::TestServer::client_key_path
    pub authorized_keys: Vec<PublicKey>,
    /// The host key; a fresh ed25519 key when `None`.
    pub host_key: Option<PrivateKey>,
    pub exit_order: ExitOrder,
    pub faults: Faults,
    pub windows: Option<WindowsEmulation>,
    /// Advertise and serve `hardlink@openssh.com`, as OpenSSH's sftp-server does, so that
    /// runs use the machine's file cache; without it the client sends every file.
    pub hardlink: bool,
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
