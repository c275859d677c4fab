//! The cost of one placement decision, [`comfaas_placement::choose`], with
//! 10, 100 and 1,000 nodes, each with a history of the function (issue 14:
//! at most 50 µs at 1,000 nodes). Run: `cargo bench -p comfaas-placement`.
//!
//! The nodes are as a busy site would show them: edge and cloud, measured
//! round trips and fetch throughputs, run times fitted at two process
//! counts, a few runs under way and queued, some of this dispatcher's own
//! in flight, and a few inputs in each cache; the invocation fetches an
//! input one node in ten holds.

#![allow(missing_docs)] // criterion's macros make undocumented items

use std::hint::black_box;
use std::sync::Arc;

use comfaas_placement::{choose, NodeView, Request, RunFit};
use comfaas_schemas::{CachedInputs, Placement, Procs, Tier};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use rand::SeedableRng;

/// Node `i` of a site of many, deterministic.
fn node(i: usize) -> NodeView {
    let tier = if i.is_multiple_of(4) {
        Tier::Edge
    } else {
        Tier::Cloud
    };
    let spread = (i % 17) as f64;
    let mut small = RunFit::new(1_000_000, 200.0 + 10.0 * spread);
    small.update(20_000_000, 900.0 + 20.0 * spread);
    let wide = RunFit::new(1_000_000, 80.0 + 5.0 * spread);
    let held: Vec<String> = (0..8).map(|k| format!("SHA-256=input-{i}-{k}")).collect();
    let held = if i.is_multiple_of(10) {
        [held, vec!["SHA-256=wanted".to_owned()]].concat()
    } else {
        held
    };
    let in_flight = (i % 3) as u32;
    NodeView {
        node: format!("node-{i}"),
        tier,
        alive: true,
        serves: true,
        install: None,
        slots: 4,
        running: (i % 5) as u32,
        queued: (i % 2) as u32,
        queue_capacity: 16,
        in_flight,
        ahead_ms: (0..in_flight).map(|k| 100.0 * f64::from(k + 1)).collect(),
        max_procs: if tier == Tier::Edge { 4 } else { 16 },
        rtt_ms: Some(1.0 + spread * 3.0),
        fetch_bytes_per_s: Some(10e6 + spread * 20e6),
        fetch_failing: i % 50 == 7,
        runs: vec![(1, small), (4, wide)],
        cached_inputs: Arc::new(CachedInputs::of(&held)),
    }
}

fn decisions(c: &mut Criterion) {
    let mut group = c.benchmark_group("choose");
    let placement = Placement::Auto;
    let request = Request {
        function: "f",
        placement: &placement,
        procs: Procs::exactly(1),
        input_bytes: 16_000_000,
        inline_bytes: 0,
        input_digest: Some("SHA-256=wanted"),
    };
    for count in [10, 100, 1000] {
        let nodes: Vec<NodeView> = (0..count).map(node).collect();
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        group.bench_with_input(BenchmarkId::from_parameter(count), &nodes, |b, nodes| {
            b.iter(|| choose(black_box(nodes), black_box(&request), &mut rng));
        });
    }
    group.finish();
}

criterion_group!(benches, decisions);
criterion_main!(benches);
