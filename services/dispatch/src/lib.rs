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
mod observe;
mod place;
mod replies;
mod shared;
mod state;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use comfaas_platform::registry::{Registry, RegistryChange, RegistryError};
use comfaas_platform::signals::Tasks;
use comfaas_schemas::{decode, encode, NodeLoad};
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

pub use config::{DispatchConfig, DispatchFlags};
use shared::Shared;
use state::State;

/// How often each live node's round trip is measured.
const PING_INTERVAL: Duration = Duration::from_secs(1);
/// How often the node table looks for nodes that fell silent: a small part
/// of a heartbeat, so a death is heard about that much after its due time.
const DEATH_CHECK: Duration = Duration::from_millis(250);

/// A configured dispatcher, ready to [`run`](Dispatcher::run).
pub struct Dispatcher {
    shared: Arc<Shared>,
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
        comfaas_platform::resources::logs_stream(&js, &subjects, config.logs).await?;
        let inputs = comfaas_platform::resources::inputs_store(&js).await?;
        let replies = replies::Replies::new(client.new_inbox());
        Ok(Self {
            shared: Arc::new(Shared {
                state: State::new(config.dead_after_heartbeats),
                observe: observe::Observe::new(&config),
                permits: Arc::new(Semaphore::new(config.max_concurrent)),
                config,
                client,
                subjects,
                js,
                registry,
                inputs,
                replies,
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
        // Replies and notices for the work it sends: heard until every
        // invocation it took has ended (after `tasks` below).
        let mut replies = client
            .subscribe(shared.replies.subscription())
            .await
            .context("subscribe to the dispatcher's inbox")?;
        let router = {
            let shared = shared.clone();
            tokio::spawn(async move {
                while let Some(message) = replies.next().await {
                    shared.replies.deliver(message);
                }
            })
        };
        let invokes = client
            .queue_subscribe(
                shared.subjects.invoke_all(),
                comfaas_schemas::names::DISPATCH_QUEUE_GROUP.to_owned(),
            )
            .await
            .context("subscribe to invocations")?;
        let changes = shared.registry.watch_forever();
        let js = &shared.js;
        let events = events::consumer(js, &shared).await?;
        // Executors write large outputs but, on a secure site, may not
        // create the store: the dispatcher does (see platform::auth),
        // after the events stream, which must get its disk first.
        comfaas_platform::resources::outputs_store(js).await?;
        // Listed by `$SRV` discovery from here on.
        shared
            .observe
            .service(&shared.config)
            .start(client.clone(), shutdown.clone())
            .await
            .context("register the comfaas-dispatch micro service")?;
        if !shared.config.metrics_addr.is_empty() {
            let render = {
                let shared = shared.clone();
                Arc::new(move || shared.observe.render(&shared.state))
            };
            comfaas_platform::metrics::serve_unless_taken(
                "the dispatcher",
                &shared.config.metrics_addr,
                render,
                shutdown.clone(),
            )
            .await?;
        }
        tracing::info!(id = %shared.config.id, "dispatcher serving {}", shared.subjects.invoke_all());

        let mut tasks = Tasks::new("dispatcher");
        // The loops end at shutdown wherever they wait.
        for task in [
            track_nodes(shared.clone(), loads).boxed(),
            track_functions(shared.clone(), changes).boxed(),
            publish_metrics(shared.clone()).boxed(),
            ping_nodes(shared.clone()).boxed(),
            bury_dead_nodes(shared.clone()).boxed(),
        ] {
            tasks.spawn(shutdown.clone().run_until_cancelled_owned(task));
        }
        // Events stop on their own at shutdown, after the ones under way.
        tasks.spawn(events::serve(shared.clone(), events, shutdown.clone()));
        serve_invokes(shared.clone(), invokes, shutdown.clone()).await;
        tasks.wait().await;
        router.abort();
        Ok(())
    }
}

async fn serve_invokes(
    shared: Arc<Shared>,
    mut invokes: async_nats::Subscriber,
    shutdown: CancellationToken,
) {
    let mut running = Tasks::new("invocation");
    while let Some(Some(message)) = shutdown.run_until_cancelled(invokes.next()).await {
        // The requester chose the reply subject: one that is not an inbox
        // would make this dispatcher, or the node it places the call on,
        // publish there (purge a stream, write a bucket). No answer is
        // possible, so none is sent and the function does not run.
        if let Some(reply) = message.reply.as_deref() {
            if !comfaas_platform::request::is_reply_subject(reply) {
                tracing::warn!(subject = %message.subject, reply,
                    "request whose reply subject is not an inbox dropped");
                shared.state.bad_reply_subject();
                continue;
            }
        }
        // At capacity: wait for a permit, but not past shutdown.
        let permit = shared.permits.clone().acquire_owned();
        let Some(Ok(permit)) = shutdown.run_until_cancelled(permit).await else {
            break;
        };
        let shared = shared.clone();
        // Boxed: an invocation's future is a few kilobytes, which tokio
        // would otherwise copy at each step of spawning and finishing the
        // task (a tenth of the dispatcher's time went to those copies).
        running.spawn(Box::pin(async move {
            let reply_to = message.reply.as_deref();
            let answer = place::execute(
                &shared,
                &message.subject,
                message.headers.as_ref(),
                message.payload.clone(),
                reply_to,
                None,
            )
            .await;
            if let (Some(reply_to), false) = (&message.reply, answer.delivered) {
                if let Err(e) = shared
                    .client
                    .publish_with_headers(
                        reply_to.clone(),
                        answer.headers.clone(),
                        answer.body.clone(),
                    )
                    .await
                {
                    tracing::warn!("cannot reply: {e}");
                }
            }
            // Boxed: a JetStream publish is a large future, and most
            // answers were delivered by their node.
            if !answer.delivered {
                Box::pin(place::publish_result(&shared, &answer)).await;
            }
            drop(permit);
        }));
    }
    let _ = invokes.unsubscribe().await;
    running.wait().await;
}

/// Measures the round trip to every live node with a ping (an empty request
/// the executor answers at once): continuous, cheap, and independent of
/// whether the node was chosen lately.
async fn ping_nodes(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(PING_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let pings = shared.state.live_nodes().into_iter().map(|node| {
            let shared = shared.clone();
            async move {
                let started = Instant::now();
                let request = async_nats::Request::new().timeout(Some(PING_INTERVAL));
                match shared
                    .client
                    .send_request(shared.subjects.node_ping(&node), request)
                    .await
                {
                    Ok(_) => shared
                        .state
                        .pinged(&node, started.elapsed().as_secs_f64() * 1000.0),
                    Err(e) => tracing::debug!(node, "ping failed: {e}"),
                }
            }
        });
        futures::future::join_all(pings).await;
    }
}

/// Declares dead the nodes that missed their heartbeats, which ends the
/// invocations in flight there (503, see `place::send`).
async fn bury_dead_nodes(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(DEATH_CHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        for (node, in_flight) in shared.state.bury_dead() {
            tracing::warn!(node, in_flight, "node missed its heartbeats: declared dead");
        }
    }
}

async fn track_nodes(shared: Arc<Shared>, mut loads: async_nats::Subscriber) {
    while let Some(message) = loads.next().await {
        match decode::<NodeLoad>(&message.payload) {
            // A node speaks only for itself: the id must match the subject.
            Ok(load)
                if shared.subjects.node_of_load(&message.subject) == Some(load.node.as_str()) =>
            {
                shared.state.heard(load)
            }
            // Believing it would let anyone who can publish there steer
            // placement (a fake node with huge capacity) or take a real
            // node out (`leaving`).
            Ok(load) => {
                tracing::warn!(subject = %message.subject, node = %load.node, leaving = load.leaving,
                    "ignoring a node load whose node id does not match its subject");
                shared.state.forged_load();
            }
            Err(e) => tracing::warn!(subject = %message.subject, "ignoring invalid node load: {e}"),
        }
    }
}

async fn track_functions(
    shared: Arc<Shared>,
    mut changes: BoxStream<'static, Result<RegistryChange, RegistryError>>,
) {
    // watch_forever does not end; if it ever did, reads go on demand.
    while let Some(change) = changes.next().await {
        match change {
            Err(e) => tracing::warn!("registry: {e}"),
            Ok(RegistryChange::Deployed(d)) => shared.state.deployed(*d),
            Ok(RegistryChange::Removed(name)) => shared.state.removed(&name),
        }
    }
}

async fn publish_metrics(shared: Arc<Shared>) {
    let subject = shared.subjects.dispatch_metrics(&shared.config.id);
    let mut ticker = tokio::time::interval(shared.config.metrics_period());
    loop {
        ticker.tick().await;
        match encode(&shared.state.metrics(&shared.config.id)) {
            Ok(bytes) => {
                if let Err(e) = shared.client.publish(subject.clone(), bytes.into()).await {
                    tracing::warn!("cannot publish metrics: {e}");
                }
            }
            Err(e) => tracing::error!("cannot encode metrics: {e}"),
        }
    }
}
