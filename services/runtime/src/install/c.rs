//! `c` and `c-mpi`: compiled once with `cc` or `mpicc`, with handler
//! mode's helper header (`comfaas_handler.h`) on the include path.

use comfaas_schemas::Runtime;
use tokio::process::Command;

use super::installation::{create_dir, step, write_file, InstallError, Installation, Job};

pub(super) async fn install(job: &Job<'_>) -> Result<Installation, InstallError> {
    let (compiler, name) = match job.manifest.runtime {
        Runtime::CMpi => (job.toolchain.mpicc.clone(), "mpicc"),
        _ => (job.toolchain.cc.clone(), "cc"),
    };
    let compiler = compiler.ok_or(InstallError::UnsupportedRuntime(
        job.manifest.runtime,
        "a C compiler",
    ))?;
    let bin = job.env_dir.join("bin");
    create_dir(&bin).await?;
    let program = bin.join(&job.manifest.name);
    // Handler mode's helper, on the include path of every C build.
    let include = job.env_dir.join("include");
    create_dir(&include).await?;
    write_file(
        &include.join(crate::sdk::C_HEADER_FILE),
        crate::sdk::C_HEADER,
    )
    .await?;
    let mut cc = Command::new(compiler);
    cc.args(["-O2", "-std=c11", "-Wall", "-I"])
        .arg(&include)
        .arg("-o")
        .arg(&program)
        .arg(job.entry)
        .arg("-lm")
        .current_dir(job.bundle_dir);
    step(name, cc, job).await?;
    Ok(job.installation(program, Vec::new(), Vec::new()))
}
