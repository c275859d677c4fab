//! `comfaas invoke FN`: one request/reply through the dispatcher.

use std::time::Duration;

use anyhow::Context as _;
use async_nats::HeaderMap;
use bytes::Bytes;
use comfaas_platform::reply::{self, Outcome};
use comfaas_schemas::names::{headers as h, Subjects};

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

/// Writes a reply's output to `output_file` (or stdout): the body, or the
/// object named by `Comfaas-Output-Object`, streamed from the object store.
/// Headers go to stderr with `verbose`. An error reply is returned as an
/// error, so the exit code tells.
pub async fn print_reply(
    js: &async_nats::jetstream::Context,
    message: &async_nats::Message,
    verbose: bool,
    output_file: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    if verbose {
        if let Some(headers) = &message.headers {
            let mut lines: Vec<String> = headers
                .iter()
                .flat_map(|(k, vs)| vs.iter().map(move |v| format!("{k}: {}", v.as_str())))
                .collect();
            lines.sort();
            for line in lines {
                eprintln!("{line}");
            }
        }
    }
    match reply::outcome(message.headers.as_ref()) {
        Outcome::Ok => {
            use tokio::io::AsyncWriteExt;
            let object = message
                .headers
                .as_ref()
                .and_then(|hm| reply::get(hm, h::OUTPUT_OBJECT));
            let mut out: Box<dyn tokio::io::AsyncWrite + Unpin> = match output_file {
                Some(path) => Box::new(
                    tokio::fs::File::create(path)
                        .await
                        .with_context(|| format!("cannot write {}", path.display()))?,
                ),
                None => Box::new(tokio::io::stdout()),
            };
            match object {
                Some(name) => {
                    let store = comfaas_platform::resources::outputs_store(js).await?;
                    let mut reader = store
                        .get(&name)
                        .await
                        .with_context(|| format!("fetch output object {name}"))?;
                    tokio::io::copy(&mut reader, &mut out)
                        .await
                        .with_context(|| format!("read output object {name}"))?;
                }
                None => {
                    out.write_all(&message.payload).await?;
                    if output_file.is_none() && !message.payload.ends_with(b"\n") {
                        out.write_all(b"\n").await?;
                    }
                }
            }
            out.flush().await?;
            Ok(())
        }
        Outcome::Error {
            raw_code,
            message: summary,
            ..
        } => {
            // A failed run's body is the end of its stderr (a traceback),
            // printed as written, before the one-line summary.
            let detail = String::from_utf8_lossy(&message.payload);
            if !detail.trim().is_empty() {
                eprintln!("{}", detail.trim_end());
            }
            anyhow::bail!("error {raw_code}: {summary}")
        }
        Outcome::Unknown => anyhow::bail!("the reply carries no {} header", h::STATUS),
    }
}
