//! Time and run ids, as ports so that tests are deterministic.

use std::fmt;
use std::sync::Mutex;
use std::time::Duration;

use crate::ids::RunId;
use crate::time::Timestamp;

/// The source of "now".
pub trait Clock: Send + Sync + fmt::Debug {
    /// The current time. The runner records every time of a run with it (`created_at`,
    /// `started_at`, `finished_at`), and the reaper the time it ends a lost run.
    fn now(&self) -> Timestamp;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }
}

/// The source of new run ids.
pub trait RunIdGenerator: Send + Sync + fmt::Debug {
    /// A new id, greater than every id this generator returned before.
    fn next_id(&self, now: Timestamp) -> RunId;
}

/// ULIDs, monotonic within the process and random across processes.
#[derive(Debug, Default)]
pub struct UlidGenerator {
    inner: Mutex<ulid::Generator>,
}

impl RunIdGenerator for UlidGenerator {
    fn next_id(&self, now: Timestamp) -> RunId {
        let mut generator = self
            .inner
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        let at = std::time::UNIX_EPOCH
            + Duration::from_millis(u64::try_from(now.unix_ms()).unwrap_or(0));
        match generator.generate_from_datetime(at) {
            Ok(ulid) => RunId::from_parts(ulid.timestamp_ms(), ulid.random()),
            // The random part overflowed within one millisecond: take a fresh random ULID of
            // the next millisecond, which still sorts after every earlier id.
            Err(_) => {
                let fresh = ulid::Ulid::from_datetime(at + Duration::from_millis(1));
                RunId::from_parts(fresh.timestamp_ms(), fresh.random())
            }
        }
    }
}
