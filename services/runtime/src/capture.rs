//! What a run writes to stderr (and, in handler mode, what the handler
//! prints), kept within bounds: the first bytes up to a per-run budget for
//! the function's log, and always the last [`TAIL_BYTES`], where a
//! traceback ends, for the error a failed run answers with. Whatever lies
//! between is counted, not kept, so a function printing gigabytes costs the
//! executor a fixed amount of memory.

/// Bytes of the end of stderr always kept: a failed run's reply body
/// carries them (a whole traceback, with its newlines).
pub const TAIL_BYTES: usize = 16 * 1024;

/// Collects one run's stderr as it arrives.
#[derive(Debug, Clone, Default)]
pub struct StderrCapture {
    head_cap: usize,
    head: Vec<u8>,
    tail: Vec<u8>,
    total: u64,
}

/// One run's stderr as kept by a [`StderrCapture`]: `head`, then `skipped`
/// bytes not kept, then `tail` (`head` and `tail` never overlap).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Captured {
    /// The first bytes, up to the log budget less [`TAIL_BYTES`].
    pub head: Vec<u8>,
    /// Bytes between head and tail that were dropped.
    pub skipped: u64,
    /// The last bytes, at most [`TAIL_BYTES`].
    pub tail: Vec<u8>,
}

impl StderrCapture {
    /// A capture keeping about `log_bytes` for the log (at least the last
    /// [`TAIL_BYTES`] whatever `log_bytes` says: errors need them).
    pub fn new(log_bytes: usize) -> Self {
        Self {
            head_cap: log_bytes.saturating_sub(TAIL_BYTES),
            ..Self::default()
        }
    }

    /// Takes the next bytes the run wrote.
    pub fn push(&mut self, mut bytes: &[u8]) {
        self.total += bytes.len() as u64;
        if self.head.len() < self.head_cap {
            let take = bytes.len().min(self.head_cap - self.head.len());
            self.head.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
        }
        if bytes.len() >= TAIL_BYTES {
            self.tail.clear();
            self.tail
                .extend_from_slice(&bytes[bytes.len() - TAIL_BYTES..]);
            return;
        }
        self.tail.extend_from_slice(bytes);
        // Trimmed in batches, not on every write: amortised O(1).
        if self.tail.len() > 2 * TAIL_BYTES {
            self.tail.drain(..self.tail.len() - TAIL_BYTES);
        }
    }

    /// Bytes written so far.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// What was kept.
    pub fn finish(mut self) -> Captured {
        if self.tail.len() > TAIL_BYTES {
            self.tail.drain(..self.tail.len() - TAIL_BYTES);
        }
        let kept = (self.head.len() + self.tail.len()) as u64;
        Captured {
            head: self.head,
            skipped: self.total.saturating_sub(kept),
            tail: self.tail,
        }
    }
}

impl Captured {
    /// Captured text of `text` as if written in one go (for tests and for
    /// tracebacks a worker hands over).
    pub fn of(text: &[u8]) -> Self {
        let mut capture = StderrCapture::new(0);
        capture.push(text);
        capture.finish()
    }

    /// Whether nothing was written.
    pub fn is_empty(&self) -> bool {
        self.head.is_empty() && self.tail.is_empty() && self.skipped == 0
    }

    /// The end of stderr, at most `max` bytes, lossily decoded, starting
    /// at a line when something before it was dropped: the body of a failed
    /// run's reply.
    pub fn tail_text(&self, max: usize) -> String {
        // Head and tail are contiguous only when nothing between was dropped.
        let whole = self.skipped == 0;
        let mut end = Vec::with_capacity(self.head.len() + self.tail.len());
        if whole {
            end.extend_from_slice(&self.head);
        }
        end.extend_from_slice(&self.tail);
        let start = end.len().saturating_sub(max);
        let cut = start > 0 || (!whole && !self.head.is_empty()) || self.skipped > 0;
        let mut text = String::from_utf8_lossy(&end[start..]).into_owned();
        if cut {
            // A partial first line reads as garbage: start at the next one.
            if let Some(newline) = text.find('\n').filter(|&i| i < 1024 && i + 1 < text.len()) {
                text.drain(..=newline);
            }
        }
        text
    }

    /// The log of the run, at most `budget` bytes of what it wrote plus a
    /// marker line where bytes were dropped.
    pub fn log(&self, budget: usize) -> Vec<u8> {
        let head = &self.head[..self.head.len().min(budget)];
        let tail_room = budget.saturating_sub(head.len());
        let tail = &self.tail[self.tail.len() - self.tail.len().min(tail_room)..];
        let dropped =
            self.skipped + (self.head.len() - head.len() + self.tail.len() - tail.len()) as u64;
        let mut log = Vec::with_capacity(head.len() + tail.len() + 80);
        log.extend_from_slice(head);
        if dropped > 0 {
            if !log.is_empty() && !log.ends_with(b"\n") {
                log.push(b'\n');
            }
            log.extend_from_slice(truncated_marker(dropped).as_bytes());
            log.push(b'\n');
        }
        log.extend_from_slice(tail);
        log
    }
}

/// The line a log carries where `dropped` bytes were not kept.
pub fn truncated_marker(dropped: u64) -> String {
    format!("[comfaas: log truncated, {dropped} bytes not kept]")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn captured(log_bytes: usize, writes: &[&[u8]]) -> Captured {
        let mut capture = StderrCapture::new(log_bytes);
        for w in writes {
            capture.push(w);
        }
        capture.finish()
    }

    #[test]
    fn small_output_is_kept_whole() {
        let c = captured(64 * 1024, &[b"one\n", b"two\n"]);
        assert_eq!(c.log(64 * 1024), b"one\ntwo\n");
        assert_eq!(c.tail_text(TAIL_BYTES), "one\ntwo\n");
        assert_eq!(c.skipped, 0);
    }

    #[test]
    fn a_flood_keeps_head_and_tail_and_says_how_much_it_dropped() {
        let line = vec![b'x'; 1023];
        let mut capture = StderrCapture::new(64 * 1024);
        for _ in 0..10_000 {
            capture.push(&line);
            capture.push(b"\n");
        }
        capture.push(b"Traceback: the end\n");
        assert_eq!(capture.total(), 10_000 * 1024 + 19);
        let c = capture.finish();
        assert_eq!(c.head.len(), 64 * 1024 - TAIL_BYTES);
        assert_eq!(c.tail.len(), TAIL_BYTES);
        let log = c.log(64 * 1024);
        assert!(log.len() <= 64 * 1024 + 80, "{}", log.len());
        let text = String::from_utf8_lossy(&log);
        let dropped = 10_000 * 1024 + 19 - 64 * 1024;
        assert!(text.contains(&truncated_marker(dropped)), "marker");
        assert!(text.ends_with("Traceback: the end\n"));
        let tail = c.tail_text(TAIL_BYTES);
        assert!(tail.len() <= TAIL_BYTES);
        assert!(tail.starts_with('x'), "starts on a line of its own");
        assert!(tail.ends_with("Traceback: the end\n"));
    }

    #[test]
    fn a_smaller_budget_than_the_tail_still_bounds_the_log() {
        let c = captured(0, &[&[b'a'; 5000], b"\nlast\n"]);
        let log = c.log(100);
        let text = String::from_utf8_lossy(&log);
        assert!(text.starts_with("[comfaas: log truncated, 4906 bytes not kept]\n"));
        assert!(text.ends_with("last\n"));
        assert!(c.log(0).starts_with(b"[comfaas: log truncated"));
    }

    #[test]
    fn one_huge_write_keeps_only_its_end() {
        let mut big = vec![b'y'; 3 * TAIL_BYTES];
        big.extend_from_slice(b"\nend\n");
        let c = captured(TAIL_BYTES + 10, &[&big]);
        assert_eq!(c.head, vec![b'y'; 10]);
        assert_eq!(c.tail.len(), TAIL_BYTES);
        assert!(c.tail.ends_with(b"\nend\n"));
        assert_eq!(
            c.skipped,
            (big.len() - TAIL_BYTES - 10) as u64,
            "counted, not kept"
        );
    }

    #[test]
    fn the_tail_text_of_a_short_run_includes_the_head() {
        let c = captured(TAIL_BYTES + 4, &[b"abcd", b"efgh\n"]);
        assert_eq!(c.head, b"abcd");
        assert_eq!(c.tail_text(TAIL_BYTES), "abcdefgh\n");
        assert_eq!(c.tail_text(3), "gh\n");
    }
}
