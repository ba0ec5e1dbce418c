//! The durable queue: where every accepted job lives until it ends.
//!
//! [`JobStore`] is the contract; [`MemoryStore`] keeps jobs in memory (tests, benches, embedding) and
//! [`SqliteStore`] (feature `sqlite`, on by default) keeps them in one SQLite file, the default for a single
//! server. `RedisStore` (feature `redis`) keeps them in one Redis shared by several servers. All of them
//! pass the same conformance suite ([`conformance`]).
//!
//! Every method is one atomic state change: it happens whole or not at all, and its result says which.
//! Claims are leases with a random token and an expiry; a holder renews with [`JobStore::heartbeat`];
//! every later step of the holder presents the [`Lease`] and is refused with
//! [`Error::StaleLease`](crate::Error::StaleLease) once the lease has moved on, so a stale worker's
//! late acknowledgement changes nothing. Methods take `now` from the caller so that one clock (which tests
//! can pause) rules every deadline.

use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::Result;
use crate::job::{Failure, Job, JobId, JobSpec, JobState, Timestamp, UserId};
use crate::scheduler::JobKey;
use crate::sink::OutputRef;

pub mod conformance;
mod memory;
mod record;
#[cfg(feature = "redis")]
mod redis_store;
#[cfg(feature = "sqlite")]
mod sqlite;

pub use memory::MemoryStore;
#[cfg(feature = "redis")]
pub use redis_store::{RedisOptions, RedisStore};
#[cfg(feature = "sqlite")]
pub use sqlite::{SqliteBlocking, SqliteOptions, SqliteStore, Synchronous};

/// Proof that a worker holds a job. Present it to every later step of that job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// The leased job.
    pub job_id: JobId,
    /// A random token, new on every claim.
    pub token: Uuid,
    /// Who holds it (a server instance name), for operators.
    pub holder: String,
    /// When it lapses unless renewed.
    pub expires_at: Timestamp,
}

/// What a heartbeat learns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseStatus {
    /// The renewed expiry.
    pub expires_at: Timestamp,
    /// Someone asked to cancel the job: the holder should stop it and call
    /// [`JobStore::finish_cancelled`].
    pub cancel_requested: bool,
}

/// The result of [`JobStore::cancel`].
#[derive(Clone, Debug, PartialEq)]
pub enum CancelOutcome {
    /// The job was queued and is now cancelled (terminal).
    Cancelled(Job),
    /// The job is leased or running; cancellation is flagged for its holder.
    Requested(Job),
    /// The job had already ended; nothing changed.
    AlreadyFinished(Job),
}

/// What the reaper did with one expired lease.
#[derive(Clone, Debug, PartialEq)]
pub enum ReapOutcome {
    /// Back in the queue (its stall counter went up).
    Requeued(Job),
    /// Stalled too often: failed for good, with the reason.
    DeadLettered(Job),
    /// Its cancellation had been requested: now cancelled.
    Cancelled(Job),
}

/// The coarse state of a job, for filtering.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    /// See [`JobState::Queued`].
    Queued,
    /// See [`JobState::Leased`].
    Leased,
    /// See [`JobState::Running`].
    Running,
    /// See [`JobState::Succeeded`].
    Succeeded,
    /// See [`JobState::Failed`].
    Failed,
    /// See [`JobState::Cancelled`].
    Cancelled,
}

impl JobStatus {
    /// The status of a state.
    pub fn of(state: &JobState) -> Self {
        match state {
            JobState::Queued => JobStatus::Queued,
            JobState::Leased => JobStatus::Leased,
            JobState::Running => JobStatus::Running,
            JobState::Succeeded => JobStatus::Succeeded,
            JobState::Failed { .. } => JobStatus::Failed,
            JobState::Cancelled { .. } => JobStatus::Cancelled,
        }
    }

    /// Its name, as used in JSON and SQL.
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Leased => "leased",
            JobStatus::Running => "running",
            JobStatus::Succeeded => "succeeded",
            JobStatus::Failed => "failed",
            JobStatus::Cancelled => "cancelled",
        }
    }
}

/// Which jobs [`JobStore::list`] returns: newest first, all conditions combined.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct JobFilter {
    /// Only this user's jobs.
    pub owner: Option<UserId>,
    /// Only jobs in one of these states (empty: any).
    pub statuses: Vec<JobStatus>,
    /// At most this many (None: all).
    pub limit: Option<usize>,
    /// Skip this many first (for paging).
    pub offset: usize,
}

/// The durable queue. See the [module docs](self) for the rules every implementation keeps.
#[async_trait]
pub trait JobStore: Send + Sync {
    /// Accepts a job, durably, before returning. Idempotent by `spec.id`: enqueuing an id that exists
    /// returns the existing job and `false` (an id owned by another user is refused as invalid input).
    async fn enqueue(&self, spec: JobSpec, now: Timestamp) -> Result<(Job, bool)>;

    /// One job by id.
    async fn get(&self, id: JobId) -> Result<Option<Job>>;

    /// Jobs matching a filter, newest first.
    async fn list(&self, filter: &JobFilter) -> Result<Vec<Job>>;

    /// Every queued job, oldest first (by `seq`): how a scheduler is rebuilt at start-up.
    async fn queued(&self) -> Result<Vec<Job>>;

    /// The id and enqueue number of every queued job, oldest first: what a server following a queue
    /// shared with other servers reads often ([`DispatcherConfig::follow_shared_queue`]), so stores
    /// whose `queued` is costly answer it without reading whole jobs.
    ///
    /// [`DispatcherConfig::follow_shared_queue`]: crate::DispatcherConfig::follow_shared_queue
    async fn queued_keys(&self) -> Result<Vec<JobKey>> {
        Ok(self.queued().await?.iter().map(JobKey::from).collect())
    }

    /// Leases a queued job: Queued → Leased, `attempts` + 1, a fresh token. Fails with `WrongState` if the
    /// job is not queued (cancelled meanwhile, leased by another server).
    async fn claim(
        &self,
        id: JobId,
        holder: &str,
        provider: &str,
        ttl: Duration,
        now: Timestamp,
    ) -> Result<(Job, Lease)>;

    /// Renews a lease for `ttl` from `now`; tells the holder whether cancellation was requested.
    async fn heartbeat(&self, lease: &Lease, ttl: Duration, now: Timestamp) -> Result<LeaseStatus>;

    /// Leased → Running, when the provider reports the start.
    async fn mark_running(&self, lease: &Lease, now: Timestamp) -> Result<Job>;

    /// Leased/Running → Succeeded with its stored outputs.
    async fn complete(&self, lease: &Lease, outputs: Vec<OutputRef>, now: Timestamp) -> Result<Job>;

    /// Leased/Running → Queued again (not before `retry_at`) when `retry_at` is given, else → Failed.
    async fn fail(
        &self,
        lease: &Lease,
        failure: Failure,
        retry_at: Option<Timestamp>,
        now: Timestamp,
    ) -> Result<Job>;

    /// Leased/Running → Cancelled, once the holder has stopped a job whose cancellation was requested.
    async fn finish_cancelled(&self, lease: &Lease, reason: &str, now: Timestamp) -> Result<Job>;

    /// Leased/Running → Queued without counting the attempt: a shutting-down server hands a job back.
    async fn release(&self, lease: &Lease, now: Timestamp) -> Result<Job>;

    /// Cancels a job: a queued one at once, a leased/running one by flagging its holder.
    async fn cancel(&self, id: JobId, reason: &str, now: Timestamp) -> Result<CancelOutcome>;

    /// Queued → Failed without a lease (a queue-wait timeout, a job no provider can run).
    async fn fail_queued(&self, id: JobId, failure: Failure, now: Timestamp) -> Result<Job>;

    /// Changes a job's priority (any state; it matters while queued).
    async fn set_priority(&self, id: JobId, priority: i32) -> Result<Job>;

    /// Requeues every job whose lease expired before `now` (stall counter + 1), dead-letters the ones that
    /// reach `max_stalls`, and cancels those whose cancellation was pending.
    async fn reap_expired(&self, now: Timestamp, max_stalls: u32) -> Result<Vec<ReapOutcome>>;

    /// Treats every lease held by `holder` as lapsed now, exactly as [`JobStore::reap_expired`] would
    /// once they expire. For a server that restarts under the same holder name after a crash: its
    /// previous run cannot still be working, so its jobs need not wait out their leases.
    async fn recover_holder(&self, holder: &str, now: Timestamp, max_stalls: u32)
    -> Result<Vec<ReapOutcome>>;
}
