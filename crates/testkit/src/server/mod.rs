//! An in-process SSH/SFTP server on 127.0.0.1 with fault injection.
//!
//! [`TestServer::start`] serves russh + russh-sftp on `127.0.0.1:0` with a temp folder as the
//! login's home: relative SFTP paths and the working folder of every exec resolve there. Exec
//! runs `sh -c COMMAND` in a new process group (so `kill -TERM -<pgid>` reaches the whole
//! tree, as under sshd). [`ServerConfig`] selects the faults. Dropping the server stops it,
//! its connections and every process it started.

mod config;
mod drop_stream;
mod exec;
mod groups;
mod handler;
mod sftp;
mod state;
mod test_server;

pub use config::{ExitOrder, Faults, Request, ScriptedExec, ServerConfig, WindowsEmulation};
pub use sftp::{HOSTILE_FILE_NAMES, HOSTILE_LINK_NAME};
pub use test_server::{TestServer, generate_key};
