//! What the benchmarks measure the same way: request latency and rate
//! with a number of requests in flight, and a process's CPU time.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;

/// Latency percentiles and rate of one run of requests.
#[derive(Debug, Clone, Copy)]
pub struct Latency {
    /// Median round trip, µs.
    pub p50_us: u64,
    /// 99th percentile, µs.
    pub p99_us: u64,
    /// Requests answered per second over the run.
    pub per_s: f64,
}

/// Sends `total` requests of `payload` on `subject`, `in_flight` at a
/// time, each answered `ok` (or without a status: a bare echo).
pub async fn requests(
    client: &async_nats::Client,
    subject: &str,
    payload: &'static [u8],
    in_flight: usize,
    total: usize,
) -> Latency {
    let (hist, wall) = round_trips(
        client,
        subject,
        Bytes::from_static(payload),
        in_flight,
        total,
    )
    .await;
    Latency {
        p50_us: hist.value_at_quantile(0.50),
        p99_us: hist.value_at_quantile(0.99),
        per_s: total as f64 / wall.as_secs_f64(),
    }
}

/// A histogram of round trips, µs, from 1 µs to a minute.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram")
}

/// The round trips (µs) of `total` requests of `payload` on `subject`,
/// `in_flight` at a time, each answered `ok` (or without a status: a bare
/// echo), and the wall time they took.
pub async fn round_trips(
    client: &async_nats::Client,
    subject: &str,
    payload: Bytes,
    in_flight: usize,
    total: usize,
) -> (Histogram<u64>, Duration) {
    let hist = Arc::new(Mutex::new(histogram()));
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..in_flight {
        let (client, subject, payload, hist, next) = (
            client.clone(),
            subject.to_owned(),
            payload.clone(),
            hist.clone(),
            next.clone(),
        );
        workers.push(tokio::spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < total {
                let t = Instant::now();
                let reply = client
                    .request(subject.clone(), payload.clone())
                    .await
                    .expect("request");
                let us = t.elapsed().as_micros() as u64;
                let status = crate::header(&reply, comfaas_schemas::names::headers::STATUS);
                assert!(
                    status.is_empty() || status == "ok",
                    "error reply: {:?}",
                    reply.headers
                );
                hist.lock()
                    .expect("lock")
                    .record(us.max(1))
                    .expect("record");
            }
        }));
    }
    for w in workers {
        w.await.expect("worker");
    }
    let wall = started.elapsed();
    let hist = hist.lock().expect("lock").clone();
    (hist, wall)
}

/// CPU time process `pid` has used so far (user + system), seconds.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command name (which may hold spaces): utime
    // and stime are the 12th and 13th of them, in clock ticks.
    let (_, rest) = stat.rsplit_once(") ")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let user: u64 = fields.get(11)?.parse().ok()?;
    let system: u64 = fields.get(12)?.parse().ok()?;
    let per_s = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .map_or(100.0, |t| t as f64);
    Some((user + system) as f64 / per_s)
}
