//! The Prometheus scrape endpoint of a service (`--metrics-addr`): a
//! minimal HTTP/1.1 server on its own listener that answers `GET /metrics`
//! with the text a service renders (OpenMetrics text, which Prometheus
//! reads), and nothing else.
//!
//! Why not a web framework: one read-only page needs no router, and the
//! services stay free of an HTTP stack; a scrape is one short request
//! per connection (`Connection: close`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// The path the metrics are served on.
pub const METRICS_PATH: &str = "/metrics";
/// The content type of the text (`prometheus-client` writes OpenMetrics).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Longest request head read; a scrape's is a few hundred bytes.
const MAX_HEAD: usize = 8 << 10;
/// How long a client may take to send its request.
const READ_WITHIN: Duration = Duration::from_secs(5);

/// What renders the metrics text at each scrape.
pub type Render = Arc<dyn Fn() -> String + Send + Sync>;

/// Labels of an answered invocation (dispatcher) or work message
/// (executor): the same series shape in both services.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Answered {
    /// The function, or [`UNKNOWN_FUNCTION`] (see [`function_label`]).
    pub function: String,
    /// The node: the last one tried, or the executor's own; empty when none.
    pub node: String,
    /// `ok`, or the error code (`404`, `503`, …).
    pub status: String,
}

/// Labels of a series by function.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ByFunction {
    /// The function.
    pub function: String,
}

impl ByFunction {
    /// The labels of `function`.
    pub fn of(function: &str) -> Self {
        Self {
            function: function.to_owned(),
        }
    }
}

/// Histograms of seconds, one per function.
pub type SecondsByFunction = Family<ByFunction, Histogram, fn() -> Histogram>;

/// Seconds, from half a millisecond to about a minute (doubling).
fn seconds() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 18))
}

/// A new, empty [`SecondsByFunction`].
pub fn seconds_by_function() -> SecondsByFunction {
    Family::new_with_constructor(seconds)
}

/// The `function` label of answers to requests naming no deployed function.
pub use comfaas_schemas::names::UNKNOWN_FUNCTION;

/// The `function` label of an answer with error `code` (0: none). A
/// request for a function that is not deployed (404) or a malformed one
/// (400) names whatever its sender chose: one label for all of them, so no
/// sender can grow the series without bound.
pub fn function_label(function: &str, code: u16) -> &str {
    if matches!(code, 400 | 404) {
        UNKNOWN_FUNCTION
    } else {
        function
    }
}

/// `registry` as the text a scrape gets (empty, with a warning, should
/// encoding fail).
pub fn encode(registry: &Registry) -> String {
    let mut text = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut text, registry) {
        tracing::warn!("cannot encode metrics: {e}");
    }
    text
}

/// An error starting the endpoint.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The address is not `host:port`.
    #[error("metrics address `{0}` is not host:port (e.g. 127.0.0.1:9464)")]
    BadAddress(String),
    /// The address cannot be listened on (in use, not ours).
    #[error("cannot listen for metrics on {addr}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
}

/// Listens on `addr` (`host:port`; port 0 picks a free one) and serves
/// `render`'s text until `shutdown`; returns the address bound, so a
/// caller that asked for port 0 can say where it is.
pub async fn serve(
    addr: &str,
    render: Render,
    shutdown: CancellationToken,
) -> Result<SocketAddr, MetricsError> {
    let parsed: SocketAddr = tokio::net::lookup_host(addr)
        .await
        .ok()
        .and_then(|mut found| found.next())
        .ok_or_else(|| MetricsError::BadAddress(addr.to_owned()))?;
    let listener = TcpListener::bind(parsed)
        .await
        .map_err(|source| MetricsError::Bind {
            addr: addr.to_owned(),
            source,
        })?;
    let bound = listener.local_addr().map_err(|source| MetricsError::Bind {
        addr: addr.to_owned(),
        source,
    })?;
    tokio::spawn(async move {
        while let Some(accepted) = shutdown.run_until_cancelled(listener.accept()).await {
            match accepted {
                Ok((stream, _)) => {
                    tokio::spawn(answer(stream, render.clone()));
                }
                Err(e) => tracing::debug!("metrics accept failed: {e}"),
            }
        }
    });
    Ok(bound)
}

/// [`serve`] for a service (`who`, in the log lines): an address that is
/// not `host:port` is its error, but one it cannot listen on (another
/// program has the port) is a warning, and `None`: metrics are for
/// watching, and a port taken must not cost the service its work.
pub async fn serve_unless_taken(
    who: &str,
    addr: &str,
    render: Render,
    shutdown: CancellationToken,
) -> Result<Option<SocketAddr>, MetricsError> {
    match serve(addr, render, shutdown).await {
        Ok(bound) => {
            tracing::info!("{who} metrics at http://{bound}{METRICS_PATH}");
            Ok(Some(bound))
        }
        Err(e @ MetricsError::Bind { .. }) => {
            tracing::warn!("{e}: {who} serves without metrics");
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Answers one connection: the metrics for `GET /metrics`, 404 for any
/// other path, 405 for any other method.
async fn answer(mut stream: TcpStream, render: Render) {
    let Ok(Some(head)) = tokio::time::timeout(READ_WITHIN, read_head(&mut stream)).await else {
        return;
    };
    let mut words = head.split_whitespace();
    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or(path);
    let (status, content_type, body) = match (method, path) {
        ("GET", METRICS_PATH) => ("200 OK", CONTENT_TYPE, render()),
        ("GET", _) => (
            "404 Not Found",
            "text/plain",
            format!("metrics are at {METRICS_PATH}\n"),
        ),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "only GET\n".to_owned(),
        ),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    if let Err(e) = stream.write_all(response.as_bytes()).await {
        tracing::debug!("cannot answer a metrics scrape: {e}");
    }
    let _ = stream.shutdown().await;
}

/// The request head, up to the blank line; `None` when the client closed
/// first or sent more than [`MAX_HEAD`] without one.
async fn read_head(stream: &mut TcpStream) -> Option<String> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    loop {
        let n = stream.read(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        head.extend_from_slice(&buf[..n]);
        if head.windows(4).any(|w| w == b"\r\n\r\n") {
            return Some(String::from_utf8_lossy(&head).into_owned());
        }
        if head.len() > MAX_HEAD {
            return None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn get(addr: SocketAddr, request: &str) -> String {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.unwrap();
        answer
    }

    #[tokio::test]
    async fn serves_the_text_on_its_path_only() {
        let shutdown = CancellationToken::new();
        let render: Render = Arc::new(|| "up 1\n# EOF\n".to_owned());
        let addr = serve("127.0.0.1:0", render, shutdown.clone())
            .await
            .unwrap();
        let ok = get(addr, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(ok.ends_with("\r\n\r\nup 1\n# EOF\n"), "{ok}");
        let other = get(addr, "GET /other HTTP/1.1\r\n\r\n").await;
        assert!(other.starts_with("HTTP/1.1 404"), "{other}");
        let post = get(addr, "POST /metrics HTTP/1.1\r\n\r\n").await;
        assert!(post.starts_with("HTTP/1.1 405"), "{post}");
        shutdown.cancel();
    }

    #[tokio::test]
    async fn a_bad_or_busy_address_is_a_clear_error() {
        let shutdown = CancellationToken::new();
        let render: Render = Arc::new(String::new);
        let bad = serve("nonsense", render.clone(), shutdown.clone()).await;
        assert!(matches!(bad, Err(MetricsError::BadAddress(_))), "{bad:?}");
        let addr = serve("127.0.0.1:0", render.clone(), shutdown.clone())
            .await
            .unwrap();
        let busy = serve(&addr.to_string(), render.clone(), shutdown.clone()).await;
        let message = busy.unwrap_err().to_string();
        assert!(
            message.starts_with(&format!("cannot listen for metrics on {addr}")),
            "{message}"
        );
        // For a service, a port taken is no error, an address that is
        // not one still is.
        let taken =
            serve_unless_taken("test", &addr.to_string(), render.clone(), shutdown.clone()).await;
        assert!(matches!(taken, Ok(None)), "{taken:?}");
        let bad = serve_unless_taken("test", "nonsense", render, shutdown.clone()).await;
        assert!(matches!(bad, Err(MetricsError::BadAddress(_))), "{bad:?}");
        shutdown.cancel();
    }
}
