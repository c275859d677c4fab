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
//! 4. Input fetch by chunk size (issue 11): inputs put in 128 KiB, 1 MiB
//!    and 8 MiB chunks (`--chunks`), of 100 and 500 MB (`--sizes`, MB),
//!    fetched by this build's executor and, with `--baseline-exec PATH`,
//!    by another build's (e.g. main's) in the same run. The fetch rate is
//!    the node's own measure (from its first chunk), recovered from the
//!    moving average it reports before and after the invocation.
//!    `--only-fetch` skips sections 1 to 3.
//!
//! Run: `cargo run --release -p comfaas-bench --bin comfaas-bench-objects`
//! (`-- --only-fetch --baseline-exec /path/to/main/comfaas-exec`)

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

/// The command line: `--baseline-exec PATH`, `--chunks 128K,1M,8M`,
/// `--sizes 100,500` (MB), `--only-fetch`.
struct Args {
    baseline_exec: Option<std::path::PathBuf>,
    chunks: Vec<usize>,
    sizes: Vec<u64>,
    only_fetch: bool,
}

fn args() -> Args {
    let mut args = Args {
        baseline_exec: None,
        chunks: vec![128 << 10, 1 << 20, 8 << 20],
        sizes: vec![100, 500],
        only_fetch: false,
    };
    let mut given = std::env::args().skip(1);
    while let Some(arg) = given.next() {
        let mut value = || {
            given
                .next()
                .unwrap_or_else(|| panic!("{arg} needs a value"))
        };
        match arg.as_str() {
            "--baseline-exec" => args.baseline_exec = Some(value().into()),
            "--chunks" => {
                args.chunks = value()
                    .split(',')
                    .map(|c| match c.strip_suffix('K') {
                        Some(k) => k.parse::<usize>().expect("chunk") << 10,
                        None => c.trim_end_matches('M').parse::<usize>().expect("chunk") << 20,
                    })
                    .collect()
            }
            "--sizes" => {
                args.sizes = value()
                    .split(',')
                    .map(|mb| mb.parse().expect("size in MB"))
                    .collect()
            }
            "--only-fetch" => args.only_fetch = true,
            other => panic!("unknown argument {other}"),
        }
    }
    args
}

/// One executor of the fetch comparison: its node id, binary and process.
struct Node {
    id: String,
    binary: std::path::PathBuf,
    data_dir: std::path::PathBuf,
    process: Option<tokio::process::Child>,
}

impl Node {
    fn start(&mut self, url: &str) {
        let _ = std::fs::remove_dir_all(&self.data_dir);
        let child = tokio::process::Command::new(&self.binary)
            .args(["--nats-url", url, "--node", &self.id, "--data-dir"])
            .arg(&self.data_dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn executor");
        self.process = Some(child);
    }

    fn pid(&self) -> u32 {
        self.process.as_ref().and_then(|c| c.id()).unwrap_or(0)
    }

    fn clear_cache(&self) {
        for file in std::fs::read_dir(self.data_dir.join("inputs"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let _ = std::fs::remove_file(file.path());
        }
    }
}

/// Invokes `sink` on `object` at `node`: seconds, or the error.
async fn timed_invoke(p: &Platform, object: &str, node: &str) -> Result<f64, String> {
    let mut headers = HeaderMap::new();
    headers.insert(h::INPUT_OBJECT, object);
    headers.insert(h::TIMEOUT, "120s");
    headers.insert(h::PLACEMENT, format!("node:{node}").as_str());
    let started = Instant::now();
    let reply = p
        .device
        .send_request(
            p.subjects.invoke("sink"),
            async_nats::Request::new()
                .headers(headers)
                .timeout(Some(Duration::from_secs(180))),
        )
        .await
        .map_err(|e| e.to_string())?;
    let seconds = started.elapsed().as_secs_f64();
    match header(&reply, h::STATUS).as_str() {
        "ok" => Ok(seconds),
        _ => Err(format!(
            "{} {}",
            header(&reply, h::ERROR_CODE),
            header(&reply, h::ERROR)
        )),
    }
}

/// Section 4: the fetch by chunk size, by each executor build.
async fn fetch_by_chunk_size(p: &Platform, args: &Args, sink: &Path) {
    let url = p.nats.url().to_owned();
    let mut nodes = vec![Node {
        id: "after".to_owned(),
        binary: comfaas_tests::binary("comfaas-exec"),
        data_dir: p.scratch.path().join("after"),
        process: None,
    }];
    if let Some(binary) = &args.baseline_exec {
        nodes.insert(
            0,
            Node {
                id: "before".to_owned(),
                binary: binary.clone(),
                data_dir: p.scratch.path().join("before"),
                process: None,
            },
        );
    }
    for node in &mut nodes {
        node.start(&url);
    }
    let ids: Vec<&str> = nodes.iter().map(|n| n.id.as_str()).collect();
    p.deploy(sink, &ids).await;
    let js = async_nats::jetstream::new(p.client.clone());
    let store = comfaas_platform::resources::inputs_store(&js)
        .await
        .expect("store");
    println!("\n### Input fetch by chunk size (issue 11)\n");
    println!("| executor | chunk | input | fetch s | fetch MiB/s | invocation s | executor RSS growth MiB |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for &size_mb in &args.sizes {
        let file = p.scratch.path().join(format!("fetch-{size_mb}.bin"));
        write_file(&file, size_mb * MB);
        for &chunk in &args.chunks {
            let name = format!("fetch-{size_mb}-{chunk}");
            let mut source = tokio::fs::File::open(&file).await.expect("open");
            store
                .put(
                    ObjectMetadata {
                        name: name.clone(),
                        chunk_size: Some(chunk),
                        ..Default::default()
                    },
                    &mut source,
                )
                .await
                .expect("put");
            for node in &mut nodes {
                let pid = node.pid();
                let before = rss_kib(pid);
                PEAK.store(before, std::sync::atomic::Ordering::Relaxed);
                let sampling = tokio::spawn(async move {
                    loop {
                        PEAK.fetch_max(rss_kib(pid), std::sync::atomic::Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                });
                let old_rate = load_of(p, &node.id).await.input_fetch_bytes_per_s;
                let first = timed_invoke(p, &name, &node.id).await;
                // The node's own measure of this fetch, from the moving
                // average it reports (weight 0.3 for the newest).
                let new_rate = load_of(p, &node.id).await.input_fetch_bytes_per_s;
                let rate = if old_rate > 0.0 {
                    old_rate + (new_rate - old_rate) / 0.3
                } else {
                    new_rate
                };
                sampling.abort();
                let growth = PEAK
                    .load(std::sync::atomic::Ordering::Relaxed)
                    .saturating_sub(before) as f64
                    / 1024.0;
                let chunk_label = if chunk >= 1 << 20 {
                    format!("{} MiB", chunk >> 20)
                } else {
                    format!("{} KiB", chunk >> 10)
                };
                match first {
                    Ok(first) => {
                        let bytes = (size_mb * MB) as f64;
                        println!(
                            "| {} | {chunk_label} | {size_mb} MB | {:.2} | {:.0} | {first:.2} | {growth:.1} |",
                            node.id,
                            bytes / rate.max(1.0),
                            rate / MB as f64
                        );
                    }
                    Err(e) => {
                        println!(
                            "| {} | {chunk_label} | {size_mb} MB | failed: {} | – | – | {growth:.1} |",
                            node.id,
                            e.replace('|', "/")
                        );
                        // A wedged node is started afresh for the next case.
                        if let Some(mut child) = node.process.take() {
                            let _ = child.kill().await;
                        }
                        node.start(&url);
                        p.nats.wait_for_node(&node.id).await;
                        p.deploy(sink, &[node.id.as_str()]).await;
                    }
                }
                node.clear_cache();
            }
            store.delete(&name).await.expect("delete");
        }
        let _ = std::fs::remove_file(&file);
    }
}

#[tokio::main]
async fn main() {
    let args = args();
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

    if args.only_fetch {
        fetch_by_chunk_size(&p, &args, &dir).await;
        return;
    }
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
    fetch_by_chunk_size(&p, &args, &dir).await;
}

/// Peak resident memory of the executor seen by the sampler, KiB.
static PEAK: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
