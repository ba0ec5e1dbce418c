//! The fair scheduler: decides which queued job runs next.
//!
//! SKELETON: the public API below is the contract; bodies are being implemented.

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::job::{JobId, UserId};

/// How the next job is chosen.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    /// First come, first served, across all users.
    Fifo,
    /// Fair share per user (start-time fair queuing over cost / weight).
    #[default]
    RoundRobin,
    /// Strict priority tiers (higher first), fair share per user inside a tier.
    Priority,
}

/// Per-user limits. `None` means no limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserCaps {
    /// Most jobs a user may have waiting.
    pub max_queued: Option<usize>,
    /// Most jobs a user may have running at once.
    pub max_running: Option<usize>,
}

/// Scheduler settings.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SchedulerConfig {
    /// The policy.
    pub policy: Policy,
    /// Caps for users without their own.
    pub default_caps: UserCaps,
}

/// A job as the scheduler sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct QueuedJob {
    /// The job.
    pub id: JobId,
    /// Its owner.
    pub owner: UserId,
    /// Its priority tier.
    pub priority: i32,
    /// Its estimated cost (GPU-seconds, or 1.0).
    pub cost: f64,
    /// Its enqueue order.
    pub seq: u64,
}

/// What the scheduler knows about one user.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct UserStats {
    /// Jobs waiting.
    pub queued: usize,
    /// Jobs handed out and not completed.
    pub running: usize,
    /// Cost served so far (estimates, corrected on completion).
    pub served_cost: f64,
    /// Fair-share weight.
    pub weight: f64,
    /// Paused by an admin.
    pub paused: bool,
    /// The user's caps in force.
    pub caps: UserCaps,
}

/// The scheduler.
#[derive(Debug)]
pub struct Scheduler {
    _config: SchedulerConfig,
}

#[allow(unused_variables, clippy::todo, missing_docs)]
impl Scheduler {
    pub fn new(config: SchedulerConfig) -> Self {
        Self { _config: config }
    }
    pub fn policy(&self) -> Policy {
        todo!()
    }
    pub fn set_policy(&mut self, policy: Policy) {
        todo!()
    }
    pub fn push(&mut self, job: QueuedJob) -> Result<()> {
        todo!()
    }
    pub fn pop(&mut self) -> Option<QueuedJob> {
        todo!()
    }
    pub fn complete(&mut self, id: JobId, actual_cost: Option<f64>) -> bool {
        todo!()
    }
    pub fn remove(&mut self, id: JobId) -> Option<QueuedJob> {
        todo!()
    }
    pub fn contains(&self, id: JobId) -> bool {
        todo!()
    }
    pub fn move_to_front(&mut self, id: JobId) -> bool {
        todo!()
    }
    pub fn set_priority(&mut self, id: JobId, priority: i32) -> bool {
        todo!()
    }
    pub fn set_user_weight(&mut self, user: &UserId, weight: f64) -> Result<()> {
        todo!()
    }
    pub fn set_user_caps(&mut self, user: &UserId, caps: UserCaps) {
        todo!()
    }
    pub fn pause_user(&mut self, user: &UserId) {
        todo!()
    }
    pub fn resume_user(&mut self, user: &UserId) {
        todo!()
    }
    pub fn pause_all(&mut self) {
        todo!()
    }
    pub fn resume_all(&mut self) {
        todo!()
    }
    pub fn is_paused(&self) -> bool {
        todo!()
    }
    pub fn queued_len(&self) -> usize {
        todo!()
    }
    pub fn running_len(&self) -> usize {
        todo!()
    }
    pub fn user_stats(&self, user: &UserId) -> Option<UserStats> {
        todo!()
    }
    pub fn users(&self) -> Vec<(UserId, UserStats)> {
        todo!()
    }
    pub fn order(&self, limit: usize) -> Vec<JobId> {
        todo!()
    }
    pub fn position(&self, id: JobId) -> Option<usize> {
        todo!()
    }
}
