//! Large inputs and outputs through the object store, with a bar of bytes
//! and rate on a terminal: `invoke --input-file`, `--data` too large for a
//! message, and outputs named by `Comfaas-Output-Object`.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use async_nats::jetstream::object_store::{ObjectMetadata, ObjectStore};
use bytes::Bytes;
use comfaas_platform::objects::{self, Uploaded, CONTENT_NAME_PREFIX, UPLOAD_CHUNK};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWrite;

use crate::output;

/// Room kept beside an input in one message: the headers of the request,
/// and the envelope the dispatcher wraps it in (an `Invocation`) before it
/// sends it on to a node.
pub const MESSAGE_HEADROOM: usize = 16 * 1024;

/// Where an input to upload comes from.
#[derive(Debug, Clone)]
pub enum Source {
    /// A file, read in chunks (never whole in memory).
    File(PathBuf),
    /// Bytes already read (`--data TEXT`, `--data @-`).
    Bytes(Bytes),
}

/// Whether an input of `len` bytes must go through the object store: it
/// would not fit in one message of a server whose max payload is
/// `max_payload`, once wrapped.
pub fn needs_object(len: usize, max_payload: usize) -> bool {
    len > usable(max_payload)
}

/// What a message may carry besides [`MESSAGE_HEADROOM`]; a server that
/// told no max payload is taken to have nats-server's default (1 MiB).
fn usable(max_payload: usize) -> usize {
    let max_payload = if max_payload == 0 {
        1 << 20
    } else {
        max_payload
    };
    max_payload.saturating_sub(MESSAGE_HEADROOM)
}

/// The chunk size of an upload to a server whose max payload is
/// `max_payload`: [`UPLOAD_CHUNK`], or less where a server takes smaller
/// messages (each chunk is one message, with headers).
pub fn chunk_size(max_payload: usize) -> usize {
    UPLOAD_CHUNK.min(usable(max_payload).max(1024))
}

/// Uploads `source` into `store` under its content's name
/// (`sha256-<hex>`), unless an object of that name already holds that
/// content; a bar shows bytes and rate while it goes.
pub async fn upload(
    store: &ObjectStore,
    source: &Source,
    max_payload: usize,
) -> anyhow::Result<Uploaded> {
    let (hex, size) = match source {
        Source::File(path) => objects::sha256_of(path)
            .await
            .with_context(|| format!("read {}", path.display()))?,
        Source::Bytes(bytes) => (hex::encode(Sha256::digest(bytes)), bytes.len() as u64),
    };
    let name = format!("{CONTENT_NAME_PREFIX}{hex}");
    if let Ok(info) = store.info(&name).await {
        // Reused only when it holds this very content: anyone who may put
        // inputs could have put other bytes under this name first.
        let same = info
            .digest
            .as_deref()
            .and_then(objects::digest_hex)
            .as_deref()
            == Some(hex.as_str());
        if same && info.size as u64 == size {
            return Ok(Uploaded {
                name,
                size,
                reused: true,
            });
        }
    }
    let meta = ObjectMetadata {
        name: name.clone(),
        chunk_size: Some(chunk_size(max_payload)),
        ..Default::default()
    };
    let bar = output::bytes_bar("upload", size);
    let put = match source {
        Source::File(path) => {
            let file = tokio::fs::File::open(path)
                .await
                .with_context(|| format!("read {}", path.display()))?;
            store.put(meta, &mut bar.wrap_async_read(file)).await
        }
        Source::Bytes(bytes) => store.put(meta, &mut bar.wrap_async_read(&bytes[..])).await,
    };
    bar.finish_and_clear();
    put.with_context(|| format!("store the input as {name}"))?;
    Ok(Uploaded {
        name,
        size,
        reused: false,
    })
}

/// Copies the object `name` of `store` into `out`, with a bar of bytes and
/// rate; returns how many bytes it copied.
pub async fn download(
    store: &ObjectStore,
    name: &str,
    out: &mut (dyn AsyncWrite + Unpin + Send),
) -> anyhow::Result<u64> {
    let mut object = store
        .get(name)
        .await
        .with_context(|| format!("fetch output object {name}"))?;
    let bar = output::bytes_bar("download", object.info.size as u64);
    let copied = tokio::io::copy(&mut object, &mut bar.wrap_async_write(out)).await;
    bar.finish_and_clear();
    copied.with_context(|| format!("read output object {name}"))
}

/// Reads `--data`'s file argument (`@FILE`), when it names a file, so a
/// large one can be uploaded from disk instead of read into memory.
pub fn data_file(data: Option<&str>) -> Option<&Path> {
    data.and_then(|d| d.strip_prefix('@'))
        .filter(|p| *p != "-")
        .map(Path::new)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_leave_room_for_the_envelope_and_chunks_fit_the_server() {
        let mib = 1 << 20;
        assert!(!needs_object(mib - MESSAGE_HEADROOM, mib));
        assert!(needs_object(mib - MESSAGE_HEADROOM + 1, mib));
        assert!(needs_object(mib + 1, 0), "an unknown limit is the default");
        assert!(!needs_object(1000, 0));
        assert_eq!(chunk_size(8 * mib), UPLOAD_CHUNK);
        assert_eq!(chunk_size(256 * 1024), 256 * 1024 - MESSAGE_HEADROOM);
    }
}
