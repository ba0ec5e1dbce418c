//! Dispatcher settings.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How the dispatcher leases, times out and retries jobs. The defaults suit a workshop on one server.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DispatcherConfig {
    /// This engine's name on leases it holds (shown to operators; unique per server).
    pub holder: String,
    /// How long a lease lasts without a heartbeat. A crashed server's jobs return to the queue after this.
    #[serde(with = "millis")]
    pub lease_ttl: Duration,
    /// How often a held lease is renewed (well under `lease_ttl`).
    #[serde(with = "millis")]
    pub heartbeat_interval: Duration,
    /// How often expired leases are looked for (and queue-wait timeouts checked).
    #[serde(with = "millis")]
    pub reap_interval: Duration,
    /// Attempts per job for infrastructure failures before it fails for good.
    pub max_attempts: u32,
    /// Lease expiries per job before it is dead-lettered.
    pub max_stalls: u32,
    /// First retry delay; doubles each attempt, with full jitter.
    #[serde(with = "millis")]
    pub backoff_base: Duration,
    /// Longest retry delay.
    #[serde(with = "millis")]
    pub backoff_max: Duration,
    /// Longest a job may wait in the queue (None: forever).
    #[serde(with = "opt_millis")]
    pub queue_timeout: Option<Duration>,
    /// Longest from dispatch to the provider's start (covers a serverless cold start).
    #[serde(with = "millis")]
    pub start_timeout: Duration,
    /// Longest a job may run once started.
    #[serde(with = "millis")]
    pub execution_timeout: Duration,
    /// Events buffered per subscriber before a slow one lags.
    pub event_capacity: usize,
    /// For a store shared with other servers (Redis): how often the queue is read, so that jobs other
    /// servers accepted or put back are dispatched here too and jobs they took leave this server's line.
    /// `None` (the default) for a store only this server uses.
    #[serde(with = "opt_millis")]
    pub follow_shared_queue: Option<Duration>,
    /// The wall time the engine's clock starts from; `None` (the default) reads this host's clock. The
    /// engine reads it once and then counts with the monotonic clock, so a jump of the host's clock
    /// while it runs moves no deadline. Servers sharing a Redis start from Redis's clock, so that their
    /// leases are measured on one clock even when their hosts disagree.
    pub clock_start: Option<crate::job::Timestamp>,
}

impl Default for DispatcherConfig {
    fn default() -> Self {
        Self {
            holder: format!("comfyume-{}", std::process::id()),
            lease_ttl: Duration::from_secs(30),
            heartbeat_interval: Duration::from_secs(10),
            reap_interval: Duration::from_secs(5),
            max_attempts: 3,
            max_stalls: 3,
            backoff_base: Duration::from_secs(2),
            backoff_max: Duration::from_secs(60),
            queue_timeout: None,
            start_timeout: Duration::from_secs(600),
            execution_timeout: Duration::from_secs(1800),
            event_capacity: 4096,
            follow_shared_queue: None,
            clock_start: None,
        }
    }
}

impl DispatcherConfig {
    /// The delay before retry number `attempt` (1 = after the first failure): exponential with full jitter,
    /// between half and all of `min(backoff_max, backoff_base * 2^(attempt-1))`.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let exp = attempt.saturating_sub(1).min(20);
        let ceiling = self.backoff_base.saturating_mul(1 << exp).min(self.backoff_max);
        let half = ceiling / 2;
        half + half.mul_f64(fastrand::f64())
    }
}

mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

mod opt_millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            None => s.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Option::<u64>::deserialize(d).map(|o| o.map(Duration::from_millis))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_exponentially_with_jitter_and_is_capped() {
        let c = DispatcherConfig {
            backoff_base: Duration::from_secs(2),
            backoff_max: Duration::from_secs(60),
            ..Default::default()
        };
        for _ in 0..200 {
            let d1 = c.backoff(1);
            assert!(
                d1 >= Duration::from_secs(1) && d1 <= Duration::from_secs(2),
                "{d1:?}"
            );
            let d3 = c.backoff(3);
            assert!(
                d3 >= Duration::from_secs(4) && d3 <= Duration::from_secs(8),
                "{d3:?}"
            );
            let d10 = c.backoff(10);
            assert!(
                d10 >= Duration::from_secs(30) && d10 <= Duration::from_secs(60),
                "{d10:?}"
            );
        }
    }

    #[test]
    fn config_round_trips_as_milliseconds() {
        let c = DispatcherConfig {
            queue_timeout: Some(Duration::from_secs(5)),
            ..Default::default()
        };
        let v = serde_json::to_value(&c).unwrap();
        assert_eq!(v["lease_ttl"], 30_000);
        assert_eq!(v["queue_timeout"], 5_000);
        assert_eq!(serde_json::from_value::<DispatcherConfig>(v).unwrap(), c);
    }
}
