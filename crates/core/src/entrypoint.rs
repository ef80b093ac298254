//! Which script starts a test on a machine: `run.ps1` on Windows, `run.sh` elsewhere.

use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::code::ErrorCode;

/// A machine's operating system as the fleet file names it, lower-cased (`linux`, `macos`,
/// `windows`, …).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub struct TargetOs(String);

/// The two ways testfleet talks to a remote shell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OsFamily {
    /// Every OS but `windows`: the entrypoint is `run.sh`, run by a POSIX `sh` (its shebang picks
    /// the interpreter).
    Posix,
    /// `windows`: the entrypoint is `run.ps1`, run by PowerShell.
    Windows,
}

impl TargetOs {
    /// The OS called `name`, trimmed and lower-cased, so that `" Windows "` is `windows`. Any name
    /// is accepted, an empty one included (the fleet file refuses that before); every name but
    /// `windows` is a POSIX machine.
    pub fn new(name: &str) -> Self {
        Self(name.trim().to_lowercase())
    }

    /// The OS `linux`, a POSIX machine.
    pub fn linux() -> Self {
        Self::new("linux")
    }

    /// The OS `windows`.
    pub fn windows() -> Self {
        Self::new("windows")
    }

    /// The lower-cased name, as the run record's `os` field holds it.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// How testfleet speaks to a machine of this OS: [`OsFamily::Windows`] for `windows` only,
    /// [`OsFamily::Posix`] for every other name.
    pub fn family(&self) -> OsFamily {
        if self.0 == "windows" {
            OsFamily::Windows
        } else {
            OsFamily::Posix
        }
    }

    /// The entrypoint file name for this OS.
    pub fn entrypoint(&self) -> &'static str {
        match self.family() {
            OsFamily::Windows => "run.ps1",
            OsFamily::Posix => "run.sh",
        }
    }
}

impl From<String> for TargetOs {
    fn from(name: String) -> Self {
        Self::new(&name)
    }
}

impl From<TargetOs> for String {
    fn from(os: TargetOs) -> Self {
        os.0
    }
}

impl fmt::Display for TargetOs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The entrypoint wanted for an OS is not in the test directory.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "test directory {dir} has no {wanted}, the entrypoint for {os} machines; add {wanted} at the \
     top of the directory"
)]
pub struct EntrypointError {
    /// The OS of the machine whose entrypoint is missing.
    pub os: TargetOs,
    /// The resolved test directory that was searched (the manifest's root).
    pub dir: PathBuf,
    /// The file wanted at the top of `dir`: `run.sh`, or `run.ps1` for Windows.
    pub wanted: &'static str,
}

impl EntrypointError {
    /// Always [`ErrorCode::MissingEntrypoint`].
    pub fn code(&self) -> ErrorCode {
        ErrorCode::MissingEntrypoint
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(os: &str, files: &[&str], expected: Result<&str, &str>) {
        let dir = tempfile::tempdir().expect("a temp dir can be created");
        for file in files {
            let path = dir.path().join(file);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).expect("the temp dir is writable");
            }
            std::fs::write(path, "x").expect("the temp dir is writable");
        }
        let manifest = crate::hash::hash_dir(dir.path()).expect("the temp dir hashes");
        let actual = manifest.entrypoint_for(&TargetOs::new(os));
        match (actual, expected) {
            (Ok(found), Ok(wanted)) => assert_eq!(found, wanted),
            (Err(error), Err(wanted)) => {
                assert_eq!(error.wanted, wanted);
                assert_eq!(error.code(), ErrorCode::MissingEntrypoint);
                let message = error.to_string();
                assert!(message.contains(wanted), "{message}");
                assert!(message.contains(&os.trim().to_lowercase()), "{message}");
                assert!(
                    message.contains(&manifest.root.display().to_string()),
                    "{message}"
                );
            }
            (actual, expected) => panic!("{os}: got {actual:?}, wanted {expected:?}"),
        }
    }

    #[test]
    fn entrypoints_by_os() {
        check("linux", &["sub/run.sh"], Err("run.sh"));
        check("linux", &["run.sh"], Ok("run.sh"));
        check("macos", &["run.sh", "run.ps1"], Ok("run.sh"));
        check("freebsd", &["run.sh"], Ok("run.sh"));
        check("windows", &["run.ps1"], Ok("run.ps1"));
        check("Windows", &["run.sh", "run.ps1"], Ok("run.ps1"));
        check("WINDOWS", &["run.sh"], Err("run.ps1"));
        check("linux", &["run.ps1"], Err("run.sh"));
        check("Linux", &[], Err("run.sh"));
    }

    #[cfg(unix)]
    #[test]
    fn a_symlinked_entrypoint_is_missing() {
        let dir = tempfile::tempdir().expect("a temp dir can be created");
        std::fs::write(dir.path().join("real.sh"), "x").expect("writable");
        std::os::unix::fs::symlink("real.sh", dir.path().join("run.sh")).expect("symlink");
        let manifest = crate::hash::hash_dir(dir.path()).expect("the temp dir hashes");
        assert!(manifest.entrypoint_for(&TargetOs::linux()).is_err());
    }
}
