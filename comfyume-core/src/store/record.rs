//! A job as a store keeps it (the [`Job`] plus its current lease), and the state transitions every store
//! applies to it.
//!
//! The rules of [`JobStore`](super::JobStore) live here once, as plain functions on a [`Record`], so the
//! in-memory store and the SQLite store cannot drift apart: each store only finds the record, applies a
//! transition and writes the record back in one atomic step. Every transition checks first and mutates
//! after, so an `Err` leaves the record exactly as it was.

use std::time::Duration;

use uuid::Uuid;

use super::{CancelOutcome, Lease, LeaseStatus, ReapOutcome};
use crate::error::{Error, Result};
use crate::job::{Failure, FailureKind, Job, JobId, JobSpec, JobState, Timestamp};
use crate::sink::OutputRef;

/// The lease a job is held under, kept beside the job (a [`Job`] has no lease field: tokens are for the
/// holder only, never shown to users).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct LeaseRecord {
    /// The random token the holder must present.
    pub(crate) token: Uuid,
    /// Who holds it.
    pub(crate) holder: String,
    /// When it lapses unless renewed.
    pub(crate) expires_at: Timestamp,
}

/// One job and its lease (`Some` exactly while the job is leased or running).
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Record {
    /// The job.
    pub(crate) job: Job,
    /// Its current lease.
    pub(crate) lease: Option<LeaseRecord>,
}

/// What [`Record::reap`] did, without the job (the caller pairs it with the written record).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Reaped {
    /// Back to the queue.
    Requeued,
    /// Failed for good after too many stalls.
    DeadLettered,
    /// Its pending cancellation took effect.
    Cancelled,
}

impl Reaped {
    /// The public outcome for the reaped job.
    pub(crate) fn outcome(self, job: Job) -> ReapOutcome {
        match self {
            Reaped::Requeued => ReapOutcome::Requeued(job),
            Reaped::DeadLettered => ReapOutcome::DeadLettered(job),
            Reaped::Cancelled => ReapOutcome::Cancelled(job),
        }
    }
}

/// What [`Record::cancel`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Cancelled {
    /// Queued → Cancelled.
    Now,
    /// Flagged for the holder.
    Requested,
    /// Already terminal; nothing changed.
    AlreadyFinished,
}

impl Cancelled {
    /// The public outcome for the job.
    pub(crate) fn outcome(self, job: Job) -> CancelOutcome {
        match self {
            Cancelled::Now => CancelOutcome::Cancelled(job),
            Cancelled::Requested => CancelOutcome::Requested(job),
            Cancelled::AlreadyFinished => CancelOutcome::AlreadyFinished(job),
        }
    }
}

impl Record {
    /// A freshly accepted job: queued, no attempts, no stalls.
    pub(crate) fn new(id: JobId, mut spec: JobSpec, seq: u64, now: Timestamp) -> Self {
        spec.id = Some(id);
        let job = Job {
            id,
            spec,
            state: JobState::Queued,
            seq,
            attempts: 0,
            stalls: 0,
            cancel_requested: false,
            not_before: None,
            provider: None,
            created_at: now,
            started_at: None,
            finished_at: None,
            outputs: Vec::new(),
        };
        Self { job, lease: None }
    }

    /// True when the job is leased or running and its lease lapsed before `now`.
    pub(crate) fn is_expired(&self, now: Timestamp) -> bool {
        self.is_held() && self.lease.as_ref().is_some_and(|l| l.expires_at < now)
    }

    fn is_held(&self) -> bool {
        matches!(self.job.state, JobState::Leased | JobState::Running)
    }

    /// Refuses unless the job is leased or running under exactly this lease's token.
    pub(crate) fn check(&self, lease: &Lease) -> Result<()> {
        let held_by_caller = self.is_held() && self.lease.as_ref().is_some_and(|l| l.token == lease.token);
        if held_by_caller {
            Ok(())
        } else {
            Err(Error::StaleLease(self.job.id))
        }
    }

    /// Queued → Leased: attempts + 1, a fresh token, `not_before` cleared.
    pub(crate) fn claim(
        &mut self,
        holder: &str,
        provider: &str,
        ttl: Duration,
        now: Timestamp,
    ) -> Result<Lease> {
        if self.job.state != JobState::Queued {
            return Err(Error::wrong_state(self.job.id, &self.job.state, "claim"));
        }
        let lease = LeaseRecord {
            token: Uuid::new_v4(),
            holder: holder.to_owned(),
            expires_at: now.plus(ttl),
        };
        self.job.state = JobState::Leased;
        self.job.attempts = self.job.attempts.saturating_add(1);
        self.job.provider = Some(provider.to_owned());
        self.job.not_before = None;
        self.job.cancel_requested = false;
        self.lease = Some(lease.clone());
        Ok(Lease {
            job_id: self.job.id,
            token: lease.token,
            holder: lease.holder,
            expires_at: lease.expires_at,
        })
    }

    /// Renews the lease (even one that lapsed but was not reaped yet).
    pub(crate) fn heartbeat(&mut self, lease: &Lease, ttl: Duration, now: Timestamp) -> Result<LeaseStatus> {
        self.check(lease)?;
        let expires_at = now.plus(ttl);
        if let Some(l) = self.lease.as_mut() {
            l.expires_at = expires_at;
        }
        Ok(LeaseStatus {
            expires_at,
            cancel_requested: self.job.cancel_requested,
        })
    }

    /// Leased → Running (a repeated report while running changes nothing).
    pub(crate) fn mark_running(&mut self, lease: &Lease, now: Timestamp) -> Result<()> {
        self.check(lease)?;
        if self.job.state == JobState::Leased {
            self.job.state = JobState::Running;
            self.job.started_at = Some(now);
        }
        Ok(())
    }

    /// Leased/Running → Succeeded with its outputs.
    pub(crate) fn complete(&mut self, lease: &Lease, outputs: Vec<OutputRef>, now: Timestamp) -> Result<()> {
        self.check(lease)?;
        self.job.outputs = outputs;
        self.finish(JobState::Succeeded, now);
        Ok(())
    }

    /// Leased/Running → Queued (not before `retry_at`) or → Failed.
    ///
    /// A retry of a job whose cancellation was requested ends it cancelled instead: running it again
    /// would undo the cancellation.
    pub(crate) fn fail(
        &mut self,
        lease: &Lease,
        failure: Failure,
        retry_at: Option<Timestamp>,
        now: Timestamp,
    ) -> Result<()> {
        self.check(lease)?;
        match retry_at {
            Some(_) if self.job.cancel_requested => {
                let reason = format!("cancelled; its attempt failed: {failure}");
                self.finish(JobState::Cancelled { reason }, now);
            }
            Some(t) => {
                self.requeue();
                self.job.not_before = Some(t);
            }
            None => self.finish(JobState::Failed { failure }, now),
        }
        Ok(())
    }

    /// Leased/Running → Cancelled, once the holder stopped the job.
    pub(crate) fn finish_cancelled(&mut self, lease: &Lease, reason: &str, now: Timestamp) -> Result<()> {
        self.check(lease)?;
        self.finish(
            JobState::Cancelled {
                reason: reason.to_owned(),
            },
            now,
        );
        Ok(())
    }

    /// Leased/Running → Queued, taking back the attempt the claim counted.
    ///
    /// A job whose cancellation was requested ends cancelled instead of going back to the queue.
    pub(crate) fn release(&mut self, lease: &Lease, now: Timestamp) -> Result<()> {
        self.check(lease)?;
        self.job.attempts = self.job.attempts.saturating_sub(1);
        if self.job.cancel_requested {
            let reason = "cancelled; its worker handed it back before it finished".to_owned();
            self.finish(JobState::Cancelled { reason }, now);
        } else {
            self.requeue();
        }
        Ok(())
    }

    /// Queued → Cancelled; Leased/Running → cancellation requested; terminal → unchanged.
    pub(crate) fn cancel(&mut self, reason: &str, now: Timestamp) -> Cancelled {
        match self.job.state {
            JobState::Queued => {
                self.finish(
                    JobState::Cancelled {
                        reason: reason.to_owned(),
                    },
                    now,
                );
                Cancelled::Now
            }
            JobState::Leased | JobState::Running => {
                self.job.cancel_requested = true;
                Cancelled::Requested
            }
            JobState::Succeeded | JobState::Failed { .. } | JobState::Cancelled { .. } => {
                Cancelled::AlreadyFinished
            }
        }
    }

    /// Queued → Failed, without a lease.
    pub(crate) fn fail_queued(&mut self, failure: Failure, now: Timestamp) -> Result<()> {
        if self.job.state != JobState::Queued {
            return Err(Error::wrong_state(self.job.id, &self.job.state, "fail_queued"));
        }
        self.finish(JobState::Failed { failure }, now);
        Ok(())
    }

    /// Changes the priority, in any state.
    pub(crate) fn set_priority(&mut self, priority: i32) {
        self.job.spec.priority = priority;
    }

    /// Deals with a lapsed lease: cancels (cancellation pending), dead-letters (`max_stalls` reached) or
    /// requeues. `None` when the lease has not lapsed before `now`; then nothing changed.
    pub(crate) fn reap(&mut self, now: Timestamp, max_stalls: u32) -> Option<Reaped> {
        if !self.is_expired(now) {
            return None;
        }
        Some(self.lapse(now, max_stalls))
    }

    /// Deals with a lease held by `holder` as if it had lapsed (see [`Record::reap`]): for a server that
    /// restarts under the same name, whose previous run cannot still be working. `None` when the job is
    /// not held by `holder`; then nothing changed.
    pub(crate) fn recover_from(&mut self, holder: &str, now: Timestamp, max_stalls: u32) -> Option<Reaped> {
        let held_by = self.is_held() && self.lease.as_ref().is_some_and(|l| l.holder == holder);
        held_by.then(|| self.lapse(now, max_stalls))
    }

    fn lapse(&mut self, now: Timestamp, max_stalls: u32) -> Reaped {
        if self.job.cancel_requested {
            let reason = "cancelled; its worker stopped responding".to_owned();
            self.finish(JobState::Cancelled { reason }, now);
            return Reaped::Cancelled;
        }
        self.job.stalls = self.job.stalls.saturating_add(1);
        if self.job.stalls >= max_stalls {
            let holder = self.lease.as_ref().map_or("?", |l| l.holder.as_str()).to_owned();
            let provider = self.job.provider.clone().unwrap_or_else(|| "?".to_owned());
            let message = format!(
                "gave up after {} stalls (dead letter): each time, the worker holding it stopped renewing its \
                 lease (last holder {holder}, provider {provider}; a crash, a hang or a network split), so \
                 the job may be what brings workers down",
                self.job.stalls
            );
            self.finish(
                JobState::Failed {
                    failure: Failure::new(FailureKind::LeaseExpired, message),
                },
                now,
            );
            Reaped::DeadLettered
        } else {
            self.requeue();
            Reaped::Requeued
        }
    }

    fn requeue(&mut self) {
        self.job.state = JobState::Queued;
        self.job.cancel_requested = false;
        self.lease = None;
    }

    fn finish(&mut self, state: JobState, now: Timestamp) {
        self.job.state = state;
        self.job.finished_at = Some(now);
        self.lease = None;
    }
}
