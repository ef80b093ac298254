//! Dialling: the TCP connection, the SSH handshake with the host-key check, and the login.

use std::borrow::Cow;
use std::sync::Arc;

use russh::{cipher, client, kex};
use testfleet_core::ports::{SshError, SshTarget};

use crate::ConnectorOptions;
use crate::handler::{ClientHandler, SharedState, lock};
use crate::known_hosts;
use crate::session::RusshSession;

/// Moves the named entries to the front of `list`, keeping the rest in their order.
fn prefer<T: PartialEq + Clone>(list: &[T], first: &[T]) -> Vec<T> {
    let mut ordered: Vec<T> = first
        .iter()
        .filter(|item| list.contains(item))
        .cloned()
        .collect();
    ordered.extend(list.iter().filter(|item| !first.contains(item)).cloned());
    ordered
}

fn client_config(target: &SshTarget) -> client::Config {
    let defaults = russh::Preferred::default();
    // curve25519 is the fastest exchange OpenSSH offers (sntrup761 costs ~70 ms); AES-GCM is
    // ~1.6× cheaper than chacha20 where the CPU has AES instructions.
    let kex_order = prefer(
        &defaults.kex,
        &[kex::CURVE25519, kex::CURVE25519_PRE_RFC_8731],
    );
    let cipher_order = prefer(
        &defaults.cipher,
        &[cipher::AES_256_GCM, cipher::AES_128_GCM],
    );
    // Ask first for the host-key algorithms known_hosts already holds for this host, so that a
    // host with several keys presents the recorded one.
    let recorded = known_hosts::recorded_algorithms(&target.known_hosts, &target.host, target.port);
    let key_order = prefer(&defaults.key, &recorded);
    client::Config {
        preferred: russh::Preferred {
            kex: Cow::Owned(kex_order),
            cipher: Cow::Owned(cipher_order),
            key: Cow::Owned(key_order),
            ..defaults
        },
        keepalive_interval: Some(target.keepalive_interval),
        keepalive_max: usize::try_from(target.keepalive_max).unwrap_or(usize::MAX),
        // Large windows keep several MiB in flight on a long-latency link.
        window_size: 16 * 1024 * 1024,
        maximum_packet_size: 65535,
        channel_buffer_size: 256,
        nodelay: true,
        ..client::Config::default()
    }
}

fn dial_failed(
    target: &SshTarget,
    reason: impl Into<String>,
    source: Option<russh::Error>,
) -> SshError {
    SshError::DialFailed {
        host: target.host.clone(),
        port: target.port,
        reason: reason.into(),
        source: source.map(|error| Arc::new(error) as _),
    }
}

/// Connects, verifies the host key and logs in.
///
/// # Errors
/// See [`testfleet_core::ports::SshConnector::connect`].
pub(crate) async fn connect(
    target: &SshTarget,
    options: &ConnectorOptions,
    keys: &crate::auth::KeyCache,
    notice: &crate::NewHostKeyNotice,
) -> Result<RusshSession, SshError> {
    let deadline = tokio::time::Instant::now() + target.connect_timeout;
    let timed_out = || {
        dial_failed(
            target,
            format!("timed out after {:?}", target.connect_timeout),
            None,
        )
    };

    let socket = tokio::time::timeout_at(
        deadline,
        tokio::net::TcpStream::connect((target.host.as_str(), target.port)),
    )
    .await
    .map_err(|_| timed_out())?
    .map_err(|error| SshError::DialFailed {
        host: target.host.clone(),
        port: target.port,
        reason: error.to_string(),
        source: Some(Arc::new(error)),
    })?;
    // Without TCP_NODELAY, small SSH packets wait on Nagle (two 40 ms stalls per exec).
    if let Err(error) = socket.set_nodelay(true) {
        tracing::debug!(%error, "set_nodelay failed");
    }

    let state = SharedState::default();
    let handler = ClientHandler {
        host: target.host.clone(),
        port: target.port,
        known_hosts: target.known_hosts.clone(),
        policy: target.host_key_policy,
        state: Arc::clone(&state),
        notice: notice.clone(),
    };
    let config = Arc::new(client_config(target));
    let handshake =
        tokio::time::timeout_at(deadline, client::connect_stream(config, socket, handler)).await;
    let mut handle = match handshake {
        Err(_) => return Err(timed_out()),
        Ok(Ok(handle)) => handle,
        Ok(Err(error)) => {
            if let Some(host_key_error) = lock(&state).host_key_error.take() {
                return Err(host_key_error);
            }
            let reason = format!("ssh handshake failed: {error}");
            return Err(dial_failed(target, reason, Some(error)));
        }
    };

    let auth = tokio::time::timeout_at(
        deadline,
        crate::auth::authenticate(&mut handle, target, options, keys),
    )
    .await;
    match auth {
        Err(_) => {
            return Err(SshError::AuthFailed {
                user: target.user.clone(),
                host: target.host.clone(),
                reason: format!("timed out after {:?}", target.connect_timeout),
            });
        }
        Ok(result) => result?,
    }
    Ok(RusshSession::new(
        handle,
        state,
        target.host.clone(),
        options.tuning,
    ))
}
