//! The `testfleet` binary, end to end: bad input, offline commands, and runs against
//! in-process SSH servers, with insta snapshots of human and JSON output.

mod bad_input;
mod cache;
mod faults;
mod invocation;
mod messages;
mod offline;
mod queue;
mod remote;
mod reports;
mod shared_store;
mod support;
