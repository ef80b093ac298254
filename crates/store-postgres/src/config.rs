//! Where the database is and how to log in: a `postgres://` URL, the schema, the TLS mode, and
//! the password from the usual PostgreSQL places.
//!
//! The URL is handed to `tokio-postgres` after three parameters it does not know are taken out:
//! `schema` (testfleet's own), and `sslmode`/`sslrootcert` (libpq's, whose `verify-ca` and
//! `verify-full` modes `tokio-postgres` does not parse). The password comes, in libpq's order,
//! from the URL, then `PGPASSWORD`, then the password file (`PGPASSFILE`, else `~/.pgpass`),
//! which libpq ignores — and so does this — when group or others may read it.
//!
//! Nothing here ever prints the password: [`PgConfig`]'s `Debug` and [`PgConfig::describe`]
//! name the user, host, port and database only.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use percent_encoding::percent_decode_str;
use postgres::config::{Host, SslMode};

/// The schema when none is given: several fleets can share one database, each in a schema.
pub const DEFAULT_SCHEMA: &str = "testfleet";

/// How long opening the store waits for the server before it reports it unreachable.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How the connection is encrypted (libpq's `sslmode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// `disable`: never.
    Disable,
    /// `prefer` (the default, as in libpq): TLS when the server offers it, its certificate not
    /// checked.
    Prefer,
    /// `require`: TLS or nothing, the certificate not checked.
    Require,
    /// `verify-ca`: TLS with a certificate signed by a trusted root.
    VerifyCa,
    /// `verify-full`: `verify-ca`, and the certificate names the host.
    VerifyFull,
}

impl TlsMode {
    fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "disable" => Self::Disable,
            "allow" | "prefer" => Self::Prefer,
            "require" => Self::Require,
            "verify-ca" => Self::VerifyCa,
            "verify-full" => Self::VerifyFull,
            _ => return None,
        })
    }

    /// Whether the server's certificate must be signed by a trusted root.
    pub fn verifies(self) -> bool {
        matches!(self, Self::VerifyCa | Self::VerifyFull)
    }
}

/// What may be wrong with a store URL. The messages never quote the URL (it may hold a
/// password).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("the store URL must start with postgres:// or postgresql://")]
    Scheme,
    #[error("the store URL is not a valid PostgreSQL URL: {0}")]
    Url(String),
    #[error(
        "invalid schema name {0:?}: use 1 to 63 lower-case letters, digits or '_', not starting with a digit"
    )]
    Schema(String),
    #[error("invalid sslmode {0:?}: use disable, prefer, require, verify-ca or verify-full")]
    SslMode(String),
    #[error("the store URL names no host")]
    NoHost,
    #[error("the store URL names no user, and neither PGUSER nor USER is set")]
    NoUser,
}

/// The environment that supplies what the URL leaves out, captured once so that it is
/// testable.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct PgEnv {
    /// `PGPASSWORD`.
    pub password: Option<String>,
    /// `PGPASSFILE`.
    pub passfile: Option<PathBuf>,
    /// `PGUSER`, else `USER`.
    pub user: Option<String>,
    /// The home directory, for `~/.pgpass` and `~/.postgresql/root.crt`.
    pub home: Option<PathBuf>,
}

impl fmt::Debug for PgEnv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgEnv")
            .field("password", &self.password.as_ref().map(|_| "<hidden>"))
            .field("passfile", &self.passfile)
            .field("user", &self.user)
            .field("home", &self.home)
            .finish()
    }
}

impl PgEnv {
    /// This process's environment.
    pub fn from_process() -> Self {
        let var = |name: &str| std::env::var(name).ok().filter(|value| !value.is_empty());
        Self {
            password: var("PGPASSWORD"),
            passfile: var("PGPASSFILE").map(PathBuf::from),
            user: var("PGUSER").or_else(|| var("USER")),
            home: std::env::var_os("HOME").map(PathBuf::from),
        }
    }
}

/// A parsed store URL, with the password resolved.
#[derive(Clone)]
pub struct PgConfig {
    pub(crate) client: postgres::Config,
    pub(crate) schema: String,
    pub(crate) tls: TlsMode,
    pub(crate) root_cert: Option<PathBuf>,
}

impl fmt::Debug for PgConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

impl PgConfig {
    /// Parses `url` (`postgres://user@host:5432/db?schema=fleet_a&sslmode=require`). The schema is
    /// the URL's `schema`, else `schema`, else [`DEFAULT_SCHEMA`].
    ///
    /// # Errors
    /// [`ConfigError`] for another scheme, a malformed URL, an invalid schema name or sslmode,
    /// no host, or no user.
    pub fn parse(url: &str, schema: Option<&str>, env: &PgEnv) -> Result<Self, ConfigError> {
        let rest = url
            .strip_prefix("postgres://")
            .or_else(|| url.strip_prefix("postgresql://"))
            .ok_or(ConfigError::Scheme)?;
        let (location, query) = rest.split_once('?').unwrap_or((rest, ""));
        let mut kept = Vec::new();
        let mut url_schema = None;
        let mut tls = TlsMode::Prefer;
        let mut root_cert = None;
        for pair in query.split('&').filter(|pair| !pair.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let decoded = percent_decode_str(value).decode_utf8_lossy().into_owned();
            match key {
                "schema" => url_schema = Some(decoded),
                "sslmode" => {
                    tls = TlsMode::parse(&decoded).ok_or(ConfigError::SslMode(decoded))?;
                }
                "sslrootcert" => root_cert = Some(PathBuf::from(decoded)),
                _ => kept.push(pair),
            }
        }
        let mut client_url = format!("postgres://{location}");
        if !kept.is_empty() {
            client_url.push('?');
            client_url.push_str(&kept.join("&"));
        }
        let mut client: postgres::Config =
            client_url.parse().map_err(|error: postgres::Error| {
                // tokio-postgres' parse errors name the offending option, never its value.
                ConfigError::Url(error.to_string())
            })?;
        let schema = url_schema
            .as_deref()
            .or(schema)
            .unwrap_or(DEFAULT_SCHEMA)
            .to_owned();
        check_schema(&schema)?;
        if client.get_hosts().is_empty() {
            return Err(ConfigError::NoHost);
        }
        if client.get_user().is_none() {
            let user = env.user.clone().ok_or(ConfigError::NoUser)?;
            client.user(&user);
        }
        if client.get_password().is_none() {
            if let Some(password) = &env.password {
                client.password(password);
            } else if let Some(password) = password_from_file(&client, env) {
                client.password(password);
            }
        }
        client.ssl_mode(match tls {
            TlsMode::Disable => SslMode::Disable,
            TlsMode::Prefer => SslMode::Prefer,
            TlsMode::Require | TlsMode::VerifyCa | TlsMode::VerifyFull => SslMode::Require,
        });
        client.connect_timeout(CONNECT_TIMEOUT);
        client.application_name("testfleet");
        if tls.verifies() && root_cert.is_none() {
            root_cert = env
                .home
                .as_ref()
                .map(|home| home.join(".postgresql").join("root.crt"));
        }
        Ok(Self {
            client,
            schema,
            tls,
            root_cert,
        })
    }

    /// The schema the store's tables live in.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// The hosts, as `host:port` (a Unix socket as its directory).
    pub fn endpoints(&self) -> Vec<String> {
        let ports = self.client.get_ports();
        self.client
            .get_hosts()
            .iter()
            .enumerate()
            .map(|(host_idx, host)| {
                let port = ports
                    .get(host_idx)
                    .or_else(|| ports.first())
                    .copied()
                    .unwrap_or(5432);
                match host {
                    Host::Tcp(name) => format!("{name}:{port}"),
                    #[cfg(unix)]
                    Host::Unix(path) => format!("{}:{port}", path.display()),
                }
            })
            .collect()
    }

    /// `user@host:port/database (schema S)`: everything but the password.
    pub fn describe(&self) -> String {
        format!(
            "postgres://{}@{}/{} (schema {})",
            self.client.get_user().unwrap_or_default(),
            self.endpoints().join(","),
            self.client
                .get_dbname()
                .unwrap_or_else(|| self.client.get_user().unwrap_or_default()),
            self.schema
        )
    }
}

fn check_schema(schema: &str) -> Result<(), ConfigError> {
    let mut bytes = schema.bytes();
    let first_ok = bytes
        .next()
        .is_some_and(|b| b.is_ascii_lowercase() || b == b'_');
    let rest_ok = bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if first_ok && rest_ok && schema.len() <= 63 {
        Ok(())
    } else {
        Err(ConfigError::Schema(schema.to_owned()))
    }
}

/// The password for `client`'s first host, port, database and user from the password file,
/// as libpq finds it: `PGPASSFILE`, else `~/.pgpass`; the first matching line wins; a file that
/// group or others may read is ignored (with a warning).
fn password_from_file(client: &postgres::Config, env: &PgEnv) -> Option<String> {
    let path = env
        .passfile
        .clone()
        .or_else(|| env.home.as_ref().map(|home| home.join(".pgpass")))?;
    if !private_file(&path)? {
        tracing::warn!(
            file = %path.display(),
            "the password file is readable by group or others; it is ignored (chmod 0600 it)"
        );
        return None;
    }
    let text = std::fs::read_to_string(&path).ok()?;
    let host = match client.get_hosts().first()? {
        Host::Tcp(name) => name.clone(),
        #[cfg(unix)]
        Host::Unix(_) => "localhost".to_owned(),
    };
    let port = client
        .get_ports()
        .first()
        .copied()
        .unwrap_or(5432)
        .to_string();
    let user = client.get_user()?;
    let dbname = client.get_dbname().unwrap_or(user);
    find_password(&text, [&host, &port, dbname, user])
}

/// `Some(true)` for a file only its owner may read; `None` when it cannot be looked at.
fn private_file(path: &Path) -> Option<bool> {
    let meta = std::fs::metadata(path).ok()?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        Some(meta.is_file() && meta.permissions().mode() & 0o077 == 0)
    }
    #[cfg(not(unix))]
    {
        Some(meta.is_file())
    }
}

/// The first line of a password file whose four first fields match `wanted` (`*` matches
/// anything); `\:` and `\\` are escapes.
pub(crate) fn find_password(text: &str, wanted: [&str; 4]) -> Option<String> {
    text.lines()
        .filter(|line| !line.trim_start().starts_with('#') && !line.trim().is_empty())
        .find_map(|line| {
            let fields = split_passfile_line(line);
            let [host, port, db, user, password] = fields.as_slice() else {
                return None;
            };
            let matches = [host, port, db, user]
                .iter()
                .zip(wanted)
                .all(|(field, want)| field.as_str() == "*" || field.as_str() == want);
            matches.then(|| password.clone())
        })
}

fn split_passfile_line(line: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(escaped) = chars.next() {
                    fields
                        .last_mut()
                        .expect("fields is never empty")
                        .push(escaped);
                }
            }
            ':' if fields.len() < 5 => fields.push(String::new()),
            c => fields.last_mut().expect("fields is never empty").push(c),
        }
    }
    fields
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> PgEnv {
        PgEnv {
            user: Some("me".to_owned()),
            ..PgEnv::default()
        }
    }

    #[test]
    fn urls_give_host_port_schema_and_tls_and_never_show_the_password() {
        let config = PgConfig::parse(
            "postgres://ci:s3cr%3At@db.lab:6543/runs?schema=fleet_a&sslmode=verify-full&sslrootcert=/ca.pem&connect_timeout=3",
            None,
            &env(),
        )
        .expect("a valid URL");
        assert_eq!(config.schema(), "fleet_a");
        assert_eq!(config.tls, TlsMode::VerifyFull);
        assert_eq!(config.root_cert.as_deref(), Some(Path::new("/ca.pem")));
        assert_eq!(config.endpoints(), vec!["db.lab:6543".to_owned()]);
        assert_eq!(config.client.get_password(), Some(&b"s3cr:t"[..]));
        let shown = format!("{} {config:?}", config.describe());
        assert!(!shown.contains("s3cr"), "{shown}");
        assert!(shown.contains("ci@db.lab:6543/runs"), "{shown}");
    }

    #[test]
    fn defaults_come_from_the_environment() {
        let mut env = env();
        env.password = Some("from-env".to_owned());
        let config = PgConfig::parse("postgresql://db", Some("other"), &env).expect("valid");
        assert_eq!(config.schema(), "other");
        assert_eq!(config.client.get_user(), Some("me"));
        assert_eq!(config.client.get_password(), Some(&b"from-env"[..]));
        assert_eq!(config.tls, TlsMode::Prefer);
        assert_eq!(config.endpoints(), vec!["db:5432".to_owned()]);
    }

    #[test]
    fn bad_urls_are_refused_without_quoting_them() {
        let cases = [
            ("mysql://u:pw-1@h/db", "postgres://"),
            ("postgres://u:pw-1@h/db?schema=Bad-Name", "invalid schema"),
            ("postgres://u:pw-1@h/db?sslmode=maybe", "invalid sslmode"),
            ("postgres://u:pw-1@h/db?frobnicate=1", "not a valid"),
        ];
        for (url, fragment) in cases {
            let error = PgConfig::parse(url, None, &env())
                .expect_err(url)
                .to_string();
            assert!(error.contains(fragment), "{url}: {error}");
            assert!(!error.contains("pw-1"), "{url}: {error}");
        }
    }

    #[test]
    fn password_file_lines_match_like_libpq() {
        let text = "# comment\nother:5432:*:me:wrong\ndb.lab:*:runs:me:pa\\:ss\\\\word\n*:*:*:*:fallback\n";
        let check = |wanted: [&str; 4], expected: Option<&str>| {
            assert_eq!(
                find_password(text, wanted).as_deref(),
                expected,
                "{wanted:?}"
            );
        };
        check(["db.lab", "6543", "runs", "me"], Some("pa:ss\\word"));
        check(["other", "5432", "x", "me"], Some("wrong"));
        check(["other", "5433", "x", "me"], Some("fallback"));
        assert_eq!(find_password("h:1:d:u\n", ["h", "1", "d", "u"]), None);
    }

    #[test]
    fn a_private_password_file_is_read_and_an_open_one_ignored() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("a temp dir");
        let file = dir.path().join("pgpass");
        std::fs::write(&file, "*:*:*:*:from-file\n").expect("writable");
        let mut env = env();
        env.passfile = Some(file.clone());
        for (mode, expected) in [(0o600, Some(&b"from-file"[..])), (0o644, None)] {
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).expect("chmod");
            let config = PgConfig::parse("postgres://u@h/d", None, &env).expect("valid");
            assert_eq!(config.client.get_password(), expected, "mode {mode:o}");
        }
    }
}
