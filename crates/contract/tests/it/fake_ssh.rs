//! FakeSsh passes the same SSH contract suite as the russh adapter.

use std::sync::Arc;
use std::time::Duration;

use testfleet_contract::fake_ssh::{FakeExec, FakeScript, FakeSsh, fake_target};
use testfleet_contract::ssh::{
    ContractHost, OUTPUT_AND_EXIT_COMMAND, SELF_TERM_COMMAND, STDIN_COMMAND, TRUE_COMMAND,
    gated_end_command,
};
use testfleet_core::ports::{OutputStream, RemoteExit};

/// Prints `end` and succeeds, as `cat; echo end` does with an empty stdin.
fn end_command() -> FakeExec {
    FakeExec {
        output: vec![(OutputStream::Stdout, b"end\n".to_vec())],
        exit: RemoteExit::Code(0),
        ..FakeExec::default()
    }
}

#[tokio::test]
async fn fake_ssh_passes_the_ssh_contract() {
    let script = FakeScript {
        // Commands the suite runs get the answers a POSIX host would give; any other exec is a
        // long-running script that only a kill ends.
        exec: FakeExec {
            duration: Duration::from_secs(60),
            ..FakeExec::default()
        },
        exec_by_command: vec![
            (
                OUTPUT_AND_EXIT_COMMAND.to_owned(),
                FakeExec {
                    output: vec![
                        (OutputStream::Stdout, b"out\n".to_vec()),
                        (OutputStream::Stderr, b"err\n".to_vec()),
                    ],
                    exit: RemoteExit::Code(3),
                    ..FakeExec::default()
                },
            ),
            (
                SELF_TERM_COMMAND.to_owned(),
                FakeExec {
                    exit: RemoteExit::Signal("TERM".into()),
                    ..FakeExec::default()
                },
            ),
            (STDIN_COMMAND.to_owned(), end_command()),
            (gated_end_command(), end_command()),
            (
                TRUE_COMMAND.to_owned(),
                FakeExec {
                    exit: RemoteExit::NoStatus,
                    ..FakeExec::default()
                },
            ),
        ],
        ..FakeScript::default()
    };
    let fake = FakeSsh::with_script(script);
    testfleet_contract::ssh::ssh(
        Arc::new(fake.clone()),
        Arc::new(|host| match host {
            ContractHost::Normal | ContractHost::NoExitStatus => Some(fake_target("fake")),
        }),
    )
    .await;
    assert!(
        !fake.remote_exists("testfleet-contract"),
        "the suite cleaned up after itself"
    );
}
