//! Waiting for the operator to stop a service, the tasks a service owns
//! until it stops, and the logging every binary starts with.

use std::future::Future;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// The tasks a service owns (its loops, and what it spawns per message:
/// runs, invocations, events, installs): waited for when the service
/// stops, aborted if the service itself is dropped (as `comfaas dev` does
/// after its grace period), and a task that panicked is logged, not lost.
/// Finished tasks are collected at each spawn, so the set holds about what
/// is under way.
pub struct Tasks {
    set: JoinSet<()>,
    what: &'static str,
}

impl Tasks {
    /// An empty set of tasks, named `what` in logs (e.g. "invocation").
    pub fn new(what: &'static str) -> Self {
        Self {
            set: JoinSet::new(),
            what,
        }
    }

    /// Spawns `task` (its output is dropped), after collecting the ones
    /// already finished.
    pub fn spawn<T: Send + 'static>(&mut self, task: impl Future<Output = T> + Send + 'static) {
        while let Some(done) = self.set.try_join_next() {
            self.ended(done);
        }
        self.set.spawn(async move {
            task.await;
        });
    }

    /// Waits for every task to finish.
    pub async fn wait(mut self) {
        while let Some(done) = self.set.join_next().await {
            self.ended(done);
        }
    }

    /// Aborts every task and waits until they are gone.
    pub async fn abort(mut self) {
        self.set.shutdown().await;
    }

    fn ended(&self, done: Result<(), tokio::task::JoinError>) {
        if let Err(e) = done {
            tracing::error!("{} task failed: {e}", self.what);
        }
    }
}

/// Starts `tracing` output on stderr, filtered by `RUST_LOG` (else `default`).
pub fn init_logging(default: &str) {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| default.into()),
        )
        .with_writer(std::io::stderr)
        .init();
}

/// A token cancelled on Ctrl-C or SIGTERM: a service's `shutdown`.
pub fn shutdown_on_signal() -> CancellationToken {
    let shutdown = CancellationToken::new();
    let on_signal = shutdown.clone();
    tokio::spawn(async move {
        terminated().await;
        on_signal.cancel();
    });
    shutdown
}

/// Resolves on Ctrl-C (SIGINT) or SIGTERM.
pub async fn terminated() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tasks_are_waited_for_and_aborted_when_dropped() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut tasks = Tasks::new("test");
        for i in 0..3 {
            let tx = tx.clone();
            tasks.spawn(async move {
                let _ = tx.send(i);
            });
        }
        tasks.spawn(async { panic!("a task that panics is logged") });
        tasks.wait().await;
        let mut got = Vec::new();
        while let Ok(i) = rx.try_recv() {
            got.push(i);
        }
        got.sort();
        assert_eq!(got, vec![0, 1, 2]);

        let mut tasks = Tasks::new("test");
        let (started_tx, started) = tokio::sync::oneshot::channel();
        tasks.spawn(async move {
            let _ = started_tx.send(());
            let _ = tx.send(99);
            std::future::pending::<()>().await;
        });
        started.await.expect("the task started");
        drop(tasks);
        // Aborted: its sender is dropped, so the channel closes.
        assert_eq!(rx.recv().await, Some(99));
        assert_eq!(rx.recv().await, None);
    }
}
