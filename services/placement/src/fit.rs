//! Run time against input size: [`RunFit`], an exponentially weighted
//! least-squares line learnt per function, node and process count.

/// Run time as a function of input size, fitted to recent runs: an
/// exponentially weighted least-squares line (recent runs weigh most, as
/// in a moving average). While every run had about the same input size
/// the line is flat, and the fit is the moving average of run times; once
/// sizes vary it learns how run time grows with the input, so a large
/// input is not estimated from small ones. The slope is never negative, is
/// learnt only from sizes that spread at least 1 MB (so that run time
/// noise on near-equal inputs does not pass for one), and is kept while
/// later runs all have one size.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RunFit {
    /// Weighted mean input size, bytes.
    mean_bytes: f64,
    /// Weighted mean run time, ms.
    mean_ms: f64,
    /// Weighted variance of input sizes, bytes².
    var_bytes: f64,
    /// Weighted covariance of input size and run time.
    cov: f64,
    /// The last slope learnt from well-spread sizes, ms per byte.
    slope: f64,
}

/// Weight of the newest run in a [`RunFit`].
const RUN_FIT_ALPHA: f64 = 0.3;

/// Input sizes must spread at least this much (standard deviation, bytes)
/// before a slope is fitted: below it, run time noise would pass for one.
const SLOPE_MIN_SPREAD_BYTES: f64 = 1e6;

impl RunFit {
    /// A first run: `ms` with `input_bytes` of input.
    pub fn new(input_bytes: u64, ms: f64) -> Self {
        Self {
            mean_bytes: input_bytes as f64,
            mean_ms: ms,
            var_bytes: 0.0,
            cov: 0.0,
            slope: 0.0,
        }
    }

    /// Learns from one more run.
    pub fn update(&mut self, input_bytes: u64, ms: f64) {
        let a = RUN_FIT_ALPHA;
        let dx = input_bytes as f64 - self.mean_bytes;
        let dy = ms - self.mean_ms;
        self.mean_bytes += a * dx;
        self.mean_ms += a * dy;
        self.var_bytes = (1.0 - a) * (self.var_bytes + a * dx * dx);
        self.cov = (1.0 - a) * (self.cov + a * dx * dy);
        if self.var_bytes.sqrt() >= SLOPE_MIN_SPREAD_BYTES {
            self.slope = (self.cov / self.var_bytes).max(0.0);
        }
    }

    /// Milliseconds per input byte (0 until input sizes varied).
    pub fn ms_per_byte(&self) -> f64 {
        self.slope
    }

    /// Expected run time with `input_bytes` of input, ms.
    pub fn predict(&self, input_bytes: u64) -> f64 {
        let ms = self.mean_ms + self.ms_per_byte() * (input_bytes as f64 - self.mean_bytes);
        // Below the runs seen, a line may cross zero: no run is free.
        ms.max(self.mean_ms * 0.05).max(0.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_fit_is_a_moving_average_until_sizes_vary() {
        let mut fit = RunFit::new(1_000, 10.0);
        fit.update(1_000, 20.0);
        assert!((fit.predict(1_000) - 13.0).abs() < 1e-9);
        assert_eq!(fit.ms_per_byte(), 0.0, "one size: no slope");
        assert!((fit.predict(50_000_000) - 13.0).abs() < 1e-9);

        // 100 ms per MB, no fixed cost, learnt from two sizes.
        let mut fit = RunFit::new(1_000_000, 100.0);
        for _ in 0..3 {
            fit.update(10_000_000, 1000.0);
            fit.update(1_000_000, 100.0);
        }
        assert!((fit.ms_per_byte() * 1e6 - 100.0).abs() < 1e-6, "{fit:?}");
        assert!((fit.predict(30_000_000) - 3000.0).abs() < 1e-3, "{fit:?}");
        // Never free, never shrinking with the input.
        assert!(fit.predict(0) > 0.0);
        // A slope learnt is kept through many runs of one size.
        for _ in 0..40 {
            fit.update(1_000_000, 100.0);
        }
        assert!((fit.ms_per_byte() * 1e6 - 100.0).abs() < 1e-6, "{fit:?}");
        // Noise on inputs under a megabyte apart is not a slope.
        let mut flat = RunFit::new(0, 100.0);
        for i in 0..20 {
            flat.update(
                if i % 2 == 0 { 300_000 } else { 0 },
                if i % 3 == 0 { 120.0 } else { 80.0 },
            );
        }
        assert_eq!(flat.ms_per_byte(), 0.0);
        let mut falling = RunFit::new(1_000_000, 1000.0);
        falling.update(10_000_000, 100.0);
        assert_eq!(falling.ms_per_byte(), 0.0);
    }
}
