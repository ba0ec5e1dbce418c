//! What the instructor reads: every job in the order it will run, every user with today's usage, the
//! providers, the audit log, the day's queue depth and waits — each on its own route for scripts, and
//! all at once as the [`Dashboard`] the admin page shows (also live, see [`crate::admin::live`]).

use std::collections::{BTreeMap, HashSet};

use axum::Json;
use axum::extract::State;
use comfyume_core::{JobFilter, JobState, JobStatus, Timestamp, UserId, UserStats};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::admin::audit::{AuditEntry, RECENT};
use crate::admin::day::{History, Usage, period_start};
use crate::api::ApiQuery;
use crate::api::queue::policy_name;
use crate::api::views::{EstimateBasis, JobView, Positions, ProviderView, UserView};
use crate::auth::Admin;
use crate::error::{ApiError, ErrorBody};
use crate::state::AppState;

/// Most waiting and running jobs listed (the first ones to run); the rest are counted.
pub const MAX_ACTIVE: usize = 500;
/// Most waiting jobs read from the store per listing (older ones at the head of the queue are read one
/// by one).
const MAX_LISTED: usize = 2_000;
/// Most ended jobs listed.
const MAX_FINISHED: usize = 500;
/// Ended jobs on the dashboard.
const DASHBOARD_FINISHED: usize = 12;
/// Audit entries on the dashboard.
const DASHBOARD_AUDIT: usize = 30;

/// `GET /api/v1/admin/jobs` query.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct JobsQuery {
    /// How many recently ended jobs to add (default 20, at most 500).
    pub finished: Option<usize>,
}

/// Every unfinished job, first to run first, and the latest ended ones.
#[derive(Debug, Serialize, ToSchema)]
pub struct AdminJobs {
    /// Running and handed-out jobs, then waiting jobs in the order they will run (`position`), then
    /// waiting jobs held back (paused owner, waiting to retry). At most 500.
    pub jobs: Vec<JobView>,
    /// Unfinished jobs beyond those listed.
    pub more: usize,
    /// The latest ended jobs, newest first.
    pub finished: Vec<JobView>,
}

/// Every job with owner, state, position, waits and run times: running first, then waiting in run order.
#[utoipa::path(get, path = "/api/v1/admin/jobs", tag = "admin", params(JobsQuery),
    responses((status = 200, body = AdminJobs), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn jobs(
    State(state): State<AppState>,
    Admin(_): Admin,
    ApiQuery(q): ApiQuery<JobsQuery>,
) -> Result<Json<AdminJobs>, ApiError> {
    let finished = q.finished.unwrap_or(20);
    if finished > MAX_FINISHED {
        return Err(ApiError::bad_request(format!(
            "`finished` must be at most {MAX_FINISHED}"
        )));
    }
    Ok(Json(admin_jobs(&state, finished).await?))
}

/// The jobs the dashboard lists.
pub async fn admin_jobs(state: &AppState, finished: usize) -> Result<AdminJobs, ApiError> {
    let engine = state.engine();
    let list = |statuses: Vec<JobStatus>, limit: usize| JobFilter {
        owner: None,
        statuses,
        limit: Some(limit),
        offset: 0,
    };
    let mut active = engine
        .list(&list(vec![JobStatus::Leased, JobStatus::Running], MAX_LISTED))
        .await?;
    let mut queued = engine.list(&list(vec![JobStatus::Queued], MAX_LISTED)).await?;
    if queued.len() == MAX_LISTED {
        // Only the newest were read: make sure the head of the queue is there.
        let seen: HashSet<_> = queued.iter().map(|j| j.id).collect();
        for id in engine.queue_order(MAX_ACTIVE) {
            if !seen.contains(&id)
                && let Some(job) = engine.get(id).await?
            {
                queued.push(job);
            }
        }
    }
    let positions = Positions::current(state);
    let basis = EstimateBasis::current(state);
    active.sort_by_key(|j| (j.started_at.is_none(), j.started_at, j.created_at));
    let mut waiting: Vec<JobView> = queued
        .iter()
        .filter(|j| j.state == JobState::Queued)
        .map(|j| JobView::new(state, j, Some(&positions), &basis))
        .collect();
    waiting.sort_by_key(|v| (v.position.is_none(), v.position, v.timings.created_at));
    let unfinished = active.len() + engine.read_scheduler(|s| s.queued_len()).max(waiting.len());
    let mut jobs: Vec<JobView> = active
        .iter()
        .map(|j| JobView::new(state, j, None, &basis))
        .chain(waiting)
        .collect();
    jobs.truncate(MAX_ACTIVE);
    let finished = if finished == 0 {
        Vec::new()
    } else {
        let ended = vec![JobStatus::Succeeded, JobStatus::Failed, JobStatus::Cancelled];
        engine
            .list(&list(ended, finished))
            .await?
            .iter()
            .map(|j| JobView::new(state, j, None, &basis))
            .collect()
    };
    Ok(AdminJobs {
        more: unfinished.saturating_sub(jobs.len()),
        jobs,
        finished,
    })
}

/// `?since=` of the usage, history and dashboard routes.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PeriodQuery {
    /// Start of the period in ms since the Unix epoch (default: the start of today, in the server's
    /// time zone; at most 48 hours back).
    pub since: Option<u64>,
}

/// Every user's use of the GPUs in a period.
#[derive(Debug, Serialize, ToSchema)]
pub struct UsageReport {
    /// Start of the period (ms since the Unix epoch).
    pub since: u64,
    /// Its end: now.
    pub until: u64,
    /// Users with anything in the period, by name.
    pub users: Vec<Usage>,
}

/// Per-user usage (jobs, GPU-seconds, failures) for today, or since `since`.
#[utoipa::path(get, path = "/api/v1/admin/usage", tag = "admin", params(PeriodQuery),
    responses((status = 200, body = UsageReport), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn usage(
    State(state): State<AppState>,
    Admin(_): Admin,
    ApiQuery(q): ApiQuery<PeriodQuery>,
) -> Json<UsageReport> {
    let now = state.engine().clock().now();
    let since = period_start(q.since, now);
    Json(UsageReport {
        since: since.0,
        until: now.0,
        users: state.day_book().usage(since, now),
    })
}

/// Queue depth and waits over today (or since `since`), in buckets of whole minutes.
#[utoipa::path(get, path = "/api/v1/admin/history", tag = "admin", params(PeriodQuery),
    responses((status = 200, body = History), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn history(
    State(state): State<AppState>,
    Admin(_): Admin,
    ApiQuery(q): ApiQuery<PeriodQuery>,
) -> Json<History> {
    let now = state.engine().clock().now();
    Json(state.day_book().history(period_start(q.since, now), now))
}

/// `GET /api/v1/admin/audit` query.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// How many entries (default 100, at most 1000).
    pub limit: Option<usize>,
}

/// The audit log: every admin action, who and when, newest first.
#[utoipa::path(get, path = "/api/v1/admin/audit", tag = "admin", params(AuditQuery),
    responses((status = 200, body = Vec<AuditEntry>), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn audit(
    State(state): State<AppState>,
    Admin(_): Admin,
    ApiQuery(q): ApiQuery<AuditQuery>,
) -> Result<Json<Vec<AuditEntry>>, ApiError> {
    let limit = q.limit.unwrap_or(100);
    if limit == 0 || limit > RECENT {
        return Err(ApiError::bad_request(format!(
            "`limit` must be between 1 and {RECENT}"
        )));
    }
    Ok(Json(state.audit_log().recent(limit)))
}

/// Every user: who may log in, and who still has jobs or settings; with scheduler stats and `today`'s
/// usage (since `since`).
pub fn users_view(state: &AppState, since: Timestamp, now: Timestamp) -> Vec<UserView> {
    let usage: BTreeMap<String, Usage> = state
        .day_book()
        .usage(since, now)
        .into_iter()
        .map(|u| (u.user.clone(), u))
        .collect();
    let scheduled: BTreeMap<UserId, UserStats> =
        state.engine().read_scheduler(|s| s.users()).into_iter().collect();
    let mut names: Vec<UserId> = state.auth().users().into_iter().map(|p| p.user).collect();
    names.extend(scheduled.keys().cloned());
    names.extend(usage.keys().filter_map(|u| UserId::new(u).ok()));
    names.sort();
    names.dedup();
    let config = &state.config().scheduler;
    let idle = UserStats {
        weight: 1.0,
        caps: comfyume_core::UserCaps {
            max_queued: config.max_queued_per_user,
            max_running: config.max_running_per_user,
        },
        ..UserStats::default()
    };
    names
        .iter()
        .map(|user| {
            let mut view = UserView::new(user, scheduled.get(user).unwrap_or(&idle));
            view.today = Some(usage.get(user.as_str()).cloned().unwrap_or_else(|| Usage {
                user: user.to_string(),
                ..Usage::default()
            }));
            view
        })
        .collect()
}

/// The queue's state at a glance.
#[derive(Debug, Serialize, ToSchema)]
pub struct QueueSummary {
    /// An admin paused the whole queue.
    pub paused: bool,
    /// The policy in force.
    pub policy: String,
    /// Jobs waiting, all users.
    pub waiting: usize,
    /// Jobs running, all users.
    pub running: usize,
    /// Slots of usable, undrained providers.
    pub total_slots: usize,
    /// Of those, free now.
    pub free_slots: usize,
    /// Median run time of recent jobs, in milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub median_run_ms: Option<u64>,
}

/// Everything the admin page shows, in one answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct Dashboard {
    /// The server's clock now (ms since the Unix epoch): waits shown are counted from it.
    pub now: u64,
    /// The queue's state.
    pub queue: QueueSummary,
    /// Unfinished jobs in run order and the latest ended ones.
    pub jobs: AdminJobs,
    /// Every user with scheduler stats and usage since `history.since`.
    pub users: Vec<UserView>,
    /// Providers in the order they are offered jobs.
    pub providers: Vec<ProviderView>,
    /// The latest admin actions, newest first.
    pub audit: Vec<AuditEntry>,
    /// Queue depth and waits over the period (today by default).
    pub history: History,
}

impl Dashboard {
    /// The dashboard now, for the period starting at `since` (default: today).
    pub async fn build(state: &AppState, since: Option<u64>) -> Result<Self, ApiError> {
        let engine = state.engine();
        let now = engine.clock().now();
        let since = period_start(since, now);
        let jobs = admin_jobs(state, DASHBOARD_FINISHED).await?;
        let basis = EstimateBasis::current(state);
        let (paused, policy, waiting, running) =
            engine.read_scheduler(|s| (s.is_paused(), s.policy(), s.queued_len(), s.running_len()));
        Ok(Self {
            now: now.0,
            queue: QueueSummary {
                paused,
                policy: policy_name(policy),
                waiting,
                running,
                total_slots: basis.total_slots,
                free_slots: basis.free_slots,
                median_run_ms: basis.median_run_ms,
            },
            jobs,
            users: users_view(state, since, now),
            providers: engine
                .providers()
                .iter()
                .map(|p| ProviderView::new(p, true))
                .collect(),
            audit: state.audit_log().recent(DASHBOARD_AUDIT),
            history: state.day_book().history(since, now),
        })
    }
}

/// Everything the admin page shows: queue, jobs, users with today's usage, providers, audit log, charts.
#[utoipa::path(get, path = "/api/v1/admin/dashboard", tag = "admin", params(PeriodQuery),
    responses((status = 200, body = Dashboard), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn dashboard(
    State(state): State<AppState>,
    Admin(_): Admin,
    ApiQuery(q): ApiQuery<PeriodQuery>,
) -> Result<Json<Dashboard>, ApiError> {
    Ok(Json(Dashboard::build(&state, q.since).await?))
}
