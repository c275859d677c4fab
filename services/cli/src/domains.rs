//! Where a site's JetStream data is. Every site has a JetStream domain of
//! its own, and the registry, events and inputs live in the edge's: from a
//! cloud site a command reaches them with `--js-domain edge`. These checks
//! turn "nothing there" (an empty listing, a mirror of nothing) into a
//! clear pointer to where it is, before anything is created in the wrong
//! place.

use async_nats::jetstream::{self, context::GetStreamErrorKind, ErrorCode};
use comfaas_platform::auth::DEFAULT_EDGE_DOMAIN;
use comfaas_platform::nats::NatsOptions;
use comfaas_schemas::names;
use serde::Deserialize;

/// What a JetStream domain holds of one stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// The stream is there, with this many messages.
    Present(u64),
    /// The domain answers, and has no such stream.
    Missing,
    /// Nothing answers for the domain (no such domain, no link to it), or
    /// the request was refused: the error, in words.
    Unreachable(String),
}

/// Looks up `stream` through `js` (a domain's JetStream), creating nothing.
pub async fn probe_stream(js: &jetstream::Context, stream: &str) -> Probe {
    // One STREAM.INFO: the lookup's answer holds the count.
    match js.get_stream(stream).await {
        Ok(found) => Probe::Present(found.cached_info().state.messages),
        Err(e) => match e.kind() {
            GetStreamErrorKind::JetStream(js_error)
                if js_error.error_code() == ErrorCode::STREAM_NOT_FOUND =>
            {
                Probe::Missing
            }
            _ => Probe::Unreachable(e.to_string()),
        },
    }
}

/// The JetStream domain of the server `js` talks to (`None`: none set, or
/// not told).
pub async fn server_domain(js: &jetstream::Context) -> Option<String> {
    /// The one field of the account info read here; 2.9 and newer servers send it.
    #[derive(Deserialize)]
    struct AccountInfo {
        #[serde(default)]
        domain: Option<String>,
    }
    js.request::<_, _, AccountInfo>(names::JS_ACCOUNT_INFO, &())
        .await
        .ok()
        .and_then(|info| info.domain)
        .filter(|d| !d.is_empty())
}

/// Where the registry is, when not on the site a command is connected to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Misplaced {
    /// The edge's domain has it: the message says to name that domain.
    AtEdge(String),
    /// This site (in a domain of its own) has none, and the default edge
    /// domain has none either: the message says how to name the edge's.
    NotHere(String),
}

/// When no `--js-domain` is given and the connected server's JetStream
/// domain has no registry (or an empty one) while the edge's has one: where
/// it is, before a command creates an empty registry on the wrong site.
/// `None` when the registry is here, or when this is the edge (or a site
/// without domains), or when this site has an empty registry of its own
/// (a fresh site: nothing deployed yet).
pub async fn registry_elsewhere(
    client: &async_nats::Client,
    nats: &NatsOptions,
) -> Option<Misplaced> {
    if nats.js_domain.is_some() {
        return None;
    }
    let registry = names::kv_stream(names::FUNCTIONS_BUCKET);
    let here = jetstream::new(client.clone());
    let local = probe_stream(&here, &registry).await;
    if matches!(local, Probe::Present(messages) if messages > 0) {
        return None;
    }
    let domain = server_domain(&here).await?;
    if domain == DEFAULT_EDGE_DOMAIN {
        return None;
    }
    let edge = jetstream::with_domain(client.clone(), DEFAULT_EDGE_DOMAIN);
    match probe_stream(&edge, &registry).await {
        Probe::Present(_) => Some(Misplaced::AtEdge(format!(
            "this site (JetStream domain `{domain}`) has no function registry: it is in the \
             edge's domain `{DEFAULT_EDGE_DOMAIN}`; give `--js-domain {DEFAULT_EDGE_DOMAIN}` \
             (e.g. `comfaas --js-domain {DEFAULT_EDGE_DOMAIN} ls`, or set js_domain / \
             COMFAAS_JS_DOMAIN)"
        ))),
        _ if matches!(local, Probe::Present(_)) => None,
        _ => Some(Misplaced::NotHere(format!(
            "this site (JetStream domain `{domain}`) has no function registry; on a cloud \
             site, name the edge site's domain: `comfaas --js-domain DOMAIN ls`"
        ))),
    }
}

/// Checks that the edge domain `domain` answers from this site and holds
/// the events stream, before `backup-edge` creates mirrors of it (a mirror
/// of a domain that does not exist is created all the same, and never
/// fills).
pub async fn check_edge_domain(client: &async_nats::Client, domain: &str) -> anyhow::Result<()> {
    if !names::is_token(domain) {
        anyhow::bail!(
            "`{domain}` is not a JetStream domain name (one token: letters, digits, `-`, `_`)"
        );
    }
    let edge = jetstream::with_domain(client.clone(), domain);
    match probe_stream(&edge, names::EVENTS_STREAM).await {
        Probe::Present(_) => Ok(()),
        Probe::Missing => anyhow::bail!(
            "JetStream domain `{domain}` has no {} stream: it is not an edge site, or no \
             dispatcher has run there yet",
            names::EVENTS_STREAM
        ),
        Probe::Unreachable(why) => anyhow::bail!(
            "JetStream domain `{domain}` does not answer from this site ({why}): is the name \
             right (the edge server's `jetstream {{ domain: … }}`) and its leaf link up?"
        ),
    }
}
