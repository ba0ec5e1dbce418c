//! Time for the engine, from one source that tests can pause.

use std::time::Duration;

use tokio::time::Instant;

use crate::job::Timestamp;

/// Wall-clock timestamps that advance with tokio's clock.
///
/// Leases, backoff and timeouts are stored as [`Timestamp`]s but measured with tokio's [`Instant`], so
/// under `tokio::time::pause()` a test moves every deadline forward by advancing time, without sleeping.
/// The wall clock is read once, when the clock is made; from then on only the monotonic clock counts, so
/// the system clock jumping (an NTP step, a suspended VM, an operator setting the date) while the engine
/// runs moves no lease or timeout.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    base_wall: Timestamp,
    base_instant: Instant,
}

impl Clock {
    /// A clock that reads the system time now and then follows tokio's clock.
    pub fn new() -> Self {
        Self {
            base_wall: Timestamp::now(),
            base_instant: Instant::now(),
        }
    }

    /// A clock that starts at `wall` (another machine's clock, say) and then follows tokio's clock.
    pub fn starting_at(wall: Timestamp) -> Self {
        Self {
            base_wall: wall,
            base_instant: Instant::now(),
        }
    }

    /// The current time.
    pub fn now(&self) -> Timestamp {
        self.base_wall.plus(self.base_instant.elapsed())
    }

    /// The tokio instant at which `at` falls (now, if it is in the past).
    pub fn instant_at(&self, at: Timestamp) -> Instant {
        let now = self.now();
        Instant::now() + at.since(now)
    }

    /// How long until `at` (zero if it has passed).
    pub fn until(&self, at: Timestamp) -> Duration {
        at.since(self.now())
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn follows_paused_tokio_time() {
        let clock = Clock::new();
        let t0 = clock.now();
        tokio::time::advance(Duration::from_secs(30)).await;
        assert_eq!(clock.now().since(t0), Duration::from_secs(30));
        assert_eq!(
            clock.until(t0.plus(Duration::from_secs(40))),
            Duration::from_secs(10)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_clock_started_elsewhere_follows_tokio_time_from_there() {
        let clock = Clock::starting_at(Timestamp(1_000_000));
        assert_eq!(clock.now(), Timestamp(1_000_000));
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(clock.now(), Timestamp(1_005_000));
        assert_eq!(clock.until(Timestamp(1_000_000)), Duration::ZERO);
    }
}
