//! known_hosts: checking an offered host key (plain, hashed `|1|`, host lists, `[host]:port`,
//! `*`/`?` wildcards, `!` negation, `@revoked`) and recording a new one atomically.
//!
//! russh's own checker stops at the first line it cannot split (an `@revoked` line, a tab), so
//! each line is parsed here with ssh-key's `known_hosts::Entry` and a bad line is skipped, as
//! OpenSSH does.

use std::io::{self, Write as _};
use std::path::Path;

use hmac::{Hmac, KeyInit as _, Mac as _};
use russh::keys::ssh_key::known_hosts::{Entry, HostPatterns, Marker};
use russh::keys::{Algorithm, PublicKey};

/// What known_hosts says about an offered key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// A line for this host holds this very key.
    Known,
    /// No line names this host.
    Unknown,
    /// Lines name this host with other keys only; the first such line (1-based).
    Mismatch { line: usize },
    /// An `@revoked` line holds this key (1-based).
    Revoked { line: usize },
}

/// The name a host is recorded under: `host` for port 22, `[host]:port` otherwise.
pub(crate) fn host_entry_name(host: &str, port: u16) -> String {
    if port == 22 {
        host.to_owned()
    } else {
        format!("[{host}]:{port}")
    }
}

/// Checks `key` for `host:port` against the file at `path`; a missing file knows nothing.
///
/// # Errors
/// Reading the file failed for another reason than its absence.
pub(crate) fn check(path: &Path, host: &str, port: u16, key: &PublicKey) -> io::Result<Verdict> {
    let entries = matching_entries(path, host, port)?;
    if let Some((line, _)) = entries.iter().find(|(_, entry)| {
        entry.marker() == Some(&Marker::Revoked) && key_eq(entry.public_key(), key)
    }) {
        return Ok(Verdict::Revoked { line: *line });
    }
    let plain: Vec<&(usize, Entry)> = entries
        .iter()
        .filter(|(_, entry)| entry.marker().is_none())
        .collect();
    if plain
        .iter()
        .any(|(_, entry)| key_eq(entry.public_key(), key))
    {
        return Ok(Verdict::Known);
    }
    // Another key of the same algorithm is a changed key. A key of another algorithm only is
    // treated the same way: the client asked for the recorded algorithms first, so a server
    // that offers none of them is not the host that was recorded.
    match plain.first() {
        Some((line, _)) => Ok(Verdict::Mismatch { line: *line }),
        None => Ok(Verdict::Unknown),
    }
}

/// The algorithms of the plain keys recorded for `host:port`, in file order, so that the
/// client can ask the server for one of them first (as OpenSSH does).
pub(crate) fn recorded_algorithms(path: &Path, host: &str, port: u16) -> Vec<Algorithm> {
    let mut algorithms: Vec<Algorithm> = Vec::new();
    for (_, entry) in matching_entries(path, host, port).unwrap_or_default() {
        let algorithm = entry.public_key().algorithm();
        if entry.marker().is_none() && !algorithms.contains(&algorithm) {
            algorithms.push(algorithm);
        }
    }
    algorithms
}

/// Appends `host key` (or `[host]:port key`) to the file at `path` atomically: the new
/// contents are written to a temporary file beside it, which then replaces it.
///
/// # Errors
/// Any I/O error; the original file is then unchanged.
pub(crate) fn learn(path: &Path, host: &str, port: u16, key: &PublicKey) -> io::Result<()> {
    let key_text = key.to_openssh().map_err(io::Error::other)?;
    let parent = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent)?;
    let mut contents = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(error) => return Err(error),
    };
    if !contents.is_empty() && !contents.ends_with(b"\n") {
        contents.push(b'\n');
    }
    contents.extend_from_slice(format!("{} {key_text}\n", host_entry_name(host, port)).as_bytes());

    let file_name = path
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temp_path = parent.join(format!(".{file_name}.{}.tmp", std::process::id()));
    let write = || -> io::Result<()> {
        let mut file = std::fs::File::create(&temp_path)?;
        file.write_all(&contents)?;
        file.sync_all()?;
        if let Ok(metadata) = std::fs::metadata(path) {
            std::fs::set_permissions(&temp_path, metadata.permissions())?;
        }
        std::fs::rename(&temp_path, path)
    };
    let result = write();
    if result.is_err() {
        let _ = std::fs::remove_file(&temp_path);
    }
    result
}

/// Every parsable line naming `host:port`, with its 1-based line number.
fn matching_entries(path: &Path, host: &str, port: u16) -> io::Result<Vec<(usize, Entry)>> {
    let text = match std::fs::read(path) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(error),
    };
    let name = host_entry_name(host, port);
    let mut matches = Vec::new();
    for (line_idx, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        // ssh-key splits on single spaces; OpenSSH also accepts tabs and runs of blanks.
        let normalised = line.split_whitespace().collect::<Vec<_>>().join(" ");
        let Ok(entry) = normalised.parse::<Entry>() else {
            continue;
        };
        if patterns_match(entry.host_patterns(), &name) {
            matches.push((line_idx + 1, entry));
        }
    }
    Ok(matches)
}

fn patterns_match(patterns: &HostPatterns, name: &str) -> bool {
    match patterns {
        HostPatterns::HashedName { salt, hash } => {
            let Ok(mac) = Hmac::<sha1::Sha1>::new_from_slice(salt) else {
                return false;
            };
            mac.chain_update(name.as_bytes()).verify_slice(hash).is_ok()
        }
        HostPatterns::Patterns(list) => {
            let mut positive = false;
            for pattern in list {
                if let Some(negated) = pattern.strip_prefix('!') {
                    if glob_match(negated.as_bytes(), name.as_bytes()) {
                        return false;
                    }
                } else if glob_match(pattern.as_bytes(), name.as_bytes()) {
                    positive = true;
                }
            }
            positive
        }
    }
}

/// OpenSSH's `match_pattern`: `*` any run, `?` any one character; host names compare
/// case-insensitively.
fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    match (pattern.split_first(), text.split_first()) {
        (None, None) => true,
        (Some((b'*', rest)), _) => {
            glob_match(rest, text) || (!text.is_empty() && glob_match(pattern, &text[1..]))
        }
        (Some((b'?', rest)), Some((_, text_rest))) => glob_match(rest, text_rest),
        (Some((p, rest)), Some((t, text_rest))) => {
            p.eq_ignore_ascii_case(t) && glob_match(rest, text_rest)
        }
        _ => false,
    }
}

/// Keys compare by their key data; comments do not matter.
fn key_eq(a: &PublicKey, b: &PublicKey) -> bool {
    a.key_data() == b.key_data()
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_A: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJdD7y3aLq454yWBdwLWbieU1ebz9/cu7/QEXn9OIeZJ";
    const KEY_B: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA6rWI3G2sz07DnfFlrouTcysQlj2P+jpNSOEWD9OJ3X";

    fn key(text: &str) -> PublicKey {
        PublicKey::from_openssh(text).expect("the test keys are valid")
    }

    fn check_text(text: &str, host: &str, port: u16, offered: &str) -> Verdict {
        let dir = tempfile::tempdir().expect("a temp dir can be created");
        let path = dir.path().join("known_hosts");
        std::fs::write(&path, text).expect("the temp file can be written");
        check(&path, host, port, &key(offered)).expect("the file is readable")
    }

    #[test]
    fn verdicts() {
        let hashed_example_com = "|1|O33ESRMWPVkMYIwJ1Uw+n877jTo=|nuuC5vEqXlEZ/8BXQR7m619W6Ak=";
        for (text, host, port, offered, expected) in [
            (
                format!("[h]:2222 {KEY_A}\n"),
                "h",
                2222,
                KEY_A,
                Verdict::Known,
            ),
            (format!("h {KEY_A}\n"), "h", 22, KEY_A, Verdict::Known),
            (format!("h {KEY_A}\n"), "h", 2222, KEY_A, Verdict::Unknown),
            (
                format!("# c\nx,h,y {KEY_A}\n"),
                "h",
                22,
                KEY_A,
                Verdict::Known,
            ),
            (format!("x\th\t{KEY_A}\n"), "h", 22, KEY_A, Verdict::Unknown),
            (format!("h\t{KEY_A}\n"), "h", 22, KEY_A, Verdict::Known),
            (
                format!("*.lab {KEY_A}\n"),
                "a.lab",
                22,
                KEY_A,
                Verdict::Known,
            ),
            (
                format!("*.lab,!b.lab {KEY_A}\n"),
                "b.lab",
                22,
                KEY_A,
                Verdict::Unknown,
            ),
            (
                format!("h {KEY_B}\n"),
                "h",
                22,
                KEY_A,
                Verdict::Mismatch { line: 1 },
            ),
            (
                format!("garbage\nh {KEY_B}\n"),
                "h",
                22,
                KEY_A,
                Verdict::Mismatch { line: 2 },
            ),
            (
                format!("@revoked h {KEY_A}\nh {KEY_A}\n"),
                "h",
                22,
                KEY_A,
                Verdict::Revoked { line: 1 },
            ),
            (
                format!("@revoked h {KEY_B}\nh {KEY_A}\n"),
                "h",
                22,
                KEY_A,
                Verdict::Known,
            ),
            (
                format!("{hashed_example_com} {KEY_A}\n"),
                "example.com",
                22,
                KEY_A,
                Verdict::Known,
            ),
            (
                format!("{hashed_example_com} {KEY_B}\n"),
                "example.com",
                22,
                KEY_A,
                Verdict::Mismatch { line: 1 },
            ),
            (
                format!("{hashed_example_com} {KEY_A}\n"),
                "example.org",
                22,
                KEY_A,
                Verdict::Unknown,
            ),
        ] {
            assert_eq!(
                check_text(&text, host, port, offered),
                expected,
                "{text:?} {host}:{port}"
            );
        }
    }

    #[test]
    fn learn_appends_and_is_then_known() {
        let dir = tempfile::tempdir().expect("a temp dir can be created");
        let path = dir.path().join("sub").join("known_hosts");
        learn(&path, "127.0.0.1", 2222, &key(KEY_A)).expect("learning works");
        std::fs::write(
            &path,
            std::fs::read_to_string(&path).expect("written").trim_end(),
        )
        .expect("rewritable");
        learn(&path, "h", 22, &key(KEY_B)).expect("learning works");
        let text = std::fs::read_to_string(&path).expect("written");
        assert_eq!(text, format!("[127.0.0.1]:2222 {KEY_A}\nh {KEY_B}\n"));
        assert_eq!(
            check(&path, "127.0.0.1", 2222, &key(KEY_A)).expect("readable"),
            Verdict::Known
        );
        assert_eq!(
            recorded_algorithms(&path, "h", 22),
            vec![Algorithm::Ed25519]
        );
    }
}
