//! Which failures are worth trying again, and the backoff.
//!
//! Serialization failures and deadlocks (SQLSTATE 40001, 40P01) are retried at once with a
//! short jittered pause; so are lost or refused connections (class 08, 57P01–57P03, a closed
//! socket, a pool that could not connect), for a while, so that a server restart does not fail
//! a run. Everything else is reported.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use postgres::error::SqlState;

/// How long an operation is tried again before its last error is reported.
pub(crate) const RETRY_DEADLINE: Duration = Duration::from_secs(30);

const FIRST_PAUSE: Duration = Duration::from_millis(2);
const LONGEST_PAUSE: Duration = Duration::from_millis(500);

/// Whether `error` is a transient failure of the server or the connection.
pub(crate) fn is_transient(error: &postgres::Error) -> bool {
    if error.is_closed() {
        return true;
    }
    match error.code() {
        Some(code) => {
            *code == SqlState::T_R_SERIALIZATION_FAILURE
                || *code == SqlState::T_R_DEADLOCK_DETECTED
                || *code == SqlState::ADMIN_SHUTDOWN
                || *code == SqlState::CRASH_SHUTDOWN
                || *code == SqlState::CANNOT_CONNECT_NOW
                || code.code().starts_with("08")
        }
        // No SQLSTATE: the socket failed (an I/O error, a reset, an EOF).
        None => std::error::Error::source(error)
            .is_some_and(|source| source.downcast_ref::<std::io::Error>().is_some()),
    }
}

/// The pause after `pause`, doubled up to a bound.
pub(crate) fn next_pause(pause: Duration) -> Duration {
    (pause * 2).min(LONGEST_PAUSE)
}

/// The first pause.
pub(crate) const fn first_pause() -> Duration {
    FIRST_PAUSE
}

/// `pause` plus up to `pause` more, so that processes which collided once do not collide again.
pub(crate) fn jittered(pause: Duration) -> Duration {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|since| since.subsec_nanos())
        .unwrap_or_default();
    let pause_us = u32::try_from(pause.as_micros()).unwrap_or(u32::MAX).max(1);
    pause + Duration::from_micros(u64::from(nanos % pause_us))
}
