//! The comfaas dispatcher: the entry point of every invocation.
//!
//! It takes requests on `<prefix>.invoke.>` (queue group shared by all
//! dispatchers) and events from the JetStream stream `COMFAAS_EVENTS`
//! (durable consumer shared by all dispatchers), places each on a live node
//! through [`comfaas_placement::choose`], and sends it as an `Invocation` on
//! the node's work subject. The node answers the requester directly and
//! publishes the result; the dispatcher answers (and publishes) only what no
//! node ran: its own errors, refusals it could not place elsewhere, events.
//!
//! Architecture invariant: the dispatcher never runs functions and never
//! reads their input or output; it moves bytes and headers.

mod config;
mod events;
mod nodes;
mod place;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use anyhow::Context as _;
use comfaas_platform::registry::{Registry, RegistryChange};
use comfaas_schemas::{
    decode, encode, now_unix_ms, Deployment, DispatchMetrics, ErrorCode, ErrorCount, NodeLoad,
    PlacementRecord, SCHEMA_VERSION,
};
use futures::StreamExt;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use config::{DispatchConfig, DispatchFlags};
use nodes::NodeTable;

/// Placement decisions kept for the metrics report.
const RECENT_DECISIONS: usize = 32;

/// A configured dispatcher, ready to [`run`](Dispatcher::run).
pub struct Dispatcher {
    shared: Arc<Shared>,
}

/// State shared by the dispatcher's tasks.
struct Shared {
    config: DispatchConfig,
    client: async_nats::Client,
    subjects: comfaas_schemas::names::Subjects,
    registry: Registry,
    inputs: async_nats::jetstream::object_store::ObjectStore,
    nodes: Mutex<NodeTable>,
    functions: Mutex<HashMap<String, Arc<Deployment>>>,
    stats: Mutex<Stats>,
    permits: Arc<Semaphore>,
    started: Instant,
}

#[derive(Default)]
struct Stats {
    received: u64,
    succeeded: u64,
    failed: u64,
    in_flight: u32,
    errors: BTreeMap<u16, u64>,
    recent: VecDeque<PlacementRecord>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Plain data behind the lock: a panicked holder leaves nothing half-done
    // that matters more than staying up.
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl Dispatcher {
    /// Connects to NATS and opens the registry and streams.
    pub async fn connect(config: DispatchConfig) -> anyhow::Result<Self> {
        let config = config.validate()?;
        let client = config
            .nats
            .connect(&format!("comfaas-dispatch {}", config.id))
            .await?;
        let js = config.nats.jetstream(client.clone());
        let registry = Registry::open(&js).await?;
        let subjects = config.nats.subjects();
        comfaas_platform::resources::results_stream(&js, &subjects).await?;
        let inputs = comfaas_platform::resources::inputs_store(&js).await?;
        Ok(Self {
            shared: Arc::new(Shared {
                nodes: Mutex::new(NodeTable::new(config.dead_after_heartbeats)),
                permits: Arc::new(Semaphore::new(config.max_concurrent)),
                config,
                client,
                subjects,
                registry,
                inputs,
                functions: Mutex::default(),
                stats: Mutex::default(),
                started: Instant::now(),
            }),
        })
    }

    /// This dispatcher's id.
    pub fn id(&self) -> &str {
        &self.shared.config.id
    }

    /// Serves until `shutdown` is cancelled, then finishes what it took.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let shared = self.shared;
        let client = shared.client.clone();
        let loads = client
            .subscribe(shared.subjects.node_load_all())
            .await
            .context("subscribe to node loads")?;
        let invokes = client
            .queue_subscribe(
                shared.subjects.invoke_all(),
                comfaas_schemas::names::DISPATCH_QUEUE_GROUP.to_owned(),
            )
            .await
            .context("subscribe to invocations")?;
        let changes = shared.registry.watch_forever();
        let js = shared.config.nats.jetstream(client.clone());
        let events = events::consumer(&js, &shared).await?;
        tracing::info!(id = %shared.config.id, "dispatcher serving {}", shared.subjects.invoke_all());

        let mut tasks = JoinSet::new();
        tasks.spawn(track_nodes(shared.clone(), loads, shutdown.clone()));
        tasks.spawn(track_functions(shared.clone(), changes, shutdown.clone()));
        tasks.spawn(publish_metrics(shared.clone(), shutdown.clone()));
        tasks.spawn(ping_nodes(shared.clone(), shutdown.clone()));
        tasks.spawn(events::serve(shared.clone(), events, shutdown.clone()));
        serve_invokes(shared.clone(), invokes, shutdown.clone()).await;
        while let Some(result) = tasks.join_next().await {
            if let Err(e) = result {
                tracing::warn!("dispatcher task ended abnormally: {e}");
            }
        }
        Ok(())
    }
}

async fn serve_invokes(
    shared: Arc<Shared>,
    mut invokes: async_nats::Subscriber,
    shutdown: CancellationToken,
) {
    let mut running = JoinSet::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(_) = running.join_next(), if !running.is_empty() => {}
            message = invokes.next() => {
                let Some(message) = message else { break };
                // At capacity: wait for a permit, but not past shutdown.
                let permit = tokio::select! {
                    _ = shutdown.cancelled() => break,
                    permit = shared.permits.clone().acquire_owned() => match permit {
                        Ok(permit) => permit,
                        Err(_) => break,
                    },
                };
                let shared = shared.clone();
                running.spawn(async move {
                    let reply_to = message.reply.as_deref();
                    let answer = place::execute(&shared, &message.subject, message.headers.as_ref(), message.payload.clone(), reply_to).await;
                    if let (Some(reply_to), false) = (&message.reply, answer.delivered) {
                        if let Err(e) = shared.client
                            .publish_with_headers(reply_to.clone(), answer.headers.clone(), answer.body.clone())
                            .await
                        {
                            tracing::warn!("cannot reply: {e}");
                        }
                    }
                    place::publish_result(&shared, &answer).await;
                    drop(permit);
                });
            }
        }
    }
    let _ = invokes.unsubscribe().await;
    while running.join_next().await.is_some() {}
}

/// How often each live node's round trip is measured.
const PING_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Measures the round trip to every live node with a ping (an empty request
/// the executor answers at once): continuous, cheap, and independent of
/// whether the node was chosen lately.
async fn ping_nodes(shared: Arc<Shared>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(PING_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let nodes = lock(&shared.nodes).live_nodes(Instant::now());
        let pings = nodes.into_iter().map(|node| {
            let shared = shared.clone();
            async move {
                let started = Instant::now();
                let request = async_nats::Request::new().timeout(Some(PING_INTERVAL));
                match shared
                    .client
                    .send_request(shared.subjects.node_ping(&node), request)
                    .await
                {
                    Ok(_) => {
                        lock(&shared.nodes).pinged(&node, started.elapsed().as_secs_f64() * 1000.0)
                    }
                    Err(e) => tracing::debug!(node, "ping failed: {e}"),
                }
            }
        });
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = futures::future::join_all(pings) => {}
        }
    }
}

async fn track_nodes(
    shared: Arc<Shared>,
    mut loads: async_nats::Subscriber,
    shutdown: CancellationToken,
) {
    loop {
        let message = tokio::select! {
            _ = shutdown.cancelled() => return,
            message = loads.next() => message,
        };
        let Some(message) = message else { return };
        match decode::<NodeLoad>(&message.payload) {
            // A node speaks only for itself: the id must match the subject.
            Ok(load)
                if shared.subjects.node_of_load(&message.subject) == Some(load.node.as_str()) =>
            {
                lock(&shared.nodes).heard(load, Instant::now())
            }
            Ok(load) => tracing::warn!(subject = %message.subject, node = %load.node,
                "ignoring a node load whose node id does not match its subject"),
            Err(e) => tracing::warn!(subject = %message.subject, "ignoring invalid node load: {e}"),
        }
    }
}

async fn track_functions(
    shared: Arc<Shared>,
    mut changes: futures::stream::BoxStream<
        'static,
        Result<RegistryChange, comfaas_platform::registry::RegistryError>,
    >,
    shutdown: CancellationToken,
) {
    loop {
        let change = tokio::select! {
            _ = shutdown.cancelled() => return,
            change = changes.next() => change,
        };
        match change {
            // watch_forever does not end; if it ever did, reads go on demand.
            None => return,
            Some(Err(e)) => tracing::warn!("registry: {e}"),
            Some(Ok(RegistryChange::Deployed(d))) => {
                lock(&shared.functions).insert(d.manifest.name.clone(), Arc::new(*d));
            }
            Some(Ok(RegistryChange::Removed(name))) => {
                lock(&shared.functions).remove(&name);
            }
        }
    }
}

async fn publish_metrics(shared: Arc<Shared>, shutdown: CancellationToken) {
    let subject = shared.subjects.dispatch_metrics(&shared.config.id);
    let mut ticker = tokio::time::interval(shared.config.metrics_period());
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let now = Instant::now();
        let nodes = {
            let mut table = lock(&shared.nodes);
            table.prune(now);
            table.metrics(now)
        };
        let metrics = {
            let stats = lock(&shared.stats);
            DispatchMetrics {
                schema: SCHEMA_VERSION,
                dispatcher: shared.config.id.clone(),
                uptime_s: shared.started.elapsed().as_secs(),
                received: stats.received,
                succeeded: stats.succeeded,
                failed: stats.failed,
                in_flight: stats.in_flight,
                errors: stats
                    .errors
                    .iter()
                    .filter_map(|(code, count)| {
                        ErrorCode::from_u16(*code).map(|code| ErrorCount {
                            code,
                            count: *count,
                        })
                    })
                    .collect(),
                nodes,
                recent: stats.recent.iter().cloned().collect(),
                sent_unix_ms: now_unix_ms(),
            }
        };
        match encode(&metrics) {
            Ok(bytes) => {
                if let Err(e) = shared.client.publish(subject.clone(), bytes.into()).await {
                    tracing::warn!("cannot publish metrics: {e}");
                }
            }
            Err(e) => tracing::error!("cannot encode metrics: {e}"),
        }
    }
}
