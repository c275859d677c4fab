//! Large inputs: fetched from the object store `comfaas_inputs` into a
//! bounded on-disk cache keyed by digest, streamed (never held whole in
//! memory) and verified while they arrive. A second run on the same input
//! transfers nothing.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use async_nats::jetstream::object_store::ObjectStore;
use comfaas_schemas::{InputObject, InvocationError};
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
    pub async fn get(&self, object: &InputObject) -> Result<PathBuf, InvocationError> {
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
            return Err(InvocationError::input_invalid(format!(
                "input object `{}` has no usable digest (`{}`)",
                object.name, object.digest
            )));
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

    async fn get_locked(
        &self,
        object: &InputObject,
        key: &str,
    ) -> Result<PathBuf, InvocationError> {
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
            return Err(InvocationError::no_room(format!(
                "input object `{}` has {} bytes, more than this node's input cache of {} bytes",
                object.name, object.size, self.capacity
            )));
        }
        self.make_room(object.size).await;
        let part = self
            .dir
            .join(format!(".part-{}", uuid::Uuid::new_v4().simple()));
        let result = self.fetch(object, &part).await;
        match result {
            Ok((bytes, rate)) => {
                tokio::fs::rename(&part, &path)
                    .await
                    .map_err(|e| InvocationError::no_room(format!("cannot keep the input: {e}")))?;
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
    ) -> Result<(u64, Option<f64>), InvocationError> {
        let reader = self.store.get(&object.name).await.map_err(|e| {
            InvocationError::not_found(format!(
                "input object `{}` cannot be read: {e}",
                object.name
            ))
        })?;
        let stored = reader.info().digest.clone().unwrap_or_default();

        if stored != object.digest {
            return Err(InvocationError::input_invalid(format!(
                "input object `{}` changed since it was dispatched (digest {stored}, expected {})",
                object.name, object.digest
            )));
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
            // The object reader's verdict on the digest of what arrived.
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                return Err(InvocationError::input_invalid(format!(
                    "input object `{}` does not match its digest: {e}",
                    object.name
                )))
            }
            Err(e) => {
                return Err(InvocationError::unavailable(format!(
                    "fetching input object `{}` failed: {e}",
                    object.name
                )))
            }
        };
        writer.flush().await.map_err(|e| storage(&e))?;
        let seconds = flowing.elapsed().as_secs_f64();
        let rate = (bytes.saturating_sub(first) >= MIN_TIMED_BYTES && seconds > 0.0)
            .then(|| (bytes - first) as f64 / seconds);
        if bytes != object.size {
            return Err(InvocationError::input_invalid(format!(
                "input object `{}` has {bytes} bytes, expected {}",
                object.name, object.size
            )));
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

fn storage(e: &std::io::Error) -> InvocationError {
    InvocationError::no_room(format!("no room for the input on this node: {e}"))
}

fn internal() -> InvocationError {
    InvocationError::unavailable("input cache lock poisoned")
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use comfaas_schemas::ErrorCode;
    use comfaas_testbed::server::{EmbeddedServer, ServerOptions};

    use super::*;

    /// A real server with an object store, and a cache over it.
    struct Setup {
        _server: EmbeddedServer,
        js: async_nats::jetstream::Context,
        store: ObjectStore,
        dir: tempfile::TempDir,
    }

    impl Setup {
        async fn start() -> Self {
            let server = EmbeddedServer::start(ServerOptions::default())
                .await
                .expect("nats-server starts");
            let (js, store) = server
                .object_store("inputs", -1)
                .await
                .expect("inputs store");
            Self {
                _server: server,
                js,
                store,
                dir: tempfile::tempdir().unwrap(),
            }
        }

        fn cache(&self, capacity: u64) -> InputCache {
            InputCache::new(self.dir.path().to_owned(), self.store.clone(), capacity)
        }

        /// Stores `data` as `name`; what an invocation names it by.
        async fn put(&self, name: &str, data: &[u8]) -> InputObject {
            let info = self
                .store
                .put(name, &mut std::io::Cursor::new(data.to_vec()))
                .await
                .unwrap();
            InputObject {
                name: name.to_owned(),
                size: info.size as u64,
                digest: info.digest.unwrap(),
            }
        }

        /// The inputs the cache holds, by file name.
        fn cached(&self) -> Vec<String> {
            let mut names: Vec<String> = std::fs::read_dir(self.dir.path())
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            names
        }
    }

    fn key(object: &InputObject) -> String {
        object.digest.trim_start_matches("SHA-256=").to_owned()
    }

    #[tokio::test]
    async fn a_second_run_on_the_same_input_transfers_nothing() {
        let s = Setup::start().await;
        let cache = s.cache(1 << 20);
        let object = s.put("a", b"hello input").await;
        let path = cache.get(&object).await.unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"hello input");
        assert_eq!(path.file_name().unwrap().to_string_lossy(), key(&object));
        let stats = cache.stats();
        assert_eq!((stats.fetched_bytes, stats.cache_hits), (11, 0));

        // Gone from the store: only the cache can answer now.
        s.store.delete("a").await.unwrap();
        assert_eq!(cache.get(&object).await.unwrap(), path);
        let stats = cache.stats();
        assert_eq!((stats.fetched_bytes, stats.cache_hits), (11, 1));
    }

    #[tokio::test]
    async fn an_unusable_digest_is_refused() {
        let s = Setup::start().await;
        let cache = s.cache(1 << 20);
        let object = s.put("a", b"data").await;
        for digest in ["", "SHA-256=", "MD5=abc", "SHA-256=../../etc/passwd"] {
            let refused = cache
                .get(&InputObject {
                    digest: digest.to_owned(),
                    ..object.clone()
                })
                .await
                .unwrap_err();
            assert_eq!(refused.code, ErrorCode::InputInvalid, "{digest}");
            assert!(refused.message.contains("no usable digest"), "{refused}");
        }
        assert!(s.cached().is_empty());
    }

    #[tokio::test]
    async fn an_input_larger_than_the_cache_is_507() {
        let s = Setup::start().await;
        let cache = s.cache(10);
        let object = s.put("big", &[7u8; 100]).await;
        let refused = cache.get(&object).await.unwrap_err();
        assert_eq!(refused.code, ErrorCode::InsufficientStorage);
        assert!(refused
            .message
            .contains("more than this node's input cache"));
        assert!(s.cached().is_empty());
    }

    #[tokio::test]
    async fn missing_changed_and_corrupt_inputs_are_refused_and_leave_nothing() {
        let s = Setup::start().await;
        let cache = s.cache(1 << 20);
        let object = s.put("a", b"first").await;

        let missing = InputObject {
            name: "nothing".to_owned(),
            ..object.clone()
        };
        assert_eq!(
            cache.get(&missing).await.unwrap_err().code,
            ErrorCode::NotFound
        );

        // Replaced after it was dispatched.
        s.put("a", b"second").await;
        let changed = cache.get(&object).await.unwrap_err();
        assert_eq!(changed.code, ErrorCode::InputInvalid);
        assert!(changed.message.contains("changed since it was dispatched"));

        // A chunk the digest does not cover: the object reader reports it
        // as invalid data once the last chunk is in.
        let object = s.put("b", b"clean").await;
        let nuid = s.store.info("b").await.unwrap().nuid;
        s.js.publish(format!("$O.inputs.C.{nuid}"), "tampered".into())
            .await
            .unwrap()
            .await
            .unwrap();
        let corrupt = cache.get(&object).await.unwrap_err();
        assert_eq!(corrupt.code, ErrorCode::InputInvalid, "{corrupt}");
        assert!(
            corrupt.message.contains("does not match its digest"),
            "{corrupt}"
        );
        assert!(s.cached().is_empty(), "{:?}", s.cached());
    }

    #[tokio::test]
    async fn the_least_recently_used_inputs_make_room() {
        let s = Setup::start().await;
        let cache = s.cache(300);
        let mut objects = Vec::new();
        for (name, byte) in [("a", 1u8), ("b", 2), ("c", 3)] {
            let object = s.put(name, &[byte; 100]).await;
            cache.get(&object).await.unwrap();
            objects.push(object);
            // Modification times tell the order of use.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // `a` used again: `b` is now the least recently used.
        cache.get(&objects[0]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        let d = s.put("d", &[4u8; 100]).await;
        cache.get(&d).await.unwrap();
        let mut expect: Vec<String> = [&objects[0], &objects[2], &d].map(key).to_vec();
        expect.sort();
        assert_eq!(s.cached(), expect);

        // Two more need room for 200 bytes: `c` and then `a` go.
        let e = s.put("e", &[5u8; 200]).await;
        cache.get(&e).await.unwrap();
        let mut expect: Vec<String> = [&d, &e].map(key).to_vec();
        expect.sort();
        assert_eq!(s.cached(), expect);
    }
}
