//! Drives the real `testfleet` binary with a temp state dir, a temp fleet file and a temp
//! HOME, against in-process SSH servers from testkit.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use testfleet_testkit::server::{ServerConfig, TestServer};

pub const BIN: &str = env!("CARGO_BIN_EXE_testfleet");

/// The controller id of every test installation.
pub const CONTROLLER: &str = "ctl-test";

/// One isolated testfleet installation.
pub struct Env {
    pub dir: tempfile::TempDir,
}

/// What one call printed and how it ended.
#[derive(Debug)]
pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    fn from(output: Output) -> Self {
        Self {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// The one JSON document on stdout.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|error| {
            panic!(
                "stdout is not one JSON document ({error}):\n{}\nstderr:\n{}",
                self.stdout, self.stderr
            )
        })
    }

    /// `data` of an `ok: true` envelope.
    pub fn data(&self) -> Value {
        let json = self.json();
        assert_eq!(json["ok"], true, "{json}\nstderr:\n{}", self.stderr);
        json["data"].clone()
    }

    /// `error.code` of an `ok: false` envelope.
    pub fn error_code(&self) -> String {
        let json = self.json();
        assert_eq!(json["ok"], false, "{json}");
        json["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }
}

impl Env {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir_all(dir.path().join("home")).expect("home");
        Self { dir }
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    pub fn state_dir(&self) -> PathBuf {
        self.root().join("state")
    }

    pub fn fleet_file(&self) -> PathBuf {
        self.root().join("fleet.toml")
    }

    pub fn write_fleet(&self, text: &str) {
        std::fs::write(self.fleet_file(), text).expect("write fleet");
    }

    /// A test directory `name` whose run.sh holds `script`.
    pub fn test_dir(&self, name: &str, script: &str) -> PathBuf {
        let dir = self.root().join("tests").join(name);
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(dir.join("run.sh"), format!("#!/bin/sh\n{script}")).expect("write");
        dir
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(BIN);
        command
            .arg("--fleet")
            .arg(self.fleet_file())
            .arg("--state-dir")
            .arg(self.state_dir())
            .args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.root().join("home"))
            .env("USER", "tester")
            .env("NO_COLOR", "1")
            .env("TESTFLEET_CONTROLLER_ID", CONTROLLER)
            .stdin(Stdio::null());
        command
    }

    pub fn run(&self, args: &[&str]) -> Out {
        Out::from(self.command(args).output().expect("start testfleet"))
    }

    /// Runs with `--json` appended.
    pub fn json(&self, args: &[&str]) -> Out {
        let mut args = args.to_vec();
        args.push("--json");
        self.run(&args)
    }

    /// Polls `status` until `check` accepts the run, or panics at the deadline.
    pub fn poll_status(&self, id: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let run = self.json(&["status", id]).data()["run"].clone();
            if check(&run) {
                return run;
            }
            assert!(Instant::now() < deadline, "run never became {what}: {run}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Polls until `check` holds, or panics at the deadline.
pub fn poll(what: &str, check: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// In-process SSH servers, each a machine `m1`, `m2`, … of the fleet file.
pub struct Servers {
    // Dropped first: the servers kill their processes, then the runtime stops.
    pub servers: Vec<TestServer>,
    _runtime: tokio::runtime::Runtime,
}

impl Servers {
    pub fn start(count: usize) -> Self {
        Self::start_with((0..count).map(|_| ServerConfig::default()).collect())
    }

    /// One server per config, faults and all.
    pub fn start_with(configs: Vec<ServerConfig>) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let servers = configs
            .into_iter()
            .map(|config| runtime.block_on(TestServer::start(config)))
            .collect();
        Self {
            servers,
            _runtime: runtime,
        }
    }

    /// A fleet file with one machine per server.
    pub fn fleet(&self) -> String {
        let mut text = String::from("[defaults]\nuser = \"tester\"\ntimeout = \"5m\"\n");
        for (index, server) in self.servers.iter().enumerate() {
            text.push_str(&format!(
                "\n[machines.m{}]\nhost = \"127.0.0.1\"\nport = {}\nos = \"linux\"\nidentity_file = {:?}\nknown_hosts = {:?}\nlabels = [\"all\"]\n",
                index + 1,
                server.port(),
                server.client_key_path().display().to_string(),
                server.known_hosts_path().display().to_string(),
            ));
        }
        text
    }

    /// An env with this fleet.
    pub fn env(&self) -> Env {
        let env = Env::new();
        env.write_fleet(&self.fleet());
        env
    }
}

/// Insta filters that hide what changes from one run to the next.
pub fn filters(env: &Env) -> Vec<(String, String)> {
    let root = env.root().display().to_string();
    let canonical = env
        .root()
        .canonicalize()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| root.clone());
    vec![
        (regex_escape(&canonical), "[TMP]".to_owned()),
        (regex_escape(&root), "[TMP]".to_owned()),
        (r"[0-9A-HJKMNP-TV-Z]{26}".to_owned(), "[RUN_ID]".to_owned()),
        (
            r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z".to_owned(),
            "[TIME]".to_owned(),
        ),
        (r"\b(\d+\.\ds|\d+ms)\b".to_owned(), "[DUR]".to_owned()),
        (
            r#""duration_ms": \d+"#.to_owned(),
            r#""duration_ms": "[MS]""#.to_owned(),
        ),
        (
            r#""worker_pid": \d+"#.to_owned(),
            r#""worker_pid": "[PID]""#.to_owned(),
        ),
        // Test directories whose script names a temp path hash differently each time.
        (r"\b[0-9a-f]{64}\b".to_owned(), "[HASH]".to_owned()),
        (r"/tmp/\.tmp\w+".to_owned(), "[SERVER_TMP]".to_owned()),
        // testkit servers listen on a random port of 127.0.0.1.
        (
            r"(127\.0\.0\.1\]?):\d+".to_owned(),
            "${1}:[PORT]".to_owned(),
        ),
        // testkit servers generate their host key at start.
        (
            r"SHA256:[A-Za-z0-9+/]+=*".to_owned(),
            "SHA256:[FINGERPRINT]".to_owned(),
        ),
        (
            r#""latency_ms": \d+"#.to_owned(),
            r#""latency_ms": "[MS]""#.to_owned(),
        ),
    ]
}

pub fn regex_escape(text: &str) -> String {
    let mut escaped = String::new();
    for c in text.chars() {
        if "\\.+*?()|[]{}^$#&-~".contains(c) {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

/// Asserts a snapshot of `text` with ids, times, durations, pids and temp paths redacted.
pub fn snapshot(env: &Env, name: &str, text: &str) {
    snapshot_with(env, name, text, &[]);
}

/// [`snapshot`] with `extra` (regex, replacement) filters applied first, for values only
/// the calling test knows (e.g. the OS a check reported).
pub fn snapshot_with(env: &Env, name: &str, text: &str, extra: &[(String, String)]) {
    let mut settings = insta::Settings::clone_current();
    for (regex, replacement) in extra.iter().cloned().chain(filters(env)) {
        settings.add_filter(&regex, replacement);
    }
    settings.set_prepend_module_to_snapshot(false);
    settings.bind(|| insta::assert_snapshot!(name, text));
}

/// A path as a command-line argument (scratch paths are UTF-8).
pub fn str(path: &Path) -> &str {
    path.to_str().expect("utf-8 path")
}

/// The first run of a `run`/`wait` result.
pub fn run_of(out: &Out) -> Value {
    out.data()["runs"][0].clone()
}

/// A run's id.
pub fn id_of(run: &Value) -> String {
    run["id"].as_str().expect("id").to_owned()
}

/// A script that prints `started`, then holds its machine until `marker` exists.
pub fn gated_script(marker: &Path) -> String {
    format!(
        "echo started\nwhile [ ! -e '{}' ]; do sleep 0.05; done\necho finished\n",
        marker.display()
    )
}
