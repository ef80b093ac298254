//! Test support for testfleet: fakes of every port, one contract suite per port, and an
//! in-process SSH/SFTP server with fault injection.
//!
//! This crate is a dev-dependency only; nothing in a shipped binary links it.

pub mod contract;
pub mod fake_ssh;
pub mod fake_store;
pub mod process;
pub mod server;
pub mod sshd;
