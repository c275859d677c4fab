//! Several sites on one machine: one `nats-server` per site, the edge
//! joined to every cloud site by its own leaf connection, each connection
//! optionally through an emulated WAN link ([`crate::link`]). Used by
//! `comfaas dev --sites`, the placement benchmark and the tests.
//!
//! Every cloud site is a hub (`nats/hub.conf`, its own JetStream domain);
//! the edge is a leaf node of each (one remote per cloud), so the path from
//! the edge to a city is exactly one leaf connection, and a link spec
//! `chicago=20ms/100mbit` is that path's one-way latency and bandwidth.
//! Every such path may also pass the edge's one shared uplink
//! ([`crate::link::Uplink`]), so that inputs sent to several cities at once
//! share the edge's bandwidth.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use comfaas_platform::nats::NatsOptions;
use comfaas_schemas::InvalidValue;

use crate::link::{LinkSpec, Uplink, WanLink};
use crate::server::{
    multi_leaf_config_with, wait_for_leaf_link, EmbeddedServer, LeafAuth, ServerError,
    ServerOptions,
};

/// The edge site's name (and JetStream domain).
pub const EDGE_SITE: &str = "edge";

/// The emulated links of `comfaas dev --sites` when none are given, after
/// the paper's set-up: an edge in Fargo, ND on an uplink under 100 Mbit/s,
/// and cloud sites 600 (Chicago) to 2,000 miles (Miami) away. One-way
/// latencies follow typical round trips from the upper Midwest; the
/// bandwidths differ so that the nearest site is not always the fastest to
/// send a large input to.
pub const DEFAULT_LINKS: &[(&str, &str)] = &[
    ("chicago", "10ms/50mbit"),
    ("new-york", "18ms/90mbit"),
    ("los-angeles", "23ms/90mbit"),
    ("miami", "26ms/70mbit"),
];

/// The edge's uplink of `comfaas dev --sites` when none is given: under
/// 100 Mbit/s, as in the paper, and no narrower than the widest default
/// link, so that one transfer alone goes as fast as its path allows.
pub const DEFAULT_UPLINK_BITS_PER_S: u64 = 90_000_000;

/// The default link of `site`, if it is one of the paper's cities.
pub fn default_link(site: &str) -> Option<LinkSpec> {
    DEFAULT_LINKS
        .iter()
        .find(|(s, _)| *s == site)
        .and_then(|(_, spec)| spec.parse().ok())
}

/// What to start.
#[derive(Debug, Clone)]
pub struct SitesOptions {
    /// Folder of the server configurations (`hub.conf`).
    pub configs: PathBuf,
    /// Cloud site names (the edge is always started).
    pub clouds: Vec<String>,
    /// Emulated link per cloud site; a site missing here is joined
    /// directly, over loopback.
    pub links: BTreeMap<String, LinkSpec>,
    /// The edge's shared uplink, bits per second per direction, that every
    /// path to a cloud site crosses; `None`: no shared limit.
    pub uplink: Option<u64>,
    /// Client port of the edge server; `None` picks a free one.
    pub edge_port: Option<u16>,
    /// Auth and TLS on every server and link (`comfaas dev --sites
    /// --secure`); `None`: open, as on a laptop.
    pub security: Option<SiteSecurity>,
    /// An MQTT listener on the edge, where devices are.
    pub edge_mqtt: Option<crate::server::MqttListener>,
    /// Most disk each server's JetStream may reserve, in bytes (see
    /// [`ServerOptions::max_file_store`]); `None`: nats-server's default.
    pub max_file_store: Option<u64>,
}

/// What makes a set of sites secure: every server takes only the
/// identities of one include, every leaf link authenticates (and uses TLS
/// when the include does).
#[derive(Debug, Clone)]
pub struct SiteSecurity {
    /// The server configuration include (`comfaas auth init`'s
    /// `server.conf`: identities, permissions, client TLS).
    pub include: PathBuf,
    /// Lines inside a hub's `leafnodes {}` block: the leaf link's
    /// authorization, and TLS.
    pub leaf_port: String,
    /// How the edge authenticates its links.
    pub leaf: LeafAuth,
    /// How the link probes connect: an identity that may publish on
    /// inboxes and read its own (the dispatcher's); the URL is replaced.
    pub probe: NatsOptions,
}

/// One running site.
pub struct Site {
    /// Its name, also its JetStream domain.
    pub name: String,
    /// Its server.
    pub server: EmbeddedServer,
    /// The emulated link between the edge and this site, if any.
    pub link: Option<WanLink>,
}

impl Site {
    /// Options to connect a service at this site; cloud services reach the
    /// edge's JetStream (registry, input objects) across the link.
    pub fn nats(&self) -> NatsOptions {
        let options = NatsOptions::for_url(self.server.url());
        if self.name == EDGE_SITE {
            options
        } else {
            NatsOptions {
                js_domain: Some(EDGE_SITE.to_owned()),
                ..options
            }
        }
    }
}

/// The edge and its cloud sites, linked and ready.
pub struct Sites {
    /// Auth and TLS, when on.
    pub security: Option<Box<SiteSecurity>>,
    /// The edge site.
    pub edge: Site,
    /// The cloud sites, in the order given.
    pub clouds: Vec<Site>,
    /// The edge's shared uplink, if any.
    pub uplink: Option<Uplink>,
}

/// A site set that cannot be started as asked.
#[derive(Debug, thiserror::Error)]
pub enum SitesError {
    /// The options do not make sense.
    #[error("{0}")]
    Invalid(String),
    /// A server did not start or a link did not come up.
    #[error(transparent)]
    Server(#[from] ServerError),
    /// An emulated link could not listen.
    #[error("cannot start the emulated link to {site}: {source}")]
    Link {
        /// The cloud site.
        site: String,
        /// Why.
        source: std::io::Error,
    },
}

fn free_port() -> Result<u16, std::io::Error> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl Sites {
    /// Starts every cloud site, the emulated links, then the edge joined to
    /// each cloud, and waits until every leaf connection carries messages.
    pub async fn start(options: SitesOptions) -> Result<Self, SitesError> {
        if options.clouds.is_empty() {
            return Err(SitesError::Invalid(
                "at least one cloud site is needed".to_owned(),
            ));
        }
        let mut seen = std::collections::HashSet::new();
        for site in &options.clouds {
            let valid = !site.is_empty()
                && site
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
            if !valid || site == EDGE_SITE || !seen.insert(site) {
                return Err(SitesError::Invalid(format!(
                    "cloud site `{site}` must be a unique name of letters, digits, `-` or `_`, other than `{EDGE_SITE}`"
                )));
            }
        }
        if let Some(unknown) = options.links.keys().find(|s| !options.clouds.contains(s)) {
            return Err(SitesError::Invalid(format!(
                "a link is given for `{unknown}`, which is not a cloud site"
            )));
        }
        let uplink = options.uplink.map(Uplink::new);
        let mut clouds = Vec::new();
        let mut remotes = Vec::new();
        for name in &options.clouds {
            let leaf_port = free_port().map_err(|e| SitesError::Link {
                site: name.clone(),
                source: e,
            })?;
            let hub = match &options.security {
                None => ServerOptions::hub(&options.configs, name, leaf_port),
                // The hub of nats/hub.conf, with the leaf port's auth.
                Some(security) => ServerOptions {
                    include: Some(security.include.clone()),
                    config_text: Some(format!(
                        "server_name: {name}\njetstream {{\n  domain: {name}\n}}\nleafnodes {{\n  port: {leaf_port}\n{}}}\n",
                        security.leaf_port
                    )),
                    ..ServerOptions::default()
                },
            };
            let server = EmbeddedServer::start(ServerOptions {
                max_file_store: options.max_file_store,
                ..hub
            })
            .await?;
            // Behind an uplink, a site without a link of its own gets an
            // instant one, so that its traffic crosses the uplink too.
            let spec = options
                .links
                .get(name)
                .copied()
                .or(uplink.as_ref().map(|_| LinkSpec {
                    latency: Duration::ZERO,
                    bits_per_s: None,
                }));
            let link = match spec {
                Some(spec) => {
                    let upstream = SocketAddr::from(([127, 0, 0, 1], leaf_port));
                    Some(
                        WanLink::start(spec, upstream, uplink.clone())
                            .await
                            .map_err(|e| SitesError::Link {
                                site: name.clone(),
                                source: e,
                            })?,
                    )
                }
                None => None,
            };
            let port = link.as_ref().map_or(leaf_port, WanLink::port);
            remotes.push(format!("127.0.0.1:{port}"));
            clouds.push(Site {
                name: name.clone(),
                server,
                link,
            });
        }
        let security = options.security.clone().map(Box::new);
        let edge = EmbeddedServer::start(ServerOptions {
            port: options.edge_port,
            config_text: Some(multi_leaf_config_with(
                EDGE_SITE,
                &remotes,
                security.as_ref().map(|s| &s.leaf),
            )),
            include: security.as_ref().map(|s| s.include.clone()),
            mqtt: options.edge_mqtt.clone(),
            max_file_store: options.max_file_store,
            ..ServerOptions::default()
        })
        .await?;
        let edge = Site {
            name: EDGE_SITE.to_owned(),
            server: edge,
            link: None,
        };
        let sites = Self {
            security,
            edge,
            clouds,
            uplink,
        };
        sites.wait_linked(Duration::from_secs(30)).await?;
        Ok(sites)
    }

    /// Waits until every cloud site exchanges messages with the edge.
    pub async fn wait_linked(&self, timeout: Duration) -> Result<(), ServerError> {
        let probe = self.security.as_ref().map(|s| s.probe.clone());
        let connect = |url: &str, name: &str| {
            let options = match &probe {
                Some(probe) => NatsOptions {
                    nats_url: url.to_owned(),
                    ..probe.clone()
                },
                None => NatsOptions::for_url(url),
            };
            let name = name.to_owned();
            async move {
                options
                    .connect(&format!("comfaas link probe {name}"))
                    .await
                    .map_err(|e| ServerError::NotReady(format!("connect to {name}: {e}")))
            }
        };
        let edge = connect(self.edge.server.url(), EDGE_SITE).await?;
        for cloud in &self.clouds {
            let client = connect(cloud.server.url(), &cloud.name).await?;
            wait_for_leaf_link(&edge, &client, timeout)
                .await
                .map_err(|e| ServerError::NotReady(format!("{}: {e}", cloud.name)))?;
            wait_for_leaf_link(&client, &edge, timeout)
                .await
                .map_err(|e| ServerError::NotReady(format!("{}: {e}", cloud.name)))?;
        }
        Ok(())
    }

    /// Every site, the edge first.
    pub fn all(&self) -> impl Iterator<Item = &Site> {
        std::iter::once(&self.edge).chain(self.clouds.iter())
    }

    /// Stops every server.
    pub async fn stop(self) {
        for site in self.clouds {
            drop(site.link);
            site.server.stop().await;
        }
        self.edge.server.stop().await;
    }
}

/// Parses `site=LATENCY[/BANDWIDTH]`.
pub fn parse_site_link(text: &str) -> Result<(String, LinkSpec), InvalidValue> {
    let (site, spec) = text.split_once('=').ok_or_else(|| {
        InvalidValue(format!(
            "link `{text}`: expected SITE=LATENCY[/BANDWIDTH], e.g. chicago=20ms/100mbit"
        ))
    })?;
    let spec = spec
        .parse::<LinkSpec>()
        .map_err(|e| InvalidValue(e.to_string()))?;
    Ok((site.trim().to_owned(), spec))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_links_parse() {
        for (site, _) in DEFAULT_LINKS {
            assert!(default_link(site).is_some(), "{site}");
        }
        assert_eq!(default_link("paris"), None);
        let uplink = DEFAULT_UPLINK_BITS_PER_S;
        for (site, _) in DEFAULT_LINKS {
            let path = default_link(site).and_then(|l| l.bits_per_s).unwrap();
            assert!(path <= uplink, "{site} is wider than the uplink");
        }
        assert_eq!(
            parse_site_link("chicago=20ms/100mbit")
                .unwrap()
                .1
                .to_string(),
            "20ms/100mbit"
        );
        assert!(parse_site_link("chicago").unwrap_err().0.contains("SITE="));
        assert!(parse_site_link("chicago=fast")
            .unwrap_err()
            .0
            .contains("latency"));
    }
}
