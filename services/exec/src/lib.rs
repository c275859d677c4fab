//! The comfaas executor: one per edge or cloud host.
//!
//! It watches the function registry and installs every deployed function
//! into an environment of its own (`install`) kept in the table of served
//! versions (`functions`), takes invocations from `<prefix>.work.<node>`
//! (`work`) with at most `slots` runs at once and a bounded queue beyond
//! (`admission`), runs each as a bounded child process or on a warm worker
//! (`run`) with large inputs from a local cache (`inputs`), and publishes
//! its [`comfaas_schemas::NodeLoad`] every heartbeat (`load`).
//!
//! Dependencies between the modules go one way: `work` uses `admission`,
//! `functions` and `run`; `run` uses `functions` and `inputs`; `install`
//! uses `functions`; `load` reads `admission`, `functions` and `inputs`.
//!
//! Architecture invariant: the executor never chooses where work runs and
//! never talks to devices; it answers whoever sent the invocation.

mod admission;
mod config;
mod functions;
mod inputs;
mod install;
mod load;
mod logs;
mod observe;
mod recent;
mod run;
mod work;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use comfaas_platform::signals::Tasks;
use comfaas_runtime::{Sandboxes, Toolchain};
use tokio_util::sync::CancellationToken;

use admission::Admission;
pub use config::{cores, default_limits, ExecConfig, ExecFlags, LogsConfig};
use functions::FunctionTable;
use install::Installer;
use load::Heartbeat;
use observe::Observe;
use recent::RecentRuns;
use run::{Outputs, Runner};
use work::Worker;

/// A configured executor, ready to [`run`](Executor::run).
pub struct Executor {
    config: Arc<ExecConfig>,
    trust: comfaas_platform::signing::TrustedOperators,
    client: async_nats::Client,
    toolchain: Toolchain,
    sandboxes: Sandboxes,
}

impl Executor {
    /// Connects to NATS and prepares the data directory.
    pub async fn connect(config: ExecConfig) -> anyhow::Result<Self> {
        // A trusted key that does not parse fails here, not at every deploy.
        let trust = config.trusted()?;
        if trust.policy() == comfaas_schemas::SignaturePolicy::Off {
            tracing::warn!(
                "no trusted operator keys: deployments are installed unsigned (open mode)"
            );
        }
        let data_dir = config.data_dir();
        // Nothing is served yet: what a previous run of this node left
        // (installs, run directories after a crash) is stale.
        for stale in ["runs", "functions"] {
            let dir = data_dir.join(stale);
            if dir.exists() {
                tokio::fs::remove_dir_all(&dir)
                    .await
                    .with_context(|| format!("clean {}", dir.display()))?;
            }
        }
        // Inputs a previous run of this node was fetching when it died.
        let partial = inputs::remove_partial_files(&data_dir.join("inputs")).await;
        if partial > 0 {
            tracing::info!("removed {partial} partial input file(s) a previous run left");
        }
        // Runs as functions' users pass through these folders, never list them.
        for dir in [
            data_dir.clone(),
            data_dir.join("runs"),
            data_dir.join("inputs"),
        ] {
            use std::os::unix::fs::PermissionsExt;
            tokio::fs::create_dir_all(&dir)
                .await
                .with_context(|| format!("create data directory {}", dir.display()))?;
            tokio::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o711))
                .await
                .with_context(|| format!("chmod {}", dir.display()))?;
        }
        // Refuses to start when runs cannot be confined as configured.
        let sandboxes = {
            let (sandbox, limits) = (config.sandbox.clone(), config.limits);
            let (dir, node) = (data_dir.clone(), config.node.clone());
            tokio::task::spawn_blocking(move || Sandboxes::open(&sandbox, limits, &dir, &node))
                .await
                .context("set up the sandbox")??
        };
        let report = sandboxes.report();
        tracing::info!(isolation = %report.isolation, cgroups = %report.cgroups,
            function_users = report.function_users, "runs are sandboxed");
        // Probing tools runs `mpirun --version` and friends: not on a worker thread.
        let probe_dir = data_dir.clone();
        let mut toolchain = tokio::task::spawn_blocking(move || Toolchain::detect(&probe_dir))
            .await
            .context("probe the toolchain")?;
        if !config.use_uv {
            toolchain = toolchain.without_uv();
        }
        toolchain.find_links = config.find_links.clone();
        toolchain.no_index = config.no_index;
        toolchain.cargo_offline = config.cargo_offline;
        if !config.cargo_target_dir.as_os_str().is_empty() {
            toolchain.cargo_target = Some(config.cargo_target_dir.clone());
        }
        for runtime in comfaas_schemas::Runtime::ALL {
            if let Some(missing) = toolchain.missing(runtime) {
                tracing::warn!("runtime {runtime} unavailable on this node: {missing} is missing");
            }
        }
        let client = config
            .nats
            .connect(&format!("comfaas-exec {}", config.node))
            .await?;
        Ok(Self {
            config: Arc::new(config),
            trust,
            client,
            toolchain,
            sandboxes,
        })
    }

    /// Serves until `shutdown` is cancelled, then stops taking work, lets
    /// runs under way finish (up to their timeout) and says it is leaving.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let config = self.config;
        let subjects = config.nats.subjects();
        let js = config.nats.jetstream(self.client.clone());
        // What the node uses but may not create (on a secure site only
        // operators and dispatchers create streams): waited for, so nodes
        // may start first.
        let Some(registry) = when_ready("the registry", &shutdown, || {
            comfaas_platform::registry::Registry::open(&js)
        })
        .await
        else {
            return Ok(());
        };
        let Some(outputs_store) = when_ready("the outputs store", &shutdown, || {
            comfaas_platform::resources::outputs_store(&js)
        })
        .await
        else {
            return Ok(());
        };
        // Inputs come over a connection of their own, so that a large
        // fetch never queues ahead of work and heartbeats; its pulls never
        // ask for more messages than its subscriptions hold.
        let bulk = config
            .nats
            .connect_with(
                &format!("comfaas-exec {} inputs", config.node),
                Some(inputs::SUBSCRIPTION_CAPACITY),
            )
            .await?;
        let bulk_js = config.nats.jetstream(bulk);
        let Some(inputs_store) = when_ready("the inputs store", &shutdown, || {
            comfaas_platform::resources::inputs_store(&bulk_js)
        })
        .await
        else {
            return Ok(());
        };
        let inputs = Arc::new(inputs::InputCache::new(
            config.data_dir().join("inputs"),
            inputs::InputSource {
                js: bulk_js,
                store: inputs_store,
                bucket: comfaas_schemas::names::INPUTS_BUCKET.to_owned(),
            },
            config.input_cache_bytes,
            config.input_stall(),
            // Fetches stop at once at shutdown; runs under way finish.
            shutdown.child_token(),
        ));
        let table = FunctionTable::new();
        let admission = Admission::new(config.slots(), config.queue);
        let max_output = config.max_output(self.client.max_payload());

        // Subscribe before the first heartbeat, so no dispatcher sees this
        // node alive before it can take work.
        let work_subject = subjects.work(&config.node);
        let work_sub = self
            .client
            .subscribe(work_subject.clone())
            .await
            .with_context(|| format!("subscribe to {work_subject}"))?;
        let ping_subject = subjects.node_ping(&config.node);
        let pings = self
            .client
            .subscribe(ping_subject.clone())
            .await
            .with_context(|| format!("subscribe to {ping_subject}"))?;
        let held_subject = subjects.event_held_all();
        let held = self
            .client
            .subscribe(held_subject.clone())
            .await
            .with_context(|| format!("subscribe to {held_subject}"))?;
        // Listed by `$SRV` discovery from here on, like the work subject.
        let observe = Observe::new(&config);
        observe
            .service(&config)
            .start(self.client.clone(), shutdown.clone())
            .await
            .context("register the comfaas-exec micro service")?;
        if !config.metrics_addr.is_empty() {
            let render = {
                let (observe, admission, inputs) =
                    (observe.clone(), admission.clone(), inputs.clone());
                Arc::new(move || observe.render(&admission, &inputs))
            };
            comfaas_platform::metrics::serve_unless_taken(
                &format!("node {}", config.node),
                &config.metrics_addr,
                render,
                shutdown.clone(),
            )
            .await?;
        }
        let recent = RecentRuns::new(
            Duration::from_secs(config.remember_events_s),
            REMEMBERED_EVENTS,
            REMEMBERED_EVENT_BYTES,
        );
        let changes = registry.watch_forever();
        tracing::info!(node = %config.node, tier = %config.tier, site = %config.site,
            slots = config.slots(), queue = config.queue, "executor serving {work_subject}");

        let mut tasks = Tasks::new("executor");
        let stop_heartbeat = CancellationToken::new();
        // On shutdown, first tell dispatchers this node is leaving, so they
        // stop sending work while runs under way finish.
        let leaving = {
            let (client, config, stop) =
                (self.client.clone(), config.clone(), stop_heartbeat.clone());
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                shutdown.cancelled().await;
                stop.cancel();
                load::say_leaving(&client, &config).await;
            })
        };
        let heartbeat = Heartbeat {
            client: self.client.clone(),
            config: config.clone(),
            table: table.clone(),
            admission: admission.clone(),
            inputs: inputs.clone(),
            runtimes: available(&self.toolchain),
            sandbox: self.sandboxes.report(),
            instance: uuid::Uuid::new_v4().simple().to_string(),
        };
        tasks.spawn(heartbeat.run(stop_heartbeat.clone()));
        tasks.spawn(answer_pings(
            self.client.clone(),
            pings,
            observe.clone(),
            stop_heartbeat.clone(),
        ));
        tasks.spawn(answer_held(
            self.client.clone(),
            held,
            recent.clone(),
            config.node.clone(),
            stop_heartbeat.clone(),
            config.nats.subjects(),
        ));
        let installer = Installer {
            registry,
            table: table.clone(),
            toolchain: self.toolchain.clone(),
            sandboxes: self.sandboxes.clone(),
            node: config.node.clone(),
            root: config.data_dir().join("functions"),
            trust: self.trust,
            secrets: js.clone(),
        };
        tasks.spawn(installer.run(changes, shutdown.child_token()));
        // Logs are published until the runs are done, then what is queued.
        let stop_logs = CancellationToken::new();
        let logs = config.logs.enabled.then(|| {
            let (queue, publish) = logs::LogQueue::start(
                self.client.clone(),
                subjects.clone(),
                config.node.clone(),
                config.logs.queue,
                stop_logs.clone(),
            );
            tasks.spawn(publish);
            queue
        });
        let worker = Worker {
            notices: comfaas_platform::notices::Notices::start(self.client.clone()),
            client: self.client.clone(),
            config: config.clone(),
            table,
            admission,
            limits: config.run_limits(),
            runner: Runner {
                node: config.node.clone(),
                runs_dir: config.data_dir().join("runs"),
                max_output,
                max_output_object_bytes: config.max_output_object_bytes,
                mpi: self.toolchain.mpi.clone(),
                inputs,
                outputs: Outputs {
                    store: outputs_store,
                    js,
                },
                log_bytes: if config.logs.enabled {
                    config.logs.max_bytes_per_run
                } else {
                    0
                },
            },
            recent,
            observe,
            logs,
        };
        worker.serve(work_sub, shutdown.clone()).await;
        stop_logs.cancel();

        stop_heartbeat.cancel();
        tasks.wait().await;
        if leaving.await.is_err() {
            load::say_leaving(&self.client, &config).await;
        }
        // What runs answered since (refusals of work cut short by the
        // shutdown too) leaves before the connection closes: else their
        // dispatchers wait for them to their deadline.
        let flushed = tokio::time::timeout(FINAL_FLUSH, self.client.flush()).await;
        if !matches!(flushed, Ok(Ok(()))) {
            tracing::warn!("last answers may not have reached NATS before exit");
        }
        Ok(())
    }
}

/// Answers dispatchers' pings at once, so they measure the round trip.
async fn answer_pings(
    client: async_nats::Client,
    mut pings: async_nats::Subscriber,
    observe: Arc<Observe>,
    stop: CancellationToken,
) {
    use futures::StreamExt;
    while let Some(Some(ping)) = stop.run_until_cancelled(pings.next()).await {
        observe.ping.ok(Duration::ZERO);
        if let Some(reply) = ping.reply {
            // Only an inbox: a ping "answered" on `$JS.API.…` would be a
            // request made with this node's identity.
            if !comfaas_platform::request::is_reply_subject(&reply) {
                tracing::warn!(reply = %reply, "ping with a reply subject that is not an inbox dropped");
                continue;
            }
            if let Err(e) = client.publish(reply, bytes::Bytes::new()).await {
                tracing::debug!("cannot answer a ping: {e}");
            }
        }
    }
}

/// Answers a dispatcher asking whether this node runs or ran an event
/// (before it places a redelivery): the node's id when it does, nothing
/// otherwise.
async fn answer_held(
    client: async_nats::Client,
    mut asks: async_nats::Subscriber,
    recent: RecentRuns,
    node: String,
    stop: CancellationToken,
    subjects: comfaas_schemas::names::Subjects,
) {
    use futures::StreamExt;
    let answer = bytes::Bytes::from(node);
    while let Some(Some(ask)) = stop.run_until_cancelled(asks.next()).await {
        let Some(reply) = ask
            .reply
            .filter(|r| comfaas_platform::request::is_reply_subject(r))
        else {
            continue;
        };
        let Some(id) = subjects.event_of_held(&ask.subject) else {
            continue;
        };
        if recent.holds(id) {
            if let Err(e) = client.publish(reply, answer.clone()).await {
                tracing::debug!("cannot answer a held-event ask: {e}");
            }
        }
    }
}

/// The runtimes this node can install, by name, for the heartbeat.
fn available(toolchain: &Toolchain) -> Vec<String> {
    comfaas_runtime::available_runtimes(toolchain)
        .into_iter()
        .map(|r| r.as_str().to_owned())
        .collect()
}

/// Most finished event runs remembered for redeliveries.
const REMEMBERED_EVENTS: usize = 100_000;
/// Most bytes of their outputs and headers remembered.
const REMEMBERED_EVENT_BYTES: usize = 64 << 20;
/// How long the last answers may take to leave at shutdown.
const FINAL_FLUSH: std::time::Duration = std::time::Duration::from_secs(5);

/// How long to wait between tries to open what the node may not create.
const NOT_READY_RETRY: std::time::Duration = std::time::Duration::from_secs(2);

/// Opens `what` with `open`, trying again every [`NOT_READY_RETRY`] (with a
/// warning naming why) until it works, or `None` once `shutdown` is
/// cancelled.
async fn when_ready<T, E, F, Fut>(what: &str, shutdown: &CancellationToken, open: F) -> Option<T>
where
    E: std::fmt::Display,
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    loop {
        match shutdown.run_until_cancelled(open()).await? {
            Ok(value) => return Some(value),
            Err(e) => tracing::warn!(
                "cannot open {what} yet ({e}); an operator or a dispatcher creates it; \
                 trying again in {}s",
                NOT_READY_RETRY.as_secs()
            ),
        }
        shutdown
            .run_until_cancelled(tokio::time::sleep(NOT_READY_RETRY))
            .await?;
    }
}
