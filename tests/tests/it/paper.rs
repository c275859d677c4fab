//! The paper's Pi job (`tests/functions/paper-pi`, run by
//! `comfaas-bench-paper`): its count is exact whatever the number of
//! ranks, rank 0 reads the input that travelled, the profile's compute time
//! and per-site delay are waited and reported apart from what was
//! computed, and a missing or broken profile is a clear error.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use async_nats::HeaderMap;
use comfaas_schemas::names::headers as h;
use comfaas_tests::paper::{bundle, count_inside, BLOCKS};
use comfaas_tests::{header, NodeSpec, Platform};

fn profile(node: &str, per_block: u64) -> serde_json::Value {
    serde_json::json!({
        "blocks": BLOCKS,
        "points_per_block": per_block,
        "nodes": {
            node: {
                "compute_s": {"1": 0.0, "2": 1.5, "4": 1.5},
                "site_delay_s": 0.25,
            }
        }
    })
}

/// What an error reply says: its error header and its body.
fn error_of(reply: &async_nats::Message) -> String {
    format!(
        "{} {}",
        header(reply, h::ERROR),
        String::from_utf8_lossy(&reply.payload)
    )
}

async fn run(p: &Platform, function: &str, object: &str, procs: u32) -> async_nats::Message {
    let mut headers = HeaderMap::new();
    headers.insert(h::INPUT_OBJECT, object);
    headers.insert(h::PROCS, procs.to_string().as_str());
    p.invoke_bytes(function, Vec::new(), headers).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_paper_job_counts_exactly_reads_its_input_and_waits_out_its_profile() {
    let p = Platform::start().await;
    drop(p.dispatcher().await);
    drop(p.executor(NodeSpec::edge("edge-1")).await);
    let per_block = 2_000;
    let dir = bundle(
        &p.scratch.path().join("src"),
        "paper-pi",
        "1.0.0",
        &profile("edge-1", per_block),
    )
    .unwrap();
    p.deploy(&dir, &["edge-1"]).await;
    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let object = p.upload_input(&data).await;
    let expected = count_inside(BLOCKS, per_block);
    for procs in [1, 2, 4] {
        let reply = run(&p, "paper-pi", &object, procs).await;
        assert_eq!(header(&reply, h::STATUS), "ok", "{:?}", reply.headers);
        let out: serde_json::Value = serde_json::from_slice(&reply.payload).unwrap();
        assert_eq!(out["procs"], procs, "{out}");
        assert_eq!(out["node"], "edge-1");
        // The same points whatever the ranks: the exact count.
        assert_eq!(out["inside"], expected, "{out}");
        assert_eq!(out["points"], BLOCKS * per_block);
        assert!((out["pi"].as_f64().unwrap() - std::f64::consts::PI).abs() < 0.02);
        // Rank 0 read the input that travelled.
        assert_eq!(out["input_bytes"], data.len());
        assert_eq!(out["crc32"], crc32fast::hash(&data));
        // The profile's time is reported, and what was computed is apart
        // from what was waited.
        let compute_s = if procs == 1 { 0.0 } else { 1.5 };
        assert_eq!(out["compute_s"], compute_s);
        assert_eq!(out["site_delay_s"], 0.25);
        let computed = out["computed_s"].as_f64().unwrap();
        let waited = out["waited_s"].as_f64().unwrap();
        let over = out["over_s"].as_f64().unwrap();
        assert!(computed > 0.0, "{out}");
        assert!(
            (computed + waited - over - compute_s).abs() < 1e-3 || (over > 0.0 && waited == 0.0),
            "{out}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paper_job_without_a_usable_profile_says_what_is_missing() {
    let p = Platform::start().await;
    drop(p.dispatcher().await);
    drop(p.executor(NodeSpec::edge("edge-1")).await);
    let src = p.scratch.path().join("src");
    // Profiled for another node, and for too few processes.
    let other = bundle(&src, "paper-other", "1.0.0", &profile("cloud-9", 10)).unwrap();
    p.deploy(&other, &["edge-1"]).await;
    let object = p.upload_input(b"some input").await;
    let reply = run(&p, "paper-other", &object, 2).await;
    assert_eq!(header(&reply, h::STATUS), "error");
    let error = error_of(&reply);
    assert!(error.contains("no entry for node `edge-1`"), "{error}");

    let few = bundle(
        &src.join("few"),
        "paper-few",
        "1.0.0",
        &profile("edge-1", 10),
    )
    .unwrap();
    p.deploy(&few, &["edge-1"]).await;
    let reply = run(&p, "paper-few", &object, 3).await;
    let error = error_of(&reply);
    assert!(error.contains("no compute time for 3 processes"), "{error}");

    // Not JSON at all.
    let broken = bundle(
        &src.join("broken"),
        "paper-broken",
        "1.0.0",
        &profile("edge-1", 10),
    )
    .unwrap();
    std::fs::write(broken.join("profile.json"), "{ not json").unwrap();
    p.deploy(&broken, &["edge-1"]).await;
    let reply = run(&p, "paper-broken", &object, 2).await;
    let error = error_of(&reply);
    assert!(error.contains("cannot read the profile"), "{error}");

    // The node keeps serving: the well-profiled job still answers.
    let reply = run(&p, "paper-few", &object, 2).await;
    assert_eq!(header(&reply, h::STATUS), "ok", "{:?}", reply.headers);
}
