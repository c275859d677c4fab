//! The function registry: manifests in the KV bucket `comfaas_functions`,
//! bundles in the object store `comfaas_packages`, named by digest so that
//! the same bundle is stored once.

use async_nats::jetstream::{self, kv, object_store};
use bytes::Bytes;
use comfaas_schemas::{decode, encode, now_unix_ms, BundleRef, Deployment, Manifest};
use std::time::Duration;

use futures::stream::BoxStream;
use futures::{Stream, StreamExt, TryStreamExt};
use tokio::io::AsyncReadExt;

use crate::signing::{KeyError, Signer};
use crate::{resources, NatsError};

/// Largest bundle accepted, so a hostile or mistaken deploy cannot exhaust
/// executors' memory or disk.
pub const MAX_BUNDLE_BYTES: u64 = 64 << 20;

/// A registry operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// NATS or JetStream failed.
    #[error(transparent)]
    Nats(#[from] NatsError),
    /// A stored value is not a valid deployment.
    #[error("registry entry `{key}` is not a valid deployment: {reason}")]
    Corrupt {
        /// The key.
        key: String,
        /// Why.
        reason: String,
    },
    /// The bundle exceeds [`MAX_BUNDLE_BYTES`].
    #[error("bundle of {size} bytes exceeds the limit of {MAX_BUNDLE_BYTES} bytes")]
    BundleTooLarge {
        /// Its size.
        size: u64,
    },
    /// A rollback found nothing to go back to.
    #[error("no {wanted} of `{name}` in its history (versions kept: {kept})")]
    NoSuchVersion {
        /// The function.
        name: String,
        /// What was asked for.
        wanted: String,
        /// Versions in the history.
        kept: String,
    },
    /// A rollback of a function that is not deployed (never, or removed:
    /// removing a function drops its history with it).
    #[error("function `{0}` is not deployed; a removed function keeps no history to roll back to: deploy it again")]
    NotDeployed(String),
    /// A deploy reused a version number for other content: a version names
    /// one content, so what runs under it stays what was tested under it.
    #[error(
        "version `{version}` of `{name}` is already deployed with other content (bundle {digest})"
    )]
    VersionTaken {
        /// The function.
        name: String,
        /// The version.
        version: String,
        /// The bundle deployed under that version, shortened.
        digest: String,
    },
    /// The deployment could not be signed.
    #[error(transparent)]
    Sign(#[from] KeyError),
    /// The stored bundle is not the size its deployment says.
    #[error("bundle {object} has {actual} bytes, its deployment says {expected}")]
    SizeMismatch {
        /// Object name.
        object: String,
        /// Announced size.
        expected: u64,
        /// Stored size.
        actual: u64,
    },
}

/// A change seen by [`Registry::watch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistryChange {
    /// A function was deployed (first time, upgrade or rollback).
    Deployed(Box<Deployment>),
    /// A function was removed.
    Removed(String),
}

/// What [`Registry::deploy`] does with a version that was deployed before
/// (it is in the function's kept history) with other content.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SameVersion {
    /// Refuse it ([`RegistryError::VersionTaken`]).
    #[default]
    Refuse,
    /// Replace it: the new content is current under the old number. Nodes
    /// install it again, as they key installs by the bundle's digest, not
    /// the version.
    Replace,
}

/// What [`Registry::deploy`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Deployed {
    /// Stored as the function's current deployment.
    Stored(Deployment),
    /// The same manifest and bundle (signed by the same key, when signed)
    /// are already current: nothing was written, nothing reinstalls.
    Unchanged(Deployment),
}

impl Deployed {
    /// The function's current deployment after the deploy.
    pub fn into_deployment(self) -> Deployment {
        match self {
            Self::Stored(d) | Self::Unchanged(d) => d,
        }
    }
}

/// Handle on the registry bucket and the package store.
#[derive(Clone)]
pub struct Registry {
    functions: kv::Store,
    packages: object_store::ObjectStore,
    /// Signs what [`Registry::deploy`] stores, when set.
    signer: Option<std::sync::Arc<Signer>>,
}

impl Registry {
    /// Opens the registry, creating its bucket and store when missing.
    pub async fn open(js: &jetstream::Context) -> Result<Self, RegistryError> {
        Ok(Self {
            functions: resources::functions_bucket(js).await?,
            packages: resources::packages_store(js).await?,
            signer: None,
        })
    }

    /// This registry, signing every deployment it stores with `signer`
    /// (the operator's key); rollbacks re-put deployments as they were
    /// signed.
    pub fn signing_with(self, signer: Signer) -> Self {
        Self {
            signer: Some(std::sync::Arc::new(signer)),
            ..self
        }
    }

    /// Stores a bundle (unless a bundle of that digest is already stored)
    /// and makes `manifest` the function's current deployment, signed when
    /// this registry has a signer.
    ///
    /// With [`SameVersion::Refuse`], the same manifest and bundle as the
    /// current deployment is a no-op ([`Deployed::Unchanged`]), and a
    /// version found in the kept history with other content is refused; a
    /// version deployed before with this very content (going back to it)
    /// is stored again. With [`SameVersion::Replace`] it is always stored:
    /// nodes whose install of the same bundle failed try it again.
    ///
    /// `digest` is `sha256:<hex>` of `bundle`, computed by the packer.
    pub async fn deploy(
        &self,
        manifest: Manifest,
        bundle: Bytes,
        digest: &str,
        same_version: SameVersion,
    ) -> Result<Deployed, RegistryError> {
        let size = bundle.len() as u64;
        if size > MAX_BUNDLE_BYTES {
            return Err(RegistryError::BundleTooLarge { size });
        }
        let same_content = |d: &Deployment| d.bundle.digest == digest && d.manifest == manifest;
        if same_version == SameVersion::Refuse {
            if let Some(current) = self.get(&manifest.name).await? {
                let signed_alike = match (&self.signer, &current.signature) {
                    (None, _) => true,
                    (Some(signer), Some(signature)) => signature.signer == signer.public_key(),
                    (Some(_), None) => false,
                };
                if same_content(&current) && signed_alike {
                    return Ok(Deployed::Unchanged(current));
                }
            }
            let history = self.history(&manifest.name).await?;
            if let Some(taken) = history
                .iter()
                .rev()
                .find(|d| d.manifest.version == manifest.version && !same_content(d))
            {
                let digest = &taken.bundle.digest;
                return Err(RegistryError::VersionTaken {
                    name: manifest.name.clone(),
                    version: manifest.version.clone(),
                    digest: digest.get(..19).unwrap_or(digest).to_owned(),
                });
            }
        }
        let object = digest.replace(':', "-");
        if self.packages.info(&object).await.is_err() {
            let mut reader = bundle.as_ref();
            self.packages
                .put(object.as_str(), &mut reader)
                .await
                .map_err(|e| NatsError::new(format!("upload bundle {object}"), e))?;
        }
        let mut deployment = Deployment {
            schema: comfaas_schemas::SCHEMA_VERSION,
            manifest,
            bundle: BundleRef {
                object,
                digest: digest.to_owned(),
                size,
            },
            deployed_unix_ms: now_unix_ms(),
            signature: None,
        };
        if let Some(signer) = &self.signer {
            signer.sign(&mut deployment)?;
        }
        self.put(&deployment).await?;
        Ok(Deployed::Stored(deployment))
    }

    /// Makes `deployment` current again (used by rollback).
    pub async fn put(&self, deployment: &Deployment) -> Result<(), RegistryError> {
        let name = &deployment.manifest.name;
        let value = encode(deployment).map_err(|e| RegistryError::Corrupt {
            key: name.clone(),
            reason: e.to_string(),
        })?;
        self.functions
            .put(name, value.into())
            .await
            .map_err(|e| NatsError::new(format!("store manifest of {name}"), e))?;
        Ok(())
    }

    /// The current deployment of `name`.
    pub async fn get(&self, name: &str) -> Result<Option<Deployment>, RegistryError> {
        let value = self
            .functions
            .get(name)
            .await
            .map_err(|e| NatsError::new(format!("read manifest of {name}"), e))?;
        value.map(|v| decode_deployment(name, &v)).transpose()
    }

    /// Names of the deployed functions.
    async fn names(&self) -> Result<Vec<String>, RegistryError> {
        Ok(self
            .functions
            .keys()
            .await
            .map_err(|e| NatsError::new("list functions", e))?
            .try_collect()
            .await
            .map_err(|e| NatsError::new("list functions", e))?)
    }

    /// Every current deployment, by name.
    pub async fn list(&self) -> Result<Vec<Deployment>, RegistryError> {
        let keys = self.names().await?;
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            if let Some(d) = self.get(&key).await? {
                out.push(d);
            }
        }
        out.sort_by(|a, b| a.manifest.name.cmp(&b.manifest.name));
        Ok(out)
    }

    /// Removes `name` with its history (a purge, not a delete marker): its
    /// bundles are then unused and collected, so no kept revision may point
    /// at a deleted bundle, and the name starts afresh if deployed again.
    /// `false` when it was not deployed.
    pub async fn remove(&self, name: &str) -> Result<bool, RegistryError> {
        if self.get(name).await?.is_none() {
            return Ok(false);
        }
        self.functions
            .purge(name)
            .await
            .map_err(|e| NatsError::new(format!("remove {name}"), e))?;
        Ok(true)
    }

    /// Every deployment of `name` still in the bucket's history, oldest first.
    pub async fn history(&self, name: &str) -> Result<Vec<Deployment>, RegistryError> {
        let mut entries = match self.functions.history(name).await {
            Ok(entries) => entries,
            // No key at all: no history.
            Err(_) => return Ok(Vec::new()),
        };
        let mut out = Vec::new();
        while let Some(entry) = entries.next().await {
            let entry = entry.map_err(|e| NatsError::new(format!("history of {name}"), e))?;
            if entry.operation == kv::Operation::Put {
                out.push(decode_deployment(name, &entry.value)?);
            }
        }
        Ok(out)
    }

    /// Makes an earlier deployment of `name` current again: the one of
    /// version `to`, or else the newest whose bundle differs from the
    /// current one. Returns what is now deployed. A function not deployed
    /// (removed) has no history: [`RegistryError::NotDeployed`].
    pub async fn rollback(
        &self,
        name: &str,
        to: Option<&str>,
    ) -> Result<Deployment, RegistryError> {
        let Some(current) = self.get(name).await? else {
            return Err(RegistryError::NotDeployed(name.to_owned()));
        };
        let history = self.history(name).await?;
        let target = history.iter().rev().find(|d| match to {
            Some(version) => d.manifest.version == version,
            None => d.bundle.digest != current.bundle.digest,
        });
        let Some(target) = target else {
            let kept: Vec<&str> = history
                .iter()
                .map(|d| d.manifest.version.as_str())
                .collect();
            return Err(RegistryError::NoSuchVersion {
                name: name.to_owned(),
                wanted: to.map_or_else(
                    || "earlier version".to_owned(),
                    |v| format!("version `{v}`"),
                ),
                kept: if kept.is_empty() {
                    "none".to_owned()
                } else {
                    kept.join(", ")
                },
            });
        };
        let deployment = Deployment {
            deployed_unix_ms: now_unix_ms(),
            ..target.clone()
        };
        self.put(&deployment).await?;
        Ok(deployment)
    }

    /// Deletes bundles that no kept revision of any deployed function uses
    /// and that are older than `min_age` (so a deploy between its upload and
    /// its manifest write is never robbed). Returns how many were deleted.
    /// A removed function's bundles go too: rollback works while deployed.
    pub async fn collect_garbage(&self, min_age: Duration) -> Result<usize, RegistryError> {
        let keys = self.names().await?;
        let mut referenced = std::collections::HashSet::new();
        for key in keys {
            for deployment in self.history(&key).await? {
                referenced.insert(deployment.bundle.object);
            }
        }
        let objects: Vec<_> = self
            .packages
            .list()
            .await
            .map_err(|e| NatsError::new("list bundles", e))?
            .try_collect()
            .await
            .map_err(|e| NatsError::new("list bundles", e))?;
        let now = std::time::SystemTime::now();
        let mut deleted = 0;
        for info in objects {
            let old_enough = info
                .modified
                .map(|m| {
                    let at = std::time::UNIX_EPOCH
                        + Duration::from_secs(m.unix_timestamp().max(0) as u64);
                    now.duration_since(at).unwrap_or_default() >= min_age
                })
                .unwrap_or(true);
            if info.deleted || referenced.contains(&info.name) || !old_enough {
                continue;
            }
            self.packages
                .delete(&info.name)
                .await
                .map_err(|e| NatsError::new(format!("delete bundle {}", info.name), e))?;
            deleted += 1;
        }
        Ok(deleted)
    }

    /// Reads a bundle, refusing one larger than the limit, or whose size or
    /// SHA-256 is not the one announced (signed, when the deployment is):
    /// whoever can write the package store could have replaced it.
    pub async fn fetch_bundle(&self, bundle: &BundleRef) -> Result<Vec<u8>, RegistryError> {
        if bundle.size > MAX_BUNDLE_BYTES {
            return Err(RegistryError::BundleTooLarge { size: bundle.size });
        }
        let object = self
            .packages
            .get(&bundle.object)
            .await
            .map_err(|e| NatsError::new(format!("fetch bundle {}", bundle.object), e))?;
        let mut data = Vec::with_capacity(bundle.size as usize);
        object
            .take(MAX_BUNDLE_BYTES + 1)
            .read_to_end(&mut data)
            .await
            .map_err(|e| NatsError::new(format!("read bundle {}", bundle.object), e))?;
        if data.len() as u64 != bundle.size {
            return Err(RegistryError::SizeMismatch {
                object: bundle.object.clone(),
                expected: bundle.size,
                actual: data.len() as u64,
            });
        }
        // Its SHA-256 is checked where it is unpacked, off the async threads.
        Ok(data)
    }

    /// As [`watch`](Self::watch), but never ends: a watch that fails or
    /// ends (server restart, lost consumer) is reopened with back-off, and
    /// replays the current deployments, which receivers take idempotently.
    pub fn watch_forever(&self) -> BoxStream<'static, Result<RegistryChange, RegistryError>> {
        type Current = Option<BoxStream<'static, Result<RegistryChange, RegistryError>>>;
        let start: (Registry, Current, Duration) = (self.clone(), None, Duration::from_millis(100));
        futures::stream::unfold(start, |(registry, mut current, mut backoff)| async move {
            loop {
                let stream = match current.as_mut() {
                    Some(stream) => stream,
                    None => match registry.watch().await {
                        Ok(watch) => {
                            backoff = Duration::from_millis(100);
                            current.insert(watch.boxed())
                        }
                        Err(e) => {
                            tokio::time::sleep(backoff).await;
                            backoff = (backoff * 2).min(Duration::from_secs(5));
                            return Some((Err(e), (registry, None, backoff)));
                        }
                    },
                };
                match stream.next().await {
                    Some(item) => return Some((item, (registry, current, backoff))),
                    None => {
                        tracing::warn!("registry watch ended; reopening");
                        current = None;
                        tokio::time::sleep(backoff).await;
                    }
                }
            }
        })
        .boxed()
    }

    /// Every current deployment, then every change as it happens.
    ///
    /// A corrupt entry is reported as an error item and the stream goes on.
    pub async fn watch(
        &self,
    ) -> Result<impl Stream<Item = Result<RegistryChange, RegistryError>>, RegistryError> {
        let watch = self
            .functions
            .watch_with_history(">")
            .await
            .map_err(|e| NatsError::new("watch functions", e))?;
        Ok(watch.map(|entry| {
            let entry = entry.map_err(|e| NatsError::new("watch functions", e))?;
            match entry.operation {
                kv::Operation::Put => Ok(RegistryChange::Deployed(Box::new(decode_deployment(
                    &entry.key,
                    &entry.value,
                )?))),
                kv::Operation::Delete | kv::Operation::Purge => {
                    Ok(RegistryChange::Removed(entry.key))
                }
            }
        }))
    }
}

/// Decodes and checks a stored deployment: anyone who can write the bucket
/// could have put anything there.
fn decode_deployment(key: &str, value: &[u8]) -> Result<Deployment, RegistryError> {
    let corrupt = |reason: String| RegistryError::Corrupt {
        key: key.to_owned(),
        reason,
    };
    let deployment: Deployment = decode(value).map_err(|e| corrupt(e.to_string()))?;
    deployment
        .manifest
        .validate()
        .map_err(|e| corrupt(e.to_string()))?;
    if deployment.manifest.name != key {
        return Err(corrupt(format!(
            "it names function `{}`",
            deployment.manifest.name
        )));
    }
    let hex = deployment
        .bundle
        .digest
        .strip_prefix("sha256:")
        .unwrap_or_default();
    if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(corrupt(format!(
            "bundle digest `{}` is not sha256:<hex>",
            deployment.bundle.digest
        )));
    }
    Ok(deployment)
}
