//! What the API sends back: jobs, outputs and estimates as a client sees them.
//!
//! These are the wire shapes of API v1 (and of the OpenAPI document's schemas); the engine's own types
//! stay free to change behind them.

use std::collections::{HashMap, HashSet};

use comfyume_core::{
    Failure, Health, Job, JobId, JobKey, JobState, OutputRef, ProviderStatus, Timestamp, UserId, UserStats,
};
use serde::Serialize;
use utoipa::ToSchema;

use crate::state::AppState;

/// A job as its owner (or an admin) sees it.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct JobView {
    /// The job id (a UUID; also its ComfyUI `prompt_id`).
    #[schema(value_type = String, format = Uuid)]
    pub id: JobId,
    /// Who submitted it.
    #[schema(value_type = String)]
    pub owner: String,
    /// `queued`, `leased` (handed to a provider, not started yet), `running`, `succeeded`, `failed` or
    /// `cancelled`.
    pub state: &'static str,
    /// Why it failed (state `failed`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure: Option<FailureView>,
    /// Who cancelled it, or why (state `cancelled`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cancel_reason: Option<String>,
    /// Cancellation was asked for while it ran; a `cancelled` event follows when the provider stopped.
    pub cancel_requested: bool,
    /// Its 0-based place in the projected dispatch order (queued jobs; absent while held back).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub position: Option<usize>,
    /// When it may start (queued jobs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub estimated_start: Option<Estimate>,
    /// Priority tier (higher runs first under the `priority` policy).
    pub priority: i32,
    /// The cost estimate it was submitted with, in GPU-seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cost: Option<f64>,
    /// How many times it was handed to a provider.
    pub attempts: u32,
    /// The provider that runs or ran it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// The ComfyUI client id it was submitted with.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// When things happened.
    pub timings: Timings,
    /// Stored outputs (once it succeeded), each with its download URL.
    pub outputs: Vec<OutputView>,
}

/// A job's times: milliseconds since the Unix epoch, durations in milliseconds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, ToSchema)]
pub struct Timings {
    /// When it was accepted.
    #[schema(value_type = u64)]
    pub created_at: Timestamp,
    /// When its (latest) attempt started running.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<u64>)]
    pub started_at: Option<Timestamp>,
    /// When it ended.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<u64>)]
    pub finished_at: Option<Timestamp>,
    /// Time from acceptance to start (so far, while it waits).
    pub waited_ms: u64,
    /// Time from start to end (so far, while it runs).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ran_ms: Option<u64>,
}

/// Why a job failed.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct FailureView {
    /// `validation` and `node_error` are the workflow's fault (never retried); `provider_unavailable`,
    /// `provider_error`, `queue_timeout`, `start_timeout`, `execution_timeout`, `lease_expired`,
    /// `storage_full` (the output disk is full; not retried) and `internal` are the infrastructure's.
    pub kind: String,
    /// What went wrong, for a person.
    pub message: String,
    /// The node that failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_id: Option<String>,
    /// The class of the node that failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_type: Option<String>,
    /// The provider's own error body (ComfyUI's `node_errors`, `execution_error`), unchanged.
    #[serde(skip_serializing_if = "serde_json::Value::is_null")]
    #[schema(value_type = Object)]
    pub details: serde_json::Value,
}

impl From<&Failure> for FailureView {
    fn from(f: &Failure) -> Self {
        Self {
            kind: failure_kind_name(f),
            message: f.message.clone(),
            node_id: f.node_id.clone(),
            node_type: f.node_type.clone(),
            details: f.details.clone(),
        }
    }
}

/// The snake_case name of a failure's kind (`node_error`, …).
pub fn failure_kind_name(f: &Failure) -> String {
    serde_json::to_value(f.kind)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| "unknown".to_string())
}

/// One stored output: a file, or a result that is not one (`value`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, ToSchema)]
pub struct OutputView {
    /// Its index in the job's outputs (the `{n}` of its URL).
    pub index: usize,
    /// File name.
    pub filename: String,
    /// Sub-directory (may be empty).
    pub subfolder: String,
    /// `output` or `temp` (a preview).
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// ComfyUI's media key (`images`, `gifs`, `audio`, …).
    pub media: String,
    /// The node that produced it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_id: Option<String>,
    /// MIME type.
    pub content_type: String,
    /// Size in bytes.
    pub size: u64,
    /// Where to download it (relative to the server).
    pub url: String,
    /// For a result that is not a file (a node's `text`, an `animated` flag, …): its value as the node
    /// reported it. It downloads from `url` too, as text or JSON.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub value: Option<serde_json::Value>,
}

impl OutputView {
    /// The view of output `index` of a job.
    pub fn new(index: usize, output: &OutputRef) -> Self {
        Self {
            index,
            filename: output.filename.clone(),
            subfolder: output.subfolder.clone(),
            kind: output.kind.as_str(),
            media: output.media.clone(),
            node_id: output.node_id.clone(),
            content_type: output.content_type.clone(),
            size: output.size,
            url: format!("/api/v1/jobs/{}/outputs/{index}", output.job_id),
            value: output.value.clone(),
        }
    }
}

/// When a waiting job may start.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, ToSchema)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Estimate {
    /// A rough estimate: its position ÷ the usable slots × the recent median run time.
    Estimated {
        /// Expected wait from now, in milliseconds.
        wait_ms: u64,
        /// Expected start, in milliseconds since the Unix epoch.
        start_at: u64,
    },
    /// No estimate can be made yet.
    Unknown {
        /// Why (no run-time history yet, no provider available).
        reason: String,
    },
    /// The job is held back: an admin paused the queue or its owner, or it waits to retry after a failed
    /// attempt.
    Held {
        /// Which.
        reason: String,
    },
}

/// What estimates are computed from, taken once per request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EstimateBasis {
    /// Median run time of recent jobs, in milliseconds.
    pub median_run_ms: Option<u64>,
    /// Slots of usable, undrained providers.
    pub total_slots: usize,
    /// Of those, the ones free now.
    pub free_slots: usize,
    /// The whole queue is paused.
    pub queue_paused: bool,
    /// Users an admin paused.
    pub paused_users: HashSet<UserId>,
    /// Now.
    pub now: Timestamp,
}

impl EstimateBasis {
    /// The basis as the engine stands now.
    pub fn current(state: &AppState) -> Self {
        let (mut total, mut busy) = (0, 0);
        for p in state.engine().providers() {
            if p.health.is_usable() && !p.draining {
                total += p.slots;
                busy += p.in_flight.min(p.slots);
            }
        }
        let (queue_paused, paused_users) = state
            .engine()
            .read_scheduler(|s| (s.is_paused(), s.paused_users().into_iter().collect()));
        Self {
            median_run_ms: state.metrics().median_run_ms(),
            total_slots: total,
            free_slots: total - busy,
            queue_paused,
            paused_users,
            now: state.engine().clock().now(),
        }
    }

    /// The estimate for a waiting job of `owner` at `position` (None: not in the dispatch order, because
    /// its owner is paused or it waits to retry until `not_before`).
    pub fn estimate(
        &self,
        position: Option<usize>,
        owner: &UserId,
        not_before: Option<Timestamp>,
    ) -> Estimate {
        if self.queue_paused {
            return Estimate::Held {
                reason: "the queue is paused by an admin".into(),
            };
        }
        let Some(position) = position else {
            let reason = if self.paused_users.contains(owner) {
                "this user's jobs are paused by an admin"
            } else if not_before.is_some_and(|t| t > self.now) {
                "it waits to retry after a failed attempt"
            } else {
                return Estimate::Unknown {
                    reason: "it is not in the dispatch order yet".into(),
                };
            };
            return Estimate::Held {
                reason: reason.into(),
            };
        };
        if self.total_slots == 0 {
            return Estimate::Unknown {
                reason: "no provider is available right now".into(),
            };
        }
        if position < self.free_slots {
            return Estimate::Estimated {
                wait_ms: 0,
                start_at: self.now.0,
            };
        }
        let Some(median) = self.median_run_ms else {
            return Estimate::Unknown {
                reason: "no run-time history yet".into(),
            };
        };
        let rounds = ((position - self.free_slots) / self.total_slots + 1) as u64;
        let wait_ms = rounds.saturating_mul(median);
        Estimate::Estimated {
            wait_ms,
            start_at: self.now.0.saturating_add(wait_ms),
        }
    }
}

/// Positions of waiting jobs, from one walk of the projected order.
#[derive(Clone, Debug, Default)]
pub struct Positions {
    by_id: HashMap<JobId, usize>,
    complete: bool,
}

/// How many jobs of the projected order one walk covers; later jobs are looked up one by one.
pub const POSITION_WINDOW: usize = 5_000;

impl Positions {
    /// Positions from the projected order `order`, which covered every waiting job if it is shorter than
    /// `window`.
    pub fn from_order(order: Vec<JobId>, window: usize) -> Self {
        let complete = order.len() < window;
        let by_id = order.into_iter().enumerate().map(|(i, id)| (id, i)).collect();
        Self { by_id, complete }
    }

    /// The engine's projected order now.
    pub fn current(state: &AppState) -> Self {
        Self::from_order(state.engine().queue_order(POSITION_WINDOW), POSITION_WINDOW)
    }

    /// The position of a waiting job (None: not waiting, or its owner is paused).
    pub fn of(&self, state: &AppState, key: JobKey) -> Option<usize> {
        match self.by_id.get(&key.id) {
            Some(&p) => Some(p),
            None if self.complete => None,
            None => state.engine().position(key),
        }
    }
}

impl JobView {
    /// The view of `job`; `positions` and `basis` fill in the position and estimate of a queued job.
    pub fn new(state: &AppState, job: &Job, positions: Option<&Positions>, basis: &EstimateBasis) -> Self {
        let (failure, cancel_reason) = match &job.state {
            JobState::Failed { failure } => (Some(FailureView::from(failure)), None),
            JobState::Cancelled { reason } => (None, Some(reason.clone())),
            _ => (None, None),
        };
        let (position, estimated_start) = if job.state == JobState::Queued {
            let position = match positions {
                Some(p) => p.of(state, JobKey::from(job)),
                None => state.engine().position(job),
            };
            let estimate = basis.estimate(position, &job.spec.owner, job.not_before);
            (position, Some(estimate))
        } else {
            (None, None)
        };
        let now = basis.now;
        let waited_until = job.started_at.or(job.finished_at).unwrap_or(now);
        let ran_ms = job
            .started_at
            .map(|s| millis(job.finished_at.unwrap_or(now).since(s)));
        Self {
            id: job.id,
            owner: job.spec.owner.to_string(),
            state: job.state.name(),
            failure,
            cancel_reason,
            cancel_requested: job.cancel_requested,
            position,
            estimated_start,
            priority: job.spec.priority,
            cost: job.spec.cost,
            attempts: job.attempts,
            provider: job.provider.clone(),
            client_id: job.spec.client_id.clone(),
            timings: Timings {
                created_at: job.created_at,
                started_at: job.started_at,
                finished_at: job.finished_at,
                waited_ms: millis(waited_until.since(job.created_at)),
                ran_ms,
            },
            outputs: job
                .outputs
                .iter()
                .enumerate()
                .map(|(i, o)| OutputView::new(i, o))
                .collect(),
        }
    }

    /// The view of one job, its position computed on its own.
    pub fn single(state: &AppState, job: &Job) -> Self {
        Self::new(state, job, None, &EstimateBasis::current(state))
    }
}

fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A provider's health.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, ToSchema)]
pub struct HealthView {
    /// `healthy`, `degraded` or `unavailable`.
    pub status: &'static str,
    /// What is wrong (admins only: it may name internal hosts).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A provider, as the queue overview and the admin page show it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, ToSchema)]
pub struct ProviderView {
    /// Its name.
    pub name: String,
    /// Its health at the last check.
    pub health: HealthView,
    /// `always_on` (a GPU box: never scales to zero), `warm` (a serverless replica answered recently),
    /// `starting` (a GPU is being started for a waiting job) or `cold` (scaled to zero: the next job waits
    /// for a GPU to start).
    #[schema(value_type = String, example = "warm")]
    pub warmth: &'static str,
    /// Jobs it can run at once.
    pub slots: usize,
    /// Jobs running on it now.
    pub in_flight: usize,
    /// An admin drains it: it takes no new jobs.
    pub draining: bool,
}

impl ProviderView {
    /// The view of a provider; `detail` includes the health reason.
    pub fn new(p: &ProviderStatus, detail: bool) -> Self {
        let (status, reason) = match &p.health {
            Health::Healthy => ("healthy", None),
            Health::Degraded { reason } => ("degraded", Some(reason.clone())),
            Health::Unavailable { reason } => ("unavailable", Some(reason.clone())),
        };
        Self {
            name: p.name.clone(),
            health: HealthView {
                status,
                reason: reason.filter(|_| detail),
            },
            warmth: p.warmth.as_str(),
            slots: p.slots,
            in_flight: p.in_flight,
            draining: p.draining,
        }
    }
}

/// What the scheduler knows about one user.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct UserView {
    /// The user.
    pub user: String,
    /// Jobs waiting.
    pub queued: usize,
    /// Jobs running.
    pub running: usize,
    /// Cost served so far (GPU-seconds when jobs carry estimates, else job counts).
    pub served_cost: f64,
    /// Fair-share weight (1 is normal; 2 gets twice the share).
    pub weight: f64,
    /// Paused by an admin.
    pub paused: bool,
    /// Most jobs they may have waiting (absent: no limit).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_queued: Option<usize>,
    /// Most jobs they may have running (absent: no limit).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_running: Option<usize>,
    /// Their use of the GPUs today (admin user lists).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub today: Option<crate::admin::day::Usage>,
}

impl UserView {
    /// The view of one user's scheduler record.
    pub fn new(user: &UserId, s: &UserStats) -> Self {
        Self {
            user: user.to_string(),
            queued: s.queued,
            running: s.running,
            served_cost: s.served_cost,
            weight: s.weight,
            paused: s.paused,
            max_queued: s.caps.max_queued,
            max_running: s.caps.max_running,
            today: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basis(total: usize, free: usize, median: Option<u64>) -> EstimateBasis {
        EstimateBasis {
            median_run_ms: median,
            total_slots: total,
            free_slots: free,
            queue_paused: false,
            paused_users: HashSet::new(),
            now: Timestamp(10_000),
        }
    }

    fn wait(e: Estimate) -> Option<u64> {
        match e {
            Estimate::Estimated { wait_ms, start_at } => {
                assert_eq!(start_at, 10_000 + wait_ms);
                Some(wait_ms)
            }
            _ => None,
        }
    }

    #[test]
    fn estimates_count_rounds_of_the_usable_slots() {
        let alice = UserId::new("alice").unwrap();
        let b = basis(2, 0, Some(1_000));
        let waits: Vec<_> = (0..5).map(|p| wait(b.estimate(Some(p), &alice, None))).collect();
        assert_eq!(
            waits,
            [Some(1_000), Some(1_000), Some(2_000), Some(2_000), Some(3_000)]
        );
        let b = basis(2, 1, None);
        assert_eq!(
            wait(b.estimate(Some(0), &alice, None)),
            Some(0),
            "a free slot needs no history"
        );
        assert!(
            matches!(b.estimate(Some(1), &alice, None), Estimate::Unknown { reason } if reason.contains("history"))
        );
        let b = basis(0, 0, Some(1_000));
        assert!(
            matches!(b.estimate(Some(0), &alice, None), Estimate::Unknown { reason } if reason.contains("provider"))
        );
    }

    #[test]
    fn held_jobs_say_what_holds_them() {
        let alice = UserId::new("alice").unwrap();
        let mut b = basis(1, 1, Some(5));
        let held = |e: Estimate| match e {
            Estimate::Held { reason } => reason,
            other => panic!("{other:?}"),
        };
        assert!(held(b.estimate(None, &alice, Some(Timestamp(20_000)))).contains("retry"));
        b.paused_users.insert(alice.clone());
        assert!(held(b.estimate(None, &alice, None)).contains("user"));
        b.queue_paused = true;
        assert!(held(b.estimate(Some(0), &alice, None)).contains("queue"));
    }
}
