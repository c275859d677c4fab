//! An instant node for the benchmarks: it answers every invocation on its
//! work subject at once with its input, as an executor would (the outcome
//! straight to the requester, the dispatcher's notice batched to
//! `notices_to`, nothing on the result subject for a success), so a
//! benchmark measures the dispatcher's cost and not a function's.

use bytes::Bytes;
use comfaas_platform::notices::{self, Notices};
use comfaas_platform::reply::{self, ReplyMeta};
use comfaas_schemas::{decode, Invocation, Tier};
use futures::StreamExt;

/// Answers every invocation sent to `work_subject` (node `node`) until the
/// connection closes. Heartbeats and pings are the caller's.
pub async fn answer_work(client: async_nats::Client, work_subject: String, node: &str) {
    let mut work = client.subscribe(work_subject).await.expect("subscribe");
    let notices = Notices::start(client.clone());
    let node = node.to_owned();
    tokio::spawn(async move {
        while let Some(m) = work.next().await {
            let Some(reply_to) = m.reply else { continue };
            let Ok(inv) = decode::<Invocation>(&m.payload) else {
                continue;
            };
            let meta = ReplyMeta {
                invocation_id: inv.id,
                node: Some(node.clone()),
                tier: Some(Tier::Edge),
                duration_ms: Some(0),
                ..ReplyMeta::default()
            };
            let headers = reply::ok(&meta);
            let input = Bytes::from(inv.input);
            let Some(requester) = inv.reply_to else {
                let _ = client.publish_with_headers(reply_to, headers, input).await;
                continue;
            };
            // As an executor does: the notice made before the reply leaves.
            let notice = match inv.notices_to {
                Some(to) if comfaas_platform::request::is_reply_subject(&to) => {
                    Ok((to, notices::replied(reply_to.to_string(), &headers)))
                }
                _ => Err(reply::notice(&headers)),
            };
            let _ = client.publish_with_headers(requester, headers, input).await;
            match notice {
                Ok((to, notice)) => notices.send(to, notice).await,
                Err(notice) => {
                    let _ = client
                        .publish_with_headers(reply_to, notice, Bytes::new())
                        .await;
                }
            }
        }
    });
}
