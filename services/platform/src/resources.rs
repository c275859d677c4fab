//! The JetStream streams and buckets comfaas shares, created when missing.
//!
//! Each is created with [`replicas`] copies: 1 on a single server, 3 on a
//! clustered site (`replicas` in every service's configuration, applied
//! with [`set_replicas`]), so that a site keeps its events, registry and
//! data when one of its servers dies. A resource keeps the count it was
//! created with (`nats stream edit --replicas N` changes it later).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_nats::jetstream::context::CreateStreamError;
use async_nats::jetstream::{self, kv, object_store, stream};
use comfaas_schemas::names::{self, Subjects};

use crate::NatsError;

/// How long events are kept for a dispatcher to take them.
const EVENTS_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);
/// Window in which a device's repeated `Nats-Msg-Id` is dropped by the
/// events stream (a publish retried after a lost ack).
const EVENTS_DEDUP_WINDOW: Duration = Duration::from_secs(120);
/// Window in which a repeated `Nats-Msg-Id` is dropped by the results and
/// dead-letter streams: a redelivered event's result or dead letter,
/// published again within it, is kept once.
pub const DEDUP_WINDOW: Duration = Duration::from_secs(600);
/// How long results are kept for late readers.
const RESULTS_MAX_AGE: Duration = Duration::from_secs(24 * 3600);
/// How long dead letters are kept for `comfaas dlq`.
const DLQ_MAX_AGE: Duration = Duration::from_secs(14 * 24 * 3600);
/// Versions of a function kept for rollback.
const FUNCTION_HISTORY: i64 = 16;
/// Events of one function waiting at once: past it that function's
/// publishers are refused (`maximum messages per subject exceeded`) while
/// other functions' events are still taken.
pub const EVENTS_PER_FUNCTION: i64 = 10_000;

/// Upper bound of one stream's or bucket's disk use, so a flood of events
/// cannot fill the server's disk.
const STREAM_MAX_BYTES: i64 = 1 << 30;

/// Most copies JetStream keeps of a stream.
pub const MAX_REPLICAS: usize = 5;

/// The replica count of what this process creates. One value per process,
/// like the site it serves: every service of a process connects to the
/// same site, and this way every creator (dispatcher, executor, CLI, the
/// registry and secrets handles) uses it without each call passing it.
static REPLICAS: AtomicUsize = AtomicUsize::new(1);

/// A replica count JetStream does not take.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("replicas must be between 1 and {MAX_REPLICAS}, not {0}")]
pub struct ReplicasError(pub usize);

/// Sets how many copies JetStream keeps of every stream, KV bucket and
/// object store this process creates from now on (binaries call it with
/// their `replicas` setting before connecting). A cluster needs at least
/// as many JetStream servers as the count.
pub fn set_replicas(replicas: usize) -> Result<(), ReplicasError> {
    if !(1..=MAX_REPLICAS).contains(&replicas) {
        return Err(ReplicasError(replicas));
    }
    REPLICAS.store(replicas, Ordering::Relaxed);
    Ok(())
}

/// The replica count of what this process creates (1 unless
/// [`set_replicas`] said otherwise).
pub fn replicas() -> usize {
    REPLICAS.load(Ordering::Relaxed)
}

/// The durable consumer of the events stream, as dispatchers share it:
/// `max_deliver` deliveries per event, at most `max_ack_pending` events
/// taken and not yet acknowledged (events waiting for a retry count too).
pub fn events_consumer_config(
    max_deliver: i64,
    max_ack_pending: i64,
) -> jetstream::consumer::pull::Config {
    jetstream::consumer::pull::Config {
        durable_name: Some(names::DISPATCH_EVENTS_CONSUMER.to_owned()),
        description: Some("comfaas dispatchers".to_owned()),
        ack_policy: jetstream::consumer::AckPolicy::Explicit,
        ack_wait: EVENTS_ACK_WAIT,
        max_deliver,
        max_ack_pending,
        ..Default::default()
    }
}

/// How long the server waits for a dispatcher's ack before redelivering an
/// event; dispatchers keep long runs' events with progress acks.
pub const EVENTS_ACK_WAIT: Duration = Duration::from_secs(30);
/// Deliveries of an event before it is given up, unless configured.
pub const EVENTS_MAX_DELIVER: i64 = 20;
/// Events taken and not yet acknowledged, unless configured.
pub const EVENTS_MAX_ACK_PENDING: i64 = 100_000;

/// The events stream: every `<prefix>.event.>` message until a dispatcher
/// has acknowledged it (interest retention: the dispatchers' durable
/// consumer, created here with the stream, holds them). Never evicts an
/// event it accepted: when it holds 1 GiB, or [`EVENTS_PER_FUNCTION`]
/// events of one function, new events are refused and their publishers
/// told so (discard new).
pub async fn events_stream(
    js: &jetstream::Context,
    subjects: &Subjects,
) -> Result<stream::Stream, NatsError> {
    let config = stream::Config {
        name: names::EVENTS_STREAM.to_owned(),
        description: Some("comfaas device events, taken by dispatchers".to_owned()),
        subjects: vec![subjects.event_all()],
        storage: stream::StorageType::File,
        retention: stream::RetentionPolicy::Interest,
        discard: stream::DiscardPolicy::New,
        max_messages_per_subject: EVENTS_PER_FUNCTION,
        discard_new_per_subject: true,
        max_age: EVENTS_MAX_AGE,
        max_bytes: STREAM_MAX_BYTES,
        duplicate_window: EVENTS_DEDUP_WINDOW,
        ..Default::default()
    };
    // A stream made by an older comfaas (limits retention, discard old)
    // is brought up to date.
    let stream = current_stream(js, config, |have, want| {
        have.discard != want.discard
            || have.retention != want.retention
            || have.max_messages_per_subject != want.max_messages_per_subject
            || have.duplicate_window != want.duplicate_window
    })
    .await?;
    // Interest retention keeps only what a consumer has yet to take: the
    // dispatchers' consumer exists from the start, so events published
    // before any dispatcher ran are kept for it.
    if stream
        .consumer_info(names::DISPATCH_EVENTS_CONSUMER)
        .await
        .is_err()
    {
        let made = stream
            .get_or_create_consumer(
                names::DISPATCH_EVENTS_CONSUMER,
                events_consumer_config(EVENTS_MAX_DELIVER, EVENTS_MAX_ACK_PENDING),
            )
            .await;
        // Another service may have made it meanwhile.
        if let Err(e) = made {
            if stream
                .consumer_info(names::DISPATCH_EVENTS_CONSUMER)
                .await
                .is_err()
            {
                return Err(NatsError::new(
                    format!("create consumer {}", names::DISPATCH_EVENTS_CONSUMER),
                    e,
                ));
            }
        }
    }
    Ok(stream)
}

/// The dead-letter stream: events that ended without a successful run,
/// on `<prefix>.dlq.<fn>`, for two weeks. Like the events stream it never
/// evicts: when full, dispatchers cannot dead-letter and keep the events.
pub async fn dlq_stream(
    js: &jetstream::Context,
    subjects: &Subjects,
) -> Result<stream::Stream, NatsError> {
    sized_stream(
        js,
        stream::Config {
            name: names::DLQ_STREAM.to_owned(),
            description: Some("comfaas dead letters: events that could not run".to_owned()),
            subjects: vec![subjects.dlq_all()],
            storage: stream::StorageType::File,
            discard: stream::DiscardPolicy::New,
            max_age: DLQ_MAX_AGE,
            max_bytes: STREAM_MAX_BYTES,
            duplicate_window: DEDUP_WINDOW,
            ..Default::default()
        },
    )
    .await
    .map(|(stream, _)| stream)
}

/// Opens the stream `config` names, creating it when missing. When the
/// server could not reserve four times its `max_bytes` of disk, it gets a
/// quarter of the room left, with a warning, like the object stores (see
/// [`made_in_room`]). At [`replicas`] copies, like everything created here.
/// Returns the stream and the configuration it was made with, or, when it
/// was there already or another service made it meanwhile, the one asked
/// for: what [`current_stream`] brings an older stream up to.
async fn sized_stream(
    js: &jetstream::Context,
    config: stream::Config,
) -> Result<(stream::Stream, stream::Config), NatsError> {
    let config = stream::Config {
        num_replicas: replicas(),
        ..config
    };
    let name = config.name.clone();
    made_in_room(
        js,
        &format!("stream {name}"),
        config.max_bytes,
        |max_bytes| {
            let config = stream::Config {
                max_bytes,
                ..config.clone()
            };
            async move {
                let stream = js.get_or_create_stream(config.clone()).await;
                stream.map(|stream| (stream, config))
            }
        },
        || async {
            let stream = js.get_stream(&name).await.ok()?;
            Some((stream, config.clone()))
        },
    )
    .await
}

/// Tries a service makes at a stream or store before it gives up: services
/// started side by side make the same ones at once, and another's probe or
/// new store can take the room found for one between the probe and the
/// create (or, on nats-server 2.9, another's create of the same stream
/// refuses this one as overlapping).
const MAKE_TRIES: u32 = 8;

/// Makes a stream or store with `make(size)`, unless `find` finds it made
/// already. JetStream reserves a store's whole `max_bytes` against the disk
/// the server may use, so the first stores made in full could leave none
/// for the rest: a store takes all of `max_bytes` only while the server can
/// still reserve four times that, and otherwise a quarter of the room left
/// (see [`fitted`]), with a warning. After each refusal `find` looks for
/// one another service made meanwhile; a refusal for want of room or for a
/// racing create is tried again, at the room then left, after a short
/// random pause, up to [`MAKE_TRIES`] times. `what` names it in the warning
/// and the error.
async fn made_in_room<T, E, Made, Found>(
    js: &jetstream::Context,
    what: &str,
    max_bytes: i64,
    make: impl Fn(i64) -> Made,
    find: impl Fn() -> Found,
) -> Result<T, NatsError>
where
    Made: std::future::Future<Output = Result<T, E>>,
    Found: std::future::Future<Output = Option<T>>,
    E: std::error::Error + Send + Sync + 'static,
{
    if let Some(found) = find().await {
        return Ok(found);
    }
    let mut size = fitted(js, what, max_bytes).await?;
    let mut tries = 1;
    loop {
        let error = match make(size).await {
            Ok(made) => return Ok(made),
            Err(e) => e,
        };
        if let Some(found) = find().await {
            return Ok(found);
        }
        let retry = no_room(&error) || racing(&error);
        if !retry || tries == MAKE_TRIES {
            return Err(NatsError::new(format!("create {what}"), error));
        }
        if tries > 1 {
            pause(tries).await;
        }
        tries += 1;
        if no_room(&error) {
            size = fitted(js, what, max_bytes).await?.min(size);
        }
    }
}

/// The size to make a stream or store of at most `max_bytes` at, from the
/// room the server has left now: all of it when the room is four times
/// that or more; else a quarter of the room, so that every store made after
/// it finds room too (the eighth store of a full platform still gets a
/// tenth of what the first found); under [`MIN_OBJECT_STORE_BYTES`], that
/// minimum or half the room, whichever is less. An error when the server
/// has no room at all. A `max_bytes` of zero or less (no limit) reserves
/// nothing and is kept.
async fn fitted(js: &jetstream::Context, what: &str, max_bytes: i64) -> Result<i64, NatsError> {
    if max_bytes <= 0 {
        return Ok(max_bytes);
    }
    // A service that may not make the probe may not make the store either:
    // its error, at once (a node on a secure site waits for its stores).
    let measure = || async {
        reservable_bytes(js, max_bytes.saturating_mul(4))
            .await
            .map_err(|e| NatsError::new(format!("create {what}"), e))
    };
    let mut room = measure().await?;
    // No room at all may be room held a moment longer: a server gives a
    // deleted stream's (another service's probe's) back a little later,
    // later still on a busy machine (seen on nats-server 2.9 with six
    // services starting together). Measured again before it is an error.
    for wait in 1..=EMPTY_RECHECKS {
        if room >= PROBE_FLOOR_BYTES * 2 {
            break;
        }
        tokio::time::sleep(EMPTY_RECHECK_PAUSE * wait).await;
        room = measure().await?;
    }
    let size = if room / 4 >= max_bytes {
        max_bytes
    } else if room / 4 >= MIN_OBJECT_STORE_BYTES {
        room / 4
    } else {
        (room / 2).min(MIN_OBJECT_STORE_BYTES)
    };
    if size < PROBE_FLOOR_BYTES {
        return Err(NatsError::new(
            format!("create {what}"),
            format!(
                "the server has no disk left to reserve for it (under {} MiB): \
                 raise its JetStream max_file_store (by default 75% of the disk free \
                 when it started) or free disk",
                PROBE_FLOOR_BYTES >> 20
            ),
        ));
    }
    if size < max_bytes {
        tracing::warn!(
            "the server can reserve {} MiB more of disk; the {what} gets {} MiB, not {} MiB, \
             leaving room for the rest",
            room >> 20,
            size >> 20,
            max_bytes >> 20
        );
    }
    Ok(size)
}

/// Times the room is measured again when none was found, after
/// [`EMPTY_RECHECK_PAUSE`] times the count (1.5 s in all).
const EMPTY_RECHECKS: u32 = 3;
/// See [`EMPTY_RECHECKS`].
const EMPTY_RECHECK_PAUSE: Duration = Duration::from_millis(250);

/// Waits a random 10 to 60 ms times `tries`, so that services retrying
/// together do not collide again.
async fn pause(tries: u32) {
    use std::hash::{BuildHasher, RandomState};
    let jitter = RandomState::new().hash_one(tries) % 50;
    tokio::time::sleep(Duration::from_millis((10 + jitter) * u64::from(tries))).await;
}

/// A limit of a stream's configuration that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidLimits(pub String);

/// Size and age limits of the logs stream (`[logs]` in the dispatcher's
/// configuration: `max_bytes`, `max_age_s`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct LogsLimits {
    /// Most bytes the stream keeps; the oldest logs go first.
    pub max_bytes: i64,
    /// How long a log is kept, seconds.
    pub max_age_s: u64,
}

impl Default for LogsLimits {
    fn default() -> Self {
        Self {
            max_bytes: 256 << 20,
            max_age_s: 24 * 3600,
        }
    }
}

impl LogsLimits {
    /// Checks the limits: a stream with no room or no time keeps nothing.
    pub fn validate(&self) -> Result<(), InvalidLimits> {
        if self.max_bytes < 1 << 20 {
            return Err(InvalidLimits(format!(
                "logs.max_bytes must be at least 1 MiB (1048576), not {}",
                self.max_bytes
            )));
        }
        if self.max_age_s == 0 {
            return Err(InvalidLimits(
                "logs.max_age_s must be above zero".to_owned(),
            ));
        }
        Ok(())
    }
}

/// The logs stream: what runs wrote to stderr, on `<prefix>.log.>`, within
/// `limits` (limits retention, discard old: logs are for looking back,
/// the newest matter most). A stream made with other limits gets these.
pub async fn logs_stream(
    js: &jetstream::Context,
    subjects: &Subjects,
    limits: LogsLimits,
) -> Result<stream::Stream, NatsError> {
    let config = stream::Config {
        name: names::LOGS_STREAM.to_owned(),
        description: Some("comfaas function logs: what runs wrote to stderr".to_owned()),
        subjects: vec![subjects.log_all()],
        storage: stream::StorageType::File,
        retention: stream::RetentionPolicy::Limits,
        discard: stream::DiscardPolicy::Old,
        max_age: Duration::from_secs(limits.max_age_s),
        max_bytes: limits.max_bytes,
        ..Default::default()
    };
    current_stream(js, config, |have, want| {
        have.max_age != want.max_age || have.max_bytes != want.max_bytes
    })
    .await
}

/// The stream of `config`, made as [`sized_stream`] makes it; one found
/// with a configuration `stale` tells apart from the one wanted is updated
/// to it. A server that refuses the update keeps the stream as it was
/// (said in a warning): a service still starts on it.
async fn current_stream(
    js: &jetstream::Context,
    config: stream::Config,
    stale: impl Fn(&stream::Config, &stream::Config) -> bool,
) -> Result<stream::Stream, NatsError> {
    let (stream, want) = sized_stream(js, config).await?;
    let have = &stream.cached_info().config;
    if stale(have, &want) {
        if let Err(e) = js.update_stream(&want).await {
            tracing::warn!(
                "stream {} keeps its old configuration (retention {:?}, discard {:?}, \
                 {} bytes, {:?}): {e}",
                want.name,
                have.retention,
                have.discard,
                have.max_bytes,
                have.max_age
            );
        }
    }
    Ok(stream)
}

/// The results stream: every `<prefix>.result.>` message, for a day.
pub async fn results_stream(
    js: &jetstream::Context,
    subjects: &Subjects,
) -> Result<stream::Stream, NatsError> {
    sized_stream(
        js,
        stream::Config {
            name: names::RESULTS_STREAM.to_owned(),
            description: Some("comfaas results of every invocation".to_owned()),
            subjects: vec![subjects.result_all()],
            storage: stream::StorageType::File,
            max_age: RESULTS_MAX_AGE,
            max_bytes: STREAM_MAX_BYTES,
            duplicate_window: DEDUP_WINDOW,
            ..Default::default()
        },
    )
    .await
    .map(|(stream, _)| stream)
}

/// Makes the site of `js` keep a mirror of the edge site `edge_domain`'s
/// events and results streams (JetStream mirroring across domains), so
/// edge data is kept in the cloud and catches up after the link was down.
pub async fn backup_edge(js: &jetstream::Context, edge_domain: &str) -> Result<(), NatsError> {
    for (name, source) in [
        (
            names::events_backup_stream(edge_domain),
            names::EVENTS_STREAM,
        ),
        (
            names::results_backup_stream(edge_domain),
            names::RESULTS_STREAM,
        ),
    ] {
        js.get_or_create_stream(stream::Config {
            name: name.clone(),
            description: Some(format!(
                "backup of {source} at the edge site `{edge_domain}`"
            )),
            storage: stream::StorageType::File,
            mirror: Some(stream::Source {
                name: source.to_owned(),
                external: Some(stream::External {
                    api_prefix: format!("$JS.{edge_domain}.API"),
                    delivery_prefix: None,
                }),
                ..Default::default()
            }),
            num_replicas: replicas(),
            ..Default::default()
        })
        .await
        .map_err(|e| NatsError::new(format!("create backup stream {name}"), e))?;
    }
    Ok(())
}

/// The function registry bucket.
pub async fn functions_bucket(js: &jetstream::Context) -> Result<kv::Store, NatsError> {
    kv_bucket(
        js,
        names::FUNCTIONS_BUCKET,
        "comfaas deployed functions, one manifest per name",
        FUNCTION_HISTORY,
    )
    .await
}

/// The secrets bucket, created when missing: what `comfaas secret set`
/// writes. Only the latest value of a secret is kept. Executors only open
/// it (`secrets::fetch`), never create it.
pub async fn secrets_bucket(js: &jetstream::Context) -> Result<kv::Store, NatsError> {
    kv_bucket(
        js,
        names::SECRETS_BUCKET,
        "comfaas secrets, one value per name; operators write, executors read",
        1,
    )
    .await
}

/// Opens the KV bucket `bucket`, creating it when missing with `history`
/// revisions per key.
///
/// Created as its backing stream (what `create_key_value` would make):
/// async-nats's `create_key_value` first reads account info in a shape that
/// nats-server 2.9 (Debian 12's) does not send, while the bucket itself
/// works on 2.9 unchanged.
async fn kv_bucket(
    js: &jetstream::Context,
    bucket: &str,
    description: &str,
    history: i64,
) -> Result<kv::Store, NatsError> {
    if let Ok(store) = js.get_key_value(bucket).await {
        return Ok(store);
    }
    let made = js
        .get_or_create_stream(stream::Config {
            name: names::kv_stream(bucket),
            description: Some(description.to_owned()),
            subjects: vec![format!("$KV.{bucket}.>")],
            max_messages_per_subject: history,
            storage: stream::StorageType::File,
            allow_rollup: true,
            deny_delete: true,
            deny_purge: false,
            allow_direct: true,
            discard: stream::DiscardPolicy::New,
            num_replicas: replicas(),
            ..Default::default()
        })
        .await
        .map_err(|e| NatsError::new(format!("create bucket {bucket}"), e));
    // Another service may have made it meanwhile (nats-server 2.9 refuses
    // the second of two creates racing as overlapping).
    if let Err(e) = made {
        if let Ok(store) = js.get_key_value(bucket).await {
            return Ok(store);
        }
        return Err(e);
    }
    js.get_key_value(bucket)
        .await
        .map_err(|e| NatsError::new(format!("open bucket {bucket}"), e))
}

/// The package store of function bundles.
pub async fn packages_store(
    js: &jetstream::Context,
) -> Result<object_store::ObjectStore, NatsError> {
    object_store(
        js,
        names::PACKAGES_BUCKET,
        "comfaas function bundles, named by digest",
        Duration::ZERO,
        STREAM_MAX_BYTES,
    )
    .await
}

/// How long large inputs and outputs are kept.
pub const OBJECT_TTL: Duration = Duration::from_secs(24 * 3600);
/// Disk a bucket of large inputs or outputs may use.
pub const DATA_MAX_BYTES: i64 = 16 << 30;

/// Large inputs (`Comfaas-Input-Object`), kept for [`OBJECT_TTL`].
pub async fn inputs_store(js: &jetstream::Context) -> Result<object_store::ObjectStore, NatsError> {
    object_store(
        js,
        names::INPUTS_BUCKET,
        "comfaas large inputs",
        OBJECT_TTL,
        DATA_MAX_BYTES,
    )
    .await
}

/// Large outputs (`Comfaas-Output-Object`), kept for [`OBJECT_TTL`].
pub async fn outputs_store(
    js: &jetstream::Context,
) -> Result<object_store::ObjectStore, NatsError> {
    object_store(
        js,
        names::OUTPUTS_BUCKET,
        "comfaas large outputs",
        OBJECT_TTL,
        DATA_MAX_BYTES,
    )
    .await
}

/// Smallest size a stream or store is shrunk to while the server has room
/// for twice that (with less, it gets half the room left).
pub const MIN_OBJECT_STORE_BYTES: i64 = 64 << 20;

/// Opens the object store `bucket`, creating it when missing with at most
/// `max_bytes`. JetStream reserves a store's full size against the disk it
/// may use (by default a share of the free space). When the server could
/// not reserve four times `max_bytes`, the store gets a quarter of the room
/// left (leaving room for the other stores), with a warning (see
/// [`made_in_room`]).
async fn object_store(
    js: &jetstream::Context,
    bucket: &str,
    description: &str,
    max_age: Duration,
    max_bytes: i64,
) -> Result<object_store::ObjectStore, NatsError> {
    made_in_room(
        js,
        &format!("object store {bucket}"),
        max_bytes,
        |size| {
            js.create_object_store(object_store::Config {
                bucket: bucket.to_owned(),
                description: Some(description.to_owned()),
                max_age,
                max_bytes: size,
                storage: stream::StorageType::File,
                num_replicas: replicas(),
                ..Default::default()
            })
        },
        || async { js.get_object_store(bucket).await.ok() },
    )
    .await
}

/// Times a probe waits for another service's probe to go (each at most
/// 240 ms) before it counts as refused.
const PROBE_WAITS: u32 = 40;
/// The least room a probe looks for: below it the server has none.
const PROBE_FLOOR_BYTES: i64 = 1 << 20;
/// Steps of bisection after halving found the room within a factor of two:
/// within an eighth of it.
const PROBE_BISECTIONS: u32 = 3;

/// About the largest size, at most `ceiling`, that the server can reserve
/// for a stream now (within an eighth below it), found with a throw-away
/// probe stream: halving from `ceiling`, then bisecting. 0 when not even
/// [`PROBE_FLOOR_BYTES`] fits; an error when the probe fails for another
/// reason than room (not allowed to make streams, say).
async fn reservable_bytes(js: &jetstream::Context, ceiling: i64) -> Result<i64, CreateStreamError> {
    let mut size = ceiling;
    let mut refused = None;
    loop {
        if size < PROBE_FLOOR_BYTES {
            return Ok(0);
        }
        if reservable(js, size).await? {
            break;
        }
        refused = Some(size);
        size /= 2;
    }
    // `size` fits and `refused`, twice as much, did not.
    let Some(mut above) = refused else {
        return Ok(size);
    };
    for _ in 0..PROBE_BISECTIONS {
        let middle = size + (above - size) / 2;
        if reservable(js, middle).await? {
            size = middle;
        } else {
            above = middle;
        }
    }
    Ok(size)
}

/// Whether the server can reserve `size` bytes for a stream now: a probe
/// stream of that size made and deleted at once. An error when the probe
/// fails for another reason than room or another service's probe.
async fn reservable(js: &jetstream::Context, size: i64) -> Result<bool, CreateStreamError> {
    // One fixed name, so that a permission can name it (see `auth`).
    let name = names::STORAGE_PROBE_STREAM.to_owned();
    let mut busy = 0;
    let mut asked_again = false;
    loop {
        let probe = js
            .create_stream(stream::Config {
                name: name.clone(),
                subjects: vec![format!("_comfaas.probe.{name}")],
                max_bytes: size,
                storage: stream::StorageType::File,
                num_replicas: replicas(),
                ..Default::default()
            })
            .await;
        match probe {
            Ok(_) => {
                // Another service that made the same probe may have
                // deleted it already.
                let _ = js.delete_stream(&name).await;
                return Ok(true);
            }
            Err(e) => {
                // Another service's probe has the name, or holds room (the
                // server weighs the room before the name), or is being made
                // (10049): it goes in a moment.
                let busy_now = racing(&e)
                    || jetstream_code(&e) == Some(jetstream::ErrorCode::STREAM_CREATE)
                    || (no_room(&e) && js.get_stream(&name).await.is_ok());
                match (busy_now, no_room(&e)) {
                    // Not a matter of room (not allowed to make streams, say).
                    (false, false) => return Err(e),
                    // A refusal for room with no probe left may have met one
                    // that went meanwhile: asked again at once, it is the room's.
                    (false, true) if !asked_again => asked_again = true,
                    (false, true) => return Ok(false),
                    // Services starting together probe a few times each, so
                    // this waits longer than a create's tries (a wait given
                    // up counts as no room, and shrinks the store for nothing).
                    (true, _) if busy == PROBE_WAITS => return Ok(false),
                    (true, _) => {
                        busy += 1;
                        pause(busy.min(MAKE_TRIES / 2)).await;
                    }
                }
            }
        }
    }
}

/// Whether `error` is JetStream refusing to create a stream because
/// another service is creating one of that name at the same time: its name
/// taken with another configuration (code 10058), or, on nats-server 2.9,
/// its subjects taken by the same stream (code 10065).
fn racing(error: &(dyn std::error::Error + 'static)) -> bool {
    matches!(
        jetstream_code(error),
        Some(
            jetstream::ErrorCode::STREAM_NAME_EXIST | jetstream::ErrorCode::STREAM_SUBJECT_OVERLAP
        )
    )
}

/// Whether `error`, or what caused it, is JetStream refusing a stream for
/// want of disk, found by type: error code 10047 ("insufficient storage
/// resources available") from a single server, and on a cluster of
/// nats-server 2.9 code 10005 ("no suitable peers for placement,
/// insufficient storage"), which also means too few servers for the
/// replicas: then no size fits and the last try reports it.
fn no_room(error: &(dyn std::error::Error + 'static)) -> bool {
    matches!(
        jetstream_code(error),
        Some(
            jetstream::ErrorCode::STORAGE_RESOURCES_EXCEEDED
                | jetstream::ErrorCode::CLUSTER_NO_PEERS
        )
    )
}

/// The JetStream error code behind `error`, found by type: walking its
/// causes to the first error of getting or creating a stream.
pub fn jetstream_code(error: &(dyn std::error::Error + 'static)) -> Option<jetstream::ErrorCode> {
    use async_nats::jetstream::context::{
        CreateStreamError, CreateStreamErrorKind, GetStreamError, GetStreamErrorKind,
    };
    let mut cause = Some(error);
    while let Some(e) = cause {
        if let Some(kind) = e.downcast_ref::<CreateStreamError>().map(|e| e.kind()) {
            return match kind {
                CreateStreamErrorKind::JetStream(js) => Some(js.error_code()),
                _ => None,
            };
        }
        if let Some(kind) = e.downcast_ref::<GetStreamError>().map(|e| e.kind()) {
            return match kind {
                GetStreamErrorKind::JetStream(js) => Some(js.error_code()),
                _ => None,
            };
        }
        cause = e.source();
    }
    None
}
