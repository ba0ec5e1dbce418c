//! The in-memory job store: every rule of [`JobStore`], no durability.
//!
//! For tests, benches and programs that embed the scheduler and do not need jobs to survive a restart.
//! One `std::sync::Mutex` guards plain maps; it is held only for the few map operations of one call and
//! never across an `.await`, so it cannot block the runtime for long.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard};

use super::record::{self, Record};
use super::*;
use crate::error::Error;

/// Jobs in memory: for tests, benches and embedding. Lost when dropped.
#[derive(Debug, Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Every job with its lease.
    records: HashMap<JobId, Record>,
    /// Enqueue order of every job: `seq` → id, for `list`.
    by_seq: BTreeMap<u64, JobId>,
    /// The queued jobs by `seq`, for `queued`.
    queued: BTreeMap<u64, JobId>,
    /// The leased and running jobs by `seq`, for `reap_expired`.
    held: BTreeMap<u64, JobId>,
    /// The last `seq` handed out.
    last_seq: u64,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave a half-applied change: every transition checks
        // before it mutates, so the maps are consistent and the poison can be ignored.
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Applies `f` to the record of `id` under the lock and returns the job afterwards.
    fn update<T>(&self, id: JobId, f: impl FnOnce(&mut Record) -> Result<T>) -> Result<(T, Job)> {
        let mut guard = self.lock();
        let inner = &mut *guard;
        let record = inner.records.get_mut(&id).ok_or(Error::NotFound(id))?;
        let out = f(record)?;
        let job = record.job.clone();
        inner.reindex(&job);
        Ok((out, job))
    }
}

impl MemoryStore {
    /// Applies `lapse` to every held job in enqueue order and returns what it did.
    fn lapse_held(&self, mut lapse: impl FnMut(&mut Record) -> Option<record::Reaped>) -> Vec<ReapOutcome> {
        let mut guard = self.lock();
        let inner = &mut *guard;
        let held: Vec<JobId> = inner.held.values().copied().collect();
        let mut outcomes = Vec::new();
        for id in held {
            if let Some(record) = inner.records.get_mut(&id)
                && let Some(done) = lapse(record)
            {
                let job = record.job.clone();
                inner.reindex(&job);
                outcomes.push(done.outcome(job));
            }
        }
        outcomes
    }
}

impl Inner {
    /// Files the job under the index its state belongs to.
    fn reindex(&mut self, job: &Job) {
        self.queued.remove(&job.seq);
        self.held.remove(&job.seq);
        match job.state {
            JobState::Queued => {
                self.queued.insert(job.seq, job.id);
            }
            JobState::Leased | JobState::Running => {
                self.held.insert(job.seq, job.id);
            }
            JobState::Succeeded | JobState::Failed { .. } | JobState::Cancelled { .. } => {}
        }
    }
}

#[async_trait]
impl JobStore for MemoryStore {
    async fn enqueue(&self, spec: JobSpec, now: Timestamp) -> Result<(Job, bool)> {
        let id = spec.id.unwrap_or_default();
        let mut inner = self.lock();
        if let Some(existing) = inner.records.get(&id) {
            return if existing.job.spec.owner == spec.owner {
                Ok((existing.job.clone(), false))
            } else {
                Err(Error::InvalidInput("job id already in use".into()))
            };
        }
        inner.last_seq += 1;
        let seq = inner.last_seq;
        let record = Record::new(id, spec, seq, now);
        let job = record.job.clone();
        inner.records.insert(id, record);
        inner.by_seq.insert(seq, id);
        inner.queued.insert(seq, id);
        Ok((job, true))
    }

    async fn get(&self, id: JobId) -> Result<Option<Job>> {
        Ok(self.lock().records.get(&id).map(|r| r.job.clone()))
    }

    async fn list(&self, filter: &JobFilter) -> Result<Vec<Job>> {
        let inner = self.lock();
        let matching = inner
            .by_seq
            .values()
            .rev()
            .filter_map(|id| inner.records.get(id))
            .filter(|r| {
                filter.owner.as_ref().is_none_or(|o| &r.job.spec.owner == o)
                    && (filter.statuses.is_empty() || filter.statuses.contains(&JobStatus::of(&r.job.state)))
            });
        let page = matching
            .skip(filter.offset)
            .take(filter.limit.unwrap_or(usize::MAX));
        Ok(page.map(|r| r.job.clone()).collect())
    }

    async fn queued(&self) -> Result<Vec<Job>> {
        let inner = self.lock();
        Ok(inner
            .queued
            .values()
            .filter_map(|id| inner.records.get(id))
            .map(|r| r.job.clone())
            .collect())
    }

    async fn claim(
        &self,
        id: JobId,
        holder: &str,
        provider: &str,
        ttl: Duration,
        now: Timestamp,
    ) -> Result<(Job, Lease)> {
        let (lease, job) = self.update(id, |r| r.claim(holder, provider, ttl, now))?;
        Ok((job, lease))
    }

    async fn heartbeat(&self, lease: &Lease, ttl: Duration, now: Timestamp) -> Result<LeaseStatus> {
        Ok(self.update(lease.job_id, |r| r.heartbeat(lease, ttl, now))?.0)
    }

    async fn mark_running(&self, lease: &Lease, now: Timestamp) -> Result<Job> {
        Ok(self.update(lease.job_id, |r| r.mark_running(lease, now))?.1)
    }

    async fn complete(&self, lease: &Lease, outputs: Vec<OutputRef>, now: Timestamp) -> Result<Job> {
        Ok(self.update(lease.job_id, |r| r.complete(lease, outputs, now))?.1)
    }

    async fn fail(
        &self,
        lease: &Lease,
        failure: Failure,
        retry_at: Option<Timestamp>,
        now: Timestamp,
    ) -> Result<Job> {
        Ok(self
            .update(lease.job_id, |r| r.fail(lease, failure, retry_at, now))?
            .1)
    }

    async fn finish_cancelled(&self, lease: &Lease, reason: &str, now: Timestamp) -> Result<Job> {
        Ok(self
            .update(lease.job_id, |r| r.finish_cancelled(lease, reason, now))?
            .1)
    }

    async fn release(&self, lease: &Lease, now: Timestamp) -> Result<Job> {
        Ok(self.update(lease.job_id, |r| r.release(lease, now))?.1)
    }

    async fn cancel(&self, id: JobId, reason: &str, now: Timestamp) -> Result<CancelOutcome> {
        let (done, job) = self.update(id, |r| Ok(r.cancel(reason, now)))?;
        Ok(done.outcome(job))
    }

    async fn fail_queued(&self, id: JobId, failure: Failure, now: Timestamp) -> Result<Job> {
        Ok(self.update(id, |r| r.fail_queued(failure, now))?.1)
    }

    async fn set_priority(&self, id: JobId, priority: i32) -> Result<Job> {
        Ok(self
            .update(id, |r| {
                r.set_priority(priority);
                Ok(())
            })?
            .1)
    }

    async fn reap_expired(&self, now: Timestamp, max_stalls: u32) -> Result<Vec<ReapOutcome>> {
        Ok(self.lapse_held(|record| record.reap(now, max_stalls)))
    }

    async fn recover_holder(
        &self,
        holder: &str,
        now: Timestamp,
        max_stalls: u32,
    ) -> Result<Vec<ReapOutcome>> {
        Ok(self.lapse_held(|record| record.recover_from(holder, now, max_stalls)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    mod conformance {
        crate::job_store_conformance_tests!(|| (super::MemoryStore::new(), ()));
    }

    #[tokio::test]
    async fn run_all_passes_and_runs_every_check() {
        let made = std::sync::atomic::AtomicUsize::new(0);
        let failures = crate::store::conformance::run_all(|| {
            made.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            MemoryStore::new()
        })
        .await;
        assert!(failures.is_empty(), "{failures:#?}");
        assert_eq!(made.into_inner(), crate::store::conformance::CHECKS.len());
        assert!(crate::store::conformance::CHECKS.len() >= 20);
    }
}
