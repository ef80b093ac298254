//! Public-key login: the ssh-agent's keys first, then the target's identity files, then the
//! usual `~/.ssh` keys.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use russh::client;
use russh::keys::agent::client::AgentClient;
use russh::keys::{PrivateKey, PrivateKeyWithHashAlg, load_secret_key};
use testfleet_core::ports::{SshError, SshTarget};

use crate::ConnectorOptions;
use crate::handler::ClientHandler;

/// The identity files to try, in order, without duplicates: the target's own, then (when
/// enabled) `~/.ssh/id_ed25519`, `id_ecdsa`, `id_rsa` that exist.
fn identity_files(target: &SshTarget, options: &ConnectorOptions) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = Vec::new();
    for file in &target.identity_files {
        if !files.contains(file) {
            files.push(file.clone());
        }
    }
    if options.default_identities
        && let Some(home) = std::env::home_dir()
    {
        for name in ["id_ed25519", "id_ecdsa", "id_rsa"] {
            let path = home.join(".ssh").join(name);
            if path.is_file() && !files.contains(&path) {
                files.push(path);
            }
        }
    }
    files
}

fn transport_lost(target: &SshTarget, error: &russh::Error) -> SshError {
    SshError::AuthFailed {
        user: target.user.clone(),
        host: target.host.clone(),
        reason: format!("the connection failed during login: {error}"),
    }
}

/// Private keys read from identity files, by path. Only keys that loaded are kept; a path is
/// read again when it failed (say, an encrypted key), so the error stays accurate.
#[derive(Clone, Default)]
pub(crate) struct KeyCache(Arc<std::sync::Mutex<HashMap<PathBuf, Arc<PrivateKey>>>>);

impl std::fmt::Debug for KeyCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyCache").finish_non_exhaustive()
    }
}

impl KeyCache {
    fn load(&self, path: &Path) -> Result<Arc<PrivateKey>, russh::keys::Error> {
        let cached = self
            .0
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .get(path)
            .cloned();
        if let Some(key) = cached {
            return Ok(key);
        }
        let key = Arc::new(load_secret_key(path, None)?);
        self.0
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .insert(path.to_owned(), Arc::clone(&key));
        Ok(key)
    }
}

/// Logs in as `target.user`.
///
/// # Errors
/// [`SshError::AuthFailed`] when no key was accepted; its reason lists what was tried, and
/// says so when a key could not be used because it is encrypted.
pub(crate) async fn authenticate(
    handle: &mut client::Handle<ClientHandler>,
    target: &SshTarget,
    options: &ConnectorOptions,
    keys: &KeyCache,
) -> Result<(), SshError> {
    let mut tried: Vec<String> = Vec::new();
    let mut encrypted: Vec<PathBuf> = Vec::new();
    let mut agent_present = false;
    let rsa_hash = handle
        .best_supported_rsa_hash()
        .await
        .map_err(|error| transport_lost(target, &error))?
        .flatten();

    if options.use_agent && !target.identities_only && std::env::var_os("SSH_AUTH_SOCK").is_some() {
        match AgentClient::connect_env().await {
            Ok(mut agent) => {
                agent_present = true;
                let identities = agent.request_identities().await.unwrap_or_default();
                for identity in identities {
                    let key = identity.public_key().into_owned();
                    let hash = if key.algorithm().is_rsa() {
                        rsa_hash
                    } else {
                        None
                    };
                    match handle
                        .authenticate_publickey_with(&target.user, key, hash, &mut agent)
                        .await
                    {
                        Ok(result) if result.success() => return Ok(()),
                        Ok(_) => tried.push(format!("agent key {}", identity_comment(&identity))),
                        Err(error) => tracing::debug!(%error, "the agent could not sign"),
                    }
                }
            }
            Err(error) => tracing::debug!(%error, "no usable ssh-agent"),
        }
    }

    for path in identity_files(target, options) {
        let key = match keys.load(&path) {
            Ok(key) => key,
            Err(russh::keys::Error::KeyIsEncrypted) => {
                encrypted.push(path);
                continue;
            }
            Err(error) => {
                tried.push(format!("{} (unreadable: {error})", path.display()));
                continue;
            }
        };
        let key = PrivateKeyWithHashAlg::new(key, rsa_hash);
        let result = handle
            .authenticate_publickey(&target.user, key)
            .await
            .map_err(|error| transport_lost(target, &error))?;
        if result.success() {
            return Ok(());
        }
        tried.push(path.display().to_string());
    }

    Err(SshError::AuthFailed {
        user: target.user.clone(),
        host: target.host.clone(),
        reason: failure_reason(&tried, &encrypted, agent_present),
    })
}

fn identity_comment(identity: &russh::keys::agent::AgentIdentity) -> String {
    match identity {
        russh::keys::agent::AgentIdentity::PublicKey { comment, .. }
        | russh::keys::agent::AgentIdentity::Certificate { comment, .. } => comment.clone(),
    }
}

fn failure_reason(tried: &[String], encrypted: &[PathBuf], agent_present: bool) -> String {
    let mut parts = Vec::new();
    if !encrypted.is_empty() {
        let list: Vec<String> = encrypted
            .iter()
            .map(|path| path.display().to_string())
            .collect();
        let first = encrypted.first().map(Path::new).map(Path::display);
        let agent = if agent_present {
            "the ssh-agent does not hold it"
        } else {
            "no ssh-agent is running"
        };
        parts.push(format!(
            "the key {} is encrypted (passphrase-protected) and {agent}; load it with `ssh-add {}`",
            list.join(", "),
            first.map(|path| path.to_string()).unwrap_or_default(),
        ));
    }
    if tried.is_empty() && encrypted.is_empty() {
        parts.push("no key to offer: no ssh-agent key and no identity file found".to_owned());
    } else if !tried.is_empty() {
        parts.push(format!("the server accepted none of: {}", tried.join(", ")));
    }
    parts.join("; ")
}
