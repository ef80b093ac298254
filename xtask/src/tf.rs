//! Runs the real `testfleet` binary with a given fleet file and state dir.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

/// The binary and the global options every call shares.
#[derive(Debug, Clone)]
pub struct Tf {
    pub bin: PathBuf,
    pub fleet: PathBuf,
    pub state_dir: PathBuf,
}

/// What one call printed and how it ended.
#[derive(Debug)]
pub struct Call {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Call {
    /// The JSON document on stdout.
    pub fn json(&self) -> Result<Value> {
        serde_json::from_str(&self.stdout).with_context(|| {
            format!(
                "stdout is not one JSON document:\n{}\nstderr:\n{}",
                self.stdout, self.stderr
            )
        })
    }

    /// `data` of a successful envelope.
    pub fn data(&self) -> Result<Value> {
        let json = self.json()?;
        if json["ok"] != Value::Bool(true) {
            bail!("expected ok: true, got {json}\nstderr:\n{}", self.stderr);
        }
        Ok(json["data"].clone())
    }

    /// `error.code` of a failed envelope.
    pub fn error_code(&self) -> Result<String> {
        let json = self.json()?;
        json["error"]["code"]
            .as_str()
            .map(str::to_owned)
            .with_context(|| format!("no error code in {json}"))
    }

    pub fn expect_code(&self, wanted: i32) -> Result<&Self> {
        if self.code != Some(wanted) {
            bail!(
                "exit code {:?}, wanted {wanted}\nstdout:\n{}\nstderr:\n{}",
                self.code,
                self.stdout,
                self.stderr
            );
        }
        Ok(self)
    }
}

impl Tf {
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(&self.bin);
        command
            .arg("--fleet")
            .arg(&self.fleet)
            .arg("--state-dir")
            .arg(&self.state_dir)
            .args(args);
        command.env("NO_COLOR", "1").stdin(Stdio::null());
        command
    }

    pub fn call(&self, args: &[&str]) -> Result<Call> {
        let output: Output = self
            .command(args)
            .output()
            .with_context(|| format!("failed to start {} {args:?}", self.bin.display()))?;
        Ok(Call {
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        })
    }

    pub fn with_fleet(&self, fleet: &Path) -> Tf {
        Tf {
            fleet: fleet.to_path_buf(),
            ..self.clone()
        }
    }
}
