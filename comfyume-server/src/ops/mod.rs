//! Operations: readiness (`/ready`), Prometheus metrics (`/metrics`) and request logging.
//!
//! Both routes need a login ("only `/health` is open"); `/metrics` needs an admin (a Prometheus server
//! scrapes it with an admin's API token as its bearer token).

pub mod metrics;

use std::time::Instant;

use axum::Json;
use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::auth::{Admin, Principal};
use crate::error::{ApiError, ErrorBody};
use crate::state::AppState;

pub use metrics::Metrics;

/// `/ready` when the server can take and run jobs.
#[derive(Debug, Serialize, ToSchema)]
pub struct Ready {
    /// Always true in a 200 answer.
    pub ready: bool,
    /// Providers that can take jobs now.
    pub usable_providers: Vec<String>,
}

/// Ready: the job store answers and at least one provider can take jobs (200); otherwise 503 with the
/// reason.
#[utoipa::path(get, path = "/ready", tag = "operations",
    responses((status = 200, body = Ready), (status = 401, body = ErrorBody),
        (status = 503, description = "not ready, and why", body = ErrorBody)))]
pub async fn ready(State(state): State<AppState>, _who: Principal) -> Result<Json<Ready>, ApiError> {
    let unavailable = |message: String| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_ready", message);
    if state.shutdown_token().is_cancelled() {
        return Err(unavailable("the server is shutting down".into()));
    }
    if let Err(e) = state
        .engine()
        .store()
        .get(comfyume_core::JobId(uuid::Uuid::nil()))
        .await
    {
        tracing::error!(error = %e, "readiness: the job store does not answer");
        return Err(unavailable(
            "the job store does not answer; the detail is in the server's log".into(),
        ));
    }
    let providers = state.engine().providers();
    let usable: Vec<String> = providers
        .iter()
        .filter(|p| p.health.is_usable())
        .map(|p| p.name.clone())
        .collect();
    if usable.is_empty() {
        let states: Vec<String> = providers
            .iter()
            .map(|p| match &p.health {
                comfyume_core::Health::Unavailable { reason } => format!("{}: {reason}", p.name),
                other => format!("{}: {other:?}", p.name),
            })
            .collect();
        let detail = if states.is_empty() {
            "no provider is configured".to_string()
        } else {
            format!("no provider can take jobs ({})", states.join("; "))
        };
        return Err(unavailable(detail));
    }
    Ok(Json(Ready {
        ready: true,
        usable_providers: usable,
    }))
}

/// Metrics in the Prometheus text format (admins: a scraper uses an admin's API token).
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text format 0.0.4", content_type = "text/plain"),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn metrics(State(state): State<AppState>, _admin: Admin) -> Result<Response, ApiError> {
    let text = state.metrics().encode().map_err(ApiError::internal)?;
    let content_type = HeaderValue::from_static(prometheus_client::encoding::prometheus_text::CONTENT_TYPE);
    Ok(([(header::CONTENT_TYPE, content_type)], text).into_response())
}

/// Counts every answered request by method, route template and status (templates, not paths: ids do not
/// become labels).
pub async fn track_http(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let method = request.method().as_str().to_string();
    let started = Instant::now();
    let response = next.run(request).await;
    state.metrics().observe_request(
        &method,
        &route,
        response.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    response
}

/// The span of one request, for the request-logging layer: the method and the path — never the query
/// string (it may carry a `?token=`) and no headers (they carry credentials).
pub fn request_span(request: &Request<Body>) -> tracing::Span {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string());
    tracing::info_span!(
        "http",
        method = %request.method(),
        path = %request.uri().path(),
        route = route.as_deref().unwrap_or(""),
    )
}
