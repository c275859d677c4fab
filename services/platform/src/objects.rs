//! Large inputs in the object store: uploaded once, named by content.

use std::path::Path;

use async_nats::jetstream::object_store::{ObjectMetadata, ObjectStore};
use async_nats::jetstream::Context;
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;

use crate::NatsError;

/// Chunk size of uploads. async-nats waits for each chunk's ack before
/// sending the next, so upload speed is chunk size ÷ round trip; see
/// docs/BENCHMARKS.md for how this one was chosen.
pub const UPLOAD_CHUNK: usize = 1 << 20;

/// An uploaded (or already present) object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uploaded {
    /// Object name: `sha256-<hex>` of the content.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// Whether it was already in the store (nothing sent).
    pub reused: bool,
}

/// Hashes `path` while reading it in blocks (never whole in memory).
pub async fn sha256_of(path: &Path) -> std::io::Result<(String, u64)> {
    let mut file = tokio::fs::File::open(path).await?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok((hex::encode(hasher.finalize()), size))
}

/// Bytes the object store `bucket` can still take: its stream's limit less
/// what it holds; `None` when it has no limit. A put that does not fit
/// fails, and async-nats reports that as text only, so callers ask here
/// instead (stored objects take a little more than their size: chunk
/// subjects and headers).
pub async fn free_bytes(js: &Context, bucket: &str) -> Result<Option<u64>, NatsError> {
    let stream = comfaas_schemas::names::object_store_stream(bucket);
    let info = js
        .get_stream(&stream)
        .await
        .map_err(|e| NatsError::new(format!("open stream {stream}"), e))?
        // Opening the stream read its info: one request, not two.
        .cached_info()
        .clone();
    let max = info.config.max_bytes;
    Ok((max >= 0).then(|| (max as u64).saturating_sub(info.state.bytes)))
}

/// Puts the file at `path` into `store` as `name`, streamed in
/// [`UPLOAD_CHUNK`] chunks.
pub async fn put_file(store: &ObjectStore, name: &str, path: &Path) -> Result<(), NatsError> {
    let mut file = tokio::fs::File::open(path)
        .await
        .map_err(|e| NatsError::new(format!("open {}", path.display()), e))?;
    let meta = ObjectMetadata {
        name: name.to_owned(),
        chunk_size: Some(UPLOAD_CHUNK),
        ..Default::default()
    };
    store
        .put(meta, &mut file)
        .await
        .map_err(|e| NatsError::new(format!("store {name}"), e))?;
    Ok(())
}

/// How the name of an object named by its content starts: `sha256-<hex>`.
pub const CONTENT_NAME_PREFIX: &str = "sha256-";

/// The SHA-256, in hex, an object store digest (`SHA-256=<base64url>`)
/// stands for; `None` for any other digest.
pub fn digest_hex(digest: &str) -> Option<String> {
    let encoded = digest.strip_prefix("SHA-256=")?;
    let bytes = data_encoding::BASE64URL
        .decode(encoded.as_bytes())
        .or_else(|_| data_encoding::BASE64URL_NOPAD.decode(encoded.as_bytes()))
        .ok()?;
    (bytes.len() == 32).then(|| hex::encode(bytes))
}

/// Checks that an object named for its content (`sha256-<hex>`) holds that
/// content, by the digest the store keeps of it. Any other name passes: it
/// promises nothing. Anyone who may put objects can put any bytes under any
/// name, so a content name is believed only when it matches.
pub fn check_content_name(name: &str, digest: Option<&str>) -> Result<(), String> {
    let Some(claimed) = name.strip_prefix(CONTENT_NAME_PREFIX) else {
        return Ok(());
    };
    let held = digest.and_then(digest_hex);
    if held.as_deref() == Some(claimed.to_ascii_lowercase().as_str()) {
        return Ok(());
    }
    Err(format!(
        "object `{name}` is named for content it does not hold (its SHA-256 is {})",
        held.as_deref().unwrap_or("unknown")
    ))
}

/// Puts the file at `path` into `store` under its content's name, unless an
/// object of that name already holds that content.
pub async fn upload_file(store: &ObjectStore, path: &Path) -> Result<Uploaded, NatsError> {
    let (hex, size) = sha256_of(path)
        .await
        .map_err(|e| NatsError::new(format!("read {}", path.display()), e))?;
    let name = format!("{CONTENT_NAME_PREFIX}{hex}");
    if let Ok(info) = store.info(&name).await {
        // Reused only when it holds this very content: anyone who may put
        // inputs could have put other bytes under this name first.
        let same = info.digest.as_deref().and_then(digest_hex).as_deref() == Some(hex.as_str());
        if same && info.size as u64 == size {
            return Ok(Uploaded {
                name,
                size,
                reused: true,
            });
        }
    }
    put_file(store, &name, path).await?;
    Ok(Uploaded {
        name,
        size,
        reused: false,
    })
}

#[cfg(test)]
mod content_name_tests {
    use super::*;

    #[test]
    fn a_content_name_must_match_the_digest_the_store_keeps() {
        // SHA-256 of "abc".
        let hex = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        let bytes = hex::decode(hex).unwrap_or_default();
        let digest = format!("SHA-256={}", data_encoding::BASE64URL.encode(&bytes));
        assert_eq!(digest_hex(&digest).as_deref(), Some(hex));
        assert!(check_content_name(&format!("sha256-{hex}"), Some(&digest)).is_ok());
        let other = format!("sha256-{}", "0".repeat(64));
        let refused = check_content_name(&other, Some(&digest)).unwrap_err();
        assert!(refused.contains(hex), "{refused}");
        assert!(check_content_name(&format!("sha256-{hex}"), None).is_err());
        assert!(check_content_name("my-input.bin", Some(&digest)).is_ok());
        assert_eq!(digest_hex("MD5=abc"), None);
    }
}
