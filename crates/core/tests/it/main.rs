//! Integration tests of testfleet-core: one binary so they link once.

mod hash;
mod leases;
mod lifecycle;
mod remote;
mod runner;
