//! The integration tests of comfaas, in one test binary: each former test
//! file is a module here, so that a change in a library relinks one binary
//! instead of seven (the layout of rust-analyzer's `tests/slow-tests`).
//! Every test starts its own `nats-server` through the harness; nextest runs
//! each test in its own process.

/// Makes two tests of each named `async fn(Security)`: `<name>::open` and
/// `<name>::secure` (every role on its own NKey under the permissions of
/// `comfaas_platform::auth`, over TLS), so that a permission a role lacks
/// fails the secure one.
macro_rules! open_and_secure {
    ($($name:ident),+ $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn open() {
                super::$name(comfaas_tests::Security::Open).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn secure() {
                super::$name(comfaas_tests::Security::Secure).await
            }
        }
    )+};
}

mod binaries;
mod cli;
mod cluster;
mod dashboard;
mod dev;
mod dlq;
mod events;
mod faults;
mod inputs;
mod invoke;
mod logs;
mod mqtt;
mod nodedeath;
mod observe;
mod paper;
mod roles;
mod runtimes;
mod sandbox;
mod sites;
mod trust;
mod versions;
mod warm;
