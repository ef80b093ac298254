//! The bounds within which reports are read, whatever the files hold: what the time and
//! memory of reading a run's reports can never exceed.

/// How much of a run's artifacts the reader looks at and keeps. Every field is a hard limit:
/// a file beyond one is listed as unreadable with the limit it hit, and the rest is still
/// read where the limit allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest report file read, in bytes.
    pub max_file_bytes: u64,
    /// Report bytes read per run, over all files.
    pub max_total_bytes: u64,
    /// Report files read per run.
    pub max_files: usize,
    /// Entries of the artifacts folder looked at (files, folders, symlinks) per run.
    pub max_entries: usize,
    /// Test cases read per run, over all files.
    pub max_cases: usize,
    /// How deep elements may nest in a report.
    pub max_depth: usize,
    /// Failed and errored cases listed in a summary; the others are only counted.
    pub max_listed_failures: usize,
    /// Characters kept of a failure's first message line.
    pub max_message_chars: usize,
    /// Bytes kept of a failure's text (the element's body), for the merged JUnit and HTML.
    pub max_detail_bytes: usize,
}

impl Limits {
    /// 32 MiB: a report of 200,000 cases with their failure texts fits well within it.
    pub const MAX_FILE_BYTES: u64 = 32 * 1024 * 1024;
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_file_bytes: Self::MAX_FILE_BYTES,
            max_total_bytes: 128 * 1024 * 1024,
            max_files: 1_000,
            max_entries: 100_000,
            max_cases: 200_000,
            max_depth: 64,
            max_listed_failures: 50,
            max_message_chars: 500,
            max_detail_bytes: 8 * 1024,
        }
    }
}
