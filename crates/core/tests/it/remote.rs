//! Remote commands, run for real: the POSIX exec and kill commands under `/bin/sh` (and bash)
//! with hostile directory names; the PowerShell payloads decoded and snapshotted.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use testfleet_core::ports::ExecGate;
use testfleet_core::remote::{
    RemoteShell, WindowsShell, decode_powershell_command, posix_exec_command, posix_kill_command,
    quote_posix, windows_exec_command, windows_kill_command,
};
use testfleet_testkit::process::live_group_members;

const RECORDING_SCRIPT: &str = "#!/bin/sh\npwd -P > \"$TF_OUT/cwd\"\necho $$ > \"$TF_OUT/pid\"\n";

/// Runs `command` the way sshd does: handed to a login shell with `-c`.
fn run_as_login_shell(shell: &str, command: &str, out_dir: &Path) -> std::process::ExitStatus {
    Command::new(shell)
        .arg("-c")
        .arg(command)
        .env("TF_OUT", out_dir)
        .status()
        .expect("the shell starts")
}

/// Creates `<parent>/<name>/run.sh` and checks that the exec command runs it there and that
/// the pid file holds its pid.
fn check_exec(shell: &str, name: &str) -> Result<(), TestCaseError> {
    let parent = tempfile::tempdir().expect("temp dir");
    let out = tempfile::tempdir().expect("temp dir");
    let run_dir = parent.path().join(name);
    std::fs::create_dir(&run_dir).expect("any name without / or NUL is a valid directory");
    std::fs::write(run_dir.join("run.sh"), RECORDING_SCRIPT).expect("write");
    let pid_file = parent.path().join(format!("{name}.pid"));

    let command = posix_exec_command(
        run_dir.to_str().expect("utf-8"),
        pid_file.to_str().expect("utf-8"),
        "run.sh",
    );
    let status = run_as_login_shell(shell, &command, out.path());
    prop_assert!(status.success(), "{shell} failed on {command:?}: {status}");

    let cwd = std::fs::read_to_string(out.path().join("cwd")).expect("run.sh wrote its cwd");
    let expected = std::fs::canonicalize(&run_dir).expect("exists");
    // `pwd` ends with a newline that is not part of the name.
    prop_assert_eq!(
        PathBuf::from(cwd.strip_suffix('\n').unwrap_or(&cwd)),
        expected
    );
    let pid = std::fs::read_to_string(out.path().join("pid")).expect("run.sh wrote its pid");
    let recorded = std::fs::read_to_string(&pid_file).expect("the exec command wrote the pid file");
    prop_assert_eq!(recorded.trim(), pid.trim());
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn exec_runs_in_any_directory_under_sh(name in "[^/\u{0}]{1,24}") {
        prop_assume!(name != "." && name != "..");
        check_exec("/bin/sh", &name)?;
    }

    #[test]
    fn quoting_round_trips_through_sh(text in "[^\u{0}]{0,40}") {
        let output = Command::new("/bin/sh")
            .arg("-c")
            .arg(format!("printf %s {}", quote_posix(&text)))
            .output()
            .expect("sh starts");
        prop_assert_eq!(String::from_utf8_lossy(&output.stdout), text);
    }
}

#[test]
fn exec_handles_the_classic_troublemakers_under_sh_and_bash() {
    let names = [
        "with space",
        "it's",
        "say \"hi\"",
        "$HOME",
        "`id`",
        "back\\slash",
        "new\nline",
        "tab\there",
        "-rf",
        "日本語 テスト",
        "*?[a]",
        "semi;colon&&amp|pipe",
        "'\\''",
    ];
    for shell in ["/bin/sh", "/bin/bash"] {
        for name in names {
            check_exec(shell, name).unwrap_or_else(|error| panic!("{shell} {name:?}: {error}"));
        }
    }
}

/// Runs `command` like [`run_as_login_shell`], with `stdin` as its whole standard input.
fn run_with_stdin(shell: &str, command: &str, out_dir: &Path, stdin: &[u8]) -> i32 {
    use std::io::Write as _;
    let mut child = Command::new(shell)
        .arg("-c")
        .arg(command)
        .env("TF_OUT", out_dir)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("the shell starts");
    let mut pipe = child.stdin.take().expect("piped");
    pipe.write_all(stdin).expect("write stdin");
    drop(pipe);
    child
        .wait()
        .expect("wait")
        .code()
        .expect("ended with a status")
}

const TROUBLEMAKERS: [&str; 5] = ["with space", "it's", "$HOME `id`", "new\nline", "-rf"];

#[test]
fn gated_exec_runs_only_after_the_open_line() {
    assert_eq!(
        ExecGate::OPEN_LINE,
        b"go\n",
        "the scripts compare with `go`"
    );
    for shell in ["/bin/sh", "/bin/bash"] {
        for name in TROUBLEMAKERS {
            let parent = tempfile::tempdir().expect("temp dir");
            let out = tempfile::tempdir().expect("temp dir");
            let run_dir = parent.path().join(name);
            std::fs::create_dir(&run_dir).expect("mkdir");
            // run.sh also shows that the open line is not left on its stdin.
            std::fs::write(
                run_dir.join("run.sh"),
                "#!/bin/sh\npwd -P > \"$TF_OUT/cwd\"\ncat > \"$TF_OUT/stdin\"\n",
            )
            .expect("write");
            let pid_file = parent.path().join(format!("{name}.pid"));
            let command = RemoteShell::Posix
                .gated_exec_command(
                    run_dir.to_str().expect("utf-8"),
                    pid_file.to_str().expect("utf-8"),
                    "run.sh",
                )
                .expect("POSIX has a gated form");

            for refused in [&b""[..], b"no\n", b"g"] {
                let status = run_with_stdin(shell, &command, out.path(), refused);
                assert_eq!(status, 125, "{shell} {name:?} {refused:?}");
                assert!(!out.path().join("cwd").exists(), "nothing ran");
                assert!(!pid_file.exists(), "no pid file");
            }
            let status = run_with_stdin(shell, &command, out.path(), ExecGate::OPEN_LINE);
            assert_eq!(status, 0, "{shell} {name:?}");
            let cwd = std::fs::read_to_string(out.path().join("cwd")).expect("run.sh ran");
            assert_eq!(
                PathBuf::from(cwd.strip_suffix('\n').unwrap_or(&cwd)),
                std::fs::canonicalize(&run_dir).expect("exists")
            );
            assert_eq!(
                std::fs::read(out.path().join("stdin")).expect("stdin saved"),
                b""
            );
            assert!(pid_file.exists(), "the pid file was written");
        }
    }
}

#[test]
fn gated_cleanup_removes_the_run_folder_and_pid_file_only_when_opened() {
    for name in TROUBLEMAKERS {
        let parent = tempfile::tempdir().expect("temp dir");
        let run_dir = parent.path().join(name);
        std::fs::create_dir_all(run_dir.join("sub/deeper")).expect("mkdir");
        std::fs::write(run_dir.join("sub/deeper/file"), "x").expect("write");
        let pid_file = parent.path().join(format!("{name}.pid"));
        std::fs::write(&pid_file, "1\n").expect("write");
        let neighbour = parent.path().join("neighbour");
        std::fs::write(&neighbour, "stays").expect("write");
        let command = RemoteShell::Posix
            .gated_cleanup_command(
                run_dir.to_str().expect("utf-8"),
                pid_file.to_str().expect("utf-8"),
            )
            .expect("POSIX has a gated form");

        assert_eq!(run_with_stdin("/bin/sh", &command, parent.path(), b""), 125);
        assert!(
            run_dir.exists() && pid_file.exists(),
            "{name:?}: kept when not opened"
        );
        let status = run_with_stdin("/bin/sh", &command, parent.path(), ExecGate::OPEN_LINE);
        assert_eq!(status, 0, "{name:?}");
        assert!(!run_dir.exists() && !pid_file.exists(), "{name:?}: removed");
        assert!(neighbour.exists(), "nothing else removed");
    }
    let windows = RemoteShell::Windows(WindowsShell::Powershell);
    assert_eq!(
        windows.gated_exec_command("/C:/r", "/C:/r.pid", "run.ps1"),
        None
    );
    assert_eq!(windows.gated_cleanup_command("/C:/r", "/C:/r.pid"), None);
}

#[test]
fn kill_ends_the_whole_process_tree() {
    use std::os::unix::process::CommandExt;

    let parent = tempfile::tempdir().expect("temp dir");
    let run_dir = parent.path().join("run dir 'q'");
    std::fs::create_dir(&run_dir).expect("mkdir");
    // A child that ignores TERM and a grandchild: TERM then KILL must reach them all.
    std::fs::write(
        run_dir.join("run.sh"),
        "#!/bin/sh\n(trap '' TERM; sleep 300) &\nsh -c 'sleep 300 & wait' &\nsleep 300\n",
    )
    .expect("write");
    let pid_file = parent.path().join("run dir 'q'.pid");
    let pid_file_text = pid_file.to_str().expect("utf-8");
    let command = posix_exec_command(run_dir.to_str().expect("utf-8"), pid_file_text, "run.sh");

    // sshd starts every exec in a session of its own; a new process group stands in for it.
    let mut child = Command::new("/bin/sh")
        .arg("-c")
        .arg(&command)
        .process_group(0)
        .spawn()
        .expect("sh starts");
    let pgid = child.id();

    let deadline = Instant::now() + Duration::from_secs(20);
    while live_group_members(pgid).len() < 4 {
        assert!(
            Instant::now() < deadline,
            "the tree did not start: {:?}",
            live_group_members(pgid)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let recorded = std::fs::read_to_string(&pid_file).expect("pid file written");
    assert_eq!(
        recorded.trim(),
        pgid.to_string(),
        "the pid file names the group leader"
    );

    let kill = posix_kill_command(pid_file_text, Duration::from_millis(500));
    let status = Command::new("/bin/sh")
        .arg("-c")
        .arg(&kill)
        .status()
        .expect("sh starts");
    assert!(status.success(), "the kill command failed: {status}");
    child.wait().expect("the leader is reaped");
    while !live_group_members(pgid).is_empty() {
        assert!(
            Instant::now() < deadline,
            "survivors: {:?}",
            live_group_members(pgid)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn kill_without_a_pid_file_says_so() {
    let dir = tempfile::tempdir().expect("temp dir");
    let missing = dir.path().join("never.pid");
    // The command waits up to 5 s for the pid file; that is the price of this test.
    let kill = posix_kill_command(missing.to_str().expect("utf-8"), Duration::from_millis(100));
    let status = Command::new("/bin/sh")
        .arg("-c")
        .arg(&kill)
        .status()
        .expect("sh starts");
    assert_eq!(status.code(), Some(3));
}

#[test]
fn windows_exec_payload() {
    let command = windows_exec_command(
        WindowsShell::Powershell,
        "/C:/Users/ci/.testfleet/runs/it's \u{2019}here\u{2019}",
        "/C:/Users/ci/.testfleet/runs/it's \u{2019}here\u{2019}.pid",
        "run.ps1",
    );
    assert!(command.starts_with(
        "powershell.exe -NoProfile -NonInteractive -ExecutionPolicy Bypass -EncodedCommand "
    ));
    let script = decode_powershell_command(&command).expect("the payload decodes");
    insta::assert_snapshot!("windows_exec_script", script);
}

#[test]
fn windows_kill_payload() {
    let command = windows_kill_command(WindowsShell::Pwsh, "/C:/Users/ci/.testfleet/runs/X.pid");
    assert!(command.starts_with("pwsh -NoProfile"));
    let script = decode_powershell_command(&command).expect("the payload decodes");
    insta::assert_snapshot!("windows_kill_script", script);
}
