//! The `comfaas` command-line interface: operators' and developers' entry
//! to the platform (`auth`, `dev`, `deploy`, `invoke`, `ls`, `rm`, `nodes`,
//! `iot-sim`, `secret`, `dlq`, `new`, `completions`, `dashboard`, `decisions`, `logs`). The functions behind each command are public so tests and
//! the embedded default reuse them.
//!
//! Architecture invariant: the CLI speaks only the public contract
//! (subjects, headers, the registry); it has no back door into services,
//! except `dev`, which hosts them in-process.

pub mod auth;
pub mod dashboard;
pub mod decisions;
pub mod deploy;
pub mod dev;
pub mod dlq;
pub mod domains;
pub mod inspect;
pub mod invoke;
pub mod iot;
pub mod logs;
pub mod output;
pub mod scaffold;
pub mod secret;
pub mod transfer;
