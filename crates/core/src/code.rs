//! The stable error codes, the error recorded in a run, and the rendering of an error chain.
//!
//! This is a leaf of the crate: it imports nothing from the rest of core, so every module can
//! name a code without an import circle. The strings of [`ErrorCode`] are a public contract
//! (`docs/contract.md#error-codes`): agents match on them.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The stable error codes (`docs/contract.md#error-codes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorCode {
    TestDirNotFound,
    MissingEntrypoint,
    UnknownMachine,
    MachineBusy,
    InvalidArgument,
    FleetConfigInvalid,
    RunNotFound,
    HostKeyUnknown,
    HostKeyMismatch,
    AuthFailed,
    DialFailed,
    UploadFailed,
    DownloadFailed,
    TestDirChanged,
    ExecFailed,
    ConnectionLost,
    NonzeroExit,
    Timeout,
    Interrupted,
    WorkerLost,
    StoreError,
    Internal,
}

impl ErrorCode {
    /// Every code, in the order of the table in `docs/contract.md#error-codes`.
    pub const ALL: [ErrorCode; 22] = [
        Self::TestDirNotFound,
        Self::MissingEntrypoint,
        Self::UnknownMachine,
        Self::MachineBusy,
        Self::InvalidArgument,
        Self::FleetConfigInvalid,
        Self::RunNotFound,
        Self::HostKeyUnknown,
        Self::HostKeyMismatch,
        Self::AuthFailed,
        Self::DialFailed,
        Self::UploadFailed,
        Self::DownloadFailed,
        Self::TestDirChanged,
        Self::ExecFailed,
        Self::ConnectionLost,
        Self::NonzeroExit,
        Self::Timeout,
        Self::Interrupted,
        Self::WorkerLost,
        Self::StoreError,
        Self::Internal,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::TestDirNotFound => "TEST_DIR_NOT_FOUND",
            Self::MissingEntrypoint => "MISSING_ENTRYPOINT",
            Self::UnknownMachine => "UNKNOWN_MACHINE",
            Self::MachineBusy => "MACHINE_BUSY",
            Self::InvalidArgument => "INVALID_ARGUMENT",
            Self::FleetConfigInvalid => "FLEET_CONFIG_INVALID",
            Self::RunNotFound => "RUN_NOT_FOUND",
            Self::HostKeyUnknown => "HOST_KEY_UNKNOWN",
            Self::HostKeyMismatch => "HOST_KEY_MISMATCH",
            Self::AuthFailed => "AUTH_FAILED",
            Self::DialFailed => "DIAL_FAILED",
            Self::UploadFailed => "UPLOAD_FAILED",
            Self::DownloadFailed => "DOWNLOAD_FAILED",
            Self::TestDirChanged => "TEST_DIR_CHANGED",
            Self::ExecFailed => "EXEC_FAILED",
            Self::ConnectionLost => "CONNECTION_LOST",
            Self::NonzeroExit => "NONZERO_EXIT",
            Self::Timeout => "TIMEOUT",
            Self::Interrupted => "INTERRUPTED",
            Self::WorkerLost => "WORKER_LOST",
            Self::StoreError => "STORE_ERROR",
            Self::Internal => "INTERNAL",
        }
    }

    /// Parses a code from its stable string.
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|code| code.as_str() == text)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error recorded in a run: its code and a human message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunError {
    pub code: ErrorCode,
    pub message: String,
}

impl RunError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

/// Renders an error with its whole `source()` chain, `outer: inner: innermost`.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        let inner_text = inner.to_string();
        // thiserror messages often embed their source already; do not repeat it.
        if !text.ends_with(&inner_text) {
            text.push_str(": ");
            text.push_str(&inner_text);
        }
        source = inner.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_through_their_strings() {
        for code in ErrorCode::ALL {
            assert_eq!(ErrorCode::parse(code.as_str()), Some(code));
            let json = format!("\"{}\"", code.as_str());
            assert_eq!(serde_json::to_string(&code).ok(), Some(json));
        }
        assert_eq!(ErrorCode::parse("NOPE"), None);
    }
}
