//! The russh client handler: it checks the host key against known_hosts before anything else
//! is sent, and remembers why a connection ended.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use russh::client;
use russh::keys::{HashAlg, PublicKey, PublicKeyOrCertificate};
use testfleet_core::ports::{HostKeyPolicy, SshError};

use crate::known_hosts::{self, Verdict};

/// What the client handler learned that the caller needs: why the host key was refused and
/// why the connection ended.
#[derive(Debug, Default)]
pub(crate) struct ConnectionState {
    pub(crate) host_key_error: Option<SshError>,
    pub(crate) disconnect_reason: Option<String>,
}

pub(crate) type SharedState = Arc<Mutex<ConnectionState>>;

pub(crate) fn lock(state: &SharedState) -> std::sync::MutexGuard<'_, ConnectionState> {
    state.lock().unwrap_or_else(|poison| poison.into_inner())
}

/// The russh client handler: verifies the host key before anything else is sent.
#[derive(Debug)]
pub(crate) struct ClientHandler {
    pub(crate) host: String,
    pub(crate) port: u16,
    pub(crate) known_hosts: PathBuf,
    pub(crate) policy: HostKeyPolicy,
    pub(crate) state: SharedState,
    pub(crate) notice: crate::NewHostKeyNotice,
}

impl ClientHandler {
    fn verify(&self, key: &PublicKey) -> Result<(), SshError> {
        let fingerprint = key.fingerprint(HashAlg::Sha256).to_string();
        let verdict =
            known_hosts::check(&self.known_hosts, &self.host, self.port, key).map_err(|error| {
                SshError::Other {
                    reason: format!("failed to read known_hosts {}", self.known_hosts.display()),
                    source: Some(Arc::new(error)),
                }
            })?;
        let mismatch = |line| SshError::HostKeyMismatch {
            host: self.host.clone(),
            port: self.port,
            fingerprint: fingerprint.clone(),
            known_hosts: self.known_hosts.clone(),
            line: Some(line),
        };
        match verdict {
            Verdict::Known => Ok(()),
            // A revoked key is refused like a changed one: no flag may override it.
            Verdict::Revoked { line } | Verdict::Mismatch { line } => Err(mismatch(line)),
            Verdict::Unknown => match self.policy {
                HostKeyPolicy::Strict => Err(SshError::HostKeyUnknown {
                    host: self.host.clone(),
                    port: self.port,
                    fingerprint,
                    known_hosts: self.known_hosts.clone(),
                }),
                HostKeyPolicy::AcceptPinned(pinned)
                    if key.fingerprint(HashAlg::Sha256).as_bytes() != pinned.as_slice() =>
                {
                    Err(SshError::HostKeyUnknown {
                        host: self.host.clone(),
                        port: self.port,
                        fingerprint,
                        known_hosts: self.known_hosts.clone(),
                    })
                }
                HostKeyPolicy::AcceptNew | HostKeyPolicy::AcceptPinned(_) => {
                    known_hosts::learn(&self.known_hosts, &self.host, self.port, key).map_err(
                        |error| SshError::Other {
                            reason: format!(
                                "failed to record the host key in {}",
                                self.known_hosts.display()
                            ),
                            source: Some(Arc::new(error)),
                        },
                    )?;
                    tracing::info!(host = %self.host, port = self.port, %fingerprint, "recorded a new host key");
                    if let Some(notice) = &self.notice.0 {
                        notice(&self.host, self.port, &fingerprint, &self.known_hosts);
                    }
                    Ok(())
                }
            },
        }
    }
}

impl client::Handler for ClientHandler {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        offered: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let PublicKeyOrCertificate::PublicKey { key, .. } = offered else {
            // No certificate algorithm is advertised, so a certificate here is a protocol
            // violation; refuse it.
            lock(&self.state).host_key_error = Some(SshError::Other {
                reason: "the server offered a host certificate, which testfleet does not trust"
                    .into(),
                source: None,
            });
            return Ok(false);
        };
        match self.verify(key) {
            Ok(()) => Ok(true),
            Err(error) => {
                lock(&self.state).host_key_error = Some(error);
                Ok(false)
            }
        }
    }

    async fn disconnected(
        &mut self,
        reason: client::DisconnectReason<Self::Error>,
    ) -> Result<(), Self::Error> {
        let text = match &reason {
            client::DisconnectReason::ReceivedDisconnect(info) => {
                format!(
                    "the server disconnected ({:?}: {})",
                    info.reason_code, info.message
                )
            }
            client::DisconnectReason::Error(error) => error.to_string(),
        };
        lock(&self.state).disconnect_reason.get_or_insert(text);
        match reason {
            client::DisconnectReason::ReceivedDisconnect(_) => Ok(()),
            client::DisconnectReason::Error(error) => Err(error),
        }
    }
}
