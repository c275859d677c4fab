//! `python` and `python-mpi`: a venv of the function's own, made with uv
//! (or `python3 -m venv` + pip), its requirements (and `mpi4py`)
//! installed into it; handler mode adds the warm worker's loop.

use comfaas_schemas::Runtime;
use std::ffi::OsString;
use tokio::process::Command;

use super::installation::{step, InstallError, Installation, Job};

pub(super) async fn install(job: &Job<'_>) -> Result<Installation, InstallError> {
    let Job {
        manifest,
        bundle_dir,
        entry,
        env_dir,
        toolchain,
    } = *job;
    let python = env_dir.join("bin").join("python");
    let mut requirements: Vec<OsString> =
        manifest.requirements.iter().map(OsString::from).collect();
    let requirements_file = bundle_dir.join("requirements.txt");
    if requirements.is_empty() && requirements_file.is_file() {
        requirements = vec!["-r".into(), requirements_file.into_os_string()];
    }
    if manifest.runtime == Runtime::PythonMpi {
        requirements.push("mpi4py".into());
    }
    let mut sources: Vec<OsString> = Vec::new();
    for dir in &toolchain.find_links {
        sources.push("--find-links".into());
        sources.push(dir.clone().into_os_string());
    }
    if toolchain.no_index {
        sources.push("--no-index".into());
    }
    match &toolchain.uv {
        Some(uv) => {
            let mut venv = Command::new(uv);
            venv.arg("venv")
                .arg("--quiet")
                .arg("--python")
                .arg(&toolchain.python)
                .arg(env_dir);
            step("uv venv", venv, toolchain).await?;
            if !requirements.is_empty() {
                let mut pip = Command::new(uv);
                pip.args(["pip", "install", "--quiet", "--python"])
                    .arg(&python)
                    .args(&sources)
                    .args(&requirements);
                step("uv pip install", pip, toolchain).await?;
            }
        }
        None => {
            let mut venv = Command::new(&toolchain.python);
            venv.args(["-m", "venv"]).arg(env_dir);
            step("python3 -m venv", venv, toolchain).await?;
            if !requirements.is_empty() {
                let mut pip = Command::new(env_dir.join("bin").join("pip"));
                pip.args(["install", "--quiet", "--disable-pip-version-check"])
                    .args(&sources)
                    .args(&requirements);
                step("pip install", pip, toolchain).await?;
            }
        }
    }
    // -s: no user site-packages; -E: ignore PYTHON* variables; -B: do not
    // write bytecode into the shared bundle.
    let mut args: Vec<OsString> = vec!["-s".into(), "-E".into(), "-B".into()];
    if manifest.mode == comfaas_schemas::Mode::Handler {
        let worker = env_dir.join(crate::handler::WORKER_FILE);
        tokio::fs::write(&worker, crate::handler::WORKER_SOURCE)
            .await
            .map_err(|e| InstallError::Step {
                step: "write the handler worker".to_owned(),
                detail: e.to_string(),
            })?;
        args.push(worker.into());
    }
    args.push(entry.into());
    Ok(Installation {
        runtime: manifest.runtime,
        bundle_dir: bundle_dir.to_path_buf(),
        program: python,
        args,
        path: vec![env_dir.join("bin")],
    })
}
