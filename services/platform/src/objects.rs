//! Large inputs in the object store: uploaded once, named by content.

use std::path::{Path, PathBuf};

use async_nats::jetstream::object_store::{ObjectInfo, ObjectMetadata, ObjectOptions, ObjectStore};
use async_nats::jetstream::Context;
use bytes::{Bytes, BytesMut};
use sha2::{Digest, Sha256};

use crate::NatsError;

/// Largest chunk of uploads (less where the server's max payload is
/// smaller); see docs/BENCHMARKS.md (issues 4 and 14) for how it was chosen.
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

/// Hashes `path` while reading it in blocks (never whole in memory), on a
/// blocking thread.
pub async fn sha256_of(path: &Path) -> std::io::Result<(String, u64)> {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || {
        use std::io::Read as _;
        let mut file = std::fs::File::open(path)?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut size = 0u64;
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            size += n as u64;
        }
        Ok((hex::encode(hasher.finalize()), size))
    })
    .await
    .map_err(|e| std::io::Error::other(e.to_string()))?
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

/// Content to upload.
#[derive(Debug, Clone)]
pub enum Content {
    /// A file, read in chunks (never whole in memory).
    File(PathBuf),
    /// Bytes already in memory.
    Bytes(Bytes),
}

/// Whether [`upload`] may keep an object already stored under the
/// content's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reuse {
    /// Kept when its info names this content's digest and size.
    IfSame,
    /// Always sent again, replacing it: its info named this content, but a
    /// node found other bytes in its chunks (anyone who may put inputs can
    /// write an info message that claims any digest).
    Never,
}

/// Puts `content` into the object store `bucket` under its content's name
/// (`sha256-<hex>`), in `chunk_size` chunks with [`put_windowed`], unless
/// `reuse` allows keeping an object of that name that already holds that
/// content (by the digest the store keeps, and the size): then nothing is
/// sent. `progress` is told the bytes of each chunk acknowledged.
pub async fn upload(
    js: &Context,
    bucket: &str,
    content: &Content,
    chunk_size: usize,
    reuse: Reuse,
    progress: &(dyn Fn(u64) + Send + Sync),
) -> Result<Uploaded, NatsError> {
    let (hex, size) = match content {
        Content::File(path) => sha256_of(path)
            .await
            .map_err(|e| NatsError::new(format!("read {}", path.display()), e))?,
        Content::Bytes(bytes) => (hex::encode(Sha256::digest(bytes)), bytes.len() as u64),
    };
    let name = format!("{CONTENT_NAME_PREFIX}{hex}");
    let store = js
        .get_object_store(bucket)
        .await
        .map_err(|e| NatsError::new(format!("open object store {bucket}"), e))?;
    let stored = match reuse {
        Reuse::IfSame => store.info(&name).await.ok(),
        Reuse::Never => None,
    };
    if let Some(info) = stored {
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
    let mut expect = [0u8; 32];
    hex::decode_to_slice(&hex, &mut expect)
        .map_err(|e| NatsError::new(format!("digest of {name}"), e))?;
    let spec = PutSpec {
        bucket,
        name: &name,
        chunk_size,
        expect_sha256: Some(expect),
    };
    let put = match content {
        Content::File(path) => {
            let file = std::fs::File::open(path)
                .map_err(|e| NatsError::new(format!("read {}", path.display()), e))?;
            put_windowed(js, &spec, file, progress).await
        }
        Content::Bytes(bytes) => {
            put_windowed(js, &spec, std::io::Cursor::new(bytes.clone()), progress).await
        }
    };
    put.map_err(|e| NatsError::new(format!("store {name}"), e))?;
    Ok(Uploaded {
        name,
        size,
        reused: false,
    })
}

/// Puts the file at `path` into the object store `bucket` under its
/// content's name, unless an object of that name already holds that
/// content; chunks as large as the server takes, up to [`UPLOAD_CHUNK`].
pub async fn upload_file(js: &Context, bucket: &str, path: &Path) -> Result<Uploaded, NatsError> {
    let chunk = chunk_for(js.client().server_info().max_payload, 0);
    upload(
        js,
        bucket,
        &Content::File(path.to_owned()),
        chunk,
        Reuse::IfSame,
        &|_| {},
    )
    .await
}

/// Bytes of chunk publishes a put keeps in flight, awaiting their acks:
/// enough that the round trip of one ack no longer sets the upload's speed
/// (async-nats' own `put` waits for each ack before the next chunk), little
/// enough that the server's per-connection queue is never in the way.
pub const PUT_WINDOW_BYTES: usize = 32 << 20;
/// Chunks read ahead of the network by a put's reading thread.
const READ_AHEAD_CHUNKS: usize = 4;

/// Why a put failed; the object is not stored in any case: its info (what
/// makes it visible) is never written, and the chunks sent are purged
/// where the role may purge (a device may not: they stay, invisible, until
/// the bucket's age limit).
#[derive(Debug, thiserror::Error)]
pub enum PutError {
    /// The source could not be read.
    #[error("cannot read the content of `{name}`: {source}")]
    Read {
        /// The object's name.
        name: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The server refused a chunk (the bucket full, its stream gone) or
    /// did not ack it.
    #[error("the object store refused chunk {chunk} of `{name}` after {sent} bytes: {reason}; `{name}` was not stored")]
    Refused {
        /// The object's name.
        name: String,
        /// Which chunk (1-based).
        chunk: u64,
        /// Bytes acknowledged before it.
        sent: u64,
        /// The server's (or the client's) reason.
        reason: String,
    },
    /// The content read was not the content the caller expected (the file
    /// changed while it was uploaded): stored under its name it would
    /// break the promise of a content name.
    #[error(
        "the content of `{name}` changed while it was uploaded (SHA-256 {got}); it was not stored"
    )]
    Changed {
        /// The object's name.
        name: String,
        /// SHA-256 (hex) of what was read.
        got: String,
    },
    /// The object's name cannot be stored (empty).
    #[error("`{0}` is not a valid object name")]
    InvalidName(String),
    /// Writing the object's info (which makes it visible) failed.
    #[error("cannot write the info of object `{name}`: {reason}; it was not stored")]
    Info {
        /// The object's name.
        name: String,
        /// Why.
        reason: String,
    },
}

/// What a windowed put sends: the object's name, chunk size and, when the
/// caller knows it, the SHA-256 the content must have.
#[derive(Debug, Clone)]
pub struct PutSpec<'a> {
    /// The object store's bucket.
    pub bucket: &'a str,
    /// The object's name.
    pub name: &'a str,
    /// Bytes per chunk (each chunk one message; the last may be shorter).
    pub chunk_size: usize,
    /// The SHA-256 the content must have, or the put fails and keeps
    /// nothing: a content name stays true even if the file changes.
    pub expect_sha256: Option<[u8; 32]>,
}

/// The largest chunk a server whose max payload is `max_payload` takes
/// beside `headroom` bytes kept for headers, at most `UPLOAD_CHUNK`; a
/// server that told none is taken to have nats-server's default (1 MiB).
pub fn chunk_for(max_payload: usize, headroom: usize) -> usize {
    let max_payload = if max_payload == 0 {
        1 << 20
    } else {
        max_payload
    };
    UPLOAD_CHUNK.min(max_payload.saturating_sub(headroom).max(1024))
}

/// Puts what `source` reads into the object store `spec.bucket` as
/// `spec.name`, in the object store's own format (chunks on
/// `$O.<bucket>.C.<nuid>`, then the info on `$O.<bucket>.M.<name>`, as
/// async-nats and nats-py write them and read them back), keeping
/// [`PUT_WINDOW_BYTES`] of chunks in flight instead of one. A blocking
/// thread reads and hashes ahead of the network; `progress` is told the
/// bytes of each acknowledged chunk. A put that fails midway purges the
/// chunks it sent, so no half object is left, and an object the name held
/// before is replaced (its chunks purged) only once the new one is whole.
pub async fn put_windowed<R>(
    js: &Context,
    spec: &PutSpec<'_>,
    source: R,
    progress: &(dyn Fn(u64) + Send + Sync),
) -> Result<ObjectInfo, PutError>
where
    R: std::io::Read + Send + 'static,
{
    let name = spec.name.to_owned();
    if name.is_empty() {
        return Err(PutError::InvalidName(name));
    }
    let chunk_size = spec.chunk_size.max(1);
    let nuid = nuid::next().to_string();
    let chunks_subject = comfaas_schemas::names::object_chunks_subject(spec.bucket, &nuid);
    let previous = previous_nuid(js, spec.bucket, &name).await;

    let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(READ_AHEAD_CHUNKS);
    let reader = tokio::task::spawn_blocking(move || read_chunks(source, chunk_size, &tx));
    let window = (PUT_WINDOW_BYTES / chunk_size).max(2);
    let mut acks = std::collections::VecDeque::with_capacity(window);
    let (mut chunks, mut size, mut acked) = (0u64, 0u64, 0u64);
    let mut failure = None;
    while let Some(chunk) = rx.recv().await {
        let len = chunk.len() as u64;
        chunks += 1;
        size += len;
        match js.publish(chunks_subject.clone(), chunk).await {
            Ok(ack) => acks.push_back((chunks, len, ack)),
            Err(e) => {
                failure = Some((chunks, e.to_string()));
                break;
            }
        }
        if acks.len() >= window {
            if let Some((number, len, ack)) = acks.pop_front() {
                if let Err(e) = ack.await {
                    failure = Some((number, e.to_string()));
                    break;
                }
                acked += len;
                progress(len);
            }
        }
    }
    drop(rx);
    while failure.is_none() {
        let Some((number, len, ack)) = acks.pop_front() else {
            break;
        };
        match ack.await {
            Ok(_) => {
                acked += len;
                progress(len);
            }
            Err(e) => failure = Some((number, e.to_string())),
        }
    }
    // Chunks still in flight land before the purge, or they would outlive it.
    for (_, _, ack) in acks.drain(..) {
        let _ = ack.await;
    }
    let read = reader.await;
    if let Some((chunk, reason)) = failure {
        purge(js, spec.bucket, &chunks_subject).await;
        return Err(PutError::Refused {
            name,
            chunk,
            sent: acked,
            reason,
        });
    }
    let digest = match read {
        Ok(Ok(digest)) => digest,
        Ok(Err(e)) => {
            purge(js, spec.bucket, &chunks_subject).await;
            return Err(PutError::Read { name, source: e });
        }
        Err(e) => {
            purge(js, spec.bucket, &chunks_subject).await;
            return Err(PutError::Read {
                name,
                source: std::io::Error::other(e.to_string()),
            });
        }
    };
    if spec
        .expect_sha256
        .is_some_and(|expected| expected != digest)
    {
        purge(js, spec.bucket, &chunks_subject).await;
        return Err(PutError::Changed {
            name,
            got: hex::encode(digest),
        });
    }
    let info = ObjectInfo {
        name: name.clone(),
        description: None,
        metadata: Default::default(),
        headers: None,
        options: Some(ObjectOptions {
            link: None,
            max_chunk_size: Some(chunk_size),
        }),
        bucket: spec.bucket.to_owned(),
        nuid,
        size: size as usize,
        chunks: chunks as usize,
        modified: Some(async_nats::datetime::now()),
        digest: Some(format!(
            "SHA-256={}",
            data_encoding::BASE64URL.encode(&digest)
        )),
        deleted: false,
    };
    let written = async {
        let payload = serde_json::to_vec(&info).map_err(|e| e.to_string())?;
        let mut headers = async_nats::HeaderMap::new();
        // One info per name: the new one replaces the old (as every
        // object store client writes it).
        headers.insert(async_nats::header::NATS_ROLLUP, "sub");
        let subject = comfaas_schemas::names::object_info_subject(
            spec.bucket,
            &data_encoding::BASE64URL.encode(name.as_bytes()),
        );
        js.publish_with_headers(subject, headers, payload.into())
            .await
            .map_err(|e| e.to_string())?
            .await
            .map_err(|e| e.to_string())
    }
    .await;
    if let Err(reason) = written {
        purge(js, spec.bucket, &chunks_subject).await;
        return Err(PutError::Info { name, reason });
    }
    if let Some(old) = previous.filter(|old| *old != info.nuid) {
        purge(
            js,
            spec.bucket,
            &comfaas_schemas::names::object_chunks_subject(spec.bucket, &old),
        )
        .await;
    }
    Ok(info)
}

/// The `nuid` of the object `name` holds now, if any: its chunks go once
/// a new put of that name is whole.
async fn previous_nuid(js: &Context, bucket: &str, name: &str) -> Option<String> {
    let store = js.get_object_store(bucket).await.ok()?;
    store.info(name).await.ok().map(|info| info.nuid)
}

/// How long purging chunks may take before a put moves on (a role that
/// may not purge gets no answer).
const PURGE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Purges the chunks on `subject` (of a put that failed, or of an object
/// replaced); best effort: a role that may not purge (a device) leaves
/// them to the bucket's age limit, and nothing refers to them.
async fn purge(js: &Context, bucket: &str, subject: &str) {
    let stream = comfaas_schemas::names::object_store_stream(bucket);
    let purge = async {
        let stream = js
            .get_stream_no_info(&stream)
            .await
            .map_err(|e| e.to_string())?;
        stream
            .purge()
            .filter(subject)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    let purged = tokio::time::timeout(PURGE_TIMEOUT, purge)
        .await
        .unwrap_or_else(|_| Err("no answer".to_owned()));
    if let Err(e) = purged {
        tracing::warn!(
            subject,
            "chunks not purged (the bucket's age limit removes them): {e}"
        );
    }
}

/// Reads `source` in `chunk_size` chunks (each full but the last), hands
/// them to `chunks` and hashes them; the SHA-256 of all once read. Stops
/// early, without error, when the receiver is gone (the put failed).
fn read_chunks(
    mut source: impl std::io::Read,
    chunk_size: usize,
    chunks: &tokio::sync::mpsc::Sender<Bytes>,
) -> std::io::Result<[u8; 32]> {
    let mut hasher = Sha256::new();
    loop {
        let mut buf = BytesMut::zeroed(chunk_size);
        let mut filled = 0;
        while filled < chunk_size {
            match source.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if filled == 0 {
            break;
        }
        buf.truncate(filled);
        hasher.update(&buf);
        if chunks.blocking_send(buf.freeze()).is_err() || filled < chunk_size {
            break;
        }
    }
    Ok(hasher.finalize().into())
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
