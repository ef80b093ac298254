//! Exec: both orders of exit-status and EOF, a missing status, large output, Windows emulation.

use std::time::Duration;
use testfleet_contract::ssh::{Captured, OUTPUT_AND_EXIT_COMMAND};

use testfleet_core::ports::RemoteExit;
use testfleet_testkit::server::{
    ExitOrder, Faults, ScriptedExec, ServerConfig, TestServer, WindowsEmulation,
};

async fn run(config: ServerConfig, command: &str) -> (RemoteExit, Captured) {
    let server = TestServer::start(config).await;
    let session = crate::connect(&server.target()).await;
    let mut output = Captured::default();
    let exit = session
        .exec(command, &mut output)
        .await
        .expect("the exec runs");
    session.close().await.expect("close succeeds");
    (exit, output)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_status_and_eof_in_either_order() {
    for order in [ExitOrder::StatusThenEof, ExitOrder::EofThenStatus] {
        let config = ServerConfig {
            exit_order: order,
            ..ServerConfig::default()
        };
        let (exit, output) = run(config, OUTPUT_AND_EXIT_COMMAND).await;
        assert_eq!(exit, RemoteExit::Code(3), "{order:?}");
        assert_eq!(
            (output.stdout_text().as_str(), output.stderr_text().as_str()),
            ("out\n", "err\n"),
            "{order:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_without_exit_status_is_no_status() {
    for order in [ExitOrder::StatusThenEof, ExitOrder::EofThenStatus] {
        let config = ServerConfig {
            exit_order: order,
            faults: Faults {
                no_exit_status: true,
                ..Faults::default()
            },
            ..ServerConfig::default()
        };
        let (exit, output) = run(config, "echo hi").await;
        assert_eq!(exit, RemoteExit::NoStatus, "{order:?}");
        assert_eq!(output.stdout_text(), "hi\n");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_interleaved_output_is_drained_completely() {
    // Far more than the channel buffer holds: an undrained channel would freeze.
    let command = "i=0; while [ $i -lt 2000 ]; do echo \"line $i of stdout padded to be long enough\"; echo \"line $i\" >&2; i=$((i+1)); done";
    let (exit, output) = run(ServerConfig::default(), command).await;
    assert_eq!(exit, RemoteExit::Code(0));
    assert_eq!(output.stdout_text().lines().count(), 2000);
    assert_eq!(output.stderr_text().lines().count(), 2000);
    assert!(
        output
            .stdout_text()
            .ends_with("line 1999 of stdout padded to be long enough\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn windows_emulation_records_commands_and_answers_as_scripted() {
    let windows = WindowsEmulation {
        replies: vec![ScriptedExec {
            command_contains: "-EncodedCommand".into(),
            stdout: b"hello from windows\r\n".to_vec(),
            stderr: Vec::new(),
            exit_status: 7,
        }],
        ..WindowsEmulation::default()
    };
    let server = TestServer::start(ServerConfig {
        windows: Some(windows),
        ..ServerConfig::default()
    })
    .await;
    let session = crate::connect(&server.target()).await;
    session
        .create_dir_all(".testfleet/runs")
        .await
        .expect("created under the emulated home");
    let root = session
        .realpath(".testfleet")
        .await
        .expect("realpath works");
    assert_eq!(root, "/C:/Users/ci/.testfleet");
    session
        .create_dir_all(&format!("{root}/runs/x"))
        .await
        .expect("absolute emulated paths work");
    assert!(server.home().join(".testfleet/runs/x").is_dir());

    let shell = testfleet_core::remote::RemoteShell::Windows(
        testfleet_core::remote::WindowsShell::Powershell,
    );
    let command = shell.exec_command(&testfleet_core::remote::RunScript {
        run_dir: &format!("{root}/runs/x"),
        pid_file: &format!("{root}/runs/x.pid"),
        entrypoint: "run.ps1",
        run_id: "01JD0000000000000000000000",
        machine: "m1",
        args: &[],
        env: &[],
        grace: Duration::from_secs(1),
    });
    let mut output = Captured::default();
    let exit = session
        .exec(&command, &mut output)
        .await
        .expect("the exec runs");
    assert_eq!(exit, RemoteExit::Code(7));
    assert_eq!(output.stdout_text(), "hello from windows\r\n");
    assert_eq!(server.exec_commands(), vec![command.clone()]);
    let script = testfleet_core::remote::decode_powershell_command(&command).expect("decodable");
    assert!(
        script.contains(r"C:\Users\ci\.testfleet\runs\x"),
        "{script}"
    );
}
