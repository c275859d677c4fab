//! `comfaas decisions [-f] [--json]`: the dispatchers' latest placement
//! decisions, read from their metrics reports (`<prefix>.dispatch.<id>.metrics`,
//! MessagePack [`DispatchMetrics`]), as a table: when, the function, the
//! node chosen and why, and every candidate's estimate in its parts.
//!
//! A report carries the last decisions of one dispatcher (a sliding
//! window), so a decision is new when the previous report of the same
//! dispatcher did not have it; that is how `-f` prints each one once
//! without remembering more than a window per dispatcher.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::io::Write as _;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use comfaas_schemas::names::Subjects;
use comfaas_schemas::{decode, DispatchMetrics, PlacementRecord};
use futures::StreamExt;
use serde::Serialize;

/// How long a one-shot listing listens: more than one report period
/// (1 s by default), so every dispatcher is heard from.
pub const LISTEN: Duration = Duration::from_millis(2500);

/// One decision and the dispatcher that made it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Decision {
    /// The dispatcher's id.
    pub dispatcher: String,
    /// What it decided.
    #[serde(flatten)]
    pub record: PlacementRecord,
}

/// How decisions are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Aligned text, a block per decision.
    Table,
    /// One JSON object per line.
    Json,
}

/// Prints the decisions the dispatchers report within [`LISTEN`], oldest
/// first; with `follow`, then every new one as it is reported, until
/// the connection ends.
pub async fn run(
    client: &async_nats::Client,
    subjects: &Subjects,
    follow: bool,
    format: Format,
) -> anyhow::Result<()> {
    let mut reports = client.subscribe(subjects.dispatch_metrics_all()).await?;
    let mut seen: BTreeMap<String, HashSet<String>> = BTreeMap::new();
    let deadline = Instant::now() + LISTEN;
    let mut first = Vec::new();
    while let Ok(Some(message)) = tokio::time::timeout_at(deadline.into(), reports.next()).await {
        if let Ok(report) = decode::<DispatchMetrics>(&message.payload) {
            first.extend(fresh(&mut seen, report));
        }
    }
    first.sort_by_key(|d| d.record.unix_ms.unwrap_or(0));
    if first.is_empty() && format == Format::Table {
        let heard = if seen.is_empty() {
            "no dispatcher reported"
        } else {
            "no decision yet"
        };
        println!(
            "{heard} (listened {:.1} s on {})",
            LISTEN.as_secs_f64(),
            subjects.dispatch_metrics_all()
        );
    }
    print(&first, format)?;
    if !follow {
        return Ok(());
    }
    while let Some(message) = reports.next().await {
        if let Ok(report) = decode::<DispatchMetrics>(&message.payload) {
            print(&fresh(&mut seen, report), format)?;
        }
    }
    Ok(())
}

/// The decisions in `report` its dispatcher's previous report did not
/// have; `seen` keeps each dispatcher's last report.
fn fresh(seen: &mut BTreeMap<String, HashSet<String>>, report: DispatchMetrics) -> Vec<Decision> {
    let key = |r: &PlacementRecord| format!("{}/{}/{:?}", r.invocation, r.node, r.unix_ms);
    let now: HashSet<String> = report.recent.iter().map(key).collect();
    let before = seen
        .insert(report.dispatcher.clone(), now)
        .unwrap_or_default();
    report
        .recent
        .into_iter()
        .filter(|r| !before.contains(&key(r)))
        .map(|record| Decision {
            dispatcher: report.dispatcher.clone(),
            record,
        })
        .collect()
}

fn print(decisions: &[Decision], format: Format) -> anyhow::Result<()> {
    if decisions.is_empty() {
        return Ok(());
    }
    let text = match format {
        Format::Table => table(decisions),
        Format::Json => {
            let mut lines = String::new();
            for decision in decisions {
                lines.push_str(&serde_json::to_string(decision)?);
                lines.push('\n');
            }
            lines
        }
    };
    // A closed pipe (`| head`) ends the listing quietly: `main` knows the
    // error (`output::is_broken_pipe`).
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()?;
    Ok(())
}

/// Decisions as aligned text: a line for the decision, then one per
/// candidate (the chosen one marked `*`) with its estimate's parts, then
/// the reason.
pub fn table(decisions: &[Decision]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<12}  {:<16} {:<14} {:>5} {:>9} {:>8}  {:<32} DISPATCHER",
        "TIME", "FUNCTION", "CHOSEN", "PROCS", "EST_MS", "TOOK_MS", "INVOCATION"
    );
    for Decision { dispatcher, record } in decisions {
        let _ = writeln!(
            out,
            "{:<12}  {:<16} {:<14} {:>5} {:>9} {:>8}  {:<32} {dispatcher}",
            record.unix_ms.map_or_else(|| "-".to_owned(), clock),
            record.function,
            record.node,
            record
                .procs
                .map_or_else(|| "-".to_owned(), |p| p.to_string()),
            record
                .estimate_ms
                .map_or_else(|| "-".to_owned(), |e| format!("{e:.1}")),
            record
                .took_ms
                .map_or_else(|| "-".to_owned(), |t| t.to_string()),
            record.invocation,
        );
        for candidate in &record.candidates {
            let mark = if candidate.node == record.node {
                '*'
            } else {
                ' '
            };
            let parts = candidate.parts.map_or_else(String::new, |p| {
                format!(
                    " = wait {:.1} + contention {:.1} + transfer {:.1} + rtt {:.1} + run {:.1}",
                    p.wait_ms, p.contention_ms, p.transfer_ms, p.rtt_ms, p.run_ms
                )
            });
            let _ = writeln!(
                out,
                "  {mark} {:<14} {:>9.1} ms{parts}",
                candidate.node, candidate.estimate_ms
            );
        }
        let _ = writeln!(out, "    why: {}", record.reason);
    }
    out
}

/// The UTC time of day of `unix_ms`: `HH:MM:SS.mmm`.
fn clock(unix_ms: u64) -> String {
    let time = UNIX_EPOCH + Duration::from_millis(unix_ms);
    let stamp = humantime::format_rfc3339_millis(time.min(SystemTime::UNIX_EPOCH + MAX_TIME));
    // `YYYY-MM-DDTHH:MM:SS.mmmZ`: the part between `T` and `Z`.
    let stamp = stamp.to_string();
    stamp
        .split_once('T')
        .map(|(_, t)| t.trim_end_matches('Z').to_owned())
        .unwrap_or(stamp)
}

/// The latest time humantime formats (year 9999).
const MAX_TIME: Duration = Duration::from_secs(253_402_300_799);

#[cfg(test)]
mod tests {
    use comfaas_schemas::{CandidateEstimate, EstimateParts};

    use super::*;

    fn record(invocation: &str, unix_ms: u64) -> PlacementRecord {
        PlacementRecord {
            invocation: invocation.into(),
            function: "hello".into(),
            node: "edge-1".into(),
            procs: Some(1),
            reason: "estimated 2.0 ms".into(),
            took_ms: Some(3),
            estimate_ms: Some(2.0),
            candidates: vec![
                CandidateEstimate {
                    node: "edge-1".into(),
                    estimate_ms: 2.0,
                    parts: Some(EstimateParts {
                        wait_ms: 0.0,
                        contention_ms: 0.0,
                        transfer_ms: 0.0,
                        rtt_ms: 1.0,
                        run_ms: 1.0,
                    }),
                },
                CandidateEstimate {
                    node: "cloud-1".into(),
                    estimate_ms: 30.0,
                    parts: None,
                },
            ],
            unix_ms: Some(unix_ms),
        }
    }

    fn report(records: Vec<PlacementRecord>) -> DispatchMetrics {
        DispatchMetrics {
            schema: 1,
            dispatcher: "d1".into(),
            uptime_s: 0,
            received: 0,
            succeeded: 0,
            failed: 0,
            in_flight: 0,
            errors: Vec::new(),
            nodes: Vec::new(),
            recent: records,
            sent_unix_ms: 0,
            bad_reply_subjects: 0,
            forged_loads: 0,
            dead_lettered: 0,
            dlq_failures: 0,
            attached: 0,
        }
    }

    #[test]
    fn a_decision_is_new_once() {
        let mut seen = BTreeMap::new();
        let a = record("a", 1);
        let b = record("b", 2);
        assert_eq!(fresh(&mut seen, report(vec![a.clone()])).len(), 1);
        let next = fresh(&mut seen, report(vec![a, b]));
        assert_eq!(next.len(), 1);
        assert_eq!(next[0].record.invocation, "b");
    }

    #[test]
    fn the_table_shows_the_choice_and_each_estimates_parts() {
        let decision = Decision {
            dispatcher: "d1".into(),
            record: record("inv-1", 45_296_789),
        };
        let text = table(&[decision]);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[1].starts_with("12:34:56.789  hello"), "{text}");
        assert!(lines[1].contains("inv-1"), "{text}");
        assert!(
            lines[2].starts_with("  * edge-1")
                && lines[2].ends_with(
                    "2.0 ms = wait 0.0 + contention 0.0 + transfer 0.0 + rtt 1.0 + run 1.0"
                ),
            "{text}"
        );
        assert!(
            lines[3].starts_with("    cloud-1") && lines[3].ends_with("30.0 ms"),
            "{text}"
        );
        assert_eq!(lines[4], "    why: estimated 2.0 ms");
    }
}
