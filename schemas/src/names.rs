//! The only place where subjects, headers, streams, buckets and queue groups
//! are spelled. Everything else calls these.

/// The default subject prefix.
pub const DEFAULT_PREFIX: &str = "comfaas";

/// Queue group shared by all dispatchers on `invoke` subjects.
pub const DISPATCH_QUEUE_GROUP: &str = "comfaas-dispatch";
/// Durable consumer shared by all dispatchers on the events stream.
pub const DISPATCH_EVENTS_CONSUMER: &str = "comfaas-dispatch";

/// Stream holding device events (`<prefix>.event.>`).
pub const EVENTS_STREAM: &str = "COMFAAS_EVENTS";
/// Stream keeping results (`<prefix>.result.>`).
pub const RESULTS_STREAM: &str = "COMFAAS_RESULTS";
/// A cloud site's backup of an edge site's events: `COMFAAS_EVENTS_<DOMAIN>`.
pub fn events_backup_stream(edge_domain: &str) -> String {
    format!("{EVENTS_STREAM}_{}", edge_domain.to_uppercase())
}

/// A cloud site's backup of an edge site's results: `COMFAAS_RESULTS_<DOMAIN>`.
pub fn results_backup_stream(edge_domain: &str) -> String {
    format!("{RESULTS_STREAM}_{}", edge_domain.to_uppercase())
}

/// The stream JetStream keeps the object store `bucket` in: `OBJ_<bucket>`.
pub fn object_store_stream(bucket: &str) -> String {
    format!("OBJ_{bucket}")
}

/// The subject the chunks of one object of `bucket` are stored under:
/// `$O.<bucket>.C.<nuid>` (the object's `nuid` is in its info).
pub fn object_chunks_subject(bucket: &str, nuid: &str) -> String {
    format!("$O.{bucket}.C.{nuid}")
}

/// The subject the info of the object `encoded_name` (its name in
/// base64url, with padding) of `bucket` is kept under:
/// `$O.<bucket>.M.<encoded_name>`, one message per name.
pub fn object_info_subject(bucket: &str, encoded_name: &str) -> String {
    format!("$O.{bucket}.M.{encoded_name}")
}

/// Stream of function logs (`<prefix>.log.<fn>.<node>`): what each run
/// wrote to stderr, bounded per run, kept within size and age limits
/// (limits retention, the oldest dropped first).
pub const LOGS_STREAM: &str = "COMFAAS_LOGS";

/// Stream of events that ended without a successful run (the dead-letter
/// queue, `<prefix>.dlq.<fn>`): each keeps the event's payload and headers
/// plus the `Comfaas-Dlq-*` headers saying why.
pub const DLQ_STREAM: &str = "COMFAAS_DLQ";

/// KV bucket: one [`crate::Deployment`] per function name, with history.
pub const FUNCTIONS_BUCKET: &str = "comfaas_functions";
/// Object store of function bundles, named by digest.
pub const PACKAGES_BUCKET: &str = "comfaas_packages";
/// Object store of large inputs.
pub const INPUTS_BUCKET: &str = "comfaas_inputs";
/// Object store of large outputs.
pub const OUTPUTS_BUCKET: &str = "comfaas_outputs";

/// KV bucket of secrets, one value per secret name: operators write it,
/// executors read it, nobody else may (see `SECURITY.md`).
pub const SECRETS_BUCKET: &str = "comfaas_secrets";

/// Longest secret name.
pub const MAX_SECRET_NAME: usize = 64;

/// Checks a secret name: shaped like an environment variable and a file
/// name at once (`[A-Za-z_][A-Za-z0-9_]*`, at most [`MAX_SECRET_NAME`]
/// characters), so it is a KV key, a file `secrets/<NAME>` in a run's
/// directory and a variable name, with nothing to escape in any of them.
pub fn validate_secret_name(name: &str) -> Result<(), crate::InvalidValue> {
    let mut chars = name.chars();
    let starts_well = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if !starts_well
        || name.len() > MAX_SECRET_NAME
        || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
    {
        return Err(crate::InvalidValue(format!(
            "secret name `{}` must be 1 to {MAX_SECRET_NAME} of letters, digits and `_`, not starting with a digit",
            name.escape_debug()
        )));
    }
    Ok(())
}

/// The first token of every reply subject (an inbox): `_INBOX.…`. A node
/// and a dispatcher answer only on subjects under it, never on `$JS.`,
/// `$KV.`, `$SYS.`, `$O.` or the platform's own subjects. A client
/// connected with an nkey uses `_INBOX.<its public key>` as its prefix.
pub const INBOX_PREFIX: &str = "_INBOX";

/// The stream a creator of object stores makes, and deletes at once, to
/// find how much disk the server can still reserve. One fixed name, so a
/// permission can name it.
pub const STORAGE_PROBE_STREAM: &str = "COMFAAS_PROBE";

/// The inbox prefix of the identity with public key `public_key`:
/// `_INBOX.<public_key>`.
pub fn inbox_prefix_of(public_key: &str) -> String {
    format!("{INBOX_PREFIX}.{public_key}")
}

/// The JetStream API request for account info, relative to the API prefix
/// (`$JS.API.INFO`, or `$JS.<domain>.API.INFO`): the CLI reads the
/// connected server's domain from its answer. Operators may send it (it is
/// read before a KV bucket is created: `auth.rs`).
pub const JS_ACCOUNT_INFO: &str = "INFO";

/// The KV bucket `bucket`'s stream: `KV_<bucket>`.
pub fn kv_stream(bucket: &str) -> String {
    format!("KV_{bucket}")
}

/// Whether `text` is one subject token of the kind comfaas names things
/// with (node and dispatcher ids, event ids): non-empty, ASCII letters,
/// digits, `-` and `_` only.
pub fn is_token(text: &str) -> bool {
    !text.is_empty() && text.chars().all(is_token_char)
}

fn is_token_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '-' || c == '_'
}

/// `text` as such a token: anything else replaced by `_`.
pub fn to_token(text: &str) -> String {
    text.chars()
        .map(|c| if is_token_char(c) { c } else { '_' })
        .collect()
}

/// The function named where none could be read (a dead letter's subject,
/// a metrics label for requests naming no deployed function).
pub const UNKNOWN_FUNCTION: &str = "_unknown";

/// nats-server's MQTT bridge: its names, not comfaas's, spelled here with
/// the rest.
pub mod mqtt {
    /// Where the server delivers a QoS 1 subscription's messages to the
    /// MQTT client's connection (`$MQTT.sub.<nuid>`): nats-server 2.9
    /// checks the client's subscribe permission on it.
    pub const DELIVERIES: &str = "$MQTT.sub.>";

    /// The MQTT topic an MQTT client uses for NATS `subject`
    /// (`comfaas.event.f` is `comfaas/event/f`).
    pub fn topic(subject: &str) -> String {
        subject.replace('.', "/")
    }
}

/// NATS micro-service discovery (`$SRV.PING|INFO|STATS[.<name>[.<id>]]`),
/// what `nats micro ls|info|stats` and any NATS client ask: the names the
/// dispatchers and executors answer under. `$SRV` is NATS's own prefix,
/// shared by every service on the server, not under the comfaas prefix.
pub mod micro {
    /// The prefix of every discovery request.
    pub const API_PREFIX: &str = "$SRV";
    /// Asks which services there are.
    pub const PING: &str = "PING";
    /// Asks for a service's description and endpoints.
    pub const INFO: &str = "INFO";
    /// Asks for a service's endpoint counters.
    pub const STATS: &str = "STATS";
    /// The verbs a service answers.
    pub const VERBS: [&str; 3] = [PING, INFO, STATS];
    /// The dispatchers' service name (its ids are the dispatcher ids).
    pub const DISPATCH_SERVICE: &str = "comfaas-dispatch";
    /// The executors' service name (its ids are the node ids).
    pub const EXEC_SERVICE: &str = "comfaas-exec";

    /// Every subject instance `id` of `service` answers on: each verb
    /// alone, with the service name, and with name and id.
    pub fn subjects(service: &str, id: &str) -> Vec<String> {
        VERBS
            .iter()
            .flat_map(|verb| {
                [
                    format!("{API_PREFIX}.{verb}"),
                    format!("{API_PREFIX}.{verb}.{service}"),
                    format!("{API_PREFIX}.{verb}.{service}.{id}"),
                ]
            })
            .collect()
    }

    /// The same as wildcards, for permissions: any verb, to all services,
    /// to `service`, and to its instance `id` (`*` for any instance).
    pub fn grant(service: &str, id: &str) -> [String; 3] {
        [
            format!("{API_PREFIX}.*"),
            format!("{API_PREFIX}.*.{service}"),
            format!("{API_PREFIX}.*.{service}.{id}"),
        ]
    }

    /// Every discovery request, for those who may ask.
    pub fn all() -> String {
        format!("{API_PREFIX}.>")
    }

    /// The request of `verb` to every service (`$SRV.PING`), to one
    /// (`service`), or to one instance (`service` and `id`).
    pub fn request(verb: &str, service: Option<&str>, id: Option<&str>) -> String {
        match (service, id) {
            (Some(service), Some(id)) => format!("{API_PREFIX}.{verb}.{service}.{id}"),
            (Some(service), None) => format!("{API_PREFIX}.{verb}.{service}"),
            _ => format!("{API_PREFIX}.{verb}"),
        }
    }
}

/// Header names of the device-facing format (see `schemas/README.md`).
pub mod headers {
    /// Request: an object in `comfaas_inputs` that is the input.
    pub const INPUT_OBJECT: &str = "Comfaas-Input-Object";
    /// Request: `auto`, `edge`, `cloud` or `node:<id>`.
    pub const PLACEMENT: &str = "Comfaas-Placement";
    /// Request: MPI processes, a count (`4`) or a range (`4-16`) fitted to
    /// each node's `max_procs`.
    pub const PROCS: &str = "Comfaas-Procs";
    /// Request: run time limit, e.g. `30s`.
    pub const TIMEOUT: &str = "Comfaas-Timeout";
    /// Request: JetStream de-duplication id of an event.
    pub const MSG_ID: &str = "Nats-Msg-Id";

    /// Reply: `ok` or `error`.
    pub const STATUS: &str = "Comfaas-Status";
    /// Reply: the invocation's id.
    pub const INVOCATION_ID: &str = "Comfaas-Invocation-Id";
    /// Reply: the node that ran it.
    pub const NODE: &str = "Comfaas-Node";
    /// Reply: `edge` or `cloud`.
    pub const TIER: &str = "Comfaas-Tier";
    /// Reply: the function's run time in milliseconds.
    pub const DURATION_MS: &str = "Comfaas-Duration-Ms";
    /// Reply: milliseconds the invocation waited in the node's queue for a
    /// slot before its run started.
    pub const QUEUE_MS: &str = "Comfaas-Queue-Ms";
    /// Reply: milliseconds the node spent getting a large input (from its
    /// cache or the object store) before the run; 0 for an inline input.
    pub const FETCH_MS: &str = "Comfaas-Fetch-Ms";
    /// Log: the version of the function that ran.
    pub const VERSION: &str = "Comfaas-Version";

    /// Reply: the function that ran (set on `result` subjects).
    pub const FUNCTION: &str = "Comfaas-Function";
    /// Reply: a large output stored in `comfaas_outputs`.
    pub const OUTPUT_OBJECT: &str = "Comfaas-Output-Object";
    /// Work reply (node to dispatcher): the outcome already went to the
    /// invocation's `reply_to` and to the result subject; value `true`.
    pub const REPLIED: &str = "Comfaas-Replied";
    /// Reply on error: numeric [`crate::ErrorCode`] (NATS micro convention).
    pub const ERROR_CODE: &str = "Nats-Service-Error-Code";
    /// Reply on error: what went wrong, for humans.
    pub const ERROR: &str = "Nats-Service-Error";

    /// Result and dead letter: the event's id (`<seq>` in `COMFAAS_EVENTS`,
    /// `<seq>-<domain>` when the site has a JetStream domain), the same on
    /// every delivery of the event; what executors recognise a redelivery by.
    pub const EVENT_ID: &str = "Comfaas-Event-Id";
    /// Dead letter: why the event was dead-lettered, for humans.
    pub const DLQ_REASON: &str = "Comfaas-Dlq-Reason";
    /// Dead letter: the numeric [`crate::ErrorCode`] of its last answer.
    pub const DLQ_CODE: &str = "Comfaas-Dlq-Code";
    /// Dead letter: how many times the event was delivered to a dispatcher.
    pub const DLQ_DELIVERIES: &str = "Comfaas-Dlq-Deliveries";
    /// Dead letter: the nodes its last try was sent to, comma-separated.
    pub const DLQ_NODES: &str = "Comfaas-Dlq-Nodes";
    /// Dead letter: when it was dead-lettered, Unix milliseconds.
    pub const DLQ_AT: &str = "Comfaas-Dlq-Time";
    /// Dead letter: when the event was published, Unix milliseconds.
    pub const DLQ_PUBLISHED: &str = "Comfaas-Dlq-Published";
    /// Dead letter: the device's `Nats-Msg-Id`, kept under another name
    /// (as `Nats-Msg-Id` it would de-duplicate dead letters); `comfaas dlq
    /// replay` restores it.
    pub const DLQ_MSG_ID: &str = "Comfaas-Dlq-Msg-Id";
    /// Dead letter: the subject the event was published on.
    pub const DLQ_SUBJECT: &str = "Comfaas-Dlq-Subject";

    /// Value of [`STATUS`] on success.
    pub const STATUS_OK: &str = "ok";
    /// Value of [`STATUS`] on failure.
    pub const STATUS_ERROR: &str = "error";
}

/// Subject names under one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subjects {
    prefix: String,
}

impl Default for Subjects {
    fn default() -> Self {
        Self::new(DEFAULT_PREFIX)
    }
}

impl Subjects {
    /// Subjects under `prefix` (one or more subject tokens, e.g. `comfaas`).
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    /// The prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `<prefix>.invoke.<fn>`: request/reply invocations.
    pub fn invoke(&self, function: &str) -> String {
        format!("{}.invoke.{function}", self.prefix)
    }

    /// `<prefix>.invoke.>`.
    pub fn invoke_all(&self) -> String {
        self.invoke(">")
    }

    /// `<prefix>.event.<fn>`: fire-and-forget events, kept in [`EVENTS_STREAM`].
    pub fn event(&self, function: &str) -> String {
        format!("{}.event.{function}", self.prefix)
    }

    /// `<prefix>.event.>`.
    pub fn event_all(&self) -> String {
        self.event(">")
    }

    /// `<prefix>.work.<node>`: invocations placed on a node.
    pub fn work(&self, node: &str) -> String {
        format!("{}.work.{node}", self.prefix)
    }

    /// `<prefix>.result.<fn>`: every result.
    pub fn result(&self, function: &str) -> String {
        format!("{}.result.{function}", self.prefix)
    }

    /// `<prefix>.result.>`.
    pub fn result_all(&self) -> String {
        self.result(">")
    }

    /// `<prefix>.node.<node>.load`: a node's [`crate::NodeLoad`].
    pub fn node_load(&self, node: &str) -> String {
        format!("{}.node.{node}.load", self.prefix)
    }

    /// `<prefix>.node.<node>.ping`: a node answers any request here at once
    /// (empty body); dispatchers measure round trips with it.
    pub fn node_ping(&self, node: &str) -> String {
        format!("{}.node.{node}.ping", self.prefix)
    }

    /// `<prefix>.node.*.load`.
    pub fn node_load_all(&self) -> String {
        self.node_load("*")
    }

    /// `<prefix>.dispatch.<id>.metrics`: a dispatcher's [`crate::DispatchMetrics`].
    pub fn dispatch_metrics(&self, dispatcher: &str) -> String {
        format!("{}.dispatch.{dispatcher}.metrics", self.prefix)
    }

    /// `<prefix>.dispatch.*.metrics`.
    pub fn dispatch_metrics_all(&self) -> String {
        self.dispatch_metrics("*")
    }

    /// `<prefix>.result.<fn>` etc. are all under `<prefix>.>`.
    pub fn all(&self) -> String {
        format!("{}.>", self.prefix)
    }

    /// `<prefix>.work.*`: every node's work subject.
    pub fn work_all(&self) -> String {
        self.work("*")
    }

    /// `<prefix>.node.*.ping`.
    pub fn node_ping_all(&self) -> String {
        self.node_ping("*")
    }

    /// `<prefix>.dlq.>`.
    pub fn dlq_all(&self) -> String {
        self.dlq(">")
    }

    /// `<prefix>.dlq.<fn>`: dead letters of a function, kept in
    /// [`DLQ_STREAM`]; dispatchers publish there, operators read, replay
    /// and purge (`comfaas dlq`).
    pub fn dlq(&self, function: &str) -> String {
        format!("{}.dlq.{function}", self.prefix)
    }

    /// `<prefix>.log.<fn>.<node>`: what runs of a function on a node wrote
    /// to stderr, kept in [`LOGS_STREAM`]; the executor `<node>` publishes
    /// there, operators and observers read (`comfaas logs`).
    pub fn log(&self, function: &str, node: &str) -> String {
        format!("{}.log.{function}.{node}", self.prefix)
    }

    /// `<prefix>.log.>`: every function's logs.
    pub fn log_all(&self) -> String {
        format!("{}.log.>", self.prefix)
    }

    /// `<prefix>.log.*.<node>`: the logs the executor `<node>` may publish.
    pub fn log_of_node(&self, node: &str) -> String {
        self.log("*", node)
    }

    /// `<prefix>.held.<event-id>`: a dispatcher asks, before placing a
    /// redelivered event, whether a node is running it or ran it recently;
    /// only that node answers (with its id), on the asker's inbox.
    pub fn event_held(&self, event_id: &str) -> String {
        format!("{}.held.{event_id}", self.prefix)
    }

    /// `<prefix>.held.*`: what every executor listens on.
    pub fn event_held_all(&self) -> String {
        self.event_held("*")
    }

    /// The node named by a `node.<node>.load` subject.
    pub fn node_of_load<'a>(&self, subject: &'a str) -> Option<&'a str> {
        let rest = subject
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix(".node.")?;
        rest.strip_suffix(".load").filter(|n| !n.contains('.'))
    }

    /// The event id of a `held` ask's subject ([`Subjects::event_held`]).
    pub fn event_of_held<'a>(&self, subject: &'a str) -> Option<&'a str> {
        subject
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix(".held.")
            .filter(|id| is_token(id))
    }

    /// The function named by the last token of an `invoke` or `event` subject.
    pub fn function_of<'a>(&self, subject: &'a str) -> Option<&'a str> {
        let rest = subject
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix('.')?;
        let (kind, function) = rest.split_once('.')?;
        matches!(kind, "invoke" | "event").then_some(function)
    }
}

#[cfg(test)]
mod held_tests {
    use super::*;

    #[test]
    fn a_held_ask_names_its_event() {
        let s = Subjects::new("comfaas");
        assert_eq!(s.event_of_held(&s.event_held("42-edge")), Some("42-edge"));
        assert_eq!(s.event_of_held("comfaas.held.a.b"), None);
        assert_eq!(s.event_of_held("other.held.42"), None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_are_spelled_under_the_prefix() {
        let s = Subjects::default();
        assert_eq!(s.invoke("hello"), "comfaas.invoke.hello");
        assert_eq!(s.invoke_all(), "comfaas.invoke.>");
        assert_eq!(s.event_all(), "comfaas.event.>");
        assert_eq!(s.work("edge-1"), "comfaas.work.edge-1");
        assert_eq!(s.result("hello"), "comfaas.result.hello");
        assert_eq!(s.node_load_all(), "comfaas.node.*.load");
        assert_eq!(s.dispatch_metrics("d1"), "comfaas.dispatch.d1.metrics");
        assert_eq!(s.log("hello", "edge-1"), "comfaas.log.hello.edge-1");
        assert_eq!(s.log("hello", "*"), "comfaas.log.hello.*");
        assert_eq!(s.log_all(), "comfaas.log.>");
        assert_eq!(s.log_of_node("edge-1"), "comfaas.log.*.edge-1");
        let t = Subjects::new("acme.faas");
        assert_eq!(t.invoke("x"), "acme.faas.invoke.x");
    }

    #[test]
    fn secret_names_are_variable_and_file_shaped() {
        for ok in ["API_KEY", "db_password", "_X", "a1", &"A".repeat(64)] {
            assert!(validate_secret_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "1KEY",
            "A-B",
            "a.b",
            "../x",
            "a/b",
            "a b",
            "é",
            &"A".repeat(65),
        ] {
            assert!(validate_secret_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn function_of_reads_invoke_and_event_subjects_only() {
        let s = Subjects::default();
        assert_eq!(s.function_of("comfaas.invoke.hello"), Some("hello"));
        assert_eq!(
            s.function_of("comfaas.event.sensor-stats"),
            Some("sensor-stats")
        );
        assert_eq!(s.function_of("comfaas.invoke.a.b"), Some("a.b"));
        assert_eq!(s.function_of("comfaas.work.hello"), None);
        assert_eq!(s.function_of("other.invoke.hello"), None);
        assert_eq!(s.function_of("comfaasx.invoke.hello"), None);
        assert_eq!(s.node_of_load("comfaas.node.edge-1.load"), Some("edge-1"));
        assert_eq!(s.node_of_load("comfaas.node.a.b.load"), None);
    }
}
