//! Remote commands, run for real: the POSIX exec and kill commands under `/bin/sh` (and bash)
//! with hostile directory names; the PowerShell payloads decoded and snapshotted.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use testfleet_core::ports::ExecGate;
use testfleet_core::remote::{
    KILL_ALREADY_GONE, KILL_NO_PID_FILE, RemoteShell, RunScript, ScriptVar, WindowsShell,
    decode_powershell_command, posix_exec_command, posix_kill_command, posix_probe_command,
    quote_posix, windows_exec_command, windows_kill_command,
};
use testfleet_testkit::process::live_group_members;

const RECORDING_SCRIPT: &str =
    "#!/bin/sh\npwd -P > \"$TF_OUT/cwd\"\necho $PPID > \"$TF_OUT/pid\"\n";

/// A run id of its own for every script of these tests: the marker decides which processes a
/// wrapper may kill, and tests run side by side.
fn fresh_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let serial = NEXT.fetch_add(1, Ordering::Relaxed);
    testfleet_core::RunId::from_parts(
        1,
        (u128::from(std::process::id()) << 64) | u128::from(serial),
    )
    .to_string()
}

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

    let command = posix_exec_command(&RunScript {
        run_dir: run_dir.to_str().expect("utf-8"),
        pid_file: pid_file.to_str().expect("utf-8"),
        entrypoint: "run.sh",
        run_id: &fresh_id(),
        machine: "m1",
        args: &[],
        env: &[],
        grace: Duration::from_millis(200),
    });
    let status = run_as_login_shell(shell, &command, out.path());
    prop_assert!(status.success(), "{shell} failed on {command:?}: {status}");

    let cwd = std::fs::read_to_string(out.path().join("cwd")).expect("run.sh wrote its cwd");
    let expected = std::fs::canonicalize(&run_dir).expect("exists");
    // `pwd` ends with a newline that is not part of the name.
    prop_assert_eq!(
        PathBuf::from(cwd.strip_suffix('\n').unwrap_or(&cwd)),
        expected
    );
    // The pid file names the wrapper, run.sh's parent.
    let pid = std::fs::read_to_string(out.path().join("pid")).expect("run.sh wrote its parent");
    let recorded = std::fs::read_to_string(&pid_file).expect("the exec command wrote the pid file");
    // Its first line; a second names the run's cgroup where one could be made.
    prop_assert_eq!(recorded.lines().next().unwrap_or_default(), pid.trim());
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

/// Writes each argument and the variables `run.sh` was given into files of `TF_OUT`, one
/// file each, byte for byte.
const ARGS_SCRIPT: &str = "#!/bin/sh\n\
    i=0; for a in \"$@\"; do i=$((i+1)); printf %s \"$a\" > \"$TF_OUT/arg$i\"; done\n\
    printf %s \"$#\" > \"$TF_OUT/argc\"\n\
    printf %s \"$MODE\" > \"$TF_OUT/MODE\"\n\
    printf %s \"$TOKEN\" > \"$TF_OUT/TOKEN\"\n\
    printf %s \"$TESTFLEET_RUN_ID\" > \"$TF_OUT/TESTFLEET_RUN_ID\"\n\
    printf %s \"$TESTFLEET_MACHINE\" > \"$TF_OUT/TESTFLEET_MACHINE\"\n\
    printf %s \"$TESTFLEET_ARTIFACTS\" > \"$TF_OUT/TESTFLEET_ARTIFACTS\"\n";

/// Runs `run.sh` with `args`, `MODE=mode` and the secret `TOKEN=token`, gated (the secret on
/// stdin, as the runner sends it) or not, and checks that everything arrived exactly.
fn check_invocation(
    args: &[String],
    mode: &str,
    token: &str,
    gated: bool,
) -> Result<(), TestCaseError> {
    let parent = tempfile::tempdir().expect("temp dir");
    let out = tempfile::tempdir().expect("temp dir");
    let (run_dir, pid_file) = run_folder(parent.path(), "r", &ARGS_SCRIPT["#!/bin/sh\n".len()..]);
    let run_id = fresh_id();
    let env = [
        ScriptVar {
            name: "MODE",
            value: mode,
            secret: false,
        },
        ScriptVar {
            name: "TOKEN",
            value: token,
            secret: true,
        },
    ];
    let script = RunScript {
        run_dir: run_dir.to_str().expect("utf-8"),
        pid_file: pid_file.to_str().expect("utf-8"),
        entrypoint: "run.sh",
        run_id: &run_id,
        machine: "m-1",
        args,
        env: &env,
        grace: Duration::from_millis(200),
    };
    let status = if gated {
        let command = RemoteShell::Posix
            .gated_exec_command(&script)
            .expect("POSIX is gated");
        if token.len() >= 8 && !args.iter().any(|arg| arg.contains(token)) && !mode.contains(token)
        {
            prop_assert!(!command.contains(token), "the secret is on no command line");
        }
        let mut run = GatedRun::start(&command, out.path());
        {
            use std::io::Write as _;
            let pipe = run.stdin.as_mut().expect("stdin is open");
            let mut bytes = ExecGate::OPEN_LINE.to_vec();
            bytes.extend_from_slice(&RemoteShell::Posix.gate_payload(&script));
            pipe.write_all(&bytes)
                .expect("write the gate and the secrets");
            pipe.flush().expect("flush");
        }
        run.wait().code()
    } else {
        run_as_login_shell("/bin/sh", &posix_exec_command(&script), out.path()).code()
    };
    prop_assert_eq!(status, Some(0));
    let read = |name: &str| std::fs::read(out.path().join(name)).unwrap_or_default();
    prop_assert_eq!(read("argc"), args.len().to_string().into_bytes());
    for (arg_idx, arg) in args.iter().enumerate() {
        prop_assert_eq!(
            read(&format!("arg{}", arg_idx + 1)),
            arg.as_bytes().to_vec()
        );
    }
    prop_assert_eq!(read("MODE"), mode.as_bytes().to_vec());
    prop_assert_eq!(read("TOKEN"), token.as_bytes().to_vec());
    prop_assert_eq!(read("TESTFLEET_RUN_ID"), run_id.as_bytes().to_vec());
    prop_assert_eq!(read("TESTFLEET_MACHINE"), b"m-1".to_vec());
    prop_assert_eq!(
        read("TESTFLEET_ARTIFACTS"),
        format!("{}/artifacts", run_dir.display()).into_bytes()
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn args_and_env_arrive_exactly_through_sh(
        args in proptest::collection::vec("[^\u{0}]{0,16}", 0..5),
        mode in "[^\u{0}]{0,24}",
        token in "[^\u{0}]{0,24}",
        gated in any::<bool>(),
    ) {
        check_invocation(&args, &mode, &token, gated)?;
    }
}

#[test]
fn args_and_env_with_quotes_newlines_and_dollars_arrive_exactly() {
    let hostile = [
        "it's \"quoted\" $HOME `id` $(id)\nline 2\\".to_owned(),
        String::new(),
        "-e".to_owned(),
        "--".to_owned(),
        "*".to_owned(),
        "\n".to_owned(),
        "日本語 %s %n \\101".to_owned(),
    ];
    for gated in [false, true] {
        check_invocation(
            &hostile,
            "a'b\"c\n$d\\e\n",
            "t0k'en\"\n$X\\101%s\n\n",
            gated,
        )
        .unwrap_or_else(|error| panic!("gated={gated}: {error}"));
        check_invocation(&hostile, "plain", "SECRET-VALUE-1234", gated)
            .unwrap_or_else(|error| panic!("gated={gated}: {error}"));
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

/// A gated run started the way sshd starts it (a session of its own: a new process group), its
/// stdin held open as the client holds it.
struct GatedRun {
    child: std::process::Child,
    stdin: Option<std::process::ChildStdin>,
}

impl Drop for GatedRun {
    fn drop(&mut self) {
        // A failed test must not leave its processes behind: the group, by its id.
        testfleet_testkit::process::kill_group(self.child.id());
        let _ = self.child.wait();
    }
}

impl GatedRun {
    fn start(command: &str, out_dir: &Path) -> Self {
        use std::os::unix::process::CommandExt as _;
        let mut child = Command::new("/bin/sh")
            .arg("-c")
            .arg(command)
            .env("TF_OUT", out_dir)
            .stdin(std::process::Stdio::piped())
            .process_group(0)
            .spawn()
            .expect("the shell starts");
        let stdin = child.stdin.take();
        Self { child, stdin }
    }

    fn open(&mut self) {
        use std::io::Write as _;
        let pipe = self.stdin.as_mut().expect("stdin is open");
        pipe.write_all(ExecGate::OPEN_LINE)
            .expect("write the gate's line");
        pipe.flush().expect("flush");
    }

    /// The connection is gone: the session's stdin ends.
    fn drop_stdin(&mut self) {
        self.stdin = None;
    }

    fn pgid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the wrapper, with stdin still open, and says how it ended.
    fn wait(&mut self) -> std::process::ExitStatus {
        self.child.wait().expect("wait")
    }
}

/// A run folder `<parent>/<name>` holding `run.sh` with `script`, and its pid file's path.
fn run_folder(parent: &Path, name: &str, script: &str) -> (PathBuf, PathBuf) {
    let run_dir = parent.join(name);
    std::fs::create_dir_all(&run_dir).expect("mkdir");
    std::fs::write(run_dir.join("run.sh"), format!("#!/bin/sh\n{script}")).expect("write");
    (run_dir.clone(), parent.join(format!("{name}.pid")))
}

fn gated_command(run_dir: &Path, pid_file: &Path, run_id: &str, grace: Duration) -> String {
    RemoteShell::Posix
        .gated_exec_command(&RunScript {
            run_dir: run_dir.to_str().expect("utf-8"),
            pid_file: pid_file.to_str().expect("utf-8"),
            entrypoint: "run.sh",
            run_id,
            machine: "m1",
            args: &[],
            env: &[],
            grace,
        })
        .expect("POSIX has a gated form")
}

/// Waits until `path` holds at least `n` pids, one per line.
fn wait_for_pids(path: &Path, n: usize) -> Vec<u32> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let pids = testfleet_testkit::process::read_pids(path);
        if pids.len() >= n {
            return pids;
        }
        assert!(
            Instant::now() < deadline,
            "{} never held {n} pids",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn assert_all_gone(pids: &[u32]) {
    let survivors = testfleet_testkit::process::survivors_after(pids, Duration::from_secs(20));
    for pid in &survivors {
        // By pid, never by name: the test must not leave them behind either.
        testfleet_testkit::process::kill_pid(*pid);
    }
    assert!(
        survivors.is_empty(),
        "processes of the run survived: {survivors:?}"
    );
}

const TROUBLEMAKERS: [&str; 5] = ["with space", "it's", "$HOME `id`", "new\nline", "-rf"];

#[test]
fn gated_exec_runs_only_after_the_open_line() {
    assert_eq!(
        ExecGate::OPEN_LINE,
        b"go\n",
        "the scripts compare with `go`"
    );
    for name in TROUBLEMAKERS {
        let parent = tempfile::tempdir().expect("temp dir");
        let out = tempfile::tempdir().expect("temp dir");
        // run.sh also shows that its stdin is at its end, not the session's.
        let (run_dir, pid_file) = run_folder(
            parent.path(),
            name,
            "pwd -P > \"$TF_OUT/cwd\"\ncat > \"$TF_OUT/stdin\"\necho \"$TESTFLEET_RUN_ID\" > \"$TF_OUT/id\"\n",
        );
        let run_id = fresh_id();
        let command = gated_command(&run_dir, &pid_file, &run_id, Duration::from_millis(200));
        for shell in ["/bin/sh", "/bin/bash"] {
            for refused in [&b""[..], b"no\n", b"g"] {
                let status = run_with_stdin(shell, &command, out.path(), refused);
                assert_eq!(status, 125, "{shell} {name:?} {refused:?}");
                assert!(!out.path().join("cwd").exists(), "nothing ran");
                assert!(!pid_file.exists(), "no pid file is left");
            }
        }
        let mut run = GatedRun::start(&command, out.path());
        run.open();
        let status = run.wait();
        assert_eq!(status.code(), Some(0), "{name:?}");
        let cwd = std::fs::read_to_string(out.path().join("cwd")).expect("run.sh ran");
        assert_eq!(
            PathBuf::from(cwd.strip_suffix('\n').unwrap_or(&cwd)),
            std::fs::canonicalize(&run_dir).expect("exists")
        );
        assert_eq!(
            std::fs::read(out.path().join("stdin")).expect("stdin saved"),
            b""
        );
        assert_eq!(
            std::fs::read_to_string(out.path().join("id")).expect("the id"),
            format!("{run_id}\n"),
            "the entrypoint is told its run id"
        );
        assert_eq!(
            std::fs::read_to_string(&pid_file)
                .expect("the pid file")
                .lines()
                .next()
                .unwrap_or_default(),
            run.pgid().to_string(),
            "the pid file names the wrapper, the process group's leader"
        );
    }
}

#[test]
fn the_entrypoints_status_and_signal_come_through_the_wrapper() {
    let parent = tempfile::tempdir().expect("temp dir");
    let out = tempfile::tempdir().expect("temp dir");
    for (script, code, signal) in [
        ("exit 7\n", Some(7), None),
        ("exit 0\n", Some(0), None),
        ("kill -TERM $$\n", None, Some(15)),
        ("kill -SEGV $$\n", None, Some(11)),
    ] {
        use std::os::unix::process::ExitStatusExt as _;
        let (run_dir, pid_file) = run_folder(parent.path(), "status", script);
        let command = gated_command(&run_dir, &pid_file, &fresh_id(), Duration::ZERO);
        let mut run = GatedRun::start(&command, out.path());
        run.open();
        let status = run.wait();
        assert_eq!(
            (status.code(), status.signal()),
            (code, signal),
            "{script:?}"
        );
    }
}

#[test]
fn the_tree_goes_with_the_entrypoint_even_out_of_its_group() {
    let parent = tempfile::tempdir().expect("temp dir");
    let out = tempfile::tempdir().expect("temp dir");
    let record = out.path().join("pids");
    // A background child, one that ignores TERM, one that left the group with setsid, and a
    // double fork: none may outlive run.sh, which ends at once.
    let script = format!(
        "sleep 300 & echo $! >> '{r}'\n\
         (trap '' TERM; exec sleep 300) & echo $! >> '{r}'\n\
         setsid sleep 300 & echo $! >> '{r}'\n\
         sh -c 'sleep 300 & echo $! >> \"$1\"' sh '{r}' &\n\
         while [ \"$(wc -l < '{r}')\" -lt 4 ]; do sleep 0.05; done\n\
         exit 0\n",
        r = record.display()
    );
    let (run_dir, pid_file) = run_folder(parent.path(), "tree", &script);
    let command = gated_command(&run_dir, &pid_file, &fresh_id(), Duration::from_millis(300));
    let mut run = GatedRun::start(&command, out.path());
    run.open();
    let pids = wait_for_pids(&record, 4);
    let status = run.wait();
    assert_eq!(status.code(), Some(0), "the entrypoint's status");
    assert_all_gone(&pids);
    assert!(live_group_members(run.pgid()).is_empty());
}

#[test]
fn the_end_of_stdin_kills_the_whole_tree() {
    let parent = tempfile::tempdir().expect("temp dir");
    let out = tempfile::tempdir().expect("temp dir");
    let record = out.path().join("pids");
    let script = format!(
        "echo $$ >> '{r}'\n\
         (trap '' TERM; exec sleep 300) & echo $! >> '{r}'\n\
         setsid sleep 300 & echo $! >> '{r}'\n\
         sleep 300\n",
        r = record.display()
    );
    let (run_dir, pid_file) = run_folder(parent.path(), "guarded", &script);
    let command = gated_command(&run_dir, &pid_file, &fresh_id(), Duration::from_millis(300));
    let mut run = GatedRun::start(&command, out.path());
    run.open();
    let mut pids = wait_for_pids(&record, 3);
    pids.push(run.pgid());
    run.drop_stdin();
    let _ = run.wait();
    assert_all_gone(&pids);
    // The guard, which did the killing, goes too (and removed the run's cgroup before that).
    let deadline = Instant::now() + Duration::from_secs(20);
    while !live_group_members(run.pgid()).is_empty() {
        assert!(Instant::now() < deadline, "the guard never ended");
        std::thread::sleep(Duration::from_millis(20));
    }
    if let Some(cgroup) = run_cgroup(&pid_file) {
        assert!(
            !cgroup.exists(),
            "the run's cgroup stays: {}",
            cgroup.display()
        );
    }
}

/// Whether this process may create a cgroup v2 beside its own, as the wrapper (its child) will
/// try: then the run's cgroup is what catches a process that clears its environment.
fn can_make_a_cgroup() -> bool {
    let Ok(own) = std::fs::read_to_string("/proc/self/cgroup") else {
        return false;
    };
    let Some(rel) = own.lines().find_map(|line| line.strip_prefix("0::")) else {
        return false;
    };
    for mount in ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"] {
        if !Path::new(mount).join("cgroup.controllers").is_file() {
            continue;
        }
        let probe = PathBuf::from(format!(
            "{mount}{}/testfleet-probe-{}",
            rel.trim_end_matches('/'),
            std::process::id()
        ));
        let made = std::fs::create_dir(&probe).is_ok();
        let _ = std::fs::remove_dir(&probe);
        return made;
    }
    false
}

/// The cgroup a run's pid file names on its second line.
fn run_cgroup(pid_file: &Path) -> Option<PathBuf> {
    let text = std::fs::read_to_string(pid_file).ok()?;
    text.lines().nth(1).map(PathBuf::from)
}

#[test]
fn the_runs_cgroup_catches_a_process_that_clears_its_environment() {
    if !can_make_a_cgroup() {
        eprintln!("not checked here: no cgroup v2 this user may create one in");
        return;
    }
    let parent = tempfile::tempdir().expect("temp dir");
    let out = tempfile::tempdir().expect("temp dir");
    let record = out.path().join("pids");
    // Out of the group and without the marker: only the cgroup knows it.
    let escape = |then: &str| {
        format!(
            "env -i setsid sh -c 'echo $$ >> \"$1\"; exec sleep 300' sh '{r}' &\n\
             while [ ! -s '{r}' ]; do sleep 0.05; done\n{then}",
            r = record.display()
        )
    };

    // The entrypoint ends: the wrapper's sweep finds it in the cgroup.
    let (run_dir, pid_file) = run_folder(parent.path(), "swept", &escape("exit 0\n"));
    let command = gated_command(&run_dir, &pid_file, &fresh_id(), Duration::from_millis(300));
    let mut run = GatedRun::start(&command, out.path());
    run.open();
    let pids = wait_for_pids(&record, 1);
    let cgroup = run_cgroup(&pid_file).expect("the pid file names the run's cgroup");
    assert_eq!(run.wait().code(), Some(0));
    assert_all_gone(&pids);
    assert!(!cgroup.exists(), "the empty cgroup is removed");

    // testfleet kills the run: the kill reads the cgroup from the pid file.
    std::fs::remove_file(&record).expect("rm");
    let (run_dir, pid_file) = run_folder(parent.path(), "killed", &escape("sleep 300\n"));
    let run_id = fresh_id();
    let mut child = start_ungated(&run_dir, &pid_file, &run_id, out.path());
    let mut pids = wait_for_pids(&record, 1);
    pids.push(child.id());
    let cgroup = run_cgroup(&pid_file).expect("the pid file names the run's cgroup");
    assert_eq!(
        run_kill(&pid_file, &run_id, Duration::from_millis(300)),
        Some(0)
    );
    child.wait().expect("the wrapper is reaped");
    assert_all_gone(&pids);
    assert!(!cgroup.exists(), "the empty cgroup is removed");
}

/// Starts the ungated wrapper of `script` in a group of its own, as sshd would.
fn start_ungated(run_dir: &Path, pid_file: &Path, run_id: &str, out: &Path) -> std::process::Child {
    use std::os::unix::process::CommandExt as _;
    let command = posix_exec_command(&RunScript {
        run_dir: run_dir.to_str().expect("utf-8"),
        pid_file: pid_file.to_str().expect("utf-8"),
        entrypoint: "run.sh",
        run_id,
        machine: "m1",
        args: &[],
        env: &[],
        grace: Duration::from_millis(300),
    });
    Command::new("/bin/sh")
        .arg("-c")
        .arg(&command)
        .env("TF_OUT", out)
        .stdin(std::process::Stdio::null())
        .process_group(0)
        .spawn()
        .expect("sh starts")
}

fn run_kill(pid_file: &Path, run_id: &str, grace: Duration) -> Option<i32> {
    let kill = posix_kill_command(pid_file.to_str().expect("utf-8"), run_id, grace);
    Command::new("/bin/sh")
        .arg("-c")
        .arg(&kill)
        .status()
        .expect("sh starts")
        .code()
}

#[test]
fn kill_ends_the_whole_tree_and_says_what_it_found() {
    let parent = tempfile::tempdir().expect("temp dir");
    let out = tempfile::tempdir().expect("temp dir");
    let record = out.path().join("pids");
    // A child that ignores TERM, a grandchild, one out of the group: TERM then KILL reach them.
    let script = format!(
        "(trap '' TERM; exec sleep 300) & echo $! >> '{r}'\n\
         sh -c 'sleep 300 & echo $! >> \"$1\"; wait' sh '{r}' & echo $! >> '{r}'\n\
         setsid sleep 300 & echo $! >> '{r}'\n\
         sleep 300\n",
        r = record.display()
    );
    let (run_dir, pid_file) = run_folder(parent.path(), "run dir 'q'", &script);
    let run_id = fresh_id();
    let mut child = start_ungated(&run_dir, &pid_file, &run_id, out.path());
    let mut pids = wait_for_pids(&record, 4);
    pids.push(child.id());
    let grace = Duration::from_millis(500);
    assert_eq!(
        run_kill(&pid_file, &run_id, grace),
        Some(0),
        "something was killed"
    );
    child.wait().expect("the wrapper is reaped");
    assert_all_gone(&pids);
    assert_eq!(
        run_kill(&pid_file, &run_id, grace),
        Some(KILL_ALREADY_GONE),
        "nothing was left"
    );
}

#[test]
fn kill_without_a_pid_file_says_so() {
    let dir = tempfile::tempdir().expect("temp dir");
    let missing = dir.path().join("never.pid");
    // The command waits up to 5 s for the pid file; that is the price of this test.
    let grace = Duration::from_millis(100);
    assert_eq!(
        run_kill(&missing, &fresh_id(), grace),
        Some(KILL_NO_PID_FILE)
    );
}

#[test]
fn probe_tells_live_runs_from_dead_ones() {
    let runs = tempfile::tempdir().expect("temp dir");
    let out = tempfile::tempdir().expect("temp dir");
    let live_id = fresh_id();
    let (run_dir, pid_file) = run_folder(runs.path(), &live_id, "sleep 300\n");
    let mut live = start_ungated(&run_dir, &pid_file, &live_id, out.path());
    let deadline = Instant::now() + Duration::from_secs(20);
    while !pid_file.exists() {
        assert!(Instant::now() < deadline, "the pid file never appeared");
        std::thread::sleep(Duration::from_millis(20));
    }
    let dead = "01JD0000000000000000000001";
    std::fs::write(runs.path().join(format!("{dead}.pid")), "999999999\n").expect("write");
    std::fs::write(runs.path().join("01JD0000000000000000000002.pid"), "1\n").expect("write");
    let probe = posix_probe_command(
        runs.path().to_str().expect("utf-8"),
        "01JD0000000000000000000002",
    );
    let output = Command::new("/bin/sh")
        .arg("-c")
        .arg(&probe)
        .output()
        .expect("sh starts");
    let mut lines: Vec<String> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_owned)
        .collect();
    lines.sort();
    assert_eq!(lines, [format!("dead {dead}"), format!("live {live_id}")]);
    assert_eq!(
        run_kill(&pid_file, &live_id, Duration::from_millis(200)),
        Some(0)
    );
    live.wait().expect("reaped");
}

#[test]
fn gated_cleanup_removes_the_run_folder_and_pid_file_only_when_opened() {
    use std::os::unix::fs::PermissionsExt as _;
    for name in TROUBLEMAKERS {
        let parent = tempfile::tempdir().expect("temp dir");
        let run_dir = parent.path().join(name);
        std::fs::create_dir_all(run_dir.join("sub/deeper")).expect("mkdir");
        std::fs::write(run_dir.join("sub/deeper/file"), "x").expect("write");
        // A folder the script made unreadable cannot stay behind.
        std::fs::create_dir_all(run_dir.join("locked/inner")).expect("mkdir");
        std::fs::set_permissions(
            run_dir.join("locked"),
            std::fs::Permissions::from_mode(0o000),
        )
        .expect("chmod");
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
    let script = RunScript {
        run_dir: "/C:/r",
        pid_file: "/C:/r.pid",
        entrypoint: "run.ps1",
        run_id: "01JD0000000000000000000000",
        machine: "m1",
        args: &[],
        env: &[],
        grace: Duration::ZERO,
    };
    assert_eq!(windows.gated_exec_command(&script), None);
    assert_eq!(windows.gated_cleanup_command("/C:/r", "/C:/r.pid"), None);
    assert_eq!(windows.probe_command("/C:/runs", script.run_id), None);
}

#[test]
fn windows_exec_payload() {
    let args = [
        "--filter".to_owned(),
        "it's \u{2019}q\u{2019} \"x\" $env:HOME\nline 2".to_owned(),
        String::new(),
    ];
    let env = [
        ScriptVar {
            name: "MODE",
            value: "fast 'n' $loud\n",
            secret: false,
        },
        ScriptVar {
            name: "TOKEN",
            value: "s3cr3t",
            secret: true,
        },
    ];
    let command = windows_exec_command(
        WindowsShell::Powershell,
        &RunScript {
            run_dir: "/C:/Users/ci/.testfleet/runs/it's \u{2019}here\u{2019}",
            pid_file: "/C:/Users/ci/.testfleet/runs/it's \u{2019}here\u{2019}.pid",
            entrypoint: "run.ps1",
            run_id: "01JD0000000000000000000000",
            machine: "win-1",
            args: &args,
            env: &env,
            grace: Duration::ZERO,
        },
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
