//! Submitting, reading, listing and cancelling jobs.

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use comfyume_core::{JobFilter, JobId, JobSpec, JobStatus, UserId, WorkflowCheck};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::views::{EstimateBasis, JobView, Positions};
use super::{ApiPath, ApiQuery, parse_job_id, parse_user, visible_job};
use crate::auth::Principal;
use crate::error::{ApiError, ErrorBody};
use crate::extract::JsonBody;
use crate::state::AppState;

/// Most nodes a submitted workflow may have.
const MAX_NODES: usize = 10_000;
/// Longest client id accepted.
const MAX_CLIENT_ID: usize = 256;
/// Largest cost estimate accepted, in GPU-seconds (a week).
const MAX_COST: f64 = 7.0 * 24.0 * 3600.0;
/// Jobs per page when the caller does not say.
const DEFAULT_LIMIT: usize = 50;
/// Most jobs per page.
const MAX_LIMIT: usize = 500;

/// `POST /api/v1/jobs` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubmitRequest {
    /// The workflow in ComfyUI's API format: node id → `{"class_type": ..., "inputs": {...}}` (what
    /// ComfyUI's "Export (API)" writes).
    #[schema(value_type = Object)]
    pub prompt: serde_json::Value,
    /// Priority tier (default 0). Users may ask up to the configured `scheduler.max_user_priority`;
    /// admins for any.
    #[serde(default)]
    pub priority: Option<i32>,
    /// ComfyUI's `extra_data` (`extra_pnginfo.workflow` …), passed to the provider unchanged.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub extra_data: Option<serde_json::Value>,
    /// The ComfyUI frontend's client id.
    #[serde(default)]
    pub client_id: Option<String>,
    /// Choose the job id (ComfyUI's `prompt_id`, also accepted under that name). Submitting the same id
    /// again returns the existing job (200) instead of a second one.
    #[serde(default, alias = "prompt_id")]
    #[schema(value_type = Option<String>, format = Uuid)]
    pub id: Option<uuid::Uuid>,
    /// Estimated cost in GPU-seconds, charged to the owner's fair share (default: 1 per job).
    #[serde(default)]
    pub cost: Option<f64>,
}

/// Submits a job. Durable before the answer; `201` with the job, or `200` with the existing job when
/// `id` was already submitted by the caller.
///
/// The body is a [`SubmitRequest`] (`{"prompt": …}`, like ComfyUI's `POST /prompt`) or a bare ComfyUI
/// API-format workflow (node id → node), which is run with the defaults. The workflow is checked against
/// the providers' node catalogue (ComfyUI's `/object_info`, fetched from a healthy instance and kept): a
/// workflow no provider can run is refused with `400` and ComfyUI's own error body (`error` with `type`,
/// `message`, `details`, `extra_info`, and `node_errors`), plus comfyume's `code` (`invalid_workflow`) and
/// a one-line `message`. While no provider has ever answered with its catalogue the workflow is accepted
/// unchecked, and the provider reports any problem when the job runs.
#[utoipa::path(post, path = "/api/v1/jobs", tag = "jobs", request_body = SubmitRequest,
    responses(
        (status = 201, description = "accepted", body = JobView),
        (status = 200, description = "this id was submitted before; the existing job", body = JobView),
        (status = 400, description = "malformed body or workflow; a workflow the providers cannot run \
            answers ComfyUI's body (`error`, `node_errors`) with `code` `invalid_workflow` and a `message`",
            body = ErrorBody),
        (status = 403, description = "priority above what users may ask for", body = ErrorBody),
        (status = 409, description = "the id is taken", body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 415, body = ErrorBody),
        (status = 429, description = "the caller's queued-jobs cap is reached", body = ErrorBody),
    ))]
pub async fn submit(
    State(state): State<AppState>,
    principal: Principal,
    JsonBody(body): JsonBody<serde_json::Value>,
) -> Result<Response, ApiError> {
    let req = submit_request(body)?;
    validate_workflow(&req.prompt)?;
    let max = state.config().scheduler.max_user_priority;
    let priority = req.priority.unwrap_or(0);
    if priority > max && !principal.admin {
        return Err(ApiError::forbidden(format!(
            "priority {priority} is above {max}, the highest a user may ask for; ask an admin to raise it"
        )));
    }
    if let Some(cost) = req.cost
        && !(cost.is_finite() && cost > 0.0 && cost <= MAX_COST)
    {
        return Err(ApiError::bad_request(format!(
            "`cost` must be a number of GPU-seconds above 0 and at most {MAX_COST}, got {cost}"
        )));
    }
    let extra_data = match req.extra_data {
        None | Some(serde_json::Value::Null) => serde_json::Value::Null,
        Some(v @ serde_json::Value::Object(_)) => v,
        Some(_) => return Err(ApiError::bad_request("`extra_data` must be a JSON object")),
    };
    if let Some(c) = &req.client_id
        && (c.len() > MAX_CLIENT_ID || c.chars().any(char::is_control))
    {
        return Err(ApiError::bad_request(format!(
            "`client_id` must be at most {MAX_CLIENT_ID} printable characters"
        )));
    }
    let id = req.id.map(JobId);
    if let Some(id) = id
        && let Some(existing) = state.engine().get(id).await?
    {
        if existing.spec.owner != principal.user {
            return Err(id_taken());
        }
        return Ok((StatusCode::OK, Json(JobView::single(&state, &existing))).into_response());
    }
    let inputs = state.inputs().names(&principal.user).await?;
    if let WorkflowCheck::Invalid { message, body } =
        state.engine().check_workflow(&req.prompt, &inputs).await
    {
        return Ok(invalid_workflow(message, body));
    }
    let spec = JobSpec {
        id,
        owner: principal.user.clone(),
        workflow: req.prompt,
        priority,
        cost: req.cost,
        extra_data,
        client_id: req.client_id,
    };
    let job = match state.engine().submit(spec).await {
        Ok(job) => job,
        // Another user's job took the id in the meantime; say no more than that.
        Err(comfyume_core::Error::InvalidInput(_)) if id.is_some() => return Err(id_taken()),
        Err(e) => return Err(e.into()),
    };
    tracing::info!(job = %job.id, user = %principal.user, "job submitted");
    let location = format!("/api/v1/jobs/{}", job.id);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(JobView::single(&state, &job)),
    )
        .into_response())
}

/// Reads a submit body: `{"prompt": …, …}` or a bare workflow (node id → `{"class_type", "inputs"}`).
fn submit_request(body: serde_json::Value) -> Result<SubmitRequest, ApiError> {
    let is_node = |v: &serde_json::Value| v.get("class_type").is_some();
    let bare = match &body {
        serde_json::Value::Object(top) => match top.get("prompt") {
            Some(prompt) => is_node(prompt),
            None => {
                (!top.is_empty() && top.values().all(is_node))
                    || (top.contains_key("nodes") && top.contains_key("links"))
            }
        },
        _ => false,
    };
    if bare {
        return Ok(SubmitRequest {
            prompt: body,
            priority: None,
            extra_data: None,
            client_id: None,
            id: None,
            cost: None,
        });
    }
    serde_json::from_value(body).map_err(|e| {
        ApiError::bad_request(format!(
            "the body must be a JSON object {{\"prompt\": <workflow>, …}} or a bare API-format workflow: {e}"
        ))
    })
}

/// The 400 for a workflow no provider can run: ComfyUI's body with comfyume's `code` and `message`.
fn invalid_workflow(message: String, body: serde_json::Value) -> Response {
    let mut body = match body {
        serde_json::Value::Object(map) => map,
        other => serde_json::Map::from_iter([("error".to_string(), other)]),
    };
    body.insert("code".into(), "invalid_workflow".into());
    body.insert(
        "message".into(),
        format!("the workflow cannot run: {message}").into(),
    );
    (StatusCode::BAD_REQUEST, Json(serde_json::Value::Object(body))).into_response()
}

fn id_taken() -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "conflict",
        "this job id cannot be used; leave `id` out to get a fresh one",
    )
}

/// Checks that `prompt` looks like a ComfyUI API-format workflow: a non-empty object of node id →
/// `{class_type: string, inputs: object}`. Deeper checks are the provider's (it knows the node types).
pub fn validate_workflow(prompt: &serde_json::Value) -> Result<(), ApiError> {
    let Some(nodes) = prompt.as_object() else {
        return Err(ApiError::bad_request(
            "`prompt` must be a JSON object of node id → {\"class_type\", \"inputs\"} (ComfyUI's API format)",
        ));
    };
    if nodes.contains_key("nodes") && nodes.contains_key("links") {
        return Err(ApiError::bad_request(
            "`prompt` is a workflow in ComfyUI's UI format (it has `nodes` and `links`); export it with \
             \"Export (API)\" and send that",
        ));
    }
    if nodes.is_empty() {
        return Err(ApiError::bad_request("`prompt` has no nodes"));
    }
    if nodes.len() > MAX_NODES {
        return Err(ApiError::bad_request(format!(
            "`prompt` has {} nodes, more than the limit of {MAX_NODES}",
            nodes.len()
        )));
    }
    for (id, node) in nodes {
        let bad = |why: &str| ApiError::bad_request(format!("node '{id}': {why}"));
        let Some(node) = node.as_object() else {
            return Err(bad("must be an object {\"class_type\", \"inputs\"}"));
        };
        match node.get("class_type") {
            Some(serde_json::Value::String(c)) if !c.trim().is_empty() => {}
            Some(_) => return Err(bad("`class_type` must be a non-empty string")),
            None => return Err(bad("has no `class_type`")),
        }
        match node.get("inputs") {
            Some(serde_json::Value::Object(_)) => {}
            Some(_) => return Err(bad("`inputs` must be an object")),
            None => return Err(bad("has no `inputs`")),
        }
    }
    Ok(())
}

/// One job. Another user's job answers 404, exactly like a missing one.
#[utoipa::path(get, path = "/api/v1/jobs/{id}", tag = "jobs",
    params(("id" = String, Path, description = "job id (UUID)")),
    responses((status = 200, body = JobView), (status = 400, description = "not a UUID", body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub async fn get(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<JobView>, ApiError> {
    let id = parse_job_id(&id)?;
    let job = visible_job(&state, &principal, id).await?;
    Ok(Json(JobView::single(&state, &job)))
}

/// `GET /api/v1/jobs` query.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Comma-separated states: `queued,leased,running,succeeded,failed,cancelled` (default: all).
    pub state: Option<String>,
    /// Jobs per page (default 50, at most 500).
    pub limit: Option<usize>,
    /// Jobs to skip (paging).
    pub offset: Option<usize>,
    /// Only this user's jobs (admins; others may name only themselves).
    pub user: Option<String>,
}

/// A page of jobs, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobList {
    /// The jobs.
    pub jobs: Vec<JobView>,
    /// The page size used.
    pub limit: usize,
    /// Jobs skipped.
    pub offset: usize,
    /// True when there are more after this page.
    pub more: bool,
}

/// The caller's jobs, newest first; admins see everyone's and may filter by `user`.
#[utoipa::path(get, path = "/api/v1/jobs", tag = "jobs", params(ListQuery),
    responses((status = 200, body = JobList), (status = 400, body = ErrorBody),
        (status = 403, description = "a non-admin named another user", body = ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    principal: Principal,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<JobList>, ApiError> {
    let owner = owner_scope(&principal, q.user.as_deref())?;
    let statuses = parse_states(q.state.as_deref())?;
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT);
    if limit == 0 || limit > MAX_LIMIT {
        return Err(ApiError::bad_request(format!(
            "`limit` must be between 1 and {MAX_LIMIT}"
        )));
    }
    let offset = q.offset.unwrap_or(0);
    let filter = JobFilter {
        owner,
        statuses,
        limit: Some(limit + 1),
        offset,
    };
    let mut jobs = state.engine().list(&filter).await?;
    let more = jobs.len() > limit;
    jobs.truncate(limit);
    let positions = jobs
        .iter()
        .any(|j| j.state == comfyume_core::JobState::Queued)
        .then(|| Positions::current(&state));
    let basis = EstimateBasis::current(&state);
    let jobs = jobs
        .iter()
        .map(|j| JobView::new(&state, j, positions.as_ref(), &basis))
        .collect();
    Ok(Json(JobList {
        jobs,
        limit,
        offset,
        more,
    }))
}

/// Parses `queued,running` into statuses (empty: all).
pub fn parse_states(text: Option<&str>) -> Result<Vec<JobStatus>, ApiError> {
    let Some(text) = text.filter(|t| !t.trim().is_empty()) else {
        return Ok(Vec::new());
    };
    text.split(',')
        .map(|s| {
            let s = s.trim();
            serde_json::from_value::<JobStatus>(serde_json::Value::String(s.to_string())).map_err(|_| {
                ApiError::bad_request(format!(
                    "unknown state '{s}' (expected queued, leased, running, succeeded, failed or cancelled)"
                ))
            })
        })
        .collect()
}

/// Cancels a job: a queued one at once (state `cancelled`), a running one by asking its provider to stop
/// (`cancel_requested`; a `cancelled` event follows). An ended job is returned unchanged.
#[utoipa::path(post, path = "/api/v1/jobs/{id}/cancel", tag = "jobs",
    params(("id" = String, Path, description = "job id (UUID)")),
    responses((status = 200, description = "the job after the cancel", body = JobView),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn cancel(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<JobView>, ApiError> {
    let id = parse_job_id(&id)?;
    cancel_job(&state, &principal, id).await.map(Json)
}

/// The same as `POST /api/v1/jobs/{id}/cancel`.
#[utoipa::path(delete, path = "/api/v1/jobs/{id}", tag = "jobs",
    params(("id" = String, Path, description = "job id (UUID)")),
    responses((status = 200, description = "the job after the cancel", body = JobView),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn delete(
    State(state): State<AppState>,
    principal: Principal,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<JobView>, ApiError> {
    let id = parse_job_id(&id)?;
    cancel_job(&state, &principal, id).await.map(Json)
}

async fn cancel_job(state: &AppState, principal: &Principal, id: JobId) -> Result<JobView, ApiError> {
    let job = visible_job(state, principal, id).await?;
    let reason = if principal.user == job.spec.owner {
        format!("cancelled by {}", principal.user)
    } else {
        format!("cancelled by admin {}", principal.user)
    };
    let job = state.engine().cancel(id, &reason).await?;
    tracing::info!(job = %id, user = %principal.user, state = job.state.name(), "cancel");
    let acted = matches!(job.state, comfyume_core::JobState::Cancelled { .. }) || job.cancel_requested;
    if principal.user != job.spec.owner && acted {
        let owner = &job.spec.owner;
        let short: String = id.to_string().chars().take(8).collect();
        let text = format!("cancelled {owner}'s job {short} ({})", job.state.name());
        let detail = serde_json::json!({"owner": owner, "state": job.state.name()});
        state
            .audit(principal, "cancel_job", Some(id.to_string()), detail, text)
            .await;
    }
    Ok(JobView::single(state, &job))
}

/// The owner filter a principal may use: `requested` if allowed (403 otherwise), else their own for
/// non-admins and everyone for admins.
pub fn owner_scope(principal: &Principal, requested: Option<&str>) -> Result<Option<UserId>, ApiError> {
    match requested {
        Some(name) => {
            let user = parse_user(name)?;
            if principal.may_access(&user) {
                Ok(Some(user))
            } else {
                Err(ApiError::forbidden("only admins may see other users' jobs"))
            }
        }
        None if principal.admin => Ok(None),
        None => Ok(Some(principal.user.clone())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn workflows_are_checked_node_by_node() {
        let ok = json!({"1": {"class_type": "EmptyImage", "inputs": {"width": 8}}});
        assert!(validate_workflow(&ok).is_ok());
        for (bad, needle) in [
            (json!([]), "JSON object"),
            (json!({}), "no nodes"),
            (json!({"nodes": [], "links": []}), "UI format"),
            (json!({"1": 3}), "node '1'"),
            (json!({"7": {"inputs": {}}}), "node '7': has no `class_type`"),
            (json!({"7": {"class_type": "", "inputs": {}}}), "non-empty"),
            (json!({"7": {"class_type": "X"}}), "no `inputs`"),
            (
                json!({"7": {"class_type": "X", "inputs": []}}),
                "`inputs` must be",
            ),
        ] {
            let err = validate_workflow(&bad).unwrap_err();
            assert_eq!(err.status, StatusCode::BAD_REQUEST);
            assert!(err.message.contains(needle), "{bad}: {}", err.message);
        }
    }

    #[test]
    fn state_lists_parse_and_unknown_states_are_named() {
        assert_eq!(
            parse_states(Some("queued, running")).unwrap(),
            vec![JobStatus::Queued, JobStatus::Running]
        );
        assert!(parse_states(None).unwrap().is_empty());
        let err = parse_states(Some("queued,done")).unwrap_err();
        assert!(err.message.contains("'done'"), "{}", err.message);
    }
}
