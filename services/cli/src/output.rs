//! How the CLI prints: tables fitted to the terminal, `--json` documents,
//! progress bars, and a quiet exit when stdout's reader goes away.
//!
//! Everything meant for a program (tables, JSON) goes to stdout; progress
//! goes to stderr and only when stderr is a terminal (indicatif hides its
//! bars otherwise), so piped output stays exactly what tests and scripts
//! read.

use std::io::Write as _;
use std::time::Duration;

use comfy_table::{ContentArrangement, Table};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

/// Writes `text` and a newline to stdout. Unlike `println!`, a closed pipe
/// (`comfaas ls | head`) comes back as an error that [`is_broken_pipe`]
/// recognises, not a panic.
pub fn line(text: impl std::fmt::Display) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{text}")?;
    out.flush()
}

/// Prints `value` as one pretty JSON document on stdout.
pub fn json<T: Serialize>(value: &T) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(value)?;
    line(text)?;
    Ok(())
}

/// A table with a header row, no borders (columns split by spaces, like
/// `kubectl get`), as wide as the terminal when stdout is one: the long
/// cells of column `wrapping` (the runtimes of a node) wrap inside it
/// instead of pushing the others out of line; the other columns keep
/// their width. Piped, rows are never wrapped.
pub fn table<I, S>(header: I, wrapping: usize) -> Table
where
    I: IntoIterator<Item = S>,
    S: Into<comfy_table::Cell>,
{
    let term = console::Term::stdout();
    let width = term
        .is_term()
        .then(|| term.size_checked().map(|(_, columns)| columns))
        .flatten()
        // A terminal that tells no usable size is not one to fit.
        .filter(|columns| *columns >= 40);
    table_of_width(header, wrapping, width)
}

/// The least width of the column that wraps.
const WRAP_AT_LEAST: u16 = 24;

/// [`table`] fitted to `width` columns (`None`: as wide as its rows).
pub fn table_of_width<I, S>(header: I, wrapping: usize, width: Option<u16>) -> Table
where
    I: IntoIterator<Item = S>,
    S: Into<comfy_table::Cell>,
{
    let mut table = Table::new();
    table
        .load_preset(comfy_table::presets::NOTHING)
        .set_header(header);
    if let Some(width) = width {
        table
            .set_width(width)
            .set_content_arrangement(ContentArrangement::Dynamic);
    }
    // The preset pads each cell with one space on both sides: drop the
    // left one so the first column starts at the margin.
    for column in table.column_iter_mut() {
        column.set_padding((0, 1));
        column.set_constraint(if column.index == wrapping {
            // Narrower, it would be a column of single letters: past this
            // the terminal wraps the row instead.
            comfy_table::ColumnConstraint::LowerBoundary(comfy_table::Width::Fixed(WRAP_AT_LEAST))
        } else {
            comfy_table::ColumnConstraint::ContentWidth
        });
    }
    table
}

/// Prints `table` on stdout, each line trimmed of the padding after its
/// last column.
pub fn print_table(table: &Table) -> std::io::Result<()> {
    for row in table.lines() {
        line(row.trim_end())?;
    }
    Ok(())
}

/// Whether `error` (or any error it wraps) is a write to a pipe whose
/// reader has gone: the user has what they wanted, so it is no failure.
pub fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// Makes a panic caused by printing into a closed pipe (a `println!`
/// anywhere in the CLI whose reader, e.g. `head`, has exited) a quiet exit,
/// as the same write through [`line`] is; every other panic is reported as
/// before.
pub fn exit_quietly_on_broken_pipe() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or_default();
        // The message std's print macros panic with on a failed write.
        if message.starts_with("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(0);
        }
        report(info);
    }));
}

/// A bar counting bytes sent or received, with the rate, on stderr when it
/// is a terminal (hidden otherwise).
pub fn bytes_bar(what: &str, total: u64) -> ProgressBar {
    let bar = ProgressBar::new(total);
    if let Ok(style) = ProgressStyle::with_template(
        "{msg} [{bar:30}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} {eta}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(what.to_owned());
    bar
}

/// A spinner with a message, on stderr when it is a terminal.
pub fn spinner(message: String) -> ProgressBar {
    let bar = ProgressBar::new_spinner();
    if let Ok(style) = ProgressStyle::with_template("{spinner} {msg} ({elapsed})") {
        bar.set_style(style);
    }
    bar.set_message(message);
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests fail loudly by design

    use super::*;

    #[test]
    fn a_long_cell_wraps_inside_its_column_on_a_narrow_terminal() {
        let runtimes = "python, python-mpi, c, c-mpi, rust-mpi, java, exec";
        let row = ["edge-1", "edge", "lab", "2", runtimes, "1/1"];
        let header = ["NODE", "TIER", "SITE", "SLOTS", "RUNTIMES", "READY"];
        let mut narrow = table_of_width(header, 4, Some(56));
        narrow.add_row(row);
        let lines: Vec<String> = narrow.lines().collect();
        assert!(lines.len() > 2, "{lines:#?}");
        assert!(
            lines.iter().all(|l| l.trim_end().chars().count() <= 56),
            "{lines:#?}"
        );
        // Only RUNTIMES wraps: every other column keeps its width, and
        // READY stays in its column on the first row of the wrapped cell.
        assert!(
            lines[0].starts_with("NODE   TIER SITE SLOTS RUNTIMES"),
            "{lines:#?}"
        );
        let at = lines[0].find("READY").unwrap();
        assert_eq!(lines[1].get(at..at + 3), Some("1/1"), "{lines:#?}");
        assert!(
            lines[2].trim_start().starts_with("c-mpi") || lines[2].trim_start().starts_with("c,"),
            "{lines:#?}"
        );
        // Unbounded (piped): one line per row, starting at the margin.
        let mut wide = table_of_width(header, 4, None);
        wide.add_row(row);
        let lines: Vec<String> = wide.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].starts_with("NODE "));
        assert!(lines[1].starts_with("edge-1 ") && lines[1].contains(runtimes));
    }
}
