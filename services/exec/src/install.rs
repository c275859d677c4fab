//! The install pipeline: the registry announces a deployment, the
//! [`Installer`] fetches its bundle, unpacks it into a fresh folder,
//! installs it for its runtime, starts its warm workers in handler mode, and
//! hands the result to the [`FunctionTable`], which switches to it only if
//! it is still the version wanted. When the node trusts operator keys, a
//! deployment is installed only if one of them signed it, and only with a
//! bundle whose SHA-256 and size are the signed ones; anything else is
//! refused before a byte is fetched or run, and the version serving goes on.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use comfaas_platform::registry::{Registry, RegistryChange, RegistryError};
use comfaas_platform::signals::Tasks;
use comfaas_platform::signing::TrustedOperators;
use comfaas_runtime::{HandlerPool, Sandboxes, Toolchain};
use comfaas_schemas::{now_unix_ms, Deployment, InstallTimes, Mode};
use futures::stream::BoxStream;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::functions::{FunctionTable, Served};

/// Tries to read a bundle this many times, each within [`FETCH_TIMEOUT`]:
/// a fetch stuck on a busy server must not leave a function installing forever.
const FETCH_ATTEMPTS: u32 = 3;
/// How long one attempt to read a bundle may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(30);

/// The registry's changes, as [`Registry::watch_forever`] gives them.
pub type Changes = BoxStream<'static, Result<RegistryChange, RegistryError>>;

/// Installs what the registry announces into this node's [`FunctionTable`].
pub struct Installer {
    /// Where bundles come from.
    pub registry: Registry,
    /// Where installs end up.
    pub table: FunctionTable,
    /// The tools installs use.
    pub toolchain: Toolchain,
    /// What confines the runs of what is installed.
    pub sandboxes: Sandboxes,
    /// This node's id, for the runs' environment.
    pub node: String,
    /// The folder every version gets a folder of its own under.
    pub root: PathBuf,
    /// Whose signed deployments are installed (none: any deployment).
    pub trust: TrustedOperators,
    /// Where the secrets a manifest names are read, when a version installs.
    pub secrets: async_nats::jetstream::Context,
}

/// Why an install did not succeed; its text is the reason the heartbeat
/// reports and a refused invocation quotes.
#[derive(Debug, thiserror::Error)]
pub enum InstallFailure {
    /// The bundle could not be read from the registry.
    #[error(transparent)]
    Fetch(RegistryError),
    /// The bundle read is not the one the deployment names (and signs):
    /// its size or SHA-256 differ. It was replaced in the package store.
    #[error("deployment refused: {0}")]
    Refused(String),
    /// Reading the bundle took too long.
    #[error("fetching bundle {object} took over {}s", .timeout.as_secs())]
    FetchTimeout {
        /// The bundle's object name.
        object: String,
        /// How long one attempt may take.
        timeout: Duration,
    },
    /// The bundle is not a safe archive of its digest.
    #[error(transparent)]
    Unpack(#[from] comfaas_runtime::BundleError),
    /// The unpacking task died.
    #[error("unpack task failed: {0}")]
    UnpackTask(#[source] tokio::task::JoinError),
    /// The runtime's install failed.
    #[error(transparent)]
    Install(#[from] comfaas_runtime::InstallError),
    /// Handler mode: the warm workers did not start.
    #[error(transparent)]
    Workers(#[from] comfaas_runtime::WorkerError),
    /// The version's folder or sandbox could not be made.
    #[error(transparent)]
    Sandbox(#[from] comfaas_runtime::SandboxError),
    /// A secret the manifest names could not be read (or is not set).
    #[error(transparent)]
    Secrets(#[from] comfaas_platform::secrets::SecretError),
    /// The sandbox task died.
    #[error("sandbox task failed: {0}")]
    SandboxTask(#[source] tokio::task::JoinError),
}

impl Installer {
    /// Installs every deployment `changes` announces until `shutdown`;
    /// installs under way are abandoned then.
    pub async fn run(self, mut changes: Changes, shutdown: CancellationToken) {
        let installer = Arc::new(self);
        let mut installs = Tasks::new("install");
        while let Some(change) = shutdown.run_until_cancelled(changes.next()).await {
            match change {
                // watch_forever does not end; if it ever did, stop cleanly.
                None => break,
                Some(Err(e)) => tracing::warn!("registry: {e}"),
                Some(Ok(RegistryChange::Removed(name))) => {
                    tracing::info!(function = %name, "removed");
                    installer.table.remove(&name);
                }
                Some(Ok(RegistryChange::Deployed(deployment))) => {
                    if let Err(refusal) = installer.trust.check(&deployment) {
                        let m = &deployment.manifest;
                        tracing::warn!(function = %m.name, version = %m.version, "{refusal}");
                        installer.table.refuse(&deployment, &refusal.to_string());
                    } else if installer.table.want(&deployment) {
                        installs.spawn(installer.clone().install_one(*deployment));
                    }
                }
            }
        }
        installs.abort().await;
    }

    async fn install_one(self: Arc<Self>, deployment: Deployment) {
        let manifest = &deployment.manifest;
        tracing::info!(function = %manifest.name, version = %manifest.version,
            digest = %deployment.bundle.digest, "installing");
        let started = std::time::Instant::now();
        let mut times = InstallTimes {
            seen_unix_ms: now_unix_ms(),
            ..InstallTimes::default()
        };
        let result = self.install_files(&deployment, &mut times).await;
        times.total_ms = started.elapsed().as_millis() as u64;
        match &result {
            Ok(_) => tracing::info!(function = %manifest.name, version = %manifest.version,
                ms = times.total_ms, fetch_ms = times.fetch_ms, unpack_ms = times.unpack_ms,
                steps = ?times.steps, "ready"),
            Err(reason) => tracing::warn!(function = %manifest.name, version = %manifest.version,
                "install failed: {reason}"),
        }
        self.table.finish_timed(&deployment, result, Some(times));
    }

    async fn fetch_bundle(&self, deployment: &Deployment) -> Result<Vec<u8>, InstallFailure> {
        let mut attempt = 1;
        loop {
            let failure = match tokio::time::timeout(
                FETCH_TIMEOUT,
                self.registry.fetch_bundle(&deployment.bundle),
            )
            .await
            {
                Ok(Ok(bytes)) => return Ok(bytes),
                Ok(Err(e @ RegistryError::SizeMismatch { .. })) => {
                    return Err(InstallFailure::Refused(e.to_string()))
                }
                // A bundle that is missing or too large will not get better.
                Ok(Err(e)) if !matches!(e, RegistryError::Nats(_)) => {
                    return Err(InstallFailure::Fetch(e))
                }
                Ok(Err(e)) => InstallFailure::Fetch(e),
                Err(_) => InstallFailure::FetchTimeout {
                    object: deployment.bundle.object.clone(),
                    timeout: FETCH_TIMEOUT,
                },
            };
            tracing::warn!(function = %deployment.manifest.name, attempt, "{failure}");
            if attempt == FETCH_ATTEMPTS {
                return Err(failure);
            }
            attempt += 1;
        }
    }

    async fn install_files(
        &self,
        deployment: &Deployment,
        times: &mut InstallTimes,
    ) -> Result<Served, InstallFailure> {
        let fetching = std::time::Instant::now();
        let bytes = self.fetch_bundle(deployment).await;
        times.fetch_ms = fetching.elapsed().as_millis() as u64;
        let bytes = bytes?;
        // A fresh folder per install: a version being replaced keeps its files
        // until its last run ends.
        let digest_hex = deployment
            .bundle
            .digest
            .trim_start_matches("sha256:")
            .chars()
            .take(16)
            .collect::<String>();
        let dir = self
            .root
            .join(&deployment.manifest.name)
            .join(format!("{digest_hex}-{}", uuid::Uuid::new_v4().simple()));
        // Readable by the function's own group only.
        let (sandboxes, root, name, made) = (
            self.sandboxes.clone(),
            self.root.clone(),
            deployment.manifest.name.clone(),
            dir.clone(),
        );
        tokio::task::spawn_blocking(move || sandboxes.make_version_dir(&root, &name, &made))
            .await
            .map_err(InstallFailure::SandboxTask)??;
        let result = self.install_into(deployment, bytes, &dir, times).await;
        if result.is_err() {
            let _ = tokio::fs::remove_dir_all(&dir).await;
        }
        result
    }

    /// Unpacks, installs and (in handler mode) starts workers in `dir`.
    async fn install_into(
        &self,
        deployment: &Deployment,
        bytes: Vec<u8>,
        dir: &Path,
        times: &mut InstallTimes,
    ) -> Result<Served, InstallFailure> {
        let manifest = &deployment.manifest;
        let unpacking = std::time::Instant::now();
        let bundle_dir = dir.join("bundle");
        let digest = deployment.bundle.digest.clone();
        let unpack_to = bundle_dir.clone();
        let unpacked = tokio::task::spawn_blocking(move || {
            comfaas_runtime::unpack(&bytes, &digest, &unpack_to)
        })
        .await
        .map_err(InstallFailure::UnpackTask)?;
        times.unpack_ms = unpacking.elapsed().as_millis() as u64;
        if let Err(comfaas_runtime::BundleError::DigestMismatch { expected, actual }) = &unpacked {
            return Err(InstallFailure::Refused(format!(
                "bundle {} has digest {actual}, its deployment says {expected}",
                deployment.bundle.object
            )));
        }
        unpacked?;
        let (installation, steps) = comfaas_runtime::install_timed(
            manifest,
            &bundle_dir,
            &dir.join("env"),
            &self.toolchain,
        )
        .await;
        times.steps = steps;
        let installation = installation?;
        // Read once per installed version: after `comfaas secret set`, a
        // redeploy (or rollback) hands runs the new value.
        let secrets = comfaas_platform::secrets::fetch(&self.secrets, &manifest.secrets)
            .await?
            .into_iter()
            .map(|secret| secret.into_parts())
            .collect();
        let sandbox = self
            .sandboxes
            .sandbox(&installation, manifest, &self.node)?
            .with_secrets(secrets);
        let pool = if manifest.mode == Mode::Handler {
            let spec = sandbox.worker_spec(&installation, dir.join("workers"));
            Some(HandlerPool::start(spec, manifest.workers.unwrap_or(1)).await?)
        } else {
            None
        };
        Ok(Served {
            version: manifest.version.clone(),
            installation,
            sandbox,
            timeout: manifest.timeout(),
            procs: manifest.procs,
            pool,
            root: dir.to_owned(),
        })
    }
}
