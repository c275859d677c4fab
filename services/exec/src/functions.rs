//! The functions this node serves, and the loop that installs them as the
//! registry changes. A new version installs beside the one being served and
//! replaces it only once ready; a failed install leaves the old one serving.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use comfaas_platform::registry::{Registry, RegistryChange, RegistryError};
use comfaas_runtime::{HandlerPool, Installation, Toolchain, WorkerSpec};
use comfaas_schemas::{Deployment, FunctionState, InstallState, Mode};

use crate::work::run_env;
use futures::stream::BoxStream;
use futures::StreamExt;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// An installed version, shared by the runs using it. Its files are removed
/// when the last holder lets go (it was replaced or removed, and the last
/// run on it ended).
#[derive(Debug)]
pub struct Served {
    /// Version label.
    pub version: String,
    /// How to run it.
    pub installation: Installation,
    /// The manifest's run time limit.
    pub timeout: Option<Duration>,
    /// The manifest's MPI process count or range.
    pub procs: Option<comfaas_schemas::Procs>,
    /// Warm workers, in handler mode.
    pub pool: Option<Arc<HandlerPool>>,
    root: PathBuf,
}

impl Drop for Served {
    fn drop(&mut self) {
        let root = std::mem::take(&mut self.root);
        let remove = move || {
            if let Err(e) = std::fs::remove_dir_all(&root) {
                tracing::debug!("cannot remove {}: {e}", root.display());
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => drop(handle.spawn_blocking(remove)),
            Err(_) => remove(),
        }
    }
}

/// One function as this node knows it.
struct Entry {
    wanted: Deployment,
    state: InstallState,
    reason: Option<String>,
    serving: Option<Arc<Served>>,
}

/// What a lookup found for a function name.
pub enum Lookup {
    /// Ready to run.
    Ready(Arc<Served>),
    /// Deployed but not servable here (installing, or its install failed).
    NotReady(String),
    /// Not deployed.
    Unknown,
}

/// The node's functions, shared by the installer, the workers and the heartbeat.
#[derive(Clone)]
pub struct FunctionTable {
    entries: Arc<Mutex<HashMap<String, Entry>>>,
    root: PathBuf,
    changed: Arc<tokio::sync::Notify>,
}

impl FunctionTable {
    /// An empty table installing under `root`.
    pub fn new(root: PathBuf) -> Self {
        Self {
            entries: Arc::default(),
            root,
            changed: Arc::default(),
        }
    }

    /// Resolves when an install starts, ends or a function is removed, so
    /// the heartbeat tells dispatchers at once instead of up to a period later.
    pub async fn changed(&self) {
        self.changed.notified().await;
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Entry>> {
        // A panic while holding the lock leaves plain data behind; keep serving.
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Finds what to run for `name`.
    pub fn lookup(&self, name: &str) -> Lookup {
        match self.lock().get(name) {
            None => Lookup::Unknown,
            Some(Entry {
                serving: Some(s), ..
            }) => Lookup::Ready(s.clone()),
            Some(e) => Lookup::NotReady(match (&e.state, &e.reason) {
                (InstallState::Failed, Some(reason)) => {
                    format!("its install failed: {reason}")
                }
                _ => "it is still installing".to_owned(),
            }),
        }
    }

    /// Every function's state, for the heartbeat.
    pub fn states(&self) -> Vec<FunctionState> {
        let mut states: Vec<FunctionState> = self
            .lock()
            .iter()
            .map(|(name, e)| FunctionState {
                name: name.clone(),
                version: e.wanted.manifest.version.clone(),
                digest: e.wanted.bundle.digest.clone(),
                state: e.state,
                reason: e.reason.clone(),
                serving: e.serving.as_ref().map(|s| s.version.clone()),
            })
            .collect();
        states.sort_by(|a, b| a.name.cmp(&b.name));
        states
    }

    /// Records a new wanted deployment; `false` when it is already the one
    /// installed or being installed.
    fn want(&self, deployment: &Deployment) -> bool {
        let mut entries = self.lock();
        let name = deployment.manifest.name.clone();
        match entries.get_mut(&name) {
            // The same bundle again: nothing to install.
            Some(e)
                if e.wanted.bundle.digest == deployment.bundle.digest
                    && e.state != InstallState::Failed =>
            {
                e.wanted = deployment.clone();
                false
            }
            Some(e) => {
                e.wanted = deployment.clone();
                e.state = InstallState::Installing;
                e.reason = None;
                self.changed.notify_one();
                true
            }
            None => {
                self.changed.notify_one();
                entries.insert(
                    name,
                    Entry {
                        wanted: deployment.clone(),
                        state: InstallState::Installing,
                        reason: None,
                        serving: None,
                    },
                );
                true
            }
        }
    }

    /// Applies an install's result if `deployment` is still the one wanted.
    fn finish(&self, deployment: &Deployment, result: Result<Served, String>) {
        let mut entries = self.lock();
        let Some(entry) = entries.get_mut(&deployment.manifest.name) else {
            return; // removed meanwhile; `result` drops and cleans up
        };
        if entry.wanted.bundle.digest != deployment.bundle.digest {
            return; // superseded by a newer deploy
        }
        match result {
            Ok(served) => {
                entry.state = InstallState::Ready;
                entry.reason = None;
                entry.serving = Some(Arc::new(served));
            }
            Err(reason) => {
                entry.state = InstallState::Failed;
                // Bounded: it travels in every heartbeat.
                entry.reason = Some(comfaas_platform::reply::header_text(&reason));
            }
        }
        self.changed.notify_one();
    }

    fn remove(&self, name: &str) {
        self.lock().remove(name);
        self.changed.notify_one();
    }
}

/// Installs every deployment the registry announces until `shutdown`.
pub async fn install_loop(
    mut changes: BoxStream<'static, Result<RegistryChange, RegistryError>>,
    registry: Registry,
    table: FunctionTable,
    toolchain: Toolchain,
    node: String,
    shutdown: CancellationToken,
) {
    let mut installs = JoinSet::new();
    loop {
        let change = tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(done) = installs.join_next(), if !installs.is_empty() => {
                if let Err(e) = done {
                    tracing::error!("install task failed: {e}");
                }
                continue;
            }
            change = changes.next() => change,
        };
        match change {
            // watch_forever does not end; if it ever did, stop cleanly.
            None => break,
            Some(Err(e)) => tracing::warn!("registry: {e}"),
            Some(Ok(RegistryChange::Removed(name))) => {
                tracing::info!(function = %name, "removed");
                table.remove(&name);
            }
            Some(Ok(RegistryChange::Deployed(deployment))) => {
                if table.want(&deployment) {
                    installs.spawn(install_one(
                        *deployment,
                        registry.clone(),
                        table.clone(),
                        toolchain.clone(),
                        node.clone(),
                    ));
                }
            }
        }
    }
    installs.shutdown().await;
}

async fn install_one(
    deployment: Deployment,
    registry: Registry,
    table: FunctionTable,
    toolchain: Toolchain,
    node: String,
) {
    let manifest = &deployment.manifest;
    tracing::info!(function = %manifest.name, version = %manifest.version,
        digest = %deployment.bundle.digest, "installing");
    let started = std::time::Instant::now();
    let result = install_files(&deployment, &registry, &table.root, &toolchain, &node).await;
    match &result {
        Ok(_) => tracing::info!(function = %manifest.name, version = %manifest.version,
            ms = started.elapsed().as_millis() as u64, "ready"),
        Err(reason) => tracing::warn!(function = %manifest.name, version = %manifest.version,
            "install failed: {reason}"),
    }
    table.finish(&deployment, result);
}

/// Tries to read a bundle this many times, each within [`FETCH_TIMEOUT`]:
/// a fetch stuck on a busy server must not leave a function installing forever.
const FETCH_ATTEMPTS: u32 = 3;
const FETCH_TIMEOUT: Duration = Duration::from_secs(30);

async fn fetch_bundle(registry: &Registry, deployment: &Deployment) -> Result<Vec<u8>, String> {
    let mut last = String::new();
    for attempt in 1..=FETCH_ATTEMPTS {
        match tokio::time::timeout(FETCH_TIMEOUT, registry.fetch_bundle(&deployment.bundle)).await {
            Ok(Ok(bytes)) => return Ok(bytes),
            // A bundle that is missing or too large will not get better.
            Ok(Err(e)) if !matches!(e, RegistryError::Nats(_)) => return Err(e.to_string()),
            Ok(Err(e)) => last = e.to_string(),
            Err(_) => {
                last = format!(
                    "fetching bundle {} took over {}s",
                    deployment.bundle.object,
                    FETCH_TIMEOUT.as_secs()
                )
            }
        }
        tracing::warn!(function = %deployment.manifest.name, attempt, "{last}");
    }
    Err(last)
}

async fn install_files(
    deployment: &Deployment,
    registry: &Registry,
    root: &std::path::Path,
    toolchain: &Toolchain,
    node: &str,
) -> Result<Served, String> {
    let manifest = &deployment.manifest;
    let bytes = fetch_bundle(registry, deployment).await?;
    // A fresh folder per install: a version being replaced keeps its files
    // until its last run ends.
    let digest_hex = deployment
        .bundle
        .digest
        .trim_start_matches("sha256:")
        .chars()
        .take(16)
        .collect::<String>();
    let dir = root
        .join(&manifest.name)
        .join(format!("{digest_hex}-{}", uuid::Uuid::new_v4().simple()));
    let bundle_dir = dir.join("bundle");
    let digest = deployment.bundle.digest.clone();
    let unpack_to = bundle_dir.clone();
    let unpacked =
        tokio::task::spawn_blocking(move || comfaas_runtime::unpack(&bytes, &digest, &unpack_to))
            .await
            .map_err(|e| format!("unpack task failed: {e}"))
            .and_then(|r| r.map_err(|e| e.to_string()));
    let result = match unpacked {
        Ok(()) => comfaas_runtime::install(manifest, &bundle_dir, &dir.join("env"), toolchain)
            .await
            .map_err(|e| e.to_string()),
        Err(e) => Err(e),
    };
    let result = match result {
        Ok(installation) if manifest.mode == Mode::Handler => {
            let spec = WorkerSpec {
                program: installation.program.clone(),
                args: installation.args.clone(),
                env: run_env(&installation, &manifest.name, node),
                work_root: dir.join("workers"),
            };
            let workers = manifest.workers.unwrap_or(1);
            HandlerPool::start(spec, workers)
                .await
                .map(|pool| (installation, Some(pool)))
        }
        Ok(installation) => Ok((installation, None)),
        Err(e) => Err(e),
    };
    match result {
        Ok((installation, pool)) => Ok(Served {
            version: manifest.version.clone(),
            installation,
            timeout: manifest.timeout(),
            procs: manifest.procs,
            pool,
            root: dir,
        }),
        Err(e) => {
            let _ = tokio::fs::remove_dir_all(&dir).await;
            Err(e)
        }
    }
}
