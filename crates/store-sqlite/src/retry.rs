//! Retrying work that SQLite refused with `SQLITE_BUSY` or `SQLITE_LOCKED`.
//!
//! The busy timeout makes SQLite wait for most locks, but not for all of them: under WAL a
//! `BEGIN IMMEDIATE`, a journal-mode change or the first read of a fresh WAL index can still
//! fail at once when many processes start together. Such work is retried as a whole (its
//! transaction rolled back) with a short, growing, jittered pause, up to a deadline, so
//! "database is locked" only reaches the user when the database really stays locked.

use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rusqlite::ErrorCode;

/// How long a piece of work is retried before the busy error is reported.
pub(crate) const BUSY_DEADLINE: Duration = Duration::from_secs(30);

const FIRST_PAUSE: Duration = Duration::from_millis(1);
const LONGEST_PAUSE: Duration = Duration::from_millis(50);

/// Whether `error` says another connection holds a lock.
pub(crate) fn is_busy(error: &rusqlite::Error) -> bool {
    matches!(
        error.sqlite_error_code(),
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
    )
}

/// Runs `attempt` until it succeeds, fails with an error that `busy` does not recognise, or
/// [`BUSY_DEADLINE`] has passed.
pub(crate) fn retry_busy<T, E>(
    mut attempt: impl FnMut() -> Result<T, E>,
    busy: impl Fn(&E) -> bool,
) -> Result<T, E> {
    let started = Instant::now();
    let mut pause = FIRST_PAUSE;
    loop {
        match attempt() {
            Err(error) if busy(&error) && started.elapsed() < BUSY_DEADLINE => {
                thread::sleep(pause + jitter(pause));
                pause = (pause * 2).min(LONGEST_PAUSE);
            }
            outcome => return outcome,
        }
    }
}

/// Up to `pause` more, so that processes which collided once do not collide again.
fn jitter(pause: Duration) -> Duration {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|since| since.subsec_nanos())
        .unwrap_or_default();
    let pause_us = u32::try_from(pause.as_micros()).unwrap_or(u32::MAX).max(1);
    Duration::from_micros(u64::from(nanos % pause_us))
}
