//! How a simulated worker behaves: execution time, failures, cold start, replicas, routing.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use super::SimError;

/// How long one simulated job takes (spread over the nodes that actually run).
///
/// Exists so tests can run in milliseconds while demos and load tests can look like a real GPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExecTime {
    /// Every job takes this long.
    Fixed(Duration),
    /// Each job takes a duration drawn uniformly from `lo..=hi` (seeded by [`SimConfig::seed`]).
    Range(Duration, Duration),
}

impl Default for ExecTime {
    fn default() -> Self {
        ExecTime::Fixed(Duration::from_millis(20))
    }
}

impl ExecTime {
    /// Draws one job's duration.
    pub(crate) fn draw(&self, rng: &mut fastrand::Rng) -> Duration {
        match *self {
            ExecTime::Fixed(d) => d,
            ExecTime::Range(lo, hi) => {
                let (lo, hi) = if lo <= hi { (lo, hi) } else { (hi, lo) };
                let span = (hi - lo).as_micros() as u64;
                lo + Duration::from_micros(if span == 0 { 0 } else { rng.u64(0..=span) })
            }
        }
    }
}

impl FromStr for ExecTime {
    type Err = SimError;

    /// Parses milliseconds: `"20"` is [`ExecTime::Fixed`], `"10..500"` is [`ExecTime::Range`].
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let ms = |part: &str| -> Result<Duration, SimError> {
            part.trim()
                .parse::<u64>()
                .map(Duration::from_millis)
                .map_err(|_| SimError::Config(format!("not a number of milliseconds: {part:?}")))
        };
        match s.split_once("..") {
            Some((lo, hi)) => {
                let hi = hi.strip_prefix('=').unwrap_or(hi);
                Ok(ExecTime::Range(ms(lo)?, ms(hi)?))
            }
            None => Ok(ExecTime::Fixed(ms(s)?)),
        }
    }
}

/// Configuration of a [`SimWorker`](super::SimWorker).
///
/// Build it with struct-update syntax so new fields keep old code compiling:
/// `SimConfig { replicas: 3, load_balance: true, ..SimConfig::default() }`.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Simulated execution time of one job (default 20 ms).
    pub exec_time: ExecTime,
    /// Share of jobs (0.0..=1.0) that fail with a runtime `execution_error`.
    pub failure_rate: f64,
    /// Delay before the first answer after start; requests and WebSocket upgrades wait, like a cold GPU.
    pub cold_start: Duration,
    /// Root of `input/`, `output/` and `temp/` (shared by all replicas); default a temporary directory
    /// removed when the worker stops.
    pub output_dir: Option<PathBuf>,
    /// Number of independent simulated ComfyUI processes (own queue, history, sockets, cache); default 1.
    pub replicas: usize,
    /// One port for all replicas; every HTTP request and every WebSocket connection goes to the next
    /// replica in turn (serverless routing without affinity). Without it, each replica listens on its own
    /// port (see [`SimWorker::replica_urls`](super::SimWorker::replica_urls)).
    pub load_balance: bool,
    /// An `object_info` JSON file to serve and validate against instead of the built-in catalogue.
    pub object_info: Option<PathBuf>,
    /// Seed for failures, random execution times and preview names, for reproducible tests.
    pub seed: Option<u64>,
    /// Keep node outputs across prompts like ComfyUI's default cache (an identical node re-reports its
    /// earlier output and writes no new file). Default true; false is ComfyUI's `--cache-none`.
    pub cache: bool,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            exec_time: ExecTime::default(),
            failure_rate: 0.0,
            cold_start: Duration::ZERO,
            output_dir: None,
            replicas: 1,
            load_balance: false,
            object_info: None,
            seed: None,
            cache: true,
        }
    }
}

impl SimConfig {
    /// Checks the values that would make the simulator misbehave.
    pub(crate) fn validate(&self) -> Result<(), SimError> {
        if !(0.0..=1.0).contains(&self.failure_rate) {
            return Err(SimError::Config(format!(
                "failure_rate must be within 0.0..=1.0, got {}",
                self.failure_rate
            )));
        }
        if self.replicas == 0 {
            return Err(SimError::Config("replicas must be at least 1".into()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_fixed_and_range() {
        assert_eq!(
            "20".parse::<ExecTime>().ok(),
            Some(ExecTime::Fixed(Duration::from_millis(20)))
        );
        assert_eq!(
            "10..500".parse::<ExecTime>().ok(),
            Some(ExecTime::Range(
                Duration::from_millis(10),
                Duration::from_millis(500)
            ))
        );
        assert!("ten".parse::<ExecTime>().is_err());
    }

    #[test]
    fn range_draws_stay_inside() {
        let mut rng = fastrand::Rng::with_seed(1);
        let t = ExecTime::Range(Duration::from_millis(10), Duration::from_millis(20));
        for _ in 0..100 {
            let d = t.draw(&mut rng);
            assert!(d >= Duration::from_millis(10) && d <= Duration::from_millis(20));
        }
    }

    #[test]
    fn rejects_bad_values() {
        let bad = SimConfig {
            failure_rate: 1.5,
            ..SimConfig::default()
        };
        assert!(bad.validate().is_err());
        let none = SimConfig {
            replicas: 0,
            ..SimConfig::default()
        };
        assert!(none.validate().is_err());
    }
}
