//! A machine reached only through a jump host: two private OpenSSH sshds, the bastion logging
//! the tunnels it opens. The run goes through the bastion (its log shows the forwarded
//! connection), `machines check` too; with the bastion's key unknown the run fails
//! `HOST_KEY_UNKNOWN` naming the bastion; with the bastion stopped, `DIAL_FAILED` naming it.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context as _, Result, ensure};
use testfleet_testkit::sshd::PrivateSshd;

use crate::tf::Tf;

/// The fleet file: `bastion`, and `target` through it (with the bastion's known_hosts given as
/// `bastion_known_hosts`).
fn fleet_text(
    bastion: &PrivateSshd,
    target: &PrivateSshd,
    bastion_known_hosts: &Path,
    root: &Path,
) -> String {
    format!(
        "[machines.bastion]\nhost = \"127.0.0.1\"\nport = {bport}\nuser = {buser:?}\n\
         identity_file = {bkey:?}\nknown_hosts = {bknown:?}\nremote_root = {broot:?}\n\n\
         [machines.target]\nhost = \"127.0.0.1\"\nport = {tport}\nuser = {tuser:?}\n\
         identity_file = {tkey:?}\nknown_hosts = {tknown:?}\nremote_root = {troot:?}\n\
         proxy_jump = \"bastion\"\n",
        bport = bastion.port(),
        buser = bastion.user(),
        bkey = bastion.client_key_path().display().to_string(),
        bknown = bastion_known_hosts.display().to_string(),
        broot = root.join("remote-bastion").display().to_string(),
        tport = target.port(),
        tuser = target.user(),
        tkey = target.client_key_path().display().to_string(),
        tknown = target.known_hosts_path().display().to_string(),
        troot = root.join("remote-target").display().to_string(),
    )
}

pub fn run(bin: &Path) -> Result<(usize, Vec<String>)> {
    eprintln!("\n== e2e through a jump host: two OpenSSH sshds");
    let started = Instant::now();
    let mut failures = Vec::new();
    let outcome = scenarios(bin);
    match outcome {
        Ok(()) => eprintln!("  ok   jump host ({:.1?})", started.elapsed()),
        Err(error) => {
            eprintln!("  FAIL jump host: {error:#}");
            failures.push("jump host".to_owned());
        }
    }
    Ok((1, failures))
}

fn scenarios(bin: &Path) -> Result<()> {
    let mut bastion =
        PrivateSshd::start_unprivileged_with(true).context("failed to start the bastion sshd")?;
    let target = PrivateSshd::start_unprivileged().context("failed to start the target sshd")?;
    let scratch = tempfile::Builder::new()
        .prefix("tf-e2e-jump")
        .tempdir_in(crate::targets::scratch_base())?;
    let root = scratch.path();
    let login_uid = target.uid().context("the login's uid")?;
    for name in ["remote-bastion", "remote-target"] {
        std::fs::create_dir_all(root.join(name))?;
        std::os::unix::fs::chown(root.join(name), Some(login_uid), None)?;
    }
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o755))?;
    }
    let dir =
        crate::targets::fresh_test_dir(&root.join("suite"), "echo \"on $TESTFLEET_MACHINE\"\n")?;
    let dir_text = dir.to_str().context("scratch paths are UTF-8")?;

    let fleet = root.join("fleet.toml");
    std::fs::write(
        &fleet,
        fleet_text(&bastion, &target, &bastion.known_hosts_path(), root),
    )?;
    let tf = Tf {
        bin: bin.to_path_buf(),
        fleet: fleet.clone(),
        state_dir: root.join("state"),
    };

    // Through the bastion: the run completes, and the bastion opened the tunnel to the target.
    let call = tf.call(&["run", dir_text, "-m", "target", "--json"])?;
    let data = call.data()?;
    let run = super::only_run(&data)?;
    ensure!(
        run["status"] == "completed",
        "the run through the jump host: {run}"
    );
    let log = std::fs::read_to_string(super::path_of(&run, "stdout"))?;
    ensure!(log == "on target\n", "stdout: {log:?}");
    let bastion_log = std::fs::read_to_string(bastion.log_path()).unwrap_or_default();
    let forwarded = format!("target 127.0.0.1 port {}", target.port());
    ensure!(
        bastion_log.contains("direct-tcpip") && bastion_log.contains(&forwarded),
        "the bastion's log shows no tunnel to {forwarded}:\n{}",
        bastion_log
            .lines()
            .filter(|line| line.contains("tcpip") || line.contains("direct"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    // `machines check` goes through it too.
    let check = tf.call(&["machines", "check", "target", "--json"])?;
    let checked = check.data()?;
    ensure!(
        checked["machines"][0]["ok"] == true,
        "machines check: {checked}"
    );

    // The same through ~/.ssh/config alone: ProxyJump, and UserKnownHostsFile and
    // IdentityFile for both hosts, as `ssh jumpy` would use them.
    let home = root.join("home");
    std::fs::create_dir_all(home.join(".ssh"))?;
    std::fs::write(
        home.join(".ssh/config"),
        format!(
            "Host jumpy\n  HostName 127.0.0.1\n  Port {tport}\n  User {user}\n  IdentityFile {tkey}\n  \
             UserKnownHostsFile {tknown}\n  ProxyJump bast\n\
             Host bast\n  HostName 127.0.0.1\n  Port {bport}\n  User {user}\n  IdentityFile {bkey}\n  \
             UserKnownHostsFile {bknown}\n",
            tport = target.port(),
            bport = bastion.port(),
            user = target.user(),
            tkey = target.client_key_path().display(),
            bkey = bastion.client_key_path().display(),
            tknown = target.known_hosts_path().display(),
            bknown = bastion.known_hosts_path().display(),
        ),
    )?;
    let config_fleet = root.join("fleet-ssh-config.toml");
    std::fs::write(
        &config_fleet,
        format!(
            "[machines.jumpy]\nremote_root = {:?}\n",
            root.join("remote-target").display().to_string()
        ),
    )?;
    let via_config = Tf {
        fleet: config_fleet,
        ..tf.clone()
    };
    let output = via_config
        .command(&["run", dir_text, "-m", "jumpy", "--json"])
        .env("HOME", &home)
        .env_remove("SSH_AUTH_SOCK")
        .output()?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let json: serde_json::Value = serde_json::from_str(&stdout).with_context(|| {
        format!(
            "not JSON: {stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        )
    })?;
    let run = super::only_run(&json["data"])?;
    ensure!(
        run["status"] == "completed",
        "through ~/.ssh/config's ProxyJump: {run}"
    );
    let tunnels = std::fs::read_to_string(bastion.log_path())
        .unwrap_or_default()
        .matches(&forwarded)
        .count();
    ensure!(
        tunnels >= 3,
        "the bastion's log shows {tunnels} tunnels to {forwarded}, wanted 3 (run, check, run)"
    );

    // The bastion's key unknown: HOST_KEY_UNKNOWN, naming the bastion.
    let empty_known = root.join("empty_known_hosts");
    std::fs::write(&empty_known, "")?;
    let unknown_fleet = root.join("fleet-unknown.toml");
    std::fs::write(
        &unknown_fleet,
        fleet_text(&bastion, &target, &empty_known, root),
    )?;
    let unknown = Tf {
        fleet: unknown_fleet,
        ..tf.clone()
    };
    let call = unknown.call(&["run", dir_text, "-m", "target", "--json"])?;
    let data = call.data()?;
    let run = super::only_run(&data)?;
    let message = super::text(&run, "/error/message");
    ensure!(
        super::text(&run, "/error/code") == "HOST_KEY_UNKNOWN"
            && message.contains(&format!("127.0.0.1:{}", bastion.port())),
        "an unknown bastion key: {run}"
    );

    // The bastion stopped: DIAL_FAILED, naming it.
    bastion.stop();
    let call = tf.call(&["run", dir_text, "-m", "target", "--json"])?;
    let data = call.data()?;
    let run = super::only_run(&data)?;
    let message = super::text(&run, "/error/message");
    ensure!(
        super::text(&run, "/error/code") == "DIAL_FAILED"
            && message.contains(&format!("jump host 127.0.0.1:{}", bastion.port())),
        "with the bastion stopped: {run}"
    );
    Ok(())
}
