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

/// Connects, verifies the host key and logs in; through the target's jump hosts, in order,
/// when it has some. Each hop has its own deadline (its `connect_timeout`), and the whole chain
/// one more: the target's `connect_timeout`, counted from the start, bounds every hop too. A
/// failure at a hop names it; a failure of the target reached through hops says through which.
///
/// # Errors
/// See [`testfleet_core::ports::SshConnector::connect`].
pub(crate) async fn connect(
    target: &SshTarget,
    options: &ConnectorOptions,
    keys: &crate::auth::KeyCache,
    notice: &crate::NewHostKeyNotice,
) -> Result<RusshSession, SshError> {
    let mut hops: Vec<client::Handle<ClientHandler>> = Vec::with_capacity(target.jumps.len());
    let mut previous: Option<&SshTarget> = None;
    let overall = tokio::time::Instant::now() + target.connect_timeout;
    for hop in target.jumps.iter().chain(std::iter::once(target)) {
        let is_target = std::ptr::eq(hop, target);
        let deadline = (tokio::time::Instant::now() + hop.connect_timeout).min(overall);
        let logged_in = match (hops.last(), previous) {
            (Some(through), Some(via)) => {
                let channel = tokio::time::timeout_at(
                    deadline,
                    through.channel_open_direct_tcpip(
                        hop.host.clone(),
                        u32::from(hop.port),
                        "127.0.0.1",
                        0,
                    ),
                )
                .await;
                let channel = match channel {
                    Err(_) => Err(dial_failed(
                        hop,
                        format!(
                            "timed out after {:?} opening the tunnel",
                            hop.connect_timeout
                        ),
                        None,
                    )),
                    Ok(Err(error)) => Err(dial_failed(
                        hop,
                        format!("the jump host refused the tunnel: {error}"),
                        Some(error),
                    )),
                    Ok(Ok(channel)) => Ok(channel),
                };
                match channel {
                    Ok(channel) => {
                        login(hop, channel.into_stream(), options, keys, notice, deadline).await
                    }
                    Err(error) => Err(error),
                }
                .map_err(|error| through_hop(error, via))
            }
            _ => match tcp_connect(hop, deadline).await {
                Ok(socket) => login(hop, socket, options, keys, notice, deadline).await,
                Err(error) => Err(error),
            },
        };
        let (handle, state) = logged_in.map_err(|error| {
            if is_target {
                error
            } else {
                name_jump_host(error, hop, target)
            }
        })?;
        if is_target {
            return Ok(
                RusshSession::new(handle, state, target.host.clone(), options.tuning)
                    .with_hops(hops),
            );
        }
        hops.push(handle);
        previous = Some(hop);
    }
    unreachable!("the loop returns at the target, its last item")
}

/// The TCP connection to the first host dialled.
async fn tcp_connect(
    target: &SshTarget,
    deadline: tokio::time::Instant,
) -> Result<tokio::net::TcpStream, SshError> {
    let socket = tokio::time::timeout_at(
        deadline,
        tokio::net::TcpStream::connect((target.host.as_str(), target.port)),
    )
    .await
    .map_err(|_| {
        dial_failed(
            target,
            format!("timed out after {:?}", target.connect_timeout),
            None,
        )
    })?
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
    Ok(socket)
}

/// An error of a host reached through the jump host `via` says so.
fn through_hop(error: SshError, via: &SshTarget) -> SshError {
    match error {
        SshError::DialFailed {
            host,
            port,
            reason,
            source,
        } => SshError::DialFailed {
            host,
            port,
            reason: format!("{reason} (via the jump host {}:{})", via.host, via.port),
            source,
        },
        other => other,
    }
}

/// An error at the jump host `hop` of `target` names the hop.
fn name_jump_host(error: SshError, hop: &SshTarget, target: &SshTarget) -> SshError {
    let role = format!(
        "jump host {}:{} on the way to {}:{}",
        hop.host, hop.port, target.host, target.port
    );
    match error {
        SshError::DialFailed {
            host,
            port,
            reason,
            source,
        } => SshError::DialFailed {
            host,
            port,
            reason: format!("{reason} ({role})"),
            source,
        },
        SshError::AuthFailed { user, host, reason } => SshError::AuthFailed {
            user,
            host,
            reason: format!("{reason} ({role})"),
        },
        other => other,
    }
}

/// The SSH handshake with the host-key check, then the login, over `stream`, by `deadline`.
async fn login<S>(
    target: &SshTarget,
    stream: S,
    options: &ConnectorOptions,
    keys: &crate::auth::KeyCache,
    notice: &crate::NewHostKeyNotice,
    deadline: tokio::time::Instant,
) -> Result<(client::Handle<ClientHandler>, SharedState), SshError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let timed_out = || {
        dial_failed(
            target,
            format!("timed out after {:?}", target.connect_timeout),
            None,
        )
    };
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
        tokio::time::timeout_at(deadline, client::connect_stream(config, stream, handler)).await;
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
    Ok((handle, state))
}
