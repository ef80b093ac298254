//! Configuration: the fleet file and the local paths testfleet uses.

pub mod fleet;
pub mod paths;

pub use fleet::{Fleet, FleetMachine, StoreTable, load_store_table, parse_duration};
pub use paths::Env;
