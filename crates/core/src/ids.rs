//! Validated identifiers: run ids, machine names and directory hashes.
//!
//! Each is a newtype whose only constructor checks its precondition, so a value that exists is
//! valid and code that receives one never re-checks it.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Why a string was refused as an identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} {value:?}: {reason}")]
pub struct IdError {
    what: &'static str,
    value: String,
    reason: &'static str,
}

/// The id of one run: a ULID, unique across processes and sorting by creation time.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RunId(String);

impl RunId {
    /// Parses the canonical 26-character Crockford base32 form (case-insensitive input,
    /// stored in upper case).
    ///
    /// # Errors
    /// When `value` is not a ULID.
    pub fn parse(value: &str) -> Result<Self, IdError> {
        let refuse = |reason| IdError {
            what: "run id",
            value: value.to_owned(),
            reason,
        };
        // A first character above 7 does not fit in 128 bits: the ulid crate would drop the
        // high bits and hand back another id than the one typed.
        if value.len() == 26 && !value.starts_with(|c: char| ('0'..='7').contains(&c)) {
            return Err(refuse(
                "a 26-character run id starts with 0 to 7 (a larger first character does not fit a ULID)",
            ));
        }
        match ulid::Ulid::from_string(value) {
            Ok(ulid) => Ok(Self(ulid.to_string())),
            Err(_) => Err(refuse(
                "expected a 26-character ULID such as 01JD0000000000000000000000",
            )),
        }
    }

    /// Builds a run id from its timestamp (ms since the Unix epoch) and 80 random bits.
    pub fn from_parts(unix_ms: u64, random: u128) -> Self {
        Self(ulid::Ulid::from_parts(unix_ms, random).to_string())
    }

    /// The canonical form: 26 upper-case Crockford base32 characters.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for RunId {
    type Error = IdError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<RunId> for String {
    fn from(id: RunId) -> Self {
        id.0
    }
}

impl fmt::Display for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The characters of a run id: Crockford base32 without `I`, `L`, `O` and `U`.
const RUN_ID_ALPHABET: &str = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// The start of a run id, as a user types it to name a run: at least
/// [`RunIdPrefix::MIN_LEN`] and fewer than 26 characters of a run id, stored in upper case.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RunIdPrefix(String);

impl RunIdPrefix {
    /// The shortest prefix accepted: 4 characters.
    pub const MIN_LEN: usize = 4;

    /// Takes `value` as a run id prefix (case-insensitive input, stored in upper case).
    ///
    /// # Errors
    /// When `value` is shorter than [`RunIdPrefix::MIN_LEN`] or at least 26 characters long,
    /// holds a character that no run id has (Crockford base32 has no `I`, `L`, `O` or `U`), or
    /// starts with a character above `7`, which no run id does.
    pub fn parse(value: &str) -> Result<Self, IdError> {
        let refuse = |reason| IdError {
            what: "run id",
            value: value.to_owned(),
            reason,
        };
        if value.len() < Self::MIN_LEN {
            return Err(refuse(
                "a run id prefix has at least 4 characters; `testfleet list` shows the ids",
            ));
        }
        if value.len() >= 26 {
            return Err(refuse("a run id has 26 characters; this is longer"));
        }
        let upper = value.to_ascii_uppercase();
        if !upper.chars().all(|c| RUN_ID_ALPHABET.contains(c)) {
            return Err(refuse(
                "run ids are made of 0-9 and A-Z without I, L, O and U (Crockford base32)",
            ));
        }
        if !upper.starts_with(|c: char| ('0'..='7').contains(&c)) {
            return Err(refuse("every run id starts with 0 to 7"));
        }
        Ok(Self(upper))
    }

    /// The prefix in upper case.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `id` starts with this prefix.
    pub fn matches(&self, id: &RunId) -> bool {
        id.as_str().starts_with(&self.0)
    }
}

impl fmt::Display for RunIdPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// How a user names a run on the command line: a whole id, a unique prefix of one, or the
/// newest run (`last`, or `@`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RunRef {
    /// A whole run id.
    Id(RunId),
    /// The start of a run id, which must match exactly one run.
    Prefix(RunIdPrefix),
    /// The newest run (of a machine, when the command says which).
    Last,
}

impl RunRef {
    /// Parses what was typed: `last` or `@` (any case), a 26-character id, or a prefix of 4 to
    /// 25 characters.
    ///
    /// # Errors
    /// [`IdError`] quoting `value` as it was typed, and saying which rule it broke.
    pub fn parse(value: &str) -> Result<Self, IdError> {
        if value == "@" || value.eq_ignore_ascii_case("last") {
            return Ok(Self::Last);
        }
        if value.len() == 26 {
            return RunId::parse(value).map(Self::Id);
        }
        RunIdPrefix::parse(value).map(Self::Prefix)
    }
}

/// The name of a machine of the fleet: letters, digits, `.`, `_` and `-`, 1 to 64 bytes.
///
/// The name appears in file names, log prefixes and SQL; the restriction keeps it safe in all
/// of them.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MachineName(String);

impl MachineName {
    /// Takes `value` as a machine name, unchanged (letter case is kept and matters).
    ///
    /// # Errors
    /// When `value` is empty, longer than 64 bytes, or holds a character outside
    /// `[A-Za-z0-9._-]`.
    pub fn parse(value: &str) -> Result<Self, IdError> {
        let refuse = |reason| IdError {
            what: "machine name",
            value: value.to_owned(),
            reason,
        };
        if value.is_empty() {
            return Err(refuse("it is empty"));
        }
        if value.len() > 64 {
            return Err(refuse("it is longer than 64 bytes"));
        }
        if !value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        {
            return Err(refuse("only letters, digits, '.', '_' and '-' are allowed"));
        }
        Ok(Self(value.to_owned()))
    }

    /// The name, as it was parsed.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for MachineName {
    type Error = IdError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<MachineName> for String {
    fn from(name: MachineName) -> Self {
        name.0
    }
}

impl fmt::Display for MachineName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The controller a run belongs to: the host (or, where several share one host, the
/// installation) whose state directory holds the run's logs and artifacts, and whose processes
/// own the run while it is active. Printable ASCII without spaces, 1 to 255 bytes (a host name,
/// `host/instance`, `user@host` …).
///
/// Controllers that share one run store must have distinct ids: the reaper asks the local
/// process table about an owner only when the owner's controller is its own.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ControllerId(String);

impl ControllerId {
    /// Takes `value` as a controller id, unchanged.
    ///
    /// # Errors
    /// When `value` is empty, longer than 255 bytes, or holds a byte that is not printable
    /// ASCII (a space, a control character, anything non-ASCII).
    pub fn parse(value: &str) -> Result<Self, IdError> {
        let refuse = |reason| IdError {
            what: "controller id",
            value: value.to_owned(),
            reason,
        };
        if value.is_empty() {
            return Err(refuse("it is empty"));
        }
        if value.len() > 255 {
            return Err(refuse("it is longer than 255 bytes"));
        }
        if !value.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(refuse("only printable ASCII without spaces is allowed"));
        }
        Ok(Self(value.to_owned()))
    }

    /// The id, as it was parsed.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for ControllerId {
    type Error = IdError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<ControllerId> for String {
    fn from(id: ControllerId) -> Self {
        id.0
    }
}

impl fmt::Display for ControllerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The hash of a test directory: 64 lowercase hex digits of a sha256.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TestDirHash(String);

impl TestDirHash {
    /// Takes `value` as a directory hash, as [`DirHasher::finish`](crate::hash::DirHasher::finish)
    /// writes it; upper-case hex is refused, not folded.
    ///
    /// # Errors
    /// When `value` is not 64 lowercase hex digits.
    pub fn parse(value: &str) -> Result<Self, IdError> {
        if value.len() == 64
            && value
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            Ok(Self(value.to_owned()))
        } else {
            Err(IdError {
                what: "test directory hash",
                value: value.to_owned(),
                reason: "expected 64 lowercase hex digits",
            })
        }
    }

    pub(crate) fn from_digest(digest: &[u8]) -> Self {
        Self(hex::encode(digest))
    }

    /// The 64 lowercase hex digits.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for TestDirHash {
    type Error = IdError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<TestDirHash> for String {
    fn from(hash: TestDirHash) -> Self {
        hash.0
    }
}

impl fmt::Display for TestDirHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_id_round_trips_and_upper_cases() {
        let id = RunId::from_parts(1_700_000_000_000, 42);
        assert_eq!(RunId::parse(&id.as_str().to_lowercase()), Ok(id.clone()));
        assert!(RunId::parse("not-a-ulid").is_err());
        assert!(RunId::parse("").is_err());
    }

    #[test]
    fn run_ids_that_do_not_fit_are_refused_as_typed() {
        let error = RunId::parse("ZZZZZZZZZZZZZZZZZZZZZZZZZZ").expect_err("does not fit");
        assert!(
            error.to_string().contains("\"ZZZZZZZZZZZZZZZZZZZZZZZZZZ\""),
            "{error}"
        );
        assert!(RunId::parse("7ZZZZZZZZZZZZZZZZZZZZZZZZZ").is_ok());
        assert!(RunId::parse("01JD000000000000000000000I").is_err());
    }

    #[test]
    fn run_refs() {
        let id = "01JD0000000000000000000000";
        for (typed, expected) in [
            ("last", Some(RunRef::Last)),
            ("LAST", Some(RunRef::Last)),
            ("@", Some(RunRef::Last)),
            (id, Some(RunRef::Id(RunId::parse(id).expect("valid")))),
            ("01jd", Some(RunRef::Prefix(RunIdPrefix("01JD".to_owned())))),
            (
                "01JD000000000000000000000",
                Some(RunRef::Prefix(RunIdPrefix(
                    "01JD000000000000000000000".to_owned(),
                ))),
            ),
            ("01J", None),
            ("", None),
            ("01JI", None),
            ("01JD-", None),
            ("91JD", None),
            ("01JD0000000000000000000000X", None),
            ("ZZZZZZZZZZZZZZZZZZZZZZZZZZ", None),
        ] {
            assert_eq!(RunRef::parse(typed).ok(), expected, "{typed:?}");
        }
        let error = RunRef::parse("01J").expect_err("too short");
        assert!(
            error.to_string().contains("\"01J\""),
            "quotes what was typed: {error}"
        );
        let prefix = RunIdPrefix::parse("01jd0").expect("valid");
        assert!(prefix.matches(&RunId::parse(id).expect("valid")));
        assert!(!prefix.matches(&RunId::parse("01JE0000000000000000000000").expect("valid")));
    }

    #[test]
    fn run_ids_sort_by_time() {
        let earlier = RunId::from_parts(1_000, u128::MAX >> 48);
        let later = RunId::from_parts(1_001, 0);
        assert!(earlier < later);
    }

    #[test]
    fn machine_names() {
        for ok in ["linux-1", "a", "mac_mini.lab", &"x".repeat(64)] {
            assert!(MachineName::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a b", "../x", "x/y", "é", &"x".repeat(65), "a;rm"] {
            assert!(MachineName::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn hashes() {
        let zero = "0".repeat(64);
        assert!(TestDirHash::parse(&zero).is_ok());
        assert!(TestDirHash::parse(&"A".repeat(64)).is_err());
        assert!(TestDirHash::parse(&"0".repeat(63)).is_err());
    }
}
