//! `python` and `python-mpi`: a venv of the function's own, made with uv
//! (or `python3 -m venv` + pip), its requirements (and `mpi4py`)
//! installed into it; handler mode adds the warm worker's loop.

use comfaas_schemas::Runtime;
use std::ffi::OsString;
use tokio::process::Command;

use super::installation::{step, InstallError, Installation, Job};

pub(super) async fn install(job: &Job<'_>) -> Result<Installation, InstallError> {
    let python = job.env_dir.join("bin").join("python");
    let mut requirements: Vec<OsString> = job
        .manifest
        .requirements
        .iter()
        .map(OsString::from)
        .collect();
    let requirements_file = job.bundle_dir.join("requirements.txt");
    if requirements.is_empty() && requirements_file.is_file() {
        requirements = vec!["-r".into(), requirements_file.into_os_string()];
    }
    if job.manifest.runtime == Runtime::PythonMpi {
        requirements.push("mpi4py".into());
    }
    let mut sources: Vec<OsString> = Vec::new();
    for dir in &job.toolchain.find_links {
        sources.push("--find-links".into());
        sources.push(dir.clone().into_os_string());
    }
    if job.toolchain.no_index {
        sources.push("--no-index".into());
    }
    match &job.toolchain.uv {
        Some(uv) => {
            let mut venv = Command::new(uv);
            venv.arg("venv")
                .arg("--quiet")
                .arg("--python")
                .arg(&job.toolchain.python)
                .arg(job.env_dir);
            step("uv venv", venv, job.toolchain).await?;
            if !requirements.is_empty() {
                let mut pip = Command::new(uv);
                pip.args(["pip", "install", "--quiet", "--python"])
                    .arg(&python)
                    .args(&sources)
                    .args(&requirements);
                step("uv pip install", pip, job.toolchain).await?;
            }
        }
        None => {
            let mut venv = Command::new(&job.toolchain.python);
            venv.args(["-m", "venv"]).arg(job.env_dir);
            step("python3 -m venv", venv, job.toolchain).await?;
            if !requirements.is_empty() {
                let mut pip = Command::new(job.env_dir.join("bin").join("pip"));
                pip.args(["install", "--quiet", "--disable-pip-version-check"])
                    .args(&sources)
                    .args(&requirements);
                step("pip install", pip, job.toolchain).await?;
            }
        }
    }
    // -s: no user site-packages; -E: ignore PYTHON* variables; -B: do not
    // write bytecode into the shared bundle.
    let mut args: Vec<OsString> = vec!["-s".into(), "-E".into(), "-B".into()];
    if job.manifest.mode == comfaas_schemas::Mode::Handler {
        let worker = job.env_dir.join(crate::handler::WORKER_FILE);
        tokio::fs::write(&worker, crate::handler::WORKER_SOURCE)
            .await
            .map_err(|e| InstallError::Step {
                step: "write the handler worker".to_owned(),
                detail: e.to_string(),
            })?;
        args.push(worker.into());
    }
    args.push(job.entry.into());
    Ok(job.installation(python, args, vec![job.env_dir.join("bin")]))
}
