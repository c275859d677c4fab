//! A clustered site on loopback: N `nats-server`s routed to each other
//! (`nats/cluster.conf`), JetStream on every one, each with its own store
//! and fixed ports, so that one can be killed and started again on the
//! same store and clients find it where it was. Used by `comfaas dev
//! --cluster` and the tests of faults on a cluster.
//!
//! Services connect with every server's URL ([`Cluster::urls`]); what they
//! create there should be replicated on every server (`replicas = 3`).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, stream};
use comfaas_schemas::names;

use crate::server::{EmbeddedServer, ServerError, ServerOptions};

/// The cluster configuration's file name in the configs folder.
pub const CLUSTER_CONF: &str = "cluster.conf";

/// Most servers a loopback cluster may have: `nats/cluster.conf` lists
/// three routes (every server reaches the others through them).
pub const MAX_CLUSTER_SIZE: usize = 3;

/// What to start.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Folder of the server configurations (`cluster.conf`).
    pub configs: PathBuf,
    /// The site's name: the cluster's name and its JetStream domain.
    pub site: String,
    /// Servers, 1 to [`MAX_CLUSTER_SIZE`].
    pub size: usize,
    /// Client port of the first server (the others take the next ones);
    /// `None` picks free ports.
    pub first_port: Option<u16>,
    /// Where the stores go (`<dir>/<server name>`); `None`: a temporary
    /// folder, removed with the cluster.
    pub store_root: Option<PathBuf>,
    /// Most disk each server's JetStream may reserve, in bytes (see
    /// [`ServerOptions::max_file_store`]); `None`: nats-server's default.
    pub max_file_store: Option<u64>,
}

/// One member: where it listens and keeps its store, and its process
/// while it runs.
struct Member {
    name: String,
    client_port: u16,
    cluster_port: u16,
    store_dir: PathBuf,
    server: Option<EmbeddedServer>,
}

/// A running cluster. Every server is stopped when it drops.
pub struct Cluster {
    site: String,
    config: PathBuf,
    routes: Vec<String>,
    max_file_store: Option<u64>,
    members: Vec<Member>,
    _stores: Option<tempfile::TempDir>,
}

/// A free TCP port on loopback (free now; the server binds it next).
fn free_port() -> Result<u16, ServerError> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(ServerError::StoreDir)
}

impl Cluster {
    /// Starts `options.size` servers and waits until JetStream can place
    /// a stream on all of them (its meta leader is elected and every
    /// server has joined).
    pub async fn start(options: ClusterOptions) -> Result<Self, ServerError> {
        if !(1..=MAX_CLUSTER_SIZE).contains(&options.size) {
            return Err(ServerError::NotReady(format!(
                "a loopback cluster has 1 to {MAX_CLUSTER_SIZE} servers, not {}",
                options.size
            )));
        }
        let (stores, root) = match &options.store_root {
            Some(dir) => (None, dir.clone()),
            None => {
                let temp = tempfile::Builder::new()
                    .prefix("comfaas-cluster-")
                    .tempdir()
                    .map_err(ServerError::StoreDir)?;
                let dir = temp.path().to_path_buf();
                (Some(temp), dir)
            }
        };
        let mut members = Vec::new();
        for index in 0..options.size {
            let client_port = match options.first_port {
                Some(first) => first.checked_add(index as u16).ok_or_else(|| {
                    ServerError::NotReady(format!("port {first} + {index} is out of range"))
                })?,
                None => free_port()?,
            };
            let name = format!("{}-{}", options.site, index + 1);
            members.push(Member {
                store_dir: root.join(&name),
                name,
                client_port,
                cluster_port: free_port()?,
                server: None,
            });
        }
        let mut routes: Vec<String> = members
            .iter()
            .map(|m| format!("nats-route://127.0.0.1:{}", m.cluster_port))
            .collect();
        // The configuration names three routes; a smaller cluster repeats
        // its own (a server ignores a route to itself).
        while routes.len() < MAX_CLUSTER_SIZE {
            routes.push(routes[0].clone());
        }
        let mut cluster = Self {
            site: options.site,
            config: options.configs.join(CLUSTER_CONF),
            routes,
            max_file_store: options.max_file_store,
            members,
            _stores: stores,
        };
        // Started together: a server waits for its routes before it serves
        // JetStream, and the first would wait alone.
        let starts = (0..cluster.members.len())
            .map(|i| EmbeddedServer::start(cluster.server_options(i)))
            .collect::<Vec<_>>();
        let started = futures::future::join_all(starts).await;
        for (member, server) in cluster.members.iter_mut().zip(started) {
            member.server = Some(server?);
        }
        cluster.wait_jetstream(START_TIMEOUT).await?;
        Ok(cluster)
    }

    /// How member `index` is started, the first time and every restart.
    fn server_options(&self, index: usize) -> ServerOptions {
        let member = &self.members[index];
        let mut env = vec![
            ("COMFAAS_SITE".to_owned(), self.site.clone()),
            ("COMFAAS_SERVER".to_owned(), member.name.clone()),
            (
                "COMFAAS_CLUSTER_PORT".to_owned(),
                member.cluster_port.to_string(),
            ),
        ];
        for (i, route) in self.routes.iter().enumerate() {
            env.push((format!("COMFAAS_ROUTE_{}", i + 1), route.clone()));
        }
        ServerOptions {
            port: Some(member.client_port),
            store_dir: Some(member.store_dir.clone()),
            config_file: Some(self.config.clone()),
            env,
            // Routes on loopback only, as clients are.
            args: vec![
                "--cluster".to_owned(),
                format!("nats://127.0.0.1:{}", member.cluster_port),
            ],
            max_file_store: self.max_file_store,
            ..ServerOptions::default()
        }
    }

    /// Every server's client URL, comma-separated: what services connect
    /// with, so that they move to another server when theirs dies.
    pub fn urls(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("nats://127.0.0.1:{}", m.client_port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The site's name (and the cluster's).
    pub fn site(&self) -> &str {
        &self.site
    }

    /// How many servers it has, running or not.
    pub fn size(&self) -> usize {
        self.members.len()
    }

    /// Member `index`'s server name (`<site>-<index + 1>`).
    pub fn name(&self, index: usize) -> Option<&str> {
        self.members.get(index).map(|m| m.name.as_str())
    }

    /// Member `index`'s server, while it runs.
    pub fn server(&self, index: usize) -> Option<&EmbeddedServer> {
        self.members.get(index).and_then(|m| m.server.as_ref())
    }

    /// Member `index`'s JetStream store.
    pub fn store_dir(&self, index: usize) -> Option<&Path> {
        self.members.get(index).map(|m| m.store_dir.as_path())
    }

    /// A running member's URL (for a client or probe that must not move).
    pub fn url(&self, index: usize) -> Option<&str> {
        self.server(index).map(EmbeddedServer::url)
    }

    /// Kills member `index` with SIGKILL (no goodbye to its routes or
    /// clients), keeping its store.
    pub async fn kill(&mut self, index: usize) {
        if let Some(server) = self.members.get_mut(index).and_then(|m| m.server.take()) {
            server.stop().await;
        }
    }

    /// Starts member `index` again on its ports and store; it rejoins the
    /// others and catches up. Does not wait for the catch-up (see
    /// [`wait_stream_current`]).
    pub async fn restart(&mut self, index: usize) -> Result<(), ServerError> {
        if index >= self.members.len() {
            return Err(ServerError::NotReady(format!("no member {index}")));
        }
        self.kill(index).await;
        let server = EmbeddedServer::start(self.server_options(index)).await?;
        self.members[index].server = Some(server);
        Ok(())
    }

    /// Waits until JetStream can place a stream on every running server:
    /// a throw-away memory stream at that many replicas is created and
    /// deleted. Errs after `timeout`.
    pub async fn wait_jetstream(&self, timeout: Duration) -> Result<(), ServerError> {
        let running = self.members.iter().filter(|m| m.server.is_some()).count();
        let urls: Vec<String> = self
            .members
            .iter()
            .filter_map(|m| m.server.as_ref().map(|s| s.url().to_owned()))
            .collect();
        let deadline = Instant::now() + timeout;
        let mut last = String::from("no server running");
        while Instant::now() < deadline {
            match probe_stream(&urls, running).await {
                Ok(()) => return Ok(()),
                Err(e) => last = e,
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        Err(ServerError::NotReady(format!(
            "JetStream of the cluster `{}` not ready within {}s: {last}",
            self.site,
            timeout.as_secs()
        )))
    }

    /// Stops every server.
    pub async fn stop(mut self) {
        for index in 0..self.members.len() {
            self.kill(index).await;
        }
    }
}

/// How long a cluster may take to elect its JetStream meta leader. An
/// election on two busy cores can take several rounds of its 4–9 s timer;
/// CI once saw 30 s pass without a leader while other tests ran.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// Creates and deletes a memory stream at `replicas` through `urls`.
async fn probe_stream(urls: &[String], replicas: usize) -> Result<(), String> {
    let client = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(2))
        .connect(urls)
        .await
        .map_err(|e| e.to_string())?;
    let js = jetstream::new(client);
    let name = names::STORAGE_PROBE_STREAM;
    js.create_stream(stream::Config {
        name: name.to_owned(),
        storage: stream::StorageType::Memory,
        num_replicas: replicas,
        ..Default::default()
    })
    .await
    .map_err(|e| e.to_string())?;
    js.delete_stream(name).await.map_err(|e| e.to_string())?;
    Ok(())
}

/// Waits until every replica of stream `name` is current (has caught up
/// with its leader) and none is offline: e.g. after a member restarted.
/// Returns the stream's replicas (leader included). Errs after `timeout`.
pub async fn wait_stream_current(
    js: &jetstream::Context,
    name: &str,
    timeout: Duration,
) -> Result<usize, ServerError> {
    let deadline = Instant::now() + timeout;
    let mut last = String::from("no answer");
    while Instant::now() < deadline {
        match js.get_stream(name).await {
            Ok(mut stream) => match stream.info().await {
                Ok(info) => {
                    let cluster = info.cluster.clone().unwrap_or_default();
                    let behind: Vec<String> = cluster
                        .replicas
                        .iter()
                        .filter(|r| !r.current || r.offline)
                        .map(|r| r.name.clone())
                        .collect();
                    if cluster.leader.is_some() && behind.is_empty() {
                        return Ok(cluster.replicas.len() + 1);
                    }
                    last = format!("leader {:?}, behind {behind:?}", cluster.leader);
                }
                Err(e) => last = e.to_string(),
            },
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Err(ServerError::NotReady(format!(
        "stream {name} not current on every replica within {}s: {last}",
        timeout.as_secs()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn configs() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../nats")
    }

    /// Three servers take an R3 stream; with one killed the stream still
    /// takes writes; restarted on its store, the server catches up.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_member_killed_and_restarted_rejoins_its_stream() {
        let mut cluster = Cluster::start(ClusterOptions {
            configs: configs(),
            site: "edge".to_owned(),
            size: 3,
            first_port: None,
            store_root: None,
            max_file_store: None,
        })
        .await
        .unwrap();
        let urls: Vec<String> = cluster.urls().split(',').map(str::to_owned).collect();
        let client = async_nats::connect(urls.as_slice()).await.unwrap();
        let js = jetstream::new(client);
        js.create_stream(stream::Config {
            name: "R3".to_owned(),
            subjects: vec!["r3.>".to_owned()],
            num_replicas: 3,
            ..Default::default()
        })
        .await
        .unwrap();
        assert_eq!(
            wait_stream_current(&js, "R3", Duration::from_secs(20))
                .await
                .unwrap(),
            3
        );
        js.publish("r3.a", "1".into()).await.unwrap().await.unwrap();

        cluster.kill(2).await;
        assert!(cluster.server(2).is_none());
        // Writes go on with two of three (the quorum).
        publish_until_acked(&js, "2").await;

        cluster.restart(2).await.unwrap();
        wait_stream_current(&js, "R3", Duration::from_secs(30))
            .await
            .unwrap();
        // The restarted member is now one of the quorum: with another
        // killed, the stream holds every message and takes writes.
        cluster.kill(0).await;
        publish_until_acked(&js, "3").await;
        let info = js
            .get_stream("R3")
            .await
            .unwrap()
            .info()
            .await
            .unwrap()
            .clone();
        assert_eq!(info.state.messages, 3);
        cluster.stop().await;
    }

    /// Publishes `payload` on the R3 stream until it is acknowledged (a
    /// new leader may be in election), at most 20 s.
    async fn publish_until_acked(js: &jetstream::Context, payload: &'static str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(ack) = js.publish("r3.a", payload.into()).await {
                if ack.await.is_ok() {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        panic!("the R3 stream took no write of {payload} within 20 s");
    }

    /// With a disk limit, every member may reserve that much and no more,
    /// and the configuration's JetStream domain is kept.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_disk_limit_holds_on_every_member_and_keeps_the_domain() {
        let cluster = Cluster::start(ClusterOptions {
            configs: configs(),
            site: "edge".to_owned(),
            size: 3,
            first_port: None,
            store_root: None,
            max_file_store: Some(64 << 20),
        })
        .await
        .unwrap();
        let urls: Vec<String> = cluster.urls().split(',').map(str::to_owned).collect();
        // Through the domain's API prefix: the streams are made only
        // while the configuration's domain is kept.
        let client = async_nats::connect(urls.as_slice()).await.unwrap();
        let js = jetstream::with_domain(client, "edge");
        let r3 = |name: &str, max_bytes: i64| stream::Config {
            name: name.to_owned(),
            subjects: vec![format!("{name}.>")],
            max_bytes,
            num_replicas: 3,
            ..Default::default()
        };
        js.create_stream(r3("A", 40 << 20)).await.unwrap();
        // 40 + 40 MiB is more than any member may reserve; 40 + 16 is not.
        let refused = js.create_stream(r3("B", 40 << 20)).await;
        assert!(refused.is_err(), "{refused:?}");
        js.create_stream(r3("C", 16 << 20)).await.unwrap();
        cluster.stop().await;
    }

    #[tokio::test]
    async fn a_cluster_of_more_servers_than_routes_is_refused() {
        let refused = Cluster::start(ClusterOptions {
            configs: configs(),
            site: "edge".to_owned(),
            size: MAX_CLUSTER_SIZE + 1,
            first_port: None,
            store_root: None,
            max_file_store: None,
        })
        .await;
        assert!(refused.is_err());
    }
}
