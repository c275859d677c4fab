//! The test bed of comfaas: real `nats-server` processes with JetStream
//! ([`server`]), emulated WAN links that delay and pace a TCP connection
//! ([`link`]), and several sites on one machine, each cloud site a hub and
//! the edge a leaf node of every one ([`sites`]), and a site that is a
//! cluster of routed servers ([`cluster`]). It stands up the network
//! that `comfaas dev`, the integration tests and the benchmarks run the
//! services on; production deployments bring their own servers and links.
//!
//! Architecture invariant: nothing here knows of functions, placement or
//! runs; it starts servers and carries bytes. The production services
//! (`comfaas-dispatch`, `comfaas-exec`) never depend on this crate (the
//! executor's unit tests do, for a real server); only the CLI's `dev`
//! command, the test harness and the benchmarks do.

pub mod cluster;
pub mod link;
pub mod server;
pub mod sites;
