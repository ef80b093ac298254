//! What testfleet tells its users to do next. Core's messages say what happened; the commands
//! and flags to type are this crate's, so they are added here, each written once.

use testfleet_core::MachineName;
use testfleet_core::RunId;
use testfleet_core::ports::SshError;
use testfleet_core::runner::Remedies;

/// The remedy for a host key that known_hosts does not hold, naming the machine so that it is
/// ready to copy; `--accept-new-host-key` is offered only where the command has that flag.
pub fn host_key_unknown(machine: &str, offer_accept_new: bool) -> String {
    format!(
        "check the fingerprint, then run `testfleet machines trust {machine}`{}",
        if offer_accept_new {
            " or pass --accept-new-host-key"
        } else {
            ""
        }
    )
}

/// The remedy for a machine busy with another run (or that runs wait for).
pub fn machine_busy(active_run: &RunId) -> String {
    format!(
        "wait in line with `run --wait`, wait for it (`testfleet wait {active_run}`) or cancel it \
         (`testfleet cancel {active_run}`)"
    )
}

/// The remedy for `run --any` over machines that are all busy.
pub const MACHINES_BUSY: &str = "wait in line for the first that frees with `run --any --wait`, or see `testfleet machines status`";

/// An SSH error with the remedy for it, as `check` and `trust` show it.
pub fn describe_ssh(machine: &str, error: &SshError, offer_accept_new: bool) -> String {
    let mut message = testfleet_core::error_chain(error);
    if matches!(error, SshError::HostKeyUnknown { .. }) {
        message.push_str("; ");
        message.push_str(&host_key_unknown(machine, offer_accept_new));
    }
    message
}

/// The remedies the runner records in runs that `testfleet run` and `_worker` execute: both
/// commands take `--accept-new-host-key`.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunRemedies;

impl Remedies for RunRemedies {
    fn for_dial(&self, machine: &MachineName, error: &SshError) -> Option<String> {
        matches!(error, SshError::HostKeyUnknown { .. })
            .then(|| host_key_unknown(machine.as_str(), true))
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn unknown_key() -> SshError {
        SshError::HostKeyUnknown {
            host: "10.0.0.5".into(),
            port: 22,
            fingerprint: "SHA256:abc".into(),
            known_hosts: PathBuf::from("/home/ci/.ssh/known_hosts"),
        }
    }

    #[test]
    fn an_unknown_host_key_gets_the_trust_command_for_that_machine() {
        let machine = MachineName::parse("linux-1").expect("valid");
        assert_eq!(
            RunRemedies.for_dial(&machine, &unknown_key()).as_deref(),
            Some(
                "check the fingerprint, then run `testfleet machines trust linux-1` or pass \
                 --accept-new-host-key"
            )
        );
        assert_eq!(
            describe_ssh("linux-1", &unknown_key(), false),
            "host key of 10.0.0.5:22 is not in /home/ci/.ssh/known_hosts (offered SHA256:abc); \
             check the fingerprint, then run `testfleet machines trust linux-1`"
        );
        let refused = SshError::AuthFailed {
            user: "ci".into(),
            host: "10.0.0.5".into(),
            reason: "no key".into(),
        };
        assert_eq!(RunRemedies.for_dial(&machine, &refused), None);
    }
}
