//! [`Gate`]: what one serverless deployment did lately — when a replica last answered (its warmth), how
//! many jobs wait for a replica to start, and its recent failures. After `failover_after` failures in a
//! row (a cold start over budget, a 5xx, no connection) it reports itself unavailable for a cool-down
//! period: the dispatcher then offers jobs to the next deployment in the failover order, and retried
//! jobs go there.

use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use comfyume_core::{Health, Warmth};
use tokio::sync::Notify;
use tokio::time::Instant;

/// How a [`Gate`] judges a deployment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GateConfig {
    /// A deployment counts as warm this long after a replica last answered (set it to the platform's
    /// scale-down delay).
    pub warm_for: Duration,
    /// Failures in a row that take the deployment out of rotation.
    pub failover_after: u32,
    /// How long it stays out of rotation before it is offered jobs again.
    pub cooldown: Duration,
}

impl Default for GateConfig {
    fn default() -> Self {
        Self {
            warm_for: Duration::from_secs(300),
            failover_after: 2,
            cooldown: Duration::from_secs(120),
        }
    }
}

#[derive(Debug, Default)]
struct State {
    last_answer: Option<Instant>,
    /// Jobs sent that have not had a first answer yet.
    waiting: usize,
    failures: u32,
    out_until: Option<Instant>,
    last_failure: Option<String>,
}

/// See the module docs. Shared by every job of one deployment.
#[derive(Debug)]
pub struct Gate {
    config: GateConfig,
    state: Mutex<State>,
    changed: Notify,
}

/// Counts a job as waiting for its first answer until dropped or answered.
#[derive(Debug)]
pub struct Waiting<'a> {
    gate: &'a Gate,
    done: bool,
}

impl Waiting<'_> {
    /// A replica answered this job: the deployment is warm.
    pub fn answered(mut self) {
        self.done = true;
        let mut s = self.gate.lock();
        s.waiting = s.waiting.saturating_sub(1);
        s.last_answer = Some(Instant::now());
        s.failures = 0;
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if !self.done {
            let mut s = self.gate.lock();
            s.waiting = s.waiting.saturating_sub(1);
        }
    }
}

impl Gate {
    /// A gate that has seen nothing yet (cold, healthy).
    pub fn new(config: GateConfig) -> Self {
        Self {
            config,
            state: Mutex::new(State::default()),
            changed: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A job was sent and waits for its first answer.
    pub fn waiting(&self) -> Waiting<'_> {
        self.lock().waiting += 1;
        Waiting {
            gate: self,
            done: false,
        }
    }

    /// Something answered (a status poll, a result): the deployment is warm and working.
    pub fn answered(&self) {
        let mut s = self.lock();
        s.last_answer = Some(Instant::now());
        s.failures = 0;
    }

    /// A failure of the deployment (not of the workflow). Returns true when it takes the deployment out of
    /// rotation.
    pub fn failed(&self, reason: &str) -> bool {
        let tripped = {
            let mut s = self.lock();
            s.failures += 1;
            s.last_failure = Some(reason.to_string());
            if s.failures >= self.config.failover_after.max(1) {
                s.failures = 0;
                s.out_until = Some(Instant::now() + self.config.cooldown);
                true
            } else {
                false
            }
        };
        if tripped {
            self.changed.notify_one();
        }
        tripped
    }

    /// Cold, starting (a job waits for a replica and none answered lately) or warm.
    pub fn warmth(&self) -> Warmth {
        let s = self.lock();
        let warm = s.last_answer.is_some_and(|t| t.elapsed() < self.config.warm_for);
        match (warm, s.waiting > 0) {
            (true, _) => Warmth::Warm,
            (false, true) => Warmth::Starting,
            (false, false) => Warmth::Cold,
        }
    }

    /// Unavailable while out of rotation (with the failure that caused it), else healthy.
    pub fn health(&self) -> Health {
        let s = self.lock();
        match s.out_until {
            Some(until) if until > Instant::now() => Health::Unavailable {
                reason: format!(
                    "failing over for {} s after repeated failures; last: {}",
                    until.saturating_duration_since(Instant::now()).as_secs().max(1),
                    s.last_failure.as_deref().unwrap_or("unknown")
                ),
            },
            _ => Health::Healthy,
        }
    }

    /// How often the dispatcher should look at [`Gate::health`]: often enough to notice the end of a
    /// cool-down soon after it passes (no request is made: health comes from what jobs observed).
    pub fn health_interval(&self) -> Duration {
        (self.config.cooldown / 4).clamp(Duration::from_millis(200), Duration::from_secs(10))
    }

    /// Resolves when the deployment went out of rotation.
    pub async fn changed(&self) {
        self.changed.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn warmth_follows_answers_and_failures_trip_it() {
        let gate = Gate::new(GateConfig {
            warm_for: Duration::from_secs(60),
            failover_after: 2,
            cooldown: Duration::from_secs(30),
        });
        assert_eq!(gate.warmth(), Warmth::Cold);
        let w = gate.waiting();
        assert_eq!(gate.warmth(), Warmth::Starting);
        w.answered();
        assert_eq!(gate.warmth(), Warmth::Warm);
        tokio::time::advance(Duration::from_secs(61)).await;
        assert_eq!(gate.warmth(), Warmth::Cold);
        drop(gate.waiting());
        assert_eq!(gate.warmth(), Warmth::Cold);

        assert!(!gate.failed("cold start over budget"));
        assert_eq!(gate.health(), Health::Healthy);
        assert!(gate.failed("HTTP 503"));
        assert!(matches!(gate.health(), Health::Unavailable { reason } if reason.contains("HTTP 503")));
        tokio::time::advance(Duration::from_secs(31)).await;
        assert_eq!(gate.health(), Health::Healthy);
    }
}
