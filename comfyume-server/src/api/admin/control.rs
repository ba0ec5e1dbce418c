//! The instructor's controls beyond scheduler overrides: cancel every job of a user, and the order in
//! which providers are offered jobs (active first, failover after). Each calls one engine function and
//! records itself in the audit log.

use axum::Json;
use axum::extract::State;
use comfyume_core::{JobId, JobState};
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::{IntoParams, ToSchema};

use super::known_user;
use crate::api::views::ProviderView;
use crate::api::{ApiPath, ApiQuery};
use crate::auth::Admin;
use crate::error::{ApiError, ErrorBody};
use crate::extract::JsonBody;
use crate::state::AppState;

/// `POST /api/v1/admin/users/{user}/cancel` query.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct CancelUserQuery {
    /// `true`: cancel only the waiting jobs; running ones go on.
    pub waiting_only: Option<bool>,
}

/// What cancelling a user's jobs did.
#[derive(Debug, Serialize, ToSchema)]
pub struct CancelReport {
    /// The user.
    pub user: String,
    /// Waiting jobs cancelled at once.
    pub cancelled: usize,
    /// Running jobs asked to stop (each ends `cancelled` when its provider has stopped it).
    pub stopping: usize,
    /// Every job affected.
    #[schema(value_type = Vec<String>)]
    pub jobs: Vec<JobId>,
}

/// Cancels every unfinished job of a user (`?waiting_only=true`: only the waiting ones).
#[utoipa::path(post, path = "/api/v1/admin/users/{user}/cancel", tag = "admin", params(
        ("user" = String, Path, description = "user name"), CancelUserQuery),
    responses((status = 200, body = CancelReport), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub async fn cancel_user(
    State(state): State<AppState>,
    Admin(who): Admin,
    ApiPath(user): ApiPath<String>,
    ApiQuery(q): ApiQuery<CancelUserQuery>,
) -> Result<Json<CancelReport>, ApiError> {
    let user = known_user(&state, &user)?;
    let waiting_only = q.waiting_only.unwrap_or(false);
    let reason = format!("cancelled by admin {}", who.user);
    let jobs = state.engine().cancel_user(&user, waiting_only, &reason).await?;
    let cancelled = jobs
        .iter()
        .filter(|j| matches!(j.state, JobState::Cancelled { .. }))
        .count();
    let report = CancelReport {
        user: user.to_string(),
        cancelled,
        stopping: jobs.len() - cancelled,
        jobs: jobs.iter().map(|j| j.id).collect(),
    };
    let scope = if waiting_only { "waiting " } else { "" };
    state
        .audit(
            &who,
            "cancel_user_jobs",
            Some(user.to_string()),
            json!({"waiting_only": waiting_only, "cancelled": report.cancelled, "stopping": report.stopping}),
            format!(
                "cancelled {user}'s {scope}jobs ({} cancelled, {} stopping)",
                report.cancelled, report.stopping
            ),
        )
        .await;
    state.queue_changed();
    Ok(Json(report))
}

/// `PUT /api/v1/admin/providers/order` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OrderRequest {
    /// Provider names to offer jobs to first, in this order; providers left out follow in their
    /// current order.
    pub order: Vec<String>,
}

/// Switches the order providers are offered jobs in (active first, failover after); the next job goes
/// to the first provider of the new order with a free slot. Running jobs stay where they are.
#[utoipa::path(put, path = "/api/v1/admin/providers/order", tag = "admin", request_body = OrderRequest,
    responses((status = 200, description = "every provider, in the new order", body = Vec<ProviderView>),
        (status = 400, description = "an unknown or repeated name", body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn set_order(
    State(state): State<AppState>,
    Admin(who): Admin,
    JsonBody(req): JsonBody<OrderRequest>,
) -> Result<Json<Vec<ProviderView>>, ApiError> {
    if req.order.is_empty() {
        return Err(ApiError::bad_request("`order` must name at least one provider"));
    }
    let order = state.engine().set_provider_order(&req.order)?;
    state
        .audit(
            &who,
            "set_provider_order",
            None,
            json!({"order": order}),
            format!("set the provider order to {}", order.join(" → ")),
        )
        .await;
    state.overrides_changed().await;
    Ok(Json(
        state
            .engine()
            .providers()
            .iter()
            .map(|p| ProviderView::new(p, true))
            .collect(),
    ))
}
