//! What a run's script is given: `-- ARGS`, `-e KEY=VALUE`, `-e KEY` (a secret), testfleet's own
//! variables; excludes; and how the run ids people type name runs.

use std::path::Path;

use crate::support::{Env, Out, Servers, run_of, str};

const SECRET: &str = "s3cr3t-VALUE-that-must-not-leak";

/// Prints every argument and variable it was given as hex, one per line, so that the log holds
/// no secret in clear.
const SCRIPT: &str = "hex() { printf %s \"$1\" | od -An -tx1 | tr -d ' \\n'; echo; }\n\
    echo \"argc=$#\"\n\
    for a in \"$@\"; do hex \"$a\"; done\n\
    hex \"$MODE\"\n\
    hex \"$TOKEN\"\n\
    echo \"machine=$TESTFLEET_MACHINE id=$TESTFLEET_RUN_ID\"\n\
    case $TESTFLEET_ARTIFACTS in /*/artifacts) echo artifacts-ok;; esac\n";

fn hex(text: &str) -> String {
    text.bytes().map(|b| format!("{b:02x}")).collect()
}

/// Runs `testfleet args...` with `TOKEN` set to [`SECRET`] in its environment.
fn run_with_secret(env: &Env, args: &[&str]) -> Out {
    let output = env
        .command(args)
        .env("TOKEN", SECRET)
        .output()
        .expect("start testfleet");
    Out {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Every file under `dir`, with its bytes.
fn files_under(dir: &Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut found = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(next) = todo.pop() {
        for entry in std::fs::read_dir(&next).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                todo.push(path);
            } else if let Ok(bytes) = std::fs::read(&path) {
                found.push((path, bytes));
            }
        }
    }
    found
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle.as_bytes())
}

#[test]
fn args_and_env_arrive_exactly_and_the_secret_is_never_stored() {
    let servers = Servers::start(1);
    let env = servers.env();
    let dir = env.test_dir("args", SCRIPT);
    let mode = "it's \"quoted\" $HOME `id`\nline 2\\";
    let args = ["--filter", "a b", "", "$x\n'y'"];
    let mode_arg = format!("MODE={mode}");
    let mut argv = vec![
        "run",
        str(&dir),
        "-m",
        "m1",
        "-e",
        &mode_arg,
        "-e",
        "TOKEN",
        "--json",
        "--",
    ];
    argv.extend(args);
    let out = run_with_secret(&env, &argv);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let run = run_of(&out);
    assert_eq!(run["status"], "completed", "{run}");
    assert_eq!(run["args"], serde_json::json!(args));
    assert_eq!(
        run["env"],
        serde_json::json!([
            { "name": "MODE", "value": mode, "secret": false },
            { "name": "TOKEN", "value": null, "secret": true },
        ])
    );
    let log = std::fs::read_to_string(run["paths"]["stdout"].as_str().expect("path"))
        .expect("stdout log");
    let mut expected = format!("argc={}\n", args.len());
    for arg in args {
        expected.push_str(&format!("{}\n", hex(arg)));
    }
    expected.push_str(&format!("{}\n{}\n", hex(mode), hex(SECRET)));
    expected.push_str(&format!(
        "machine=m1 id={}\nartifacts-ok\n",
        run["id"].as_str().expect("id")
    ));
    assert_eq!(log, expected);

    // The same directory with other arguments is another run; the same again is the same key.
    let other = run_with_secret(
        &env,
        &["run", str(&dir), "-m", "m1", "-e", "TOKEN", "--json"],
    );
    assert_eq!(other.code, 0, "{}", other.stderr);
    assert_ne!(run_of(&other)["id"], run["id"]);

    // A detached run reads the secret in its worker, which inherits it.
    let detached = run_with_secret(
        &env,
        &[
            "run",
            str(&dir),
            "-m",
            "m1",
            "-e",
            "TOKEN",
            "--detach",
            "--json",
        ],
    );
    assert_eq!(detached.code, 0, "{}", detached.stderr);
    let id = run_of(&detached)["id"].as_str().expect("id").to_owned();
    let done = env.poll_status(&id, "finished", |run| run["status"] == "completed");
    let log = std::fs::read_to_string(done["paths"]["stdout"].as_str().expect("path"))
        .expect("stdout log");
    assert!(log.contains(&hex(SECRET)), "{log}");

    // The secret is in no output, no log, no record: grep everything testfleet wrote.
    let status = env.json(&["status", &id, "--events"]);
    let listed = env.json(&["list"]);
    for text in [
        &out.stdout,
        &out.stderr,
        &other.stdout,
        &detached.stdout,
        &status.stdout,
        &listed.stdout,
    ] {
        assert!(!text.contains(SECRET), "{text}");
    }
    let files = files_under(&env.state_dir());
    assert!(
        files
            .iter()
            .any(|(path, _)| path.extension().is_some_and(|e| e == "db" || e == "sqlite")),
        "the store is among them: {:?}",
        files.iter().map(|(p, _)| p).collect::<Vec<_>>()
    );
    for (path, bytes) in files {
        assert!(
            !contains(&bytes, SECRET),
            "{} holds the secret",
            path.display()
        );
    }
}

#[test]
fn bad_env_and_args_are_invalid_arguments() {
    let servers = Servers::start(1);
    let env = servers.env();
    let dir = env.test_dir("bad", "true\n");
    for (args, needle) in [
        (vec!["-e", "UNSET_HERE"], "UNSET_HERE is not set"),
        (vec!["-e", "1X=2"], "invalid variable name"),
        (vec!["-e", "TESTFLEET_RUN_ID=x"], "TESTFLEET_"),
        (vec!["-e", "A=1", "-e", "A=2"], "given twice"),
        (vec!["--exclude", "[z-a]"], "--exclude"),
    ] {
        let mut argv = vec!["run", str(&dir), "-m", "m1"];
        argv.extend(args.iter().copied());
        let out = env.json(&argv);
        assert_eq!(
            out.error_code(),
            "INVALID_ARGUMENT",
            "{args:?}: {}",
            out.stdout
        );
        assert!(out.stdout.contains(needle), "{args:?}: {}", out.stdout);
    }
    assert_eq!(env.json(&["list"]).data()["runs"], serde_json::json!([]));
}

#[test]
fn excludes_leave_files_out_of_the_upload_and_hash_says_what() {
    let servers = Servers::start(1);
    let env = servers.env();
    let dir = env.test_dir(
        "excl",
        "for f in .git/HEAD node_modules/x big.log keep.log; do [ -e \"$f\" ] && echo \"has $f\"; done; true\n",
    );
    for (path, text) in [
        (".git/HEAD", "ref"),
        ("node_modules/x", "1"),
        ("big.log", "l"),
        ("keep.log", "k"),
    ] {
        let full = dir.join(path);
        std::fs::create_dir_all(full.parent().expect("parent")).expect("mkdir");
        std::fs::write(full, text).expect("write");
    }
    std::fs::write(dir.join(".testfleetignore"), "node_modules/\n").expect("write");
    let hashed = env.json(&[
        "hash",
        str(&dir),
        "--exclude",
        "*.log",
        "--exclude",
        "!keep.log",
        "-v",
    ]);
    let excluded = hashed.data()["excluded"].clone();
    assert_eq!(excluded["dirs"], 2, "{excluded}");
    assert_eq!(excluded["files"], 1, "{excluded}");
    assert_eq!(excluded["ignore_file"], ".testfleetignore");
    assert_eq!(
        excluded["paths"],
        serde_json::json!([".git/", "big.log", "node_modules/"])
    );
    let human = env.run(&["hash", str(&dir)]);
    assert!(
        human
            .stderr
            .contains("excluded 2 folders and 0 files (.git/ by default, .testfleetignore)"),
        "{}",
        human.stderr
    );
    let out = env.json(&[
        "run",
        str(&dir),
        "-m",
        "m1",
        "--exclude",
        "*.log",
        "--exclude",
        "!keep.log",
    ]);
    let run = run_of(&out);
    assert_eq!(run["test_dir_hash"], hashed.data()["hash"]);
    assert_eq!(run["excludes"], serde_json::json!(["*.log", "!keep.log"]));
    let log = std::fs::read_to_string(run["paths"]["stdout"].as_str().expect("path"))
        .expect("stdout log");
    assert_eq!(log, "has keep.log\n");
}

#[test]
fn runs_are_named_by_prefix_or_last_and_rerun_repeats_one() {
    let servers = Servers::start(2);
    let env = servers.env();
    let dir = env.test_dir("ids", "echo \"args:$*\"; echo \"mode:$MODE\"\n");
    // `--json` before `--`: after it, it would be an argument of the script.
    let first = env.run(&[
        "run",
        str(&dir),
        "-m",
        "m1",
        "-e",
        "MODE=one",
        "--json",
        "--",
        "a",
        "b c",
    ]);
    let first = run_of(&first);
    let first_id = first["id"].as_str().expect("id").to_owned();
    let second = run_of(&env.json(&["run", str(&dir), "-m", "m2"]));
    let second_id = second["id"].as_str().expect("id").to_owned();

    // A unique prefix, in any case; `last` and `@`; `last -m`.
    let unique = (4..26)
        .map(|len| &first_id[..len])
        .find(|prefix| !second_id.starts_with(prefix))
        .expect("two ids differ somewhere");
    let status = env.json(&["status", &unique.to_lowercase()]);
    assert_eq!(status.data()["run"]["id"], first_id.as_str());
    for last in ["last", "@", "LAST"] {
        assert_eq!(
            env.json(&["status", last]).data()["run"]["id"],
            second_id.as_str()
        );
    }
    assert_eq!(
        env.json(&["status", "last", "-m", "m1"]).data()["run"]["id"],
        first_id.as_str()
    );
    assert_eq!(
        env.run(&["logs", "@", "-m", "m1"]).stdout,
        "args:a b c\nmode:one\n"
    );

    // An ambiguous prefix lists the candidates; when the ids share 4 characters.
    if first_id[..4] == second_id[..4] {
        let ambiguous = env.json(&["status", &first_id[..4]]);
        assert_eq!(ambiguous.error_code(), "INVALID_ARGUMENT");
        let details = ambiguous.json()["error"]["details"].clone();
        assert_eq!(
            details["candidates"].as_array().map(Vec::len),
            Some(2),
            "{details}"
        );
        let human = env.run(&["status", &first_id[..4]]);
        assert!(
            human.stderr.contains(&first_id) && human.stderr.contains(&second_id),
            "{}",
            human.stderr
        );
    }

    // Malformed ids are quoted as typed, never rewritten.
    for (typed, code) in [
        ("ZZZZZZZZZZZZZZZZZZZZZZZZZZ", "INVALID_ARGUMENT"),
        ("01J", "INVALID_ARGUMENT"),
        ("01JI", "INVALID_ARGUMENT"),
        ("7ZZZ", "RUN_NOT_FOUND"),
    ] {
        let out = env.json(&["status", typed]);
        assert_eq!(out.error_code(), code, "{typed}: {}", out.stdout);
        assert!(
            out.stdout.contains(&format!("\\\"{typed}\\\"")) || out.stdout.contains(typed),
            "{typed}: {}",
            out.stdout
        );
    }
    let no_runs = crate::support::Env::new();
    no_runs.write_fleet(&servers.fleet());
    assert_eq!(
        no_runs.json(&["status", "last"]).error_code(),
        "RUN_NOT_FOUND"
    );
    assert_eq!(
        env.json(&["status", &first_id, "-m", "m1"]).error_code(),
        "INVALID_ARGUMENT",
        "-m goes with last only"
    );

    // rerun: the same directory, machine, arguments and variables, as a new run.
    let again = env.json(&["rerun", &unique[..unique.len().max(4)]]);
    assert_eq!(again.code, 0, "{}{}", again.stdout, again.stderr);
    let again = run_of(&again);
    assert_ne!(again["id"], first_id.as_str());
    assert_eq!(again["machine"], "m1");
    assert_eq!(again["args"], first["args"]);
    assert_eq!(again["env"], first["env"]);
    assert_eq!(
        std::fs::read_to_string(again["paths"]["stdout"].as_str().expect("path")).expect("log"),
        "args:a b c\nmode:one\n"
    );
}
