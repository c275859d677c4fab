//! Large inputs and outputs through the object store, with a bar of bytes
//! and rate on a terminal: `invoke --input-file`, `--data` too large for a
//! message, and outputs named by `Comfaas-Output-Object`.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use async_nats::jetstream::object_store::ObjectStore;
use bytes::Bytes;
use comfaas_platform::objects::{self, Uploaded};
use comfaas_schemas::names::INPUTS_BUCKET;
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
/// `max_payload`: [`objects::UPLOAD_CHUNK`], or less where a server takes smaller
/// messages (each chunk is one message, with headers).
pub fn chunk_size(max_payload: usize) -> usize {
    objects::chunk_for(max_payload, MESSAGE_HEADROOM)
}

/// Uploads `source` into the inputs store under its content's name
/// (`sha256-<hex>`), unless `reuse` keeps an object of that name that
/// already holds that content; chunks go with a window of acks in flight
/// ([`objects::put_windowed`]), and a bar shows bytes and rate while they go.
pub async fn upload(
    js: &async_nats::jetstream::Context,
    source: &Source,
    max_payload: usize,
    reuse: objects::Reuse,
) -> anyhow::Result<Uploaded> {
    let content = match source {
        Source::File(path) => objects::Content::File(path.clone()),
        Source::Bytes(bytes) => objects::Content::Bytes(bytes.clone()),
    };
    let size = match source {
        Source::File(path) => std::fs::metadata(path)
            .with_context(|| format!("read {}", path.display()))?
            .len(),
        Source::Bytes(bytes) => bytes.len() as u64,
    };
    let bar = output::bytes_bar("upload", size);
    let progress = bar.clone();
    let uploaded = objects::upload(
        js,
        INPUTS_BUCKET,
        &content,
        chunk_size(max_payload),
        reuse,
        &move |bytes| progress.inc(bytes),
    )
    .await;
    bar.finish_and_clear();
    Ok(uploaded?)
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
        assert_eq!(chunk_size(8 * mib), objects::UPLOAD_CHUNK);
        assert_eq!(chunk_size(256 * 1024), 256 * 1024 - MESSAGE_HEADROOM);
    }
}
