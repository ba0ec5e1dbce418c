//! The queue overview: how busy it is, where the caller's jobs are, and (for admins) the whole projected
//! order and every user's share.

use axum::Json;
use axum::extract::State;
use comfyume_core::{JobFilter, JobId, JobKey, JobStatus, Timestamp};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::ApiQuery;
use super::views::{Estimate, EstimateBasis, Positions, ProviderView, UserView};
use crate::auth::Principal;
use crate::error::{ApiError, ErrorBody};
use crate::state::AppState;

/// Most of the caller's waiting jobs listed.
const MAX_MINE: usize = 500;
/// Most entries of the projected order shown to admins.
const MAX_ORDER: usize = 1_000;

/// `GET /api/v1/queue` query.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct QueueQuery {
    /// Admins: how many entries of the projected order to show (default 100, at most 1000).
    pub limit: Option<usize>,
}

/// The queue as the caller may see it.
#[derive(Debug, Serialize, ToSchema)]
pub struct QueueOverview {
    /// An admin paused the whole queue (nothing starts until they resume it).
    pub paused: bool,
    /// The scheduling policy: `fifo`, `round_robin` or `priority`.
    pub policy: String,
    /// Jobs waiting, all users.
    pub waiting: usize,
    /// Jobs running, all users.
    pub running: usize,
    /// Slots of usable, undrained providers.
    pub total_slots: usize,
    /// Of those, free now.
    pub free_slots: usize,
    /// Median run time of recent jobs in milliseconds (absent until some job has run).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub median_run_ms: Option<u64>,
    /// The caller's waiting jobs, first to run first.
    pub mine: Vec<QueuedJobView>,
    /// Where jobs run.
    pub providers: Vec<ProviderView>,
    /// Admins: the projected dispatch order (first `limit`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub order: Option<Vec<OrderEntry>>,
    /// Admins: every user the scheduler knows.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub users: Option<Vec<UserView>>,
}

/// A waiting job of the caller.
#[derive(Debug, Serialize, ToSchema)]
pub struct QueuedJobView {
    /// The job.
    #[schema(value_type = String, format = Uuid)]
    pub job_id: JobId,
    /// Its 0-based place in the projected order (absent while held back).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub position: Option<usize>,
    /// When it may start.
    pub estimated_start: Estimate,
    /// Its priority tier.
    pub priority: i32,
    /// When it was accepted.
    #[schema(value_type = u64)]
    pub created_at: Timestamp,
}

/// One entry of the projected order.
#[derive(Debug, Serialize, ToSchema)]
pub struct OrderEntry {
    /// 0-based place.
    pub position: usize,
    /// The job.
    #[schema(value_type = String, format = Uuid)]
    pub job_id: JobId,
    /// Its owner.
    pub owner: String,
    /// Its priority tier.
    pub priority: i32,
}

/// The queue overview: totals, the caller's waiting jobs with positions and estimated starts, the
/// providers; admins also get the projected order and per-user stats.
#[utoipa::path(get, path = "/api/v1/queue", tag = "queue", params(QueueQuery),
    responses((status = 200, body = QueueOverview), (status = 400, body = ErrorBody)))]
pub async fn overview(
    State(state): State<AppState>,
    principal: Principal,
    ApiQuery(q): ApiQuery<QueueQuery>,
) -> Result<Json<QueueOverview>, ApiError> {
    let limit = q.limit.unwrap_or(100);
    if limit > MAX_ORDER {
        return Err(ApiError::bad_request(format!(
            "`limit` must be at most {MAX_ORDER}"
        )));
    }
    let engine = state.engine();
    let (paused, policy, waiting, running, users) = engine.read_scheduler(|s| {
        (
            s.is_paused(),
            s.policy(),
            s.queued_len(),
            s.running_len(),
            principal.admin.then(|| s.users()),
        )
    });
    let basis = EstimateBasis::current(&state);
    let positions = Positions::current(&state);
    let filter = JobFilter {
        owner: Some(principal.user.clone()),
        statuses: vec![JobStatus::Queued],
        limit: Some(MAX_MINE),
        offset: 0,
    };
    let mut mine: Vec<QueuedJobView> = engine
        .list(&filter)
        .await?
        .into_iter()
        .map(|job| {
            let position = positions.of(&state, JobKey::from(&job));
            QueuedJobView {
                job_id: job.id,
                position,
                estimated_start: basis.estimate(position, &job.spec.owner, job.not_before),
                priority: job.spec.priority,
                created_at: job.created_at,
            }
        })
        .collect();
    mine.sort_by_key(|j| (j.position.is_none(), j.position, j.created_at));
    let order = match principal.admin {
        true => Some(projected_order(&state, limit).await?),
        false => None,
    };
    Ok(Json(QueueOverview {
        paused,
        policy: policy_name(policy),
        waiting,
        running,
        total_slots: basis.total_slots,
        free_slots: basis.free_slots,
        median_run_ms: basis.median_run_ms,
        mine,
        providers: engine
            .providers()
            .iter()
            .map(|p| ProviderView::new(p, principal.admin))
            .collect(),
        order,
        users: users.map(|all| all.iter().map(|(u, s)| UserView::new(u, s)).collect()),
    }))
}

async fn projected_order(state: &AppState, limit: usize) -> Result<Vec<OrderEntry>, ApiError> {
    let mut out = Vec::new();
    for id in state.engine().queue_order(limit) {
        // A job dispatched or cancelled since the walk is simply left out.
        if let Some(job) = state.engine().get(id).await? {
            out.push(OrderEntry {
                position: out.len(),
                job_id: id,
                owner: job.spec.owner.to_string(),
                priority: job.spec.priority,
            });
        }
    }
    Ok(out)
}

/// A policy's name as configured (`fifo`, `round_robin`, `priority`).
pub fn policy_name(policy: comfyume_core::Policy) -> String {
    serde_json::to_value(policy)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}
