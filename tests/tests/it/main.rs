//! The integration tests of comfaas, in one test binary: each former test
//! file is a module here, so that a change in a library relinks one binary
//! instead of seven (the layout of rust-analyzer's `tests/slow-tests`).
//! Every test starts its own `nats-server` through the harness; nextest runs
//! each test in its own process.

mod binaries;
mod events;
mod inputs;
mod invoke;
mod runtimes;
mod sandbox;
mod sites;
mod trust;
mod versions;
