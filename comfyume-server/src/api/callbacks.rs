//! `POST /api/v1/callbacks/{id}`: where a serverless worker (a `comfyume agent` beside ComfyUI in a GPU
//! container) pushes the live messages of the job it runs, so that the job's owner sees real progress.
//!
//! A provider that sends a job to such a worker registers the job's attempt with the server's
//! [`CallbackHub`](comfyume_core::CallbackHub) first and sends the worker this route's URL
//! (`<public_url>/api/v1/callbacks/<job id>`, see [`crate::ServerConfig::callback_base`]) with a token
//! for that attempt alone. The worker posts `{"messages": [{"type": "progress", "data": {…}}, …]}` with
//! `Authorization: Bearer <token>`; the messages go to the provider following the job, which turns
//! them into the job's progress events (what users see on `/api/v1/events` and in their workspace).
//!
//! The token is the only credential: user tokens and sessions mean nothing here. Refusals change nothing
//! and say why: no bearer token 401; a job that takes no messages (unknown, ended, or another attempt
//! now runs it) 404; a token that is not this attempt's 403; a body over [`CALLBACK_BODY_LIMIT`] 413;
//! a body that is not `{"messages": [{"type": "…", …}, …]}` 400.

use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use comfyume_core::CallbackError;
use serde::Deserialize;
use serde_json::Value;
use utoipa::ToSchema;

use super::{ApiPath, parse_job_id};
use crate::error::{ApiError, ErrorBody};
use crate::extract::check_depth;
use crate::state::AppState;

/// The largest body the route reads, in bytes: a batch of progress messages is a few kilobytes.
pub const CALLBACK_BODY_LIMIT: usize = 256 * 1024;

/// What a worker posts.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CallbackBody {
    /// ComfyUI's websocket messages of the job, in order: `{"type": "progress", "data": {"value": 3,
    /// "max": 20, "node": "5", …}}`, `executing`, `execution_cached`, ….
    #[schema(value_type = Vec<Object>)]
    pub messages: Vec<Value>,
}

/// Takes a batch of live messages for job `id` from the worker running it.
#[utoipa::path(post, path = "/api/v1/callbacks/{id}", tag = "callbacks",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "job id (UUID)")),
    request_body = CallbackBody,
    responses(
        (status = 204, description = "delivered to the job's provider"),
        (status = 400, description = "not a job id, or not a batch of messages", body = ErrorBody),
        (status = 401, description = "no bearer token", body = ErrorBody),
        (status = 403, description = "the token is not this job's", body = ErrorBody),
        (status = 404, description = "no running job takes messages under this id", body = ErrorBody),
        (status = 413, description = "the body is over the limit", body = ErrorBody)))]
pub async fn deliver(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    request: Request,
) -> Result<StatusCode, ApiError> {
    let job = parse_job_id(&id)?;
    let token = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            ApiError::unauthorized("send the job's callback token as `Authorization: Bearer <token>`")
        })?;
    let hub = state.callbacks();
    // The token first: nothing is read for a caller who may not send.
    hub.deliver(job, &token, Vec::new())
        .map_err(|e| refused(job, e))?;
    let bytes = axum::body::to_bytes(request.into_body(), CALLBACK_BODY_LIMIT)
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!(
                    "the request body is larger than the limit of {CALLBACK_BODY_LIMIT} bytes; send \
                     fewer messages at once"
                ),
            )
        })?;
    check_depth(&bytes, state.config().max_json_depth)?;
    let body: CallbackBody = serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::bad_request(format!(
            "the body is not a batch of messages ({{\"messages\": [...]}}): {e}"
        ))
    })?;
    if let Some(n) = body
        .messages
        .iter()
        .position(|m| !m.get("type").is_some_and(Value::is_string))
    {
        return Err(ApiError::bad_request(format!(
            "message {n} is not a websocket message with a `type`"
        )));
    }
    hub.deliver(job, &token, body.messages)
        .map_err(|e| refused(job, e))?;
    Ok(StatusCode::NO_CONTENT)
}

fn refused(job: comfyume_core::JobId, e: CallbackError) -> ApiError {
    tracing::debug!(job = %job, why = %e, "refused live messages from a worker");
    match e {
        CallbackError::BadToken => ApiError::forbidden(format!("the token is not the one of job {job}")),
        _ => ApiError::not_found(format!(
            "job {job} takes no live messages (it ended, never ran on a serverless worker, or \
             another attempt runs it)"
        )),
    }
}
