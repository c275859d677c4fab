//! Secrets: values a function needs but its bundle must not hold (API
//! keys, passwords), kept in the KV bucket `comfaas_secrets`, one value per
//! name. Operators write them (`comfaas secret set NAME`), executors read
//! the ones a function's manifest names just before handing them to its
//! run as files; nobody else may touch the bucket (NATS permissions, see
//! `SECURITY.md`). A value is never logged, printed or put in an error:
//! [`Secret`]'s `Debug` shows its name and size only.

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use comfaas_schemas::names::{validate_secret_name, SECRETS_BUCKET};
use futures::TryStreamExt;

use crate::{resources, NatsError};

/// Largest secret value: a key or a certificate, not a data set.
pub const MAX_SECRET_BYTES: usize = 64 << 10;

/// A secrets operation failed. No variant carries a value.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// NATS or JetStream failed.
    #[error(transparent)]
    Nats(#[from] NatsError),
    /// The name is not a valid secret name.
    #[error("{0}")]
    InvalidName(String),
    /// A secret a function needs is not set.
    #[error("secret `{0}` is not set (an operator sets it with `comfaas secret set {0}`)")]
    Missing(String),
    /// The value is larger than [`MAX_SECRET_BYTES`].
    #[error("secret `{name}` has {size} bytes, more than the limit of {MAX_SECRET_BYTES}")]
    TooLarge {
        /// The secret.
        name: String,
        /// Its size.
        size: usize,
    },
}

/// One secret: its name and value. `Debug` never shows the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret {
    /// The secret's name (valid, see `names::validate_secret_name`).
    pub name: String,
    value: Vec<u8>,
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Secret {{ name: {:?}, value: <{} bytes redacted> }}",
            self.name,
            self.value.len()
        )
    }
}

impl Secret {
    /// The value.
    pub fn value(&self) -> &[u8] {
        &self.value
    }

    /// Name and value, for whoever writes it into a run's directory.
    pub fn into_parts(self) -> (String, Vec<u8>) {
        (self.name, self.value)
    }
}

/// Handle on the secrets bucket.
#[derive(Clone)]
pub struct SecretStore {
    bucket: kv::Store,
}

impl SecretStore {
    /// Opens the bucket, creating it when missing (what operators do).
    pub async fn open_or_create(js: &jetstream::Context) -> Result<Self, SecretError> {
        Ok(Self {
            bucket: resources::secrets_bucket(js).await?,
        })
    }

    /// Opens the bucket if it exists (what executors do: they read only).
    pub async fn open(js: &jetstream::Context) -> Result<Option<Self>, SecretError> {
        match js.get_key_value(SECRETS_BUCKET).await {
            Ok(bucket) => Ok(Some(Self { bucket })),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(NatsError::new(format!("open bucket {SECRETS_BUCKET}"), e).into()),
        }
    }

    /// Sets `name` to `value`.
    pub async fn set(&self, name: &str, value: &[u8]) -> Result<(), SecretError> {
        valid(name)?;
        if value.len() > MAX_SECRET_BYTES {
            return Err(SecretError::TooLarge {
                name: name.to_owned(),
                size: value.len(),
            });
        }
        self.bucket
            .put(name, Bytes::copy_from_slice(value))
            .await
            .map_err(|e| NatsError::new(format!("set secret {name}"), e))?;
        Ok(())
    }

    /// Removes `name`; `false` when it was not set.
    pub async fn remove(&self, name: &str) -> Result<bool, SecretError> {
        valid(name)?;
        if self.get(name).await?.is_none() {
            return Ok(false);
        }
        // Purge, not delete: no revision of the value stays in the stream.
        self.bucket
            .purge(name)
            .await
            .map_err(|e| NatsError::new(format!("remove secret {name}"), e))?;
        Ok(true)
    }

    /// The names of the secrets set, sorted; never their values.
    pub async fn names(&self) -> Result<Vec<String>, SecretError> {
        let mut names: Vec<String> = self
            .bucket
            .keys()
            .await
            .map_err(|e| NatsError::new("list secrets", e))?
            .try_collect()
            .await
            .map_err(|e| NatsError::new("list secrets", e))?;
        names.sort();
        Ok(names)
    }

    /// The secret `name`, if set.
    pub async fn get(&self, name: &str) -> Result<Option<Secret>, SecretError> {
        valid(name)?;
        let value = self
            .bucket
            .get(name)
            .await
            .map_err(|e| NatsError::new(format!("read secret {name}"), e))?;
        Ok(value.map(|v| Secret {
            name: name.to_owned(),
            value: v.to_vec(),
        }))
    }

    /// Every secret in `names`, in that order; the first one not set is an
    /// error that names it.
    pub async fn fetch(&self, names: &[String]) -> Result<Vec<Secret>, SecretError> {
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            match self.get(name).await? {
                Some(secret) => out.push(secret),
                None => return Err(SecretError::Missing(name.clone())),
            }
        }
        Ok(out)
    }
}

/// The secrets `names` a function needs, read from the bucket in the domain
/// of `js`: nothing asked, nothing read; no bucket yet means the first name
/// is missing. What an executor calls before a run.
pub async fn fetch(js: &jetstream::Context, names: &[String]) -> Result<Vec<Secret>, SecretError> {
    let Some(first) = names.first() else {
        return Ok(Vec::new());
    };
    match SecretStore::open(js).await? {
        Some(store) => store.fetch(names).await,
        None => {
            valid(first)?;
            Err(SecretError::Missing(first.clone()))
        }
    }
}

fn valid(name: &str) -> Result<(), SecretError> {
    validate_secret_name(name).map_err(|e| SecretError::InvalidName(e.0))
}

/// Whether opening a bucket failed because its stream does not exist
/// (JetStream error 10059), found by type.
fn is_not_found(error: &(dyn std::error::Error + 'static)) -> bool {
    crate::resources::jetstream_code(error) == Some(jetstream::ErrorCode::STREAM_NOT_FOUND)
}
