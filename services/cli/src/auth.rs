//! `comfaas auth`: the credentials of a secure site. `init DIR` makes one
//! NKey identity per role and per executor node, the server configuration
//! include naming them with their permissions (`DIR/server.conf`, from
//! [`comfaas_platform::auth`]), the leaf link's credentials, and with
//! `--tls` a small CA and a server certificate; `add-device` and
//! `add-node` add one identity and rewrite the include.
//!
//! Layout (scripts rely on it):
//! - `DIR/server.conf`: the include for any site's server (client
//!   authorization, and `tls {}` with `--tls`);
//! - `DIR/nats.conf`: one server with the include and JetStream;
//! - `DIR/hub.conf`, `DIR/leaf.conf`: the secure counterparts of
//!   `nats/hub.conf` and `nats/leaf.conf` (same environment variables),
//!   including `server.conf` and requiring the leaf link's password (and
//!   TLS);
//! - `DIR/{device,operator,dispatcher,observer}.nk`, `DIR/nodes/<node>.nk`,
//!   `DIR/devices/<name>.nk`: NKey user seeds, mode 0600;
//! - `DIR/mqtt/<name>.password`: the password of MQTT device `<name>`
//!   (its user name), mode 0600; nats-server's MQTT clients cannot sign an
//!   NKey challenge, so these devices log in with a password, on MQTT
//!   connections only;
//! - `DIR/operator.pub`: the operator's public key, the one executors
//!   trust for signed deployments (`--trusted-operator`);
//! - `DIR/users.toml`: role → public keys, the leaf password and the
//!   options, from which the configuration is written again (mode 0600);
//! - `DIR/tls/{ca.pem,ca-key.pem,server.pem,server-key.pem}` with `--tls`.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use comfaas_platform::auth::{self, Role, Scope, ServerTls, User};
use comfaas_platform::nats::NatsOptions;
use comfaas_schemas::names::Subjects;
use serde::{Deserialize, Serialize};

/// The state file of an auth folder.
pub const USERS_FILE: &str = "users.toml";
/// The server configuration include.
pub const SERVER_CONF: &str = "server.conf";
/// A single server's configuration: the include and JetStream.
pub const SINGLE_CONF: &str = "nats.conf";
/// A cloud site's configuration (accepts the leaf link).
pub const HUB_CONF: &str = "hub.conf";
/// An edge site's configuration (joins a hub over the leaf link).
pub const LEAF_CONF: &str = "leaf.conf";

/// What `comfaas auth init` makes.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct InitOptions {
    /// Make a CA and a server certificate; clients and leaf links then
    /// must use TLS (clients pass --tls-ca DIR/tls/ca.pem)
    #[arg(long)]
    pub tls: bool,
    /// Executor nodes to make an identity for, e.g. edge-1,cloud-1
    #[arg(long, value_delimiter = ',', default_value = "edge-1,cloud-1")]
    pub nodes: Vec<String>,
    /// Host names or addresses the server certificate is valid for,
    /// besides localhost and 127.0.0.1 (repeatable)
    #[arg(long = "host")]
    pub hosts: Vec<String>,
    /// The edge site's JetStream domain (a cloud site may mirror its streams)
    #[arg(long, default_value = auth::DEFAULT_EDGE_DOMAIN)]
    pub edge_domain: String,
}

/// One identity of `users.toml`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Identity {
    /// `device`, `operator`, `dispatcher`, `executor` or `observer`.
    pub role: String,
    /// The device's or node's name (the role's own name otherwise).
    pub name: String,
    /// Its NKey public key (empty for an MQTT device).
    pub public_key: String,
    /// An MQTT device's password (it has no NKey).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
}

/// `users.toml`: everything the configuration is written from.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct State {
    prefix: String,
    edge_domain: String,
    tls: bool,
    leaf_password: String,
    #[serde(rename = "user")]
    users: Vec<Identity>,
}

/// An auth folder, as `comfaas auth init` wrote it.
#[derive(Debug, Clone)]
pub struct AuthDir {
    dir: PathBuf,
    state: State,
}

/// Roles with one identity of their own at the top of the folder.
const SINGLE_ROLES: [Role; 4] = [
    Role::Device,
    Role::Operator,
    Role::Dispatcher,
    Role::Observer,
];

/// Writes `contents` to `path` readable by its owner only.
fn write_private(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("write {}", path.display()))?;
    // An older file keeps its mode on open: make it private too.
    file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .with_context(|| format!("chmod {}", path.display()))?;
    file.write_all(contents)
        .with_context(|| format!("write {}", path.display()))
}

/// A new NKey user written to `path`; its public key.
fn new_identity(path: &Path) -> anyhow::Result<String> {
    let key = nkeys::KeyPair::new_user();
    let seed = key.seed().context("encode the nkey seed")?;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    write_private(path, format!("{seed}\n").as_bytes())?;
    Ok(key.public_key())
}

/// A new random password written to `path` (mode 0600); the password.
fn new_password(path: &Path) -> anyhow::Result<String> {
    let mut bytes = [0u8; 18];
    rand::fill(&mut bytes);
    let password: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    write_private(path, format!("{password}\n").as_bytes())?;
    Ok(password)
}

/// Whether `name` is one subject token (a node or device name).
fn check_name(name: &str) -> anyhow::Result<()> {
    let valid = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    anyhow::ensure!(
        valid,
        "`{name}` must be letters, digits, `-` or `_` (one subject token)"
    );
    Ok(())
}

/// Makes an auth folder at `dir` (which must not hold one yet) for
/// subjects under `prefix`.
pub fn init(dir: &Path, prefix: &str, options: &InitOptions) -> anyhow::Result<AuthDir> {
    anyhow::ensure!(
        !dir.join(USERS_FILE).exists(),
        "{} already holds credentials; add to it with `comfaas auth add-device` / `add-node`",
        dir.display()
    );
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
    let mut password = [0u8; 24];
    rand::fill(&mut password);
    let mut auth = AuthDir {
        dir: dir.to_path_buf(),
        state: State {
            prefix: prefix.to_owned(),
            edge_domain: options.edge_domain.clone(),
            tls: options.tls,
            leaf_password: password.iter().map(|b| format!("{b:02x}")).collect(),
            users: Vec::new(),
        },
    };
    for role in SINGLE_ROLES {
        let public_key = new_identity(&auth.role_file(role.kind()))?;
        if role == Role::Operator {
            std::fs::write(dir.join("operator.pub"), format!("{public_key}\n"))?;
        }
        auth.state.users.push(Identity {
            role: role.kind().to_owned(),
            name: role.kind().to_owned(),
            public_key,
            password: None,
        });
    }
    for node in &options.nodes {
        auth.add(Role::Executor { node: node.clone() }, node)?;
    }
    if options.tls {
        write_tls(&dir.join("tls"), &options.hosts)?;
    }
    auth.write()?;
    Ok(auth)
}

/// A CA and a server certificate for `localhost`, `127.0.0.1` and `hosts`.
fn write_tls(dir: &Path, hosts: &[String]) -> anyhow::Result<()> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
        KeyUsagePurpose,
    };
    std::fs::create_dir_all(dir)?;
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "comfaas site CA");
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca.self_signed(&ca_key)?;
    let mut names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
    names.extend(hosts.iter().cloned());
    let key = KeyPair::generate()?;
    let mut server = CertificateParams::new(names)?;
    server
        .distinguished_name
        .push(DnType::CommonName, "comfaas nats-server");
    // Servers use it for clients and for the leaf link, both directions.
    server.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let cert = server.signed_by(&key, &ca_cert, &ca_key)?;
    std::fs::write(dir.join("ca.pem"), ca_cert.pem())?;
    write_private(&dir.join("ca-key.pem"), ca_key.serialize_pem().as_bytes())?;
    std::fs::write(dir.join("server.pem"), cert.pem())?;
    write_private(&dir.join("server-key.pem"), key.serialize_pem().as_bytes())?;
    Ok(())
}

impl AuthDir {
    /// Opens the auth folder `dir`.
    pub fn open(dir: &Path) -> anyhow::Result<Self> {
        let path = dir.join(USERS_FILE);
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!(
                "read {} (make the folder with `comfaas auth init`)",
                path.display()
            )
        })?;
        let state = toml::from_str(&text).with_context(|| format!("parse {}", path.display()))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            state,
        })
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Adds the device `name` (`DIR/devices/<name>.nk`) and rewrites the
    /// configuration; the seed file.
    pub fn add_device(&mut self, name: &str) -> anyhow::Result<PathBuf> {
        self.add(Role::Device, name)?;
        self.write()?;
        Ok(self.device_file(name))
    }

    /// Adds the executor node `name` (`DIR/nodes/<name>.nk`) and rewrites
    /// the configuration; the seed file.
    pub fn add_node(&mut self, name: &str) -> anyhow::Result<PathBuf> {
        self.add(
            Role::Executor {
                node: name.to_owned(),
            },
            name,
        )?;
        self.write()?;
        Ok(self.node_file(name))
    }

    fn add(&mut self, role: Role, name: &str) -> anyhow::Result<()> {
        check_name(name)?;
        anyhow::ensure!(
            !self
                .state
                .users
                .iter()
                .any(|u| u.role == role.kind() && u.name == name),
            "{} `{name}` exists already",
            role.kind()
        );
        let file = match &role {
            Role::Executor { .. } => self.node_file(name),
            _ => self.device_file(name),
        };
        let public_key = new_identity(&file)?;
        self.state.users.push(Identity {
            role: role.kind().to_owned(),
            name: name.to_owned(),
            public_key,
            password: None,
        });
        Ok(())
    }

    /// Adds the MQTT device `name` (its user name) with a new random
    /// password, written to `DIR/mqtt/<name>.password`, and rewrites the
    /// configuration; the password file.
    pub fn add_mqtt_device(&mut self, name: &str) -> anyhow::Result<PathBuf> {
        check_name(name)?;
        let kind = Role::MqttDevice.kind();
        anyhow::ensure!(
            !self
                .state
                .users
                .iter()
                .any(|u| u.role == kind && u.name == name),
            "{kind} `{name}` exists already"
        );
        let file = self.mqtt_password_file(name);
        let password = new_password(&file)?;
        self.state.users.push(Identity {
            role: kind.to_owned(),
            name: name.to_owned(),
            public_key: String::new(),
            password: Some(password),
        });
        self.write()?;
        Ok(file)
    }

    /// The password file of MQTT device `name`.
    pub fn mqtt_password_file(&self, name: &str) -> PathBuf {
        self.dir.join("mqtt").join(format!("{name}.password"))
    }

    /// The password of MQTT device `name`, if there is one.
    pub fn mqtt_password(&self, name: &str) -> Option<&str> {
        self.state
            .users
            .iter()
            .find(|u| u.role == Role::MqttDevice.kind() && u.name == name)
            .and_then(|u| u.password.as_deref())
    }

    /// Gives the identity `who` (`operator`, `dispatcher`, `observer`,
    /// `device`, `device:NAME`, `node:NAME`) a new key, written over its seed
    /// file, and rewrites the configuration: after a reload the old key is
    /// refused. Rotating the operator also rewrites `operator.pub`
    /// (executors must then trust the new key). The seed file.
    /// An MQTT device (`mqtt:NAME`) gets a new password instead.
    pub fn rotate(&mut self, who: &str) -> anyhow::Result<PathBuf> {
        let (index, file) = self.locate(who)?;
        if self.state.users[index].role == Role::MqttDevice.kind() {
            let password = new_password(&file)?;
            self.state.users[index].password = Some(password);
            self.write()?;
            return Ok(file);
        }
        let public_key = new_identity(&file)?;
        if self.state.users[index].role == Role::Operator.kind() {
            std::fs::write(self.dir.join("operator.pub"), format!("{public_key}\n"))?;
        }
        self.state.users[index].public_key = public_key;
        self.write()?;
        Ok(file)
    }

    /// Removes the identity `who` (`device:NAME` or `node:NAME`: a site
    /// always keeps one identity of each single role; rotate those) and its
    /// seed file, and rewrites the configuration: after a reload its key is
    /// refused.
    pub fn revoke(&mut self, who: &str) -> anyhow::Result<()> {
        anyhow::ensure!(
            ["device:", "node:", "mqtt:"]
                .iter()
                .any(|kind| who.starts_with(kind)),
            "only `device:NAME`, `mqtt:NAME` and `node:NAME` can be revoked; `{who}` can be rotated instead"
        );
        let (index, file) = self.locate(who)?;
        self.state.users.remove(index);
        self.write()?;
        match std::fs::remove_file(&file) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(anyhow::Error::new(e).context(format!("remove {}", file.display())))
            }
            _ => Ok(()),
        }
    }

    /// The place in `users.toml` and the seed file of `who`.
    fn locate(&self, who: &str) -> anyhow::Result<(usize, PathBuf)> {
        let (role, name, file) = match who.split_once(':') {
            Some(("device", name)) => (Role::Device.kind(), name, self.device_file(name)),
            Some(("node", name)) => ("executor", name, self.node_file(name)),
            Some(("mqtt", name)) => (Role::MqttDevice.kind(), name, self.mqtt_password_file(name)),
            None if SINGLE_ROLES.iter().any(|r| r.kind() == who) => (who, who, self.role_file(who)),
            _ => anyhow::bail!(
                "`{who}` names no identity: operator, dispatcher, observer, device, \
                 device:NAME, mqtt:NAME or node:NAME"
            ),
        };
        let index = self
            .state
            .users
            .iter()
            .position(|u| u.role == role && u.name == name)
            .with_context(|| {
                format!("{who} is not in {}", self.dir.join("users.toml").display())
            })?;
        Ok((index, file))
    }

    /// `dispatcher`, `observer`).
    pub fn role_file(&self, kind: &str) -> PathBuf {
        self.dir.join(format!("{kind}.nk"))
    }

    /// The seed file of node `node`.
    pub fn node_file(&self, node: &str) -> PathBuf {
        self.dir.join("nodes").join(format!("{node}.nk"))
    }

    /// The seed file of device `name` (`device`: the default device).
    pub fn device_file(&self, name: &str) -> PathBuf {
        if name == Role::Device.kind() {
            self.role_file(name)
        } else {
            self.dir.join("devices").join(format!("{name}.nk"))
        }
    }

    /// The server configuration include.
    pub fn server_conf(&self) -> PathBuf {
        self.dir.join(SERVER_CONF)
    }

    /// The CA certificate clients trust, with `--tls`.
    pub fn tls_ca(&self) -> Option<PathBuf> {
        self.state.tls.then(|| self.dir.join("tls").join("ca.pem"))
    }

    /// The server's certificate and key, with `--tls`.
    pub fn server_tls(&self) -> Option<ServerTls> {
        let tls = self.dir.join("tls");
        self.state.tls.then(|| ServerTls {
            cert_file: tls.join("server.pem").display().to_string(),
            key_file: tls.join("server-key.pem").display().to_string(),
            ca_file: tls.join("ca.pem").display().to_string(),
        })
    }

    /// The leaf link's password (user [`auth::LEAF_USER`]).
    pub fn leaf_password(&self) -> &str {
        &self.state.leaf_password
    }

    /// The URL a leaf joins the hub's leaf port at `host_port` with,
    /// credentials included.
    pub fn leaf_url(&self, host_port: &str) -> String {
        format!(
            "nats-leaf://{}:{}@{host_port}",
            auth::LEAF_USER,
            self.state.leaf_password
        )
    }

    /// Connection options at `url` with the identity in `seed_file`.
    pub fn nats_options(&self, url: &str, seed_file: PathBuf) -> NatsOptions {
        NatsOptions {
            nkey_file: Some(seed_file),
            tls_ca_file: self.tls_ca(),
            prefix: self.state.prefix.clone(),
            ..NatsOptions::for_url(url)
        }
    }

    /// The identities, as in `users.toml`.
    pub fn identities(&self) -> &[Identity] {
        &self.state.users
    }

    fn scope(&self) -> Scope {
        Scope {
            subjects: Subjects::new(self.state.prefix.clone()),
            edge_domain: self.state.edge_domain.clone(),
        }
    }

    /// The configuration blocks of the leaf port (hub side): the leaf
    /// link's password, and TLS with `--tls`.
    pub fn leaf_port_block(&self) -> String {
        let mut block = format!(
            "  authorization {{\n    user: {}\n    password: {}\n  }}\n",
            auth::quoted(auth::LEAF_USER),
            auth::quoted(&self.state.leaf_password)
        );
        if let Some(tls) = self.server_tls() {
            block.push_str(&indent(&auth::tls_block(&tls)));
        }
        block
    }

    /// One remote of a leaf's configuration joining the hub at `url` (a
    /// URL or a `$VARIABLE`), verifying the hub's certificate with `--tls`.
    pub fn remote_block(&self, url: &str) -> String {
        auth::leaf_remote(
            url,
            self.server_tls()
                .as_ref()
                .map(|tls| Path::new(&tls.ca_file)),
        )
    }

    /// Writes `server.conf`, `hub.conf`, `leaf.conf` and `users.toml` from
    /// the identities.
    pub fn write(&self) -> anyhow::Result<()> {
        let users: Vec<User> = self
            .state
            .users
            .iter()
            .filter_map(|u| {
                let role = match u.role.as_str() {
                    "device" => Role::Device,
                    "operator" => Role::Operator,
                    "dispatcher" => Role::Dispatcher,
                    "observer" => Role::Observer,
                    "executor" => Role::Executor {
                        node: u.name.clone(),
                    },
                    // Password users: written below.
                    _ => return None,
                };
                Some(User {
                    role,
                    public_key: u.public_key.clone(),
                })
            })
            .collect();
        let mut server = String::from(
            "# Written by `comfaas auth`: every identity of this site and what it may do\n\
             # (see SECURITY.md, \"Roles\"). Include it in the server's configuration.\n",
        );
        let mqtt: Vec<auth::MqttUser> = self
            .state
            .users
            .iter()
            .filter(|u| u.role == Role::MqttDevice.kind())
            .filter_map(|u| {
                Some(auth::MqttUser {
                    name: u.name.clone(),
                    password: u.password.clone()?,
                })
            })
            .collect();
        server.push_str(&auth::authorization_block_with(
            &users,
            &mqtt,
            &self.scope(),
        ));
        if let Some(tls) = self.server_tls() {
            server.push_str(&auth::tls_block(&tls));
        }
        // Private: it holds the MQTT devices' passwords.
        write_private(&self.server_conf(), server.as_bytes())?;
        // JetStream in the file, not only by `-js`: nats-server 2.9 shuts
        // JetStream down on a reload (as `add-device` asks for) when only
        // the flag enabled it.
        std::fs::write(
            self.dir.join(SINGLE_CONF),
            format!(
                "# One server with the identities of {SERVER_CONF}.\n\
                 # Start: nats-server -c {} -sd <dir>; reload: nats-server --signal reload\n\
                 include \"{SERVER_CONF}\"\njetstream {{}}\n",
                self.dir.join(SINGLE_CONF).display()
            ),
        )?;
        let hub = format!(
            "# A cloud site (nats/hub.conf) with the identities of {SERVER_CONF} and a leaf\n\
             # port that takes only the site's leaf link.\n\
             # Start: COMFAAS_SITE=chicago COMFAAS_LEAF_PORT=7422 nats-server -c {} -js -sd <dir>\n\
             include \"{SERVER_CONF}\"\n\
             server_name: $COMFAAS_SITE\njetstream {{\n  domain: $COMFAAS_SITE\n}}\n\
             leafnodes {{\n  port: $COMFAAS_LEAF_PORT\n{}}}\n",
            self.dir.join(HUB_CONF).display(),
            self.leaf_port_block()
        );
        std::fs::write(self.dir.join(HUB_CONF), hub)?;
        let leaf = format!(
            "# An edge site (nats/leaf.conf) with the identities of {SERVER_CONF}, joining\n\
             # a hub over the leaf link. The URL carries the link's credentials:\n\
             #   COMFAAS_HUB_LEAF_URL=nats-leaf://{}:<leaf_password in users.toml>@hub:7422\n\
             # Start: COMFAAS_SITE=edge COMFAAS_HUB_LEAF_URL=… nats-server -c {} -js -sd <dir>\n\
             include \"{SERVER_CONF}\"\n\
             server_name: $COMFAAS_SITE\njetstream {{\n  domain: $COMFAAS_SITE\n}}\n\
             leafnodes {{\n  remotes: [\n{}\n  ]\n}}\n",
            auth::LEAF_USER,
            self.dir.join(LEAF_CONF).display(),
            self.remote_block("$COMFAAS_HUB_LEAF_URL")
        );
        std::fs::write(self.dir.join(LEAF_CONF), leaf)?;
        let state = toml::to_string_pretty(&self.state).context("encode users.toml")?;
        write_private(&self.dir.join(USERS_FILE), state.as_bytes())
    }
}

/// `text` indented by two spaces, line by line.
fn indent(text: &str) -> String {
    text.lines().map(|l| format!("  {l}\n")).collect()
}

/// The public key of the seed in `file`.
pub fn public_key(file: &Path) -> anyhow::Result<String> {
    Ok(comfaas_platform::signing::Signer::from_file(file)?.public_key())
}

/// What to tell the operator after an identity was added.
pub fn reload_hint(auth: &AuthDir) -> String {
    format!(
        "{} rewritten: the server must reload it (`nats-server --signal reload` or SIGHUP)",
        auth.server_conf().display()
    )
}

/// The `comfaas auth` subcommands.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum AuthCommand {
    /// Make the credentials of a site: one NKey per role and node, the
    /// server configuration include, optionally TLS
    Init {
        /// Folder to write (must not hold credentials yet)
        dir: PathBuf,
        /// What to make.
        #[command(flatten)]
        options: InitOptions,
    },
    /// Add a device identity (DIR/devices/NAME.nk)
    AddDevice {
        /// Device name
        name: String,
        /// The auth folder
        dir: PathBuf,
    },
    /// Add an MQTT device: user NAME with a new password
    /// (DIR/mqtt/NAME.password), accepted on MQTT connections only
    AddMqttDevice {
        /// Device name: its MQTT user name
        name: String,
        /// The auth folder
        dir: PathBuf,
    },
    /// Add an executor node identity (DIR/nodes/NAME.nk)
    AddNode {
        /// Node id
        name: String,
        /// The auth folder
        dir: PathBuf,
    },
    /// Give an identity a new key (`operator`, `dispatcher`, `observer`,
    /// `device`, `device:NAME`, `node:NAME`), or an MQTT device
    /// (`mqtt:NAME`) a new password; reload the server after
    Rotate {
        /// Whose key
        who: String,
        /// The auth folder
        dir: PathBuf,
    },
    /// Remove a device or node identity (`device:NAME`, `mqtt:NAME`,
    /// `node:NAME`); reload the server after
    Revoke {
        /// Whose key
        who: String,
        /// The auth folder
        dir: PathBuf,
    },
    /// Write the server configuration again from the identities, with the
    /// permissions of this comfaas (after an upgrade); reload the server after
    Refresh {
        /// The auth folder
        dir: PathBuf,
    },
    /// Print the public key of a seed file and the inbox prefix its replies
    /// must use (e.g. `nats --inbox-prefix …` for a device)
    Show {
        /// A seed file (`.nk`)
        file: PathBuf,
    },
}

/// Runs `comfaas auth …` for subjects under `prefix`.
pub fn run(command: AuthCommand, prefix: &str) -> anyhow::Result<()> {
    match command {
        AuthCommand::Init { dir, options } => {
            let auth = init(&dir, prefix, &options)?;
            println!("credentials written to {}", dir.display());
            for identity in auth.identities() {
                println!(
                    "  {:<10} {:<12} {}",
                    identity.role, identity.name, identity.public_key
                );
            }
            println!(
                "start the server: nats-server -c {} -sd <store dir> (sites: {} / {})",
                auth.dir().join(SINGLE_CONF).display(),
                auth.dir().join(HUB_CONF).display(),
                auth.dir().join(LEAF_CONF).display()
            );
            if let Some(ca) = auth.tls_ca() {
                println!("clients trust the CA with --tls-ca {}", ca.display());
            }
        }
        AuthCommand::Rotate { who, dir } => {
            let mut auth = AuthDir::open(&dir)?;
            let file = auth.rotate(&who)?;
            println!("{who}: new credential in {}", file.display());
            println!("{}", reload_hint(&auth));
        }
        AuthCommand::Revoke { who, dir } => {
            let mut auth = AuthDir::open(&dir)?;
            auth.revoke(&who)?;
            println!("{who}: removed");
            println!("{}", reload_hint(&auth));
        }
        AuthCommand::Refresh { dir } => {
            let auth = AuthDir::open(&dir)?;
            auth.write()?;
            println!("{}", reload_hint(&auth));
        }
        AuthCommand::Show { file } => {
            let key = public_key(&file)?;
            println!("public key:   {key}");
            println!(
                "inbox prefix: {}",
                comfaas_schemas::names::inbox_prefix_of(&key)
            );
        }
        AuthCommand::AddDevice { name, dir } => {
            let mut auth = AuthDir::open(&dir)?;
            let file = auth.add_device(&name)?;
            println!("device {name}: {}", file.display());
            println!("{}", reload_hint(&auth));
        }
        AuthCommand::AddMqttDevice { name, dir } => {
            let mut auth = AuthDir::open(&dir)?;
            let file = auth.add_mqtt_device(&name)?;
            println!(
                "MQTT device {name}: user `{name}`, password in {}",
                file.display()
            );
            println!("{}", reload_hint(&auth));
        }
        AuthCommand::AddNode { name, dir } => {
            let mut auth = AuthDir::open(&dir)?;
            let file = auth.add_node(&name)?;
            println!("node {name}: {}", file.display());
            println!("{}", reload_hint(&auth));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A folder made by an older comfaas (its server include lacks grants
    /// this version's services need) gets this version's permissions back
    /// from its identities, as `auth refresh` and `dev --secure` do.
    #[test]
    fn a_refresh_writes_this_versions_permissions() {
        let temp = tempfile::tempdir().unwrap();
        let dir = temp.path().join("auth");
        let options = InitOptions {
            tls: false,
            nodes: vec!["edge-1".to_owned()],
            hosts: vec![],
            edge_domain: "edge".to_owned(),
        };
        let auth = init(&dir, "comfaas", &options).unwrap();
        let conf = auth.server_conf();
        let current = std::fs::read_to_string(&conf).unwrap();
        let log_grant = "comfaas.log.*.edge-1";
        assert!(current.contains(log_grant), "{current}");
        std::fs::write(&conf, current.replace(log_grant, "comfaas.old")).unwrap();
        run(AuthCommand::Refresh { dir: dir.clone() }, "comfaas").unwrap();
        assert_eq!(std::fs::read_to_string(&conf).unwrap(), current);
        assert!(run(
            AuthCommand::Refresh {
                dir: temp.path().join("none")
            },
            "comfaas"
        )
        .is_err());
    }

    #[test]
    fn init_writes_the_layout_and_add_rewrites_the_include() {
        let temp = tempfile::tempdir().unwrap();
        let dir = temp.path().join("auth");
        let options = InitOptions {
            tls: true,
            nodes: vec!["edge-1".to_owned()],
            hosts: vec![],
            edge_domain: "edge".to_owned(),
        };
        let auth = init(&dir, "comfaas", &options).unwrap();
        for file in [
            "server.conf",
            "nats.conf",
            "hub.conf",
            "leaf.conf",
            "users.toml",
            "device.nk",
            "operator.nk",
            "dispatcher.nk",
            "observer.nk",
            "operator.pub",
            "nodes/edge-1.nk",
            "tls/ca.pem",
            "tls/server.pem",
        ] {
            assert!(dir.join(file).is_file(), "{file}");
        }
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(dir.join("nodes/edge-1.nk"))
                .unwrap()
                .permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        assert!(
            init(&dir, "comfaas", &options).is_err(),
            "never overwrites keys"
        );
        let mut auth = AuthDir::open(auth.dir()).unwrap();
        let file = auth.add_device("sensor-7").unwrap();
        let seed = comfaas_platform::nats::read_seed(&file).unwrap();
        let public = nkeys::KeyPair::from_seed(&seed).unwrap().public_key();
        let conf = std::fs::read_to_string(dir.join("server.conf")).unwrap();
        assert!(conf.contains(&public));
        assert!(conf.contains(&format!("_INBOX.{public}.>")));
        assert!(auth.add_device("sensor-7").is_err());
        assert!(auth.add_node("a.b").is_err());
    }

    /// An MQTT device gets a password of its own, in a private file and in
    /// the (now private) server include, for MQTT connections only; a
    /// second one of the same name, or a bad name, is refused.
    #[test]
    fn an_mqtt_device_gets_a_private_password() {
        let temp = tempfile::tempdir().unwrap();
        let dir = temp.path().join("auth");
        let options = InitOptions {
            tls: false,
            nodes: vec![],
            hosts: vec![],
            edge_domain: "edge".to_owned(),
        };
        let mut auth = init(&dir, "comfaas", &options).unwrap();
        let file = auth.add_mqtt_device("sensor-1").unwrap();
        let password = std::fs::read_to_string(&file).unwrap();
        assert_eq!(Some(password.trim()), auth.mqtt_password("sensor-1"));
        assert!(password.trim().len() >= 32);
        for private in [file.as_path(), &dir.join(SERVER_CONF)] {
            let mode = std::os::unix::fs::PermissionsExt::mode(
                &std::fs::metadata(private).unwrap().permissions(),
            );
            assert_eq!(mode & 0o777, 0o600, "{}", private.display());
        }
        let conf = std::fs::read_to_string(dir.join(SERVER_CONF)).unwrap();
        assert!(conf.contains("\"user\": \"sensor-1\""), "{conf}");
        assert!(conf.contains(password.trim()));
        assert!(conf.contains("\"MQTT\""));
        let again = AuthDir::open(&dir).unwrap();
        assert_eq!(
            again.mqtt_password("sensor-1"),
            auth.mqtt_password("sensor-1")
        );
        assert!(auth.add_mqtt_device("sensor-1").is_err());
        assert!(auth.add_mqtt_device("a/b").is_err());
        // Rotated: a new password, the old one gone from the include.
        let old = password.trim().to_owned();
        auth.rotate("mqtt:sensor-1").unwrap();
        let new = std::fs::read_to_string(&file).unwrap();
        assert_ne!(new.trim(), old);
        let conf = std::fs::read_to_string(dir.join(SERVER_CONF)).unwrap();
        assert!(conf.contains(new.trim()) && !conf.contains(&old));
        // Revoked: no user, no file.
        auth.revoke("mqtt:sensor-1").unwrap();
        assert!(!file.exists());
        assert_eq!(auth.mqtt_password("sensor-1"), None);
        let conf = std::fs::read_to_string(dir.join(SERVER_CONF)).unwrap();
        assert!(!conf.contains("sensor-1"));
    }

    /// Rotating or revoking someone who is not there is an error that
    /// says so, and leaves the folder as it was.
    #[test]
    fn rotate_and_revoke_refuse_unknown_identities_and_change_nothing() {
        let temp = tempfile::tempdir().unwrap();
        let dir = temp.path().join("auth");
        let options = InitOptions {
            tls: false,
            nodes: vec!["edge-1".to_owned()],
            hosts: vec![],
            edge_domain: "edge".to_owned(),
        };
        let mut auth = init(&dir, "comfaas", &options).unwrap();
        let before = std::fs::read_to_string(dir.join("server.conf")).unwrap();
        for (who, says) in [
            ("nobody", "names no identity"),
            ("device:ghost", "is not in"),
            ("node:cloud-9", "is not in"),
        ] {
            let error = auth.rotate(who).unwrap_err().to_string();
            assert!(error.contains(says), "rotate {who}: {error}");
            let error = auth.revoke(who).unwrap_err().to_string();
            assert!(
                error.contains(says) || error.contains("can be rotated instead"),
                "revoke {who}: {error}"
            );
        }
        let error = auth.revoke("dispatcher").unwrap_err().to_string();
        assert!(error.contains("can be rotated instead"), "{error}");
        assert_eq!(
            std::fs::read_to_string(dir.join("server.conf")).unwrap(),
            before
        );
        assert!(dir.join("dispatcher.nk").is_file());
    }
}
