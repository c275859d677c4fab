//! The tools installs use, found once at start-up, and which runtimes they
//! make available on this host.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use comfaas_schemas::Runtime;

/// The tools installs use, found once at start-up.
#[derive(Debug, Clone)]
pub struct Toolchain {
    /// The Python interpreter venvs are made from.
    pub python: PathBuf,
    /// That interpreter as it describes itself, when it is a CPython: with
    /// uv, venvs are then written by the executor instead of `uv venv`.
    pub venv_python: Option<VenvPython>,
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
    /// `PATH` of install steps: the folders of the tools found, then the
    /// system's; nothing else of the executor's.
    pub tool_path: OsString,
    /// What install steps keep of the executor's environment: where cargo
    /// and rustup keep their crates and toolchains (`CARGO_HOME`,
    /// `RUSTUP_HOME`, resolved), so offline builds find them.
    pub tool_env: Vec<(OsString, OsString)>,
}

/// The interpreter venvs are made from, as it described itself at
/// start-up: enough to write a venv without running a tool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VenvPython {
    /// Its real executable (`sys._base_executable`, never a shim): what a
    /// venv's `bin/python` links to.
    pub executable: PathBuf,
    /// `major.minor.micro`, for the venv's `pyvenv.cfg`.
    pub version: String,
    /// `major.minor`: the venv's `lib/python<major.minor>/site-packages`.
    pub short_version: String,
}

impl VenvPython {
    /// Asks `python` what it is; `None` unless it is a CPython that
    /// answers within 5 s (anything else gets its venv from a tool).
    pub fn detect(python: &Path) -> Option<Self> {
        let output = run_briefly(
            python,
            &[
                "-s",
                "-E",
                "-c",
                "import sys; print(sys.implementation.name); \
                 print(getattr(sys, '_base_executable', None) or sys.executable); \
                 print('%d.%d.%d' % sys.version_info[:3])",
            ],
        )?;
        if !output.status.success() {
            return None;
        }
        let text = String::from_utf8(output.stdout).ok()?;
        let mut lines = text.lines();
        if lines.next()? != "cpython" {
            return None;
        }
        let executable = PathBuf::from(lines.next()?);
        let version = lines.next()?.trim().to_owned();
        let parts: Vec<&str> = version.split('.').collect();
        let numeric = parts.len() == 3 && parts.iter().all(|p| p.parse::<u32>().is_ok());
        if !numeric || !executable.is_absolute() || !executable.is_file() {
            return None;
        }
        Some(Self {
            short_version: format!("{}.{}", parts[0], parts[1]),
            executable,
            version,
        })
    }
}

/// uv itself, when `found` is a script standing in for it (a pyenv or asdf
/// shim): every call through a shim starts a shell and the version
/// manager's own lookups, which on a busy host cost more than the install.
/// uv tells the programs it runs where it is (`UV`); if it cannot be asked,
/// the shim is kept.
fn resolve_uv(found: PathBuf, python: &Path) -> PathBuf {
    let is_script = std::fs::File::open(&found)
        .and_then(|mut file| {
            let mut start = [0u8; 2];
            std::io::Read::read_exact(&mut file, &mut start)?;
            Ok(&start == b"#!")
        })
        .unwrap_or(false);
    if !is_script {
        return found;
    }
    let python = python.to_string_lossy();
    let asked = run_briefly(
        &found,
        &[
            "run",
            "--no-project",
            "--no-config",
            "--offline",
            "--python",
            &python,
            "--",
            &python,
            "-s",
            "-E",
            "-c",
            "import os; print(os.environ.get('UV', ''))",
        ],
    );
    let real = asked
        .filter(|output| output.status.success())
        .and_then(|output| String::from_utf8(output.stdout).ok())
        .map(|text| PathBuf::from(text.trim()))
        .filter(|path| path.is_absolute() && path.is_file());
    real.unwrap_or(found)
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
    let output = run_briefly(program, &["--version"])?;
    Some(
        String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr),
    )
}

/// Runs `program` with `args` and what it printed, or `None` if it cannot
/// start or takes over 5 s.
fn run_briefly(program: &Path, args: &[&str]) -> Option<std::process::Output> {
    let mut child = std::process::Command::new(program)
        .args(args)
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
    child.wait_with_output().ok()
}

impl Toolchain {
    /// Finds every tool on the `PATH` (blocking: it runs `mpirun --version`); `data_dir` holds uv's cache and the
    /// shared cargo target folder.
    pub fn detect(data_dir: &Path) -> Self {
        let java = find_on_path("javac").zip(find_on_path("java"));
        let cargo = find_on_path("cargo");
        // The distribution's interpreter first: runs see /usr, and an
        // interpreter under a home folder (pyenv) is out of their reach.
        let python = Some(PathBuf::from("/usr/bin/python3"))
            .filter(|p| p.is_file())
            .or_else(|| find_on_path("python3"))
            .unwrap_or_else(|| PathBuf::from("python3"));
        let uv = find_on_path("uv").map(|found| resolve_uv(found, &python));
        let home = std::env::var_os("HOME").map(PathBuf::from);
        let mut tool_env = Vec::new();
        for (key, default) in [("CARGO_HOME", ".cargo"), ("RUSTUP_HOME", ".rustup")] {
            let value = std::env::var_os(key).map(PathBuf::from).or_else(|| {
                home.as_ref()
                    .map(|h| h.join(default))
                    .filter(|d| d.is_dir())
            });
            if let Some(value) = value {
                tool_env.push((key.into(), value.into_os_string()));
            }
        }
        let mut path: Vec<PathBuf> = [&cargo, &uv]
            .into_iter()
            .flatten()
            .filter_map(|tool| tool.parent().map(Path::to_path_buf))
            .collect();
        path.extend(std::env::split_paths(crate::jail::SYSTEM_PATH));
        path.dedup();
        let tool_path =
            std::env::join_paths(path).unwrap_or_else(|_| crate::jail::SYSTEM_PATH.into());
        Self {
            venv_python: VenvPython::detect(&python),
            python,
            uv,
            uv_cache: Some(data_dir.join("uv-cache")),
            find_links: Vec::new(),
            no_index: false,
            cc: find_on_path("cc").or_else(|| find_on_path("gcc")),
            mpicc: find_on_path("mpicc"),
            java,
            cargo,
            cargo_target: Some(data_dir.join("cargo-target")),
            cargo_offline: false,
            mpi: MpiLauncher::detect(),
            tool_path,
            tool_env,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_interpreter_says_what_it_is() {
        let python = VenvPython::detect(Path::new("/usr/bin/python3")).unwrap();
        assert!(python.executable.is_absolute() && python.executable.is_file());
        assert!(python
            .version
            .starts_with(&format!("{}.", python.short_version)));
        assert_eq!(python.short_version.split('.').count(), 2);
        // Not a Python at all: no venv is written by hand for it.
        assert_eq!(VenvPython::detect(Path::new("/bin/true")), None);
        assert_eq!(VenvPython::detect(Path::new("/no/such/python")), None);
    }

    #[test]
    fn a_shim_standing_in_for_uv_is_resolved_to_uv_itself() {
        // A stand-in like pyenv's: a shell script that execs the real uv.
        let real = resolve_uv(find_on_path("uv").unwrap(), Path::new("/usr/bin/python3"));
        let dir = tempfile::tempdir().unwrap();
        let shim = dir.path().join("uv");
        std::fs::write(
            &shim,
            format!("#!/bin/sh\nexec {} \"$@\"\n", real.display()),
        )
        .unwrap();
        std::fs::set_permissions(&shim, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let python = Path::new("/usr/bin/python3");
        assert_eq!(resolve_uv(shim.clone(), python), real);
        assert!(!std::fs::read(&real).unwrap().starts_with(b"#!"));
        // A binary is kept as it is; a script that is not uv too.
        assert_eq!(resolve_uv(real.clone(), python), real);
        let other = dir.path().join("not-uv");
        std::fs::write(&other, "#!/bin/sh\nexit 3\n").unwrap();
        std::fs::set_permissions(&other, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        assert_eq!(resolve_uv(other.clone(), python), other);
    }
}
