//! Integration tests of testfleet-testkit: the fakes against their port contracts.

mod fake_ssh;
mod fake_store;
