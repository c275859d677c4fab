//! `rust-mpi`: a cargo package built once against the `mpi` crate, in a
//! target folder shared by the node's Rust functions.

use comfaas_schemas::Runtime;
use tokio::process::Command;

use super::installation::{create_dir, step, InstallError, Installation, Job};

/// One lock per Rust function name, held across its build and copy.
static RUST_BUILDS: std::sync::LazyLock<
    std::sync::Mutex<std::collections::HashMap<String, std::sync::Arc<tokio::sync::Mutex<()>>>>,
> = std::sync::LazyLock::new(Default::default);

pub(super) async fn install(job: &Job<'_>) -> Result<Installation, InstallError> {
    let cargo = job
        .toolchain
        .cargo
        .clone()
        .ok_or(InstallError::UnsupportedRuntime(Runtime::RustMpi, "cargo"))?;
    if !job.bundle_dir.join("Cargo.toml").is_file() {
        return Err(InstallError::BadEntry {
            entry: job.manifest.entry.clone(),
            reason: "a rust-mpi bundle is a cargo package: Cargo.toml is missing".to_owned(),
        });
    }
    let target = job
        .toolchain
        .cargo_target
        .clone()
        .unwrap_or_else(|| job.env_dir.join("target"));
    // Two versions of one function share the target folder's binary path:
    // build and copy one at a time, or one could copy the other's binary.
    let gate = {
        let mut builds = RUST_BUILDS.lock().unwrap_or_else(|e| e.into_inner());
        builds.entry(job.manifest.name.clone()).or_default().clone()
    };
    let _one_at_a_time = gate.lock().await;
    let mut build = Command::new(cargo);
    build
        .args(["build", "--release", "--quiet", "--bin", &job.manifest.name])
        .arg("--manifest-path")
        .arg(job.bundle_dir.join("Cargo.toml"))
        .env("CARGO_TARGET_DIR", &target);
    if job.toolchain.cargo_offline {
        build.arg("--offline");
    }
    if job.bundle_dir.join("Cargo.lock").is_file() {
        build.arg("--locked");
    }
    step("cargo build", build, job).await?;
    let bin = job.env_dir.join("bin");
    create_dir(&bin).await?;
    let program = bin.join(&job.manifest.name);
    // Copied out: the shared target folder is rebuilt by other functions.
    tokio::fs::copy(target.join("release").join(&job.manifest.name), &program)
        .await
        .map_err(|e| InstallError::Step {
            step: "copy the built binary".to_owned(),
            detail: format!(
                "{e} (is the package's binary named `{}`?)",
                job.manifest.name
            ),
        })?;
    Ok(job.installation(program, Vec::new(), Vec::new()))
}
