//! Every role on NATS may do its job and nothing beyond: each boundary is
//! tried and refused, then the legitimate call still works.

#![allow(clippy::unwrap_used)] // tests fail loudly by design
