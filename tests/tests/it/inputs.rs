//! Large inputs through the object store: streamed to the function, cached
//! by digest on the node, and every failure a clear error; the stores sized
//! to the disk the server allows.

#![allow(clippy::unwrap_used)] // tests fail loudly by design

use async_nats::HeaderMap;
use comfaas_platform::auth::Role;
use comfaas_schemas::names::headers as h;
use comfaas_schemas::{decode, encode, InputObject, Invocation, NodeLoad};
use comfaas_tests::{header, local_pi, points, repo_root, request, NodeSpec, Platform, Security};
use futures::StreamExt;

fn with_object(name: &str, procs: Option<u32>) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(h::INPUT_OBJECT, name);
    if let Some(n) = procs {
        headers.insert(h::PROCS, n.to_string().as_str());
    }
    headers
}

async fn next_load(p: &Platform, node: &str) -> NodeLoad {
    let mut loads = p
        .client
        .subscribe(p.subjects.node_load(node))
        .await
        .unwrap();
    decode(&loads.next().await.unwrap().payload).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_50_mb_input_gives_the_local_answer_and_is_fetched_once() {
    let p = Platform::start().await;
    drop(p.dispatcher().await);
    drop(p.executor(NodeSpec::edge("edge-1")).await);
    for name in ["pi-mpi-c", "pi-mpi-rs", "pi-mpi-py"] {
        p.deploy(&repo_root().join("functions").join(name), &["edge-1"])
            .await;
    }
    let data = points(50 * 1024 * 1024 / 8, 11);
    let expected = local_pi(&data);
    let object = p.upload_input(&data).await;
    let mut fetched_after_first = None;
    for (name, procs) in [
        ("pi-mpi-c", 2),
        ("pi-mpi-rs", 2),
        ("pi-mpi-py", 2),
        ("pi-mpi-c", 1),
    ] {
        let reply = p
            .invoke_bytes(name, Vec::new(), with_object(&object, Some(procs)))
            .await;
        assert_eq!(
            header(&reply, h::STATUS),
            "ok",
            "{name}: {:?}",
            reply.headers
        );
        let out: serde_json::Value = serde_json::from_slice(&reply.payload).unwrap();
        assert_eq!(out["points"], data.len() / 8, "{name}");
        assert!(
            (out["pi"].as_f64().unwrap() - expected).abs() < 1e-9,
            "{name}: {out}"
        );
        let load = next_load(&p, "edge-1").await;
        match fetched_after_first {
            None => {
                assert_eq!(load.input_fetched_bytes, data.len() as u64, "fetched once");
                assert!(load.input_fetch_bytes_per_s > 0.0);
                fetched_after_first = Some(load.input_fetched_bytes);
            }
            Some(bytes) => {
                assert_eq!(load.input_fetched_bytes, bytes, "{name}: fetched again");
                assert!(load.input_cache_hits >= 1);
            }
        }
    }
    // Script mode gets the object on stdin.
    let dir = p.count_function();
    p.deploy(&dir, &["edge-1"]).await;
    let reply = p
        .invoke_bytes("count", Vec::new(), with_object(&object, None))
        .await;
    assert_eq!(
        String::from_utf8_lossy(&reply.payload).trim(),
        data.len().to_string()
    );
}

open_and_secure!(
    input_object_errors_are_clear_and_leave_nothing_behind,
    a_large_output_comes_back_as_an_object
);

async fn input_object_errors_are_clear_and_leave_nothing_behind(security: Security) {
    let p = Platform::start_with(security).await;
    drop(p.dispatcher().await);
    drop(
        p.executor(NodeSpec {
            input_cache_bytes: 1 << 20,
            ..NodeSpec::edge("edge-1")
        })
        .await,
    );
    let dir = p.count_function();
    p.deploy(&dir, &["edge-1"]).await;

    // No such object.
    let reply = p
        .invoke_bytes("count", Vec::new(), with_object("sha256-nope", None))
        .await;
    assert_eq!(header(&reply, h::ERROR_CODE), "404", "{:?}", reply.headers);
    assert!(
        header(&reply, h::ERROR).contains("input object `sha256-nope` is not in comfaas_inputs")
    );

    // Body and object at once.
    let small = p.upload_input(&[7u8; 1000]).await;
    let reply = p
        .invoke_bytes("count", b"body".to_vec(), with_object(&small, None))
        .await;
    assert_eq!(header(&reply, h::ERROR_CODE), "400");

    // It works when it fits.
    let reply = p
        .invoke_bytes("count", Vec::new(), with_object(&small, None))
        .await;
    assert_eq!(String::from_utf8_lossy(&reply.payload).trim(), "1000");

    // Larger than the node's cache: 507, and nothing half-written.
    let big = p.upload_input(&vec![1u8; 2 << 20]).await;
    let reply = p
        .invoke_bytes("count", Vec::new(), with_object(&big, None))
        .await;
    assert_eq!(header(&reply, h::ERROR_CODE), "507", "{:?}", reply.headers);

    // A digest that does not match the stored object (tampered or replaced
    // since dispatch): 422, straight to the node's work subject.
    let invocation = Invocation {
        input_object: Some(InputObject {
            name: small.clone(),
            size: 1000,
            digest: "SHA-256=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=".into(),
        }),
        ..comfaas_tests::invocation("tampered", "count")
    };
    // Only a dispatcher may send work to a node.
    let dispatcher = p.nats.client_as(&Role::Dispatcher).await;
    let reply = request(
        &dispatcher,
        &p.subjects.work("edge-1"),
        HeaderMap::new(),
        encode(&invocation).unwrap().into(),
    )
    .await;
    assert_eq!(header(&reply, h::ERROR_CODE), "422", "{:?}", reply.headers);
    let cache = p.scratch.path().join("nodes/edge-1/inputs");
    let left: Vec<String> = std::fs::read_dir(&cache)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        left.iter().all(|f| !f.starts_with(".part-")),
        "half-written files: {left:?}"
    );
    assert_eq!(left.len(), 1, "only the small input is cached: {left:?}");
    p.assert_no_violations();
}

async fn a_large_output_comes_back_as_an_object(security: Security) {
    let p = Platform::start_with(security).await;
    drop(p.dispatcher().await);
    drop(p.executor(NodeSpec::edge("edge-1")).await);
    let dir = p.function(
        "big",
        "",
        &[("main.py", "import sys\nn = int(sys.stdin.read())\nsys.stdout.buffer.write(bytes(range(256)) * (n // 256))\n")],
    );
    p.deploy(&dir, &["edge-1"]).await;
    // Small: inline, as always.
    let reply = p.invoke("big", "1024").await;
    assert_eq!(reply.payload.len(), 1024, "{:?}", reply.headers);
    assert_eq!(header(&reply, h::OUTPUT_OBJECT), "");
    // 5 MB: over the server's 1 MB max payload, so in comfaas_outputs.
    let reply = p.invoke("big", &(5 << 20).to_string()).await;
    assert_eq!(header(&reply, h::STATUS), "ok", "{:?}", reply.headers);
    assert!(reply.payload.is_empty());
    let name = header(&reply, h::OUTPUT_OBJECT);
    assert_eq!(name, header(&reply, h::INVOCATION_ID));
    // The device that asked reads it by name.
    let js = async_nats::jetstream::new(p.device.clone());
    let store = comfaas_platform::resources::outputs_store(&js)
        .await
        .unwrap();
    let mut object = store.get(&name).await.unwrap();
    let mut data = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut object, &mut data)
        .await
        .unwrap();
    assert_eq!(data.len(), 5 << 20);
    assert!(data
        .chunks(256)
        .all(|c| c == (0..=255u8).collect::<Vec<_>>().as_slice()));

    // The CLI fetches it transparently.
    let out = p.scratch.path().join("out.bin");
    let status = std::process::Command::new(comfaas_tests::binary("comfaas"))
        .args(p.cli_args("device"))
        .args(["invoke", "big", "--data", "3145728", "--output-file"])
        .arg(&out)
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(std::fs::metadata(&out).unwrap().len(), 3 << 20);
    p.assert_no_violations();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_output_bucket_is_507_and_leaves_no_object() {
    let p = Platform::start().await;
    // The outputs bucket exists already, and is small.
    let js = async_nats::jetstream::new(p.client.clone());
    js.create_object_store(async_nats::jetstream::object_store::Config {
        bucket: comfaas_schemas::names::OUTPUTS_BUCKET.to_owned(),
        max_bytes: 2 << 20,
        ..Default::default()
    })
    .await
    .unwrap();
    drop(p.dispatcher().await);
    drop(p.executor(NodeSpec::edge("edge-1")).await);
    let dir = p.function(
        "big",
        "",
        &[(
            "main.py",
            "import sys\nsys.stdout.buffer.write(b'x' * (5 << 20))\n",
        )],
    );
    p.deploy(&dir, &["edge-1"]).await;
    let reply = p.invoke("big", "").await;
    assert_eq!(header(&reply, h::ERROR_CODE), "507", "{:?}", reply.headers);
    assert!(
        header(&reply, h::ERROR).contains("cannot store the output"),
        "{:?}",
        reply.headers
    );
    let store = comfaas_platform::resources::outputs_store(&js)
        .await
        .unwrap();
    let listed: Vec<_> = store.list().await.unwrap().collect().await;
    assert!(listed.is_empty(), "half-written outputs: {listed:?}");
}

/// On a server that may use only 1 GB of disk, the 16 GiB stores are
/// created smaller instead of failing the service that opens them.
#[tokio::test]
async fn stores_shrink_to_the_disk_the_server_allows() {
    use async_nats::jetstream;
    use comfaas_platform::resources::{
        inputs_store, outputs_store, DATA_MAX_BYTES, MIN_OBJECT_STORE_BYTES,
    };
    use comfaas_schemas::names;
    use comfaas_testbed::server::{EmbeddedServer, ServerOptions};

    let server = EmbeddedServer::start(ServerOptions {
        config_text: Some("jetstream {\n  max_file_store: 1GB\n}\n".to_owned()),
        ..ServerOptions::default()
    })
    .await
    .unwrap();
    let client = async_nats::connect(server.url()).await.unwrap();
    let js = jetstream::new(client);
    let inputs = inputs_store(&js).await.unwrap();
    let outputs = outputs_store(&js).await.unwrap();
    let mut sizes = Vec::new();
    for bucket in [names::INPUTS_BUCKET, names::OUTPUTS_BUCKET] {
        let mut stream = js
            .get_stream(names::object_store_stream(bucket))
            .await
            .unwrap();
        sizes.push(stream.info().await.unwrap().config.max_bytes);
    }
    assert!(
        sizes
            .iter()
            .all(|s| *s < DATA_MAX_BYTES && *s >= MIN_OBJECT_STORE_BYTES),
        "{sizes:?}"
    );
    // Usable: a put and a get.
    inputs
        .put("x", &mut std::io::Cursor::new(b"data".to_vec()))
        .await
        .unwrap();
    assert!(outputs.get("missing").await.is_err());
    server.stop().await;
}

/// Anyone who may put inputs may put any bytes under any name. An object
/// named for its content (`sha256-<hex>`, as the CLI names uploads) that
/// holds other bytes is refused (422) instead of run as if it were the
/// named input, and the owner's next upload of the real content replaces
/// it instead of reusing it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_input_named_for_other_content_is_refused_and_replaced() {
    let p = Platform::start().await;
    drop(p.dispatcher().await);
    drop(p.executor(NodeSpec::edge("edge-1")).await);
    let count = p.count_function();
    p.deploy(&count, &["edge-1"]).await;

    let genuine = b"the owner's genuine input".to_vec();
    let claimed = {
        use sha2::Digest;
        format!("sha256-{}", hex::encode(sha2::Sha256::digest(&genuine)))
    };
    // The forger puts other bytes, of the same size, under that name.
    let forged = b"THE FORGER'S SWAPPED INPUT".to_vec();
    let forged = &forged[..genuine.len()];
    let file = p.scratch.path().join("forged");
    std::fs::write(&file, forged).unwrap();
    let js = async_nats::jetstream::new(p.device.clone());
    let store = comfaas_platform::resources::inputs_store(&js)
        .await
        .unwrap();
    comfaas_platform::objects::put_file(&store, &claimed, &file)
        .await
        .unwrap();

    let refused = p
        .invoke_with("count", "", with_object(&claimed, None))
        .await;
    assert_eq!(
        header(&refused, h::ERROR_CODE),
        "422",
        "{:?}",
        refused.headers
    );
    assert!(
        header(&refused, h::ERROR).contains("named for content it does not hold"),
        "{:?}",
        refused.headers
    );

    // The owner uploads the genuine bytes: not "reused", and now it runs.
    assert_eq!(p.upload_input(&genuine).await, claimed);
    let answered = p
        .invoke_with("count", "", with_object(&claimed, None))
        .await;
    assert_eq!(header(&answered, h::STATUS), "ok", "{:?}", answered.headers);
    assert_eq!(
        String::from_utf8_lossy(&answered.payload).trim(),
        genuine.len().to_string()
    );
}
