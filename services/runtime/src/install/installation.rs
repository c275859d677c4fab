//! What every runtime's install produces ([`Installation`]: the command
//! line that runs the function), how it fails ([`InstallError`]), and the
//! steps they share: running a tool with a time limit and keeping the tail
//! of its output, creating a folder.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use comfaas_schemas::{InstallStep, Manifest, Runtime};
use tokio::process::Command;

use super::toolchain::{MpiLauncher, Toolchain};

/// How long one install step (venv creation, package install) may take.
const STEP_TIMEOUT: Duration = Duration::from_secs(600);
/// Bytes of an install tool's output kept in the error.
const ERROR_TAIL: usize = 1500;

/// One install: the function's manifest, its unpacked bundle and entry
/// file, the folder its environment goes in, and the host's tools. Every
/// runtime's `install` takes one.
#[derive(Debug, Clone, Copy)]
pub(super) struct Job<'a> {
    /// The function's manifest.
    pub manifest: &'a Manifest,
    /// The unpacked bundle.
    pub bundle_dir: &'a Path,
    /// The manifest's entry inside it (checked to be a file).
    pub entry: &'a Path,
    /// Where the function's environment goes (a venv, binaries, classes).
    pub env_dir: &'a Path,
    /// The host's tools.
    pub toolchain: &'a Toolchain,
    /// Where each step's time is written down.
    pub steps: &'a StepLog,
}

/// The steps one install ran and how long each took, in order: where a
/// cold deploy's time goes (reported in the node's `FunctionState`).
#[derive(Debug, Default)]
pub(super) struct StepLog(Mutex<Vec<InstallStep>>);

impl StepLog {
    /// `name` ran from `started` until now.
    pub fn record(&self, name: &str, started: Instant) {
        let step = InstallStep {
            name: name.to_owned(),
            ms: started.elapsed().as_millis() as u64,
        };
        // A panic while holding the lock leaves plain data behind.
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push(step);
    }

    /// The steps written down.
    pub fn into_steps(self) -> Vec<InstallStep> {
        self.0.into_inner().unwrap_or_else(|e| e.into_inner())
    }
}

impl Job<'_> {
    /// The installed function: `program` with `args`, with `path` folders
    /// first on its `PATH`.
    pub fn installation(
        &self,
        program: PathBuf,
        args: Vec<OsString>,
        path: Vec<PathBuf>,
    ) -> Installation {
        Installation {
            runtime: self.manifest.runtime,
            bundle_dir: self.bundle_dir.to_path_buf(),
            env_dir: self.env_dir.to_path_buf(),
            program,
            args,
            path,
        }
    }
}

/// An installed function: how to run it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installation {
    /// The runtime.
    pub runtime: Runtime,
    /// The unpacked bundle.
    pub bundle_dir: PathBuf,
    /// The environment built for it (a venv, binaries, classes); it may
    /// not exist (runtime `exec`).
    pub env_dir: PathBuf,
    /// The program to start (under `mpirun` for MPI runtimes).
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<OsString>,
    /// Folders the program needs on its `PATH` (the venv's `bin`).
    pub path: Vec<PathBuf>,
}

impl Installation {
    /// Program and arguments of one run with `procs` processes.
    pub fn command(&self, procs: u32, mpi: Option<&MpiLauncher>) -> (PathBuf, Vec<OsString>) {
        match mpi.filter(|_| self.runtime.is_mpi()) {
            Some(launcher) => {
                let mut args = launcher.args(procs);
                args.push(self.program.clone().into_os_string());
                args.extend(self.args.iter().cloned());
                (launcher.program.clone(), args)
            }
            None => (self.program.clone(), self.args.clone()),
        }
    }
}

/// An install that did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// This node cannot install that runtime.
    #[error("runtime `{0}` is not available on this node: {1} is missing")]
    UnsupportedRuntime(Runtime, &'static str),
    /// The manifest's entry point is not in the bundle.
    #[error("entry `{0}` is not a file in the bundle")]
    MissingEntry(String),
    /// The entry is not usable for the runtime.
    #[error("entry `{entry}`: {reason}")]
    BadEntry {
        /// The entry.
        entry: String,
        /// Why.
        reason: String,
    },
    /// A line of the bundle's `requirements.txt` is not a plain requirement.
    #[error("requirements.txt line {line}: {reason}")]
    Requirement {
        /// Its number, from 1.
        line: usize,
        /// Why it is refused.
        reason: String,
    },
    /// A tool failed; its output tail is included.
    #[error("{step} failed: {detail}")]
    Step {
        /// What was run.
        step: String,
        /// Exit status and output tail.
        detail: String,
    },
}

/// The executor's variables an install step keeps: how the host reaches a
/// package index through its proxy and which certificate authorities it
/// trusts (a site behind a TLS-inspecting proxy needs both).
const NETWORK_ENV: [&str; 12] = [
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "REQUESTS_CA_BUNDLE",
    "PIP_CERT",
    "CURL_CA_BUNDLE",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "no_proxy",
];

pub(super) async fn create_dir(dir: &Path) -> Result<(), InstallError> {
    tokio::fs::create_dir_all(dir)
        .await
        .map_err(|e| InstallError::Step {
            step: format!("create {}", dir.display()),
            detail: e.to_string(),
        })
}

/// Writes a file the runtime ships into a function's environment.
pub(super) async fn write_file(file: &Path, contents: &str) -> Result<(), InstallError> {
    tokio::fs::write(file, contents)
        .await
        .map_err(|e| InstallError::Step {
            step: format!("write {}", file.display()),
            detail: e.to_string(),
        })
}

/// Runs one install step of the version whose environment is `env_dir`,
/// turning failure into an error with the output tail. The step gets a
/// scrubbed environment, nothing of the executor's: `PATH` (the folders of
/// the tools found, then the system's), `HOME` (a folder of the install),
/// `LANG`, and what the tools need to work offline from this node's caches
/// (uv's cache, cargo's home), and how this host reaches a package index
/// ([`NETWORK_ENV`]: its proxy and the certificates it trusts, no
/// credentials of the executor's own); pip and uv read no configuration
/// file.
pub(super) async fn step(name: &str, command: Command, job: &Job<'_>) -> Result<(), InstallError> {
    let started = Instant::now();
    let result = run_step(name, command, job.toolchain, job.env_dir).await;
    job.steps.record(name, started);
    result
}

async fn run_step(
    name: &str,
    mut command: Command,
    toolchain: &Toolchain,
    env_dir: &Path,
) -> Result<(), InstallError> {
    let home = env_dir.with_extension("home");
    create_dir(&home).await?;
    // What the runtime's install set itself (CARGO_TARGET_DIR) stays.
    let own: Vec<(OsString, OsString)> = command
        .as_std()
        .get_envs()
        .filter_map(|(k, v)| Some((k.to_owned(), v?.to_owned())))
        .collect();
    command
        .env_clear()
        .env("PATH", &toolchain.tool_path)
        .env("HOME", &home)
        .env("LANG", "C.UTF-8")
        .env("PIP_CONFIG_FILE", "/dev/null")
        .env("PIP_NO_INPUT", "1")
        .env("UV_NO_CONFIG", "1")
        .env("UV_PYTHON_DOWNLOADS", "never")
        .envs(toolchain.tool_env.iter().map(|(k, v)| (k, v)))
        .envs(
            NETWORK_ENV
                .iter()
                .filter_map(|k| Some((k, std::env::var_os(k)?))),
        )
        .envs(own);
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
