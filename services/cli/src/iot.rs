//! `comfaas iot-sim`: simulated devices that publish sensor batches as
//! events and print the results as they come back, with the node that ran
//! each one.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use comfaas_platform::reply::{self, Outcome};
use comfaas_schemas::names::{headers as h, Subjects};
use futures::StreamExt;
use rand::Rng;

/// One simulated device's batch of readings, as JSON.
pub fn sensor_batch(device: &str, readings: usize, rng: &mut impl Rng) -> String {
    let values: Vec<String> = (0..readings)
        .map(|i| {
            // A spike now and then is what the edge function should flag.
            let base = 21.0 + rng.random_range(-0.5..0.5);
            let value = if rng.random_ratio(1, 12) {
                base + 15.0
            } else {
                base
            };
            format!("{{\"t\":{i},\"value\":{value:.2}}}")
        })
        .collect();
    format!(
        "{{\"device\":\"{device}\",\"sensor\":\"temperature\",\"readings\":[{}]}}",
        values.join(",")
    )
}

/// Publishes `devices × events` events to `function` and prints each result.
/// Returns how many came back ok.
pub async fn run(
    client: &async_nats::Client,
    subjects: &Subjects,
    function: &str,
    devices: usize,
    events: usize,
    wait: Duration,
) -> anyhow::Result<usize> {
    let mut results = client.subscribe(subjects.result(function)).await?;
    // Events are published where devices are: the connected server's domain.
    let js = async_nats::jetstream::new(client.clone());
    let mut pending = HashSet::new();
    let run = uuid::Uuid::new_v4().simple().to_string();
    {
        let mut rng = rand::rng();
        for e in 0..events {
            for d in 0..devices {
                let device = format!("sensor-{d:02}");
                let msg_id = format!("{device}-{e}-{}", &run[..8]);
                let mut headers = HeaderMap::new();
                headers.insert(h::MSG_ID, msg_id.as_str());
                let body = sensor_batch(&device, 24, &mut rng);
                let ack = js
                    .publish_with_headers(subjects.event(function), headers, body.into())
                    .await?;
                drop(ack); // acked below in one flush
                pending.insert(msg_id);
            }
        }
    }
    js.wait_for_acks().await;
    println!(
        "published {} events to {}",
        pending.len(),
        subjects.event(function)
    );
    let deadline = Instant::now() + wait;
    let mut ok = 0;
    while !pending.is_empty() {
        let Ok(Some(message)) = tokio::time::timeout_at(deadline.into(), results.next()).await
        else {
            break;
        };
        let headers = message.headers.clone().unwrap_or_default();
        let Some(id) = reply::get(&headers, h::MSG_ID).filter(|id| pending.remove(id)) else {
            continue; // someone else's result
        };
        let node = reply::get(&headers, h::NODE).unwrap_or_else(|| "-".into());
        let tier = reply::get(&headers, h::TIER).unwrap_or_else(|| "-".into());
        let ms = reply::get(&headers, h::DURATION_MS).unwrap_or_else(|| "-".into());
        match reply::outcome(Some(&headers)) {
            Outcome::Ok => {
                ok += 1;
                println!(
                    "{id:<24} ran on {node} ({tier}) in {ms} ms: {}",
                    String::from_utf8_lossy(&message.payload).trim()
                );
            }
            Outcome::Error {
                raw_code, message, ..
            } => println!("{id:<24} error {raw_code}: {message}"),
            Outcome::Unknown => println!("{id:<24} unreadable result"),
        }
    }
    if !pending.is_empty() {
        println!(
            "{} events got no result within {}s",
            pending.len(),
            wait.as_secs()
        );
    }
    Ok(ok)
}
