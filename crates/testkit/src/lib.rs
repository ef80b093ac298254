//! Test support for testfleet's own tests and tasks: an in-process SSH/SFTP server with fault
//! injection, a private OpenSSH `sshd`, a private PostgreSQL cluster, a TCP proxy that breaks
//! connections on demand, and a reader of the local process table.
//!
//! The port contract suites and the fakes live in `testfleet-contract`, which needs no server:
//! that is the crate for adapters outside this workspace. This one is a dev-dependency of the
//! workspace's crates and a dependency of `xtask`; nothing in a shipped binary links it.

pub mod postgres;
pub mod process;
pub mod proxy;
pub mod server;
pub mod sshd;
