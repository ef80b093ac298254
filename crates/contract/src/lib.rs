//! The contract suites of testfleet's ports, and fakes that pass them.
//!
//! An adapter of [`testfleet_core`] — a run store on another database, a transport other than
//! SSH — proves that it keeps the core's promises by passing the suite of its port:
//!
//! - [`run_store::run_store`] takes a factory of fresh stores and runs every case of the
//!   [`RunStore`](testfleet_core::ports::RunStore) contract against each (the machine lock,
//!   compare-and-set transitions, events, listing, owners, leases and cancel requests by the
//!   store's own clock, concurrent claims, and claims from independent handles opened as other
//!   processes would — see [`run_store::Subject::reopened_by`]);
//! - [`ssh::ssh`] takes an [`SshConnector`](testfleet_core::ports::SshConnector) and a factory
//!   of targets and checks exec (output, exit codes, signals, stdin, gated commands), directory
//!   creation, an upload and download round trip, the kill of a running command and removal.
//!
//! Both suites spawn tasks and race them: call them from a multi-threaded tokio runtime. A
//! downstream crate adds this crate as a dev-dependency and calls the suite from a test:
//!
//! ```no_run
//! use testfleet_contract::fake_store::FakeStore;
//! use testfleet_contract::run_store::{Subject, run_store};
//!
//! #[tokio::test(flavor = "multi_thread")]
//! async fn my_store_keeps_the_contract() {
//!     // Replace FakeStore with the adapter under test; each case gets a fresh store.
//!     run_store(|| Subject::new(FakeStore::new())).await;
//! }
//! # fn main() {}
//! ```
//!
//! A suite panics, naming the case and what differed, at the first broken promise.
//!
//! [`fake_store::FakeStore`] and [`fake_ssh::FakeSsh`] are in-memory ports for tests of code
//! that drives the core (they pass the suites too). This crate needs nothing beside the core:
//! no SSH server and no database.

pub mod fake_ssh;
pub mod fake_store;
pub mod run_store;
pub mod ssh;
