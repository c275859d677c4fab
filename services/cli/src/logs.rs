//! `comfaas logs FN [-f] [--id ID] [--node N] [--since 10m]`: what a
//! function's runs wrote to stderr, from `COMFAAS_LOGS`, one line each as
//! `time node id | line`.

use std::io::Write as _;
use std::time::Duration;

use comfaas_platform::logs::{LogFilter, LogReader, LogRecord};
use comfaas_schemas::names::Subjects;

/// What `comfaas logs` was asked for.
#[derive(Debug, Clone, Default)]
pub struct LogsOptions {
    /// Which logs.
    pub filter: LogFilter,
    /// Keep waiting for new ones.
    pub follow: bool,
}

/// Prints the logs `options` select to stdout; a function without any
/// (never ran, or not deployed) is said so on stderr, and an error when it
/// is not deployed either.
pub async fn run(
    js: &async_nats::jetstream::Context,
    subjects: &Subjects,
    options: LogsOptions,
) -> anyhow::Result<()> {
    let function = options.filter.function.clone();
    let mut reader = LogReader::open(js, subjects, options.filter.clone()).await?;
    let mut printed = 0usize;
    let mut stdout = std::io::stdout().lock();
    while let Some(record) = reader.next(options.follow).await? {
        // A closed pipe (`| head`) ends the listing quietly: `main` knows
        // the error (`output::is_broken_pipe`).
        for line in lines(&record) {
            writeln!(stdout, "{line}")?;
        }
        if options.follow {
            stdout.flush()?;
        }
        printed += 1;
    }
    if printed > 0 {
        return Ok(());
    }
    if !deployed(js, &function).await {
        anyhow::bail!("no logs of `{function}`: no function `{function}` is deployed");
    }
    let mut what = format!("no logs of `{function}`");
    if let Some(id) = &options.filter.invocation_id {
        what.push_str(&format!(" for invocation {id}"));
    }
    if let Some(node) = &options.filter.node {
        what.push_str(&format!(" on node {node}"));
    }
    if let Some(since) = options.filter.since {
        what.push_str(&format!(
            " in the last {}",
            humantime::format_duration(since)
        ));
    }
    eprintln!("{what} (its runs wrote nothing to stderr, or the logs expired)");
    Ok(())
}

/// Whether `function` is in the registry; `true` when that cannot be told
/// (an observer may not read the registry): then only "no logs" is said.
async fn deployed(js: &async_nats::jetstream::Context, function: &str) -> bool {
    // Read, never create: opening the registry would make an empty one on
    // a site that has none.
    let lookup = async {
        let functions = match js
            .get_key_value(comfaas_schemas::names::FUNCTIONS_BUCKET)
            .await
        {
            Ok(functions) => functions,
            // No registry on this site: nothing is deployed here.
            Err(e)
                if comfaas_platform::resources::jetstream_code(&e)
                    == Some(async_nats::jetstream::ErrorCode::STREAM_NOT_FOUND) =>
            {
                return Some(None);
            }
            Err(_) => return None,
        };
        functions.get(function).await.ok()
    };
    match tokio::time::timeout(Duration::from_secs(5), lookup).await {
        Ok(Some(found)) => found.is_some(),
        _ => true,
    }
}

/// `record` as printed lines: `time node id | line`.
pub fn lines(record: &LogRecord) -> Vec<String> {
    let time = humantime::format_rfc3339_millis(record.time);
    String::from_utf8_lossy(&record.text)
        .lines()
        .map(|line| format!("{time} {} {} | {line}", record.node, record.invocation_id))
        .collect()
}

/// Lines of a failed run's stderr `comfaas dev` prints.
const FAILED_RUN_LINES: usize = 12;

/// How long [`print_failed_runs`] waits for a failed run's log: the node
/// publishes it just after its reply.
const FAILED_RUN_LOG_WAIT: Duration = Duration::from_secs(3);

/// Prints each failed run on `subjects`' result subjects until `shutdown`
/// (`comfaas dev`): function, invocation id, node, code, the one-line
/// error, and the first lines of its stderr, read from its log (the result
/// subject carries no stderr: observers and MQTT devices read it).
pub async fn print_failed_runs(
    client: async_nats::Client,
    js: async_nats::jetstream::Context,
    subjects: Subjects,
    shutdown: tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    use futures::StreamExt as _;
    let mut results = client.subscribe(subjects.result_all()).await?;
    while let Some(Some(result)) = shutdown.run_until_cancelled(results.next()).await {
        let Some(failed) = FailedRun::of(&result) else {
            continue;
        };
        let stderr = run_log(&js, &subjects, &failed).await;
        eprint!("{}", failed.text(stderr.as_deref()));
    }
    Ok(())
}

/// The stderr a failed run logged, when its log arrives in time.
async fn run_log(
    js: &async_nats::jetstream::Context,
    subjects: &Subjects,
    failed: &FailedRun,
) -> Option<String> {
    // No node ran it (refused before placement): there is no log to wait for.
    if failed.node.is_empty() {
        return None;
    }
    let filter = LogFilter {
        function: failed.function.clone(),
        node: Some(failed.node.clone()),
        invocation_id: Some(failed.id.clone()),
        since: Some(Duration::from_secs(600)),
    };
    let deadline = tokio::time::Instant::now() + FAILED_RUN_LOG_WAIT;
    let mut reader = LogReader::open(js, subjects, filter).await.ok()?;
    // The first record as it arrives (the node publishes after replying),
    // then whatever else of it the stream already holds.
    let first = tokio::time::timeout_at(deadline, reader.next(true))
        .await
        .ok()?
        .ok()??;
    let mut text = String::from_utf8_lossy(&first.text).into_owned();
    while let Ok(Some(record)) = reader.next(false).await {
        text.push_str(&String::from_utf8_lossy(&record.text));
    }
    Some(text)
}

/// A failed run, as its result on the result subject names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedRun {
    /// Function name.
    pub function: String,
    /// Invocation id.
    pub id: String,
    /// The node that ran it (empty when none did).
    pub node: String,
    /// The error code.
    pub code: String,
    /// The one-line error.
    pub message: String,
}

impl FailedRun {
    /// The failed run `result` reports; `None` when it succeeded.
    pub fn of(result: &async_nats::Message) -> Option<Self> {
        use comfaas_platform::reply::{self, Outcome};
        use comfaas_schemas::names::headers as h;
        let headers = result.headers.as_ref()?;
        let Outcome::Error {
            raw_code, message, ..
        } = reply::outcome(Some(headers))
        else {
            return None;
        };
        let get = |name| reply::get(headers, name).unwrap_or_default();
        Some(Self {
            function: get(h::FUNCTION),
            id: get(h::INVOCATION_ID),
            node: get(h::NODE),
            code: raw_code,
            message,
        })
    }

    /// What [`print_failed_runs`] prints: names, code, the one-line error
    /// and the first lines of `stderr`.
    pub fn text(&self, stderr: Option<&str>) -> String {
        let Self {
            function,
            id,
            node,
            code,
            message,
        } = self;
        let mut text = format!("failed: {function} {id} on {node} ({code}): {message}\n");
        let lines: Vec<&str> = stderr.unwrap_or_default().lines().collect();
        for line in lines.iter().take(FAILED_RUN_LINES) {
            text.push_str(&format!("  | {line}\n"));
        }
        if lines.len() > FAILED_RUN_LINES {
            text.push_str(&format!(
                "  | … {} more lines: comfaas logs {function} --id {id}\n",
                lines.len() - FAILED_RUN_LINES
            ));
        }
        text
    }
}
