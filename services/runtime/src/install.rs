//! Installing a function once, at deploy time, into an environment of its
//! own, and the command line that runs it afterwards.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use comfaas_schemas::{Manifest, Runtime};
use tokio::process::Command;

/// One lock per Rust function name, held across its build and copy.
static RUST_BUILDS: std::sync::LazyLock<
    std::sync::Mutex<std::collections::HashMap<String, std::sync::Arc<tokio::sync::Mutex<()>>>>,
> = std::sync::LazyLock::new(Default::default);

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
    /// Extra folders of wheels to install from (`--find-links`).
    pub find_links: Vec<PathBuf>,
    /// Install Python packages only from `find_links`, never from an index.
    pub no_index: bool,
    /// `cc` for the `c` runtime.
    pub cc: Option<PathBuf>,
    /// `mpicc` for the `c-mpi` runtime.
    pub mpicc: Option<PathBuf>,
    /// `javac` and `java` for the `java` runtime.
    pub java: Option<(PathBuf, PathBuf)>,
    /// `cargo` for the `rust-mpi` runtime.
    pub cargo: Option<PathBuf>,
    /// Shared cargo target folder, so the `mpi` crate is built once per node.
    pub cargo_target: Option<PathBuf>,
    /// Build Rust functions with `--offline` (crates must be fetched already).
    pub cargo_offline: bool,
    /// `mpirun` and its flavour, for the MPI runtimes.
    pub mpi: Option<MpiLauncher>,
}

/// Which MPI implementation `mpirun` belongs to: their flags differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MpiFlavor {
    /// Open MPI: refuses root without a switch, refuses more processes than
    /// cores without `--oversubscribe`.
    OpenMpi,
    /// MPICH (Hydra): oversubscribes by default.
    Mpich,
}

/// The `mpirun` of this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MpiLauncher {
    /// Its path.
    pub program: PathBuf,
    /// Its implementation.
    pub flavor: MpiFlavor,
}

impl MpiLauncher {
    /// Finds `mpirun` (or `mpiexec`) and asks it what it is.
    pub fn detect() -> Option<Self> {
        let program = find_on_path("mpirun").or_else(|| find_on_path("mpiexec"))?;
        let text = version_text(&program)?.to_lowercase();
        let flavor = if text.contains("open mpi") || text.contains("open-mpi") {
            MpiFlavor::OpenMpi
        } else if text.contains("hydra") || text.contains("mpich") {
            MpiFlavor::Mpich
        } else {
            return None;
        };
        Some(Self { program, flavor })
    }

    /// Arguments before the program for a job of `procs` processes.
    pub fn args(&self, procs: u32) -> Vec<OsString> {
        match self.flavor {
            MpiFlavor::OpenMpi => {
                let mut args: Vec<OsString> = vec!["--oversubscribe".into()];
                if nix::unistd::geteuid().is_root() {
                    args.push("--allow-run-as-root".into());
                }
                // Containers often forbid the cross-memory-attach syscalls
                // Open MPI's shared-memory transport tries first.
                args.extend(
                    ["--mca", "btl_vader_single_copy_mechanism", "none"].map(OsString::from),
                );
                args.extend(["-np".into(), procs.to_string().into()]);
                args
            }
            MpiFlavor::Mpich => vec!["-n".into(), procs.to_string().into()],
        }
    }
}

/// What `program --version` prints, or `None` if it fails or takes over 5 s
/// (a broken MPI install can hang).
fn version_text(program: &Path) -> Option<String> {
    let mut child = std::process::Command::new(program)
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .ok()?;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    }
    let output = child.wait_with_output().ok()?;
    Some(
        String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr),
    )
}

impl Toolchain {
    /// Finds every tool on the `PATH` (blocking: it runs `mpirun --version`); `data_dir` holds uv's cache and the
    /// shared cargo target folder.
    pub fn detect(data_dir: &Path) -> Self {
        let java = find_on_path("javac").zip(find_on_path("java"));
        Self {
            python: find_on_path("python3").unwrap_or_else(|| PathBuf::from("python3")),
            uv: find_on_path("uv"),
            uv_cache: Some(data_dir.join("uv-cache")),
            find_links: Vec::new(),
            no_index: false,
            cc: find_on_path("cc").or_else(|| find_on_path("gcc")),
            mpicc: find_on_path("mpicc"),
            java,
            cargo: find_on_path("cargo"),
            cargo_target: Some(data_dir.join("cargo-target")),
            cargo_offline: false,
            mpi: MpiLauncher::detect(),
        }
    }

    /// The same toolchain without uv (the `python3 -m venv` + pip path).
    pub fn without_uv(mut self) -> Self {
        self.uv = None;
        self
    }

    /// What is missing on this host for `runtime`, or `None` when it can install it.
    pub fn missing(&self, runtime: Runtime) -> Option<&'static str> {
        let python = self.python.is_file();
        match runtime {
            Runtime::Python if !python => Some("python3"),
            Runtime::PythonMpi if !python => Some("python3"),
            Runtime::C if self.cc.is_none() => Some("cc"),
            Runtime::CMpi if self.mpicc.is_none() => Some("mpicc"),
            Runtime::RustMpi if self.cargo.is_none() => Some("cargo"),
            Runtime::Java if self.java.is_none() => Some("javac and java"),
            r if r.is_mpi() && self.mpi.is_none() => Some("mpirun (Open MPI or MPICH)"),
            _ => None,
        }
    }
}

/// The folder of wheels `scripts/setup.sh` fills: `COMFAAS_WHEELHOUSE`,
/// else `~/.cache/comfaas/wheels`.
pub fn default_wheelhouse() -> PathBuf {
    std::env::var_os("COMFAAS_WHEELHOUSE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                .join(".cache/comfaas/wheels")
        })
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
    Runtime::ALL
        .into_iter()
        .filter(|r| toolchain.missing(*r).is_none())
        .collect()
}

/// An installed function: how to run it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installation {
    /// The runtime.
    pub runtime: Runtime,
    /// The unpacked bundle.
    pub bundle_dir: PathBuf,
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
    if let Some(missing) = toolchain.missing(manifest.runtime) {
        return Err(InstallError::UnsupportedRuntime(manifest.runtime, missing));
    }
    let entry = bundle_dir.join(&manifest.entry);
    if !entry.is_file() {
        return Err(InstallError::MissingEntry(manifest.entry.clone()));
    }
    let result = match manifest.runtime {
        Runtime::Python | Runtime::PythonMpi => {
            install_python(manifest, bundle_dir, &entry, env_dir, toolchain).await
        }
        Runtime::C | Runtime::CMpi => {
            install_c(manifest, bundle_dir, &entry, env_dir, toolchain).await
        }
        Runtime::Java => install_java(manifest, bundle_dir, &entry, env_dir, toolchain).await,
        Runtime::RustMpi => install_rust(manifest, bundle_dir, env_dir, toolchain).await,
        Runtime::Exec => install_exec(manifest, bundle_dir, &entry),
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

async fn install_c(
    manifest: &Manifest,
    bundle_dir: &Path,
    entry: &Path,
    env_dir: &Path,
    toolchain: &Toolchain,
) -> Result<Installation, InstallError> {
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

async fn install_java(
    manifest: &Manifest,
    bundle_dir: &Path,
    entry: &Path,
    env_dir: &Path,
    toolchain: &Toolchain,
) -> Result<Installation, InstallError> {
    let (javac, java) = toolchain
        .java
        .clone()
        .ok_or(InstallError::UnsupportedRuntime(
            Runtime::Java,
            "javac and java",
        ))?;
    let class = entry
        .file_stem()
        .filter(|_| entry.extension().is_some_and(|e| e == "java"))
        .map(|s| s.to_string_lossy().into_owned())
        .ok_or_else(|| InstallError::BadEntry {
            entry: manifest.entry.clone(),
            reason: "must be a .java file whose class has a main method".to_owned(),
        })?;
    let classes = env_dir.join("classes");
    create_dir(&classes).await?;
    let mut compile = Command::new(javac);
    compile
        .arg("-d")
        .arg(&classes)
        .arg(entry)
        .current_dir(bundle_dir);
    step("javac", compile, toolchain).await?;
    Ok(Installation {
        runtime: Runtime::Java,
        bundle_dir: bundle_dir.to_path_buf(),
        program: java,
        // Small heaps and one GC thread: functions are short and many.
        args: vec![
            "-Xshare:auto".into(),
            "-XX:+UseSerialGC".into(),
            "-XX:TieredStopAtLevel=1".into(),
            "-cp".into(),
            classes.into(),
            class.into(),
        ],
        path: Vec::new(),
    })
}

async fn install_rust(
    manifest: &Manifest,
    bundle_dir: &Path,
    env_dir: &Path,
    toolchain: &Toolchain,
) -> Result<Installation, InstallError> {
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

fn install_exec(
    manifest: &Manifest,
    bundle_dir: &Path,
    entry: &Path,
) -> Result<Installation, InstallError> {
    use std::os::unix::fs::PermissionsExt;
    let executable = std::fs::metadata(entry)
        .map(|m| m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false);
    if !executable {
        return Err(InstallError::BadEntry {
            entry: manifest.entry.clone(),
            reason: "is not executable (chmod +x it before deploying)".to_owned(),
        });
    }
    Ok(Installation {
        runtime: Runtime::Exec,
        bundle_dir: bundle_dir.to_path_buf(),
        program: entry.to_path_buf(),
        args: Vec::new(),
        path: Vec::new(),
    })
}

async fn create_dir(dir: &Path) -> Result<(), InstallError> {
    tokio::fs::create_dir_all(dir)
        .await
        .map_err(|e| InstallError::Step {
            step: format!("create {}", dir.display()),
            detail: e.to_string(),
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
