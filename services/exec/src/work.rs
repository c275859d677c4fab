//! Taking work: each message on `<prefix>.work.<node>` is decoded, its
//! function looked up, its process count and time limit settled, and it is
//! admitted (slots plus a bounded queue, 429 beyond) and started only while
//! it can still end before its deadline. The run itself is `run`'s; the
//! reply goes straight to the requester, then to the result subject, then a
//! headers-only notice to the dispatcher. A refusal goes to the dispatcher
//! only, which may try another node. Nothing is ever published on a reply
//! subject that is not an inbox (`request::is_reply_subject`): a work
//! message whose own reply subject is not one is dropped, an invocation
//! whose `reply_to` is not one is refused (400) before it runs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use bytes::Bytes;
use comfaas_platform::notices;
use comfaas_platform::reply::{self, ReplyMeta};
use comfaas_platform::request::is_reply_subject;
use comfaas_platform::signals::Tasks;
use comfaas_schemas::{
    decode, job_procs, now_unix_ms, validate_function_name, Invocation, InvocationError, RunLimits,
};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::admission::{Admission, Ticket};
use crate::config::ExecConfig;
use crate::functions::{FunctionTable, Lookup, Served};
use crate::logs::{LogQueue, RunLog};
use crate::observe::Observe;
use crate::recent::{outcome_of, Claim, Outcome, RecentRuns};
use crate::run::{Job, Runner};

/// How long, after unsubscribing, work already delivered is still refused.
const DRAIN: Duration = Duration::from_millis(200);

/// Serves the work subject.
pub struct Worker {
    /// The connection replies go out on.
    pub client: async_nats::Client,
    /// The node's configuration.
    pub config: Arc<ExecConfig>,
    /// What this node serves.
    pub table: FunctionTable,
    /// Slots and queue.
    pub admission: Admission,
    /// Default and largest time limit of a run.
    pub limits: RunLimits,
    /// Runs admitted invocations.
    pub runner: Runner,
    /// Events running here or run recently, by id: what a redelivery
    /// attaches to.
    pub recent: RecentRuns,
    /// Counters for discovery and metrics.
    pub observe: Arc<Observe>,
    /// Where runs' logs go, when they are published.
    pub logs: Option<LogQueue>,
    /// Notices of runs answered straight to their requesters, batched per
    /// dispatcher.
    pub notices: comfaas_platform::notices::Notices,
}

/// What a work message gets back.
struct Reply {
    headers: HeaderMap,
    body: Bytes,
    /// Set when the function ran (successfully or not): where its outcome goes.
    delivery: Option<Delivery>,
    /// The run's queue place and slot, held until its outcome is sent, so
    /// that the load report their release wakes follows the answer.
    ticket: Option<Ticket>,
    /// The run's log, published once the answer left.
    log: Option<RunLog>,
}

/// Where the outcome of a run goes besides the dispatcher.
struct Delivery {
    function: String,
    reply_to: Option<String>,
    /// Where the dispatcher wants its notice, batched (an inbox).
    notices_to: Option<String>,
}

impl Delivery {
    fn of(invocation: &Invocation) -> Self {
        Self {
            function: invocation.function.clone(),
            reply_to: invocation.reply_to.clone(),
            notices_to: invocation
                .notices_to
                .clone()
                .filter(|to| is_reply_subject(to)),
        }
    }
}

impl Worker {
    /// Answers every invocation until `shutdown`, then refuses work already
    /// delivered and waits for runs under way.
    pub async fn serve(self, mut work: async_nats::Subscriber, shutdown: CancellationToken) {
        let worker = Arc::new(self);
        let mut runs = Tasks::new("invocation");
        while let Some(Some(message)) = shutdown.run_until_cancelled(work.next()).await {
            runs.spawn(worker.clone().handle(message));
        }
        // Work already delivered to us is refused, so dispatchers place it
        // elsewhere instead of waiting for a node that is going.
        let _ = work.unsubscribe().await;
        while let Ok(Some(message)) = tokio::time::timeout(DRAIN, work.next()).await {
            if let Some(reply_to) = message.reply.filter(|r| is_reply_subject(r)) {
                let refusal = worker.refuse(
                    "",
                    InvocationError::unavailable(format!(
                        "node {} is shutting down",
                        worker.config.node
                    )),
                );
                publish(&worker.client, reply_to, refusal.headers, refusal.body).await;
            }
        }
        runs.wait().await;
    }

    async fn handle(self: Arc<Self>, message: async_nats::Message) {
        let Some(work_reply) = message.reply.clone() else {
            tracing::warn!(subject = %message.subject, "work message without a reply subject dropped");
            return;
        };
        // Whoever sent it chose the reply subject: answering anything but an
        // inbox would publish there with this node's identity (purge a
        // stream, write a bucket, forge a result).
        if !is_reply_subject(&work_reply) {
            tracing::warn!(subject = %message.subject, reply = %work_reply,
                "work message whose reply subject is not an inbox dropped");
            return;
        }
        let started = Instant::now();
        let (function, mut reply) = self.answer(&message.payload).await;
        self.observe
            .answered(&function, &reply.headers, started.elapsed());
        let _held = reply.ticket.take();
        let log = reply.log.take();
        self.answer_and_deliver(work_reply, reply).await;
        // Only now: logs never delay an answer.
        if let (Some(queue), Some(log)) = (&self.logs, log) {
            queue.send(log);
        }
    }

    /// Sends `reply` where it goes: to the requester, the result subject
    /// and a notice to the dispatcher, or to the dispatcher alone.
    async fn answer_and_deliver(&self, work_reply: async_nats::Subject, reply: Reply) {
        let client = &self.client;
        // A refusal, or no requester to answer directly: the work request's
        // sender gets the reply (and may try another node after a refusal).
        let Some(Delivery {
            function,
            reply_to: Some(reply_to),
            notices_to,
        }) = reply.delivery
        else {
            publish(client, work_reply, reply.headers, reply.body).await;
            return;
        };
        // The outcome of a run goes straight to the requester, saving the
        // dispatcher a relay; a failure (or, when configured, every outcome)
        // to the result subject; then a headers-only notice tells the
        // dispatcher it is done. A successful answer is not published: its
        // requester has it, and writing every call into `COMFAAS_RESULTS`
        // cost the server a stored message per call that nothing read.
        // On the result subject an error says its code and why, not the
        // run's stderr: that subject is read by observers and MQTT devices.
        let error_body = reply::result_error_body(&reply.headers);
        let published = error_body.is_some() || self.config.publish_request_results;
        // What goes out besides the reply is made from its headers before
        // they leave with it (no copy of them for what is not sent).
        let result_headers = published.then(|| reply::for_result(&reply.headers, &function));
        let notice = match notices_to {
            Some(to) => Ok((to, notices::replied(work_reply.to_string(), &reply.headers))),
            None => Err(reply::notice(&reply.headers)),
        };
        publish(client, reply_to.into(), reply.headers, reply.body.clone()).await;
        if let Some(result_headers) = result_headers {
            let result = self.config.nats.subjects().result(&function);
            let result_body = error_body.unwrap_or(reply.body);
            publish(client, result.into(), result_headers, result_body).await;
        }
        match notice {
            Ok((to, notice)) => self.notices.send(to, notice).await,
            Err(notice) => publish(client, work_reply, notice, Bytes::new()).await,
        }
    }

    /// The reply to one work message, with the function it named (empty
    /// when it did not decode).
    async fn answer(&self, payload: &[u8]) -> (String, Reply) {
        let invocation: Invocation = match decode(payload) {
            Ok(invocation) => invocation,
            Err(e) => {
                let node = &self.config.node;
                let refusal = self.refuse(
                    "",
                    InvocationError::bad_request(format!(
                        "node {node} got an invalid invocation: {e}"
                    )),
                );
                return (String::new(), refusal);
            }
        };
        let reply = if invocation.event && !invocation.id.is_empty() {
            self.answer_event(&invocation).await
        } else {
            match self.admit_and_run(&invocation).await {
                Ok(reply) => reply,
                Err(refusal) => self.refuse(&invocation.id, refusal),
            }
        };
        (invocation.function, reply)
    }

    /// An event runs once here however often it is delivered: a delivery
    /// while it runs waits for that run, one after it gets its outcome.
    async fn answer_event(&self, invocation: &Invocation) -> Reply {
        loop {
            let outcome = match self.recent.claim(&invocation.id) {
                Claim::Done(outcome) => outcome,
                Claim::Running(run) => match outcome_of(run).await {
                    Some(outcome) => outcome,
                    // The first delivery was refused before it ran.
                    None => continue,
                },
                Claim::Fresh(guard) => {
                    return match self.admit_and_run(invocation).await {
                        Ok(reply) => {
                            guard.finish(Outcome {
                                headers: reply.headers.clone(),
                                body: reply.body.clone(),
                            });
                            reply
                        }
                        Err(refusal) => self.refuse(&invocation.id, refusal),
                    };
                }
            };
            tracing::info!(invocation = %invocation.id, "redelivered event answered from its run");
            return Reply {
                headers: outcome.headers,
                body: outcome.body,
                delivery: Some(Delivery::of(invocation)),
                ticket: None,
                log: None,
            };
        }
    }

    /// Runs `invocation` if it can run here and now; an `Err` is a refusal.
    async fn admit_and_run(&self, invocation: &Invocation) -> Result<Reply, InvocationError> {
        let node = &self.config.node;
        let (id, function) = (invocation.id.as_str(), invocation.function.as_str());
        if let Some(reply_to) = invocation.reply_to.as_deref() {
            if !is_reply_subject(reply_to) {
                tracing::warn!(invocation = id, reply_to, "reply_to is not an inbox");
                return Err(InvocationError::bad_request(format!(
                    "node {node} refuses invocation {id}: its reply_to `{reply_to}` is not an inbox (`_INBOX.…`)"
                )));
            }
        }
        validate_function_name(function).map_err(|e| InvocationError::bad_request(e.0))?;
        let served = self.lookup(function)?;
        // The dispatcher fits the count to this node; else the manifest's,
        // a range fitted here (its fewest when even that does not fit).
        let max_procs = self.config.max_procs();
        let procs = invocation
            .procs
            .unwrap_or_else(|| job_procs(None, served.procs).fit_or_fewest(max_procs));
        if procs > max_procs {
            return Err(InvocationError::unavailable(format!(
                "node {node} allows at most {max_procs} processes per job, {procs} asked"
            )));
        }
        let Some(ticket) = self.admission.try_admit() else {
            let (running, queued) = self.admission.counts();
            return Err(InvocationError::busy(format!(
                "node {node} is full: {running} running and {queued} queued"
            )));
        };
        let requested = invocation.timeout_ms.map(Duration::from_millis);
        let timeout = self.limits.timeout(requested, served.timeout);
        let queued = Instant::now();
        let ticket = start_in_time(ticket, invocation.deadline_unix_ms, timeout)
            .await
            .ok_or_else(|| {
                InvocationError::node_timeout(format!(
                    "invocation could not start on node {node} in time to finish before its deadline"
                ))
            })?;

        let job = Job {
            invocation,
            served: &served,
            procs,
            timeout,
        };
        let queue = queued.elapsed();
        let ran = self.runner.run(job).await?;
        self.observe.ran(function, queue, ran.fetch, ran.duration);
        let mut meta = self.meta(id);
        meta.duration_ms = Some(ran.duration.as_millis() as u64);
        meta.queue_ms = Some(queue.as_millis() as u64);
        meta.fetch_ms = Some(ran.fetch.as_millis() as u64);
        // A run that wrote nothing has no log to publish.
        let log = (self.logs.is_some() && !ran.stderr.is_empty()).then(|| RunLog {
            function: function.to_owned(),
            version: served.version.clone(),
            invocation_id: id.to_owned(),
            event_id: invocation.event.then(|| id.to_owned()),
            text: ran.stderr.log(self.runner.log_bytes),
        });
        let (headers, body) = match ran.output {
            Ok(output) => {
                let mut headers = reply::ok(&meta);
                if output.stored {
                    reply::set_output_object(&mut headers, id);
                }
                (headers, output.body)
            }
            Err(failure) => {
                tracing::info!(invocation = id, code = failure.code.as_u16(), "{failure}");
                // The whole end of stderr, with its newlines: a traceback
                // reads as Python printed it.
                let detail =
                    Bytes::from(ran.stderr.tail_text(comfaas_runtime::capture::TAIL_BYTES));
                (reply::error(&failure, &meta), detail)
            }
        };
        Ok(Reply {
            headers,
            body,
            delivery: Some(Delivery::of(invocation)),
            ticket: Some(ticket),
            log,
        })
    }

    /// The version serving `function`, or why there is none.
    fn lookup(&self, function: &str) -> Result<Arc<Served>, InvocationError> {
        let node = &self.config.node;
        match self.table.lookup(function) {
            Lookup::Ready(served) => Ok(served),
            Lookup::NotReady(why) => Err(InvocationError::unavailable(format!(
                "function `{function}` cannot run on node {node}: {why}"
            ))),
            Lookup::Unknown => Err(InvocationError::not_found(format!(
                "function `{function}` is not deployed on node {node}"
            ))),
        }
    }

    fn meta(&self, invocation_id: &str) -> ReplyMeta {
        ReplyMeta {
            invocation_id: invocation_id.to_owned(),
            node: Some(self.config.node.clone()),
            tier: Some(self.config.tier),
            ..ReplyMeta::default()
        }
    }

    /// A refusal before any run: for the dispatcher only.
    fn refuse(&self, id: &str, refusal: InvocationError) -> Reply {
        tracing::info!(invocation = id, code = refusal.code.as_u16(), "{refusal}");
        Reply {
            headers: reply::error(&refusal, &self.meta(id)),
            body: Bytes::new(),
            delivery: None,
            ticket: None,
            log: None,
        }
    }
}

/// Waits for a slot, but only while a full run of `timeout` still ends
/// before the deadline: past it the dispatcher has answered 504 and nobody
/// wants this result. `None` when that time passed (or the slots closed).
async fn start_in_time(
    ticket: Ticket,
    deadline_unix_ms: Option<u64>,
    timeout: Duration,
) -> Option<Ticket> {
    let wait = deadline_unix_ms.map(|deadline| {
        Duration::from_millis(deadline.saturating_sub(now_unix_ms())).saturating_sub(timeout)
    });
    match wait {
        Some(wait) => tokio::time::timeout(wait, ticket.slot())
            .await
            .ok()
            .flatten(),
        None => ticket.slot().await,
    }
}

async fn publish(
    client: &async_nats::Client,
    subject: async_nats::Subject,
    headers: HeaderMap,
    body: Bytes,
) {
    if let Err(e) = client
        .publish_with_headers(subject.clone(), headers, body)
        .await
    {
        tracing::warn!("cannot publish to {subject}: {e}");
    }
}
