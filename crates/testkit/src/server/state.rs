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
}

impl Inner {
    pub(super) fn new(config: ServerConfig, home: PathBuf, authorized: Vec<PublicKey>) -> Self {
        Self {
            config,
            home,
            authorized,
            log: Mutex::new(Vec::new()),
            process_groups: ProcessGroups::default(),
            shutdown: CancellationToken::new(),
        }
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
