//! The run policy the dispatcher and the executor both apply: which time
//! limit a run gets and how many processes a job asks for. Written once,
//! here, so the two can never disagree.

use std::time::Duration;

use crate::manifest::Procs;

/// The time limits a service applies to runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunLimits {
    /// When neither the request nor the manifest sets one.
    pub default_timeout: Duration,
    /// The longest any request may ask for.
    pub max_timeout: Duration,
}

impl Default for RunLimits {
    /// 30 s when nothing else is said, at most 15 minutes.
    fn default() -> Self {
        Self {
            default_timeout: Duration::from_secs(30),
            max_timeout: Duration::from_secs(15 * 60),
        }
    }
}

impl RunLimits {
    /// The default limit in milliseconds, as configuration spells it.
    pub fn default_timeout_ms(&self) -> u64 {
        self.default_timeout.as_millis() as u64
    }

    /// The maximum limit in milliseconds, as configuration spells it.
    pub fn max_timeout_ms(&self) -> u64 {
        self.max_timeout.as_millis() as u64
    }

    /// Limits from milliseconds, as configuration spells them.
    pub fn from_ms(default_timeout_ms: u64, max_timeout_ms: u64) -> Self {
        Self {
            default_timeout: Duration::from_millis(default_timeout_ms),
            max_timeout: Duration::from_millis(max_timeout_ms),
        }
    }

    /// A run's time limit: the request's, else the manifest's, else the
    /// default; never over the maximum.
    pub fn timeout(&self, requested: Option<Duration>, manifest: Option<Duration>) -> Duration {
        requested
            .or(manifest)
            .unwrap_or(self.default_timeout)
            .min(self.max_timeout)
    }
}

/// The processes a job asks for: the request's, else the manifest's, else
/// exactly one. Each node fits a range to its own `max_procs`
/// ([`Procs::fit`]).
pub fn job_procs(requested: Option<Procs>, manifest: Option<Procs>) -> Procs {
    requested.or(manifest).unwrap_or(Procs::exactly(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_wins_then_the_manifest_then_the_default_under_the_cap() {
        let limits = RunLimits::from_ms(30_000, 60_000);
        let s = Duration::from_secs;
        for (requested, manifest, expect) in [
            (None, None, s(30)),
            (None, Some(s(5)), s(5)),
            (Some(s(2)), Some(s(5)), s(2)),
            (Some(s(600)), None, s(60)),
            (None, Some(s(600)), s(60)),
        ] {
            assert_eq!(limits.timeout(requested, manifest), expect);
        }
        let range = Procs { min: 4, max: 16 };
        assert_eq!(job_procs(None, None), Procs::exactly(1));
        assert_eq!(job_procs(None, Some(range)), range);
        assert_eq!(
            job_procs(Some(Procs::exactly(2)), Some(range)),
            Procs::exactly(2)
        );
        assert_eq!(job_procs(None, Some(range)).fit_or_fewest(4), 4);
        assert_eq!(job_procs(None, Some(range)).fit_or_fewest(2), 4);
    }
}
