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

/// Puts the file at `path` into `store` under its content's name, unless an
/// object of that name and size is already there.
pub async fn upload_file(store: &ObjectStore, path: &Path) -> Result<Uploaded, NatsError> {
    let (hex, size) = sha256_of(path)
        .await
        .map_err(|e| NatsError::new(format!("read {}", path.display()), e))?;
    let name = format!("sha256-{hex}");
    if let Ok(info) = store.info(&name).await {
        if info.size as u64 == size {
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
