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

/// Services started side by side on a server that cannot reserve the
/// stores' full size all probe the disk and create the same streams and
/// stores at once (as two dispatchers do in the fault tests): another's
/// probe or new store taking the room between a probe and a create must
/// not stop a service from starting. Each of six opens the registry and
/// every stream and store a dispatcher opens, in its order, at the same
/// moment. On 1.5 GB the first stores made in full (a gigabyte each) once
/// left no room for the last ones (the outputs store, which an executor
/// waits for: `comfaas dev` on a small disk had no node).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_starting_together_on_a_small_disk_all_open_their_stores() {
    for limit in ["6GB", "1536MB"] {
        services_start_together_on(limit).await;
    }
}

async fn services_start_together_on(limit: &str) {
    use async_nats::jetstream;
    use comfaas_platform::resources as r;
    use comfaas_schemas::names::{self, Subjects};
    use comfaas_testbed::server::{EmbeddedServer, ServerOptions};

    // Each round on an empty server of its own (streams deleted between
    // rounds give their room back a moment later, more so on a busy
    // machine: the next round would find none).
    for round in 0..3 {
        let server = EmbeddedServer::start(ServerOptions {
            config_text: Some(format!("jetstream {{\n  max_file_store: {limit}\n}}\n")),
            ..ServerOptions::default()
        })
        .await
        .unwrap();
        let start = std::sync::Arc::new(tokio::sync::Barrier::new(6));
        let mut services = Vec::new();
        for _ in 0..6 {
            let client = async_nats::connect(server.url()).await.unwrap();
            let start = start.clone();
            services.push(tokio::spawn(async move {
                let js = jetstream::new(client);
                let subjects = Subjects::new("comfaas");
                start.wait().await;
                r::functions_bucket(&js).await?;
                r::events_stream(&js, &subjects).await?;
                r::dlq_stream(&js, &subjects).await?;
                r::results_stream(&js, &subjects).await?;
                r::logs_stream(&js, &subjects, r::LogsLimits::default()).await?;
                r::packages_store(&js).await?;
                r::inputs_store(&js).await?;
                r::outputs_store(&js).await?;
                Ok::<_, comfaas_platform::NatsError>(())
            }));
        }
        for service in services {
            let opened = service.await.unwrap();
            assert!(opened.is_ok(), "{limit}, round {round}: {:?}", opened.err());
        }
        // Every store usable, none left at a probe's size, no probe left.
        let js = jetstream::new(async_nats::connect(server.url()).await.unwrap());
        for bucket in [names::INPUTS_BUCKET, names::OUTPUTS_BUCKET] {
            let mut stream = js
                .get_stream(names::object_store_stream(bucket))
                .await
                .unwrap();
            let size = stream.info().await.unwrap().config.max_bytes;
            assert!(
                (r::MIN_OBJECT_STORE_BYTES / 2..r::DATA_MAX_BYTES).contains(&size),
                "{limit}, round {round}: {bucket} {size}"
            );
        }
        assert!(js.get_stream(names::STORAGE_PROBE_STREAM).await.is_err());
        server.stop().await;
    }
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

/// Anyone who may put inputs may also write an object's info: one that
/// names the genuine content's digest over the forger's chunks makes the
/// CLI's upload look done (the stored digest and size match). The node
/// refuses the forged bytes (422), and `comfaas invoke --input-file` then
/// sends the content again, whole, and gets the genuine answer; it says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_info_claiming_the_content_makes_the_cli_send_it_again() {
    use async_nats::jetstream::object_store::ObjectInfo;
    let p = Platform::start().await;
    drop(p.dispatcher().await);
    drop(p.executor(NodeSpec::edge("edge-1")).await);
    let count = p.count_function();
    p.deploy(&count, &["edge-1"]).await;

    let genuine = b"the owner's genuine input, to be counted".to_vec();
    let genuine_file = p.scratch.path().join("genuine");
    std::fs::write(&genuine_file, &genuine).unwrap();
    let (claimed, digest) = {
        use sha2::Digest;
        let sum = sha2::Sha256::digest(&genuine);
        (
            format!("sha256-{}", hex::encode(sum)),
            format!("SHA-256={}", data_encoding::BASE64URL.encode(&sum)),
        )
    };
    // The forger puts other bytes of the same size under that name, then
    // rewrites the info to claim the genuine digest.
    let forged = b"THE FORGER'S SWAPPED INPUT, NOT TO BE COUNTED".to_vec();
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
    let info: ObjectInfo = store.info(&claimed).await.unwrap();
    let lie = ObjectInfo {
        digest: Some(digest.clone()),
        ..info
    };
    let mut rollup = HeaderMap::new();
    rollup.insert(async_nats::header::NATS_ROLLUP, "sub");
    let subject = comfaas_schemas::names::object_info_subject(
        comfaas_schemas::names::INPUTS_BUCKET,
        &data_encoding::BASE64URL.encode(claimed.as_bytes()),
    );
    js.publish_with_headers(subject, rollup, serde_json::to_vec(&lie).unwrap().into())
        .await
        .unwrap()
        .await
        .unwrap();
    assert_eq!(store.info(&claimed).await.unwrap().digest, Some(digest));
    // The forgery works as far as the store can tell: the node refuses it.
    let refused = p
        .invoke_with("count", "", with_object(&claimed, None))
        .await;
    assert_eq!(
        header(&refused, h::ERROR_CODE),
        "422",
        "{:?}",
        refused.headers
    );

    let out = std::process::Command::new(comfaas_tests::binary("comfaas"))
        .args(p.cli_args("device"))
        .args(["invoke", "count", "--verbose", "--input-file"])
        .arg(&genuine_file)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("already stored"), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "the stored input {claimed} did not hold this content; sent it again"
        )),
        "{stderr}"
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        genuine.len().to_string()
    );
    // Replaced for everyone: the next call by name runs the genuine bytes.
    let answered = p
        .invoke_with("count", "", with_object(&claimed, None))
        .await;
    assert_eq!(header(&answered, h::STATUS), "ok", "{:?}", answered.headers);
    assert_eq!(
        String::from_utf8_lossy(&answered.payload).trim(),
        genuine.len().to_string()
    );
    p.assert_no_violations();
}

/// nats-py: writes each input from a fast generator (blocks of
/// `random.randbytes`), hashes it, puts it into the inputs store in chunks
/// of the given size (0: nats-py's default, 128 KiB, as `nats object put`
/// uses), removes the file, and prints `name size chunks sha256-hex`.
const NATS_PY_PUT: &str = r#"
import asyncio, hashlib, os, random, sys
import nats
from nats.js.api import ObjectMeta, ObjectMetaOptions

BLOCK = 16 << 20

async def main():
    url, bucket, folder = sys.argv[1:4]
    nc = await nats.connect(url)
    js = nc.jetstream(timeout=60)
    store = await js.object_store(bucket)
    for spec in sys.argv[4:]:
        name, size, seed, chunk = spec.split(":")
        size, chunk = int(size), int(chunk)
        path = os.path.join(folder, "upload-" + name)
        rng, digest = random.Random(int(seed)), hashlib.sha256()
        with open(path, "wb") as f:
            left = size
            while left:
                block = rng.randbytes(min(BLOCK, left))
                digest.update(block)
                f.write(block)
                left -= len(block)
        meta = None
        if chunk:
            meta = ObjectMeta(name=name, options=ObjectMetaOptions(max_chunk_size=chunk))
        with open(path, "rb") as f:
            info = await store.put(name, f, meta=meta)
        os.remove(path)
        print(name, info.size, info.chunks, digest.hexdigest(), flush=True)
    await nc.close()

asyncio.run(main())
"#;

/// A Python function printing the size and SHA-256 of its input.
const DIGEST_PY: &str = "import hashlib, sys\nh, n = hashlib.sha256(), 0\nfor block in iter(lambda: sys.stdin.buffer.read(1 << 20), b''):\n    h.update(block)\n    n += len(block)\nprint(n, h.hexdigest())\n";

/// One input put by nats-py: what the function must print for it.
struct PyInput {
    name: String,
    chunks: u64,
    /// `size sha256-hex`, as the digest function prints it.
    expected: String,
}

/// Puts inputs with nats-py: `(name, bytes, chunk size or 0 for nats-py's
/// default)`, each from its own seed.
async fn nats_py_put(p: &Platform, inputs: &[(&str, u64, usize)]) -> Vec<PyInput> {
    let script = p.scratch.path().join("nats_py_put.py");
    std::fs::write(&script, NATS_PY_PUT).unwrap();
    let specs = inputs
        .iter()
        .enumerate()
        .map(|(seed, (name, size, chunk))| format!("{name}:{size}:{seed}:{chunk}"));
    let output = tokio::process::Command::new(comfaas_tests::nats_py())
        .arg(&script)
        .args([
            p.nats.url(),
            comfaas_schemas::names::INPUTS_BUCKET,
            p.scratch.path().to_str().unwrap(),
        ])
        .args(specs)
        .output()
        .await
        .unwrap();
    assert!(output.status.success(), "nats-py put: {output:?}");
    let out = String::from_utf8(output.stdout).unwrap();
    let put: Vec<PyInput> = out
        .lines()
        .map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            PyInput {
                name: words[0].to_owned(),
                chunks: words[2].parse().unwrap(),
                expected: format!("{} {}", words[1], words[3]),
            }
        })
        .collect();
    assert_eq!(put.len(), inputs.len(), "{out}");
    put
}

/// Invokes `function` on `object` at `node`, waiting up to `limit` (the
/// run's own time limit is five minutes).
async fn invoke_on(
    client: &async_nats::Client,
    function: &str,
    object: &str,
    node: &str,
    limit: std::time::Duration,
) -> async_nats::Message {
    let mut headers = with_object(object, None);
    headers.insert(h::PLACEMENT, format!("node:{node}").as_str());
    headers.insert(h::TIMEOUT, "300s");
    client
        .send_request(
            comfaas_schemas::names::Subjects::default().invoke(function),
            async_nats::Request::new()
                .headers(headers)
                .timeout(Some(limit)),
        )
        .await
        .unwrap_or_else(|e| panic!("invoking {function} on {object}: {e}"))
}

fn partial_files(cache: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(cache)
        .map(|dir| {
            dir.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|f| f.starts_with(".part-"))
                .collect()
        })
        .unwrap_or_default()
}

/// Inputs put by nats-py in its default 128 KiB chunks (what the `nats`
/// CLI uses too) and in 8 MiB ones, at 100 and 500 MB: each reaches the
/// function whole (its size and SHA-256 as the uploader computed them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inputs_put_by_nats_py_in_any_chunk_size_arrive_whole() {
    use comfaas_testbed::server::EmbeddedServer;
    // 8 MiB chunks need a max payload above the default 1 MB.
    let server = EmbeddedServer::start(comfaas_tests::server_options("max_payload: 16MB\n"))
        .await
        .unwrap();
    let p = Platform::on(server).await;
    drop(p.dispatcher().await);
    drop(p.executor(NodeSpec::edge("edge-1")).await);
    let function = p.function("digest", "", &[("main.py", DIGEST_PY)]);
    p.deploy(&function, &["edge-1"]).await;
    let js = async_nats::jetstream::new(p.client.clone());
    let store = comfaas_platform::resources::inputs_store(&js)
        .await
        .unwrap();
    let cache = p.scratch.path().join("nodes/edge-1/inputs");
    const MB: u64 = 1_000_000;
    for (size, chunk) in [
        (100 * MB, 0),
        (100 * MB, 8 << 20),
        (500 * MB, 0),
        (500 * MB, 8 << 20),
    ] {
        let name = format!("py-{}mb-{}k", size / MB, chunk >> 10);
        let input = nats_py_put(&p, &[(&name, size, chunk)]).await.remove(0);
        let chunk_size = if chunk == 0 { 128 << 10 } else { chunk as u64 };
        assert_eq!(input.chunks, size.div_ceil(chunk_size), "{name}");
        let reply = invoke_on(
            &p.device,
            "digest",
            &input.name,
            "edge-1",
            std::time::Duration::from_secs(300),
        )
        .await;
        assert_eq!(
            header(&reply, h::STATUS),
            "ok",
            "{name}: {:?}",
            reply.headers
        );
        assert_eq!(
            String::from_utf8_lossy(&reply.payload).trim(),
            input.expected,
            "{name}"
        );
        // Room for the next: out of the store and the node's cache.
        store.delete(&input.name).await.unwrap();
        for file in std::fs::read_dir(&cache).unwrap().flatten() {
            std::fs::remove_file(file.path()).unwrap();
        }
    }
    let load = next_load(&p, "edge-1").await;
    assert_eq!(load.input_fetch_failures, 0);
}

/// In secure mode the node fetches through its own pull consumer, which
/// its role allows and nothing more: an input in 128 KiB chunks arrives
/// whole with no permission violation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_input_in_small_chunks_is_fetched_under_the_executor_role() {
    let p = Platform::start_secure().await;
    drop(p.dispatcher().await);
    drop(p.executor(NodeSpec::edge("edge-1")).await);
    let function = p.function("digest", "", &[("main.py", DIGEST_PY)]);
    p.deploy(&function, &["edge-1"]).await;
    let data = points(3 << 20, 5);
    let js = async_nats::jetstream::new(p.device.clone());
    let store = comfaas_platform::resources::inputs_store(&js)
        .await
        .unwrap();
    let info = store
        .put(
            async_nats::jetstream::object_store::ObjectMetadata {
                name: "small-chunks".to_owned(),
                chunk_size: Some(128 << 10),
                ..Default::default()
            },
            &mut std::io::Cursor::new(data.clone()),
        )
        .await
        .unwrap();
    assert!(info.chunks > 100);
    let reply = invoke_on(
        &p.device,
        "digest",
        "small-chunks",
        "edge-1",
        std::time::Duration::from_secs(60),
    )
    .await;
    assert_eq!(header(&reply, h::STATUS), "ok", "{:?}", reply.headers);
    let sha = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(&data))
    };
    assert_eq!(
        String::from_utf8_lossy(&reply.payload).trim(),
        format!("{} {sha}", data.len())
    );
    p.assert_no_violations();
}

/// The large-input case of issue 11: eight concurrent invocations with
/// 50–500 MB inputs put by nats-py in 128 KiB chunks, all to one node (the
/// executor and dispatcher binaries), one abandoned by its caller. None
/// wedges: the seven others answer correctly. Then the node is stopped
/// (SIGTERM) while two inputs are being fetched again: it exits, leaving no
/// partial file; started again, it removes a partial file a killed run
/// left and answers those two. Every service exits on SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_large_inputs_in_small_chunks_never_wedge_a_node() {
    use std::time::Duration;

    use comfaas_tests::Process;

    /// Sends SIGTERM and waits (generously) for the process to exit.
    async fn terminate(process: &mut Process, what: &str) {
        let pid = nix::unistd::Pid::from_raw(process.child.id().expect("running") as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        let asked = std::time::Instant::now();
        let exited = tokio::time::timeout(Duration::from_secs(30), process.child.wait()).await;
        eprintln!("{what} exited {:?} after SIGTERM", asked.elapsed());
        assert!(
            matches!(exited, Ok(Ok(_))),
            "{what} did not exit after SIGTERM"
        );
    }

    let p = Platform::start().await;
    let url = p.nats.url().to_owned();
    let data_dir = p.scratch.path().join("big-1");
    let cache = data_dir.join("inputs");
    let exec_args = [
        "--nats-url",
        &url,
        "--node",
        "big-1",
        "--slots",
        "8",
        "--data-dir",
        data_dir.to_str().unwrap(),
    ];
    let mut dispatcher = Process::spawn("comfaas-dispatch", &["--nats-url", &url]);
    let mut executor = Process::spawn("comfaas-exec", &exec_args);
    p.nats.wait_for_node("big-1").await;
    let function = p.function("digest", "", &[("main.py", DIGEST_PY)]);
    let deployment = p.deploy(&function, &["big-1"]).await;

    const MB: u64 = 1_000_000;
    let names: Vec<String> = (0..8).map(|i| format!("big-{i}")).collect();
    let sizes = [50, 50, 60, 70, 80, 100, 150, 500].map(|mb| mb * MB);
    let specs: Vec<(&str, u64, usize)> = names
        .iter()
        .zip(sizes)
        .map(|(name, size)| (name.as_str(), size, 0))
        .collect();
    let inputs = nats_py_put(&p, &specs).await;
    for input in &inputs {
        assert!(input.chunks >= 381, "128 KiB chunks: {}", input.chunks);
    }

    // All at once; the caller of the largest stops waiting after a second.
    let mut calls = tokio::task::JoinSet::new();
    for (i, input) in inputs.iter().enumerate() {
        let (client, name) = (p.device.clone(), input.name.clone());
        calls.spawn(async move {
            let limit = Duration::from_secs(if i == 7 { 1 } else { 600 });
            let call = invoke_on(&client, "digest", &name, "big-1", Duration::from_secs(600));
            (i, tokio::time::timeout(limit, call).await.ok())
        });
    }
    let mut answered = 0;
    while let Some(done) = calls.join_next().await {
        let (i, reply) = done.unwrap();
        if i == 7 {
            assert!(
                reply.is_none(),
                "the abandoned call is not answered within 1 s"
            );
            continue;
        }
        let reply = reply.unwrap();
        assert_eq!(
            header(&reply, h::STATUS),
            "ok",
            "input {i}: {:?}",
            reply.headers
        );
        assert_eq!(
            String::from_utf8_lossy(&reply.payload).trim(),
            inputs[i].expected,
            "input {i}"
        );
        answered += 1;
    }
    assert_eq!(answered, 7);

    // The abandoned run finishes on its own: the node goes idle.
    let mut loads = p
        .client
        .subscribe(p.subjects.node_load("big-1"))
        .await
        .unwrap();
    let idle = tokio::time::timeout(Duration::from_secs(300), async {
        while let Some(message) = loads.next().await {
            let load: NodeLoad = decode(&message.payload).unwrap();
            if load.running == 0 && load.queued == 0 {
                return load;
            }
        }
        panic!("load stream ended");
    })
    .await
    .expect("the node goes idle");
    assert_eq!(idle.input_fetch_failures, 0);
    assert!(
        partial_files(&cache).is_empty(),
        "{:?}",
        partial_files(&cache)
    );

    // Evicted from the cache (as a full cache would), the two largest are
    // fetched again; the node is stopped while they are under way.
    for file in std::fs::read_dir(&cache).unwrap().flatten() {
        std::fs::remove_file(file.path()).unwrap();
    }
    let refetched = [6, 7];
    let mut calls = tokio::task::JoinSet::new();
    for i in refetched {
        let (client, name) = (p.device.clone(), inputs[i].name.clone());
        calls.spawn(async move {
            invoke_on(&client, "digest", &name, "big-1", Duration::from_secs(600)).await
        });
    }
    tokio::time::timeout(Duration::from_secs(120), async {
        while partial_files(&cache).is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("a fetch starts");
    terminate(&mut executor, "the executor, fetching").await;
    assert!(
        partial_files(&cache).is_empty(),
        "{:?}",
        partial_files(&cache)
    );
    while let Some(done) = calls.join_next().await {
        // Answered, not left waiting: the node refused as it left, and no
        // other node serves the function.
        let reply = done.unwrap();
        assert_eq!(header(&reply, h::ERROR_CODE), "503", "{:?}", reply.headers);
        assert!(
            header(&reply, h::ERROR).contains("shutting down"),
            "{:?}",
            reply.headers
        );
    }

    // A partial file as a killed executor leaves it; the node started
    // again removes it, and serves.
    std::fs::write(cache.join(".part-left-by-a-kill"), b"half an input").unwrap();
    let mut executor = Process::spawn("comfaas-exec", &exec_args);
    p.nats.wait_for_node("big-1").await;
    assert!(
        partial_files(&cache).is_empty(),
        "{:?}",
        partial_files(&cache)
    );
    p.wait_state(
        &deployment,
        &["big-1"],
        comfaas_schemas::InstallState::Ready,
    )
    .await;
    for i in refetched {
        let reply = invoke_on(
            &p.device,
            "digest",
            &inputs[i].name,
            "big-1",
            Duration::from_secs(600),
        )
        .await;
        assert_eq!(
            header(&reply, h::STATUS),
            "ok",
            "input {i}: {:?}",
            reply.headers
        );
        assert_eq!(
            String::from_utf8_lossy(&reply.payload).trim(),
            inputs[i].expected
        );
    }
    terminate(&mut executor, "the executor").await;
    terminate(&mut dispatcher, "the dispatcher").await;
    assert!(
        partial_files(&cache).is_empty(),
        "{:?}",
        partial_files(&cache)
    );
}

/// nats-py: reads the object `name` of `bucket` whole and prints its
/// size and SHA-256 (hex).
const NATS_PY_GET: &str = r#"
import asyncio, hashlib, sys
import nats

async def main():
    url, bucket, name = sys.argv[1:4]
    nc = await nats.connect(url)
    js = nc.jetstream(timeout=60)
    store = await js.object_store(bucket)
    result = await store.get(name)
    print(len(result.data), hashlib.sha256(result.data).hexdigest(), result.info.chunks, flush=True)
    await nc.close()

asyncio.run(main())
"#;

/// `size sha256-hex chunks` of the object `name` as nats-py reads it.
async fn nats_py_get(url: &str, bucket: &str, name: &str, scratch: &std::path::Path) -> String {
    let script = scratch.join("nats_py_get.py");
    std::fs::write(&script, NATS_PY_GET).unwrap();
    let output = tokio::process::Command::new(comfaas_tests::nats_py())
        .arg(&script)
        .args([url, bucket, name])
        .output()
        .await
        .unwrap();
    assert!(output.status.success(), "nats-py get: {output:?}");
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

/// Bytes that differ from block to block (a chunk boundary in the wrong
/// place would show).
fn patterned(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[i % 4] ^ seed)
        .collect()
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// An object put with the windowed put (many chunks in flight, the last
/// one short) is read back whole by async-nats' own reader and by
/// nats-py's, with the digest and chunk count every client expects; a
/// second put of the name replaces it, and the first one's chunks go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_windowed_put_is_read_back_by_async_nats_and_nats_py() {
    use comfaas_platform::objects::{put_windowed, PutSpec};
    let server = comfaas_testbed::server::EmbeddedServer::start(Default::default())
        .await
        .unwrap();
    let (js, store) = server.object_store("windowed", -1).await.unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let chunk = 64 * 1024;
    let first = patterned(3 * 1024 * 1024 + 12_345, 0);
    let spec = PutSpec {
        bucket: "windowed",
        name: "some/input.bin",
        chunk_size: chunk,
        expect_sha256: None,
    };
    let acked = std::sync::atomic::AtomicU64::new(0);
    let count = |n: u64| {
        acked.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    };
    let info = put_windowed(&js, &spec, std::io::Cursor::new(first.clone()), &count)
        .await
        .unwrap();
    assert_eq!(info.size, first.len());
    assert_eq!(info.chunks, first.len().div_ceil(chunk));
    assert_eq!(
        acked.load(std::sync::atomic::Ordering::Relaxed),
        first.len() as u64
    );

    // async-nats' reader, and the info it reads.
    let mut object = store.get("some/input.bin").await.unwrap();
    let mut read = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut object, &mut read)
        .await
        .unwrap();
    assert!(read == first, "async-nats reads back other bytes");
    let stored = store.info("some/input.bin").await.unwrap();
    assert_eq!(
        comfaas_platform::objects::digest_hex(stored.digest.as_deref().unwrap()).unwrap(),
        sha256_hex(&first)
    );
    // nats-py's reader (it checks the digest too).
    assert_eq!(
        nats_py_get(server.url(), "windowed", "some/input.bin", scratch.path()).await,
        format!("{} {} {}", first.len(), sha256_hex(&first), info.chunks)
    );

    // The name put again, with other bytes: the new object replaces it
    // and the old chunks are purged.
    let second = patterned(200_000, 7);
    let again = put_windowed(&js, &spec, std::io::Cursor::new(second.clone()), &|_| {})
        .await
        .unwrap();
    assert_eq!(
        nats_py_get(server.url(), "windowed", "some/input.bin", scratch.path()).await,
        format!("{} {} {}", second.len(), sha256_hex(&second), again.chunks)
    );
    let mut stream = js
        .get_stream(comfaas_schemas::names::object_store_stream("windowed"))
        .await
        .unwrap();
    let state = stream.info().await.unwrap().state.clone();
    // The new chunks and one info message are all the stream holds.
    assert_eq!(state.messages, again.chunks as u64 + 1, "{state:?}");
}

/// A put the bucket refuses midway (its max bytes reached) fails saying
/// which chunk was refused and that nothing was kept, and leaves no
/// object and none of its chunks; one whose content is not the content
/// promised (a file changed while uploaded) keeps nothing either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_refused_midway_or_changed_leaves_no_object() {
    use comfaas_platform::objects::{put_windowed, PutError, PutSpec};
    let server = comfaas_testbed::server::EmbeddedServer::start(Default::default())
        .await
        .unwrap();
    let (js, store) = server.object_store("small", 1 << 20).await.unwrap();
    let big = patterned(3 << 20, 1);
    let refused = put_windowed(
        &js,
        &PutSpec {
            bucket: "small",
            name: "too-big",
            chunk_size: 128 * 1024,
            expect_sha256: None,
        },
        std::io::Cursor::new(big),
        &|_| {},
    )
    .await
    .unwrap_err();
    assert!(matches!(refused, PutError::Refused { .. }), "{refused:?}");
    let message = refused.to_string();
    assert!(
        message.contains("refused chunk") && message.contains("`too-big` was not stored"),
        "{message}"
    );
    assert!(store.info("too-big").await.is_err(), "an object was left");
    let mut stream = js
        .get_stream(comfaas_schemas::names::object_store_stream("small"))
        .await
        .unwrap();
    assert_eq!(
        stream.info().await.unwrap().state.messages,
        0,
        "chunks were left"
    );

    let promised = [0u8; 32];
    let changed = put_windowed(
        &js,
        &PutSpec {
            bucket: "small",
            name: "changed",
            chunk_size: 64 * 1024,
            expect_sha256: Some(promised),
        },
        std::io::Cursor::new(patterned(300_000, 2)),
        &|_| {},
    )
    .await
    .unwrap_err();
    assert!(matches!(changed, PutError::Changed { .. }), "{changed:?}");
    assert!(changed
        .to_string()
        .contains("changed while it was uploaded"));
    assert!(store.info("changed").await.is_err(), "an object was left");
    assert_eq!(stream.info().await.unwrap().state.messages, 0);
}

/// An upload is skipped only when the object of its content name holds
/// that content by the digest the store keeps: a forged object under the
/// name (other bytes) is replaced, not trusted, and then the same content
/// again sends nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_is_skipped_only_when_the_digest_matches() {
    use comfaas_platform::objects::{put_windowed, upload, Content, PutSpec, Reuse};
    let server = comfaas_testbed::server::EmbeddedServer::start(Default::default())
        .await
        .unwrap();
    let (js, store) = server.object_store("skip", -1).await.unwrap();
    let genuine = bytes::Bytes::from(patterned(500_000, 3));
    let name = format!("sha256-{}", sha256_hex(&genuine));
    // The forger's bytes, of the same size, under the genuine name.
    put_windowed(
        &js,
        &PutSpec {
            bucket: "skip",
            name: &name,
            chunk_size: 64 * 1024,
            expect_sha256: None,
        },
        std::io::Cursor::new(patterned(500_000, 4)),
        &|_| {},
    )
    .await
    .unwrap();

    let sent = std::sync::atomic::AtomicU64::new(0);
    let count = |n: u64| {
        sent.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    };
    let content = Content::Bytes(genuine.clone());
    let first = upload(&js, "skip", &content, 64 * 1024, Reuse::IfSame, &count)
        .await
        .unwrap();
    assert_eq!(first.name, name);
    assert!(!first.reused, "a forged object was trusted");
    assert_eq!(sent.load(std::sync::atomic::Ordering::Relaxed), 500_000);
    let mut object = store.get(&name).await.unwrap();
    let mut read = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut object, &mut read)
        .await
        .unwrap();
    assert!(read == genuine, "the forged bytes stayed");

    let second = upload(&js, "skip", &content, 64 * 1024, Reuse::IfSame, &count)
        .await
        .unwrap();
    assert!(second.reused, "the same content was sent again");
    assert_eq!(sent.load(std::sync::atomic::Ordering::Relaxed), 500_000);

    // Asked never to reuse it, it is sent again all the same.
    let third = upload(&js, "skip", &content, 64 * 1024, Reuse::Never, &count)
        .await
        .unwrap();
    assert!(!third.reused);
    assert_eq!(sent.load(std::sync::atomic::Ordering::Relaxed), 1_000_000);
}
