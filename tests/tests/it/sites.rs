//! Two sites over a NATS leaf link, with the server configs of `nats/`: the
//! edge (dispatcher, registry, inputs) and a cloud hub whose executor is
//! chosen, reads the edge's registry and input objects across the link, and
//! answers the requester at the edge.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use std::time::Duration;

use async_nats::HeaderMap;
use comfaas_schemas::names::headers as h;
use comfaas_testbed::server::{wait_for_leaf_link, EmbeddedServer, ServerOptions};
use comfaas_tests::{header, repo_root, NodeSpec, Platform};

fn configs() -> std::path::PathBuf {
    repo_root().join("nats")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The cloud site of `nats/hub.conf`, taking leaf links on `leaf_port`.
async fn cloud_hub(leaf_port: u16) -> EmbeddedServer {
    let options = ServerOptions::hub(&configs(), "cloud", leaf_port);
    EmbeddedServer::start(comfaas_tests::limited(options))
        .await
        .unwrap()
}

/// The edge site of `nats/leaf.conf`, joining the hub at `leaf_port`.
async fn edge_leaf(leaf_port: u16) -> EmbeddedServer {
    let options = ServerOptions::leaf(&configs(), "edge", leaf_port);
    EmbeddedServer::start(comfaas_tests::limited(options))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cloud_executor_serves_the_edge_through_a_leaf_link() {
    let leaf_port = free_port();
    let cloud = cloud_hub(leaf_port).await;
    let edge = edge_leaf(leaf_port).await;
    let hub = async_nats::connect(cloud.url()).await.unwrap();
    let p = Platform::on(edge).await;
    link_up(&p.client, &hub).await;

    drop(p.dispatcher().await);
    drop(
        p.executor(NodeSpec {
            ..NodeSpec::cloud_at("chicago-1", cloud.url())
        })
        .await,
    );
    p.deploy(&repo_root().join("functions/hello"), &["chicago-1"])
        .await;
    let reply = p.invoke("hello", r#"{"name":"edge device"}"#).await;
    assert_eq!(header(&reply, h::STATUS), "ok", "{:?}", reply.headers);
    assert_eq!(header(&reply, h::NODE), "chicago-1");
    assert_eq!(header(&reply, h::TIER), "cloud");

    // An input object kept at the edge, fetched by the cloud node when chosen.
    count_edge_input(&p, "chicago-1", 3 << 20, None).await;
    drop(cloud);
}

/// Deploys `count` (prints its input's length) to `node`, uploads `size`
/// bytes at the edge and invokes it with that input object, forced onto
/// `forced` if given: the node must fetch the whole input.
async fn count_edge_input(p: &Platform, node: &str, size: usize, forced: Option<&str>) {
    p.deploy(&p.count_function(), &[node]).await;
    let object = p.upload_input(&vec![5u8; size]).await;
    let mut headers = HeaderMap::new();
    headers.insert(h::INPUT_OBJECT, object.as_str());
    if let Some(placement) = forced {
        headers.insert(h::PLACEMENT, placement);
    }
    let reply = p.invoke_bytes("count", Vec::new(), headers).await;
    assert_eq!(header(&reply, h::STATUS), "ok", "{:?}", reply.headers);
    assert_eq!(header(&reply, h::NODE), node);
    assert_eq!(
        String::from_utf8_lossy(&reply.payload).trim(),
        size.to_string()
    );
}

async fn link_up(edge: &async_nats::Client, hub: &async_nats::Client) {
    wait_for_leaf_link(edge, hub, Duration::from_secs(30))
        .await
        .expect("leaf link up");
}

async fn mirrored(hub: &async_nats::Client, want: u64) {
    let js = async_nats::jetstream::new(hub.clone());
    let name = comfaas_schemas::names::events_backup_stream("edge");
    // A mirror whose source was unreachable retries on a backoff: within
    // seconds on nats-server 2.9, after 30-40 s on 2.15.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let mut stream = js.get_stream(&name).await.unwrap();
        let have = stream.info().await.unwrap().state.messages;
        if have >= want {
            assert_eq!(have, want);
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "backup holds {have} of {want} events"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_events_are_backed_up_in_the_cloud_across_a_cut_link() {
    let leaf_port = free_port();
    let cloud_store = tempfile::tempdir().unwrap();
    let cloud_options = |port: Option<u16>| {
        comfaas_tests::limited(ServerOptions {
            port,
            store_dir: Some(cloud_store.path().to_path_buf()),
            ..ServerOptions::hub(&configs(), "cloud", leaf_port)
        })
    };
    let cloud = EmbeddedServer::start(cloud_options(None)).await.unwrap();
    let cloud_port = cloud.port();
    let edge = edge_leaf(leaf_port).await;
    let edge_client = async_nats::connect(edge.url()).await.unwrap();
    let hub = async_nats::connect(cloud.url()).await.unwrap();
    link_up(&edge_client, &hub).await;

    let subjects = comfaas_schemas::names::Subjects::default();
    let edge_js = async_nats::jetstream::new(edge_client.clone());
    comfaas_platform::resources::events_stream(&edge_js, &subjects)
        .await
        .unwrap();
    comfaas_platform::resources::results_stream(&edge_js, &subjects)
        .await
        .unwrap();
    let out = std::process::Command::new(comfaas_tests::binary("comfaas"))
        .args(["--nats-url", cloud.url(), "backup-edge", "--domain", "edge"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let publish = |n: u32| {
        let js = edge_js.clone();
        let subject = subjects.event("hello");
        async move {
            js.publish(subject, format!("{{\"n\":{n}}}").into())
                .await
                .unwrap()
                .await
                .unwrap();
        }
    };
    publish(1).await;
    mirrored(&hub, 1).await;

    // The link goes down: the hub stops. The edge keeps taking events.
    drop(hub);
    cloud.stop().await;
    publish(2).await;
    publish(3).await;

    // Back up, same store and ports: the backup catches up.
    let cloud = EmbeddedServer::start(cloud_options(Some(cloud_port)))
        .await
        .unwrap();
    let hub = async_nats::connect(cloud.url()).await.unwrap();
    link_up(&edge_client, &hub).await;
    mirrored(&hub, 3).await;
}

/// Sites started as `comfaas dev --sites` does: the edge a leaf node of two
/// cloud sites, one through an emulated link. The dispatcher measures each
/// node's round trip with pings before any work is placed, the link's
/// latency is felt in it, `comfaas nodes` shows it per site, and a cloud
/// node chosen by force fetches an edge input across its link. Both paths
/// cross a shared uplink: the site without a link of its own gets an
/// instant one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emulated_links_are_felt_and_each_site_shows_its_round_trip() {
    use comfaas_testbed::sites::{Sites, SitesOptions};
    let sites = Sites::start(SitesOptions {
        configs: configs(),
        clouds: vec!["chicago".to_owned(), "miami".to_owned()],
        links: [("miami".to_owned(), "40ms/50mbit".parse().unwrap())].into(),
        uplink: Some(500_000_000),
        edge_port: None,
        security: None,
        edge_mqtt: None,
        max_file_store: Some(comfaas_tests::TEST_MAX_FILE_STORE),
    })
    .await
    .unwrap();
    let Sites { edge, clouds, .. } = sites;
    let chicago = clouds[0].link.as_ref().expect("behind the uplink");
    assert_eq!(chicago.spec().to_string(), "0ms");
    let p = Platform::on(edge.server).await;
    drop(p.dispatcher().await);
    drop(p.executor(NodeSpec::edge("edge-1")).await);
    for site in &clouds {
        drop(
            p.executor(NodeSpec {
                ..NodeSpec::cloud_at(&format!("{}-1", site.name), site.server.url())
            })
            .await,
        );
    }

    // Round trips come from pings: no invocation has run yet.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let rtt = loop {
        let metrics = p.next_metrics().await;
        let rtt: std::collections::BTreeMap<String, f64> = metrics
            .nodes
            .iter()
            .filter_map(|n| Some((n.node.clone(), n.rtt_ms?)))
            .collect();
        if rtt.len() == 3 {
            break rtt;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "round trips measured: {rtt:?}"
        );
    };
    // 40 ms each way.
    assert!(rtt["miami-1"] >= 80.0, "{rtt:?}");
    assert!(rtt["chicago-1"] < rtt["miami-1"], "{rtt:?}");

    let out = std::process::Command::new(comfaas_tests::binary("comfaas"))
        .args(["--nats-url", p.nats.url(), "nodes"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    let miami = text
        .lines()
        .find(|l| l.starts_with("miami-1"))
        .unwrap_or_else(|| panic!("no miami-1 row in\n{text}"));
    let columns: Vec<&str> = text.lines().next().unwrap().split_whitespace().collect();
    let at = columns.iter().position(|c| *c == "RTT_MS").unwrap();
    let shown: f64 = miami.split_whitespace().nth(at).unwrap().parse().unwrap();
    assert!(shown >= 80.0, "{text}");

    // An input at the edge, fetched across the emulated link.
    count_edge_input(&p, "miami-1", 2 << 20, Some("node:miami-1")).await;
    drop(clouds);
}

/// `comfaas` at `url` with `args`: (success, stdout, stderr).
fn cli(url: &str, args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(comfaas_tests::binary("comfaas"))
        .args(["--nats-url", url])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Whether the server at `client` has the stream `name` (in its own domain).
async fn has_stream(client: &async_nats::Client, name: &str) -> bool {
    async_nats::jetstream::new(client.clone())
        .get_stream(name)
        .await
        .is_ok()
}

/// On a cloud site, `ls` without `--js-domain` says the registry is in the
/// edge's domain (and makes no empty registry there); with it, it lists.
/// `backup-edge` refuses a domain that does not answer, or holds no
/// events, before creating any mirror.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cloud_site_points_at_the_edge_domain_and_backup_checks_it() {
    let leaf_port = free_port();
    let cloud = cloud_hub(leaf_port).await;
    let edge = edge_leaf(leaf_port).await;
    let hub = async_nats::connect(cloud.url()).await.unwrap();
    let p = Platform::on(edge).await;
    link_up(&p.client, &hub).await;
    comfaas::deploy::deploy_dir(&p.registry, &repo_root().join("functions/hello"))
        .await
        .unwrap();
    let registry = comfaas_schemas::names::kv_stream(comfaas_schemas::names::FUNCTIONS_BUCKET);

    let (ok, stdout, stderr) = cli(cloud.url(), &["ls"]);
    assert!(!ok, "{stdout}");
    assert!(
        stderr.contains("this site (JetStream domain `cloud`) has no function registry")
            && stderr.contains("`comfaas --js-domain edge ls`"),
        "{stderr}"
    );
    // Nor does a deploy or an rm store or remove anything on the wrong site.
    let hello = repo_root().join("functions/hello");
    for args in [
        &["deploy", hello.to_str().unwrap(), "--wait", "0"][..],
        &["rm", "hello"],
    ] {
        let (ok, _, stderr) = cli(cloud.url(), args);
        assert!(
            !ok && stderr.contains("it is in the edge's domain `edge`; give `--js-domain edge`"),
            "{args:?}: {stderr}"
        );
    }
    assert!(
        !has_stream(&hub, &registry).await,
        "a registry was made on the cloud site"
    );
    let (ok, stdout, stderr) = cli(cloud.url(), &["--js-domain", "edge", "ls"]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("hello"), "{stdout}");
    // At the edge, where the registry is, nothing to say.
    let (ok, stdout, stderr) = cli(p.nats.url(), &["ls"]);
    assert!(ok && stdout.contains("hello"), "{stdout}{stderr}");

    for (domain, expect) in [
        (
            "nope",
            "JetStream domain `nope` does not answer from this site",
        ),
        (
            "cloud",
            "JetStream domain `cloud` has no COMFAAS_EVENTS stream",
        ),
        ("a.b", "is not a JetStream domain name"),
    ] {
        let (ok, _, stderr) = cli(cloud.url(), &["backup-edge", "--domain", domain]);
        assert!(!ok && stderr.contains(expect), "{domain}: {stderr}");
        let backup = comfaas_schemas::names::events_backup_stream(domain);
        assert!(
            !has_stream(&hub, &backup).await,
            "{domain}: a mirror was made"
        );
    }
    drop(cloud);
}

/// Data where it already is (issue 14): an input that a cloud node behind
/// a slow link fetched once goes back to that node, whose cache holds it
/// (no transfer to pay there), although the edge node near the store wins
/// a fresh input of the same size (which the cloud node would fetch across
/// the link).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_input_goes_back_to_the_node_that_holds_it_and_a_fresh_one_to_the_edge() {
    use comfaas_schemas::{decode, NodeLoad};
    use comfaas_testbed::sites::{Sites, SitesOptions};
    use futures::StreamExt as _;
    let sites = Sites::start(SitesOptions {
        configs: configs(),
        clouds: vec!["miami".to_owned()],
        links: [("miami".to_owned(), "2ms/100mbit".parse().unwrap())].into(),
        uplink: None,
        edge_port: None,
        security: None,
        edge_mqtt: None,
        max_file_store: Some(comfaas_tests::TEST_MAX_FILE_STORE),
    })
    .await
    .unwrap();
    let Sites { edge, clouds, .. } = sites;
    let p = Platform::on(edge.server).await;
    drop(p.dispatcher().await);
    drop(p.executor(NodeSpec::edge("edge-1")).await);
    drop(
        p.executor(NodeSpec::cloud_at("miami-1", clouds[0].server.url()))
            .await,
    );
    p.deploy(&p.count_function(), &["edge-1", "miami-1"]).await;
    let count = |input: Option<&str>, placement: &str| {
        let mut headers = HeaderMap::new();
        headers.insert(h::PLACEMENT, placement);
        if let Some(object) = input {
            headers.insert(h::INPUT_OBJECT, object);
        }
        p.invoke_bytes("count", Vec::new(), headers)
    };
    // Both nodes learn the function's run time, without an input.
    for node in ["edge-1", "miami-1"] {
        let reply = count(None, &format!("node:{node}")).await;
        assert_eq!(header(&reply, h::STATUS), "ok", "{:?}", reply.headers);
    }
    // The edge node learns how long a run on an input of that size takes
    // there, and how fast it fetches one.
    let size = 48 << 20;
    let taught = p.upload_input(&vec![3u8; size]).await;
    let reply = count(Some(&taught), "node:edge-1").await;
    assert_eq!(header(&reply, h::STATUS), "ok", "{:?}", reply.headers);
    // The first run of another is forced onto the cloud node, which
    // fetches it across the link (and learns how slow that is).
    let held = p.upload_input(&vec![1u8; size]).await;
    let mut loads = p
        .client
        .subscribe(p.subjects.node_load("miami-1"))
        .await
        .unwrap();
    let reply = count(Some(&held), "node:miami-1").await;
    assert_eq!(header(&reply, h::NODE), "miami-1", "{:?}", reply.headers);
    assert_eq!(
        String::from_utf8_lossy(&reply.payload).trim(),
        size.to_string()
    );
    // Its reports now say it holds the input; the dispatcher hears the
    // same reports (wait for one more, so it surely has).
    let mut holding = 0;
    while holding < 2 {
        let message = tokio::time::timeout(Duration::from_secs(10), loads.next())
            .await
            .expect("miami-1 reports")
            .unwrap();
        let load: NodeLoad = decode(&message.payload).unwrap();
        if !load.cached_inputs.is_empty() {
            holding += 1;
        }
    }
    // Placed automatically, the held input goes back to the cloud node...
    let reply = count(Some(&held), "auto").await;
    assert_eq!(header(&reply, h::STATUS), "ok", "{:?}", reply.headers);
    assert_eq!(header(&reply, h::NODE), "miami-1", "{:?}", reply.headers);
    // ...and a fresh input of the same size to the edge, near the store.
    let fresh = p.upload_input(&vec![2u8; size]).await;
    let reply = count(Some(&fresh), "auto").await;
    assert_eq!(header(&reply, h::STATUS), "ok", "{:?}", reply.headers);
    assert_eq!(header(&reply, h::NODE), "edge-1", "{:?}", reply.headers);
    assert_eq!(
        String::from_utf8_lossy(&reply.payload).trim(),
        size.to_string()
    );
    drop(clouds);
}
