//! Installing a function once, at deploy time, into an environment of its
//! own, and the command line that runs it afterwards.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use comfaas_schemas::{Manifest, Runtime};
use tokio::process::Command;

/// How long one install step (venv creation, package install) may take.
const STEP_TIMEOUT: Duration = Duration::from_secs(600);
/// Bytes of an install tool's output kept in the error.
const ERROR_TAIL: usize = 1500;

/// The tools installs use, found once at start-up.
#[derive(Debug, Clone)]
pub struct Toolchain {
    /// The Python interpreter venvs are made from.
    pub python: PathBuf,
    /// `uv`, when installed: much faster venvs and installs.
    pub uv: Option<PathBuf>,
    /// uv's cache, kept beside the venvs so installs can hard-link from it.
    pub uv_cache: Option<PathBuf>,
}

impl Toolchain {
    /// Finds `python3` and `uv` on the `PATH`; `uv_cache` is where uv keeps
    /// its cache.
    pub fn detect(uv_cache: Option<PathBuf>) -> Self {
        Self {
            python: find_on_path("python3").unwrap_or_else(|| PathBuf::from("python3")),
            uv: find_on_path("uv"),
            uv_cache,
        }
    }

    /// The same toolchain without uv (the `python3 -m venv` + pip path).
    pub fn without_uv(mut self) -> Self {
        self.uv = None;
        self
    }
}

/// The first executable called `name` on the `PATH`.
pub fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// Runtimes this host can install now.
pub fn available_runtimes(toolchain: &Toolchain) -> Vec<Runtime> {
    let mut runtimes = Vec::new();
    if toolchain.python.is_file() {
        runtimes.push(Runtime::Python);
    }
    runtimes
}

/// An installed function: how to run it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installation {
    /// The runtime.
    pub runtime: Runtime,
    /// The unpacked bundle.
    pub bundle_dir: PathBuf,
    /// The program to start.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<OsString>,
}

/// An install that did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// This node cannot install that runtime.
    #[error("runtime `{0}` is not available on this node")]
    UnsupportedRuntime(Runtime),
    /// The manifest's entry point is not in the bundle.
    #[error("entry `{0}` is not a file in the bundle")]
    MissingEntry(String),
    /// A tool failed; its output tail is included.
    #[error("{step} failed: {detail}")]
    Step {
        /// What was run.
        step: String,
        /// Exit status and output tail.
        detail: String,
    },
}

/// Installs `manifest`'s function from `bundle_dir` into `env_dir` (created
/// here; removed again when the install fails).
pub async fn install(
    manifest: &Manifest,
    bundle_dir: &Path,
    env_dir: &Path,
    toolchain: &Toolchain,
) -> Result<Installation, InstallError> {
    let entry = bundle_dir.join(&manifest.entry);
    if !entry.is_file() {
        return Err(InstallError::MissingEntry(manifest.entry.clone()));
    }
    let result = match manifest.runtime {
        Runtime::Python => install_python(manifest, bundle_dir, &entry, env_dir, toolchain).await,
        other => Err(InstallError::UnsupportedRuntime(other)),
    };
    if result.is_err() {
        let _ = tokio::fs::remove_dir_all(env_dir).await;
    }
    result
}

async fn install_python(
    manifest: &Manifest,
    bundle_dir: &Path,
    entry: &Path,
    env_dir: &Path,
    toolchain: &Toolchain,
) -> Result<Installation, InstallError> {
    let python = env_dir.join("bin").join("python");
    let mut requirements: Vec<OsString> =
        manifest.requirements.iter().map(OsString::from).collect();
    let requirements_file = bundle_dir.join("requirements.txt");
    if requirements.is_empty() && requirements_file.is_file() {
        requirements = vec!["-r".into(), requirements_file.into_os_string()];
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
                    .args(&requirements);
                step("pip install", pip, toolchain).await?;
            }
        }
    }
    Ok(Installation {
        runtime: Runtime::Python,
        bundle_dir: bundle_dir.to_path_buf(),
        program: python,
        // -s: no user site-packages; -E: ignore PYTHON* variables; -B: do not
        // write bytecode into the shared bundle.
        args: vec!["-s".into(), "-E".into(), "-B".into(), entry.into()],
    })
}

/// Runs one install step, turning failure into an error with the output tail.
async fn step(name: &str, mut command: Command, toolchain: &Toolchain) -> Result<(), InstallError> {
    if let Some(cache) = &toolchain.uv_cache {
        command.env("UV_CACHE_DIR", cache);
    }
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let output = match tokio::time::timeout(STEP_TIMEOUT, command.output()).await {
        Err(_) => {
            return Err(InstallError::Step {
                step: name.to_owned(),
                detail: format!("timed out after {}s", STEP_TIMEOUT.as_secs()),
            })
        }
        Ok(Err(e)) => {
            return Err(InstallError::Step {
                step: name.to_owned(),
                detail: e.to_string(),
            })
        }
        Ok(Ok(output)) => output,
    };
    if output.status.success() {
        return Ok(());
    }
    let mut text = String::from_utf8_lossy(&output.stderr).into_owned();
    text.push_str(&String::from_utf8_lossy(&output.stdout));
    let text = text.trim();
    let tail_start = text
        .char_indices()
        .map(|(i, _)| i)
        .find(|&i| text.len() - i <= ERROR_TAIL)
        .unwrap_or(0);
    Err(InstallError::Step {
        step: name.to_owned(),
        detail: format!("{}: {}", output.status, &text[tail_start..]),
    })
}
