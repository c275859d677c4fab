//! Large inputs: fetched from the object store `comfaas_inputs` into a
//! bounded on-disk cache keyed by digest, streamed (never held whole in
//! memory) and verified while they arrive. A second run on the same input
//! transfers nothing.
//!
//! A fetch reads the object's info (its `nuid`, size, chunk count and
//! digest), then pulls its chunks (`$O.<bucket>.C.<nuid>`) through an
//! ephemeral pull consumer of its own, one pull at a time, each bounded in
//! bytes and in chunks; and all the fetches of a node together keep at
//! most [`PULLS_IN_FLIGHT`] bytes asked for and not yet received. The
//! server sends only what was asked for, so neither the client's
//! subscription buffers nor the server's queue for the connection
//! overflow, whatever chunk size the uploader chose. (async-nats' object
//! reader uses an ordered push consumer, which overran the connection's
//! small subscription buffer with 128 KiB chunks, the default of nats-py
//! and of the `nats` CLI: chunks were dropped as a slow consumer and some
//! fetches never finished.) A blocking thread hashes (SHA-256) and writes
//! what arrives, a bounded way behind the network.
//!
//! Chunks lost on the way (a gap in the consumer's delivery sequence, as a
//! reconnect may cause), a pull that breaks (its consumer deleted) and one
//! that goes quiet are pulled again, through a new consumer, from the chunk
//! after the last that arrived.
//!
//! Nothing waits forever: a fetch that gets no bytes for the node's
//! `input_stall_ms` fails with 503 naming the object, the bytes it got and
//! the stall; one under way at shutdown stops at once. Either way its
//! `.part-` file is removed, and a node starting up removes those a
//! previous run of it left.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy, PullConsumer};
use async_nats::jetstream::object_store::{InfoErrorKind, ObjectInfo, ObjectStore};
use async_nats::jetstream::Context;
use bytes::Bytes;
use comfaas_schemas::{names, CachedInputs, InputObject, InvocationError};
use futures::StreamExt;
use sha2::Digest as _;
use tokio_util::sync::CancellationToken;

/// Bytes one pull asks for (more when one chunk may be larger). A fetch
/// has one pull at a time in flight (two, each with a subscription of its
/// own, would be filled by the server in turns, out of order); a large one
/// keeps the round trip between pulls a small part of the time.
const PULL_BYTES: usize = 16 << 20;
/// Most chunks one pull asks for (uploads in small chunks).
const PULL_CHUNKS: usize = 256;
/// Bytes all the fetches of a node may have asked for and not received,
/// together: what the server may have queued for the fetching connection.
/// Well under the server's default `max_pending` (64 MB), past which it
/// cuts a client off as a slow consumer (eight fetches pulling 16 MiB
/// each did, losing chunks in flight).
const PULLS_IN_FLIGHT: usize = 32 << 20;
/// How long the server keeps one pull waiting for chunks.
const PULL_EXPIRES: Duration = Duration::from_secs(5);
/// Messages each subscription of the fetching connection may hold: a
/// pull's chunks and its status message fit, so a fetch never overruns it
/// (which would drop chunks as a slow consumer).
pub const SUBSCRIPTION_CAPACITY: usize = 2 * PULL_CHUNKS;
/// Room for a chunk's subject and headers in a pull's byte budget.
const CHUNK_OVERHEAD: usize = 4096;
/// Bytes handed to the writer thread ahead of the disk.
const WRITE_AHEAD: usize = 8 << 20;
/// Write buffer of a fetch: large writes keep the disk out of the way.
const WRITE_BUFFER: usize = 1 << 20;
/// How long the server keeps a fetch's consumer after its last pull, for
/// the fetches that could not delete theirs (a node killed mid-fetch).
const CONSUMER_IDLE: Duration = Duration::from_secs(30);
/// A fetch quiet this long (or half its stall time, if less) pulls again
/// through a new consumer from the chunk after the last that arrived: a
/// reconnect may have lost chunks or pulls.
const RESUME_WHEN_QUIET: Duration = Duration::from_secs(2);
/// Pause before pulling again.
const RESUME_PAUSE: Duration = Duration::from_millis(100);
/// How long deleting a fetch's consumer may take before the fetch moves
/// on (the server forgets it once idle anyway).
const DELETE_TIMEOUT: Duration = Duration::from_secs(2);
/// File name prefix of an input being fetched.
const PART_PREFIX: &str = ".part-";
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
    /// Fetches that failed on this node's side (stalled, or the pull
    /// broke), not for the input's own fault (missing, changed, corrupt).
    pub failures: u64,
}

/// Where inputs come from: the object store, and the JetStream context
/// (and bucket name) its chunks are pulled through.
pub struct InputSource {
    /// The JetStream context of the fetching connection.
    pub js: Context,
    /// The store, for object info.
    pub store: ObjectStore,
    /// The store's bucket name.
    pub bucket: String,
}

/// The node's input cache.
pub struct InputCache {
    dir: PathBuf,
    source: InputSource,
    capacity: u64,
    /// No bytes for this long: the fetch is given up.
    stall: Duration,
    /// Cancelled when the node shuts down: fetches under way stop.
    shutdown: CancellationToken,
    /// Bytes of pulls in flight on the fetching connection, shared by
    /// every fetch ([`PULLS_IN_FLIGHT`], or more for the largest chunks
    /// the server allows).
    in_flight: Arc<tokio::sync::Semaphore>,
    stats: Mutex<FetchStats>,
    /// One fetch per digest at a time; others wait and then hit the cache.
    fetching: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// A file being fetched, removed when dropped unless kept (or removed
/// already): a fetch cancelled mid-way (its future dropped) leaves nothing
/// behind either.
struct Partial {
    path: PathBuf,
    kept: bool,
}

impl Drop for Partial {
    fn drop(&mut self) {
        if !self.kept {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl InputCache {
    /// A cache in `dir` holding at most `capacity` bytes, fetching from
    /// `source`, giving up a fetch that gets no bytes for `stall`, and
    /// stopping fetches under way when `shutdown` is cancelled.
    pub fn new(
        dir: PathBuf,
        source: InputSource,
        capacity: u64,
        stall: Duration,
        shutdown: CancellationToken,
    ) -> Self {
        let max_payload = source.js.client().server_info().max_payload;
        let in_flight = PULLS_IN_FLIGHT.max(2 * (max_payload + CHUNK_OVERHEAD));
        Self {
            dir,
            source,
            capacity,
            stall,
            shutdown,
            in_flight: Arc::new(tokio::sync::Semaphore::new(in_flight)),
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
            let mut fetching = self
                .fetching
                .lock()
                .map_err(|_| InvocationError::unavailable("input cache lock poisoned"))?;
            fetching.entry(key.clone()).or_default().clone()
        };
        let result = async {
            // Waiting for another fetch of the same input ends at shutdown too.
            let _one_at_a_time = tokio::select! {
                biased;
                () = self.shutdown.cancelled() => return Err(shutting_down(object, 0)),
                held = gate.lock() => held,
            };
            self.get_locked(object, &key).await
        }
        .await;
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
        let mut part = Partial {
            path: self
                .dir
                .join(format!("{PART_PREFIX}{}", uuid::Uuid::new_v4().simple())),
            kept: false,
        };
        let result = self.fetch(object, &part.path).await;
        match result {
            Ok((bytes, rate)) => {
                tokio::fs::rename(&part.path, &path)
                    .await
                    .map_err(|e| InvocationError::no_room(format!("cannot keep the input: {e}")))?;
                part.kept = true;
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
                // Nothing half-written stays behind (removed here, so the
                // guard need not do it again, blocking).
                let _ = tokio::fs::remove_file(&part.path).await;
                part.kept = true;
                // The node's own failures (not the input's, nor a shutdown)
                // tell dispatchers to send inputs elsewhere for a while.
                if e.code == comfaas_schemas::ErrorCode::Unavailable
                    && !self.shutdown.is_cancelled()
                {
                    self.update(|s| s.failures += 1);
                }
                tracing::warn!(object = %object.name, "{e}");
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
        let name = &object.name;
        let info = self.source.store.info(name).await.map_err(|e| {
            let message = format!("input object `{name}` cannot be read: {e}");
            match e.kind() {
                InfoErrorKind::NotFound | InfoErrorKind::InvalidName => {
                    InvocationError::not_found(message)
                }
                InfoErrorKind::Other | InfoErrorKind::TimedOut => {
                    InvocationError::unavailable(message)
                }
            }
        })?;
        if info.options.as_ref().is_some_and(|o| o.link.is_some()) {
            return Err(InvocationError::input_invalid(format!(
                "input object `{name}` is a link: name the object it links to"
            )));
        }
        let stored = info.digest.clone().unwrap_or_default();
        if stored != object.digest || info.size as u64 != object.size {
            return Err(InvocationError::input_invalid(format!(
                "input object `{name}` changed since it was dispatched (digest {stored}, expected {})",
                object.digest
            )));
        }
        let size = info.size as u64;
        let chunk = size.div_ceil((info.chunks as u64).max(1)).max(1) as usize;
        let file = tokio::fs::File::create(part)
            .await
            .map_err(|e| storage(&e))?
            .into_std()
            .await;
        let (chunks_tx, chunks_rx) = tokio::sync::mpsc::channel((WRITE_AHEAD / chunk).max(1));
        let writer = tokio::task::spawn_blocking(move || write_part(file, chunks_rx));
        let mut pull = ChunkPull::new(&self.source, &info, self.in_flight.clone());
        let received = self.receive(&mut pull, &info, &chunks_tx).await;
        pull.close().await;
        drop(chunks_tx);
        let written = writer
            .await
            .map_err(|_| InvocationError::unavailable("the input writer thread failed"))?;
        let progress = received?;
        let digest = written.map_err(|e| storage(&e))?;
        let got = progress.got;
        if got != size {
            return Err(InvocationError::input_invalid(format!(
                "input object `{name}` has {got} bytes, expected {size}"
            )));
        }
        let expected = stored.strip_prefix("SHA-256=").unwrap_or(&stored);
        let computed = data_encoding::BASE64URL.encode(&digest);
        if computed.trim_end_matches('=') != expected.trim_end_matches('=') {
            return Err(InvocationError::input_invalid(format!(
                "input object `{name}` does not match its digest: got SHA-256={computed}, expected SHA-256={expected}"
            )));
        }
        let rate = progress.flowing.and_then(|(since, first)| {
            let seconds = since.elapsed().as_secs_f64();
            (got.saturating_sub(first) >= MIN_TIMED_BYTES && seconds > 0.0)
                .then(|| (got - first) as f64 / seconds)
        });
        Ok((got, rate))
    }

    /// Receives the chunks of the object `info` describes from `pull` and
    /// hands them to the writer. Chunks lost on the way (a gap in the
    /// consumer's sequence, e.g. after a reconnect), a pull that breaks
    /// and one that goes quiet are pulled again from the chunk after the
    /// last that arrived; only no bytes at all for the stall time fails.
    async fn receive(
        &self,
        pull: &mut ChunkPull<'_>,
        info: &ObjectInfo,
        chunks_tx: &tokio::sync::mpsc::Sender<Bytes>,
    ) -> Result<Progress, InvocationError> {
        let name = info.name.as_str();
        let (size, chunks) = (info.size as u64, info.chunks as u64);
        let mut progress = Progress {
            got: 0,
            received: 0,
            flowing: None,
            last: Instant::now(),
        };
        let quiet = (self.stall / 2).min(RESUME_WHEN_QUIET);
        while progress.received < chunks {
            let got = progress.got;
            let until = (progress.last + self.stall).min(Instant::now() + quiet);
            let next = tokio::select! {
                biased;
                () = self.shutdown.cancelled() => return Err(shutting_down_at(name, got, size)),
                next = tokio::time::timeout_at(until.into(), pull.next()) => next,
            };
            let why = match next {
                Ok(Ok(Some(payload))) => {
                    progress.got += payload.len() as u64;
                    progress.received += 1;
                    progress.last = Instant::now();
                    if progress.got > size {
                        return Err(InvocationError::input_invalid(format!(
                            "input object `{name}` has more bytes than its size, {size}"
                        )));
                    }
                    if progress.flowing.is_none() {
                        progress.flowing = Some((progress.last, progress.got));
                    }
                    // Waits while the disk lags the network by the write-ahead.
                    let sent = tokio::select! {
                        biased;
                        () = self.shutdown.cancelled() => return Err(shutting_down_at(name, got, size)),
                        sent = tokio::time::timeout(self.stall, chunks_tx.send(payload)) => sent,
                    };
                    match sent {
                        Err(_) => {
                            return Err(self.stalled(name, got, size, "the disk took no data"))
                        }
                        // The writer stopped: its error says why.
                        Ok(Err(_)) => return Ok(progress),
                        Ok(Ok(())) => continue,
                    }
                }
                Ok(Ok(None)) => "chunks were lost on the way".to_owned(),
                Ok(Err(e)) => e,
                Err(_) => "no chunk arrived".to_owned(),
            };
            if progress.last.elapsed() >= self.stall {
                return Err(self.stalled(name, got, size, &why));
            }
            tracing::info!(
                object = name,
                got,
                size,
                "{why}: pulling again from chunk {}",
                progress.received + 1
            );
            pull.close().await;
            // A server that refuses consumers now is not asked in a loop.
            tokio::select! {
                biased;
                () = self.shutdown.cancelled() => return Err(shutting_down_at(name, got, size)),
                () = tokio::time::sleep(RESUME_PAUSE) => {}
            }
        }
        Ok(progress)
    }

    /// The error of a fetch that made no progress for the stall time.
    fn stalled(&self, name: &str, got: u64, size: u64, why: &str) -> InvocationError {
        InvocationError::unavailable(format!(
            "fetching input object `{name}` stalled: {why} for {} ms after {got} of {size} bytes; given up",
            self.stall.as_millis()
        ))
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
                .filter(|e| !e.file_name().to_string_lossy().starts_with(PART_PREFIX))
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

/// How far a fetch got.
struct Progress {
    /// Bytes received.
    got: u64,
    /// Chunks received.
    received: u64,
    /// When the first chunk arrived, and its size: the throughput is
    /// timed from then.
    flowing: Option<(Instant, u64)>,
    /// When the last chunk arrived (or the fetch began).
    last: Instant,
}

/// The chunks of one object, in order, through a consumer of the fetch's
/// own, one pull at a time, each holding its bytes of the connection's
/// in-flight budget until its last chunk arrived: the consumer is started
/// on first use, and again after [`ChunkPull::close`] from the chunk after
/// the last that arrived.
struct ChunkPull<'a> {
    source: &'a InputSource,
    /// The store's stream.
    stream: String,
    /// The object's chunk subject.
    filter: String,
    /// Chunks one pull asks for.
    batch_chunks: usize,
    /// Bytes one pull asks for.
    batch_bytes: usize,
    /// The connection's in-flight budget.
    in_flight: Arc<tokio::sync::Semaphore>,
    consumer: Option<PullConsumer>,
    /// The pull under way and its share of the budget.
    batch: Option<(pull::Batch, tokio::sync::OwnedSemaphorePermit)>,
    /// Stream sequence of the last chunk that arrived (0: none yet).
    last_sequence: u64,
    /// The consumer sequence the next chunk must carry.
    next_delivery: u64,
}

impl<'a> ChunkPull<'a> {
    /// Pulls of the chunks of `info`, within the budget `in_flight`.
    fn new(
        source: &'a InputSource,
        info: &ObjectInfo,
        in_flight: Arc<tokio::sync::Semaphore>,
    ) -> Self {
        let (size, chunks) = (info.size, info.chunks.max(1));
        // Every chunk but the last holds the same bytes, the last at least
        // one: none holds more than this.
        let largest = match chunks {
            1 => size,
            n => size.saturating_sub(1) / (n - 1),
        }
        .max(1);
        // A conforming chunk fits in one message.
        let max_payload = source.js.client().server_info().max_payload;
        let largest = largest.min(max_payload);
        let typical = size.div_ceil(chunks).max(1);
        Self {
            stream: names::object_store_stream(&source.bucket),
            filter: names::object_chunks_subject(&source.bucket, &info.nuid),
            batch_chunks: (PULL_BYTES / typical).clamp(1, PULL_CHUNKS),
            // Never below one chunk: a pull smaller than its next chunk
            // gets nothing.
            batch_bytes: PULL_BYTES.max(largest + CHUNK_OVERHEAD),
            source,
            in_flight,
            consumer: None,
            batch: None,
            last_sequence: 0,
            next_delivery: 1,
        }
    }

    /// The next chunk; `None` when chunks before it were lost (pull again
    /// after [`ChunkPull::close`]); an error when the pull broke.
    async fn next(&mut self) -> Result<Option<Bytes>, String> {
        loop {
            if self.consumer.is_none() {
                self.start().await?;
            }
            if self.batch.is_none() {
                self.pull().await?;
            }
            let Some((batch, _)) = self.batch.as_mut() else {
                return Err("no pull".to_owned());
            };
            let message = match batch.next().await {
                // This pull is over (all its chunks in, or its bytes, or
                // it expired): the next one.
                None => {
                    self.batch = None;
                    continue;
                }
                // The pull's bytes are in (the server says so with a 409).
                Some(Err(e))
                    if ["MaxBytes", "Batch Completed"]
                        .iter()
                        .any(|end| e.to_string().contains(end)) =>
                {
                    self.batch = None;
                    continue;
                }
                Some(Err(e)) => return Err(format!("the pull failed: {e}")),
                Some(Ok(message)) => message,
            };
            let (delivery, sequence) = message
                .info()
                .map(|info| (info.consumer_sequence, info.stream_sequence))
                .map_err(|e| format!("a chunk without delivery info: {e}"))?;
            if delivery != self.next_delivery {
                return Ok(None);
            }
            self.next_delivery += 1;
            self.last_sequence = sequence;
            return Ok(Some(message.message.payload));
        }
    }

    /// A consumer from the chunk after the last that arrived.
    async fn start(&mut self) -> Result<(), String> {
        let deliver_policy = match self.last_sequence {
            0 => DeliverPolicy::All,
            last => DeliverPolicy::ByStartSequence {
                start_sequence: last + 1,
            },
        };
        let consumer: PullConsumer = self
            .source
            .js
            .create_consumer_on_stream(
                pull::Config {
                    filter_subject: self.filter.clone(),
                    deliver_policy,
                    ack_policy: AckPolicy::None,
                    inactive_threshold: CONSUMER_IDLE,
                    num_replicas: 1,
                    memory_storage: true,
                    ..Default::default()
                },
                &self.stream,
            )
            .await
            .map_err(|e| format!("cannot create a consumer: {e}"))?;
        self.consumer = Some(consumer);
        self.next_delivery = 1;
        Ok(())
    }

    /// One pull, once the connection's budget has room for it.
    async fn pull(&mut self) -> Result<(), String> {
        let Some(consumer) = self.consumer.as_ref() else {
            return Err("no consumer".to_owned());
        };
        let permit = self
            .in_flight
            .clone()
            .acquire_many_owned(self.batch_bytes as u32)
            .await
            .map_err(|e| format!("no pull budget: {e}"))?;
        let batch = consumer
            .batch()
            .max_messages(self.batch_chunks)
            .max_bytes(self.batch_bytes)
            .expires(PULL_EXPIRES)
            .messages()
            .await
            .map_err(|e| format!("cannot pull: {e}"))?;
        self.batch = Some((batch, permit));
        Ok(())
    }

    /// Stops pulling and deletes the consumer (or leaves it to the server,
    /// which drops it once idle).
    async fn close(&mut self) {
        self.batch = None;
        let Some(consumer) = self.consumer.take() else {
            return;
        };
        let name = consumer.cached_info().name.clone();
        let deleted = tokio::time::timeout(
            DELETE_TIMEOUT,
            self.source
                .js
                .delete_consumer_from_stream(&name, &self.stream),
        )
        .await;
        if !matches!(deleted, Ok(Ok(_))) {
            tracing::debug!(consumer = %name, "fetch consumer not deleted; the server drops it once idle");
        }
    }
}

impl InputCache {
    /// The inputs in the cache, for the load report: read from the cache
    /// folder (what a previous run of the node left counts, what was
    /// evicted does not), most recently used first when they are more than
    /// a report lists ([`comfaas_schemas::LISTED_INPUTS`]).
    pub async fn cached_inputs(&self) -> CachedInputs {
        let dir = self.dir.clone();
        let digests = tokio::task::spawn_blocking(move || {
            let entries: Vec<std::fs::DirEntry> = std::fs::read_dir(&dir)
                .into_iter()
                .flatten()
                .flatten()
                .filter(|e| !e.file_name().to_string_lossy().starts_with(PART_PREFIX))
                .collect();
            let mut files: Vec<(Option<SystemTime>, String)> = entries
                .iter()
                .filter_map(|e| Some((None, e.file_name().into_string().ok()?)))
                .collect();
            // Only a long list is cut, so only then is each file's last use
            // read (its modification time, see `get_locked`): newest first.
            if files.len() > comfaas_schemas::LISTED_INPUTS {
                for ((used, _), e) in files.iter_mut().zip(&entries) {
                    *used = e.metadata().and_then(|m| m.modified()).ok();
                }
                files.sort_by_key(|f| std::cmp::Reverse(f.0));
            }
            files
                .into_iter()
                .map(|(_, key)| format!("SHA-256={key}"))
                .collect::<Vec<String>>()
        })
        .await
        .unwrap_or_default();
        CachedInputs::of(&digests)
    }
}

/// Removes the partial files a previous run of this node left in the
/// cache folder `dir` (killed mid-fetch); how many it removed.
pub async fn remove_partial_files(dir: &Path) -> usize {
    let dir = dir.to_owned();
    tokio::task::spawn_blocking(move || {
        std::fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(PART_PREFIX))
            .filter(|e| std::fs::remove_file(e.path()).is_ok())
            .count()
    })
    .await
    .unwrap_or(0)
}

/// Writes the chunks arriving on `chunks` to `file` and hashes them, on a
/// blocking thread; the SHA-256 of all of them once the sender is dropped.
fn write_part(
    file: std::fs::File,
    mut chunks: tokio::sync::mpsc::Receiver<Bytes>,
) -> std::io::Result<[u8; 32]> {
    let mut hasher = sha2::Sha256::new();
    let mut out = std::io::BufWriter::with_capacity(WRITE_BUFFER, file);
    while let Some(chunk) = chunks.blocking_recv() {
        hasher.update(&chunk);
        out.write_all(&chunk)?;
    }
    out.flush()?;
    Ok(hasher.finalize().into())
}

fn shutting_down(object: &InputObject, got: u64) -> InvocationError {
    shutting_down_at(&object.name, got, object.size)
}

fn shutting_down_at(name: &str, got: u64, size: u64) -> InvocationError {
    InvocationError::unavailable(format!(
        "this node is shutting down: fetching input object `{name}` stopped after {got} of {size} bytes"
    ))
}

fn storage(e: &std::io::Error) -> InvocationError {
    InvocationError::no_room(format!("no room for the input on this node: {e}"))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use comfaas_schemas::{names, ErrorCode};
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
            self.cache_with(capacity, Duration::from_secs(10), CancellationToken::new())
        }

        fn cache_with(
            &self,
            capacity: u64,
            stall: Duration,
            shutdown: CancellationToken,
        ) -> InputCache {
            InputCache::new(
                self.dir.path().to_owned(),
                InputSource {
                    js: self.js.clone(),
                    store: self.store.clone(),
                    bucket: "inputs".to_owned(),
                },
                capacity,
                stall,
                shutdown,
            )
        }

        /// Stores `data` as `name` in chunks of `chunk` bytes.
        async fn put_chunked(&self, name: &str, data: &[u8], chunk: usize) -> InputObject {
            let info = self
                .store
                .put(
                    async_nats::jetstream::object_store::ObjectMetadata {
                        name: name.to_owned(),
                        chunk_size: Some(chunk),
                        ..Default::default()
                    },
                    &mut std::io::Cursor::new(data.to_vec()),
                )
                .await
                .unwrap();
            InputObject {
                name: name.to_owned(),
                size: info.size as u64,
                digest: info.digest.unwrap(),
            }
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

        /// Drops every message on `subject` from the store's stream.
        async fn purge(&self, subject: &str) {
            self.js
                .get_stream("OBJ_inputs")
                .await
                .unwrap()
                .purge()
                .filter(subject)
                .await
                .unwrap();
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

        // Its chunks replaced by others of the same size: the digest of
        // what arrived tells.
        let object = s.put("b", b"clean").await;
        let nuid = s.store.info("b").await.unwrap().nuid;
        let chunks = names::object_chunks_subject("inputs", &nuid);
        s.purge(&chunks).await;
        s.js.publish(chunks, "dirty".into())
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
        // The load report says what is held, and no longer what was evicted.
        let held = cache.cached_inputs().await;
        assert!(held.holds(&d.digest) && held.holds(&e.digest), "{held:?}");
        assert!(!held.holds(&objects[0].digest) && !held.holds(&objects[1].digest));
    }

    /// A cache of thousands of inputs reports a bounded filter of the
    /// most recently used; a fetch under way (a `.part-` file) is not held.
    #[tokio::test]
    async fn a_large_cache_reports_its_most_recent_inputs_in_a_bounded_filter() {
        let s = Setup::start().await;
        let cache = s.cache(1 << 30);
        let count = comfaas_schemas::FILTERED_INPUTS + 8;
        let start = SystemTime::now() - Duration::from_secs(100_000);
        let digest = |i: usize| format!("SHA-256=input{i:05}");
        for i in 0..count {
            let path = s.dir.path().join(format!("input{i:05}"));
            let file = std::fs::File::create(&path).unwrap();
            file.set_modified(start + Duration::from_secs(i as u64))
                .unwrap();
        }
        std::fs::write(s.dir.path().join(format!("{PART_PREFIX}x")), b"").unwrap();
        let held = cache.cached_inputs().await;
        let filter = held.filter.as_ref().expect("a filter for many inputs");
        assert_eq!(filter.count as usize, comfaas_schemas::FILTERED_INPUTS);
        assert!(comfaas_schemas::encode(&held).unwrap().len() < 6000);
        assert!((8..count).all(|i| held.holds(&digest(i))), "the newest");
        assert!(
            !(0..8).any(|i| held.holds(&digest(i))),
            "the oldest left out"
        );
        assert!(!held.holds(&format!("SHA-256={PART_PREFIX}x")));
    }

    /// Bytes from a fixed-seed generator, quick to make in bulk.
    fn noise(len: usize) -> Vec<u8> {
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect()
    }

    #[tokio::test]
    async fn any_chunk_size_arrives_whole_through_the_fetching_connection() {
        let s = Setup::start().await;
        // The executor's fetching connection, whose subscriptions hold a
        // bounded number of messages: pulls must never ask for more.
        let client = async_nats::ConnectOptions::new()
            .subscription_capacity(SUBSCRIPTION_CAPACITY)
            .connect(s._server.url())
            .await
            .unwrap();
        let js = async_nats::jetstream::new(client);
        let cache = InputCache::new(
            s.dir.path().to_owned(),
            InputSource {
                js,
                store: s.store.clone(),
                bucket: "inputs".to_owned(),
            },
            1 << 30,
            Duration::from_secs(10),
            CancellationToken::new(),
        );
        let data = noise(24 << 20);
        for (name, chunk) in [("k1", 1024), ("k128", 128 << 10), ("m1", 1 << 20)] {
            let object = s.put_chunked(name, &data[..(8 << 20) + 7], chunk).await;
            let path = cache.get(&object).await.unwrap();
            assert_eq!(
                std::fs::read(&path).unwrap(),
                &data[..(8 << 20) + 7],
                "{name}"
            );
            std::fs::remove_file(path).unwrap();
        }
        // 24 MB in 128 KiB chunks: three pulls' worth and more.
        let object = s.put_chunked("big", &data, 128 << 10).await;
        let path = cache.get(&object).await.unwrap();
        assert!(std::fs::read(&path).unwrap() == data);
        assert!(cache.stats().bytes_per_s > 0.0);
        assert_eq!(cache.stats().failures, 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_fetch_whose_consumer_goes_away_pulls_again_from_where_it_was() {
        let s = Setup::start().await;
        let cache = s.cache(1 << 30);
        let data = noise(64 << 20);
        let object = s.put_chunked("long", &data, 128 << 10).await;
        // Another client deletes the fetch's consumer as soon as it exists.
        let js = s.js.clone();
        let saboteur = tokio::spawn(async move {
            let stream = js.get_stream("OBJ_inputs").await.unwrap();
            loop {
                let names: Vec<String> = stream
                    .consumer_names()
                    .filter_map(|n| async move { n.ok() })
                    .collect()
                    .await;
                if let Some(name) = names.first() {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    return stream.delete_consumer(name).await.is_ok();
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        });
        let path = cache.get(&object).await.unwrap();
        assert!(saboteur.await.unwrap(), "deleted while fetching");
        assert!(std::fs::read(&path).unwrap() == data);
        assert_eq!(cache.stats().failures, 0);
    }

    #[tokio::test]
    async fn an_empty_input_is_fetched() {
        let s = Setup::start().await;
        let cache = s.cache(1 << 20);
        let object = s.put("empty", b"").await;
        let path = cache.get(&object).await.unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"");
    }

    #[tokio::test]
    async fn a_fetch_that_gets_no_bytes_stalls_into_a_503_and_leaves_nothing() {
        let s = Setup::start().await;
        let cache = s.cache_with(
            1 << 30,
            Duration::from_millis(500),
            CancellationToken::new(),
        );
        let object = s.put_chunked("lost", &noise(3 << 20), 1 << 20).await;
        // Its chunks are gone from the stream after its info was written:
        // the consumer has nothing to deliver, ever.
        let nuid = s.store.info("lost").await.unwrap().nuid;
        s.purge(&names::object_chunks_subject("inputs", &nuid))
            .await;
        let stalled = tokio::time::timeout(Duration::from_secs(10), cache.get(&object))
            .await
            .expect("the fetch gives up by itself")
            .unwrap_err();
        assert_eq!(stalled.code, ErrorCode::Unavailable, "{stalled}");
        assert!(stalled.message.contains("`lost` stalled"), "{stalled}");
        assert!(
            stalled
                .message
                .contains(&format!("after 0 of {} bytes", 3 << 20)),
            "{stalled}"
        );
        assert!(s.cached().is_empty(), "{:?}", s.cached());
        assert_eq!(cache.stats().failures, 1);
        // The fetch's consumer is gone too.
        let mut stream = s.js.get_stream("OBJ_inputs").await.unwrap();
        assert_eq!(stream.info().await.unwrap().state.consumer_count, 0);
    }

    #[tokio::test]
    async fn shutdown_stops_a_fetch_under_way_and_leaves_nothing() {
        let s = Setup::start().await;
        let shutdown = CancellationToken::new();
        let cache = s.cache_with(1 << 30, Duration::from_secs(60), shutdown.clone());
        let object = s.put_chunked("lost", &noise(3 << 20), 1 << 20).await;
        let nuid = s.store.info("lost").await.unwrap().nuid;
        s.purge(&names::object_chunks_subject("inputs", &nuid))
            .await;
        let stopper = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            shutdown.cancel();
        });
        let stopped = tokio::time::timeout(Duration::from_secs(10), cache.get(&object))
            .await
            .expect("shutdown ends the fetch")
            .unwrap_err();
        stopper.await.unwrap();
        assert_eq!(stopped.code, ErrorCode::Unavailable, "{stopped}");
        assert!(stopped.message.contains("shutting down"), "{stopped}");
        assert!(s.cached().is_empty(), "{:?}", s.cached());
        assert_eq!(
            cache.stats().failures,
            0,
            "a shutdown is not the node failing"
        );
    }

    #[tokio::test]
    async fn partial_files_of_a_previous_run_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(".part-0123"), b"half").unwrap();
        std::fs::write(dir.path().join("kept-input"), b"whole").unwrap();
        assert_eq!(remove_partial_files(dir.path()).await, 1);
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, vec![std::ffi::OsString::from("kept-input")]);
    }
}
