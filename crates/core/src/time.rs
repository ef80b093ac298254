//! Wall-clock instants as the run record stores them: milliseconds since the Unix epoch,
//! shown as RFC 3339 UTC.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An instant with millisecond precision, serialized as RFC 3339 UTC (`2026-11-28T17:08:43.123Z`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp {
    unix_ms: i64,
}

impl Timestamp {
    /// The instant `unix_ms` milliseconds after the Unix epoch. A negative value is kept, but it
    /// displays and serializes as the epoch itself, so it does not survive a round trip.
    pub const fn from_unix_ms(unix_ms: i64) -> Self {
        Self { unix_ms }
    }

    /// The system clock's current time, truncated to the millisecond; the epoch if the clock is set
    /// before it. The runner takes its times from a [`Clock`](crate::ports::Clock) instead, so that
    /// tests are deterministic.
    pub fn now() -> Self {
        let since_epoch = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Self {
            unix_ms: i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX),
        }
    }

    /// Milliseconds since the Unix epoch, as the store keeps them.
    pub const fn unix_ms(self) -> i64 {
        self.unix_ms
    }

    /// The instant `duration` after `self`, saturating.
    pub fn after(self, duration: Duration) -> Self {
        let ms = i64::try_from(duration.as_millis()).unwrap_or(i64::MAX);
        Self {
            unix_ms: self.unix_ms.saturating_add(ms),
        }
    }

    /// The time from `earlier` to `self`, zero when `earlier` is later.
    pub fn since(self, earlier: Timestamp) -> Duration {
        Duration::from_millis(u64::try_from(self.unix_ms - earlier.unix_ms).unwrap_or(0))
    }

    fn to_system_time(self) -> SystemTime {
        match u64::try_from(self.unix_ms) {
            Ok(ms) => UNIX_EPOCH + Duration::from_millis(ms),
            Err(_) => UNIX_EPOCH,
        }
    }

    /// Parses RFC 3339 UTC, as [`Display`](fmt::Display) writes it.
    ///
    /// # Errors
    /// When `text` is not an RFC 3339 time.
    pub fn parse_rfc3339(text: &str) -> Result<Self, humantime::TimestampError> {
        let time = humantime::parse_rfc3339_weak(text)?;
        let since_epoch = time.duration_since(UNIX_EPOCH).unwrap_or_default();
        Ok(Self {
            unix_ms: i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX),
        })
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}",
            humantime::format_rfc3339_millis(self.to_system_time())
        )
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Self::parse_rfc3339(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_round_trip() {
        let ts = Timestamp::from_unix_ms(1_795_885_723_123);
        let text = ts.to_string();
        assert_eq!(text, "2026-11-28T17:08:43.123Z");
        assert_eq!(Timestamp::parse_rfc3339(&text).ok(), Some(ts));
    }

    #[test]
    fn since_saturates() {
        let a = Timestamp::from_unix_ms(1_000);
        let b = Timestamp::from_unix_ms(3_500);
        assert_eq!(b.since(a), Duration::from_millis(2_500));
        assert_eq!(a.since(b), Duration::ZERO);
    }
}
