//! `c` and `c-mpi`: compiled once with `cc` or `mpicc`.

use comfaas_schemas::Runtime;
use tokio::process::Command;

use super::installation::{create_dir, step, InstallError, Installation, Job};

pub(super) async fn install(job: &Job<'_>) -> Result<Installation, InstallError> {
    let Job {
        manifest,
        bundle_dir,
        entry,
        env_dir,
        toolchain,
    } = *job;
    let (compiler, name) = match manifest.runtime {
        Runtime::CMpi => (toolchain.mpicc.clone(), "mpicc"),
        _ => (toolchain.cc.clone(), "cc"),
    };
    let compiler = compiler.ok_or(InstallError::UnsupportedRuntime(
        manifest.runtime,
        "a C compiler",
    ))?;
    let bin = env_dir.join("bin");
    create_dir(&bin).await?;
    let program = bin.join(&manifest.name);
    let mut cc = Command::new(compiler);
    cc.args(["-O2", "-std=c11", "-Wall", "-o"])
        .arg(&program)
        .arg(entry)
        .arg("-lm")
        .current_dir(bundle_dir);
    step(name, cc, toolchain).await?;
    Ok(Installation {
        runtime: manifest.runtime,
        bundle_dir: bundle_dir.to_path_buf(),
        program,
        args: Vec::new(),
        path: Vec::new(),
    })
}
