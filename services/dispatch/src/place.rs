//! One invocation from request to answer: read the request, find the
//! function, place it, send it to the node, and bring the node's answer
//! back (or an error that says why there is none). Shared state is only
//! touched through [`crate::state::State`]'s methods.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::client::PublishErrorKind;
use async_nats::HeaderMap;
use bytes::Bytes;
use comfaas_placement::{Decision, Request};
use comfaas_platform::reply::{self, Outcome, ReplyMeta};
use comfaas_platform::request::{self, RequestOptions};
use comfaas_schemas::names::{self, headers as h};
use comfaas_schemas::{
    encode, job_procs, now_unix_ms, Deployment, ErrorCode, InputObject, Invocation,
    InvocationError, SCHEMA_VERSION,
};

use crate::replies::Back;
use crate::shared::Shared;
use crate::state::{Choice, Ended, Wanted};

/// Time allowed beyond the invocation's own deadline for the node's answer
/// to travel back.
const ANSWER_GRACE: Duration = Duration::from_secs(2);
/// A deploy younger than this may not have reached the nodes yet.
const FRESH_DEPLOY_MS: u64 = 10_000;
/// How often a request for a function still installing looks again, at
/// the latest: a node's report wakes it sooner (an install's end is
/// reported at once).
const INSTALL_POLL: Duration = Duration::from_millis(50);

/// What goes back to the requester and onto the result subject.
pub struct Answer {
    /// The function, when the request named a valid one.
    pub function: Option<String>,
    /// Reply headers.
    pub headers: HeaderMap,
    /// Reply body (the function's output, or empty on error).
    pub body: Bytes,
    /// The error, when there is one.
    pub error: Option<ErrorCode>,
    /// The node already answered the requester and published the result.
    pub delivered: bool,
    /// No retry can help, whatever the code says (no known node could ever
    /// take it): an event goes to the dead-letter queue at once.
    pub for_good: bool,
    /// The nodes it was sent to, in order.
    pub tried: Vec<String>,
}

impl Answer {
    /// The dispatcher's own error answer.
    fn failed(function: Option<&str>, error: &InvocationError, id: &str) -> Self {
        let meta = ReplyMeta {
            invocation_id: id.to_owned(),
            ..ReplyMeta::default()
        };
        Self {
            function: function.map(str::to_owned),
            headers: reply::error(error, &meta),
            body: Bytes::new(),
            error: Some(error.code),
            delivered: false,
            for_good: false,
            tried: Vec::new(),
        }
    }

    /// Whether trying again later may succeed (no node now, node silent).
    pub fn is_transient(&self) -> bool {
        !self.for_good && self.error.is_some_and(ErrorCode::is_transient)
    }
}

/// One delivery of a device event, as the events loop hands it over.
pub struct EventRun {
    /// The event's id, the same on every delivery: the invocation's id.
    pub id: String,
    /// A node that is running it or ran it recently (asked before placing
    /// a redelivery): tried first, so the redelivery attaches to that run.
    pub held_by: Option<String>,
}

/// An invocation that cannot be placed now, and whether it ever can.
enum Unplaced {
    /// The error to answer.
    Error(InvocationError),
    /// No node known could ever take it.
    Never(InvocationError),
}

impl From<InvocationError> for Unplaced {
    fn from(error: InvocationError) -> Self {
        Self::Error(error)
    }
}

/// Handles one request or event on `subject` and returns its answer.
/// `reply_to` is the requester's reply subject, which the node answers
/// directly when the function runs; `event` is set for a device event.
pub async fn execute(
    shared: &Shared,
    subject: &str,
    headers: Option<&HeaderMap>,
    input: Bytes,
    reply_to: Option<&str>,
    event: Option<&EventRun>,
) -> Answer {
    shared.state.start();
    let arrived = Instant::now();
    let id = match event {
        Some(event) => event.id.clone(),
        None => uuid::Uuid::new_v4().simple().to_string(),
    };
    let mut tried = Vec::new();
    let mut answer = match request::function_of(&shared.subjects, subject) {
        Err(error) => Answer::failed(None, &error, &id),
        Ok(function) => {
            let call = Call {
                function,
                headers,
                reply_to,
                id: &id,
                event,
            };
            match invoke(shared, &call, input, &mut tried).await {
                Ok(answer) => answer,
                Err(Unplaced::Error(error)) => Answer::failed(Some(function), &error, &id),
                Err(Unplaced::Never(error)) => Answer {
                    for_good: true,
                    ..Answer::failed(Some(function), &error, &id)
                },
            }
        }
    };
    answer.tried = tried;
    // Devices correlate results of their events by the id they gave them.
    if let Some(msg_id) = request::msg_id(headers) {
        reply::set_msg_id(&mut answer.headers, &msg_id);
    }
    shared.state.finish(answer.error);
    let counted = crate::observe::Counted {
        function: answer.function.as_deref(),
        error: answer.error,
        headers: &answer.headers,
        node: answer.tried.last().map(String::as_str),
    };
    shared
        .observe
        .answered(&counted, arrived.elapsed(), event.is_some());
    answer
}

/// The dispatcher's own error answer to a request or event on `subject`
/// that is not run at all.
pub fn failed_answer(
    shared: &Shared,
    subject: &str,
    headers: Option<&HeaderMap>,
    error: &InvocationError,
    id: &str,
) -> Answer {
    let function = request::function_of(&shared.subjects, subject).ok();
    let mut answer = Answer::failed(function, error, id);
    if let Some(msg_id) = request::msg_id(headers) {
        reply::set_msg_id(&mut answer.headers, &msg_id);
    }
    answer
}

/// What one invocation is, besides its input.
struct Call<'a> {
    function: &'a str,
    headers: Option<&'a HeaderMap>,
    reply_to: Option<&'a str>,
    id: &'a str,
    event: Option<&'a EventRun>,
}

/// The invocation of `function`: its deployment and input, then tries on
/// the best node left until one answers; each node tried goes into `tried`.
async fn invoke(
    shared: &Shared,
    call: &Call<'_>,
    input: Bytes,
    tried: &mut Vec<String>,
) -> Result<Answer, Unplaced> {
    let Call {
        function,
        headers,
        reply_to,
        id,
        event,
    } = *call;
    let options = RequestOptions::from_headers(headers)?;
    // The registry read and the object lookup are the rare paths: boxed,
    // their futures do not swell every invocation's task (copied and
    // allocated at each spawn).
    let deployment = match shared.state.deployment(function) {
        Some(deployment) => deployment,
        None => Box::pin(read_deployment(shared, function)).await?,
    };
    let input_object = match &options.input_object {
        None => None,
        Some(name) => Some(Box::pin(input_object(shared, name, &input)).await?),
    };
    let manifest = &deployment.manifest;
    let timeout = shared
        .config
        .run_limits()
        .timeout(options.timeout, manifest.timeout());
    let placement = options
        .placement
        .unwrap_or_else(|| manifest.placement.clone());
    let received = now_unix_ms();
    let wait = timeout + Duration::from_millis(shared.config.queue_wait_ms);
    let mut invocation = Invocation {
        schema: SCHEMA_VERSION,
        id: id.to_owned(),
        function: function.to_owned(),
        input: input.to_vec(),
        timeout_ms: Some(timeout.as_millis() as u64),
        procs: None,
        received_unix_ms: received,
        deadline_unix_ms: Some(received + wait.as_millis() as u64),
        // Only ever an inbox (checked on arrival; again here, as this is
        // where the node is told to publish).
        reply_to: reply_to
            .filter(|r| request::is_reply_subject(r))
            .map(str::to_owned),
        input_object,
        event: event.is_some(),
        // Requests answered straight to their requester: the node's notice
        // comes in a batch to this dispatcher's inbox.
        notices_to: Some(shared.replies.notices_subject().to_owned()),
    };
    let request = Request {
        function,
        placement: &placement,
        procs: job_procs(options.procs, manifest.procs),
        input_bytes: invocation.input_object.as_ref().map_or(0, |o| o.size),
        inline_bytes: invocation.input.len() as u64,
        input_digest: invocation
            .input_object
            .as_ref()
            .map(|o| o.digest.as_str())
            .filter(|_| !shared.config.ignore_cached_inputs),
    };
    // A redelivered event goes first to the node that holds its run.
    let held = event
        .and_then(|e| e.held_by.clone())
        .map(comfaas_schemas::Placement::Node);
    let mut attaching = held.is_some();
    // Try nodes until one answers; a node that is gone, full, or does not
    // have the function after all is skipped for the next best.
    let mut last_refusal: Option<Answer> = None;
    let install_wait_until = Instant::now() + wait;
    // Nodes hear of a deploy within moments; until then, wait for them.
    let fresh = now_unix_ms().saturating_sub(deployment.deployed_unix_ms) < FRESH_DEPLOY_MS;
    loop {
        let trying = Request {
            placement: held.as_ref().filter(|_| attaching).unwrap_or(&placement),
            ..request.clone()
        };
        let wanted = Wanted {
            request: &trying,
            digest: &deployment.bundle.digest,
            fresh,
            may_wait: last_refusal.is_none() && Instant::now() < install_wait_until,
            explain: last_refusal.is_none(),
        };
        let decision = match shared.state.choose(&wanted, tried) {
            Choice::Node(decision, tier) => {
                shared.observe.placed(tier);
                decision
            }
            // The node holding the event's run cannot take it: anywhere.
            Choice::Nowhere(_) | Choice::Never(_) | Choice::Installing if attaching => {
                attaching = false;
                continue;
            }
            // Deployed a moment ago: wait for the install rather than fail.
            Choice::Installing => {
                let _ = tokio::time::timeout(INSTALL_POLL, shared.state.reported()).await;
                continue;
            }
            Choice::Nowhere(error) => return last_refusal.ok_or(Unplaced::Error(error)),
            Choice::Never(error) => return last_refusal.ok_or(Unplaced::Never(error)),
        };
        tracing::debug!(invocation = %id, function, node = %decision.node, "{}", decision.reason);
        tried.push(decision.node.clone());
        // The process count is fitted to the chosen node.
        invocation.procs = Some(decision.procs);
        match send(
            shared,
            &invocation,
            &decision,
            request.run_input_bytes(),
            wait,
        )
        .await?
        {
            Sent::Answered(answer) => return Ok(answer),
            Sent::Refused(answer) => last_refusal = Some(answer),
            Sent::Unreachable => {}
        }
    }
}

/// Why nothing came back from a node.
enum Silence {
    /// Nobody listens on the node's work subject.
    NoResponders,
    /// Nothing within the invocation's wait.
    TimedOut,
    /// The dispatcher's inbox stopped (shutting down).
    Stopped,
}

/// What became of one try.
enum Sent {
    /// The node ran it (or failed it for good): this is the answer.
    Answered(Answer),
    /// The node refused for a reason of its own (full, not installed,
    /// leaving): another node may take it.
    Refused(Answer),
    /// Nobody listens on the node's work subject.
    Unreachable,
}

/// Sends `invocation` to the node `decision` chose and reads its answer.
async fn send(
    shared: &Shared,
    invocation: &Invocation,
    decision: &Decision,
    input_bytes: u64,
    wait: Duration,
) -> Result<Sent, InvocationError> {
    let node = &decision.node;
    let payload: Bytes = encode(invocation)
        .map_err(|e| InvocationError::bad_request(format!("cannot encode invocation: {e}")))?
        .into();
    let function = invocation.function.as_str();
    let sent = Instant::now();
    let pending = shared
        .state
        .begin(&invocation.id, function, decision, input_bytes);
    let mut waiting = shared.replies.expect();
    let published = shared
        .client
        .publish_with_reply(shared.subjects.work(node), waiting.subject(), payload)
        .await;
    if let Err(e) = published {
        shared.state.end(pending, 0, Ended::Failed);
        return Err(match e.kind() {
            PublishErrorKind::MaxPayloadExceeded => InvocationError::too_large(format!(
                "input of {} bytes does not fit in a message: {e}",
                invocation.input.len()
            )),
            _ => InvocationError::unavailable(format!("cannot reach node {node}: {e}")),
        });
    }
    // A node declared dead (missed heartbeats) will not answer: its
    // requester hears so now, not at its deadline. Whether the run had
    // started there is unknown, so it is not tried elsewhere: the error
    // is transient, and an event is retried as such.
    let answer_within = wait + ANSWER_GRACE;
    let back = tokio::select! {
        back = tokio::time::timeout(answer_within, waiting.back()) => Some(back),
        () = pending.node_died() => None,
    };
    drop(waiting);
    let took = sent.elapsed();
    // What came back: headers and body, or why nothing did.
    let result = match back {
        None => None,
        Some(Ok(Some(Back::Notice(headers)))) => Some(Ok((headers, Bytes::new()))),
        Some(Ok(Some(Back::Message(message))))
            if message.status == Some(async_nats::StatusCode::NO_RESPONDERS) =>
        {
            Some(Err(Silence::NoResponders))
        }
        Some(Ok(Some(Back::Message(message)))) => {
            Some(Ok((message.headers.unwrap_or_default(), message.payload)))
        }
        Some(Ok(None)) => Some(Err(Silence::Stopped)),
        Some(Err(_)) => Some(Err(Silence::TimedOut)),
    };
    let ended = match &result {
        Some(Ok((headers, _))) => Ended::Answered {
            took_ms: took.as_secs_f64() * 1000.0,
            run_ms: reply::run_ms(headers),
        },
        Some(Err(Silence::NoResponders)) => Ended::Unreachable,
        Some(Err(_)) | None => Ended::Failed,
    };
    shared.state.end(pending, took.as_millis() as u64, ended);
    let Some(result) = result else {
        tracing::info!(node = %node, invocation = %invocation.id, "node died while running the invocation");
        return Err(InvocationError::unavailable(format!(
            "node {node} left while running invocation {}",
            invocation.id
        )));
    };
    let (headers, payload) = match result {
        Ok(answer) => answer,
        Err(Silence::NoResponders) => {
            tracing::info!(node = %node, "no executor listens on the work subject; marking unreachable");
            return Ok(Sent::Unreachable);
        }
        Err(Silence::TimedOut) => {
            return Err(InvocationError::node_timeout(format!(
                "node {node} did not answer within {}s",
                answer_within.as_secs()
            )))
        }
        Err(Silence::Stopped) => {
            return Err(InvocationError::unavailable(format!(
                "cannot hear node {node}: the dispatcher's inbox stopped"
            )))
        }
    };
    let delivered = reply::delivered(&headers);
    let error = match reply::outcome(Some(&headers)) {
        Outcome::Ok => None,
        Outcome::Error { code, .. } => Some(code.unwrap_or(ErrorCode::FunctionFailed)),
        Outcome::Unknown => {
            return Err(InvocationError::function_failed(format!(
                "node {node} sent a reply without a status"
            )))
        }
    };
    let answer = Answer {
        function: Some(function.to_owned()),
        headers,
        body: payload,
        error,
        delivered,
        for_good: false,
        tried: Vec::new(),
    };
    // Refusals that are about this node, not the function.
    let refused = !delivered
        && matches!(
            error,
            Some(ErrorCode::TooManyRequests | ErrorCode::NotFound | ErrorCode::Unavailable)
        );
    Ok(if refused {
        Sent::Refused(answer)
    } else {
        Sent::Answered(answer)
    })
}

/// The function's deployment read on demand, when the watched registry
/// has not caught up with a fresh deploy.
async fn read_deployment(
    shared: &Shared,
    function: &str,
) -> Result<Arc<Deployment>, InvocationError> {
    match shared.registry.get(function).await {
        Ok(Some(found)) => Ok(Arc::new(found)),
        Ok(None) => Err(InvocationError::not_found(format!(
            "function `{function}` is not deployed"
        ))),
        Err(e) => Err(InvocationError::unavailable(format!(
            "cannot read the registry: {e}"
        ))),
    }
}

/// The input object `name` the request names, as the node will fetch it.
async fn input_object(
    shared: &Shared,
    name: &str,
    input: &[u8],
) -> Result<InputObject, InvocationError> {
    if !input.is_empty() {
        return Err(InvocationError::bad_request(format!(
            "send the input in the body or as {}, not both",
            h::INPUT_OBJECT
        )));
    }
    let info = shared.inputs.info(name).await.map_err(|e| {
        InvocationError::not_found(format!(
            "input object `{name}` is not in {}: {e}",
            names::INPUTS_BUCKET
        ))
    })?;
    comfaas_platform::objects::check_content_name(name, info.digest.as_deref())
        .map_err(InvocationError::input_invalid)?;
    Ok(InputObject {
        name: name.to_owned(),
        size: info.size as u64,
        digest: info.digest.unwrap_or_default(),
    })
}

/// How long a result is offered to `COMFAAS_RESULTS` until the stream
/// stores it: longer than a clustered stream's leader election, shorter
/// than the events' ack wait, so the event is not redelivered meanwhile.
const RESULT_STORE_WITHIN: Duration = Duration::from_secs(20);
/// Pause between two offers of a result.
const RESULT_RETRY: Duration = Duration::from_millis(250);

/// Publishes `answer` on `<prefix>.result.<fn>` unless the node that
/// delivered it already did, and waits until `COMFAAS_RESULTS` has stored
/// it (at most [`RESULT_STORE_WITHIN`]): a plain publish while the
/// stream has no leader (a clustered site electing one after losing a
/// server) is dropped without a word, and the event would then be acked
/// with its result lost. A result offered twice is stored once when it
/// carries the event's `Nats-Msg-Id`.
pub async fn publish_result(shared: &Shared, answer: &Answer) -> bool {
    let Some(function) = answer.function.as_ref().filter(|_| !answer.delivered) else {
        return true;
    };
    let headers = reply::for_result(&answer.headers, function);
    let deadline = Instant::now() + RESULT_STORE_WITHIN;
    loop {
        let stored = match shared
            .js
            .publish_with_headers(
                shared.subjects.result(function),
                headers.clone(),
                answer.body.clone(),
            )
            .await
        {
            Ok(ack) => ack.await.map(drop).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match stored {
            Ok(()) => return true,
            Err(e) if Instant::now() >= deadline => {
                tracing::warn!("result of {function} not stored: {e}");
                return false;
            }
            Err(e) => {
                tracing::debug!("result of {function} not stored yet: {e}");
                tokio::time::sleep(RESULT_RETRY).await;
            }
        }
    }
}
