//! The PostgreSQL store against a private PostgreSQL cluster (`testfleet_testkit::postgres`).
//! On a machine without PostgreSQL these tests fail with the install command.

mod contract;
mod cross_process;
mod opening;
mod support;
