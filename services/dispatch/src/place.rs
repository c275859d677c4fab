//! One invocation from request to answer: read the request, find the
//! function, place it, send it to the node, and bring the node's answer
//! back (or an error that says why there is none).

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::client::RequestErrorKind;
use async_nats::HeaderMap;
use bytes::Bytes;
use comfaas_placement::{Decision, Request};
use comfaas_platform::reply::{self, Outcome, ReplyMeta};
use comfaas_schemas::names::{self, headers as h};
use comfaas_schemas::{
    encode, now_unix_ms, parse_duration, validate_function_name, CandidateEstimate, Deployment,
    ErrorCode, InputObject, Invocation, Placement, PlacementRecord, Procs, SCHEMA_VERSION,
};

use crate::{lock, Shared, RECENT_DECISIONS};

/// Time allowed beyond the invocation's own deadline for the node's answer
/// to travel back.
const ANSWER_GRACE: Duration = Duration::from_secs(2);
/// A deploy younger than this may not have reached the nodes yet.
const FRESH_DEPLOY_MS: u64 = 10_000;
/// How often a request for a function still installing looks again.
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
}

impl Answer {
    fn error(function: Option<&str>, code: ErrorCode, message: &str, id: &str) -> Self {
        let meta = ReplyMeta {
            invocation_id: id.to_owned(),
            ..ReplyMeta::default()
        };
        Self {
            function: function.map(str::to_owned),
            headers: reply::error(code, message, &meta),
            body: Bytes::new(),
            error: Some(code),
            delivered: false,
        }
    }

    /// Whether trying again later may succeed (no node now, node silent).
    pub fn is_transient(&self) -> bool {
        matches!(
            self.error,
            Some(ErrorCode::Unavailable | ErrorCode::NodeTimeout | ErrorCode::TooManyRequests)
        )
    }
}

/// Options a request may carry in its headers.
struct RequestOptions {
    timeout: Option<Duration>,
    placement: Option<Placement>,
    procs: Option<Procs>,
    input_object: Option<String>,
}

fn request_options(headers: Option<&HeaderMap>) -> Result<RequestOptions, String> {
    let mut options = RequestOptions {
        timeout: None,
        placement: None,
        procs: None,
        input_object: None,
    };
    let Some(headers) = headers else {
        return Ok(options);
    };
    if let Some(v) = reply::get(headers, h::TIMEOUT) {
        options.timeout =
            Some(parse_duration(&v).map_err(|e| format!("header {}: {e}", h::TIMEOUT))?);
    }
    if let Some(v) = reply::get(headers, h::PLACEMENT) {
        options.placement = Some(
            v.parse()
                .map_err(|e| format!("header {}: {e}", h::PLACEMENT))?,
        );
    }
    if let Some(v) = reply::get(headers, h::PROCS) {
        options.procs = Some(
            v.parse::<Procs>()
                .map_err(|e| format!("header {}: {e}", h::PROCS))?,
        );
    }
    options.input_object = reply::get(headers, h::INPUT_OBJECT);
    Ok(options)
}

/// Handles one request or event on `subject` and returns its answer.
/// `reply_to` is the requester's reply subject, which the node answers
/// directly when the function runs.
pub async fn execute(
    shared: &Shared,
    subject: &str,
    headers: Option<&HeaderMap>,
    input: Bytes,
    reply_to: Option<&str>,
) -> Answer {
    {
        let mut stats = lock(&shared.stats);
        stats.received += 1;
        stats.in_flight += 1;
    }
    let mut answer = execute_inner(shared, subject, headers, input, reply_to).await;
    // Devices correlate results of their events by the id they gave them.
    if let Some(msg_id) = headers.and_then(|hm| reply::get(hm, h::MSG_ID)) {
        answer
            .headers
            .insert(h::MSG_ID, reply::header_text(&msg_id).as_str());
    }
    let mut stats = lock(&shared.stats);
    stats.in_flight = stats.in_flight.saturating_sub(1);
    match answer.error {
        None => stats.succeeded += 1,
        Some(code) => {
            stats.failed += 1;
            *stats.errors.entry(code.as_u16()).or_default() += 1;
        }
    }
    answer
}

async fn execute_inner(
    shared: &Shared,
    subject: &str,
    headers: Option<&HeaderMap>,
    input: Bytes,
    reply_to: Option<&str>,
) -> Answer {
    let id = uuid::Uuid::new_v4().simple().to_string();
    let Some(function) = shared.subjects.function_of(subject) else {
        return Answer::error(
            None,
            ErrorCode::BadRequest,
            &format!("`{subject}` names no function"),
            &id,
        );
    };
    if let Err(reason) = validate_function_name(function) {
        return Answer::error(None, ErrorCode::BadRequest, &reason, &id);
    }
    let fail = |code, message: &str| Answer::error(Some(function), code, message, &id);
    let options = match request_options(headers) {
        Ok(options) => options,
        Err(message) => return fail(ErrorCode::BadRequest, &message),
    };
    let deployment = match deployment(shared, function).await {
        Ok(Some(d)) => d,
        Ok(None) => {
            return fail(
                ErrorCode::NotFound,
                &format!("function `{function}` is not deployed"),
            )
        }
        Err(message) => return fail(ErrorCode::Unavailable, &message),
    };
    let input_object = match &options.input_object {
        None => None,
        Some(_) if !input.is_empty() => {
            return fail(
                ErrorCode::BadRequest,
                &format!(
                    "send the input in the body or as {}, not both",
                    h::INPUT_OBJECT
                ),
            )
        }
        Some(name) => match shared.inputs.info(name).await {
            Ok(info) => Some(InputObject {
                name: name.clone(),
                size: info.size as u64,
                digest: info.digest.unwrap_or_default(),
            }),
            Err(e) => {
                return fail(
                    ErrorCode::NotFound,
                    &format!(
                        "input object `{name}` is not in {}: {e}",
                        names::INPUTS_BUCKET
                    ),
                )
            }
        },
    };
    let manifest = &deployment.manifest;
    let config = &shared.config;
    let timeout = options
        .timeout
        .or(manifest.timeout())
        .unwrap_or(Duration::from_millis(config.default_timeout_ms))
        .min(Duration::from_millis(config.max_timeout_ms));
    let placement = options
        .placement
        .unwrap_or_else(|| manifest.placement.clone());
    let procs = options
        .procs
        .or(manifest.procs)
        .unwrap_or(Procs::exactly(1));
    let received = now_unix_ms();
    let wait = timeout + Duration::from_millis(config.queue_wait_ms);
    let mut invocation = Invocation {
        schema: SCHEMA_VERSION,
        id: id.clone(),
        function: function.to_owned(),
        input: input.to_vec(),
        timeout_ms: Some(timeout.as_millis() as u64),
        procs: None,
        received_unix_ms: received,
        deadline_unix_ms: Some(received + wait.as_millis() as u64),
        reply_to: reply_to.map(str::to_owned),
        input_object,
    };
    // Try nodes until one answers; a node that is gone, full, or does not
    // have the function after all is skipped for the next best.
    let mut tried: Vec<String> = Vec::new();
    let install_wait_until = Instant::now() + wait;
    // Nodes hear of a deploy within moments; until then, wait for them.
    let fresh = now_unix_ms().saturating_sub(deployment.deployed_unix_ms) < FRESH_DEPLOY_MS;
    let mut last_refusal: Option<Answer> = None;
    let request = Request {
        function,
        placement: &placement,
        procs,
        input_bytes: invocation.input_object.as_ref().map_or(0, |o| o.size),
        inline_bytes: invocation.input.len() as u64,
    };
    // What run time depends on: the input's size, however it travels.
    let input_size = request.run_input_bytes();
    loop {
        let decision = {
            let mut views = lock(&shared.nodes).views(function, Instant::now());
            views.retain(|v| !tried.contains(&v.node));
            comfaas_placement::choose(&views, &request, &mut rand::rng())
        };
        let decision = match decision {
            Ok(d) => d,
            // Deployed a moment ago: wait for the install rather than fail.
            Err(e)
                if e.code == ErrorCode::Unavailable
                    && last_refusal.is_none()
                    && Instant::now() < install_wait_until
                    && lock(&shared.nodes).coming(
                        function,
                        &deployment.bundle.digest,
                        fresh,
                        Instant::now(),
                    ) =>
            {
                tokio::time::sleep(INSTALL_POLL).await;
                continue;
            }
            Err(e) => {
                if let Some(refusal) = last_refusal {
                    return refusal;
                }
                let report = lock(&shared.nodes).install_report(function, Instant::now());
                if report.is_empty() {
                    return fail(e.code, &e.message);
                }
                return fail(e.code, &format!("{} ({})", e.message, report.join("; ")));
            }
        };
        let node = decision.node.clone();
        tracing::debug!(invocation = %id, function, node = %node, "{}", decision.reason);
        tried.push(node.clone());
        // The process count is fitted to the chosen node.
        invocation.procs = Some(decision.procs);
        let payload: Bytes = match encode(&invocation) {
            Ok(bytes) => bytes.into(),
            Err(e) => {
                return fail(
                    ErrorCode::BadRequest,
                    &format!("cannot encode invocation: {e}"),
                )
            }
        };
        let sent = Instant::now();
        let token = lock(&shared.nodes).sent(
            &node,
            sent + Duration::from_secs_f64(decision.estimate_ms.max(0.0) / 1000.0),
        );
        let result = shared
            .client
            .send_request(
                shared.subjects.work(&node),
                async_nats::Request::new()
                    .payload(payload)
                    .timeout(Some(wait + ANSWER_GRACE)),
            )
            .await;
        lock(&shared.nodes).answered(&node, token);
        let took = sent.elapsed();
        record(shared, &id, function, &decision, took.as_millis() as u64);
        if let Ok(message) = &result {
            let run_ms = message
                .headers
                .as_ref()
                .and_then(|hm| reply::get(hm, h::DURATION_MS))
                .and_then(|ms| ms.parse::<f64>().ok());
            lock(&shared.nodes).observe(
                &node,
                function,
                decision.procs,
                input_size,
                took.as_secs_f64() * 1000.0,
                run_ms,
            );
        }
        match result {
            Ok(message) => {
                let headers = message.headers.unwrap_or_default();
                let delivered = headers.get(h::REPLIED).is_some();
                match reply::outcome(Some(&headers)) {
                    Outcome::Ok => {
                        return Answer {
                            function: Some(function.to_owned()),
                            headers,
                            body: message.payload,
                            error: None,
                            delivered,
                        }
                    }
                    Outcome::Error { code, .. } => {
                        let answer = Answer {
                            function: Some(function.to_owned()),
                            headers,
                            body: message.payload,
                            error: Some(code.unwrap_or(ErrorCode::FunctionFailed)),
                            delivered,
                        };
                        if delivered {
                            return answer;
                        }
                        // Refusals that are about this node, not the function.
                        if matches!(
                            code,
                            Some(
                                ErrorCode::TooManyRequests
                                    | ErrorCode::NotFound
                                    | ErrorCode::Unavailable
                            )
                        ) {
                            last_refusal = Some(answer);
                            continue;
                        }
                        return answer;
                    }
                    Outcome::Unknown => {
                        return fail(
                            ErrorCode::FunctionFailed,
                            &format!("node {node} sent a reply without a status"),
                        )
                    }
                }
            }
            Err(e) if e.kind() == RequestErrorKind::NoResponders => {
                tracing::info!(node = %node, "no executor listens on the work subject; marking unreachable");
                lock(&shared.nodes).unreachable(&node);
            }
            Err(e) if e.kind() == RequestErrorKind::TimedOut => {
                return fail(
                    ErrorCode::NodeTimeout,
                    &format!(
                        "node {node} did not answer within {}s",
                        (wait + ANSWER_GRACE).as_secs()
                    ),
                );
            }
            Err(e) if e.kind() == RequestErrorKind::MaxPayloadExceeded => {
                return fail(
                    ErrorCode::TooLarge,
                    &format!(
                        "input of {} bytes does not fit in a message: {e}",
                        input.len()
                    ),
                );
            }
            Err(e) => {
                return fail(
                    ErrorCode::Unavailable,
                    &format!("cannot reach node {node}: {e}"),
                );
            }
        }
    }
}

/// The function's deployment: from the watched registry, or read on demand
/// when the watch has not caught up with a fresh deploy.
async fn deployment(shared: &Shared, function: &str) -> Result<Option<Arc<Deployment>>, String> {
    if let Some(d) = lock(&shared.functions).get(function) {
        return Ok(Some(d.clone()));
    }
    match shared.registry.get(function).await {
        Ok(found) => Ok(found.map(Arc::new)),
        Err(e) => Err(format!("cannot read the registry: {e}")),
    }
}

fn record(shared: &Shared, id: &str, function: &str, decision: &Decision, took_ms: u64) {
    let mut stats = lock(&shared.stats);
    if stats.recent.len() == RECENT_DECISIONS {
        stats.recent.pop_front();
    }
    stats.recent.push_back(PlacementRecord {
        invocation: id.to_owned(),
        function: function.to_owned(),
        node: decision.node.clone(),
        procs: Some(decision.procs),
        reason: decision.reason.clone(),
        took_ms: Some(took_ms),
        estimate_ms: Some(decision.estimate_ms),
        candidates: decision
            .candidates
            .iter()
            .map(|(node, estimate_ms)| CandidateEstimate {
                node: node.clone(),
                estimate_ms: *estimate_ms,
            })
            .collect(),
    });
}

/// Publishes `answer` on `<prefix>.result.<fn>` (kept in `COMFAAS_RESULTS`)
/// unless the node that delivered it already did.
pub async fn publish_result(shared: &Shared, answer: &Answer) {
    let Some(function) = answer.function.as_ref().filter(|_| !answer.delivered) else {
        return;
    };
    let mut headers = answer.headers.clone();
    headers.insert(h::FUNCTION, function.as_str());
    if let Err(e) = shared
        .client
        .publish_with_headers(
            shared.subjects.result(function),
            headers,
            answer.body.clone(),
        )
        .await
    {
        tracing::warn!("cannot publish result of {function}: {e}");
    }
}
