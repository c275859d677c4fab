//! Large inputs: fetched from the object store `comfaas_inputs` into a
//! bounded on-disk cache keyed by digest, streamed (never held whole in
//! memory) and verified while they arrive. A second run on the same input
//! transfers nothing.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use async_nats::jetstream::object_store::ObjectStore;
use comfaas_schemas::{ErrorCode, InputObject};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

/// Write buffer of a fetch: large writes keep the disk out of the way.
const WRITE_BUFFER: usize = 1 << 20;
/// Object chunks the fetching connection may hold before the server waits
/// (chunks are up to 1 MiB: this bounds a fetch's memory).
pub const BUFFERED_CHUNKS: usize = 16;
/// Bytes that must flow after the first chunk for a fetch to be timed.
const MIN_TIMED_BYTES: u64 = 256 * 1024;
/// Weight of the newest fetch in the throughput's moving average.
const RATE_ALPHA: f64 = 0.3;

/// Fetch statistics, for the heartbeat.
#[derive(Debug, Default, Clone, Copy)]
pub struct FetchStats {
    /// Bytes fetched from the object store.
    pub fetched_bytes: u64,
    /// Inputs served from the cache.
    pub cache_hits: u64,
    /// Moving average of fetch throughput once data flows (the wait for
    /// the first chunk, a few round trips, left out), bytes per second.
    pub bytes_per_s: f64,
}

/// The node's input cache.
pub struct InputCache {
    dir: PathBuf,
    store: ObjectStore,
    capacity: u64,
    stats: Mutex<FetchStats>,
    /// One fetch per digest at a time; others wait and then hit the cache.
    fetching: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// Why an input could not be had.
pub type InputError = (ErrorCode, String);

impl InputCache {
    /// A cache in `dir` holding at most `capacity` bytes.
    pub fn new(dir: PathBuf, store: ObjectStore, capacity: u64) -> Self {
        Self {
            dir,
            store,
            capacity,
            stats: Mutex::default(),
            fetching: Mutex::default(),
        }
    }

    /// Current statistics.
    pub fn stats(&self) -> FetchStats {
        self.stats.lock().map(|s| *s).unwrap_or_default()
    }

    fn update(&self, f: impl FnOnce(&mut FetchStats)) {
        if let Ok(mut stats) = self.stats.lock() {
            f(&mut stats);
        }
    }

    /// The local file holding `object`, fetched if not cached.
    pub async fn get(&self, object: &InputObject) -> Result<PathBuf, InputError> {
        // The store's digest is base64url (file-name safe); refuse anything else.
        let key = object
            .digest
            .strip_prefix("SHA-256=")
            .unwrap_or_default()
            .to_owned();
        if key.is_empty()
            || !key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_=".contains(c))
        {
            return Err((
                ErrorCode::InputInvalid,
                format!(
                    "input object `{}` has no usable digest (`{}`)",
                    object.name, object.digest
                ),
            ));
        }
        let gate = {
            let mut fetching = self.fetching.lock().map_err(|_| internal())?;
            fetching.entry(key.clone()).or_default().clone()
        };
        let _one_at_a_time = gate.lock().await;
        let result = self.get_locked(object, &key).await;
        // Forget the gate when no other fetch of this digest waits on it.
        if let Ok(mut fetching) = self.fetching.lock() {
            if Arc::strong_count(&gate) == 2 {
                fetching.remove(&key);
            }
        }
        result
    }

    async fn get_locked(&self, object: &InputObject, key: &str) -> Result<PathBuf, InputError> {
        let path = self.dir.join(key);
        if tokio::fs::try_exists(&path).await.unwrap_or(false) {
            // Least recently used goes first: mark it used.
            let touch = path.clone();
            let _ = tokio::task::spawn_blocking(move || {
                std::fs::File::options()
                    .append(true)
                    .open(&touch)
                    .and_then(|f| f.set_modified(SystemTime::now()))
            })
            .await;
            self.update(|s| s.cache_hits += 1);
            return Ok(path);
        }
        if object.size > self.capacity {
            return Err((
                ErrorCode::InsufficientStorage,
                format!(
                    "input object `{}` has {} bytes, more than this node's input cache of {} bytes",
                    object.name, object.size, self.capacity
                ),
            ));
        }
        self.make_room(object.size).await;
        let part = self
            .dir
            .join(format!(".part-{}", uuid::Uuid::new_v4().simple()));
        let result = self.fetch(object, &part).await;
        match result {
            Ok((bytes, rate)) => {
                tokio::fs::rename(&part, &path).await.map_err(|e| {
                    (
                        ErrorCode::InsufficientStorage,
                        format!("cannot keep the input: {e}"),
                    )
                })?;
                self.update(|s| {
                    s.fetched_bytes += bytes;
                    if let Some(rate) = rate {
                        s.bytes_per_s = if s.bytes_per_s > 0.0 {
                            s.bytes_per_s + RATE_ALPHA * (rate - s.bytes_per_s)
                        } else {
                            rate
                        };
                    }
                });
                Ok(path)
            }
            Err(e) => {
                // Nothing half-written stays behind.
                let _ = tokio::fs::remove_file(&part).await;
                Err(e)
            }
        }
    }

    /// Fetches `object` into `part`: its size and, when enough flowed to
    /// tell, the throughput after the first chunk.
    async fn fetch(
        &self,
        object: &InputObject,
        part: &Path,
    ) -> Result<(u64, Option<f64>), InputError> {
        let reader = self.store.get(&object.name).await.map_err(|e| {
            (
                ErrorCode::NotFound,
                format!("input object `{}` cannot be read: {e}", object.name),
            )
        })?;
        let stored = reader.info().digest.clone().unwrap_or_default();

        if stored != object.digest {
            return Err((
                ErrorCode::InputInvalid,
                format!(
                    "input object `{}` changed since it was dispatched (digest {stored}, expected {})",
                    object.name, object.digest
                ),
            ));
        }
        let file = tokio::fs::File::create(part)
            .await
            .map_err(|e| storage(&e))?;
        let mut writer = tokio::io::BufWriter::with_capacity(WRITE_BUFFER, file);
        // The object reader checks the digest when the last chunk arrives.
        // Reads of a whole chunk at a time: far fewer wake-ups than 8 KiB ones.
        let mut reader = tokio::io::BufReader::with_capacity(WRITE_BUFFER, reader);
        // The first chunk comes after a few round trips (object info, a
        // consumer); the throughput is timed from it on.
        let first = reader.fill_buf().await.map(|chunk| chunk.len() as u64);
        let flowing = Instant::now();
        let copied = match first {
            Ok(first) => tokio::io::copy_buf(&mut reader, &mut writer)
                .await
                .map(|bytes| (first, bytes)),
            Err(e) => Err(e),
        };
        let (first, bytes) = match copied {
            Ok(counts) => counts,
            Err(e) if e.kind() == std::io::ErrorKind::StorageFull => return Err(storage(&e)),
            Err(e) if e.to_string().contains("digest") => {
                return Err((
                    ErrorCode::InputInvalid,
                    format!(
                        "input object `{}` does not match its digest: {e}",
                        object.name
                    ),
                ))
            }
            Err(e) => {
                return Err((
                    ErrorCode::Unavailable,
                    format!("fetching input object `{}` failed: {e}", object.name),
                ))
            }
        };
        writer.flush().await.map_err(|e| storage(&e))?;
        let seconds = flowing.elapsed().as_secs_f64();
        let rate = (bytes.saturating_sub(first) >= MIN_TIMED_BYTES && seconds > 0.0)
            .then(|| (bytes - first) as f64 / seconds);
        if bytes != object.size {
            return Err((
                ErrorCode::InputInvalid,
                format!(
                    "input object `{}` has {bytes} bytes, expected {}",
                    object.name, object.size
                ),
            ));
        }
        Ok((bytes, rate))
    }

    /// Evicts least recently used inputs until `incoming` more bytes fit.
    async fn make_room(&self, incoming: u64) {
        let dir = self.dir.clone();
        let capacity = self.capacity;
        let _ = tokio::task::spawn_blocking(move || {
            let mut files: Vec<(SystemTime, u64, PathBuf)> = std::fs::read_dir(&dir)
                .into_iter()
                .flatten()
                .flatten()
                .filter(|e| !e.file_name().to_string_lossy().starts_with(".part-"))
                .filter_map(|e| {
                    let meta = e.metadata().ok()?;
                    Some((meta.modified().ok()?, meta.len(), e.path()))
                })
                .collect();
            files.sort();
            let mut used: u64 = files.iter().map(|f| f.1).sum();
            for (_, len, path) in files {
                if used + incoming <= capacity {
                    break;
                }
                if std::fs::remove_file(&path).is_ok() {
                    used -= len;
                }
            }
        })
        .await;
    }
}

fn storage(e: &std::io::Error) -> InputError {
    (
        ErrorCode::InsufficientStorage,
        format!("no room for the input on this node: {e}"),
    )
}

fn internal() -> InputError {
    (
        ErrorCode::Unavailable,
        "input cache lock poisoned".to_owned(),
    )
}
