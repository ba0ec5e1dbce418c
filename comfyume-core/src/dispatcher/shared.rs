//! Following a queue shared with other servers (several servers on one Redis store): jobs that other
//! servers accepted or put back show up in this server's scheduler, and jobs they took or ended leave it.
//!
//! Every server's scheduler thus sees the whole queue and picks from it in its fair order; two servers
//! that pick the same job race for its lease in the store, which has exactly one winner (the loser's
//! claim fails with `WrongState` and it picks again). The fair-share accounting (virtual times, admin
//! overrides) stays per server: each server is fair over the jobs it hands out.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use super::{Inner, lock};
use crate::error::Result;
use crate::job::{Job, JobState};
use crate::scheduler::{JobKey, QueuedJob};

impl Inner {
    /// Reads the shared queue every `every` until the engine stops.
    pub(super) async fn follow_loop(self: Arc<Self>, every: Duration) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = self.stop.cancelled() => return,
            }
            if let Err(e) = self.follow().await {
                tracing::warn!(error = %e, "could not read the shared queue; trying again");
            }
        }
    }

    /// Brings the scheduler in line with the store's queue once.
    pub(super) async fn follow(&self) -> Result<()> {
        // Waiting here before the read and not queued in the store at the read: another server took it
        // (or it ended). A job that comes back later is found again by a later pass.
        let before: HashSet<JobKey> = lock(&self.scheduler).waiting().collect();
        let keys = self.store.queued_keys().await?;
        let in_store: HashSet<JobKey> = keys.iter().copied().collect();
        let gone: Vec<JobKey> = before.difference(&in_store).copied().collect();
        if !gone.is_empty() {
            let mut scheduler = lock(&self.scheduler);
            for key in gone {
                scheduler.remove(key);
            }
        }
        let now = self.clock.now();
        let mut added = false;
        for key in keys {
            if before.contains(&key) || self.knows(key) {
                continue;
            }
            let Some(job) = self.store.get(key.id).await? else {
                continue;
            };
            let waiting = job.state == JobState::Queued && job.not_before.is_none_or(|t| t <= now);
            if waiting {
                added |= self.adopt(&job);
            }
        }
        if added {
            self.wake.notify_one();
        }
        Ok(())
    }

    /// True when this server already has the job: waiting, or handed out (being claimed, running).
    fn knows(&self, key: JobKey) -> bool {
        let scheduler = lock(&self.scheduler);
        scheduler.contains(key) || scheduler.is_running(key.id)
    }

    /// Puts another server's queued job in line here, unless this server got it meanwhile.
    fn adopt(&self, job: &Job) -> bool {
        let key = JobKey::from(job);
        let mut scheduler = lock(&self.scheduler);
        if scheduler.contains(key) || scheduler.is_running(job.id) {
            return false;
        }
        scheduler.restore(QueuedJob {
            id: job.id,
            owner: job.spec.owner.clone(),
            priority: job.spec.priority,
            cost: job.cost(),
            seq: job.seq,
        })
    }
}
