//! How a crate outside testfleet plugs adapters into `testfleet-core`: [`MemoryStore`] keeps
//! runs in memory, [`LocalConnector`] "dials" this very machine and runs commands with `sh`
//! in a folder that stands for the remote home. Both pass the contract suites of
//! `testfleet-contract` (see `tests/`), and `Runner::dispatch` runs a test directory end to
//! end with them.
//!
//! ```no_run
//! # async fn demo(home: std::path::PathBuf, state: std::path::PathBuf, dir: &std::path::Path)
//! # -> Result<(), testfleet_core::DispatchError> {
//! use std::sync::Arc;
//! use testfleet_core::ports::{SystemClock, UlidGenerator};
//! use testfleet_core::runner::{DispatchRequest, NoObserver, Runner, RunnerConfig, StopSignals};
//! use testfleet_example_adapter::{LocalConnector, MemoryStore, local_machine};
//!
//! let runner = Runner::new(
//!     Arc::new(MemoryStore::default()),
//!     Arc::new(LocalConnector::new(home)),
//!     Arc::new(SystemClock),
//!     Arc::new(UlidGenerator::default()),
//!     RunnerConfig::new(state),
//! );
//! let request = DispatchRequest {
//!     machine: local_machine("here"),
//!     timeout: None,
//!     keep_remote: false,
//!     owner: None,
//!     invocation: Default::default(),
//! };
//! let done = runner
//!     .dispatch(dir, &request, &StopSignals::default(), &NoObserver)
//!     .await?;
//! println!("{} {}", done.run.id, done.run.status);
//! # Ok(())
//! # }
//! ```

mod local;
mod memory;

pub use local::{LocalConnector, local_machine};
pub use memory::MemoryStore;
