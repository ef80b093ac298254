//! One logged-in connection: commands over exec channels, files over one SFTP session.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use russh::{ChannelMsg, Disconnect, Sig, client};
use russh_sftp::client::SftpSession;
use testfleet_core::hash::DirManifest;
use testfleet_core::ports::{
    CacheUsage, DownloadReport, ExecGate, ExecOutput, FileCache, OutputStream, ProgressSink,
    RemoteExit, SshError, SshSession, TransferStats,
};

use crate::TransferTuning;
use crate::handler::{ClientHandler, SharedState, lock};

/// A logged-in russh connection.
pub(crate) struct RusshSession {
    pub(crate) handle: client::Handle<ClientHandler>,
    state: SharedState,
    pub(crate) host: String,
    pub(crate) tuning: TransferTuning,
    sftp: tokio::sync::OnceCell<Arc<SftpSession>>,
    /// The jump hosts' connections this one is tunnelled through, first hop first; they live
    /// as long as the session.
    hops: Vec<client::Handle<ClientHandler>>,
}

impl std::fmt::Debug for RusshSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RusshSession")
            .field("host", &self.host)
            .finish_non_exhaustive()
    }
}

impl RusshSession {
    pub(crate) fn new(
        handle: client::Handle<ClientHandler>,
        state: SharedState,
        host: String,
        tuning: TransferTuning,
    ) -> Self {
        Self {
            handle,
            state,
            host,
            tuning,
            sftp: tokio::sync::OnceCell::new(),
            hops: Vec::new(),
        }
    }

    /// The session, keeping the jump hosts' connections `hops` open while it lives.
    pub(crate) fn with_hops(mut self, hops: Vec<client::Handle<ClientHandler>>) -> Self {
        self.hops = hops;
        self
    }

    /// Why the connection is gone, for messages.
    pub(crate) fn lost_reason(&self) -> String {
        lock(&self.state)
            .disconnect_reason
            .clone()
            .unwrap_or_else(|| "the connection closed".to_owned())
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.handle.is_closed()
    }

    pub(crate) fn connection_lost(&self, source: Option<russh::Error>) -> SshError {
        SshError::ConnectionLost {
            reason: self.lost_reason(),
            source: source.map(|error| Arc::new(error) as _),
        }
    }

    /// `error` of a transfer, as [`SshError::ConnectionLost`] when the connection is gone: a
    /// transfer cut by a dead link is a lost connection (the runner then reconnects to finish
    /// the job), not a failure of the files.
    fn lost_if_closed(&self, error: SshError) -> SshError {
        if !self.is_closed() || matches!(error, SshError::ConnectionLost { .. }) {
            return error;
        }
        SshError::ConnectionLost {
            reason: self.lost_reason(),
            source: Some(Arc::new(error) as _),
        }
    }

    /// The SFTP session, opened on first use and shared by every transfer.
    pub(crate) async fn sftp(&self) -> Result<Arc<SftpSession>, SshError> {
        self.sftp
            .get_or_try_init(|| async {
                let channel = self
                    .handle
                    .channel_open_session()
                    .await
                    .map_err(|error| self.open_failed(error))?;
                channel
                    .request_subsystem(true, "sftp")
                    .await
                    .map_err(|error| self.open_failed(error))?;
                let config = russh_sftp::client::Config {
                    max_concurrent_writes: self.tuning.writes_in_flight,
                    max_concurrent_reads: self.tuning.reads_in_flight,
                    max_write_packet_len: self.tuning.write_len,
                    request_timeout_secs: self.tuning.request_timeout_secs,
                    ..russh_sftp::client::Config::default()
                };
                let session = SftpSession::new_with_config(channel.into_stream(), config)
                    .await
                    .map_err(|error| {
                        if self.is_closed() {
                            self.connection_lost(None)
                        } else {
                            SshError::Other {
                                reason: "failed to start the sftp subsystem".into(),
                                source: Some(Arc::new(error)),
                            }
                        }
                    })?;
                Ok(Arc::new(session))
            })
            .await
            .cloned()
    }

    fn open_failed(&self, error: russh::Error) -> SshError {
        if self.is_closed() {
            self.connection_lost(Some(error))
        } else {
            SshError::Other {
                reason: "failed to open an sftp channel".into(),
                source: Some(Arc::new(error)),
            }
        }
    }

    /// Runs `command` on a fresh channel, feeding its output to `output`. Its stdin gets the
    /// gate's open line when there is a gate and it opens, and is closed right after the start
    /// when there is none.
    async fn run(
        &self,
        command: &str,
        gate: Option<ExecGate>,
        output: &mut dyn ExecOutput,
    ) -> Result<RemoteExit, SshError> {
        let exec_failed = |error: russh::Error| {
            if self.is_closed() {
                self.connection_lost(Some(error))
            } else {
                SshError::ExecFailed {
                    reason: error.to_string(),
                    source: Some(Arc::new(error)),
                }
            }
        };
        let mut channel = self
            .handle
            .channel_open_session()
            .await
            .map_err(exec_failed)?;
        channel.exec(true, command).await.map_err(exec_failed)?;
        let mut gate = match gate {
            Some(gate) => Some(Box::pin(gate.wait())),
            None => {
                channel.eof().await.map_err(exec_failed)?;
                None
            }
        };

        let mut exit: Option<RemoteExit> = None;
        let mut closed = false;
        let mut started = false;
        // Drain until the channel ends: some servers send the exit status before EOF, others
        // after, some never; an undrained channel would freeze the whole connection.
        loop {
            let message = tokio::select! {
                biased;
                opened = async { gate.as_mut().expect("guarded").await }, if gate.is_some() => {
                    gate = None;
                    if let Some(line) = opened {
                        // stdin stays open from here on: its end tells the remote wrapper that
                        // the connection is gone.
                        channel.data(line.as_slice()).await.map_err(exec_failed)?;
                    } else {
                        channel.eof().await.map_err(exec_failed)?;
                    }
                    continue;
                }
                message = channel.wait() => message,
            };
            let Some(message) = message else {
                break;
            };
            match message {
                ChannelMsg::Data { data } => output.write(OutputStream::Stdout, &data).await,
                ChannelMsg::ExtendedData { data, ext: 1 } => {
                    output.write(OutputStream::Stderr, &data).await
                }
                ChannelMsg::ExitStatus { exit_status } => {
                    exit.get_or_insert(RemoteExit::Code(
                        i32::try_from(exit_status).unwrap_or(i32::MAX),
                    ));
                }
                ChannelMsg::ExitSignal { signal_name, .. } => {
                    exit.get_or_insert(RemoteExit::Signal(signal_text(&signal_name)));
                }
                ChannelMsg::Success => started = true,
                ChannelMsg::Failure if !started => {
                    return Err(SshError::ExecFailed {
                        reason: "the server refused to run the command".into(),
                        source: None,
                    });
                }
                ChannelMsg::Close => {
                    closed = true;
                    break;
                }
                _ => {}
            }
        }
        if !closed && exit.is_none() {
            return Err(self.connection_lost(None));
        }
        Ok(exit.unwrap_or(RemoteExit::NoStatus))
    }
}

fn signal_text(signal: &Sig) -> String {
    match signal {
        Sig::ABRT => "ABRT".into(),
        Sig::ALRM => "ALRM".into(),
        Sig::FPE => "FPE".into(),
        Sig::HUP => "HUP".into(),
        Sig::ILL => "ILL".into(),
        Sig::INT => "INT".into(),
        Sig::KILL => "KILL".into(),
        Sig::PIPE => "PIPE".into(),
        Sig::QUIT => "QUIT".into(),
        Sig::SEGV => "SEGV".into(),
        Sig::TERM => "TERM".into(),
        Sig::USR1 => "USR1".into(),
        Sig::Custom(name) => name.trim_start_matches("SIG").to_owned(),
    }
}

#[async_trait]
impl SshSession for RusshSession {
    fn is_closed(&self) -> bool {
        RusshSession::is_closed(self)
    }

    async fn create_dir_all(&self, path: &str) -> Result<(), SshError> {
        crate::sftp::create_dir_all(self, path).await
    }

    async fn realpath(&self, path: &str) -> Result<String, SshError> {
        crate::sftp::realpath(self, path).await
    }

    async fn upload(
        &self,
        manifest: &DirManifest,
        remote_dir: &str,
        progress: &dyn ProgressSink,
    ) -> Result<TransferStats, SshError> {
        crate::sftp::upload(self, manifest, remote_dir, progress)
            .await
            .map_err(|error| self.lost_if_closed(error))
    }

    async fn upload_cached(
        &self,
        manifest: &DirManifest,
        remote_dir: &str,
        cache: &FileCache,
        progress: &dyn ProgressSink,
    ) -> Result<TransferStats, SshError> {
        crate::sftp::upload_cached(self, manifest, remote_dir, cache, progress)
            .await
            .map_err(|error| self.lost_if_closed(error))
    }

    async fn cache_usage(&self, cache_dir: &str) -> Result<CacheUsage, SshError> {
        crate::sftp::cache_usage(self, cache_dir)
            .await
            .map_err(|error| self.lost_if_closed(error))
    }

    async fn prune_cache(&self, cache: &FileCache, dry_run: bool) -> Result<CacheUsage, SshError> {
        crate::sftp::prune_cache(self, cache, dry_run)
            .await
            .map_err(|error| self.lost_if_closed(error))
    }

    async fn exec(
        &self,
        command: &str,
        output: &mut dyn ExecOutput,
    ) -> Result<RemoteExit, SshError> {
        self.run(command, None, output).await
    }

    async fn exec_gated(
        &self,
        command: &str,
        gate: ExecGate,
        output: &mut dyn ExecOutput,
    ) -> Result<RemoteExit, SshError> {
        self.run(command, Some(gate), output).await
    }

    async fn download_dir(
        &self,
        remote_dir: &str,
        local_dir: &Path,
    ) -> Result<DownloadReport, SshError> {
        crate::sftp::download_dir(self, remote_dir, local_dir)
            .await
            .map_err(|error| self.lost_if_closed(error))
    }

    async fn remove(&self, path: &str) -> Result<(), SshError> {
        crate::sftp::remove(self, path)
            .await
            .map_err(|error| self.lost_if_closed(error))
    }

    async fn list_dir(&self, path: &str) -> Result<Vec<String>, SshError> {
        crate::sftp::list_dir(self, path)
            .await
            .map_err(|error| self.lost_if_closed(error))
    }

    async fn close(&self) -> Result<(), SshError> {
        if self.is_closed() {
            return Err(self.connection_lost(None));
        }
        if let Some(sftp) = self.sftp.get() {
            // Closing the subsystem first lets the server end its side cleanly; a failure here
            // changes nothing about the disconnect below.
            let _ = tokio::time::timeout(Duration::from_secs(2), sftp.close()).await;
        }
        self.handle
            .disconnect(Disconnect::ByApplication, "", "en")
            .await
            .map_err(|error| self.connection_lost(Some(error)))?;
        // The session task ends with Err(Disconnect) once the message is out: that is success.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !self.is_closed() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // Then the jump hosts, last hop first; the target's connection is already closed.
        for hop in self.hops.iter().rev() {
            let _ = hop.disconnect(Disconnect::ByApplication, "", "en").await;
        }
        Ok(())
    }
}
