//! What a run may see: the [`Sandbox`] of an installed function. Today it
//! is a scrubbed environment (nothing of the executor's own, so no
//! credentials leak) and, per run, a private directory that is the run's
//! working directory, `HOME` and `TMPDIR`, removed afterwards. Both ways a
//! function is started (a process per run, or a warm handler-mode worker)
//! start from this environment and nothing else (a worker's own folder,
//! `HOME` and `TMPDIR` are set by `handler` as it starts), so this is where
//! tighter bounds go: its own user, resource limits, no network.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::handler::WorkerSpec;
use crate::install::Installation;
use crate::process::RunInput;

/// The `PATH` after the installation's own folders: system tools only,
/// nothing of the executor's.
pub const SYSTEM_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// File name of a run's input inside its private directory, when the input
/// came in the invocation message but a file is needed (MPI jobs).
const INPUT_FILE: &str = "input";
/// File name stdout spills to inside a run's private directory.
const SPILL_FILE: &str = ".stdout";

/// What every run of one installed function on one node may see. Built
/// once per install and shared by its runs and its warm workers.
#[derive(Debug, Clone)]
pub struct Sandbox {
    /// The environment every run starts from.
    env: Vec<(OsString, OsString)>,
}

/// One run inside a [`Sandbox`]: its private directory and its complete
/// environment. Remove it with [`RunDir::remove`] when the run is over.
#[derive(Debug)]
pub struct RunDir {
    dir: PathBuf,
    env: Vec<(OsString, OsString)>,
}

impl Sandbox {
    /// The sandbox of `function`'s `installation` on `node`: `PATH` (the
    /// installation's folders, then [`SYSTEM_PATH`]), `LANG`,
    /// `COMFAAS_FUNCTION`, `COMFAAS_NODE` and `COMFAAS_BUNDLE_DIR`.
    pub fn new(installation: &Installation, function: &str, node: &str) -> Self {
        let mut path: Vec<PathBuf> = installation.path.clone();
        path.extend(std::env::split_paths(SYSTEM_PATH));
        let path = std::env::join_paths(path).unwrap_or_else(|_| SYSTEM_PATH.into());
        let env = vec![
            ("PATH".into(), path),
            ("LANG".into(), "C.UTF-8".into()),
            ("COMFAAS_FUNCTION".into(), function.into()),
            ("COMFAAS_NODE".into(), node.into()),
            (
                "COMFAAS_BUNDLE_DIR".into(),
                installation.bundle_dir.clone().into(),
            ),
        ];
        Self { env }
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
            program: installation.program.clone(),
            args: installation.args.clone(),
            env: self.env.clone(),
            work_root,
        }
    }

    /// Creates `dir` as the private directory of one run of invocation
    /// `invocation_id`: its working directory, `HOME` and `TMPDIR`, with
    /// `COMFAAS_INVOCATION_ID` set.
    pub async fn enter(&self, dir: PathBuf, invocation_id: &str) -> std::io::Result<RunDir> {
        tokio::fs::create_dir_all(&dir).await?;
        let mut env = self.env.clone();
        env.extend([
            ("HOME".into(), dir.clone().into()),
            ("TMPDIR".into(), dir.clone().into()),
            ("COMFAAS_INVOCATION_ID".into(), invocation_id.into()),
        ]);
        Ok(RunDir { dir, env })
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

    /// Where stdout over the in-memory cap spills.
    pub fn spill_file(&self) -> PathBuf {
        self.dir.join(SPILL_FILE)
    }

    /// Names the input as a file in `COMFAAS_INPUT_FILE`, for MPI jobs,
    /// where only rank 0 has stdin and every rank reads its slice of the
    /// file. An input that came as bytes is written into the private
    /// directory first.
    pub async fn share_input(&mut self, input: &RunInput) -> std::io::Result<()> {
        let file = match input {
            RunInput::File(path) => path.clone(),
            RunInput::Bytes(bytes) => {
                let file = self.dir.join(INPUT_FILE);
                tokio::fs::write(&file, bytes).await?;
                file
            }
        };
        self.env.push(("COMFAAS_INPUT_FILE".into(), file.into()));
        Ok(())
    }

    /// Removes the private directory and everything the run left in it.
    pub async fn remove(self) {
        if let Err(e) = tokio::fs::remove_dir_all(&self.dir).await {
            tracing::warn!("cannot remove run directory {}: {e}", self.dir.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use comfaas_schemas::Runtime;

    fn installation(runtime: Runtime) -> Installation {
        Installation {
            runtime,
            bundle_dir: PathBuf::from("/srv/fn/bundle"),
            program: PathBuf::from("/srv/fn/env/bin/python"),
            args: Vec::new(),
            path: vec![PathBuf::from("/srv/fn/env/bin")],
        }
    }

    fn value<'a>(env: &'a [(OsString, OsString)], key: &str) -> Option<&'a OsString> {
        env.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    #[test]
    fn runs_see_only_the_installation_and_the_system_tools() {
        let sandbox = Sandbox::new(&installation(Runtime::Python), "hello", "edge-1");
        let keys: Vec<_> = sandbox.env().iter().map(|(k, _)| k.clone()).collect();
        assert_eq!(
            keys,
            [
                "PATH",
                "LANG",
                "COMFAAS_FUNCTION",
                "COMFAAS_NODE",
                "COMFAAS_BUNDLE_DIR"
            ]
        );
        let env = sandbox.env();
        assert_eq!(
            value(env, "PATH").unwrap(),
            "/srv/fn/env/bin:/usr/local/bin:/usr/bin:/bin"
        );
        assert_eq!(value(env, "LANG").unwrap(), "C.UTF-8");
        assert_eq!(value(env, "COMFAAS_FUNCTION").unwrap(), "hello");
        assert_eq!(value(env, "COMFAAS_NODE").unwrap(), "edge-1");
        assert_eq!(value(env, "COMFAAS_BUNDLE_DIR").unwrap(), "/srv/fn/bundle");
        let workers = sandbox.worker_spec(&installation(Runtime::Python), "/w".into());
        assert_eq!(workers.env, sandbox.env());
        assert_eq!(workers.program, PathBuf::from("/srv/fn/env/bin/python"));
    }

    #[tokio::test]
    async fn a_run_gets_a_private_directory_removed_afterwards() {
        let root = tempfile::tempdir().unwrap();
        let sandbox = Sandbox::new(&installation(Runtime::PythonMpi), "pi", "edge-1");
        let dir = root.path().join("run-1");
        let mut run = sandbox.enter(dir.clone(), "inv-1").await.unwrap();
        assert!(dir.is_dir());
        assert_eq!(run.dir(), dir);
        assert_eq!(run.spill_file(), dir.join(".stdout"));
        assert_eq!(value(run.env(), "HOME").unwrap(), dir.as_os_str());
        assert_eq!(value(run.env(), "TMPDIR").unwrap(), dir.as_os_str());
        assert_eq!(value(run.env(), "COMFAAS_INVOCATION_ID").unwrap(), "inv-1");
        assert!(value(run.env(), "COMFAAS_INPUT_FILE").is_none());

        run.share_input(&RunInput::Bytes(bytes::Bytes::from_static(b"42")))
            .await
            .unwrap();
        let file = dir.join("input");
        assert_eq!(
            value(run.env(), "COMFAAS_INPUT_FILE").unwrap(),
            file.as_os_str()
        );
        assert_eq!(std::fs::read(&file).unwrap(), b"42");
        run.remove().await;
        assert!(!dir.exists());
    }

    #[tokio::test]
    async fn a_large_input_is_shared_where_it_already_is() {
        let root = tempfile::tempdir().unwrap();
        let sandbox = Sandbox::new(&installation(Runtime::CMpi), "pi", "edge-1");
        let mut run = sandbox
            .enter(root.path().join("run-2"), "inv-2")
            .await
            .unwrap();
        let cached = root.path().join("cached-input");
        run.share_input(&RunInput::File(cached.clone()))
            .await
            .unwrap();
        assert_eq!(
            value(run.env(), "COMFAAS_INPUT_FILE").unwrap(),
            cached.as_os_str()
        );
        run.remove().await;
    }
}
