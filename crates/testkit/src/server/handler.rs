//! The russh side of a connection: logins, session channels, and the exec and SFTP requests
//! on them.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use russh::keys::PublicKey;
use russh::server::{Auth, ChannelOpenHandle, Msg, Session};
use russh::{Channel, ChannelId};
use tokio::io::AsyncWriteExt as _;
use tokio_util::sync::CancellationToken;

use super::config::Request;
use super::exec::run_exec;
use super::sftp;
use super::state::Inner;

/// One client connection.
pub(super) struct ConnectionHandler {
    inner: Arc<Inner>,
    connection: CancellationToken,
    channels: HashMap<ChannelId, Channel<Msg>>,
    uploaded: Arc<AtomicU64>,
    downloaded: Arc<AtomicU64>,
}

impl ConnectionHandler {
    /// A handler for a new connection, which `connection` drops when cancelled.
    pub(super) fn new(inner: Arc<Inner>, connection: CancellationToken) -> Self {
        Self {
            inner,
            connection,
            channels: HashMap::new(),
            uploaded: Arc::new(AtomicU64::new(0)),
            downloaded: Arc::new(AtomicU64::new(0)),
        }
    }

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
