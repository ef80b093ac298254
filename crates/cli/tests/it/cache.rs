//! The machines' file cache through the binary, against in-process servers that serve
//! `hardlink@openssh.com`: `upload` in the run record, `--no-cache`, `cache = false`,
//! `machines cache`, `gc --remote`, and a bad `cache_max`.

use std::path::Path;
use std::time::{Duration, SystemTime};

use serde_json::{Value, json};
use testfleet_testkit::server::ServerConfig;

use crate::support::{Env, Servers, id_of, run_of, str};

fn servers() -> Servers {
    Servers::start_with(vec![ServerConfig {
        hardlink: true,
        ..ServerConfig::default()
    }])
}

/// A test directory of `run.sh` and three data files.
fn test_dir(env: &Env) -> std::path::PathBuf {
    let dir = env.test_dir("cached", "cat a.txt b.txt sub/c.txt\n");
    std::fs::write(dir.join("a.txt"), "a\n").expect("write");
    std::fs::write(dir.join("b.txt"), "bb\n").expect("write");
    std::fs::create_dir_all(dir.join("sub")).expect("mkdir");
    std::fs::write(dir.join("sub/c.txt"), "ccc\n").expect("write");
    dir
}

fn upload_of(run: &Value) -> (u64, u64, u64, u64) {
    let upload = &run["upload"];
    let field = |name: &str| upload[name].as_u64().unwrap_or_else(|| panic!("{run}"));
    (
        field("files"),
        field("bytes"),
        field("cached_files"),
        field("cached_bytes"),
    )
}

fn run_ok(env: &Env, args: &[&str]) -> Value {
    let out = env.json(args);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    run_of(&out)
}

/// Moves the last use of every cached file two hours back.
fn age_cache(dir: &Path) {
    for entry in std::fs::read_dir(dir).expect("cache listed") {
        let path = entry.expect("entry").path();
        let times = std::fs::FileTimes::new()
            .set_accessed(SystemTime::now() - Duration::from_secs(2 * 3600))
            .set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(946_684_800));
        std::fs::File::open(&path)
            .and_then(|file| file.set_times(times))
            .expect("times set");
    }
}

#[test]
fn a_re_run_sends_only_what_changed_and_says_so() {
    let servers = servers();
    let env = servers.env();
    let dir = test_dir(&env);
    let run_args = ["run", str(&dir), "-m", "m1"];
    // run.sh (executable) and three files: 45 bytes. The first run makes the machine's cache
    // folder, and leaves small files out of it; the next run adds them.
    for _ in 0..2 {
        let run = run_ok(&env, &run_args);
        assert_eq!(upload_of(&run), (4, 45, 0, 0), "{run}");
    }
    let second = run_ok(&env, &run_args);
    assert_eq!(upload_of(&second), (0, 0, 4, 45), "{second}");

    std::fs::write(dir.join("b.txt"), "changed\n").expect("write");
    let out = env.run(&run_args);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stdout
            .contains("sent 1 file (8 B), 3 from the cache (42 B)"),
        "{}",
        out.stdout
    );

    // --no-cache sends everything, and so does a rerun with it.
    let all = run_ok(&env, &["run", str(&dir), "-m", "m1", "--no-cache"]);
    assert_eq!(upload_of(&all), (4, 50, 0, 0), "{all}");
    let again = run_ok(&env, &["rerun", &id_of(&all), "--no-cache"]);
    assert_eq!(upload_of(&again).2, 0, "{again}");

    let usage = env.json(&["machines", "cache", "m1"]);
    assert_eq!(usage.code, 0, "{}{}", usage.stdout, usage.stderr);
    let data = usage.data();
    // a, the old and the new b, c and run.sh.
    assert_eq!(
        (data["files"].clone(), data["bytes"].clone()),
        (json!(5), json!(53))
    );
    assert_eq!(data["enabled"], json!(true));
    assert_eq!(data["max_bytes"], json!(10_u64 << 30));
}

#[test]
fn cache_false_in_the_fleet_file_sends_every_file() {
    let servers = servers();
    let env = servers.env();
    env.write_fleet(&format!("{}cache = false\n", servers.fleet()));
    let dir = test_dir(&env);
    run_ok(&env, &["run", str(&dir), "-m", "m1"]);
    let second = run_ok(&env, &["run", str(&dir), "-m", "m1"]);
    assert_eq!(upload_of(&second), (4, 45, 0, 0), "{second}");
    let usage = env.json(&["machines", "cache", "m1"]).data();
    assert_eq!(
        (usage["files"].clone(), usage["enabled"].clone()),
        (json!(0), json!(false))
    );
}

#[test]
fn gc_remote_evicts_down_to_cache_max_and_removes_kept_run_folders() {
    let servers = servers();
    let env = servers.env();
    let dir = test_dir(&env);
    run_ok(&env, &["run", str(&dir), "-m", "m1"]);
    let kept = run_ok(&env, &["run", str(&dir), "-m", "m1", "--keep-remote"]);
    let remote_dir = kept["remote_dir"].as_str().expect("remote_dir").to_owned();
    assert!(Path::new(&remote_dir).is_dir(), "{kept}");
    let cache_dir = servers.servers[0].home().join(".testfleet/cache");

    // Just used: a limit of 0 evicts nothing yet; the kept folder is younger than a day.
    env.write_fleet(&format!("{}cache_max = 0\n", servers.fleet()));
    let out = env.json(&["gc", "--remote"]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert_eq!(
        out.data()["remote"],
        json!([{ "machine": "m1", "cache_files_removed": 0, "cache_bytes_removed": 0,
                 "run_dirs_removed": [], "error": null }])
    );

    age_cache(&cache_dir);
    let dry = env.json(&["gc", "--remote", "--older-than", "0s", "--dry-run"]);
    assert_eq!(dry.code, 0, "{}{}", dry.stdout, dry.stderr);
    assert_eq!(dry.data()["remote"][0]["cache_files_removed"], json!(4));
    assert_eq!(
        dry.data()["remote"][0]["run_dirs_removed"],
        json!([id_of(&kept)])
    );
    assert!(Path::new(&remote_dir).is_dir(), "a dry run removes nothing");
    assert_eq!(std::fs::read_dir(&cache_dir).expect("list").count(), 4);

    let out = env.run(&["gc", "--remote", "--older-than", "0s", "-m", "m1"]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stdout
            .contains("m1: removed 4 files (45 B) from the cache and 1 run folder"),
        "{}",
        out.stdout
    );
    assert!(!Path::new(&remote_dir).exists());
    assert_eq!(std::fs::read_dir(&cache_dir).expect("list").count(), 0);
    // What was evicted is sent again.
    let next = run_ok(&env, &["run", str(&dir), "-m", "m1"]);
    assert_eq!(upload_of(&next), (4, 45, 0, 0), "{next}");
}

#[test]
fn a_bad_cache_max_is_a_fleet_error_naming_it() {
    let servers = servers();
    let env = servers.env();
    env.write_fleet(&format!("{}cache_max = \"lots\"\n", servers.fleet()));
    let out = env.json(&["machines", "cache", "m1"]);
    assert_eq!(out.code, 2, "{}{}", out.stdout, out.stderr);
    assert_eq!(out.error_code(), "FLEET_CONFIG_INVALID");
    let message = out.json()["error"]["message"].to_string();
    assert!(message.contains("invalid size \\\"lots\\\""), "{message}");
    let out = env.json(&["gc", "-m", "m1"]);
    assert_eq!(
        out.code, 2,
        "-m needs --remote: {}{}",
        out.stdout, out.stderr
    );
}

#[test]
fn a_detached_run_hands_no_cache_to_its_worker() {
    let servers = servers();
    let env = servers.env();
    let dir = test_dir(&env);
    let run_args = ["run", str(&dir), "-m", "m1"];
    run_ok(&env, &run_args);
    run_ok(&env, &run_args);
    let detach = |extra: &[&str]| {
        let mut args = vec!["run", str(&dir), "-m", "m1", "--detach"];
        args.extend_from_slice(extra);
        let id = id_of(&run_ok(&env, &args));
        env.poll_status(&id, "completed", |run| run["status"] == "completed")
    };
    assert_eq!(upload_of(&detach(&[])), (0, 0, 4, 45));
    assert_eq!(upload_of(&detach(&["--no-cache"])), (4, 45, 0, 0));
}
