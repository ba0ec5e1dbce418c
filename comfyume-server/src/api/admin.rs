//! The instructor's overrides: pause and resume the queue or a user, reorder, reprioritise, weigh and cap
//! users, switch the policy, drain providers.
//!
//! Standing overrides (pauses, weights, caps, the policy, drains, the provider order) are saved in the
//! data directory and hold after a restart (see [`crate::overrides`]); job priorities are stored with the
//! job; moves to the front live in the running server's memory only.
//!
//! Every action is recorded in the audit log ([`crate::admin::audit`]) with who took it; each handler
//! checks its input, makes one engine call, records itself and answers. What the instructor reads (jobs
//! in run order, usage, history, the dashboard) is in [`overview`]; cancelling a user's jobs and the
//! provider order in [`control`].

pub mod control;
pub mod overview;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use comfyume_core::{JobKey, Policy, UserCaps};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::json;
use utoipa::ToSchema;

use super::queue::policy_name;
use super::views::{JobView, ProviderView, UserView};
use super::{ApiPath, parse_job_id, parse_user};
use crate::auth::Admin;
use crate::error::{ApiError, ErrorBody};
use crate::extract::JsonBody;
use crate::state::AppState;

/// The queue's pause state and policy after an override.
#[derive(Debug, Serialize, ToSchema)]
pub struct QueueState {
    /// Paused: nothing starts.
    pub paused: bool,
    /// The policy in force.
    pub policy: String,
}

fn queue_state(state: &AppState) -> QueueState {
    let (paused, policy) = state.engine().read_scheduler(|s| (s.is_paused(), s.policy()));
    QueueState {
        paused,
        policy: policy_name(policy),
    }
}

/// Pauses the whole queue: running jobs go on, nothing new starts.
#[utoipa::path(post, path = "/api/v1/admin/queue/pause", tag = "admin",
    responses((status = 200, body = QueueState), (status = 403, body = ErrorBody)))]
pub async fn pause_queue(State(state): State<AppState>, Admin(who): Admin) -> Json<QueueState> {
    state.engine().with_scheduler(|s| s.pause_all());
    state
        .audit(&who, "pause_queue", None, json!(null), "paused the queue".into())
        .await;
    state.overrides_changed().await;
    Json(queue_state(&state))
}

/// Resumes the whole queue.
#[utoipa::path(post, path = "/api/v1/admin/queue/resume", tag = "admin",
    responses((status = 200, body = QueueState), (status = 403, body = ErrorBody)))]
pub async fn resume_queue(State(state): State<AppState>, Admin(who): Admin) -> Json<QueueState> {
    state.engine().with_scheduler(|s| s.resume_all());
    state
        .audit(
            &who,
            "resume_queue",
            None,
            json!(null),
            "resumed the queue".into(),
        )
        .await;
    state.overrides_changed().await;
    Json(queue_state(&state))
}

/// `PUT /api/v1/admin/queue/policy` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicyRequest {
    /// `fifo`, `round_robin` or `priority`.
    #[schema(value_type = String)]
    pub policy: Policy,
}

/// Switches the scheduling policy; waiting jobs are re-ordered under the new one.
#[utoipa::path(put, path = "/api/v1/admin/queue/policy", tag = "admin", request_body = PolicyRequest,
    responses((status = 200, body = QueueState), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn set_policy(
    State(state): State<AppState>,
    Admin(who): Admin,
    JsonBody(req): JsonBody<PolicyRequest>,
) -> Json<QueueState> {
    state.engine().with_scheduler(|s| s.set_policy(req.policy));
    let name = policy_name(req.policy);
    let text = format!("switched the policy to {name}");
    state
        .audit(&who, "set_policy", None, json!({"policy": name}), text)
        .await;
    state.overrides_changed().await;
    Json(queue_state(&state))
}

/// Moves a waiting job ahead of every other (the latest move goes first).
#[utoipa::path(post, path = "/api/v1/admin/jobs/{id}/front", tag = "admin",
    params(("id" = String, Path, description = "job id (UUID)")),
    responses((status = 200, body = JobView), (status = 404, body = ErrorBody),
        (status = 409, description = "the job is not waiting", body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn move_to_front(
    State(state): State<AppState>,
    Admin(who): Admin,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<JobView>, ApiError> {
    let id = parse_job_id(&id)?;
    let job = super::visible_job(&state, &who, id).await?;
    if !state
        .engine()
        .with_scheduler(|s| s.move_to_front(JobKey::from(&job)))
    {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            format!("job {id} is {}, not waiting", job.state.name()),
        ));
    }
    let owner = &job.spec.owner;
    let text = format!("moved {owner}'s job {} to the front", short(id));
    let detail = json!({"owner": owner});
    state
        .audit(&who, "move_to_front", Some(id.to_string()), detail, text)
        .await;
    state.queue_changed();
    Ok(Json(JobView::single(&state, &job)))
}

/// `POST /api/v1/admin/jobs/{id}/priority` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PriorityRequest {
    /// The new priority tier (higher runs first under the `priority` policy).
    pub priority: i32,
}

/// Sets a job's priority tier.
#[utoipa::path(post, path = "/api/v1/admin/jobs/{id}/priority", tag = "admin", request_body = PriorityRequest,
    params(("id" = String, Path, description = "job id (UUID)")),
    responses((status = 200, body = JobView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 403, body = ErrorBody)))]
pub async fn set_priority(
    State(state): State<AppState>,
    Admin(who): Admin,
    ApiPath(id): ApiPath<String>,
    JsonBody(req): JsonBody<PriorityRequest>,
) -> Result<Json<JobView>, ApiError> {
    let id = parse_job_id(&id)?;
    super::visible_job(&state, &who, id).await?;
    let job = state.engine().set_priority(id, req.priority).await?;
    let owner = &job.spec.owner;
    let text = format!(
        "set the priority of {owner}'s job {} to {}",
        short(id),
        req.priority
    );
    let detail = json!({"owner": owner, "priority": req.priority});
    state
        .audit(&who, "set_priority", Some(id.to_string()), detail, text)
        .await;
    state.queue_changed();
    Ok(Json(JobView::single(&state, &job)))
}

fn user_view(state: &AppState, user: &comfyume_core::UserId) -> UserView {
    let stats = state
        .engine()
        .read_scheduler(|s| s.user_stats(user))
        .unwrap_or_default();
    UserView::new(user, &stats)
}

/// Every user (who may log in, or still has jobs or settings): waiting and running jobs, share served,
/// weight, pause, caps, and `today`'s usage (jobs, GPU-seconds, failures since the start of the day).
#[utoipa::path(get, path = "/api/v1/admin/users", tag = "admin",
    responses((status = 200, body = Vec<UserView>), (status = 403, body = ErrorBody)))]
pub async fn users(State(state): State<AppState>, Admin(_): Admin) -> Json<Vec<UserView>> {
    let now = state.engine().clock().now();
    let since = crate::admin::day::period_start(None, now);
    Json(overview::users_view(&state, since, now))
}

/// The first characters of a job id, as people read it.
fn short(id: comfyume_core::JobId) -> String {
    id.to_string().chars().take(8).collect()
}

/// Holds back a user's waiting jobs (their running jobs go on).
#[utoipa::path(post, path = "/api/v1/admin/users/{user}/pause", tag = "admin",
    params(("user" = String, Path, description = "user name")),
    responses((status = 200, body = UserView), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn pause_user(
    State(state): State<AppState>,
    Admin(who): Admin,
    ApiPath(user): ApiPath<String>,
) -> Result<Json<UserView>, ApiError> {
    let user = known_user(&state, &user)?;
    state.engine().with_scheduler(|s| s.pause_user(&user));
    let text = format!("paused {user}");
    state
        .audit(&who, "pause_user", Some(user.to_string()), json!(null), text)
        .await;
    state.overrides_changed().await;
    Ok(Json(user_view(&state, &user)))
}

/// Lets a paused user's jobs run again.
#[utoipa::path(post, path = "/api/v1/admin/users/{user}/resume", tag = "admin",
    params(("user" = String, Path, description = "user name")),
    responses((status = 200, body = UserView), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn resume_user(
    State(state): State<AppState>,
    Admin(who): Admin,
    ApiPath(user): ApiPath<String>,
) -> Result<Json<UserView>, ApiError> {
    let user = known_user(&state, &user)?;
    state.engine().with_scheduler(|s| s.resume_user(&user));
    let text = format!("resumed {user}");
    state
        .audit(&who, "resume_user", Some(user.to_string()), json!(null), text)
        .await;
    state.overrides_changed().await;
    Ok(Json(user_view(&state, &user)))
}

/// `PUT /api/v1/admin/users/{user}/weight` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WeightRequest {
    /// Fair-share weight: positive; 1 is normal, 2 gets twice the share.
    pub weight: f64,
}

/// Sets a user's fair-share weight.
#[utoipa::path(put, path = "/api/v1/admin/users/{user}/weight", tag = "admin", request_body = WeightRequest,
    params(("user" = String, Path, description = "user name")),
    responses((status = 200, body = UserView), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn set_weight(
    State(state): State<AppState>,
    Admin(who): Admin,
    ApiPath(user): ApiPath<String>,
    JsonBody(req): JsonBody<WeightRequest>,
) -> Result<Json<UserView>, ApiError> {
    let user = known_user(&state, &user)?;
    if !(req.weight.is_finite() && req.weight > 0.0 && req.weight <= 1_000.0) {
        return Err(ApiError::bad_request(format!(
            "`weight` must be above 0 and at most 1000, got {}",
            req.weight
        )));
    }
    state
        .engine()
        .with_scheduler(|s| s.set_user_weight(&user, req.weight))?;
    let text = format!("set {user}'s weight to {}", req.weight);
    let detail = json!({"weight": req.weight});
    state
        .audit(&who, "set_weight", Some(user.to_string()), detail, text)
        .await;
    state.overrides_changed().await;
    Ok(Json(user_view(&state, &user)))
}

/// `PUT /api/v1/admin/users/{user}/caps` body. A field left out keeps its current value; `null` means
/// no limit.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CapsRequest {
    /// Most jobs the user may have waiting.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<usize>)]
    pub max_queued: Option<Option<usize>>,
    /// Most jobs the user may have running at once.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<usize>)]
    pub max_running: Option<Option<usize>>,
}

/// Tells a field that is present (even as `null`) from one left out.
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

/// Sets a user's caps on waiting and running jobs.
#[utoipa::path(put, path = "/api/v1/admin/users/{user}/caps", tag = "admin", request_body = CapsRequest,
    params(("user" = String, Path, description = "user name")),
    responses((status = 200, body = UserView), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn set_caps(
    State(state): State<AppState>,
    Admin(who): Admin,
    ApiPath(user): ApiPath<String>,
    JsonBody(req): JsonBody<CapsRequest>,
) -> Result<Json<UserView>, ApiError> {
    let user = known_user(&state, &user)?;
    if req.max_running == Some(Some(0)) {
        return Err(ApiError::bad_request(
            "`max_running` 0 would hold the user back for good; pause the user instead",
        ));
    }
    let caps = state.engine().with_scheduler(|s| {
        let current = s.user_stats(&user).map(|u| u.caps).unwrap_or_else(|| UserCaps {
            max_queued: state.config().scheduler.max_queued_per_user,
            max_running: state.config().scheduler.max_running_per_user,
        });
        let caps = UserCaps {
            max_queued: req.max_queued.unwrap_or(current.max_queued),
            max_running: req.max_running.unwrap_or(current.max_running),
        };
        s.set_user_caps(&user, caps);
        caps
    });
    let limit = |c: Option<usize>| c.map_or_else(|| "no limit".to_string(), |n| n.to_string());
    let text = format!(
        "capped {user}: {} waiting, {} running",
        limit(caps.max_queued),
        limit(caps.max_running)
    );
    let detail = json!({"max_queued": caps.max_queued, "max_running": caps.max_running});
    state
        .audit(&who, "set_caps", Some(user.to_string()), detail, text)
        .await;
    state.overrides_changed().await;
    Ok(Json(user_view(&state, &user)))
}

/// Every provider with its health (with the reason), slots, jobs in flight and drain state, in the order
/// they are offered jobs (see `PUT /api/v1/admin/providers/order`).
#[utoipa::path(get, path = "/api/v1/admin/providers", tag = "admin",
    responses((status = 200, body = Vec<ProviderView>), (status = 403, body = ErrorBody)))]
pub async fn providers(State(state): State<AppState>, Admin(_): Admin) -> Json<Vec<ProviderView>> {
    Json(
        state
            .engine()
            .providers()
            .iter()
            .map(|p| ProviderView::new(p, true))
            .collect(),
    )
}

async fn set_draining(
    state: &AppState,
    who: &crate::auth::Principal,
    name: &str,
    draining: bool,
) -> Result<ProviderView, ApiError> {
    if !state.engine().set_draining(name, draining) {
        return Err(ApiError::not_found(format!("no provider '{name}'")));
    }
    let (action, text) = match draining {
        true => ("drain_provider", format!("drained {name}")),
        false => ("undrain_provider", format!("undrained {name}")),
    };
    state
        .audit(who, action, Some(name.to_string()), json!(null), text)
        .await;
    state.overrides_changed().await;
    state
        .engine()
        .providers()
        .iter()
        .find(|p| p.name == name)
        .map(|p| ProviderView::new(p, true))
        .ok_or_else(|| ApiError::not_found(format!("no provider '{name}'")))
}

/// Drains a provider: it takes no new jobs; running ones finish.
#[utoipa::path(post, path = "/api/v1/admin/providers/{name}/drain", tag = "admin",
    params(("name" = String, Path, description = "provider name")),
    responses((status = 200, body = ProviderView), (status = 404, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn drain(
    State(state): State<AppState>,
    Admin(who): Admin,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<ProviderView>, ApiError> {
    set_draining(&state, &who, &name, true).await.map(Json)
}

/// Lets a drained provider take jobs again.
#[utoipa::path(post, path = "/api/v1/admin/providers/{name}/undrain", tag = "admin",
    params(("name" = String, Path, description = "provider name")),
    responses((status = 200, body = ProviderView), (status = 404, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn undrain(
    State(state): State<AppState>,
    Admin(who): Admin,
    ApiPath(name): ApiPath<String>,
) -> Result<Json<ProviderView>, ApiError> {
    set_draining(&state, &who, &name, false).await.map(Json)
}

/// The user an admin route names: a user in the credentials file, or one the scheduler still has jobs or
/// settings for (removed from the file, jobs still waiting). Anyone else is a 404, so a typo does not
/// silently create settings for a user who does not exist.
pub(crate) fn known_user(state: &AppState, name: &str) -> Result<comfyume_core::UserId, ApiError> {
    let user = parse_user(name)?;
    let known =
        state.auth().has_user(&user) || state.engine().read_scheduler(|s| s.user_stats(&user).is_some());
    if known {
        Ok(user)
    } else {
        Err(ApiError::not_found(format!("no user '{user}'")))
    }
}
