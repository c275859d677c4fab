//! Installing a function once, at deploy time, into an environment of its
//! own, and the command line that runs it afterwards. One file per
//! runtime, each turning a bundle into an [`Installation`]; adding a
//! runtime is a file here, its arm in [`install`], and the tool it needs in
//! [`Toolchain`].

use std::path::Path;

use comfaas_schemas::{InstallStep, Manifest, Runtime};

mod c;
mod exec;
mod installation;
mod java;
mod python;
mod rust;
mod toolchain;

pub use installation::{InstallError, Installation};
use installation::{Job, StepLog};
pub use toolchain::{
    available_runtimes, default_wheelhouse, find_on_path, MpiFlavor, MpiLauncher, Toolchain,
    VenvPython,
};

/// Installs `manifest`'s function from `bundle_dir` into `env_dir` (created
/// here; removed again when the install fails).
pub async fn install(
    manifest: &Manifest,
    bundle_dir: &Path,
    env_dir: &Path,
    toolchain: &Toolchain,
) -> Result<Installation, InstallError> {
    install_timed(manifest, bundle_dir, env_dir, toolchain)
        .await
        .0
}

/// [`install`], and the steps it ran with how long each took (also when it
/// failed): where a deploy's install time goes.
pub async fn install_timed(
    manifest: &Manifest,
    bundle_dir: &Path,
    env_dir: &Path,
    toolchain: &Toolchain,
) -> (Result<Installation, InstallError>, Vec<InstallStep>) {
    let steps = StepLog::default();
    let result = install_logged(manifest, bundle_dir, env_dir, toolchain, &steps).await;
    (result, steps.into_steps())
}

async fn install_logged(
    manifest: &Manifest,
    bundle_dir: &Path,
    env_dir: &Path,
    toolchain: &Toolchain,
    steps: &StepLog,
) -> Result<Installation, InstallError> {
    if let Some(missing) = toolchain.missing(manifest.runtime) {
        return Err(InstallError::UnsupportedRuntime(manifest.runtime, missing));
    }
    let entry = bundle_dir.join(&manifest.entry);
    if !entry.is_file() {
        return Err(InstallError::MissingEntry(manifest.entry.clone()));
    }
    let job = Job {
        manifest,
        bundle_dir,
        entry: &entry,
        env_dir,
        toolchain,
        steps,
    };
    let result = match manifest.runtime {
        Runtime::Python | Runtime::PythonMpi => python::install(&job).await,
        Runtime::C | Runtime::CMpi => c::install(&job).await,
        Runtime::Java => java::install(&job).await,
        Runtime::RustMpi => rust::install(&job).await,
        Runtime::Exec => exec::install(&job),
    };
    if result.is_err() {
        let _ = tokio::fs::remove_dir_all(env_dir).await;
    }
    result
}
