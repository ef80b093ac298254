//! What the user reads when something breaks on either side: an unreadable test directory, a
//! read-only or full state directory, a full remote disk, a fleet value that cannot work. Each
//! message is a snapshot; each case also checks that nothing was half-recorded.
//!
//! Permissions do not stop root, so when the tests run as root the commands that must meet a
//! permission error run as `nobody` (and the full disk is a small tmpfs, which needs root).

use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};

use testfleet_testkit::server::{Faults, ServerConfig};

use crate::support::{Env, Out, Servers, snapshot};

const NOBODY: u32 = 65534;

/// Whether this process runs as root: the owner of a file it just created.
fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt as _;
    let probe = tempfile::NamedTempFile::new().expect("a temp file");
    probe.as_file().metadata().expect("stat").uid() == 0
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// Runs `args` (with `--json` when `json`) as a user that permissions apply to: `nobody` when
/// this process is root, this user otherwise.
fn run_unprivileged(env: &Env, args: &[&str], json: bool) -> Out {
    let mut args = args.to_vec();
    if json {
        args.push("--json");
    }
    let mut command = env.command(&args);
    if is_root() {
        command.uid(NOBODY).gid(NOBODY);
    }
    let output = command.output().expect("start testfleet");
    Out {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Lets `nobody` reach and write the env (temp dirs are 0700).
fn open_to_everyone(env: &Env) {
    for dir in [env.root().to_owned(), env.root().join("home")] {
        chmod(&dir, 0o777);
    }
    if env.fleet_file().exists() {
        chmod(&env.fleet_file(), 0o644);
    }
}

/// Every file and folder under `root` (itself included) gets `mode` (folders `mode | 0o111`).
fn chmod_tree(root: &Path, mode: u32) {
    for entry in std::fs::read_dir(root).expect("read dir") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            chmod_tree(&path, mode);
        } else {
            chmod(&path, mode);
        }
    }
    chmod(root, mode | 0o111);
}

fn both(env: &Env, name: &str, json: &Out, human: &Out) {
    snapshot(
        env,
        &format!("faults__{name}"),
        &format!("{}\n--- human stderr ---\n{}", json.stdout, human.stderr),
    );
}

#[test]
fn an_unreadable_file_in_the_test_dir_is_named_with_its_code() {
    let env = Env::new();
    env.write_fleet(
        "[defaults]\nuser = \"tester\"\n\n[machines.m1]\nhost = \"127.0.0.1\"\nport = 1\n",
    );
    let dir = env.test_dir("suite", "echo hi\n");
    std::fs::create_dir_all(dir.join("fixtures/private")).expect("mkdir");
    std::fs::write(dir.join("fixtures/private/key.pem"), "secret").expect("write");
    open_to_everyone(&env);
    chmod_tree(&env.root().join("tests"), 0o755);
    chmod(&dir.join("fixtures/private"), 0o000);
    let dir_arg = dir.to_str().expect("utf-8");

    for args in [vec!["run", dir_arg, "-m", "m1"], vec!["hash", dir_arg]] {
        let json = run_unprivileged(&env, &args, true);
        assert_eq!(json.code, 2, "{}{}", json.stdout, json.stderr);
        assert_eq!(json.error_code(), "TEST_DIR_UNREADABLE");
        assert_eq!(
            json.json()["error"]["details"]["path"],
            dir.join("fixtures/private").display().to_string()
        );
        let human = run_unprivileged(&env, &args, false);
        assert_eq!(human.code, 2);
        both(
            &env,
            &format!("unreadable_test_dir_{}", args[0]),
            &json,
            &human,
        );
    }
    chmod(&dir.join("fixtures/private"), 0o755);
    let runs = run_unprivileged(&env, &["list"], true).data()["runs"].clone();
    assert_eq!(runs, serde_json::json!([]), "nothing was recorded");
}

#[test]
fn a_read_only_state_dir_is_named_and_still_read() {
    let servers = Servers::start(1);
    let env = servers.env();
    let dir = env.test_dir("suite", "echo hi\n");
    let done = env.json(&["run", dir.to_str().expect("utf-8"), "-m", "m1"]);
    assert_eq!(done.code, 0, "{}{}", done.stdout, done.stderr);
    let id = done.data()["runs"][0]["id"]
        .as_str()
        .expect("an id")
        .to_owned();
    open_to_everyone(&env);
    chmod_tree(&env.root().join("tests"), 0o755);
    chmod_tree(&env.state_dir(), 0o444);

    // Writing is refused, with the reason and what to do.
    let args = ["run", dir.to_str().expect("utf-8"), "-m", "m1", "--detach"];
    let json = run_unprivileged(&env, &args, true);
    assert_eq!(json.code, 3, "{}{}", json.stdout, json.stderr);
    assert_eq!(json.error_code(), "STORE_ERROR");
    let human = run_unprivileged(&env, &args, false);
    both(&env, "read_only_state_dir_run", &json, &human);

    // Reading still works, with a warning.
    let listed = run_unprivileged(&env, &["list"], true);
    assert_eq!(listed.code, 0, "{}{}", listed.stdout, listed.stderr);
    assert_eq!(listed.data()["runs"][0]["id"], id.as_str());
    let status = run_unprivileged(&env, &["status", &id], false);
    assert_eq!(status.code, 0, "{}", status.stderr);
    assert!(status.stdout.contains("completed"), "{}", status.stdout);
    snapshot(&env, "faults__read_only_state_dir_status", &status.stderr);

    chmod_tree(&env.state_dir(), 0o755);
    let runs = env.json(&["list"]).data()["runs"].clone();
    assert_eq!(
        runs.as_array().map(Vec::len),
        Some(1),
        "nothing more recorded"
    );
}

/// A tmpfs of `size` mounted on `at` for the life of the value.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Self {
        std::fs::create_dir_all(at).expect("mkdir");
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .expect("start mount");
        assert!(status.success(), "mount a tmpfs on {}", at.display());
        Self(at.to_owned())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// Fills the file system of `dir` to the last byte.
fn fill(dir: &Path) {
    use std::io::Write as _;
    let mut file = std::fs::File::create(dir.join("filler")).expect("create filler");
    let block = vec![0u8; 4096];
    while file.write_all(&block).is_ok() {}
    let byte = [0u8; 1];
    while file.write_all(&byte).is_ok() {}
}

#[test]
fn a_full_state_dir_is_named_with_what_is_free() {
    if !is_root() {
        eprintln!("not checked: mounting a small tmpfs for a full state dir needs root");
        return;
    }
    let env = Env::new();
    env.write_fleet(
        "[defaults]\nuser = \"tester\"\n\n[machines.m1]\nhost = \"127.0.0.1\"\nport = 1\n",
    );
    let dir = env.test_dir("suite", "echo hi\n");
    let _tmpfs = Tmpfs::mount(&env.state_dir(), "2m");
    let listed = env.json(&["list"]);
    assert_eq!(listed.code, 0, "{}{}", listed.stdout, listed.stderr);
    fill(&env.state_dir());

    let args = ["run", dir.to_str().expect("utf-8"), "-m", "m1", "--detach"];
    let json = env.json(&args);
    assert_eq!(json.code, 3, "{}{}", json.stdout, json.stderr);
    assert_eq!(json.error_code(), "STORE_ERROR");
    let message = json.json()["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(message.contains("is full"), "{message}");
    let human = env.run(&args);
    assert_eq!(human.code, 3);
    both(&env, "full_state_dir_run", &json, &human);

    std::fs::remove_file(env.state_dir().join("filler")).expect("free the disk");
    let runs = env.json(&["list"]).data()["runs"].clone();
    assert_eq!(runs, serde_json::json!([]), "no half-written run");
}

#[test]
fn a_full_remote_disk_is_named_with_what_is_free() {
    let servers = Servers::start_with(vec![ServerConfig {
        faults: Faults {
            disk_full_after_bytes: Some(100_000),
            ..Faults::default()
        },
        ..ServerConfig::default()
    }]);
    let env = servers.env();
    let dir = env.test_dir("suite", "echo hi\n");
    std::fs::write(dir.join("big.bin"), vec![7u8; 1_000_000]).expect("write");
    let args = ["run", dir.to_str().expect("utf-8"), "-m", "m1"];
    let json = env.json(&args);
    assert_eq!(json.code, 1, "{}{}", json.stdout, json.stderr);
    let run = json.data()["runs"][0].clone();
    assert_eq!(run["status"], "failed");
    assert_eq!(run["error"]["code"], "UPLOAD_FAILED");
    let message = run["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("the remote disk is full at"), "{message}");
    let human = env.run(&args);
    assert_eq!(human.code, 1);
    snapshot(&env, "faults__full_remote_disk", &human.stdout);
    let runs = servers.servers[0].home().join(".testfleet/runs");
    let left: Vec<_> = std::fs::read_dir(&runs)
        .map(|entries| entries.flatten().map(|entry| entry.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "the remote folders were removed: {left:?}");
}
