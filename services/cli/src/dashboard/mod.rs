//! `comfaas dashboard`: a live web page of the site. One task listens to the
//! nodes' heartbeats (`<prefix>.node.*.load`) and the dispatchers' reports
//! (`<prefix>.dispatch.*.metrics`), reads the events stream's consumer and
//! the dead-letter queue every two seconds, and folds it all into a
//! [`view::Snapshot`] once a second; an axum server hands the page (HTML,
//! CSS and JS compiled into the binary: no web build step, nothing fetched
//! from elsewhere) and streams the snapshots to it as server-sent events.
//!
//! It only reads: its NATS identity is the observer's, and the HTTP side
//! has no action to take. It binds to loopback unless told otherwise, and
//! then answers only requests addressed to a loopback name (a web page
//! elsewhere cannot read it through DNS rebinding).

pub mod view;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use comfaas_schemas::names::{self, Subjects};
use comfaas_schemas::{decode, now_unix_ms, DispatchMetrics, NodeLoad};
use futures::{Stream, StreamExt};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use view::{EventsView, View};

const PAGE: &str = include_str!("index.html");
const SCRIPT: &str = include_str!("dashboard.js");
const STYLE: &str = include_str!("dashboard.css");

/// How often the page gets a new snapshot.
const TICK: Duration = Duration::from_secs(1);
/// How often the events stream and the dead-letter queue are read.
const EVENTS_POLL: Duration = Duration::from_secs(2);

/// The address `comfaas dashboard` listens on unless `--addr` says otherwise.
pub const DEFAULT_ADDR: &str = "127.0.0.1:8080";

/// The flags of `comfaas dashboard`.
#[derive(Debug, Clone, clap::Args)]
pub struct DashboardOptions {
    /// Address to serve the page on (loopback by default: the page has no
    /// login)
    #[arg(long, default_value = DEFAULT_ADDR)]
    pub addr: SocketAddr,
}

/// Where the dashboard reads from.
#[derive(Clone)]
pub struct Source {
    /// Connected as the observer (or any role that may read loads and
    /// dispatcher metrics).
    pub client: async_nats::Client,
    /// JetStream of the site, in its domain, for the events stream and
    /// the dead-letter queue.
    pub jetstream: async_nats::jetstream::Context,
    /// Subject names.
    pub subjects: Subjects,
}

/// A dashboard bound to its address, not serving yet.
pub struct Dashboard {
    listener: TcpListener,
    source: Source,
}

impl Dashboard {
    /// Binds `addr`. A port in use (or an address this host does not have)
    /// is one line saying so; the caller adds which flag moves it.
    pub async fn bind(source: Source, addr: SocketAddr) -> anyhow::Result<Self> {
        let listener = match TcpListener::bind(addr).await {
            Ok(listener) => listener,
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                anyhow::bail!("dashboard: {addr} is already in use (another dashboard?)")
            }
            Err(e) => anyhow::bail!("dashboard: cannot listen on {addr}: {e}"),
        };
        Ok(Self { listener, source })
    }

    /// The address it listens on (the port the system chose, for port 0).
    pub fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        Ok(self.listener.local_addr()?)
    }

    /// The page's URL.
    pub fn url(&self) -> anyhow::Result<String> {
        Ok(format!("http://{}/", self.local_addr()?))
    }

    /// Serves until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let local = self.local_addr()?;
        let subjects = &self.source.subjects;
        let loads = self
            .source
            .client
            .subscribe(subjects.node_load_all())
            .await?;
        let reports = self
            .source
            .client
            .subscribe(subjects.dispatch_metrics_all())
            .await?;
        let (snapshots, latest) = watch::channel(Arc::new(String::from("{}")));
        let (events_tx, events_rx) = watch::channel(EventsView::default());

        let mut tasks = tokio::task::JoinSet::new();
        tasks.spawn(fold(loads, reports, events_rx, snapshots, shutdown.clone()));
        tasks.spawn(poll_events(
            self.source.jetstream.clone(),
            events_tx,
            shutdown.clone(),
        ));

        let app = Router::new()
            .route("/", get(page))
            .route("/dashboard.js", get(script))
            .route("/dashboard.css", get(style))
            .route("/snapshot.json", get(snapshot))
            .route("/events", get(events))
            .fallback(not_found)
            .layer(axum::middleware::from_fn_with_state(
                local.ip().is_loopback(),
                guard,
            ))
            .with_state(Shared {
                latest,
                shutdown: shutdown.clone(),
            });
        let stop = shutdown.clone();
        axum::serve(self.listener, app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await?;
        shutdown.cancel();
        tasks.shutdown().await;
        Ok(())
    }
}

/// Binds `addr`, prints the page's URL, warns when it is reachable from
/// other hosts, and serves until `shutdown`: `comfaas dashboard`.
pub async fn serve(
    source: Source,
    addr: SocketAddr,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let dashboard = Dashboard::bind(source, addr)
        .await
        .map_err(|e| anyhow::anyhow!("{e:#}; choose another with --addr"))?;
    println!("dashboard at {}", dashboard.url()?);
    if !addr.ip().is_loopback() {
        eprintln!(
            "comfaas: warning: the dashboard has no login: anyone who reaches {addr} sees \
             the site's nodes, functions and placement decisions"
        );
    }
    dashboard.run(shutdown).await
}

#[derive(Clone)]
struct Shared {
    latest: watch::Receiver<Arc<String>>,
    shutdown: CancellationToken,
}

/// Folds heartbeats, reports and event readings into the view; publishes a
/// snapshot every tick.
async fn fold(
    mut loads: async_nats::Subscriber,
    mut reports: async_nats::Subscriber,
    events: watch::Receiver<EventsView>,
    snapshots: watch::Sender<Arc<String>>,
    shutdown: CancellationToken,
) {
    let mut view = View::default();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(message) = loads.next() => {
                // A report that does not decode is someone else's on our
                // subjects; the dispatchers ignore it too.
                if let Ok(load) = decode::<NodeLoad>(&message.payload) {
                    view.heard_load(load, Instant::now());
                }
            }
            Some(message) = reports.next() => {
                if let Ok(report) = decode::<DispatchMetrics>(&message.payload) {
                    view.heard_report(report, Instant::now());
                }
            }
            _ = tick.tick() => {
                view.heard_events(events.borrow().clone());
                let snapshot = view.tick(Instant::now(), now_unix_ms());
                match serde_json::to_string(&snapshot) {
                    Ok(json) => {
                        snapshots.send_replace(Arc::new(json));
                    }
                    Err(e) => tracing::warn!("dashboard snapshot not encoded: {e}"),
                }
            }
        }
    }
}

/// Reads the dispatchers' events consumer and the dead-letter queue every
/// [`EVENTS_POLL`]; a failed reading (no such stream yet, no permission)
/// is shown on the page as such.
async fn poll_events(
    js: async_nats::jetstream::Context,
    readings: watch::Sender<EventsView>,
    shutdown: CancellationToken,
) {
    let mut every = tokio::time::interval(EVENTS_POLL);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = every.tick() => {
                readings.send_replace(read_events(&js).await);
            }
        }
    }
}

async fn read_events(js: &async_nats::jetstream::Context) -> EventsView {
    let mut view = EventsView::default();
    let mut errors = Vec::new();
    // No STREAM.INFO of the events stream: the consumer's info alone says
    // what waits, and it is all the observer may read of that stream.
    let consumer = async {
        js.get_stream_no_info(names::EVENTS_STREAM)
            .await?
            .consumer_info(names::DISPATCH_EVENTS_CONSUMER)
            .await
            .map_err(async_nats::Error::from)
    };
    match consumer.await {
        Ok(info) => {
            view.pending = Some(info.num_pending);
            view.in_progress = Some(info.num_ack_pending as u64);
            view.retrying = Some(info.num_redelivered as u64);
        }
        Err(e) => errors.push(format!("{}: {e}", names::EVENTS_STREAM)),
    }
    // One STREAM.INFO: the lookup's answer holds the count.
    match js.get_stream(names::DLQ_STREAM).await {
        Ok(stream) => view.dead_letters = Some(stream.cached_info().state.messages),
        Err(e) => errors.push(format!("{}: {e}", names::DLQ_STREAM)),
    }
    if !errors.is_empty() {
        view.error = Some(errors.join("; "));
    }
    view
}

/// Refuses requests whose `Host` is not a loopback name while bound to
/// loopback: a page on another site, its name rebound to 127.0.0.1,
/// would otherwise read the dashboard from the user's browser.
async fn guard(State(loopback): State<bool>, request: Request, next: Next) -> Response {
    if loopback {
        let host = request
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("");
        if !is_loopback_host(host) {
            return (
                StatusCode::FORBIDDEN,
                "the dashboard answers only requests addressed to this host's loopback\n",
            )
                .into_response();
        }
    }
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; style-src 'self'; connect-src 'self'; \
             img-src 'self' data:; frame-ancestors 'none'",
        ),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// `localhost`, `127.0.0.1`, `[::1]`, with or without a port.
fn is_loopback_host(host: &str) -> bool {
    let name = match host.rsplit_once(':') {
        // `[::1]:8080` or `127.0.0.1:8080`; a bare `[::1]` has its colons
        // inside the brackets.
        Some((name, port))
            if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) && !name.is_empty() =>
        {
            name
        }
        _ => host,
    };
    let name = name.trim_start_matches('[').trim_end_matches(']');
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

async fn page() -> Response {
    asset("text/html; charset=utf-8", PAGE)
}

async fn script() -> Response {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

async fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE)
}

async fn not_found() -> Response {
    (StatusCode::NOT_FOUND, "not found\n").into_response()
}

/// The latest snapshot as JSON, for scripts and `curl`.
async fn snapshot(State(shared): State<Shared>) -> Response {
    let json = shared.latest.borrow().clone();
    (
        [(header::CONTENT_TYPE, "application/json")],
        json.as_str().to_owned(),
    )
        .into_response()
}

/// Every snapshot as a `snapshot` event: the latest at once, then each new
/// one; the stream ends when the dashboard stops.
async fn events(
    State(shared): State<Shared>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let mut latest = shared.latest;
    latest.mark_changed();
    let stream = futures::stream::unfold(latest, |mut latest| async move {
        latest.changed().await.ok()?;
        let json = latest.borrow_and_update().clone();
        Some((
            Ok(Event::default().event("snapshot").data(json.as_str())),
            latest,
        ))
    })
    .take_until(shared.shutdown.cancelled_owned());
    Sse::new(stream).keep_alive(KeepAlive::default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(host: &str, expect: bool) {
        assert_eq!(is_loopback_host(host), expect, "{host}");
    }

    #[test]
    fn loopback_hosts() {
        check("localhost", true);
        check("localhost:8080", true);
        check("LOCALHOST:1", true);
        check("127.0.0.1:8080", true);
        check("127.3.4.5", true);
        check("[::1]:8080", true);
        check("[::1]", true);
        check("evil.example:8080", false);
        check("localhost.evil.example", false);
        check("10.0.0.1:8080", false);
        check("", false);
        check(":8080", false);
    }
}
