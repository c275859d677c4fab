//! Connecting to NATS with the options every service shares.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::NatsError;

/// The default server URL.
pub const DEFAULT_URL: &str = "nats://127.0.0.1:4222";

/// Connection options shared by all binaries (`--nats-url`, `--creds`,
/// `--nkey`, `--tls-ca`, `--js-domain`, `--replicas`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct NatsOptions {
    /// Server URL(s), comma-separated: on a clustered site, every
    /// server's, so a service reconnects to another when one fails.
    pub nats_url: String,
    /// NATS credentials file (JWT + nkey seed).
    pub creds_file: Option<PathBuf>,
    /// NKey user seed file (`SU…`, as `comfaas auth init` writes): the
    /// identity of a role in a secure site. Replies then come to
    /// `_INBOX.<public key>`, the one inbox this identity may read.
    pub nkey_file: Option<PathBuf>,
    /// CA certificate to trust for TLS; set, the connection requires TLS.
    pub tls_ca_file: Option<PathBuf>,
    /// Subject prefix.
    pub prefix: String,
    /// JetStream domain holding the registry, events and object stores
    /// (`None`: the connected server's own). A cloud node reaching the
    /// edge's data across a leaf link sets the edge's domain.
    pub js_domain: Option<String>,
    /// Copies JetStream keeps of every stream, bucket and object store
    /// this process creates (config key `replicas`, env
    /// `COMFAAS_REPLICAS`): 1 on a single server, 3 on a clustered site.
    /// Binaries apply it with [`crate::resources::set_replicas`].
    pub replicas: usize,
}

impl Default for NatsOptions {
    fn default() -> Self {
        Self {
            nats_url: DEFAULT_URL.to_owned(),
            creds_file: None,
            nkey_file: None,
            tls_ca_file: None,
            prefix: comfaas_schemas::names::DEFAULT_PREFIX.to_owned(),
            js_domain: None,
            replicas: 1,
        }
    }
}

/// The connection flags every binary takes; each overrides its config key.
#[derive(Debug, Clone, Default, clap::Args, Serialize)]
pub struct NatsFlags {
    /// NATS server URL [env: COMFAAS_NATS_URL] [default: nats://127.0.0.1:4222]
    #[arg(long, global = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nats_url: Option<String>,
    /// NATS credentials file
    #[arg(long = "creds", global = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub creds_file: Option<PathBuf>,
    /// NKey seed file of this identity (see `comfaas auth init`)
    #[arg(long = "nkey", global = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nkey_file: Option<PathBuf>,
    /// CA certificate of the server (the connection then requires TLS)
    #[arg(long = "tls-ca", global = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_ca_file: Option<PathBuf>,
    /// JetStream domain of the registry and data (e.g. `edge`, from a cloud site)
    #[arg(long, global = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub js_domain: Option<String>,
    /// Copies of every stream, bucket and object store created (1 on a
    /// single server, 3 on a clustered site) [default: 1; `comfaas dev --cluster`: 3]
    #[arg(long, global = true, env = "COMFAAS_REPLICAS", value_parser = clap::value_parser!(u8).range(1..=5))]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replicas: Option<u8>,
}

impl NatsOptions {
    /// Options for `url`, defaults otherwise.
    pub fn for_url(url: impl Into<String>) -> Self {
        Self {
            nats_url: url.into(),
            ..Self::default()
        }
    }

    /// The server URLs of [`nats_url`](Self::nats_url), one per server:
    /// async-nats takes a list, not a comma-separated string.
    pub fn server_urls(&self) -> Vec<String> {
        self.nats_url
            .split(',')
            .map(str::trim)
            .filter(|url| !url.is_empty())
            .map(str::to_owned)
            .collect()
    }

    /// A JetStream context in the configured domain.
    pub fn jetstream(&self, client: async_nats::Client) -> async_nats::jetstream::Context {
        match &self.js_domain {
            Some(domain) => async_nats::jetstream::with_domain(client, domain),
            None => async_nats::jetstream::new(client),
        }
    }

    /// The subjects under this prefix.
    pub fn subjects(&self) -> comfaas_schemas::names::Subjects {
        comfaas_schemas::names::Subjects::new(self.prefix.clone())
    }

    /// Connects, naming the connection `name` so it shows in `nats server report`.
    ///
    /// A service keeps retrying after a lost connection; the first connect
    /// fails fast so that a wrong URL is reported at once.
    pub async fn connect(&self, name: &str) -> Result<async_nats::Client, NatsError> {
        self.connect_with(name, None).await
    }

    /// As [`connect`](Self::connect), with at most `subscription_capacity`
    /// messages buffered per subscription: a connection for bulk transfers
    /// uses a small one, so a slow disk holds back the sender instead of
    /// filling memory.
    pub async fn connect_with(
        &self,
        name: &str,
        subscription_capacity: Option<usize>,
    ) -> Result<async_nats::Client, NatsError> {
        let mut options = async_nats::ConnectOptions::new()
            .name(name)
            .connection_timeout(Duration::from_secs(5))
            .max_reconnects(None);
        if let Some(creds) = &self.creds_file {
            options = options
                .credentials_file(creds)
                .await
                .map_err(|e| NatsError::new(format!("read credentials {}", creds.display()), e))?;
        }
        if let Some(file) = &self.nkey_file {
            let seed = read_seed(file)?;
            let public_key = nkeys::KeyPair::from_seed(&seed)
                .map_err(|e| NatsError::new(format!("read the nkey seed {}", file.display()), e))?
                .public_key();
            options = options
                .nkey(seed)
                .custom_inbox_prefix(comfaas_schemas::names::inbox_prefix_of(&public_key));
        }
        if let Some(capacity) = subscription_capacity {
            options = options.subscription_capacity(capacity);
        }
        if let Some(ca) = &self.tls_ca_file {
            options = options.add_root_certificates(ca.clone()).require_tls(true);
        }
        options
            .connect(self.server_urls().as_slice())
            .await
            .map_err(|e| NatsError::new(format!("connect to NATS at {}", self.nats_url), e))
    }
}

/// The seed in `file`: its first non-empty line, trimmed (a `.nk` file may
/// end with a newline or carry the public key after it).
pub fn read_seed(file: &std::path::Path) -> Result<String, NatsError> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| NatsError::new(format!("read the nkey seed {}", file.display()), e))?;
    text.lines()
        .map(str::trim)
        .find(|l| l.starts_with('S'))
        .map(str::to_owned)
        .ok_or_else(|| {
            NatsError::new(
                format!("read the nkey seed {}", file.display()),
                std::io::Error::new(std::io::ErrorKind::InvalidData, "no seed (SU…) in the file"),
            )
        })
}

/// The release of a `nats-server` (`2.9.10`, `2.15.1`), compared by
/// number: what the platform may use from it (see ARCHITECTURE.md,
/// "Server versions").
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServerVersion {
    /// Major release.
    pub major: u32,
    /// Minor release.
    pub minor: u32,
    /// Patch release.
    pub patch: u32,
}

impl ServerVersion {
    /// The oldest release comfaas supports and tests (Debian 12's).
    pub const FLOOR: Self = Self::new(2, 9, 0);
    /// Consumers filtering several subjects, stream metadata, subject
    /// transforms, S2 compression (async-nats feature `server_2_10`).
    pub const V2_10: Self = Self::new(2, 10, 0);
    /// Per-message TTL (`Nats-TTL`), consumer priority groups (pinned
    /// client, overflow) and pausing consumers.
    pub const V2_11: Self = Self::new(2, 11, 0);
    /// Atomic batch publish, distributed counters.
    pub const V2_12: Self = Self::new(2, 12, 0);

    /// `major.minor.patch`.
    pub const fn new(major: u32, minor: u32, patch: u32) -> Self {
        Self {
            major,
            minor,
            patch,
        }
    }

    /// Parses what a server reports (`2.9.10`, `v2.15.1`, `2.11.0-RC.2`):
    /// a pre-release counts as its release.
    pub fn parse(text: &str) -> Result<Self, VersionError> {
        let bad = || VersionError(text.to_owned());
        let core = text.trim().trim_start_matches('v');
        let core = core.split(['-', '+']).next().unwrap_or_default();
        let mut parts = core.split('.').map(str::parse::<u32>);
        let mut next = || parts.next().unwrap_or(Ok(0)).map_err(|_| bad());
        let version = Self::new(next()?, next()?, next()?);
        if version.major == 0 && version.minor == 0 {
            return Err(bad());
        }
        Ok(version)
    }

    /// Whether this release has what `release` introduced, e.g.
    /// `version.has(ServerVersion::V2_11)` before using per-message TTL.
    pub fn has(self, release: Self) -> bool {
        self >= release
    }
}

impl std::fmt::Display for ServerVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// A server version that is not `MAJOR.MINOR.PATCH`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the server reports version `{0}`, not MAJOR.MINOR.PATCH")]
pub struct VersionError(pub String);

/// The release of the server `client` is connected to now (from the
/// `INFO` it sent on connecting). On a cluster mid-upgrade, servers differ:
/// a client that reconnects may see another; ask again after a reconnect,
/// or take the oldest of the site's servers.
pub fn server_version(client: &async_nats::Client) -> Result<ServerVersion, VersionError> {
    ServerVersion::parse(&client.server_info().version)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str, expect: Option<(u32, u32, u32)>) {
        let got = ServerVersion::parse(text).ok();
        assert_eq!(
            got,
            expect.map(|(a, b, c)| ServerVersion::new(a, b, c)),
            "{text}"
        );
    }

    #[test]
    fn a_url_list_is_one_url_per_server() {
        let options = NatsOptions::for_url("nats://a:4222, nats://b:4222,,nats://c:4222");
        assert_eq!(
            options.server_urls(),
            ["nats://a:4222", "nats://b:4222", "nats://c:4222"]
        );
        assert_eq!(NatsOptions::default().server_urls(), [DEFAULT_URL]);
    }

    #[test]
    fn versions_parse_as_servers_report_them() {
        check("2.9.10", Some((2, 9, 10)));
        check("2.15.1", Some((2, 15, 1)));
        check("v2.10.0", Some((2, 10, 0)));
        check("2.11.0-RC.2", Some((2, 11, 0)));
        check("2.12", Some((2, 12, 0)));
        check("", None);
        check("two.nine", None);
    }

    #[test]
    fn releases_compare_by_number_not_text() {
        let floor = ServerVersion::parse("2.9.10").unwrap();
        let current = ServerVersion::parse("2.15.1").unwrap();
        assert!(current > floor, "2.15 is newer than 2.9");
        assert!(floor.has(ServerVersion::FLOOR));
        assert!(!floor.has(ServerVersion::V2_10));
        assert!(current.has(ServerVersion::V2_11));
        assert_eq!(current.to_string(), "2.15.1");
    }
}
