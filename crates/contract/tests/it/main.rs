//! Integration tests of testfleet-contract: the fakes against their port contracts.

mod fake_ssh;
mod fake_store;
mod queue_model;
