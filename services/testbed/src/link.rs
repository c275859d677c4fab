//! Emulated WAN links, so that distance is felt on one machine: a TCP proxy
//! put in a leaf connection's URL that delays every byte by a one-way
//! latency and paces it to a bandwidth.
//!
//! Why a proxy and not the kernel: this kernel has no `netem`, so `tc` can
//! rate-limit (`tbf`) but not delay, and network namespaces need root. The
//! proxy needs neither, runs inside `comfaas dev` and the benchmarks, and
//! models the two things that decide placement: the round trip and the time
//! a large input takes to cross. It does not model loss or jitter.
//!
//! The model, per direction: a chunk read at `t` finishes crossing at
//! `max(t, previous finish) + bytes ÷ bandwidth` and is delivered one
//! latency later. The queue in between is bounded (twice the
//! bandwidth-delay product, at least 256 KiB), so a fast sender is slowed
//! by back-pressure as on a real link, and a small message queued behind a
//! large transfer waits as it would in a real router buffer.
//!
//! Links may sit behind one shared [`Uplink`], the edge's own connection:
//! a chunk first crosses the uplink (shared by every link behind it, one
//! queue per direction), then its own path. One transfer goes at the slower
//! of the two; transfers to several sites at once share the uplink.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use comfaas_schemas::InvalidValue;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

/// One direction's latency and bandwidth, e.g. `20ms/100mbit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkSpec {
    /// One-way delay added to every byte.
    pub latency: Duration,
    /// Bandwidth in bits per second; `None` is unlimited.
    pub bits_per_s: Option<u64>,
}

impl LinkSpec {
    /// Bytes a direction may hold in flight and in its queue.
    fn buffer_bytes(&self) -> usize {
        // Unlimited bandwidth: size the buffer as for 1 Gbit/s.
        let bytes_per_s = self.bits_per_s.unwrap_or(1_000_000_000) as f64 / 8.0;
        let bdp = bytes_per_s * self.latency.as_secs_f64();
        ((2.0 * bdp) as usize).clamp(256 * 1024, 64 * 1024 * 1024)
    }

    /// Time `bytes` take to cross at this bandwidth.
    fn serialisation(&self, bytes: usize) -> Duration {
        self.bits_per_s
            .map_or(Duration::ZERO, |b| serialisation(bytes, b))
    }
}

/// Time `bytes` take to cross at `bits_per_s`.
fn serialisation(bytes: usize, bits_per_s: u64) -> Duration {
    if bits_per_s == 0 {
        return Duration::ZERO;
    }
    Duration::from_secs_f64(bytes as f64 * 8.0 / bits_per_s as f64)
}

fn write_bandwidth(f: &mut fmt::Formatter<'_>, bits_per_s: u64) -> fmt::Result {
    let b = bits_per_s;
    match b {
        _ if b.is_multiple_of(1_000_000_000) => write!(f, "{}gbit", b / 1_000_000_000),
        _ if b.is_multiple_of(1_000_000) => write!(f, "{}mbit", b / 1_000_000),
        _ if b.is_multiple_of(1_000) => write!(f, "{}kbit", b / 1_000),
        _ => write!(f, "{b}bit"),
    }
}

/// Parses a bandwidth such as `100mbit`, `1.5gbit` or `64kbit` to bits per
/// second; the error says why it is not one.
pub fn parse_bandwidth(text: &str) -> Result<u64, InvalidValue> {
    let lower = text.trim().to_ascii_lowercase();
    let split = lower
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(lower.len());
    let (number, unit) = lower.split_at(split);
    let scale = match unit {
        "bit" => 1.0,
        "kbit" => 1e3,
        "mbit" => 1e6,
        "gbit" => 1e9,
        _ => {
            return Err(InvalidValue(format!(
                "bandwidth `{text}`: the unit must be bit, kbit, mbit or gbit"
            )))
        }
    };
    let number: f64 = number
        .parse()
        .map_err(|_| InvalidValue(format!("bandwidth `{text}` is not a number")))?;
    if !(number > 0.0 && number.is_finite()) {
        return Err(InvalidValue(format!(
            "bandwidth `{text}` must be above zero"
        )));
    }
    Ok((number * scale).round() as u64)
}

/// The edge's uplink, shared by every [`WanLink`] started behind it: each
/// direction is one queue at `bits_per_s` that all their chunks pass.
/// Clones share it.
#[derive(Debug, Clone)]
pub struct Uplink {
    bits_per_s: u64,
    /// When each direction (edge → site, site → edge) is next free.
    busy: Arc<[Mutex<Instant>; 2]>,
}

impl Uplink {
    /// An uplink of `bits_per_s` in each direction.
    pub fn new(bits_per_s: u64) -> Self {
        let now = Instant::now();
        Self {
            bits_per_s,
            busy: Arc::new([Mutex::new(now), Mutex::new(now)]),
        }
    }

    /// Queues `bytes` read at `now` in `direction`; returns when they have
    /// crossed.
    fn cross(&self, direction: Direction, now: Instant, bytes: usize) -> Instant {
        let slot = &self.busy[direction as usize];
        // A plain instant behind the lock: a panicked holder left nothing
        // half-done.
        let mut busy = slot.lock().unwrap_or_else(|e| e.into_inner());
        *busy = (*busy).max(now) + serialisation(bytes, self.bits_per_s);
        *busy
    }
}

impl fmt::Display for Uplink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_bandwidth(f, self.bits_per_s)
    }
}

/// Which way a chunk goes: from the edge (the side that connects to the
/// link) or towards it.
#[derive(Debug, Clone, Copy)]
enum Direction {
    FromEdge = 0,
    ToEdge = 1,
}

impl fmt::Display for LinkSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}ms", self.latency.as_millis())?;
        match self.bits_per_s {
            Some(b) => {
                f.write_str("/")?;
                write_bandwidth(f, b)
            }
            None => Ok(()),
        }
    }
}

/// A link spec that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("link `{spec}`: {why} (expected LATENCY[/BANDWIDTH], e.g. 20ms/100mbit)")]
pub struct LinkSpecError {
    spec: String,
    why: String,
}

impl FromStr for LinkSpec {
    type Err = LinkSpecError;

    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let error = |why: String| LinkSpecError {
            spec: spec.to_owned(),
            why,
        };
        let (latency, bandwidth) = match spec.trim().split_once('/') {
            Some((l, b)) => (l.trim(), Some(b.trim())),
            None => (spec.trim(), None),
        };
        let latency = humantime::parse_duration(latency)
            .map_err(|e| error(format!("latency `{latency}`: {e}")))?;
        let bits_per_s = bandwidth
            .map(parse_bandwidth)
            .transpose()
            .map_err(|e| error(e.0))?;
        Ok(Self {
            latency,
            bits_per_s,
        })
    }
}

/// A running link: connections to `127.0.0.1:<port>` reach the upstream
/// address through the emulated link. Dropping it cuts every connection.
pub struct WanLink {
    port: u16,
    spec: LinkSpec,
    task: JoinHandle<()>,
}

impl WanLink {
    /// Listens on a free loopback port and forwards to `upstream`, every
    /// chunk crossing `uplink` first if one is given. The side that
    /// connects is the edge.
    pub async fn start(
        spec: LinkSpec,
        upstream: SocketAddr,
        uplink: Option<Uplink>,
    ) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let task = tokio::spawn(serve(listener, spec, upstream, uplink));
        Ok(Self { port, spec, task })
    }

    /// The loopback port to connect to.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The link's latency and bandwidth.
    pub fn spec(&self) -> LinkSpec {
        self.spec
    }
}

impl Drop for WanLink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Accepts connections until aborted; aborting drops (and so aborts) every
/// connection's task.
async fn serve(
    listener: TcpListener,
    spec: LinkSpec,
    upstream: SocketAddr,
    uplink: Option<Uplink>,
) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((inbound, _)) => {
                    connections.spawn(connect(inbound, spec, upstream, uplink.clone()));
                }
                Err(e) => {
                    tracing::warn!("emulated link: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn connect(inbound: TcpStream, spec: LinkSpec, upstream: SocketAddr, uplink: Option<Uplink>) {
    let outbound = match TcpStream::connect(upstream).await {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!("emulated link: cannot reach {upstream}: {e}");
            return;
        }
    };
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    let (in_read, in_write) = inbound.into_split();
    let (out_read, out_write) = outbound.into_split();
    // A direction ends at its sender's end of stream, after delivering what
    // it holds and passing the end on (half-close), or at an error.
    let from_edge = uplink.clone().map(|u| (u, Direction::FromEdge));
    let to_edge = uplink.map(|u| (u, Direction::ToEdge));
    tokio::join!(
        direction(in_read, out_write, spec, from_edge),
        direction(out_read, in_write, spec, to_edge)
    );
}

/// Bytes read at once; the pacing granule.
const CHUNK: usize = 16 * 1024;

/// Carries one direction: reads, stamps each chunk with its delivery time
/// (across the uplink, if any, then this link), and writes it at that time.
async fn direction(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    spec: LinkSpec,
    uplink: Option<(Uplink, Direction)>,
) {
    let (tx, mut rx) = mpsc::channel::<(Instant, Bytes)>(spec.buffer_bytes() / CHUNK);
    let reader = async move {
        let mut sent_until = Instant::now();
        loop {
            let mut buf = BytesMut::with_capacity(CHUNK);
            match from.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    let now = Instant::now();
                    let ready = uplink
                        .as_ref()
                        .map_or(now, |(u, way)| u.cross(*way, now, n));
                    sent_until = sent_until.max(ready) + spec.serialisation(n);
                    if tx
                        .send((sent_until + spec.latency, buf.freeze()))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }
    };
    // Tokio's timers tick in whole milliseconds and fire late by up to
    // one (a round trip came out 2-3 ms over its profile), so the delivery
    // times are kept by a thread of this direction's own, whose sleep is
    // precise to tens of microseconds; it hands each chunk on, on time, to
    // the task that writes it.
    let (due_tx, mut due_rx) = mpsc::channel::<Bytes>(spec.buffer_bytes() / CHUNK);
    let timer = std::thread::Builder::new()
        .name("comfaas-link".to_owned())
        .spawn(move || {
            while let Some((at, chunk)) = rx.blocking_recv() {
                let wait = at
                    .into_std()
                    .saturating_duration_since(std::time::Instant::now());
                if !wait.is_zero() {
                    std::thread::sleep(wait);
                }
                if due_tx.blocking_send(chunk).is_err() {
                    return;
                }
            }
        });
    if let Err(e) = timer {
        tracing::warn!("emulated link: cannot start its timer thread: {e}");
        return;
    }
    let writer = async move {
        while let Some(chunk) = due_rx.recv().await {
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(reader, writer);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse_and_print() {
        let spec: LinkSpec = "20ms/100mbit".parse().unwrap();
        assert_eq!(spec.latency, Duration::from_millis(20));
        assert_eq!(spec.bits_per_s, Some(100_000_000));
        assert_eq!(spec.to_string(), "20ms/100mbit");
        let spec: LinkSpec = "5ms".parse().unwrap();
        assert_eq!(spec.bits_per_s, None);
        assert_eq!(
            "0ms/1.5gbit".parse::<LinkSpec>().unwrap().bits_per_s,
            Some(1_500_000_000)
        );
        for (bad, says) in [
            ("20/100mbit", "latency"),
            ("20ms/100mbps", "unit"),
            ("20ms/0mbit", "above zero"),
            ("20ms/mbit", "not a number"),
        ] {
            let e = bad.parse::<LinkSpec>().unwrap_err().to_string();
            assert!(
                e.contains(says) && e.contains("e.g. 20ms/100mbit"),
                "{bad}: {e}"
            );
        }
    }

    /// An echo server behind a link: a small message comes back after at
    /// least two latencies, 1 MB after at least its crossing time plus two
    /// latencies (the echo overlaps the way out), and the bytes arrive
    /// intact and in order.
    #[tokio::test]
    async fn a_link_delays_and_paces() {
        let upstream = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = upstream.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = upstream.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        let link = WanLink::start("25ms/16mbit".parse().unwrap(), addr, None)
            .await
            .unwrap();
        let mut s = TcpStream::connect(("127.0.0.1", link.port()))
            .await
            .unwrap();

        let started = std::time::Instant::now();
        s.write_all(b"ping").await.unwrap();
        let mut small = [0u8; 4];
        s.read_exact(&mut small).await.unwrap();
        assert_eq!(&small, b"ping");
        assert!(started.elapsed() >= Duration::from_millis(50));

        // 1 MB at 16 Mbit/s takes 0.5 s each way.
        let data: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
        let started = std::time::Instant::now();
        let (mut r, mut w) = s.into_split();
        let sent = data.clone();
        let writer = tokio::spawn(async move { w.write_all(&sent).await.unwrap() });
        let mut back = vec![0u8; data.len()];
        tokio::time::timeout(Duration::from_secs(20), r.read_exact(&mut back))
            .await
            .expect("the transfer finishes")
            .unwrap();
        writer.await.unwrap();
        assert!(back == data, "bytes arrive intact and in order");
        assert!(started.elapsed() >= Duration::from_millis(550));
    }

    /// Two links behind one 16 Mbit/s uplink: 1 MB crosses one of them in
    /// at least 0.5 s; sent over both at once, the two share the uplink and
    /// the later one needs at least 1 s. Bytes are counted on arrival.
    #[tokio::test]
    async fn links_behind_one_uplink_share_it() {
        let sink = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = sink.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = sink.accept().await {
                tokio::spawn(async move {
                    let mut got = Vec::new();
                    s.read_to_end(&mut got).await.unwrap();
                    let _ = s.write_all(&(got.len() as u64).to_be_bytes()).await;
                });
            }
        });
        let uplink = Uplink::new(parse_bandwidth("16mbit").unwrap());
        assert_eq!(uplink.to_string(), "16mbit");
        let spec: LinkSpec = "5ms".parse().unwrap();
        let a = WanLink::start(spec, addr, Some(uplink.clone()))
            .await
            .unwrap();
        let b = WanLink::start(spec, addr, Some(uplink)).await.unwrap();
        let send = |port: u16| async move {
            let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
            s.write_all(&vec![7u8; 1_000_000]).await.unwrap();
            s.shutdown().await.unwrap();
            let mut count = [0u8; 8];
            s.read_exact(&mut count).await.unwrap();
            assert_eq!(u64::from_be_bytes(count), 1_000_000);
        };

        let started = std::time::Instant::now();
        send(a.port()).await;
        assert!(started.elapsed() >= Duration::from_millis(500));

        let started = std::time::Instant::now();
        tokio::join!(send(a.port()), send(b.port()));
        assert!(
            started.elapsed() >= Duration::from_millis(1000),
            "two transfers shared the uplink: {:?}",
            started.elapsed()
        );
    }

    /// Dropping the link cuts its connections.
    #[tokio::test]
    async fn dropping_a_link_cuts_it() {
        let upstream = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = upstream.local_addr().unwrap();
        let held = tokio::spawn(async move { upstream.accept().await.map(|(s, _)| s) });
        let link = WanLink::start("1ms".parse().unwrap(), addr, None)
            .await
            .unwrap();
        let mut s = TcpStream::connect(("127.0.0.1", link.port()))
            .await
            .unwrap();
        let _server_side = held.await.unwrap().unwrap();
        drop(link);
        let mut buf = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("the cut is seen");
        assert!(matches!(read, Ok(0) | Err(_)));
    }
}
