//! A live server whose heartbeats come late does not lose its own running jobs to its own reaper.

use super::*;
use crate::sink::OutputRef;
use crate::store::LeaseStatus;

/// A store whose heartbeats take `delay` to be written (as behind a flood of other writes), and which
/// counts the jobs its reaper puts back in the queue. A test tool.
struct SlowHeartbeats {
    inner: MemoryStore,
    delay: Duration,
}

#[async_trait]
impl JobStore for SlowHeartbeats {
    async fn enqueue(&self, spec: JobSpec, now: Timestamp) -> crate::Result<(Job, bool)> {
        self.inner.enqueue(spec, now).await
    }
    async fn get(&self, id: JobId) -> crate::Result<Option<Job>> {
        self.inner.get(id).await
    }
    async fn list(&self, filter: &crate::store::JobFilter) -> crate::Result<Vec<Job>> {
        self.inner.list(filter).await
    }
    async fn queued(&self) -> crate::Result<Vec<Job>> {
        self.inner.queued().await
    }
    async fn claim(
        &self,
        id: JobId,
        holder: &str,
        provider: &str,
        ttl: Duration,
        now: Timestamp,
    ) -> crate::Result<(Job, Lease)> {
        self.inner.claim(id, holder, provider, ttl, now).await
    }
    async fn heartbeat(&self, lease: &Lease, ttl: Duration, now: Timestamp) -> crate::Result<LeaseStatus> {
        tokio::time::sleep(self.delay).await;
        self.inner.heartbeat(lease, ttl, now).await
    }
    async fn mark_running(&self, lease: &Lease, now: Timestamp) -> crate::Result<Job> {
        self.inner.mark_running(lease, now).await
    }
    async fn complete(&self, lease: &Lease, outputs: Vec<OutputRef>, now: Timestamp) -> crate::Result<Job> {
        self.inner.complete(lease, outputs, now).await
    }
    async fn fail(
        &self,
        lease: &Lease,
        failure: Failure,
        retry_at: Option<Timestamp>,
        now: Timestamp,
    ) -> crate::Result<Job> {
        self.inner.fail(lease, failure, retry_at, now).await
    }
    async fn finish_cancelled(&self, lease: &Lease, reason: &str, now: Timestamp) -> crate::Result<Job> {
        self.inner.finish_cancelled(lease, reason, now).await
    }
    async fn release(&self, lease: &Lease, now: Timestamp) -> crate::Result<Job> {
        self.inner.release(lease, now).await
    }
    async fn cancel(&self, id: JobId, reason: &str, now: Timestamp) -> crate::Result<CancelOutcome> {
        self.inner.cancel(id, reason, now).await
    }
    async fn fail_queued(&self, id: JobId, failure: Failure, now: Timestamp) -> crate::Result<Job> {
        self.inner.fail_queued(id, failure, now).await
    }
    async fn set_priority(&self, id: JobId, priority: i32) -> crate::Result<Job> {
        self.inner.set_priority(id, priority).await
    }
    async fn reap_expired(&self, now: Timestamp, max_stalls: u32) -> crate::Result<Vec<ReapOutcome>> {
        self.inner.reap_expired(now, max_stalls).await
    }
    async fn recover_holder(
        &self,
        holder: &str,
        now: Timestamp,
        max_stalls: u32,
    ) -> crate::Result<Vec<ReapOutcome>> {
        self.inner.recover_holder(holder, now, max_stalls).await
    }
}

#[tokio::test(start_paused = true)]
async fn late_heartbeats_do_not_let_the_servers_own_reaper_run_a_job_twice() {
    // Heartbeats every 10 s take 28 s to land; the 30 s lease would lapse at 30 s, before the first one
    // (sent at 10 s) is written at 38 s. The job runs for 100 s.
    let store = Arc::new(SlowHeartbeats {
        inner: MemoryStore::new(),
        delay: Duration::from_secs(28),
    });
    let provider = ScriptedProvider::new("gpu", 1, ok_script(Duration::from_secs(100)));
    let mut h = harness_with_store(store, vec![Arc::new(provider.clone())], config()).await;
    let job = h.dispatcher.submit(spec("alice")).await.unwrap();
    let seen = h.events_until_terminal(job.id).await;
    assert_eq!(
        names(&seen),
        [
            "queued",
            "dispatched",
            "started",
            "progress",
            "output",
            "succeeded"
        ],
        "{seen:?}"
    );
    assert_eq!(provider.submits(), [job.id], "the job ran once");
    let done = h.job(job.id).await;
    assert_eq!(
        (done.state, done.attempts, done.stalls),
        (JobState::Succeeded, 1, 0)
    );
}
