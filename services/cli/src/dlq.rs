//! `comfaas dlq ls [FN]`, `show ID`, `replay [FN|ID]`, `purge [FN]`: the
//! dead-letter queue (`COMFAAS_DLQ`), where an event goes when it ended
//! without a successful run: why, how many tries, which nodes, when.

use comfaas_platform::dlq::{DeadLetter, Dlq};
use comfaas_schemas::names::headers as h;

/// What `replay` and `purge` act on.
pub enum Target {
    /// Every dead letter.
    All,
    /// The dead letters of one function.
    Function(String),
    /// One dead letter, by its sequence.
    One(u64),
}

impl Target {
    /// `ID` (a number), `FN`, or nothing.
    pub fn parse(arg: Option<&str>) -> Self {
        match arg {
            None => Self::All,
            Some(a) => match a.parse() {
                Ok(seq) => Self::One(seq),
                Err(_) => Self::Function(a.to_owned()),
            },
        }
    }
}

/// `comfaas dlq ls [FN]`: one line a dead letter.
pub async fn ls(dlq: &mut Dlq, function: Option<&str>, limit: usize) -> anyhow::Result<()> {
    let letters = dlq.list(function, limit).await?;
    if letters.is_empty() {
        println!("no dead letters");
        return Ok(());
    }
    let mut table = crate::output::table(["ID", "FUNCTION", "CODE", "TRIES", "WHEN", "REASON"], 5);
    for letter in &letters {
        table.add_row([
            letter.seq.to_string(),
            letter.function.clone(),
            letter.header(h::DLQ_CODE).to_owned(),
            letter.header(h::DLQ_DELIVERIES).to_owned(),
            when(letter.header(h::DLQ_AT)),
            one_line(letter.header(h::DLQ_REASON), 100),
        ]);
    }
    crate::output::print_table(&table)?;
    if letters.len() == limit {
        println!("(first {limit}; --limit N for more)");
    }
    Ok(())
}

/// `comfaas dlq show ID`: every header and the payload.
pub async fn show(dlq: &Dlq, seq: u64) -> anyhow::Result<()> {
    let letter = dlq.get(seq).await?;
    print_letter(&letter);
    Ok(())
}

fn print_letter(letter: &DeadLetter) {
    println!("dead letter {} of function {}", letter.seq, letter.function);
    let mut headers: Vec<(String, String)> = letter
        .headers
        .iter()
        .flat_map(|(name, values)| {
            values
                .iter()
                .map(move |v| (name.to_string(), v.as_str().to_owned()))
        })
        .collect();
    headers.sort();
    for (name, value) in headers {
        let value = match name.as_str() {
            h::DLQ_AT | h::DLQ_PUBLISHED => format!("{value} ({})", when(&value)),
            _ => value,
        };
        println!("  {name}: {value}");
    }
    match std::str::from_utf8(&letter.payload) {
        Ok(text) => println!("payload ({} bytes):\n{text}", letter.payload.len()),
        Err(_) => println!("payload: {} bytes of binary data", letter.payload.len()),
    }
}

/// `comfaas dlq replay [FN|ID]`: published again as events, then removed.
pub async fn replay(dlq: &mut Dlq, target: &Target) -> anyhow::Result<()> {
    let seqs: Vec<u64> = match target {
        Target::One(seq) => vec![*seq],
        Target::Function(f) => ids(dlq.list(Some(f), usize::MAX).await?),
        Target::All => ids(dlq.list(None, usize::MAX).await?),
    };
    if seqs.is_empty() {
        println!("no dead letters to replay");
    }
    for seq in seqs {
        let replayed = dlq.replay(seq).await?;
        match replayed.event_seq {
            Some(event) => println!(
                "dead letter {seq} replayed on {} (event {event})",
                replayed.subject
            ),
            None => println!(
                "dead letter {seq} replayed on {}, but the events stream dropped it as a \
                 duplicate of a recent Nats-Msg-Id (try again after the de-duplication window)",
                replayed.subject
            ),
        }
    }
    Ok(())
}

/// `comfaas dlq purge [FN]`.
pub async fn purge(dlq: &Dlq, function: Option<&str>) -> anyhow::Result<()> {
    let purged = dlq.purge(function).await?;
    println!("{purged} dead letters removed");
    Ok(())
}

fn ids(letters: Vec<DeadLetter>) -> Vec<u64> {
    letters.into_iter().map(|l| l.seq).collect()
}

/// Unix milliseconds as `YYYY-MM-DDTHH:MM:SSZ`, or the text as it is.
fn when(unix_ms: &str) -> String {
    match unix_ms.parse::<u64>() {
        Ok(ms) => humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms),
        )
        .to_string(),
        Err(_) => unix_ms.to_owned(),
    }
}

fn one_line(text: &str, max: usize) -> String {
    let line: String = text.replace(['\n', '\r'], " ");
    match line.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &line[..cut]),
        None => line,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_targets_read_as_people_expect() {
        assert_eq!(when("0"), "1970-01-01T00:00:00Z");
        assert_eq!(when("1795000000000"), "2026-11-18T11:06:40Z");
        assert_eq!(when("soon"), "soon");
        assert!(matches!(Target::parse(Some("12")), Target::One(12)));
        assert!(matches!(Target::parse(Some("hello")), Target::Function(f) if f == "hello"));
        assert!(matches!(Target::parse(None), Target::All));
        assert_eq!(one_line("a\nb", 10), "a b");
        assert_eq!(one_line("abcdef", 3), "abc…");
    }
}
