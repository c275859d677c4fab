//! The link profiles (`paper-fit`, `stated`, `defaults`) and their
//! calibration: each link's round trip and bandwidth measured across it,
//! against the profile.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::ValueEnum;
use comfaas_testbed::link::LinkSpec;
use comfaas_testbed::sites::{Site, DEFAULT_LINKS, DEFAULT_UPLINK_BITS_PER_S};
use futures::StreamExt;
use rand::RngCore;

use crate::paper::{self, Fit};
use crate::report::{median, Calibration};
use crate::Lane;

/// Subjects of the link calibration, this benchmark's own.
const CALIBRATE_SUBJECT: &str = "_comfaas_bench.calibrate";
/// One-way latency of the device's own link to the edge (Moorhead to
/// Fargo: a few miles of access network).
const DEVICE_LATENCY: Duration = Duration::from_millis(1);
/// The stated edge uplink: "under 100 Mbit/s" (the most it may be).
const STATED_UPLINK_BITS_PER_S: u64 = 100_000_000;
/// The stated cloud host's download: "below 800 Mbps".
const STATED_CLOUD_DOWN_BITS_PER_S: f64 = 800e6;

/// Which link profile to emulate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Profile {
    /// Bandwidths and a fixed per-site delay fitted to the tables.
    PaperFit,
    /// What the paper states: an edge uplink under 100 Mbit/s, latencies
    /// from the distances.
    Stated,
    /// The project's own links (`comfaas dev --sites`).
    Defaults,
}

impl Profile {
    /// Its name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Profile::PaperFit => "paper-fit",
            Profile::Stated => "stated",
            Profile::Defaults => "defaults",
        }
    }
}

/// The links of a profile.
#[derive(Debug, Clone)]
pub struct Links {
    /// The device's own link to the edge.
    pub device: LinkSpec,
    /// Each cloud site's link from the edge.
    pub clouds: BTreeMap<String, LinkSpec>,
    /// The edge's shared uplink, bits/s.
    pub uplink: Option<u64>,
    /// Whether the fixed per-site delay is fitted (else none).
    pub site_delay: bool,
    /// Where the numbers come from, for the report.
    pub source: String,
}

fn spec(latency_ms: f64, bits_per_s: f64) -> LinkSpec {
    LinkSpec {
        latency: Duration::from_secs_f64(latency_ms / 1000.0),
        bits_per_s: Some(bits_per_s.round() as u64),
    }
}

fn stated_latency(site: &str) -> f64 {
    paper::STATED_MILES
        .iter()
        .find(|(s, _)| *s == site)
        .map_or(0.0, |(_, miles)| paper::latency_ms_of_miles(*miles))
}

/// The links of `profile`, from the fit where it says so.
pub fn links(profile: Profile, fit: &Fit) -> anyhow::Result<Links> {
    let clouds = paper::SITES.iter().filter(|s| !paper::is_edge(s));
    Ok(match profile {
        Profile::PaperFit => Links {
            device: spec(DEVICE_LATENCY.as_secs_f64() * 1000.0, fit.device_bits_per_s),
            clouds: clouds
                .map(|s| {
                    let bw = fit.cloud_bits_per_s[s];
                    (s.to_string(), spec(stated_latency(s), bw))
                })
                .collect(),
            uplink: None,
            site_delay: true,
            source: "fitted to the tables: bandwidths from Table 2 less Table 1 (the device's \
                     upload from the edge row, each cloud's link from the rest), a fixed per-site \
                     delay from Table 1 less the platform's own time; latencies from the stated \
                     distances"
                .to_owned(),
        },
        Profile::Stated => Links {
            device: spec(
                DEVICE_LATENCY.as_secs_f64() * 1000.0,
                STATED_UPLINK_BITS_PER_S as f64,
            ),
            clouds: clouds
                .map(|s| {
                    (
                        s.to_string(),
                        spec(stated_latency(s), STATED_CLOUD_DOWN_BITS_PER_S),
                    )
                })
                .collect(),
            uplink: Some(STATED_UPLINK_BITS_PER_S),
            site_delay: false,
            source: "as stated: the edge's link under 100 Mbit/s (taken as 100, shared by the \
                     device's upload and every cloud path; the clouds' own downloads, 800 \
                     Mbit/s, are wider), one-way latencies from the distances (fibre at 200 km/ms, \
                     routes 1.5 × the distance), no per-site delay (none is stated)"
                .to_owned(),
        },
        Profile::Defaults => Links {
            device: LinkSpec {
                latency: DEVICE_LATENCY,
                bits_per_s: Some(DEFAULT_UPLINK_BITS_PER_S),
            },
            clouds: DEFAULT_LINKS
                .iter()
                .map(|(s, l)| Ok((s.to_string(), l.parse::<LinkSpec>()?)))
                .collect::<anyhow::Result<_>>()?,
            uplink: Some(DEFAULT_UPLINK_BITS_PER_S),
            site_delay: false,
            source: "the project's own (`comfaas dev --sites`): DEFAULT_LINKS behind a 90 Mbit/s \
                     uplink, no per-site delay"
                .to_owned(),
        },
    })
}

/// The round trip of a request from `from` to a responder on `to`: the
/// median of 21.
async fn round_trip(
    from: &async_nats::Client,
    to: &async_nats::Client,
    tag: &str,
) -> anyhow::Result<f64> {
    let subject = format!("{CALIBRATE_SUBJECT}.{tag}.ping");
    let mut sub = to.subscribe(subject.clone()).await?;
    to.flush().await?;
    let responder = to.clone();
    let task = tokio::spawn(async move {
        while let Some(m) = sub.next().await {
            if let Some(reply) = m.reply {
                let _ = responder.publish(reply, bytes::Bytes::new()).await;
            }
        }
    });
    // Until interest has crossed the leaf link.
    let deadline = Instant::now() + Duration::from_secs(20);
    while from
        .request(subject.clone(), bytes::Bytes::new())
        .await
        .is_err()
    {
        if Instant::now() > deadline {
            bail!("no answer across the link {tag}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut times = Vec::new();
    for _ in 0..21 {
        let t = Instant::now();
        from.request(subject.clone(), bytes::Bytes::new()).await?;
        times.push(t.elapsed().as_secs_f64());
    }
    task.abort();
    Ok(median(&times))
}

/// Bandwidth from `from` to `to`, bits/s: `bytes` sent in 1000 KiB
/// messages with at most 32 MiB unacknowledged, timed to the receiver's
/// last answer less a round trip.
async fn bandwidth(
    from: &async_nats::Client,
    to: &async_nats::Client,
    tag: &str,
    bytes: u64,
    rtt_s: f64,
) -> anyhow::Result<f64> {
    const CHUNK: usize = 1000 * 1024;
    const ACK_EVERY: u64 = 4 << 20;
    const WINDOW: u64 = 32 << 20;
    let data = format!("{CALIBRATE_SUBJECT}.{tag}.data");
    let ack = format!("{CALIBRATE_SUBJECT}.{tag}.ack");
    let mut sub = to.subscribe(data.clone()).await?;
    to.flush().await?;
    let mut acks = from.subscribe(ack.clone()).await?;
    from.flush().await?;
    let receiver = to.clone();
    let task = tokio::spawn(async move {
        let (mut got, mut acked) = (0u64, 0u64);
        while let Some(m) = sub.next().await {
            got += m.payload.len() as u64;
            if got - acked >= ACK_EVERY || got >= bytes {
                acked = got;
                let _ = receiver.publish(ack.clone(), got.to_string().into()).await;
                if got >= bytes {
                    let _ = receiver.flush().await;
                    return;
                }
            }
        }
    });
    // Interest for `data` must have crossed the link: a round trip on the
    // same connections shows it has.
    round_trip(from, to, &format!("{tag}-ready")).await?;
    // Random bytes, fresh in every message: leaf links may compress.
    let mut rng = rand::rng();
    let mut chunk = |n: usize| {
        let mut data = vec![0u8; n];
        rng.fill_bytes(&mut data);
        bytes::Bytes::from(data)
    };
    let started = Instant::now();
    let (mut sent, mut acked) = (0u64, 0u64);
    while acked < bytes {
        while sent < bytes && sent - acked < WINDOW {
            let n = CHUNK.min((bytes - sent) as usize);
            from.publish(data.clone(), chunk(n)).await?;
            sent += n as u64;
        }
        let m = tokio::time::timeout(Duration::from_secs(120), acks.next())
            .await
            .context("bandwidth calibration stalled")?
            .context("ack subscription closed")?;
        acked = String::from_utf8_lossy(&m.payload).parse().unwrap_or(acked);
    }
    let secs = (started.elapsed().as_secs_f64() - rtt_s).max(1e-6);
    task.abort();
    Ok(bytes as f64 * 8.0 / secs)
}

fn within(measured: f64, expected: f64, tolerance: f64) -> bool {
    (measured - expected).abs() <= tolerance
}

/// Round trip and bandwidth of every link, against the profile.
pub async fn calibrate_links(
    edge_url: &str,
    clouds: &[Site],
    lane: &Lane,
    links: &Links,
) -> anyhow::Result<Vec<Calibration>> {
    let edge = async_nats::connect(edge_url).await?;
    let mut rows = Vec::new();
    let mut paths: Vec<(String, async_nats::Client, async_nats::Client, LinkSpec)> = vec![(
        "device → edge".to_owned(),
        lane.client.clone(),
        edge.clone(),
        links.device,
    )];
    for cloud in clouds {
        let client = async_nats::connect(cloud.server.url()).await?;
        let spec = links.clouds[&cloud.name];
        paths.push((format!("edge → {}", cloud.name), edge.clone(), client, spec));
    }
    for (i, (name, from, to, spec)) in paths.iter().enumerate() {
        let tag = format!("l{i}");
        let expected_rtt = 2.0 * spec.latency.as_secs_f64();
        let rtt = round_trip(from, to, &tag).await?;
        let expected_bw = match (spec.bits_per_s, links.uplink) {
            (Some(a), Some(b)) => a.min(b),
            (Some(a), None) => a,
            (None, Some(b)) => b,
            (None, None) => 0,
        } as f64;
        let mut bws = Vec::new();
        for mb in [16u64, 128] {
            let bw = bandwidth(from, to, &format!("{tag}-{mb}"), mb << 20, rtt).await?;
            bws.push((mb, bw));
        }
        rows.push(Calibration {
            path: name.clone(),
            rtt_expected_ms: expected_rtt * 1000.0,
            rtt_ms: rtt * 1000.0,
            rtt_ok: within(rtt, expected_rtt, 0.002),
            bw_expected_mbit: expected_bw / 1e6,
            bw_mbit: bws.iter().map(|(mb, bw)| (*mb, bw / 1e6)).collect(),
            bw_ok: bws
                .iter()
                .all(|(_, bw)| within(*bw, expected_bw, 0.05 * expected_bw)),
        });
    }
    Ok(rows)
}
