//! Where testfleet keeps its files: the fleet file (`docs/contract.md#fleet-file`) and the
//! state directory (`docs/contract.md#local-state`), resolved from flags, then environment
//! variables, then the XDG base directories.

use std::path::{Path, PathBuf};

/// The process environment testfleet reads, captured once so that resolution is testable.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Env {
    pub home: Option<PathBuf>,
    pub user: Option<String>,
    pub xdg_config_home: Option<PathBuf>,
    pub xdg_state_home: Option<PathBuf>,
    /// `TESTFLEET_STORE_URL`: the run store, overriding the fleet file's `[store] url`.
    pub store_url: Option<String>,
    /// `TESTFLEET_CONTROLLER_ID`: this controller's id, instead of the host name.
    pub controller_id: Option<String>,
}

impl Env {
    /// The environment of this process. Empty or relative XDG variables are ignored, as the
    /// XDG base directory specification requires.
    pub fn from_process() -> Self {
        let path_var = |name: &str| {
            std::env::var_os(name)
                .map(PathBuf::from)
                .filter(|path| path.is_absolute())
        };
        Self {
            home: path_var("HOME"),
            user: std::env::var("USER")
                .ok()
                .or_else(|| std::env::var("LOGNAME").ok())
                .filter(|user| !user.is_empty()),
            xdg_config_home: path_var("XDG_CONFIG_HOME"),
            xdg_state_home: path_var("XDG_STATE_HOME"),
            store_url: std::env::var("TESTFLEET_STORE_URL")
                .ok()
                .filter(|url| !url.is_empty()),
            controller_id: std::env::var("TESTFLEET_CONTROLLER_ID")
                .ok()
                .filter(|id| !id.is_empty()),
        }
    }

    /// Expands a leading `~` or `~/` against the home directory.
    pub fn expand_tilde(&self, path: &str) -> PathBuf {
        match (path.strip_prefix('~'), &self.home) {
            (Some(""), Some(home)) => home.clone(),
            (Some(rest), Some(home)) if rest.starts_with('/') => {
                home.join(rest.trim_start_matches('/'))
            }
            _ => PathBuf::from(path),
        }
    }

    /// `$XDG_CONFIG_HOME/testfleet/fleet.toml`, `~/.config/testfleet/fleet.toml` without it.
    pub fn default_fleet_file(&self) -> Option<PathBuf> {
        let base = self
            .xdg_config_home
            .clone()
            .or_else(|| self.home.as_ref().map(|home| home.join(".config")))?;
        Some(base.join("testfleet").join("fleet.toml"))
    }

    /// `$XDG_STATE_HOME/testfleet`, `~/.local/state/testfleet` without it.
    pub fn default_state_dir(&self) -> Option<PathBuf> {
        let base = self.xdg_state_home.clone().or_else(|| {
            self.home
                .as_ref()
                .map(|home| home.join(".local").join("state"))
        })?;
        Some(base.join("testfleet"))
    }

    /// `~/.ssh/config`.
    pub fn ssh_config_file(&self) -> Option<PathBuf> {
        self.home
            .as_ref()
            .map(|home| home.join(".ssh").join("config"))
    }
}

/// Makes `path` absolute against the current directory (without touching the file system).
pub fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> Env {
        Env {
            home: Some("/home/ci".into()),
            user: Some("ci".into()),
            xdg_config_home: None,
            xdg_state_home: None,
            ..Env::default()
        }
    }

    #[test]
    fn tilde_expansion() {
        let env = env();
        for (input, expected) in [
            ("~", "/home/ci"),
            ("~/.ssh/id", "/home/ci/.ssh/id"),
            ("~other/x", "~other/x"),
            ("/abs", "/abs"),
            ("rel/~", "rel/~"),
        ] {
            assert_eq!(env.expand_tilde(input), PathBuf::from(expected), "{input}");
        }
    }

    #[test]
    fn xdg_defaults() {
        let mut env = env();
        assert_eq!(
            env.default_fleet_file(),
            Some("/home/ci/.config/testfleet/fleet.toml".into())
        );
        assert_eq!(
            env.default_state_dir(),
            Some("/home/ci/.local/state/testfleet".into())
        );
        env.xdg_config_home = Some("/xdg/config".into());
        env.xdg_state_home = Some("/xdg/state".into());
        assert_eq!(
            env.default_fleet_file(),
            Some("/xdg/config/testfleet/fleet.toml".into())
        );
        assert_eq!(env.default_state_dir(), Some("/xdg/state/testfleet".into()));
    }
}
