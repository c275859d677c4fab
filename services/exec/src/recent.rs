//! Events this node is running or ran recently, by event id. A redelivered
//! event (its dispatcher died before acknowledging it, or the ack was
//! lost) attaches to the run under way or gets that run's outcome again,
//! instead of running the function a second time. Dispatchers ask before
//! placing a redelivery (`<prefix>.held.<id>`, answered by [`RecentRuns::holds`]),
//! so it comes back to this node.
//!
//! Bounded: outcomes are kept for `keep`, and at most `max_entries` of
//! them and `max_bytes` of their bodies and headers, oldest forgotten first. A
//! redelivery after that runs again (at least once, as documented).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use bytes::Bytes;
use tokio::sync::watch;

/// What a finished run answered.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// Its reply headers.
    pub headers: HeaderMap,
    /// Its reply body.
    pub body: Bytes,
}

impl Outcome {
    /// The bytes it holds: body, header names and values, and a little
    /// for each header's bookkeeping.
    fn size(&self) -> usize {
        let headers: usize = self
            .headers
            .iter()
            .map(|(name, values)| {
                let name: &str = name.as_ref();
                values
                    .iter()
                    .map(|v| name.len() + v.as_str().len() + 32)
                    .sum::<usize>()
            })
            .sum();
        self.body.len() + headers
    }
}

/// Runs of events, by event id, and how long to remember them.
#[derive(Clone)]
pub struct RecentRuns {
    inner: Arc<Mutex<Inner>>,
    keep: Duration,
    max_entries: usize,
    max_bytes: usize,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<String, Entry>,
    /// Finished runs, oldest first, with the bytes each outcome holds:
    /// what is forgotten first.
    finished: VecDeque<(Instant, String, usize)>,
    bytes: usize,
}

enum Entry {
    Running(watch::Receiver<Option<Outcome>>),
    Done(Outcome),
}

/// What [`RecentRuns::claim`] found for an event id.
pub enum Claim {
    /// Not running nor ran recently: run it, and finish the guard.
    Fresh(RunGuard),
    /// A run of it is under way: wait for its outcome.
    Running(watch::Receiver<Option<Outcome>>),
    /// It ran recently: this was its outcome.
    Done(Outcome),
}

impl RecentRuns {
    /// Remembers finished runs for `keep`, at most `max_entries` and
    /// `max_bytes` of outputs.
    pub fn new(keep: Duration, max_entries: usize, max_bytes: usize) -> Self {
        Self {
            inner: Arc::default(),
            keep,
            max_entries,
            max_bytes,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Plain data: a panicked holder leaves nothing half-done that
        // matters more than staying up.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Claims the event `id`: the first claim runs it, later ones attach.
    pub fn claim(&self, id: &str) -> Claim {
        let mut inner = self.lock();
        self.forget_old(&mut inner);
        match inner.entries.get(id) {
            Some(Entry::Running(receiver)) => Claim::Running(receiver.clone()),
            Some(Entry::Done(outcome)) => Claim::Done(outcome.clone()),
            None => {
                let (sender, receiver) = watch::channel(None);
                inner
                    .entries
                    .insert(id.to_owned(), Entry::Running(receiver));
                Claim::Fresh(RunGuard {
                    id: id.to_owned(),
                    sender,
                    runs: self.clone(),
                    finished: false,
                })
            }
        }
    }

    /// Whether the event `id` is running here or ran recently.
    pub fn holds(&self, id: &str) -> bool {
        let mut inner = self.lock();
        self.forget_old(&mut inner);
        inner.entries.contains_key(id)
    }

    fn forget_old(&self, inner: &mut Inner) {
        let now = Instant::now();
        while let Some((at, _, _)) = inner.finished.front() {
            let over = inner.finished.len() > self.max_entries || inner.bytes > self.max_bytes;
            if !over && now.duration_since(*at) < self.keep {
                break;
            }
            let Some((_, id, size)) = inner.finished.pop_front() else {
                break;
            };
            inner.bytes = inner.bytes.saturating_sub(size);
            if matches!(inner.entries.get(&id), Some(Entry::Done(_))) {
                inner.entries.remove(&id);
            }
        }
    }
}

/// The first claim of an event: [`finish`](RunGuard::finish) it with the
/// run's outcome. Dropped unfinished (the run was refused before it
/// started), the event is forgotten, and whoever waits on it is told.
pub struct RunGuard {
    id: String,
    sender: watch::Sender<Option<Outcome>>,
    runs: RecentRuns,
    finished: bool,
}

impl RunGuard {
    /// The run ended with `outcome`: remembered, and given to every
    /// redelivery waiting on it.
    pub fn finish(mut self, outcome: Outcome) {
        self.finished = true;
        {
            let mut inner = self.runs.lock();
            let size = outcome.size() + self.id.len();
            inner.bytes += size;
            inner
                .entries
                .insert(self.id.clone(), Entry::Done(outcome.clone()));
            inner
                .finished
                .push_back((Instant::now(), self.id.clone(), size));
            self.runs.forget_old(&mut inner);
        }
        self.sender.send_replace(Some(outcome));
    }
}

impl Drop for RunGuard {
    fn drop(&mut self) {
        if !self.finished {
            let mut inner = self.runs.lock();
            if matches!(inner.entries.get(&self.id), Some(Entry::Running(_))) {
                inner.entries.remove(&self.id);
            }
        }
    }
}

/// Waits for the run `receiver` follows; `None` when it ended without an
/// outcome (refused before it started).
pub async fn outcome_of(mut receiver: watch::Receiver<Option<Outcome>>) -> Option<Outcome> {
    receiver
        .wait_for(Option::is_some)
        .await
        .ok()
        .and_then(|outcome| outcome.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(body: &'static str) -> Outcome {
        Outcome {
            headers: HeaderMap::new(),
            body: Bytes::from_static(body.as_bytes()),
        }
    }

    #[tokio::test]
    async fn a_redelivery_attaches_to_the_run_under_way_then_gets_its_outcome() {
        let runs = RecentRuns::new(Duration::from_secs(60), 10, 1 << 20);
        let Claim::Fresh(guard) = runs.claim("7") else {
            panic!("first claim runs")
        };
        assert!(runs.holds("7"));
        let Claim::Running(waiting) = runs.claim("7") else {
            panic!("second claim attaches")
        };
        let waiter = tokio::spawn(outcome_of(waiting));
        guard.finish(outcome("out"));
        assert_eq!(waiter.await.unwrap().unwrap().body, "out");
        let Claim::Done(done) = runs.claim("7") else {
            panic!("a later claim gets the outcome")
        };
        assert_eq!(done.body, "out");
        assert!(!runs.holds("8"));
    }

    #[tokio::test]
    async fn a_run_refused_before_it_started_is_forgotten() {
        let runs = RecentRuns::new(Duration::from_secs(60), 10, 1 << 20);
        let Claim::Fresh(guard) = runs.claim("1") else {
            panic!()
        };
        let Claim::Running(waiting) = runs.claim("1") else {
            panic!()
        };
        drop(guard);
        assert!(outcome_of(waiting).await.is_none());
        assert!(!runs.holds("1"));
        assert!(matches!(runs.claim("1"), Claim::Fresh(_)));
    }

    #[test]
    fn outcomes_are_forgotten_past_the_bounds() {
        let runs = RecentRuns::new(Duration::from_secs(60), 2, 1 << 20);
        for id in ["a", "b", "c"] {
            let Claim::Fresh(guard) = runs.claim(id) else {
                panic!()
            };
            guard.finish(outcome("x"));
        }
        assert!(!runs.holds("a"), "past max_entries the oldest goes");
        assert!(runs.holds("b") && runs.holds("c"));

        let runs = RecentRuns::new(Duration::from_secs(60), 100, 4);
        for id in ["a", "b"] {
            let Claim::Fresh(guard) = runs.claim(id) else {
                panic!()
            };
            guard.finish(outcome("abc"));
        }
        assert!(!runs.holds("a"), "past max_bytes the oldest goes");
        assert!(runs.holds("b"));

        let runs = RecentRuns::new(Duration::ZERO, 100, 1 << 20);
        let Claim::Fresh(guard) = runs.claim("a") else {
            panic!()
        };
        guard.finish(outcome("x"));
        assert!(!runs.holds("a"), "past keep it goes");
    }
}
