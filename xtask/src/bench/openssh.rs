//! The reference tools a user would otherwise script (`sftp`, `scp`, `ssh`, `rsync`), pointed at
//! the private sshd, and the adapter's target for the same sshd.

use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Result, ensure};
use testfleet_core::ports::{HostKeyPolicy, SshTarget};
use testfleet_testkit::sshd::PrivateSshd;

pub(super) struct Openssh<'a> {
    pub(super) sshd: &'a PrivateSshd,
}

impl Openssh<'_> {
    /// `user@127.0.0.1`.
    pub(super) fn login(&self) -> String {
        format!("{}@127.0.0.1", self.sshd.user())
    }

    pub(super) fn sftp_batch(&self, batch: &str) -> Result<()> {
        let batch_file = self.sshd.dir().join("batch");
        std::fs::write(&batch_file, batch)?;
        let status = Command::new("sftp")
            .args(self.sshd.client_options())
            .arg("-P")
            .arg(self.sshd.port().to_string())
            .arg("-b")
            .arg(&batch_file)
            .arg(self.login())
            .stdout(Stdio::null())
            .status()?;
        ensure!(status.success(), "sftp -b failed: {status}");
        Ok(())
    }

    pub(super) fn scp_dir(&self, local: &Path, remote: &Path) -> Result<()> {
        let status = Command::new("scp")
            .args(self.sshd.client_options())
            .arg("-q")
            .arg("-r")
            .arg("-P")
            .arg(self.sshd.port().to_string())
            .arg(local)
            .arg(format!("{}:{}", self.login(), remote.display()))
            .status()?;
        ensure!(status.success(), "scp -r failed: {status}");
        Ok(())
    }

    /// `ssh` with the sshd's client options and port, without the login or a command, as one
    /// string of words: the `-e` of `rsync` (which splits it at spaces and honours the quotes),
    /// or the start of a pipeline's `ssh`.
    pub(super) fn ssh_command(&self) -> String {
        let mut words: Vec<String> = vec!["ssh".into()];
        words.extend(
            self.sshd
                .client_options()
                .into_iter()
                .map(|w| format!("'{w}'")),
        );
        words.push(format!("-p {}", self.sshd.port()));
        words.join(" ")
    }

    /// `ssh host REMOTE_COMMAND` as one shell word list, for pipelines.
    pub(super) fn ssh_words(&self, remote_command: &str) -> String {
        format!("{} {} '{remote_command}'", self.ssh_command(), self.login())
    }
}

pub(super) fn target_for(sshd: &PrivateSshd) -> SshTarget {
    SshTarget {
        host: "127.0.0.1".into(),
        port: sshd.port(),
        user: sshd.user().into(),
        identity_files: vec![sshd.client_key_path()],
        known_hosts: sshd.known_hosts_path(),
        host_key_policy: HostKeyPolicy::Strict,
        connect_timeout: SshTarget::DEFAULT_CONNECT_TIMEOUT,
        keepalive_interval: SshTarget::DEFAULT_KEEPALIVE_INTERVAL,
        keepalive_max: SshTarget::DEFAULT_KEEPALIVE_MAX,
        jumps: Vec::new(),
        identities_only: false,
    }
}
