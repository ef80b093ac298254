//! One module per group of commands; each returns a [`Report`](crate::output::Report) or a
//! [`CliError`](crate::error::CliError) and never prints its final result itself.

pub mod hash;
pub mod machines;
pub mod queue;
pub mod remote;
pub mod report;
pub mod run;
pub mod runs;
pub mod signals;
mod terminal;
pub mod worker;
