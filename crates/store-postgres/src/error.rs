//! The errors of the PostgreSQL store, and how they become a [`StoreError`]. No message ever
//! holds a password: servers are named by `user@host:port/database`.

use std::sync::Arc;

use testfleet_core::ports::StoreError;

/// Everything that can go wrong in the PostgreSQL store. It reaches callers as
/// [`StoreError::Backend`] (code `STORE_ERROR`) with this error as its source.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("cannot reach the run store at {endpoints} (PostgreSQL, {target})")]
    Unreachable {
        endpoints: String,
        target: String,
        #[source]
        source: postgres::Error,
    },
    #[error(
        "the run store {target} has schema version {found}, newer than version {supported} that \
         this testfleet knows; it was left untouched: upgrade testfleet to use it"
    )]
    NewerSchema {
        target: String,
        found: i32,
        supported: i32,
    },
    #[error("failed to {action} in the run store {target}")]
    Sql {
        action: &'static str,
        target: String,
        #[source]
        source: postgres::Error,
    },
    #[error("failed to get a connection to the run store {target}")]
    Pool {
        target: String,
        #[source]
        source: r2d2::Error,
    },
    #[error("the database task to {action} did not finish")]
    Task {
        action: &'static str,
        #[source]
        source: tokio::task::JoinError,
    },
    #[error("failed to {what}")]
    Tls {
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error(
        "sslmode verify-ca/verify-full needs a root certificate: set sslrootcert=FILE in the URL \
         or put it in ~/.postgresql/root.crt"
    )]
    NoRootCert,
    #[error("column {column} holds {value:?}, which is not a valid {what}")]
    BadValue {
        column: &'static str,
        value: String,
        what: &'static str,
    },
}

impl From<Error> for StoreError {
    fn from(error: Error) -> Self {
        StoreError::Backend {
            message: error.to_string(),
            source: Some(Arc::new(error)),
        }
    }
}
