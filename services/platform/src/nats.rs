//! Connecting to NATS with the options every service shares.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::NatsError;

/// The default server URL.
pub const DEFAULT_URL: &str = "nats://127.0.0.1:4222";

/// Connection options shared by all binaries (`--nats-url`, `--creds`,
/// `--nkey`, `--tls-ca`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct NatsOptions {
    /// Server URL(s), comma-separated.
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
}

impl NatsOptions {
    /// Options for `url`, defaults otherwise.
    pub fn for_url(url: impl Into<String>) -> Self {
        Self {
            nats_url: url.into(),
            ..Self::default()
        }
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
            .connect(self.nats_url.as_str())
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
