//! The russh + russh-sftp implementation of testfleet's SSH ports: [`RusshConnector`] dials,
//! verifies the host key against known_hosts and logs in; the session it returns runs commands
//! over exec channels and moves files over one pipelined SFTP session.

mod auth;
mod dial;
mod handler;
mod known_hosts;
mod session;
mod sftp;

use std::sync::Arc;

use async_trait::async_trait;
use testfleet_core::ports::{SshConnector, SshError, SshSession, SshTarget};

/// How many SFTP requests and files are kept in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransferTuning {
    /// Files uploaded or downloaded at the same time over the one SFTP session.
    pub files_in_flight: usize,
    /// Write requests in flight per file.
    pub writes_in_flight: usize,
    /// Read requests in flight per file.
    pub reads_in_flight: usize,
    /// Bytes per SFTP write request.
    pub write_len: u32,
    /// Seconds an SFTP request may take before it counts as failed.
    pub request_timeout_secs: u64,
}

impl Default for TransferTuning {
    fn default() -> Self {
        // Measured on loopback against OpenSSH 9.2: several files and several writes in flight
        // are what make SFTP fast; 32 × 64 KiB per file bounds memory at 2 MiB per file.
        Self {
            files_in_flight: 32,
            writes_in_flight: 32,
            reads_in_flight: 32,
            write_len: 64 * 1024,
            request_timeout_secs: 60,
        }
    }
}

/// Options of a [`RusshConnector`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectorOptions {
    /// Try the keys of the ssh-agent at `SSH_AUTH_SOCK` first.
    pub use_agent: bool,
    /// After the target's identity files, try `~/.ssh/id_ed25519`, `id_ecdsa` and `id_rsa`.
    pub default_identities: bool,
    pub tuning: TransferTuning,
}

impl Default for ConnectorOptions {
    fn default() -> Self {
        Self {
            use_agent: true,
            default_identities: true,
            tuning: TransferTuning::default(),
        }
    }
}

/// What is called each time a connector records a new host key in known_hosts
/// (`accept-new`): host, port, the `SHA256:` fingerprint, the known_hosts file.
pub type NewHostKeyFn = dyn Fn(&str, u16, &str, &std::path::Path) + Send + Sync;

/// A [`NewHostKeyFn`], or none.
#[derive(Clone, Default)]
pub struct NewHostKeyNotice(pub(crate) Option<Arc<NewHostKeyFn>>);

impl std::fmt::Debug for NewHostKeyNotice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "NewHostKeyNotice(Some)"
        } else {
            "NewHostKeyNotice(None)"
        })
    }
}

/// Dials machines with russh.
#[derive(Debug, Clone, Default)]
pub struct RusshConnector {
    options: ConnectorOptions,
    /// Identity files already read, so that a fan-out parses each key once.
    keys: auth::KeyCache,
    notice: NewHostKeyNotice,
}

impl RusshConnector {
    /// A connector with the default options (agent first, default identities, tuned SFTP).
    pub fn new() -> Self {
        Self::default()
    }

    /// A connector with explicit options (tests turn the agent and `~/.ssh` keys off).
    pub fn with_options(options: ConnectorOptions) -> Self {
        Self {
            options,
            keys: auth::KeyCache::default(),
            notice: NewHostKeyNotice::default(),
        }
    }

    /// Calls `notice` each time a host key is recorded in known_hosts, so that the application
    /// can say which key it trusted.
    #[must_use]
    pub fn on_new_host_key(mut self, notice: Arc<NewHostKeyFn>) -> Self {
        self.notice = NewHostKeyNotice(Some(notice));
        self
    }
}

#[async_trait]
impl SshConnector for RusshConnector {
    async fn connect(&self, target: &SshTarget) -> Result<Box<dyn SshSession>, SshError> {
        let session = dial::connect(target, &self.options, &self.keys, &self.notice).await?;
        Ok(Box::new(session))
    }
}
