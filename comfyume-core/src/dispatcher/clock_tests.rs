//! The wall clock jumping while the server is down: a restarted engine whose clock reads an hour later,
//! or an hour earlier, than the times its store recorded. Every job still ends once, and none waits for
//! the size of the jump. Under paused tokio time, so waiting an hour would take no real time but would
//! show in the elapsed (virtual) time the tests check.
//!
//! A jump while the engine runs is not simulated here: the engine's [`Clock`](crate::Clock) reads the
//! wall clock only when it starts and then counts with the monotonic clock (see `clock.rs`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use crate::job::{Failure, FailureKind, JobSpec, JobState, Timestamp, UserId};
use crate::provider::{Capacity, InferenceProvider, ProviderError, ProviderEvent, ProviderEventStream};
use crate::sink::LocalDirSink;
use crate::store::{JobStore, MemoryStore};
use crate::{Dispatcher, DispatcherConfig, Job, JobId, SchedulerConfig};

const HOUR: Duration = Duration::from_secs(3600);

/// Finishes every job at once and counts the submits per job (a test helper, not a product).
#[derive(Default)]
struct Counter(Mutex<HashMap<JobId, usize>>);

#[async_trait]
impl InferenceProvider for Arc<Counter> {
    fn name(&self) -> &str {
        "gpu"
    }
    fn capacity(&self) -> Capacity {
        Capacity { slots: 2 }
    }
    async fn submit(&self, job: &Job) -> Result<ProviderEventStream, ProviderError> {
        *self.0.lock().unwrap().entry(job.id).or_default() += 1;
        Ok(Box::pin(futures::stream::iter([
            ProviderEvent::Started,
            ProviderEvent::Completed,
        ])))
    }
    async fn cancel(&self, _job: JobId) -> Result<(), ProviderError> {
        Ok(())
    }
}

/// What server "h" left in its store at `t0` when it went down: one job it was running, one waiting out
/// a retry backoff (2 s), one queued.
async fn left_at(t0: Timestamp) -> (Arc<MemoryStore>, [JobId; 3]) {
    let store = Arc::new(MemoryStore::new());
    let spec = || JobSpec::new(UserId::new("alice").unwrap(), serde_json::json!({}));
    let ttl = Duration::from_secs(30);
    let (running, _) = store.enqueue(spec(), t0).await.unwrap();
    let (_, lease) = store.claim(running.id, "h", "gpu", ttl, t0).await.unwrap();
    store.mark_running(&lease, t0).await.unwrap();
    let (retrying, _) = store.enqueue(spec(), t0).await.unwrap();
    let (_, lease) = store.claim(retrying.id, "h", "gpu", ttl, t0).await.unwrap();
    let failure = Failure::new(FailureKind::ProviderUnavailable, "the GPU went away");
    let retry_at = t0.plus(Duration::from_secs(2));
    store.fail(&lease, failure, Some(retry_at), t0).await.unwrap();
    let (queued, _) = store.enqueue(spec(), t0).await.unwrap();
    (store, [running.id, retrying.id, queued.id])
}

/// Restarts server "h" over `store` with its clock reading `clock_start`; waits until every job in
/// `ids` ended, and returns them with the (virtual) time that took and the provider's submit counts.
async fn restart(
    store: Arc<MemoryStore>,
    clock_start: Timestamp,
    ids: &[JobId],
) -> (Vec<Job>, Duration, HashMap<JobId, usize>) {
    let dir = tempfile::tempdir().unwrap();
    let gpu = Arc::new(Counter::default());
    let config = DispatcherConfig {
        holder: "h".into(),
        clock_start: Some(clock_start),
        ..DispatcherConfig::default()
    };
    let engine = Dispatcher::new(
        store,
        Arc::new(LocalDirSink::new(dir.path())),
        vec![Arc::new(Arc::clone(&gpu))],
        SchedulerConfig::default(),
        config,
    );
    let started = Instant::now();
    engine.start().await.unwrap();
    let mut jobs = Vec::new();
    for id in ids {
        loop {
            let job = engine.get(*id).await.unwrap().unwrap();
            if job.state.is_terminal() {
                jobs.push(job);
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let took = started.elapsed();
    engine.shutdown(Duration::from_secs(1)).await;
    let submits = gpu.0.lock().unwrap().clone();
    (jobs, took, submits)
}

async fn every_job_runs_once_and_soon(jump_forward: bool) {
    let t0 = Timestamp::now();
    let (store, ids) = left_at(t0).await;
    let clock_start = if jump_forward {
        t0.plus(HOUR)
    } else {
        Timestamp(t0.0 - HOUR.as_millis() as u64)
    };
    let (jobs, took, submits) = restart(store, clock_start, &ids).await;
    for job in &jobs {
        assert_eq!(job.state, JobState::Succeeded, "{job:?}");
        assert_eq!(submits.get(&job.id), Some(&1), "run once: {submits:?}");
    }
    // Nothing waits for the jump: at most the longest retry backoff (60 s) and a few dispatch rounds.
    let limit = DispatcherConfig::default().backoff_max + Duration::from_secs(10);
    assert!(took <= limit, "the jobs took {took:?} to end");
}

#[tokio::test(start_paused = true)]
async fn a_clock_set_an_hour_ahead_while_down_runs_every_job_once() {
    every_job_runs_once_and_soon(true).await;
}

#[tokio::test(start_paused = true)]
async fn a_clock_set_an_hour_back_while_down_runs_every_job_once_without_waiting_the_hour() {
    every_job_runs_once_and_soon(false).await;
}
