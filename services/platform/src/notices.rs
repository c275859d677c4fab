//! Notices of runs answered straight to their requesters, gathered per
//! dispatcher: an executor sends, in one [`NoticeBatch`], the notices of
//! every run that ended while its last batch was being sent, instead of a
//! headers-only reply per run. Under load that removes most of one message
//! in four from the server's path; with one request in flight each batch
//! holds one notice and leaves at once, as the single reply did.

use async_nats::HeaderMap;
use comfaas_schemas::names::headers as h;
use comfaas_schemas::{encode, NoticeBatch, WorkNotice, SCHEMA_VERSION};
use tokio::sync::mpsc;

/// Most notices in one batch (a batch stays far under any max payload).
pub const MAX_BATCH: usize = 64;
/// Notices waiting to be sent; a sender waits beyond it.
const QUEUE: usize = 4096;
/// The reply headers a notice carries: what a dispatcher reads from it
/// (whether the requester has its answer, the outcome, the run time).
const NOTICE_HEADERS: [&str; 5] = [
    h::REPLIED,
    h::STATUS,
    h::ERROR_CODE,
    h::ERROR,
    h::DURATION_MS,
];

/// The sending side an executor keeps: notices go in, batches go out on
/// a task of their own, which ends when the last `Notices` is dropped.
#[derive(Clone)]
pub struct Notices {
    queue: mpsc::Sender<(String, WorkNotice)>,
}

impl Notices {
    /// Starts the task that sends batches on `client`.
    pub fn start(client: async_nats::Client) -> Self {
        let (queue, waiting) = mpsc::channel(QUEUE);
        tokio::spawn(send_batches(client, waiting));
        Self { queue }
    }

    /// Queues `notice` (made with [`replied`]) for `to`, the invocation's
    /// `notices_to`.
    pub async fn send(&self, to: String, notice: WorkNotice) {
        if self.queue.send((to, notice)).await.is_err() {
            tracing::warn!("notice dropped: the notice sender has stopped");
        }
    }
}

/// Sends what is queued, in batches per destination, until every sender
/// is gone.
async fn send_batches(
    client: async_nats::Client,
    mut waiting: mpsc::Receiver<(String, WorkNotice)>,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while waiting.recv_many(&mut batch, MAX_BATCH).await > 0 {
        for (to, notices) in by_destination(std::mem::take(&mut batch)) {
            let body = match encode(&NoticeBatch {
                schema: SCHEMA_VERSION,
                notices,
            }) {
                Ok(body) => body,
                Err(e) => {
                    tracing::warn!("cannot encode notices for {to}: {e}");
                    continue;
                }
            };
            if let Err(e) = client.publish(to.clone(), body.into()).await {
                tracing::warn!("cannot send notices to {to}: {e}");
            }
        }
    }
}

/// `batch` grouped by destination, each group in the order its runs ended.
fn by_destination(batch: Vec<(String, WorkNotice)>) -> Vec<(String, Vec<WorkNotice>)> {
    let mut groups: Vec<(String, Vec<WorkNotice>)> = Vec::new();
    for (to, notice) in batch {
        match groups.iter_mut().find(|(t, _)| *t == to) {
            Some((_, notices)) => notices.push(notice),
            None => groups.push((to, vec![notice])),
        }
    }
    groups
}

/// The notice of a run answered straight to its requester with the reply
/// headers `headers`, whose work request's reply subject is `reply`: made
/// before the reply leaves, so the reply's headers need no copy.
pub fn replied(reply: String, headers: &HeaderMap) -> WorkNotice {
    WorkNotice {
        reply,
        headers: notice_headers(headers),
    }
}

/// The headers of `headers` a notice carries, as name and value pairs, and
/// `Comfaas-Replied: true` (every notice is of a run already answered).
fn notice_headers(headers: &HeaderMap) -> Vec<(String, String)> {
    let replied = (h::REPLIED.to_owned(), "true".to_owned());
    std::iter::once(replied)
        .chain(
            NOTICE_HEADERS
                .iter()
                .filter(|name| **name != h::REPLIED)
                .filter_map(|name| {
                    let value = headers.get(*name)?;
                    Some(((*name).to_owned(), value.as_str().to_owned()))
                }),
        )
        .collect()
}

/// Header pairs back into a map; a pair that is not a valid header is
/// dropped (a forged or garbled notice), the others kept.
pub fn from_pairs(pairs: &[(String, String)]) -> HeaderMap {
    use async_nats::header::{HeaderName, HeaderValue};
    let mut headers = HeaderMap::new();
    for (name, value) in pairs {
        // The names a notice carries are known: made from the constants,
        // neither checked nor copied (a dispatcher reads thousands a second).
        let name = match NOTICE_HEADERS.iter().find(|known| **known == name.as_str()) {
            Some(known) => HeaderName::from_static(known),
            None => match name.parse::<HeaderName>() {
                Ok(name) => name,
                Err(_) => continue,
            },
        };
        if let Ok(value) = value.parse::<HeaderValue>() {
            headers.append(name, value);
        }
    }
    headers
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `headers` as name and value pairs, every value of every name.
    fn to_pairs(headers: &HeaderMap) -> Vec<(String, String)> {
        headers
            .iter()
            .flat_map(|(name, values)| {
                values
                    .iter()
                    .map(move |value| (name.to_string(), value.as_str().to_owned()))
            })
            .collect()
    }

    #[test]
    fn headers_survive_pairs_and_bad_pairs_are_dropped() {
        let mut headers = HeaderMap::new();
        headers.insert("Comfaas-Replied", "true");
        headers.insert("Comfaas-Status", "ok");
        headers.append("X-Many", "1");
        headers.append("X-Many", "2");
        let pairs = to_pairs(&headers);
        assert_eq!(pairs.len(), 4);
        let back = from_pairs(&pairs);
        assert_eq!(back.get("Comfaas-Status").map(|v| v.as_str()), Some("ok"));
        let many: Vec<&str> = back.get_all("X-Many").map(|v| v.as_str()).collect();
        assert_eq!(many, ["1", "2"]);
        let garbled = from_pairs(&[
            ("bad name: x".to_owned(), "v".to_owned()),
            ("Comfaas-Status".to_owned(), "line\r\nbreak".to_owned()),
            ("Comfaas-Node".to_owned(), "edge-1".to_owned()),
        ]);
        assert_eq!(garbled.iter().count(), 1);
        assert_eq!(
            garbled.get("Comfaas-Node").map(|v| v.as_str()),
            Some("edge-1")
        );
    }

    #[test]
    fn a_notice_carries_what_a_dispatcher_reads_and_nothing_else() {
        let mut headers = HeaderMap::new();
        headers.insert(h::REPLIED, "true");
        headers.insert(h::STATUS, "error");
        headers.insert(h::ERROR_CODE, "500");
        headers.insert(h::ERROR, "it broke");
        headers.insert(h::DURATION_MS, "12");
        headers.insert(h::NODE, "edge-1");
        headers.insert("X-Other", "x");
        let mut pairs = notice_headers(&headers);
        pairs.sort();
        let mut want: Vec<(String, String)> = [
            (h::REPLIED, "true"),
            (h::STATUS, "error"),
            (h::ERROR_CODE, "500"),
            (h::ERROR, "it broke"),
            (h::DURATION_MS, "12"),
        ]
        .iter()
        .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
        .collect();
        want.sort();
        assert_eq!(pairs, want);
    }

    #[test]
    fn batches_keep_each_destination_in_order() {
        let notice = |reply: &str| WorkNotice {
            reply: reply.to_owned(),
            headers: Vec::new(),
        };
        let groups = by_destination(vec![
            ("_INBOX.a.n".to_owned(), notice("_INBOX.a.1")),
            ("_INBOX.b.n".to_owned(), notice("_INBOX.b.1")),
            ("_INBOX.a.n".to_owned(), notice("_INBOX.a.2")),
        ]);
        let replies: Vec<(String, Vec<String>)> = groups
            .into_iter()
            .map(|(to, n)| (to, n.into_iter().map(|n| n.reply).collect()))
            .collect();
        assert_eq!(
            replies,
            [
                (
                    "_INBOX.a.n".to_owned(),
                    vec!["_INBOX.a.1".to_owned(), "_INBOX.a.2".to_owned()]
                ),
                ("_INBOX.b.n".to_owned(), vec!["_INBOX.b.1".to_owned()]),
            ]
        );
    }
}
