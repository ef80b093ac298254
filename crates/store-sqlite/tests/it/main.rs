//! Integration tests of testfleet-store-sqlite: the RunStore contract, the machine lock across
//! processes, migrations, and refusing bad input without touching it.

mod bad_input;
mod contract;
mod cross_process;
mod migrations;
mod support;
