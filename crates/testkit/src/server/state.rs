//! The state every task of one server shares: its configuration, the login's home, the keys
//! it accepts, the requests it saw and the process groups it started.

use std::path::PathBuf;
use std::sync::Mutex;

use russh::keys::PublicKey;
use tokio_util::sync::CancellationToken;

use super::config::{Request, ServerConfig};
use super::groups::ProcessGroups;

/// State shared by the server's tasks.
pub(super) struct Inner {
    pub(super) config: ServerConfig,
    pub(super) home: PathBuf,
    pub(super) authorized: Vec<PublicKey>,
    log: Mutex<Vec<Request>>,
    /// Process groups of the execs started, killed when the server is dropped.
    pub(super) process_groups: ProcessGroups,
    pub(super) shutdown: CancellationToken,
    /// The parent of every live connection's token: cancelling it drops them all, and a fresh
    /// one takes its place for the connections that follow.
    connections: Mutex<CancellationToken>,
}

impl Inner {
    pub(super) fn new(config: ServerConfig, home: PathBuf, authorized: Vec<PublicKey>) -> Self {
        Self {
            config,
            home,
            authorized,
            log: Mutex::new(Vec::new()),
            process_groups: ProcessGroups::default(),
            connections: Mutex::new(CancellationToken::new()),
            shutdown: CancellationToken::new(),
        }
    }

    /// The token of a new connection: cancelled when the server stops or
    /// [`Inner::drop_connections`] is called.
    pub(super) fn connection_token(&self) -> CancellationToken {
        let parent = self
            .connections
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .clone();
        let token = self.shutdown.child_token();
        let child = token.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = parent.cancelled() => child.cancel(),
                () = child.cancelled() => {}
            }
        });
        token
    }

    /// Drops every live connection abruptly, as a network failure would; later connections are
    /// served as usual.
    pub(super) fn drop_connections(&self) {
        let mut parent = self
            .connections
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        parent.cancel();
        *parent = CancellationToken::new();
    }

    pub(super) fn log(&self, request: Request) {
        self.log
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .push(request);
    }

    /// Every request seen so far, in order.
    pub(super) fn requests(&self) -> Vec<Request> {
        self.log
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .clone()
    }
}
