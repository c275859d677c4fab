//! Who may do what on NATS: the one list of every subject, JetStream API,
//! KV bucket and object store each role uses, and the server configuration
//! (`authorization { users = [...] }`) written from it.
//!
//! A role is allowed exactly what its service does and nothing beyond it;
//! the lists below were found by reading what async-nats 0.51 sends for
//! each call and by running every service under them against
//! nats-server 2.9 and 2.15 while watching for "Permissions Violation".
//! Every JetStream API subject is allowed both plain (`$JS.API.…`) and in a
//! domain (`$JS.<domain>.API.…`), so that a cloud service reaching the
//! edge's JetStream across a leaf link is held to the same list.
//!
//! Who creates what: in secure mode only the operator and the dispatcher
//! create streams, buckets and object stores (the first to start does);
//! devices, executors and observers only use them.
//!
//! Identities are bare NKeys (Ed25519 user keys) named in the server
//! configuration, not JWT accounts: a site needs no account server or
//! resolver, `comfaas auth` regenerates the whole list from
//! `users.toml`, and nats-server 2.9 supports it fully. A client connected
//! with an nkey takes `_INBOX.<its public key>` as its inbox prefix
//! ([`NatsOptions::connect`](crate::nats::NatsOptions::connect)), so each
//! identity is allowed to subscribe to its own replies only.

use comfaas_schemas::names::{self, Subjects};
use serde::Serialize;

/// The roles of a comfaas site. An executor's role names its node: it may
/// take work and report load only as that node.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// A device: invokes functions, publishes events, gets its own replies,
    /// puts inputs into `comfaas_inputs` and reads outputs by name.
    Device,
    /// An operator: deploy, rm, rollback, ls, nodes, metrics, backup,
    /// secrets; may invoke too.
    Operator,
    /// A dispatcher: takes invocations and events, places them on nodes.
    Dispatcher,
    /// The executor of one node.
    Executor {
        /// The node's id.
        node: String,
    },
    /// Read-only: loads, dispatcher metrics, results, dead letters, the
    /// events consumer's counts (`comfaas dashboard`).
    Observer,
    /// A device speaking MQTT (which cannot sign an NKey challenge): a
    /// user name and password, accepted on MQTT connections only. It
    /// publishes events (`<prefix>/event/<fn>`) and reads results
    /// (`<prefix>/result/<fn>`), nothing else.
    MqttDevice,
}

/// Allowed and denied subjects of one direction (publish or subscribe).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Rules {
    /// Subjects allowed (wildcards as in NATS).
    pub allow: Vec<String>,
    /// Subjects denied even when an allowed wildcard covers them.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<String>,
}

/// What one identity may publish and subscribe to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Permissions {
    /// Publish rules.
    pub publish: Rules,
    /// Subscribe rules.
    pub subscribe: Rules,
}

/// What the permissions are written for: the subject prefix and the edge's
/// JetStream domain (whose events and results a cloud site may mirror).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    /// Subjects under the configured prefix.
    pub subjects: Subjects,
    /// The edge site's JetStream domain.
    pub edge_domain: String,
}

impl Default for Scope {
    fn default() -> Self {
        Self {
            subjects: Subjects::default(),
            edge_domain: DEFAULT_EDGE_DOMAIN.to_owned(),
        }
    }
}

/// The edge's JetStream domain when none is given (`comfaas dev --sites`).
pub const DEFAULT_EDGE_DOMAIN: &str = "edge";

/// The user name of the leaf link between sites (with a password).
pub const LEAF_USER: &str = "comfaas-leaf";

/// The NATS JetStream subjects a role's permissions name. These are NATS's
/// own names (what async-nats sends), not comfaas's, so they live here
/// rather than in `names.rs`.
mod js {
    /// Every JetStream API request, in the connected server's domain.
    pub const API: &str = "$JS.API";
    /// The same in a named domain: `$JS.<domain>.API`.
    pub const API_ANY_DOMAIN: &str = "$JS.*.API";
    /// Acknowledgements of consumed messages: `$JS.ACK.<stream>.<consumer>.…`.
    pub const ACK: &str = "$JS.ACK";
    /// Flow-control replies of push (ordered) consumers: `$JS.FC.<stream>.…`.
    pub const FLOW_CONTROL: &str = "$JS.FC";
    /// Writes into a KV bucket: `$KV.<bucket>.<key>`.
    pub const KV: &str = "$KV";
    /// Writes into an object store: `$O.<bucket>.C|M.…`.
    pub const OBJECT: &str = "$O";
}

/// A builder of one role's lists, so each capability reads as one line.
#[derive(Default)]
struct Grant {
    publish: Vec<String>,
    subscribe: Vec<String>,
    deny_publish: Vec<String>,
    deny_subscribe: Vec<String>,
}

impl Grant {
    fn publish(&mut self, subject: impl Into<String>) -> &mut Self {
        self.publish.push(subject.into());
        self
    }

    fn subscribe(&mut self, subject: impl Into<String>) -> &mut Self {
        self.subscribe.push(subject.into());
        self
    }

    /// A JetStream API call `op` (e.g. `STREAM.INFO.X`), in any domain.
    fn api(&mut self, op: impl AsRef<str>) -> &mut Self {
        let op = op.as_ref();
        self.publish(format!("{}.{op}", js::API));
        self.publish(format!("{}.{op}", js::API_ANY_DOMAIN))
    }

    /// Reading the stream `stream` by consumers: create one (plain and
    /// named with its filter), flow control, acks, pulls, single-message
    /// reads. No `CONSUMER.DELETE`: a reader could delete other readers'
    /// consumers (the dispatchers' and nodes' registry watchers); the
    /// ephemeral consumers readers make go away by themselves once idle.
    fn read_stream(&mut self, stream: &str) -> &mut Self {
        self.api(format!("STREAM.INFO.{stream}"))
            .api(format!("STREAM.MSG.GET.{stream}"))
            .api(format!("DIRECT.GET.{stream}"))
            .api(format!("DIRECT.GET.{stream}.>"))
            .api(format!("CONSUMER.CREATE.{stream}"))
            .api(format!("CONSUMER.CREATE.{stream}.>"))
            .publish(format!("{}.{stream}.>", js::FLOW_CONTROL))
    }

    /// Reading the KV bucket `bucket`: get, watch, keys, history.
    fn read_kv(&mut self, bucket: &str) -> &mut Self {
        self.read_stream(&names::kv_stream(bucket))
    }

    /// Writing (put, delete) keys of the KV bucket `bucket`.
    fn write_kv(&mut self, bucket: &str) -> &mut Self {
        self.publish(format!("{}.{bucket}.>", js::KV))
    }

    /// Reading objects of `bucket`: info, get, list.
    fn read_objects(&mut self, bucket: &str) -> &mut Self {
        self.read_stream(&names::object_store_stream(bucket))
    }

    /// Pulling objects of `bucket` chunk by chunk, as a node fetches an
    /// input: pulls (`CONSUMER.MSG.NEXT`) and deleting the consumer when
    /// done, on top of [`Grant::read_objects`] (which creates it). The
    /// consumer's name is the server's choice, one subject token, so the
    /// grant covers any consumer of this store's stream: only nodes read
    /// it through consumers, and each could read every object anyway.
    fn pull_objects(&mut self, bucket: &str) -> &mut Self {
        let stream = names::object_store_stream(bucket);
        self.read_objects(bucket)
            .api(format!("CONSUMER.MSG.NEXT.{stream}.*"))
            .api(format!("CONSUMER.DELETE.{stream}.*"))
    }

    /// Putting objects into `bucket`: looking up whether one exists (by
    /// name: a direct get of the last message on its metadata subject),
    /// then chunks and metadata. No purge: a device cannot drop the chunks
    /// of an object. No `STREAM.MSG.GET` and no direct get by sequence:
    /// those read any message of the stream, other tenants' chunks too.
    fn put_objects(&mut self, bucket: &str) -> &mut Self {
        let stream = names::object_store_stream(bucket);
        self.api(format!("STREAM.INFO.{stream}"))
            .api(format!("DIRECT.GET.{stream}.{}.{bucket}.M.>", js::OBJECT))
            .publish(format!("{}.{bucket}.>", js::OBJECT))
    }

    /// Deleting objects of `bucket` (their chunks are purged).
    fn remove_objects(&mut self, bucket: &str) -> &mut Self {
        self.api(format!(
            "STREAM.PURGE.{}",
            names::object_store_stream(bucket)
        ))
    }

    /// Creating the stream `stream` when it is missing.
    fn create_stream(&mut self, stream: &str) -> &mut Self {
        self.api(format!("STREAM.CREATE.{stream}"))
            .api(format!("STREAM.INFO.{stream}"))
    }

    /// Every stream, bucket and object store a site runs on, created when
    /// missing (the operator and the dispatcher do; see the module doc).
    fn create_all(&mut self) -> &mut Self {
        for stream in [
            names::EVENTS_STREAM.to_owned(),
            names::RESULTS_STREAM.to_owned(),
            names::kv_stream(names::FUNCTIONS_BUCKET),
            names::kv_stream(names::SECRETS_BUCKET),
            names::object_store_stream(names::PACKAGES_BUCKET),
            names::object_store_stream(names::INPUTS_BUCKET),
            names::object_store_stream(names::OUTPUTS_BUCKET),
            names::DLQ_STREAM.to_owned(),
            names::LOGS_STREAM.to_owned(),
            names::STORAGE_PROBE_STREAM.to_owned(),
        ] {
            self.create_stream(&stream);
        }
        // The logs stream takes new size and age limits from the config.
        self.api(format!("STREAM.UPDATE.{}", names::LOGS_STREAM));
        // The events stream is brought up to date when an older comfaas
        // made it, and made with the dispatchers' durable consumer (its
        // interest retention keeps events only for a consumer).
        let (events, consumer) = (names::EVENTS_STREAM, names::DISPATCH_EVENTS_CONSUMER);
        self.api(format!("STREAM.UPDATE.{events}"))
            .api(format!("CONSUMER.INFO.{events}.{consumer}"))
            .api(format!("CONSUMER.CREATE.{events}.{consumer}"))
            .api(format!("CONSUMER.CREATE.{events}.{consumer}.>"))
            .api(format!("CONSUMER.DURABLE.CREATE.{events}.{consumer}"));
        // The probe is deleted at once; account info is read by
        // async-nats before it creates a KV bucket.
        self.api(format!("STREAM.DELETE.{}", names::STORAGE_PROBE_STREAM))
            .api(names::JS_ACCOUNT_INFO)
    }

    /// Replies to this identity: `_INBOX.<public key>.>` only.
    fn own_inbox(&mut self, public_key: &str) -> &mut Self {
        self.subscribe(format!("{}.>", names::inbox_prefix_of(public_key)))
    }

    /// Answering NATS micro discovery (`$SRV.PING|INFO|STATS`) as instance
    /// `id` of `service` (see `platform::micro`): only its own name and id.
    fn discovered_as(&mut self, service: &str, id: &str) -> &mut Self {
        for subject in names::micro::grant(service, id) {
            self.subscribe(subject);
        }
        self.answer_requests()
    }

    /// Answering requests: publishing on reply subjects, which are inboxes.
    fn answer_requests(&mut self) -> &mut Self {
        self.publish(format!("{}.>", names::INBOX_PREFIX))
    }

    fn build(mut self) -> Permissions {
        // Capabilities overlap (creating a stream also reads its info):
        // each subject once, in the order first granted.
        for list in [
            &mut self.publish,
            &mut self.subscribe,
            &mut self.deny_publish,
            &mut self.deny_subscribe,
        ] {
            let mut seen = std::collections::HashSet::new();
            list.retain(|s| seen.insert(s.clone()));
        }
        Permissions {
            publish: Rules {
                allow: self.publish,
                deny: self.deny_publish,
            },
            subscribe: Rules {
                allow: self.subscribe,
                deny: self.deny_subscribe,
            },
        }
    }
}

impl Role {
    /// The role's name as written in `users.toml` and file names
    /// (`device`, `operator`, `dispatcher`, `executor`, `observer`).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Device => "device",
            Self::Operator => "operator",
            Self::Dispatcher => "dispatcher",
            Self::Executor { .. } => "executor",
            Self::Observer => "observer",
            Self::MqttDevice => "mqtt-device",
        }
    }

    /// One role of each kind (the executor as node `<node>`), for the role
    /// table in `SECURITY.md`.
    pub fn table() -> Vec<Role> {
        vec![
            Self::Device,
            Self::Operator,
            Self::Dispatcher,
            Self::Executor {
                node: "<node>".to_owned(),
            },
            Self::Observer,
            Self::MqttDevice,
        ]
    }

    /// Everything the identity with `public_key` in this role may publish
    /// and subscribe to under `scope`, and nothing beyond.
    pub fn permissions(&self, scope: &Scope, public_key: &str) -> Permissions {
        let s = &scope.subjects;
        let mut g = Grant::default();
        // An MQTT client has no NATS inbox (MQTT 3.1.1 has no replies).
        if *self != Self::MqttDevice {
            g.own_inbox(public_key);
        }
        match self {
            Self::Device => {
                g.publish(s.invoke_all())
                    .publish(s.event_all())
                    .put_objects(names::INPUTS_BUCKET)
                    .read_objects(names::OUTPUTS_BUCKET);
                // Belt and braces: a device never answers anyone, never
                // takes part in the platform's own traffic.
                g.deny_publish.push(format!("{}.>", names::INBOX_PREFIX));
                g.deny_subscribe.push(s.all());
            }
            Self::Operator => {
                g.publish(names::micro::all())
                    .publish(s.invoke_all())
                    .publish(s.event_all())
                    .subscribe(s.node_load_all())
                    .subscribe(s.dispatch_metrics_all())
                    .subscribe(s.result_all())
                    .create_all()
                    .read_kv(names::FUNCTIONS_BUCKET)
                    .write_kv(names::FUNCTIONS_BUCKET)
                    .read_kv(names::SECRETS_BUCKET)
                    .write_kv(names::SECRETS_BUCKET)
                    .read_objects(names::PACKAGES_BUCKET)
                    .put_objects(names::PACKAGES_BUCKET)
                    .remove_objects(names::PACKAGES_BUCKET)
                    .put_objects(names::INPUTS_BUCKET)
                    .read_objects(names::OUTPUTS_BUCKET)
                    .read_stream(names::RESULTS_STREAM)
                    .read_stream(names::DLQ_STREAM)
                    .read_stream(names::LOGS_STREAM)
                    .api(format!("STREAM.PURGE.{}", names::DLQ_STREAM))
                    .api(format!("STREAM.MSG.DELETE.{}", names::DLQ_STREAM));
                // A cloud site keeps a mirror of the edge's streams.
                for stream in [
                    names::events_backup_stream(&scope.edge_domain),
                    names::results_backup_stream(&scope.edge_domain),
                ] {
                    g.create_stream(&stream);
                }
            }
            Self::Dispatcher => {
                let events = names::EVENTS_STREAM;
                let consumer = names::DISPATCH_EVENTS_CONSUMER;
                g.subscribe(format!(
                    "{} {}",
                    s.invoke_all(),
                    names::DISPATCH_QUEUE_GROUP
                ))
                .subscribe(s.node_load_all())
                .publish(s.work_all())
                .publish(s.node_ping_all())
                .publish(s.result_all())
                .publish(s.dispatch_metrics_all())
                .publish(s.dlq_all())
                .publish(s.event_held_all())
                .answer_requests()
                .create_all()
                .read_kv(names::FUNCTIONS_BUCKET)
                .read_objects(names::INPUTS_BUCKET)
                .api(format!("CONSUMER.MSG.NEXT.{events}.{consumer}"))
                .publish(format!("{}.{events}.{consumer}.>", js::ACK));
                // Any dispatcher id: ids are chosen at start (random by default).
                g.discovered_as(names::micro::DISPATCH_SERVICE, "*");
            }
            Self::Executor { node } => {
                g.subscribe(s.work(node))
                    .subscribe(s.node_ping(node))
                    .subscribe(s.event_held_all())
                    .publish(s.node_load(node))
                    .publish(s.log_of_node(node))
                    .publish(s.result_all())
                    .answer_requests()
                    .read_kv(names::FUNCTIONS_BUCKET)
                    .read_kv(names::SECRETS_BUCKET)
                    .read_objects(names::PACKAGES_BUCKET)
                    .pull_objects(names::INPUTS_BUCKET)
                    .put_objects(names::OUTPUTS_BUCKET)
                    .discovered_as(names::micro::EXEC_SERVICE, node);
            }
            Self::MqttDevice => {
                // Results of every function, as the observer reads them:
                // MQTT has no private reply topic to send one device's to.
                // `comfaas/result/#` also matches the parent level in MQTT:
                // nats-server subscribes to `comfaas.result` beside
                // `comfaas.result.>`, and refuses the whole subscription
                // when either is not allowed. Nothing is published there.
                let result_all = s.result_all();
                let result_level = result_all.trim_end_matches(".>").to_owned();
                g.publish(s.event_all())
                    .subscribe(result_all)
                    .subscribe(result_level)
                    .subscribe(names::mqtt::DELIVERIES);
            }
            Self::Observer => {
                g.publish(names::micro::all())
                    .subscribe(s.node_load_all())
                    .subscribe(s.dispatch_metrics_all())
                    .subscribe(s.result_all())
                    .read_stream(names::RESULTS_STREAM)
                    .read_stream(names::DLQ_STREAM)
                    // The dashboard's events pending / in progress / being
                    // retried: the dispatchers' consumer's counts, not the
                    // events themselves (no read of COMFAAS_EVENTS).
                    .api(format!(
                        "CONSUMER.INFO.{}.{}",
                        names::EVENTS_STREAM,
                        names::DISPATCH_EVENTS_CONSUMER
                    ))
                    .read_stream(names::LOGS_STREAM);
            }
        }
        g.build()
    }
}

/// One identity of the server configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// Its role.
    pub role: Role,
    /// Its NKey public key (`U…`).
    pub public_key: String,
}

/// The leaf link's credentials and whether links and clients use TLS.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ServerTls {
    /// The server's certificate (PEM).
    pub cert_file: String,
    /// Its private key (PEM).
    pub key_file: String,
    /// The CA that signed it, for verifying a hub from a leaf.
    pub ca_file: String,
}

#[derive(Serialize)]
struct UserEntry<'a> {
    nkey: &'a str,
    permissions: Permissions,
}

/// A device connecting over MQTT with a user name and password (role
/// [`Role::MqttDevice`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttUser {
    /// Its user name (the device's name).
    pub name: String,
    /// Its password.
    pub password: String,
}

#[derive(Serialize)]
struct PasswordEntry<'a> {
    user: &'a str,
    password: &'a str,
    permissions: Permissions,
    /// MQTT only: the password opens no NATS connection.
    allowed_connection_types: [&'static str; 1],
}

/// nats-server's name of an MQTT connection in `allowed_connection_types`.
const MQTT_CONNECTION: &str = "MQTT";

/// The `authorization { users = [...] }` block for `users` under `scope`,
/// as nats-server configuration text (JSON values, which the server's
/// format accepts and which quote `$JS…` subjects correctly).
pub fn authorization_block(users: &[User], scope: &Scope) -> String {
    authorization_block_with(users, &[], scope)
}

/// As [`authorization_block`], with MQTT devices (user name and password,
/// MQTT connections only) besides the NKey identities.
pub fn authorization_block_with(users: &[User], mqtt: &[MqttUser], scope: &Scope) -> String {
    let mut entries: Vec<serde_json::Value> = users
        .iter()
        .filter_map(|u| {
            serde_json::to_value(UserEntry {
                nkey: &u.public_key,
                permissions: u.role.permissions(scope, &u.public_key),
            })
            .ok()
        })
        .collect();
    entries.extend(mqtt.iter().filter_map(|u| {
        serde_json::to_value(PasswordEntry {
            user: &u.name,
            password: &u.password,
            permissions: Role::MqttDevice.permissions(scope, ""),
            allowed_connection_types: [MQTT_CONNECTION],
        })
        .ok()
    }));
    let users = serde_json::to_string_pretty(&entries).unwrap_or_else(|_| "[]".to_owned());
    format!("authorization {{\n  users = {users}\n}}\n")
}

/// A `tls { … }` block (client port, or inside `leafnodes`) serving `tls`.
pub fn tls_block(tls: &ServerTls) -> String {
    format!(
        "tls {{\n  cert_file: {}\n  key_file: {}\n  timeout: 5\n}}\n",
        quoted(&tls.cert_file),
        quoted(&tls.key_file)
    )
}

/// `text` as a quoted configuration string.
pub fn quoted(text: &str) -> String {
    serde_json::to_string(text).unwrap_or_default()
}

/// One entry of a leaf server's `leafnodes { remotes: [...] }`: `url` as
/// given (quoted, or a `$VARIABLE` the server resolves), over TLS trusting
/// `ca_file` when there is one.
pub fn leaf_remote(url: &str, ca_file: Option<&std::path::Path>) -> String {
    match ca_file {
        Some(ca) => format!(
            "    {{ url: {url}, tls: {{ ca_file: {} }} }}",
            quoted(&ca.display().to_string())
        ),
        None => format!("    {{ url: {url} }}"),
    }
}

/// The role table of `SECURITY.md` ("Roles"), one row per role and
/// direction, written from [`Role::permissions`] so the doc cannot drift
/// (a unit test compares them). Each `$JS.API.…` subject stands for its
/// domain form `$JS.*.API.…` too, which the table leaves out.
pub fn roles_markdown(scope: &Scope) -> String {
    let mut out = String::from("| role | direction | allowed | denied |\n|---|---|---|---|\n");
    for role in Role::table() {
        let p = role.permissions(scope, "<pubkey>");
        let name = match &role {
            Role::Executor { node } => format!("executor ({node})"),
            other => other.kind().to_owned(),
        };
        for (direction, rules) in [("publish", &p.publish), ("subscribe", &p.subscribe)] {
            let list = |v: &[String]| {
                if v.is_empty() {
                    "–".to_owned()
                } else {
                    v.iter()
                        .filter(|s| !s.starts_with(js::API_ANY_DOMAIN))
                        .map(|s| format!("`{s}`"))
                        .collect::<Vec<_>>()
                        .join("<br>")
                }
            };
            out.push_str(&format!(
                "| {name} | {direction} | {} | {} |\n",
                list(&rules.allow),
                list(&rules.deny)
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn perms(role: Role) -> Permissions {
        role.permissions(&Scope::default(), "UKEY")
    }

    #[test]
    fn an_executor_takes_and_reports_only_as_itself() {
        let p = perms(Role::Executor {
            node: "edge-1".to_owned(),
        });
        assert!(p
            .subscribe
            .allow
            .contains(&"comfaas.work.edge-1".to_owned()));
        assert!(p.subscribe.allow.contains(&"_INBOX.UKEY.>".to_owned()));
        assert!(!p
            .subscribe
            .allow
            .iter()
            .any(|s| s.contains('>') && s.starts_with("comfaas")));
        assert!(p
            .publish
            .allow
            .contains(&"comfaas.node.edge-1.load".to_owned()));
        // Logs only as itself, and it reads no logs.
        assert!(p.publish.allow.contains(&"comfaas.log.*.edge-1".to_owned()));
        assert!(!p
            .publish
            .allow
            .iter()
            .any(|s| s == "comfaas.log.>" || s.contains(names::LOGS_STREAM)));
        assert!(!p.publish.allow.iter().any(|s| s.starts_with("$KV.")));
        assert!(!p.publish.allow.iter().any(|s| s.contains("STREAM.CREATE")));
        assert!(!p.publish.allow.iter().any(|s| s.contains("STREAM.PURGE")));
        // It pulls input chunks through consumers of its own, and deletes
        // them; no other stream's consumers.
        let inputs = names::object_store_stream(names::INPUTS_BUCKET);
        for op in ["CONSUMER.MSG.NEXT", "CONSUMER.DELETE"] {
            let granted: Vec<&String> = p
                .publish
                .allow
                .iter()
                .filter(|s| s.starts_with(js::API) && s.contains(op))
                .collect();
            assert_eq!(
                granted,
                vec![&format!("{}.{op}.{inputs}.*", js::API)],
                "{op}"
            );
        }
    }

    #[test]
    fn a_device_invokes_and_reads_only_its_replies() {
        let p = perms(Role::Device);
        assert_eq!(p.subscribe.allow, vec!["_INBOX.UKEY.>".to_owned()]);
        assert!(p.publish.allow.contains(&"comfaas.invoke.>".to_owned()));
        assert!(!p.publish.allow.iter().any(|s| s.starts_with("$KV.")
            || s.starts_with("comfaas.work")
            || s.starts_with("comfaas.node")
            || s.contains("PURGE")
            || s.contains("CREATE.KV")));
    }

    #[test]
    fn an_mqtt_device_publishes_events_and_reads_results_only_over_mqtt() {
        let p = perms(Role::MqttDevice);
        assert_eq!(p.publish.allow, vec!["comfaas.event.>".to_owned()]);
        assert_eq!(
            p.subscribe.allow,
            vec![
                "comfaas.result.>".to_owned(),
                "comfaas.result".to_owned(),
                "$MQTT.sub.>".to_owned()
            ]
        );
        let text = authorization_block_with(
            &[],
            &[MqttUser {
                name: "sensor-1".to_owned(),
                password: "secret".to_owned(),
            }],
            &Scope::default(),
        );
        assert!(text.contains("\"user\": \"sensor-1\""), "{text}");
        let types = text
            .split("\"allowed_connection_types\": [")
            .nth(1)
            .and_then(|rest| rest.split(']').next())
            .unwrap_or_default();
        assert_eq!(types.trim(), "\"MQTT\"", "{text}");
    }

    #[test]
    fn the_config_quotes_every_subject() {
        let text = authorization_block(
            &[User {
                role: Role::Observer,
                public_key: "UKEY".to_owned(),
            }],
            &Scope::default(),
        );
        assert!(text.contains("\"nkey\": \"UKEY\""));
        assert!(text.contains("\"$JS.API.STREAM.INFO.COMFAAS_RESULTS\""));
    }

    /// `SECURITY.md`'s "Roles" table is the one written from the code.
    #[test]
    fn the_security_doc_lists_the_roles_of_the_code() {
        let doc_path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../SECURITY.md");
        let doc = std::fs::read_to_string(doc_path).expect("SECURITY.md");
        let table = roles_markdown(&Scope::default());
        assert!(
            doc.contains(&table),
            "SECURITY.md's role table differs from the code; replace it with:\n{table}"
        );
    }
}
