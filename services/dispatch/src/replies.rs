//! The dispatcher's own inbox for work requests: each goes out with a reply
//! subject `<inbox>.<n>`, and whatever comes back for it (the node's reply
//! or refusal, the server's "no responders", or its notice inside a
//! [`NoticeBatch`] sent to `<inbox>.n`) reaches the invocation waiting for
//! it. A notice that matches nothing waiting (late, repeated or forged) is
//! dropped.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use async_nats::HeaderMap;
use comfaas_schemas::{decode, NoticeBatch};
use tokio::sync::oneshot;

/// The last token of the subject notice batches are sent to.
const NOTICES_TOKEN: &str = "n";

/// What came back for one work request.
#[derive(Debug)]
pub enum Back {
    /// A reply on the request's own subject (an answer, a refusal, or the
    /// server's status when nobody listens).
    Message(async_nats::Message),
    /// The node's notice that it answered the requester, from a batch: the
    /// headers its headers-only reply would have had.
    Notice(HeaderMap),
}

/// The inbox and the work requests waiting on it.
pub struct Replies {
    prefix: String,
    /// `<prefix>.n`, named in every invocation: spelled once.
    notices: String,
    next: AtomicU64,
    waiting: Mutex<HashMap<u64, oneshot::Sender<Back>>>,
}

/// One work request waiting for what comes back; dropping it forgets the
/// request (a late reply is then dropped).
pub struct Waiting<'a> {
    replies: &'a Replies,
    id: u64,
    back: oneshot::Receiver<Back>,
}

impl Waiting<'_> {
    /// The reply subject to send the work request with.
    pub fn subject(&self) -> String {
        format!("{}.{}", self.replies.prefix, self.id)
    }

    /// What comes back; `None` if the inbox stopped.
    pub async fn back(&mut self) -> Option<Back> {
        (&mut self.back).await.ok()
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.replies.forget(self.id);
    }
}

impl Replies {
    /// An inbox under `prefix`, unique to this dispatcher: a fresh inbox of
    /// its connection (`Client::new_inbox`), inside what its identity may
    /// read on a secure site (`_INBOX.<public key>.>`).
    pub fn new(prefix: String) -> Self {
        Self {
            notices: format!("{prefix}.{NOTICES_TOKEN}"),
            prefix,
            next: AtomicU64::new(1),
            waiting: Mutex::new(HashMap::new()),
        }
    }

    /// The subject to subscribe to: every reply and batch of notices.
    pub fn subscription(&self) -> String {
        format!("{}.*", self.prefix)
    }

    /// Where nodes send batches of notices (an invocation's `notices_to`).
    pub fn notices_subject(&self) -> &str {
        &self.notices
    }

    /// Registers a work request about to be sent.
    pub fn expect(&self) -> Waiting<'_> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (sender, back) = oneshot::channel();
        self.lock().insert(id, sender);
        Waiting {
            replies: self,
            id,
            back,
        }
    }

    /// Hands `message`, received on [`subscription`](Self::subscription),
    /// to the request(s) it answers. Returns how many it reached.
    pub fn deliver(&self, message: async_nats::Message) -> usize {
        let Some(token) = message
            .subject
            .strip_prefix(self.prefix.as_str())
            .and_then(|rest| rest.strip_prefix('.'))
        else {
            return 0;
        };
        if token == NOTICES_TOKEN {
            let batch: NoticeBatch = match decode(&message.payload) {
                Ok(batch) => batch,
                Err(e) => {
                    tracing::warn!("malformed batch of notices dropped: {e}");
                    return 0;
                }
            };
            return batch
                .notices
                .into_iter()
                .filter(|notice| {
                    let headers = comfaas_platform::notices::from_pairs(&notice.headers);
                    self.id_of(&notice.reply)
                        .is_some_and(|id| self.answer(id, Back::Notice(headers)))
                })
                .count();
        }
        match token.parse() {
            Ok(id) => usize::from(self.answer(id, Back::Message(message))),
            Err(_) => 0,
        }
    }

    /// The request id of a reply subject of this inbox.
    fn id_of(&self, reply: &str) -> Option<u64> {
        reply
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix('.')?
            .parse()
            .ok()
    }

    /// Gives `back` to request `id`, if it still waits.
    fn answer(&self, id: u64, back: Back) -> bool {
        let sender = self.lock().remove(&id);
        sender.is_some_and(|sender| sender.send(back).is_ok())
    }

    fn forget(&self, id: u64) {
        self.lock().remove(&id);
    }

    /// Requests waiting now.
    #[cfg(test)]
    fn waiting(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, oneshot::Sender<Back>>> {
        // A panic while holding this lock leaves a map still usable.
        self.waiting
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use comfaas_schemas::{encode, WorkNotice, SCHEMA_VERSION};

    fn message(subject: &str, payload: Vec<u8>) -> async_nats::Message {
        async_nats::Message {
            subject: subject.into(),
            reply: None,
            payload: payload.into(),
            headers: None,
            status: None,
            description: None,
            length: 0,
        }
    }

    #[tokio::test]
    async fn replies_and_batched_notices_reach_their_requests_and_nothing_else() {
        let replies = Replies::new("_INBOX.UKEY.abc".to_owned());
        let mut first = replies.expect();
        let mut second = replies.expect();
        let third = replies.expect();
        assert_eq!(replies.waiting(), 3);

        // A plain reply reaches its own request.
        assert_eq!(
            replies.deliver(message(&first.subject(), b"out".to_vec())),
            1
        );
        match first.back().await {
            Some(Back::Message(m)) => assert_eq!(&m.payload[..], b"out"),
            other => panic!("expected the reply, got {other:?}"),
        }

        // A batch: one notice for a waiting request, one repeated, one for
        // another inbox, one for a request already answered.
        let notice = |reply: String| WorkNotice {
            reply,
            headers: vec![("Comfaas-Replied".to_owned(), "true".to_owned())],
        };
        let batch = NoticeBatch {
            schema: SCHEMA_VERSION,
            notices: vec![
                notice(second.subject()),
                notice(second.subject()),
                notice("_INBOX.someone-else.2".to_owned()),
                notice(first.subject()),
            ],
        };
        let reached = replies.deliver(message(replies.notices_subject(), encode(&batch).unwrap()));
        assert_eq!(reached, 1);
        match second.back().await {
            Some(Back::Notice(h)) => {
                assert_eq!(h.get("Comfaas-Replied").map(|v| v.as_str()), Some("true"));
            }
            other => panic!("expected the notice, got {other:?}"),
        }

        // Garbage on the notices subject, and replies to unknown ids, reach
        // nothing and break nothing.
        assert_eq!(
            replies.deliver(message(replies.notices_subject(), b"\xc1junk".to_vec())),
            0
        );
        let unknown = format!("{}.999", replies.prefix);
        assert_eq!(replies.deliver(message(&unknown, Vec::new())), 0);
        assert_eq!(replies.deliver(message("_INBOX.other.1", Vec::new())), 0);

        // A request given up is forgotten: its late reply reaches nothing.
        let late = third.subject();
        drop(third);
        assert_eq!(replies.waiting(), 0);
        assert_eq!(replies.deliver(message(&late, Vec::new())), 0);
    }
}
