//! Function runtimes of comfaas: packing and safely unpacking bundles,
//! installing a function once into its own environment, deciding what its
//! runs may see ([`Sandbox`]), and running it as a bounded child process or
//! on a warm worker.
//!
//! Architecture invariant: this crate knows nothing of NATS, dispatchers or
//! placement. It turns a bundle plus a manifest into an [`Installation`] and
//! an input into a [`RunOutcome`]; the executor is what connects it to the
//! network.

pub mod bundle;
pub mod capture;
pub mod handler;
pub mod install;
pub mod jail;
pub mod process;
pub mod sandbox;
pub mod sdk;

pub use bundle::{check_entry, pack, unpack, Bundle, BundleError, MAX_UNPACKED_BYTES};
pub use capture::{Captured, StderrCapture};
pub use handler::{HandlerPool, WorkerError, WorkerSpec};
pub use install::{
    available_runtimes, default_wheelhouse, install, install_timed, InstallError, Installation,
    MpiFlavor, MpiLauncher, Toolchain, VenvPython,
};
pub use process::{run, RunInput, RunOutcome, RunSpec};
pub use sandbox::{
    Identity, Isolation, Jail, LimitHit, RunDir, Sandbox, SandboxConfig, SandboxError, Sandboxes,
};
