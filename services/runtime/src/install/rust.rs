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
    let Job {
        manifest,
        bundle_dir,
        env_dir,
        toolchain,
        ..
    } = *job;
    let cargo = toolchain
        .cargo
        .clone()
        .ok_or(InstallError::UnsupportedRuntime(Runtime::RustMpi, "cargo"))?;
    if !bundle_dir.join("Cargo.toml").is_file() {
        return Err(InstallError::BadEntry {
            entry: manifest.entry.clone(),
            reason: "a rust-mpi bundle is a cargo package: Cargo.toml is missing".to_owned(),
        });
    }
    let target = toolchain
        .cargo_target
        .clone()
        .unwrap_or_else(|| env_dir.join("target"));
    // Two versions of one function share the target folder's binary path:
    // build and copy one at a time, or one could copy the other's binary.
    let gate = {
        let mut builds = RUST_BUILDS.lock().unwrap_or_else(|e| e.into_inner());
        builds.entry(manifest.name.clone()).or_default().clone()
    };
    let _one_at_a_time = gate.lock().await;
    let mut build = Command::new(cargo);
    build
        .args(["build", "--release", "--quiet", "--bin", &manifest.name])
        .arg("--manifest-path")
        .arg(bundle_dir.join("Cargo.toml"))
        .env("CARGO_TARGET_DIR", &target);
    if toolchain.cargo_offline {
        build.arg("--offline");
    }
    if bundle_dir.join("Cargo.lock").is_file() {
        build.arg("--locked");
    }
    step("cargo build", build, toolchain).await?;
    let bin = env_dir.join("bin");
    create_dir(&bin).await?;
    let program = bin.join(&manifest.name);
    // Copied out: the shared target folder is rebuilt by other functions.
    tokio::fs::copy(target.join("release").join(&manifest.name), &program)
        .await
        .map_err(|e| InstallError::Step {
            step: "copy the built binary".to_owned(),
            detail: format!("{e} (is the package's binary named `{}`?)", manifest.name),
        })?;
    Ok(Installation {
        runtime: Runtime::RustMpi,
        bundle_dir: bundle_dir.to_path_buf(),
        program,
        args: Vec::new(),
        path: Vec::new(),
    })
}
