//! `comfaas invoke FN`: one request/reply through the dispatcher.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::HeaderMap;
use bytes::Bytes;
use comfaas_platform::objects;
use comfaas_platform::reply::{self, Outcome};
use comfaas_schemas::names::{headers as h, Subjects};
use serde::Serialize;

use crate::{output, transfer};

/// Reads `--data`: text as is, `@FILE` from a file, `@-` from stdin.
pub fn read_data(data: Option<&str>) -> anyhow::Result<Bytes> {
    match data {
        None => Ok(Bytes::new()),
        Some("@-") => {
            let mut buf = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf).context("read stdin")?;
            Ok(buf.into())
        }
        Some(d) => match d.strip_prefix('@') {
            Some(path) => Ok(std::fs::read(path)
                .with_context(|| format!("cannot read {path}"))?
                .into()),
            None => Ok(Bytes::copy_from_slice(d.as_bytes())),
        },
    }
}

/// Request options given on the command line.
#[derive(Debug, Clone, Default)]
pub struct InvokeOptions {
    /// `Comfaas-Timeout`.
    pub timeout: Option<String>,
    /// `Comfaas-Placement`.
    pub placement: Option<String>,
    /// `Comfaas-Procs`.
    pub procs: Option<comfaas_schemas::Procs>,
    /// `Comfaas-Input-Object`.
    pub input_object: Option<String>,
    /// How long to wait for the answer.
    pub wait: Duration,
}

/// Sends one invocation and returns the reply.
pub async fn invoke(
    client: &async_nats::Client,
    subjects: &Subjects,
    function: &str,
    input: Bytes,
    options: &InvokeOptions,
) -> anyhow::Result<async_nats::Message> {
    let mut headers = HeaderMap::new();
    if let Some(t) = &options.timeout {
        headers.insert(h::TIMEOUT, t.as_str());
    }
    if let Some(p) = &options.placement {
        headers.insert(h::PLACEMENT, p.as_str());
    }
    if let Some(n) = options.procs {
        headers.insert(h::PROCS, n.to_string().as_str());
    }
    if let Some(name) = &options.input_object {
        headers.insert(h::INPUT_OBJECT, name.as_str());
    }
    let request = async_nats::Request::new()
        .payload(input)
        .headers(headers)
        .timeout(Some(options.wait));
    client
        .send_request(subjects.invoke(function), request)
        .await
        .map_err(|e| match e.kind() {
            async_nats::client::RequestErrorKind::NoResponders => anyhow::anyhow!(
                "no dispatcher is listening on {} (is comfaas-dispatch running?)",
                subjects.invoke(function)
            ),
            _ => anyhow::anyhow!("invoke {function}: {e}"),
        })
}

/// An invocation's input: bytes in the message, or an object in
/// `comfaas_inputs` named by `Comfaas-Input-Object`.
#[derive(Debug, Clone, Default)]
pub struct Input {
    /// The message body.
    pub body: Bytes,
    /// The object holding the input instead, if uploaded.
    pub object: Option<String>,
    /// Where the input came from, when the object was already stored and
    /// not sent again: [`send_again`] sends it if a node refuses that object.
    pub reused: Option<transfer::Source>,
}

/// Whether `reply` is a node refusing the input object (422): its chunks
/// do not hold what its name and info say, or are damaged.
pub fn input_refused(reply: &async_nats::Message) -> bool {
    matches!(
        reply::outcome(reply.headers.as_ref()),
        Outcome::Error {
            code: Some(comfaas_schemas::ErrorCode::InputInvalid),
            ..
        }
    )
}

/// Sends `input`'s content again, whole, replacing the stored object a
/// node refused although its info named this content (anyone who may put
/// inputs can write such an info over other bytes). Returns whether it
/// did: only an input that was reused is sent again, once.
pub async fn send_again(
    js: &async_nats::jetstream::Context,
    input: &mut Input,
    max_payload: usize,
) -> anyhow::Result<bool> {
    let Some(source) = input.reused.take() else {
        return Ok(false);
    };
    let uploaded = transfer::upload(js, &source, max_payload, objects::Reuse::Never).await?;
    eprintln!(
        "the stored input {} did not hold this content; sent it again ({} bytes)",
        uploaded.name, uploaded.size
    );
    input.object = Some(uploaded.name);
    Ok(true)
}

/// Reads `--data` and `--input-file` into an [`Input`]. `--input-file`
/// always goes through the object store; `--data` does when it would not
/// fit in one message of this server (`max_payload`, learnt from the
/// connection), so a large `--data @file` works as `--input-file` would.
pub async fn input(
    js: &async_nats::jetstream::Context,
    data: Option<&str>,
    input_file: Option<&std::path::Path>,
    max_payload: usize,
    verbose: bool,
) -> anyhow::Result<Input> {
    let source = match (input_file, transfer::data_file(data)) {
        (Some(path), _) => Some(transfer::Source::File(path.to_path_buf())),
        (None, Some(path)) => {
            let len = std::fs::metadata(path)
                .with_context(|| format!("cannot read {}", path.display()))?
                .len();
            transfer::needs_object(usize::try_from(len).unwrap_or(usize::MAX), max_payload)
                .then(|| transfer::Source::File(path.to_path_buf()))
        }
        (None, None) => None,
    };
    let (body, source) = match source {
        Some(source) => (Bytes::new(), source),
        None => {
            let body = read_data(data)?;
            if !transfer::needs_object(body.len(), max_payload) {
                return Ok(Input {
                    body,
                    object: None,
                    reused: None,
                });
            }
            (Bytes::new(), transfer::Source::Bytes(body))
        }
    };
    comfaas_platform::resources::inputs_store(js).await?;
    let uploaded = transfer::upload(js, &source, max_payload, objects::Reuse::IfSame).await?;
    if verbose {
        eprintln!(
            "input {} ({} bytes, {})",
            uploaded.name,
            uploaded.size,
            if uploaded.reused {
                "already stored"
            } else {
                "uploaded"
            }
        );
    }
    Ok(Input {
        body,
        object: Some(uploaded.name),
        reused: uploaded.reused.then_some(source),
    })
}

/// How [`print_reply`] shows a reply.
#[derive(Debug, Clone, Default)]
pub struct PrintOptions<'a> {
    /// Print the reply headers on stderr.
    pub verbose: bool,
    /// Write the output to this file instead of stdout.
    pub output_file: Option<&'a std::path::Path>,
    /// Print one [`InvokeReport`] instead of the bare output.
    pub json: bool,
}

/// What `comfaas invoke --json` prints.
#[derive(Debug, Default, Serialize)]
pub struct InvokeReport {
    /// `ok` or `error`.
    pub status: String,
    /// `Comfaas-Invocation-Id`.
    pub invocation_id: Option<String>,
    /// The node that ran it (`Comfaas-Node`).
    pub node: Option<String>,
    /// Its tier (`Comfaas-Tier`).
    pub tier: Option<String>,
    /// The run's duration (`Comfaas-Duration-Ms`).
    pub duration_ms: Option<f64>,
    /// Every reply header (the last value of each).
    pub headers: BTreeMap<String, String>,
    /// The output, when it is UTF-8 (and not written to a file).
    pub output: Option<String>,
    /// The output in base64, when it is not UTF-8.
    pub output_base64: Option<String>,
    /// The output's size in bytes.
    pub output_bytes: u64,
    /// The object in `comfaas_outputs` it came from, if it was large.
    pub output_object: Option<String>,
    /// The file it was written to (`--output-file`).
    pub output_file: Option<String>,
    /// The error of an error reply.
    pub error: Option<ReplyError>,
}

/// The error of an error reply in an [`InvokeReport`].
#[derive(Debug, Serialize)]
pub struct ReplyError {
    /// `Nats-Service-Error-Code` (`404`, `500`, `503`, …).
    pub code: String,
    /// `Nats-Service-Error`.
    pub message: String,
    /// The reply's body: for a failed run, the end of its stderr (a
    /// traceback, newlines kept).
    pub detail: Option<String>,
}

/// Writes a reply's output to `output_file` (or stdout): the body, or the
/// object named by `Comfaas-Output-Object`, streamed from the object store.
/// Headers go to stderr with `verbose`; with `json`, one [`InvokeReport`]
/// goes to stdout instead. An error reply is returned as an error, so the
/// exit code tells.
pub async fn print_reply(
    js: &async_nats::jetstream::Context,
    message: &async_nats::Message,
    options: &PrintOptions<'_>,
) -> anyhow::Result<()> {
    let headers: BTreeMap<String, String> = message
        .headers
        .iter()
        .flat_map(|hm| hm.iter())
        .filter_map(|(k, vs)| Some((k.to_string(), vs.last()?.as_str().to_owned())))
        .collect();
    if options.verbose {
        if let Some(hm) = &message.headers {
            let mut lines: Vec<String> = hm
                .iter()
                .flat_map(|(k, vs)| vs.iter().map(move |v| format!("{k}: {}", v.as_str())))
                .collect();
            lines.sort();
            for line in lines {
                eprintln!("{line}");
            }
        }
    }
    let header = |name: &str| headers.get(name).cloned();
    let mut report = InvokeReport {
        status: header(h::STATUS).unwrap_or_default(),
        invocation_id: header(h::INVOCATION_ID),
        node: header(h::NODE),
        tier: header(h::TIER),
        duration_ms: header(h::DURATION_MS).and_then(|ms| ms.parse().ok()),
        output_object: header(h::OUTPUT_OBJECT),
        output_file: options.output_file.map(|p| p.display().to_string()),
        ..InvokeReport::default()
    };
    let failure = match reply::outcome(message.headers.as_ref()) {
        Outcome::Ok => None,
        Outcome::Error {
            raw_code,
            message: summary,
            ..
        } => {
            // A failed run's body is the end of its stderr (a traceback),
            // printed as written, before the one-line summary.
            let detail = String::from_utf8_lossy(&message.payload);
            let detail = detail.trim_end();
            if !options.json && !detail.trim().is_empty() {
                eprintln!("{detail}");
            }
            report.error = Some(ReplyError {
                code: raw_code.clone(),
                message: summary.clone(),
                detail: (!detail.trim().is_empty()).then(|| detail.to_owned()),
            });
            Some(anyhow::anyhow!("error {raw_code}: {summary}"))
        }
        Outcome::Unknown => Some(anyhow::anyhow!("the reply carries no {} header", h::STATUS)),
    };
    if failure.is_none() {
        report.output_bytes = write_output(js, message, &mut report, options).await?;
    }
    if options.json {
        report.headers = headers;
        output::json(&report)?;
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Writes the output of an `ok` reply where [`print_reply`] sends it: the
/// file, stdout, or (with `json` and no file) into `report`. Returns its
/// size.
async fn write_output(
    js: &async_nats::jetstream::Context,
    message: &async_nats::Message,
    report: &mut InvokeReport,
    options: &PrintOptions<'_>,
) -> anyhow::Result<u64> {
    use tokio::io::AsyncWriteExt;
    let into_report = options.json && options.output_file.is_none();
    let mut out: Box<dyn tokio::io::AsyncWrite + Unpin + Send> = match options.output_file {
        Some(path) => Box::new(
            tokio::fs::File::create(path)
                .await
                .with_context(|| format!("cannot write {}", path.display()))?,
        ),
        None if into_report => Box::new(Vec::<u8>::new()),
        None => Box::new(tokio::io::stdout()),
    };
    let (size, kept) = match &report.output_object {
        Some(name) => {
            let store = comfaas_platform::resources::outputs_store(js).await?;
            if into_report {
                let mut kept = Vec::new();
                let size = transfer::download(&store, name, &mut kept).await?;
                (size, kept)
            } else {
                (
                    transfer::download(&store, name, out.as_mut()).await?,
                    Vec::new(),
                )
            }
        }
        None if into_report => (message.payload.len() as u64, message.payload.to_vec()),
        None => {
            out.write_all(&message.payload).await?;
            if options.output_file.is_none() && !message.payload.ends_with(b"\n") {
                out.write_all(b"\n").await?;
            }
            (message.payload.len() as u64, Vec::new())
        }
    };
    out.flush().await?;
    if into_report {
        match String::from_utf8(kept) {
            Ok(text) => report.output = Some(text),
            Err(e) => {
                report.output_base64 = Some(data_encoding::BASE64.encode(e.as_bytes()));
            }
        }
    }
    Ok(size)
}
