//! What a run may see and use. [`Sandboxes`] is the node's side, set up
//! once at start: isolation by bubblewrap (or, configured explicitly,
//! none), the uid range functions get their users from, and the cgroups
//! found writable. A [`Sandbox`] is one installed version's: its
//! environment (scrubbed: nothing of the executor's, plus the manifest's
//! `env`), its user, its network, its limits and its secrets. Each run
//! gets a [`RunDir`]: a private directory (its working directory, `HOME`
//! and `TMPDIR`, its secrets in `secrets/`) and the [`Jail`] its processes
//! start in.
//!
//! The invariant: a run (a process per call, every warm worker, every MPI
//! rank) starts inside bwrap as its function's own unprivileged user when
//! the executor is root (the executor's user otherwise, still in user,
//! mount, pid and ipc namespaces), and sees `/usr` and `/etc` read-only,
//! its own installation and input read-only, its private directory
//! read-write, a private `/tmp` and `/dev/shm`, a minimal `/dev`, the
//! `/proc` of its own pid namespace, and no network unless its manifest
//! says `network = true`. Nothing else of the host: not the executor's
//! data directory, other functions, credentials, or the executor's
//! `/proc`. Its limits (memory, processes, open files, file size, CPU
//! time) are set before anything of it runs, and a run that hits one is
//! told which ([`LimitHit`]).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use comfaas_schemas::{Manifest, ResourceLimits, SandboxReport};

use crate::handler::WorkerSpec;
use crate::install::Installation;
use crate::process::RunInput;

use crate::jail::{Bwrap, Cgroups, UidTable};
pub use crate::jail::{
    Identity, Isolation, Jail, LimitHit, SandboxConfig, SandboxError, SYSTEM_PATH,
};

/// File name of a run's input inside its private directory, when the input
/// came in the invocation message but a file is needed (MPI jobs).
const INPUT_FILE: &str = "input";
/// File the node's function uids are kept in, in its data directory.
const UIDS_FILE: &str = "sandbox-uids";
/// Host folders every run sees read-only, where they exist (links such as
/// `/bin -> usr/bin` are recreated as links).
const SYSTEM_DIRS: [&str; 8] = [
    "/usr", "/etc", "/bin", "/sbin", "/lib", "/lib64", "/lib32", "/libx32",
];

/// The node's sandboxing: set up once at start, shared by every install.
#[derive(Debug, Clone)]
pub struct Sandboxes {
    isolation: Isolation,
    bwrap: Option<Arc<Bwrap>>,
    uids: Option<Arc<UidTable>>,
    defaults: ResourceLimits,
}

impl Sandboxes {
    /// The node's sandboxing as `config` says, with `defaults` for limits a
    /// manifest leaves out; `data_dir` holds the uid table. With isolation
    /// `bwrap` this fails (and the executor refuses to start) when bwrap is
    /// missing or cannot make a sandbox, or when the executor is root and
    /// the data directory is out of the functions' users' reach. Blocking:
    /// it starts bwrap once to prove it works.
    pub fn open(
        config: &SandboxConfig,
        defaults: ResourceLimits,
        data_dir: &Path,
        node: &str,
    ) -> Result<Self, SandboxError> {
        defaults
            .validate()
            .map_err(|e| SandboxError::Config(format!("limits: {e}")))?;
        if config.isolation == Isolation::None {
            return Ok(Self::none_with(defaults));
        }
        let executable = std::fs::metadata(&config.bwrap).is_ok_and(|m| {
            use std::os::unix::fs::PermissionsExt;
            m.is_file() && m.permissions().mode() & 0o111 != 0
        });
        if !executable {
            return Err(SandboxError::MissingBwrap(config.bwrap.clone()));
        }
        let uids = if nix::unistd::geteuid().is_root() {
            reachable(data_dir)?;
            Some(Arc::new(UidTable::open(
                data_dir.join(UIDS_FILE),
                config.uid_base,
                config.uid_count,
            )?))
        } else {
            None
        };
        let mut system = Vec::new();
        for dir in SYSTEM_DIRS
            .iter()
            .map(Path::new)
            .chain(config.read_only.iter().map(PathBuf::as_path))
        {
            match std::fs::read_link(dir) {
                Ok(target) => {
                    system.extend(["--symlink".into(), target.into_os_string(), dir.into()]);
                }
                Err(_) if dir.is_dir() || dir.is_file() => {
                    system.extend(["--ro-bind".into(), OsString::from(dir), dir.into()]);
                }
                Err(_) => {}
            }
        }
        let bwrap = Arc::new(Bwrap {
            program: config.bwrap.clone(),
            system,
            cgroups: Cgroups::detect(node),
        });
        let sandboxes = Self {
            isolation: Isolation::Bwrap,
            bwrap: Some(bwrap),
            uids,
            defaults,
        };
        sandboxes.prove(config)?;
        Ok(sandboxes)
    }

    /// No sandbox: runs are plain child processes (isolation `none`).
    pub fn none() -> Self {
        Self::none_with(ResourceLimits::default())
    }

    fn none_with(defaults: ResourceLimits) -> Self {
        Self {
            isolation: Isolation::None,
            bwrap: None,
            uids: None,
            defaults,
        }
    }

    /// Starts `true` in a sandbox as a function's user would be, so a host
    /// without user namespaces fails at start, not at the first run.
    fn prove(&self, config: &SandboxConfig) -> Result<(), SandboxError> {
        let probe = Jail {
            bwrap: self.bwrap.clone(),
            identity: self.uids.as_ref().map(|_| Identity {
                uid: config.uid_base,
                gid: config.uid_base,
            }),
            ..Jail::none()
        };
        let mut jail = probe;
        jail.network = false;
        let command = jail.command(Path::new("/bin/true"), &[], Path::new("/"), &[]);
        let mut command = command.into_std();
        // No byte to wait for: an empty stdin ends the wait at once.
        let output = command
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(|e| SandboxError::BwrapFails(e.to_string()))?;
        if output.status.success() {
            Ok(())
        } else {
            Err(SandboxError::BwrapFails(
                String::from_utf8_lossy(&output.stderr).trim().to_owned(),
            ))
        }
    }

    /// What the node's load report says of it.
    pub fn report(&self) -> SandboxReport {
        SandboxReport {
            isolation: self.isolation.as_str().to_owned(),
            cgroups: self
                .bwrap
                .as_ref()
                .map_or("none", |b| b.cgroups.name())
                .to_owned(),
            function_users: self.uids.is_some(),
        }
    }

    /// The user `function` runs as, when it is not the executor's.
    pub fn identity(&self, function: &str) -> Result<Option<Identity>, SandboxError> {
        self.uids
            .as_ref()
            .map(|uids| uids.identity(function))
            .transpose()
    }

    /// Creates `dir`, the folder of one installed version of `function`
    /// (under `root`, the folder of every function's versions): mode 0750,
    /// group the function's, so its runs (and no other function's) may read
    /// its installation; `root` and the function's folder are 0711.
    pub fn make_version_dir(
        &self,
        root: &Path,
        function: &str,
        dir: &Path,
    ) -> Result<(), SandboxError> {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        let io = |what: &str, path: &Path| {
            let what = format!("{what} {}", path.display());
            move |source| SandboxError::Io { what, source }
        };
        let function_dir = root.join(function);
        for folder in [root, function_dir.as_path()] {
            std::fs::DirBuilder::new()
                .recursive(true)
                .create(folder)
                .map_err(io("create", folder))?;
            std::fs::set_permissions(folder, std::fs::Permissions::from_mode(0o711))
                .map_err(io("chmod", folder))?;
        }
        std::fs::DirBuilder::new()
            .mode(0o750)
            .create(dir)
            .map_err(io("create", dir))?;
        if let Some(identity) = self.identity(function)? {
            std::os::unix::fs::chown(dir, None, Some(identity.gid)).map_err(io("chown", dir))?;
        }
        Ok(())
    }

    /// The sandbox of `manifest`'s function installed as `installation` on
    /// `node`: its environment, user, network and limits (the manifest's,
    /// else this node's defaults).
    pub fn sandbox(
        &self,
        installation: &Installation,
        manifest: &Manifest,
        node: &str,
    ) -> Result<Sandbox, SandboxError> {
        let mut path: Vec<PathBuf> = installation.path.clone();
        path.extend(std::env::split_paths(SYSTEM_PATH));
        let path = std::env::join_paths(path).unwrap_or_else(|_| SYSTEM_PATH.into());
        let mut env: Vec<(OsString, OsString)> =
            vec![("PATH".into(), path), ("LANG".into(), "C.UTF-8".into())];
        // Validated names: none of them is one the platform sets below.
        env.extend(
            manifest
                .env
                .iter()
                .filter(|(name, _)| comfaas_schemas::validate_env_name(name).is_ok())
                .map(|(k, v)| (k.into(), v.into())),
        );
        env.extend([
            ("COMFAAS_FUNCTION".into(), manifest.name.clone().into()),
            ("COMFAAS_NODE".into(), node.into()),
            (
                "COMFAAS_BUNDLE_DIR".into(),
                installation.bundle_dir.clone().into(),
            ),
        ]);
        let read_only = [&installation.bundle_dir, &installation.env_dir]
            .into_iter()
            .filter(|dir| dir.exists())
            .cloned()
            .collect();
        let jail = Jail {
            bwrap: self.bwrap.clone(),
            identity: self.identity(&manifest.name)?,
            network: manifest.network,
            limits: manifest.limits.or(self.defaults),
            cpu_time: true,
            read_only,
            writable: Vec::new(),
            secrets: crate::jail::SecretFiles::default(),
        };
        Ok(Sandbox { env, jail })
    }
}

/// Checks that every folder above `dir` lets others pass (bwrap, started
/// as a function's user, must reach the function's files below it), and
/// makes `dir` itself 0711: passable, not listable.
fn reachable(dir: &Path) -> Result<(), SandboxError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o711)
        .create(dir)
        .map_err(|source| SandboxError::Io {
            what: format!("create {}", dir.display()),
            source,
        })?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711)).map_err(|source| {
        SandboxError::Io {
            what: format!("chmod {}", dir.display()),
            source,
        }
    })?;
    let absolute = std::path::absolute(dir).unwrap_or_else(|_| dir.to_owned());
    for ancestor in absolute.ancestors().skip(1) {
        let mode = std::fs::metadata(ancestor)
            .map(|m| m.permissions().mode())
            .unwrap_or(0);
        if mode & 0o001 == 0 {
            return Err(SandboxError::Unreachable {
                dir: ancestor.to_owned(),
                mode: mode & 0o7777,
            });
        }
    }
    Ok(())
}

/// What every run of one installed function on one node may see. Built
/// once per install and shared by its runs and its warm workers.
#[derive(Debug, Clone)]
pub struct Sandbox {
    /// The environment every run starts from.
    env: Vec<(OsString, OsString)>,
    /// How its processes start.
    jail: Jail,
}

/// One run inside a [`Sandbox`]: its private directory, its complete
/// environment and its jail. Remove it with [`RunDir::remove`] when the
/// run is over.
#[derive(Debug)]
pub struct RunDir {
    dir: PathBuf,
    env: Vec<(OsString, OsString)>,
    jail: Jail,
}

impl Sandbox {
    /// The same sandbox with `secrets` (name, value), which every run and
    /// warm worker finds as the file `secrets/<name>` of its directory
    /// (mode 0400, its own user). Names must pass
    /// [`comfaas_schemas::validate_secret_name`].
    pub fn with_secrets(mut self, secrets: Vec<(String, Vec<u8>)>) -> Self {
        self.jail.secrets = crate::jail::SecretFiles::new(secrets);
        self
    }

    /// The user its runs start as, when it is not the executor's.
    pub fn identity(&self) -> Option<Identity> {
        self.jail.identity()
    }

    /// The environment every run and every warm worker starts from (a
    /// worker gets its own `HOME` and `TMPDIR` when it starts).
    #[cfg(test)]
    fn env(&self) -> &[(OsString, OsString)] {
        &self.env
    }

    /// How to start warm handler-mode workers of `installation` in this
    /// sandbox, each in a private directory under `work_root`.
    pub fn worker_spec(&self, installation: &Installation, work_root: PathBuf) -> WorkerSpec {
        WorkerSpec {
            runtime: installation.runtime,
            program: installation.program.clone(),
            args: installation.args.clone(),
            env: self.env.clone(),
            work_root,
            jail: self.jail.clone(),
            start_timeout: crate::handler::START_TIMEOUT,
        }
    }

    /// Creates `dir` as the private directory of one run of invocation
    /// `invocation_id`: its working directory, `HOME` and `TMPDIR`, with
    /// `COMFAAS_INVOCATION_ID` set, owned by the run's user, holding its
    /// secrets.
    pub async fn enter(&self, dir: PathBuf, invocation_id: &str) -> std::io::Result<RunDir> {
        let mut jail = self.jail.clone();
        jail.writable.push(dir.clone());
        jail.make_private_dir(&dir).await?;
        let mut env = self.env.clone();
        env.extend([
            ("HOME".into(), dir.clone().into()),
            ("TMPDIR".into(), dir.clone().into()),
            ("COMFAAS_INVOCATION_ID".into(), invocation_id.into()),
        ]);
        Ok(RunDir { dir, env, jail })
    }
}

impl RunDir {
    /// The private directory: the run's working directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The run's complete environment.
    pub fn env(&self) -> &[(OsString, OsString)] {
        &self.env
    }

    /// How the run's processes start.
    pub fn jail(&self) -> &Jail {
        &self.jail
    }

    /// Where stdout over the in-memory cap spills: beside the private
    /// directory, not in it, where the run could have put a link.
    pub fn spill_file(&self) -> PathBuf {
        let mut name = self.dir.file_name().map(OsString::from).unwrap_or_default();
        name.push(".stdout");
        self.dir.with_file_name(name)
    }

    /// Names the input as a file in `COMFAAS_INPUT_FILE`, for MPI jobs,
    /// where only rank 0 has stdin and every rank reads its slice of the
    /// file. An input that came as bytes is written into the private
    /// directory first; a cached one is shown to the run read-only.
    pub async fn share_input(&mut self, input: &RunInput) -> std::io::Result<()> {
        let file = match input {
            RunInput::File(path) => {
                self.jail.read_only.push(path.clone());
                path.clone()
            }
            RunInput::Bytes(bytes) => {
                let file = self.dir.join(INPUT_FILE);
                tokio::fs::write(&file, bytes).await?;
                file
            }
        };
        self.env.push(("COMFAAS_INPUT_FILE".into(), file.into()));
        Ok(())
    }

    /// Removes the private directory, the spill file and everything the run
    /// left in them.
    pub async fn remove(self) {
        if let Err(e) = tokio::fs::remove_dir_all(&self.dir).await {
            tracing::warn!("cannot remove run directory {}: {e}", self.dir.display());
        }
        let _ = tokio::fs::remove_file(self.spill_file()).await;
    }
}

#[cfg(test)]
mod tests;
