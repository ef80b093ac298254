//! Commands that need no machine: hash (against the shared vectors), list and status on an
//! empty store, machines list/add/remove, completions.

use std::path::Path;

use base64::Engine as _;
use serde_json::Value;

use crate::support::{Env, snapshot};

#[test]
fn hash_prints_the_digest_of_every_vector() {
    let vectors: Value = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../core/tests/data/hash-vectors.json"),
        )
        .expect("vectors"),
    )
    .expect("json");
    let env = Env::new();
    let cases = vectors["cases"].as_array().expect("cases");
    assert!(!cases.is_empty());
    for (index, case) in cases.iter().enumerate() {
        let dir = env.root().join(format!("case{index}"));
        std::fs::create_dir_all(&dir).expect("mkdir");
        for entry in case["entries"].as_array().expect("entries") {
            let path = dir.join(entry["path"].as_str().expect("path"));
            match entry["kind"].as_str().unwrap_or("file") {
                "dir" => std::fs::create_dir_all(&path).expect("mkdir"),
                "symlink" => {
                    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
                    std::os::unix::fs::symlink(entry["target"].as_str().expect("target"), &path)
                        .expect("symlink");
                }
                _ => {
                    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
                    let bytes = if let Some(text) = entry["text"].as_str() {
                        text.as_bytes().to_vec()
                    } else if let Some(b64) = entry["b64"].as_str() {
                        base64::engine::general_purpose::STANDARD
                            .decode(b64)
                            .expect("base64")
                    } else if let Some(repeat) = entry["repeat"].as_str() {
                        repeat
                            .repeat(
                                usize::try_from(entry["times"].as_u64().expect("times"))
                                    .expect("fits"),
                            )
                            .into_bytes()
                    } else {
                        Vec::new()
                    };
                    std::fs::write(&path, bytes).expect("write");
                }
            }
        }
        let expected = case["expected"].as_str().expect("expected");
        let human = env.run(&["hash", dir.to_str().expect("utf-8")]);
        assert_eq!(human.code, 0, "{}: {}", case["name"], human.stderr);
        assert_eq!(human.stdout, format!("{expected}\n"), "{}", case["name"]);
        let data = env.json(&["hash", dir.to_str().expect("utf-8")]).data();
        assert_eq!(data["hash"], expected, "{}", case["name"]);
    }
}

#[test]
fn hash_reports_counts_and_skipped_symlinks() {
    let env = Env::new();
    let dir = env.test_dir("linked", "echo hi\n");
    std::os::unix::fs::symlink("run.sh", dir.join("link")).expect("symlink");
    let out = env.json(&["hash", dir.to_str().expect("utf-8")]);
    assert_eq!(out.code, 0);
    assert!(
        out.stderr.contains("skipped symlink link"),
        "{}",
        out.stderr
    );
    snapshot(&env, "hash_json", &out.stdout);
    snapshot(
        &env,
        "hash_human",
        &env.run(&["hash", dir.to_str().expect("utf-8")]).stdout,
    );
}

#[test]
fn an_empty_store_lists_nothing() {
    let env = Env::new();
    let out = env.json(&["list"]);
    assert_eq!(out.code, 0);
    snapshot(&env, "list_empty_json", &out.stdout);
    let human = env.run(&["list"]);
    assert_eq!(human.code, 0);
    snapshot(&env, "list_empty_human", &human.stdout);
    assert!(env.state_dir().join("testfleet.db").exists());
}

#[test]
fn machines_add_list_remove_edit_the_fleet_file() {
    let env = Env::new();
    let original = "# my fleet\n[defaults]\nuser = \"ci\" # who logs in\n\n# the lab box\n[machines.keep]\nhost = \"10.0.0.1\"\n";
    std::fs::write(env.fleet_file(), original).expect("write");
    let out = env.json(&[
        "machines", "add", "box", "--host", "10.0.0.9", "--port", "2222", "-l", "x86",
    ]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(out.data()["machine"], "box");
    snapshot(&env, "machines_add_json", &out.stdout);
    let human = env.run(&[
        "machines",
        "add",
        "arm",
        "--host",
        "10.0.0.10",
        "--os",
        "macos",
    ]);
    assert_eq!(human.code, 0, "{}", human.stderr);
    snapshot(&env, "machines_add_human", &human.stdout);
    let again = env.json(&["machines", "add", "box"]);
    assert_eq!(
        (again.code, again.error_code().as_str()),
        (2, "INVALID_ARGUMENT")
    );
    let text = std::fs::read_to_string(env.fleet_file()).expect("read");
    assert!(
        text.starts_with(original),
        "the file is only appended to, comments kept: {text}"
    );
    assert!(
        text.contains("[machines.box]\nhost = \"10.0.0.9\"\nport = 2222\n"),
        "{text}"
    );
    assert!(
        text.contains("[machines.arm]\nhost = \"10.0.0.10\"\nos = \"macos\"\n"),
        "{text}"
    );
    let list = env.json(&["machines", "list"]);
    snapshot(&env, "machines_list_json", &list.stdout);
    snapshot(
        &env,
        "machines_list_human",
        &env.run(&["machines", "list"]).stdout,
    );

    let removed = env.json(&["machines", "remove", "box"]);
    assert_eq!(removed.code, 0, "{}", removed.stderr);
    assert_eq!(removed.data()["machine"], "box");
    snapshot(&env, "machines_remove_json", &removed.stdout);
    let removed = env.run(&["machines", "remove", "arm"]);
    assert_eq!(removed.code, 0, "{}", removed.stderr);
    snapshot(&env, "machines_remove_human", &removed.stdout);
    let text = std::fs::read_to_string(env.fleet_file()).expect("read");
    assert_eq!(text, original, "removing what was added restores the file");
    let names: Vec<Value> = env.json(&["machines", "list"]).data()["machines"]
        .as_array()
        .expect("machines")
        .iter()
        .map(|machine| machine["name"].clone())
        .collect();
    assert_eq!(names, [serde_json::json!("keep")]);
    let unknown = env.json(&["machines", "remove", "box"]);
    assert_eq!(
        (unknown.code, unknown.error_code().as_str()),
        (2, "UNKNOWN_MACHINE")
    );
}

#[test]
fn completions_and_help() {
    let env = Env::new();
    let out = env.run(&["completions", "bash"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.starts_with("_testfleet() {\n"), "{}", out.stdout);
    for command in ["machines", "logs", "gc", "completions", "rerun"] {
        assert!(out.stdout.contains(command), "completes {command}");
    }
    for shell in ["bash", "zsh", "fish"] {
        let script = env.run(&["completions", shell]).stdout;
        assert!(
            !script.contains("_worker") && !script.contains("_cleanup"),
            "{shell} offers no hidden command"
        );
    }
    assert!(
        out.stdout
            .lines()
            .any(|line| line.trim().starts_with("complete -F _testfleet ")
                && line.trim().ends_with(" testfleet")),
        "registers the function for testfleet"
    );
    let head: String = out
        .stdout
        .lines()
        .take(4)
        .map(|line| format!("{line}\n"))
        .collect();
    snapshot(&env, "completions_bash_head", &head);
    let help = env.run(&["--help"]);
    assert_eq!(help.code, 0);
    assert!(!help.stdout.contains("_worker"), "the worker is hidden");
    snapshot(&env, "help", &help.stdout);
    // Every command's help ends with examples.
    for command in [
        &["run"][..],
        &["rerun"],
        &["status"],
        &["wait"],
        &["logs"],
        &["list"],
        &["cancel"],
        &["report"],
        &["machines"],
        &["machines", "list"],
        &["machines", "add"],
        &["machines", "remove"],
        &["machines", "check"],
        &["machines", "trust"],
        &["hash"],
        &["gc"],
        &["completions"],
    ] {
        let mut args = command.to_vec();
        args.push("--help");
        let help = env.run(&args);
        assert_eq!(help.code, 0, "{command:?}");
        let examples = help
            .stdout
            .rfind("Examples:\n")
            .unwrap_or_else(|| panic!("{command:?} has examples: {}", help.stdout));
        assert!(
            help.stdout[examples..]
                .lines()
                .skip(1)
                .all(|line| line.starts_with("  testfleet ")),
            "{command:?}: the help ends with examples: {}",
            help.stdout
        );
    }
    snapshot(&env, "run_help", &env.run(&["run", "--help"]).stdout);
}

#[test]
fn dynamic_completion_offers_machines_labels_and_run_ids() {
    let env = Env::new();
    env.write_fleet(
        "[defaults]\nuser = \"ci\"\n[machines.linux-1]\nhost = \"127.0.0.1\"\nport = 1\nlabels = [\"x86\"]\n\
         [machines.linux-2]\nhost = \"127.0.0.1\"\nport = 1\nlabels = [\"x86\", \"arm\"]\n",
    );
    let dir = env.test_dir("suite", "true\n");
    // A run that fails to dial is recorded all the same.
    let run = env.json(&["run", dir.to_str().expect("utf-8"), "-m", "linux-1"]);
    let id = run.json()["data"]["runs"][0]["id"]
        .as_str()
        .expect("a run is recorded")
        .to_owned();
    let complete = |index: usize, words: &[&str]| {
        let output = env
            .command(&[])
            .env_remove("NO_COLOR")
            .env("COMPLETE", "bash")
            .env("_CLAP_IFS", "\n")
            .env("_CLAP_COMPLETE_INDEX", index.to_string())
            .env("TESTFLEET_FLEET", env.fleet_file())
            .env("TESTFLEET_STATE_DIR", env.state_dir())
            .arg("--")
            .args(words)
            .output()
            .expect("start testfleet");
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        complete(4, &["testfleet", "run", "d", "-m", ""]),
        ["linux-1", "linux-2"]
    );
    assert_eq!(
        complete(4, &["testfleet", "run", "d", "-m", "linux-2"]),
        ["linux-2"]
    );
    assert_eq!(
        complete(4, &["testfleet", "run", "d", "-l", ""]),
        ["arm", "x86"]
    );
    assert_eq!(
        complete(3, &["testfleet", "machines", "trust", "l"]),
        ["linux-1", "linux-2"]
    );
    let ids = complete(2, &["testfleet", "status", ""]);
    assert!(
        ids.contains(&"last".to_owned()) && ids.contains(&id),
        "{ids:?}"
    );
    let by_prefix = complete(2, &["testfleet", "logs", &id[..6].to_lowercase()]);
    assert_eq!(by_prefix, [id]);
}
