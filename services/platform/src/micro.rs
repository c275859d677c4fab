//! NATS micro-service discovery: a dispatcher or executor answers
//! `$SRV.PING`, `$SRV.INFO` and `$SRV.STATS` (alone, with its service
//! name, and with name and id) in the `io.nats.micro.v1` format, so `nats
//! micro ls|info|stats` and any NATS client list it with its endpoints and
//! their counters.
//!
//! Why not async-nats's `service::Service`: its endpoints are its own
//! subscriptions and count only the requests answered through them. The
//! dispatcher's invocations arrive on a queue subscription it answers only
//! when no node did (the node answers the requester directly), so a
//! service endpoint there would either split deliveries with the existing
//! subscription or count nothing. Here the services keep their
//! subscriptions, describe them as endpoints, and count what really
//! happens on them ([`EndpointCounter`]), in the same JSON the NATS tools
//! read.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use comfaas_schemas::names::micro;
use futures::StreamExt;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

/// An error starting the discovery responder.
#[derive(Debug, thiserror::Error)]
pub enum MicroError {
    /// A discovery subject could not be subscribed to.
    #[error("cannot subscribe to {subject}: {source}")]
    Subscribe {
        /// The subject.
        subject: String,
        /// Why.
        source: async_nats::SubscribeError,
    },
}

/// What a service instance says about itself.
#[derive(Debug, Clone)]
pub struct MicroService {
    /// Service name (`comfaas-dispatch`, `comfaas-exec`).
    pub name: String,
    /// Instance id: the dispatcher or node id.
    pub id: String,
    /// Semantic version (the crate's).
    pub version: String,
    /// One line for humans.
    pub description: String,
    /// Free-form facts: node, tier, site.
    pub metadata: HashMap<String, String>,
    /// Its endpoints, each with the counter the service feeds.
    pub endpoints: Vec<MicroEndpoint>,
}

/// One endpoint: a subscription of the service and its counters.
#[derive(Debug, Clone)]
pub struct MicroEndpoint {
    /// Endpoint name.
    pub name: String,
    /// The subject (or wildcard) it takes requests on.
    pub subject: String,
    /// Its queue group; empty for a plain subscription.
    pub queue_group: String,
    /// Free-form facts about it.
    pub metadata: HashMap<String, String>,
    /// Counters the service updates as requests are handled.
    pub counter: Arc<EndpointCounter>,
}

/// Requests, errors and processing time of one endpoint. Lock-free on the
/// way through; only an error takes a lock (to keep its text).
#[derive(Debug, Default)]
pub struct EndpointCounter {
    requests: AtomicU64,
    errors: AtomicU64,
    processing_ns: AtomicU64,
    last_error: Mutex<String>,
}

impl EndpointCounter {
    /// A request handled in `took`, successfully.
    pub fn ok(&self, took: Duration) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.processing_ns
            .fetch_add(took.as_nanos() as u64, Ordering::Relaxed);
    }

    /// A request handled in `took` that ended in error `code` (`text` for humans).
    pub fn error(&self, took: Duration, code: u16, text: &str) {
        self.ok(took);
        self.errors.fetch_add(1, Ordering::Relaxed);
        let mut last = self.last_error.lock().unwrap_or_else(|e| e.into_inner());
        *last = format!("{code}:{text}");
    }

    /// Requests counted so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    fn stats(&self, endpoint: &MicroEndpoint) -> EndpointStats {
        let requests = self.requests();
        let processing_time = self.processing_ns.load(Ordering::Relaxed);
        EndpointStats {
            name: endpoint.name.clone(),
            subject: endpoint.subject.clone(),
            queue_group: endpoint.queue_group.clone(),
            num_requests: requests,
            num_errors: self.errors.load(Ordering::Relaxed),
            processing_time,
            average_processing_time: processing_time.checked_div(requests).unwrap_or(0),
            last_error: self
                .last_error
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        }
    }
}

#[derive(Serialize)]
struct Ping<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    name: &'a str,
    id: &'a str,
    version: &'a str,
    metadata: &'a HashMap<String, String>,
}

#[derive(Serialize)]
struct EndpointInfo<'a> {
    name: &'a str,
    subject: &'a str,
    queue_group: &'a str,
    metadata: &'a HashMap<String, String>,
}

#[derive(Serialize)]
struct Info<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    name: &'a str,
    id: &'a str,
    description: &'a str,
    version: &'a str,
    metadata: &'a HashMap<String, String>,
    endpoints: Vec<EndpointInfo<'a>>,
}

#[derive(Serialize)]
struct EndpointStats {
    name: String,
    subject: String,
    queue_group: String,
    num_requests: u64,
    num_errors: u64,
    /// Nanoseconds, as the micro format has them.
    processing_time: u64,
    average_processing_time: u64,
    last_error: String,
}

#[derive(Serialize)]
struct Stats<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    name: &'a str,
    id: &'a str,
    version: &'a str,
    metadata: &'a HashMap<String, String>,
    started: &'a str,
    endpoints: Vec<EndpointStats>,
}

impl MicroService {
    /// Subscribes to the discovery subjects of this instance, so it is
    /// listed from the moment this returns, and answers them on a task
    /// until `shutdown`.
    pub async fn start(
        self,
        client: async_nats::Client,
        shutdown: CancellationToken,
    ) -> Result<tokio::task::JoinHandle<()>, MicroError> {
        let mut subscriptions = Vec::new();
        for subject in micro::subjects(&self.name, &self.id) {
            let subscription = client
                .subscribe(subject.clone())
                .await
                .map_err(|source| MicroError::Subscribe { subject, source })?;
            subscriptions.push(subscription);
        }
        let requests = futures::stream::select_all(subscriptions);
        Ok(tokio::spawn(self.serve(client, requests, shutdown)))
    }

    async fn serve(
        self,
        client: async_nats::Client,
        mut requests: futures::stream::SelectAll<async_nats::Subscriber>,
        shutdown: CancellationToken,
    ) {
        let started = humantime::format_rfc3339_nanos(SystemTime::now()).to_string();
        while let Some(Some(request)) = shutdown.run_until_cancelled(requests.next()).await {
            // Only an inbox: anything else would publish with this
            // service's identity wherever the asker pointed.
            let Some(reply) = request
                .reply
                .filter(|r| crate::request::is_reply_subject(r))
            else {
                continue;
            };
            let verb = request
                .subject
                .strip_prefix(micro::API_PREFIX)
                .and_then(|rest| rest.strip_prefix('.'))
                .and_then(|rest| rest.split('.').next())
                .unwrap_or_default();
            let body = match verb {
                micro::PING => serde_json::to_vec(&self.ping()),
                micro::INFO => serde_json::to_vec(&self.info()),
                micro::STATS => serde_json::to_vec(&self.stats(&started)),
                _ => continue,
            };
            match body {
                Ok(body) => {
                    if let Err(e) = client.publish(reply, Bytes::from(body)).await {
                        tracing::debug!("cannot answer {}: {e}", request.subject);
                    }
                }
                Err(e) => tracing::warn!("cannot encode the answer to {}: {e}", request.subject),
            }
        }
    }

    fn ping(&self) -> Ping<'_> {
        Ping {
            kind: "io.nats.micro.v1.ping_response",
            name: &self.name,
            id: &self.id,
            version: &self.version,
            metadata: &self.metadata,
        }
    }

    fn info(&self) -> Info<'_> {
        Info {
            kind: "io.nats.micro.v1.info_response",
            name: &self.name,
            id: &self.id,
            description: &self.description,
            version: &self.version,
            metadata: &self.metadata,
            endpoints: self
                .endpoints
                .iter()
                .map(|e| EndpointInfo {
                    name: &e.name,
                    subject: &e.subject,
                    queue_group: &e.queue_group,
                    metadata: &e.metadata,
                })
                .collect(),
        }
    }

    fn stats<'a>(&'a self, started: &'a str) -> Stats<'a> {
        Stats {
            kind: "io.nats.micro.v1.stats_response",
            name: &self.name,
            id: &self.id,
            version: &self.version,
            metadata: &self.metadata,
            started,
            endpoints: self.endpoints.iter().map(|e| e.counter.stats(e)).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service() -> MicroService {
        MicroService {
            name: "comfaas-exec".into(),
            id: "edge-1".into(),
            version: "0.1.0".into(),
            description: "runs functions".into(),
            metadata: HashMap::from([("tier".to_owned(), "edge".to_owned())]),
            endpoints: vec![MicroEndpoint {
                name: "work".into(),
                subject: "comfaas.node.edge-1.work".into(),
                queue_group: String::new(),
                metadata: HashMap::new(),
                counter: Arc::default(),
            }],
        }
    }

    // The answers decode as async-nats's own micro types: what the NATS
    // tools read.
    #[test]
    fn answers_read_as_the_micro_format() {
        let service = service();
        service.endpoints[0].counter.ok(Duration::from_millis(2));
        service.endpoints[0]
            .counter
            .error(Duration::from_millis(4), 500, "boom");
        let ping: async_nats::service::PingResponse =
            serde_json::from_slice(&serde_json::to_vec(&service.ping()).unwrap()).unwrap();
        assert_eq!(
            (ping.name.as_str(), ping.id.as_str()),
            ("comfaas-exec", "edge-1")
        );
        let info: async_nats::service::Info =
            serde_json::from_slice(&serde_json::to_vec(&service.info()).unwrap()).unwrap();
        assert_eq!(info.endpoints[0].subject, "comfaas.node.edge-1.work");
        assert_eq!(info.metadata["tier"], "edge");
        let started = humantime::format_rfc3339_nanos(SystemTime::now()).to_string();
        let stats: async_nats::service::Stats =
            serde_json::from_slice(&serde_json::to_vec(&service.stats(&started)).unwrap()).unwrap();
        let work = &stats.endpoints[0];
        assert_eq!((work.requests, work.errors), (2, 1));
        assert_eq!(work.processing_time, Duration::from_millis(6));
        assert_eq!(work.average_processing_time, Duration::from_millis(3));
        assert_eq!(
            work.last_error
                .as_ref()
                .map(|e| (e.code, e.status.as_str())),
            Some((500, "boom"))
        );
    }
}
