//! Port contract suites: each runs against the fake and every real adapter alike.

pub mod run_store;
pub mod ssh;
