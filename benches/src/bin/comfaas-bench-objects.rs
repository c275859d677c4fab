//! `comfaas-bench-objects`: large inputs through the object store, in one run.
//!
//! 1. Upload throughput of a 50 MB file at several chunk sizes (async-nats
//!    waits for each chunk's ack, so chunk size sets upload speed).
//! 2. For 1, 50 and 500 MB inputs: a plain object-store get with async-nats
//!    (read to nowhere) against the input fetch inside an invocation (the
//!    executor's own measurement: object store to its cache file).
//! 3. The executor's resident memory (sampled from /proc) before and during
//!    the 500 MB invocation.
//!
//! Run: `cargo run --release -p comfaas-bench --bin comfaas-bench-objects`

use std::path::Path;
use std::time::{Duration, Instant};

use async_nats::jetstream::object_store::ObjectMetadata;
use async_nats::HeaderMap;
use comfaas_schemas::names::headers as h;
use comfaas_schemas::{decode, NodeLoad};
use comfaas_tests::{header, Platform, Process};
use futures::StreamExt;

const MB: u64 = 1 << 20;

fn write_file(path: &Path, size: u64) {
    use std::io::Write;
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).expect("create"));
    let block = comfaas_tests::points((MB / 8) as usize, size);
    for _ in 0..size / MB {
        file.write_all(&block).expect("write");
    }
    file.flush().expect("flush");
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

async fn load_of(p: &Platform, node: &str) -> NodeLoad {
    let mut loads = p
        .client
        .subscribe(p.subjects.node_load(node))
        .await
        .expect("subscribe");
    decode(&loads.next().await.expect("load").payload).expect("decode")
}

#[tokio::main]
async fn main() {
    // Max payload raised to 16 MB so chunks above the default 1 MB can be
    // measured too.
    let config = tempfile::NamedTempFile::new().expect("tempfile");
    std::fs::write(config.path(), "max_payload: 16MB\n").expect("write config");
    let server =
        comfaas_testbed::server::EmbeddedServer::start(comfaas_testbed::server::ServerOptions {
            config_file: Some(config.path().to_path_buf()),
            ..Default::default()
        })
        .await
        .expect("nats-server");
    let p = Platform::on(server).await;
    let url = p.nats.url().to_owned();
    let data_dir = p
        .scratch
        .path()
        .join("exec-1")
        .to_string_lossy()
        .into_owned();
    let _dispatcher = Process::spawn("comfaas-dispatch", &["--nats-url", &url]);
    let executor = Process::spawn(
        "comfaas-exec",
        &[
            "--nats-url",
            &url,
            "--node",
            "exec-1",
            "--data-dir",
            &data_dir,
        ],
    );
    let pid = executor.child.id().expect("pid");
    let dir = p.function(
        "sink",
        "",
        &[("run.sh", "#!/bin/sh\ncat > /dev/null\necho ok\n")],
    );
    std::fs::write(dir.join("comfaas.toml"), "name = \"sink\"\nversion = \"1\"\nruntime = \"exec\"\nentry = \"run.sh\"\ntimeout = \"600s\"\n").expect("manifest");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.join("run.sh"), std::fs::Permissions::from_mode(0o755))
        .expect("chmod");
    p.deploy(&dir, &["exec-1"]).await;

    let js = async_nats::jetstream::new(p.client.clone());
    let store = comfaas_platform::resources::inputs_store(&js)
        .await
        .expect("store");

    println!("\n### Upload of 50 MB by chunk size (async-nats `put`, loopback)\n");
    println!("| chunk | seconds | MB/s |");
    println!("|---:|---:|---:|");
    let fifty = p.scratch.path().join("fifty.bin");
    write_file(&fifty, 50 * MB);
    for (i, chunk) in [128usize << 10, 512 << 10, 1 << 20, 4 << 20, 8 << 20]
        .into_iter()
        .enumerate()
    {
        let mut file = tokio::fs::File::open(&fifty).await.expect("open");
        let started = Instant::now();
        store
            .put(
                ObjectMetadata {
                    name: format!("chunk-test-{i}"),
                    chunk_size: Some(chunk),
                    ..Default::default()
                },
                &mut file,
            )
            .await
            .expect("put");
        let s = started.elapsed().as_secs_f64();
        println!("| {} KiB | {s:.3} | {:.0} |", chunk >> 10, 50.0 / s);
        store
            .delete(format!("chunk-test-{i}"))
            .await
            .expect("delete");
    }

    println!("\n### Plain get against the invocation's input fetch\n");
    println!("| input | plain get MB/s | fetch in invocation MB/s | fetch ÷ get | invocation s | executor RSS before MiB | peak during MiB | growth MiB |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    for size in [MB, 50 * MB, 500 * MB] {
        let file = p.scratch.path().join(format!("in-{size}.bin"));
        write_file(&file, size);
        let uploaded = comfaas_platform::objects::upload_file(&store, &file)
            .await
            .expect("upload");
        let _ = std::fs::remove_file(&file);
        // Plain get, to nowhere.
        let started = Instant::now();
        let object = store.get(&uploaded.name).await.expect("get");
        // Whole chunks per read, as the executor reads them.
        let mut object = tokio::io::BufReader::with_capacity(1 << 20, object);
        let got = tokio::io::copy_buf(&mut object, &mut tokio::io::sink())
            .await
            .expect("read");
        assert_eq!(got, size);
        let plain = size as f64 / MB as f64 / started.elapsed().as_secs_f64();
        // The invocation, with the executor's memory sampled meanwhile.
        let before = rss_kib(pid);
        PEAK.store(before, std::sync::atomic::Ordering::Relaxed);
        let sampling = tokio::spawn(async move {
            loop {
                PEAK.fetch_max(rss_kib(pid), std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        let mut headers = HeaderMap::new();
        headers.insert(h::INPUT_OBJECT, uploaded.name.as_str());
        headers.insert(h::TIMEOUT, "600s");
        let started = Instant::now();
        let reply = p.invoke_bytes("sink", Vec::new(), headers).await;
        let invocation_s = started.elapsed().as_secs_f64();
        assert_eq!(header(&reply, h::STATUS), "ok", "{:?}", reply.headers);
        sampling.abort();
        PEAK.fetch_max(rss_kib(pid), std::sync::atomic::Ordering::Relaxed);
        let peak = PEAK.load(std::sync::atomic::Ordering::Relaxed);
        let load = load_of(&p, "exec-1").await;
        let fetch = load.input_fetch_bytes_per_s / MB as f64;
        println!(
            "| {} MB | {plain:.0} | {fetch:.0} | {:.2} | {invocation_s:.2} | {:.1} | {:.1} | {:.1} |",
            size / MB,
            fetch / plain,
            before as f64 / 1024.0,
            peak as f64 / 1024.0,
            peak.saturating_sub(before) as f64 / 1024.0
        );
    }
}

/// Peak resident memory of the executor seen by the sampler, KiB.
static PEAK: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
