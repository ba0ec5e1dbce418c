//! The workspace's queue: `prompt`, `queue`, `history`, `jobs`, `interrupt`, in ComfyUI's shapes, over
//! the user's own comfyume jobs. A prompt is a comfyume job whose id is the prompt id; it waits in the
//! fair queue like any other. Nobody sees another user's jobs: they answer like jobs that do not exist.
//!
//! ComfyUI's `number` (a prompt's place) is the job's enqueue order. A file output is named, as the
//! frontend builds `/view` URLs from it, with the subfolder `<job id>[/<subfolder>]` of the owner's
//! outputs (see [`super::files`]).

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use comfyume_core::{Job, JobFilter, JobId, JobState, JobStatus, OutputRef};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::Workspace;
use super::info::param;
use crate::state::AppState;

/// Most jobs a listing reads.
const MAX_LIST: usize = 10_000;

/// ComfyUI's status word for a job.
pub fn comfy_status(state: &JobState) -> &'static str {
    match state {
        JobState::Queued => "pending",
        JobState::Leased | JobState::Running => "in_progress",
        JobState::Succeeded => "completed",
        JobState::Failed { .. } => "failed",
        JobState::Cancelled { .. } => "cancelled",
    }
}

/// The subfolder a file output is served under in the workspace: `<job>[/<subfolder>]`.
pub fn view_subfolder(job: JobId, subfolder: &str) -> String {
    if subfolder.is_empty() {
        job.to_string()
    } else {
        format!("{job}/{subfolder}")
    }
}

/// One file of an output as ComfyUI describes it.
fn file_entry(o: &OutputRef) -> Value {
    json!({"filename": o.filename, "subfolder": view_subfolder(o.job_id, &o.subfolder), "type": o.kind.as_str()})
}

/// A job's outputs as ComfyUI's history has them: node → media → files (or the node's value).
pub fn outputs_by_node(job: &Job) -> Map<String, Value> {
    let mut nodes: Map<String, Value> = Map::new();
    for o in &job.outputs {
        let node = o.node_id.clone().unwrap_or_else(|| "0".to_string());
        let entry = nodes.entry(node).or_insert_with(|| json!({}));
        let Some(entry) = entry.as_object_mut() else {
            continue;
        };
        match &o.value {
            Some(value) => {
                entry.insert(o.media.clone(), value.clone());
            }
            None => {
                let list = entry.entry(o.media.clone()).or_insert_with(|| json!([]));
                if let Some(list) = list.as_array_mut() {
                    list.push(file_entry(o));
                }
            }
        }
    }
    nodes
}

/// The nodes nothing else takes input from: ComfyUI's "outputs to execute", as well as it can be told
/// without the node catalogue.
fn output_nodes(prompt: &Value) -> Vec<String> {
    let Some(nodes) = prompt.as_object() else {
        return Vec::new();
    };
    let linked: std::collections::HashSet<&str> = nodes
        .values()
        .filter_map(|n| n.get("inputs").and_then(Value::as_object))
        .flat_map(|inputs| inputs.values())
        .filter_map(|v| v.as_array().filter(|a| a.len() == 2).and_then(|a| a[0].as_str()))
        .collect();
    nodes
        .keys()
        .filter(|k| !linked.contains(k.as_str()))
        .cloned()
        .collect()
}

fn extra_data(job: &Job) -> Value {
    let mut extra = match &job.spec.extra_data {
        Value::Object(m) => m.clone(),
        _ => Map::new(),
    };
    extra.remove("auth_token_comfy_org");
    extra.remove("api_key_comfy_org");
    extra.insert("create_time".into(), json!(job.created_at.0));
    if let Some(c) = &job.spec.client_id {
        extra.insert("client_id".into(), json!(c));
    }
    Value::Object(extra)
}

/// ComfyUI's queue tuple: `[number, prompt_id, prompt, extra_data, outputs_to_execute]`.
fn queue_item(job: &Job) -> Value {
    json!([
        job.seq,
        job.id,
        job.spec.workflow,
        extra_data(job),
        output_nodes(&job.spec.workflow)
    ])
}

/// What the frontend reads of a failure (`execution_error`'s fields).
pub fn execution_error(job: &Job) -> Option<Value> {
    let JobState::Failed { failure } = &job.state else {
        return None;
    };
    let details = failure.details.as_object();
    let from = |key: &str| details.and_then(|d| d.get(key)).cloned();
    Some(json!({
        "prompt_id": job.id,
        "node_id": failure.node_id,
        "node_type": failure.node_type,
        "executed": from("executed").unwrap_or_else(|| json!([])),
        "exception_message": from("exception_message").unwrap_or_else(|| json!(failure.message)),
        "exception_type": from("exception_type").unwrap_or_else(|| json!(format!("comfyume.{}", serde_json::to_value(failure.kind).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()))),
        "traceback": from("traceback").unwrap_or_else(|| json!([])),
        "current_inputs": from("current_inputs").unwrap_or_else(|| json!({})),
        "current_outputs": from("current_outputs").unwrap_or_else(|| json!([])),
        "timestamp": job.finished_at.map_or(0, |t| t.0),
    }))
}

fn workflow_id(job: &Job) -> Option<Value> {
    job.spec.extra_data.pointer("/extra_pnginfo/workflow/id").cloned()
}

/// A job as `GET /jobs` lists it.
fn job_entry(job: &Job) -> Value {
    let mut entry = json!({
        "id": job.id,
        "status": comfy_status(&job.state),
        "priority": job.seq,
        "create_time": job.created_at.0,
    });
    let m = entry.as_object_mut().expect("an object");
    if let Some(w) = workflow_id(job) {
        m.insert("workflow_id".into(), w);
    }
    if let Some(t) = job.started_at {
        m.insert("execution_start_time".into(), json!(t.0));
    }
    if let Some(t) = job.finished_at {
        m.insert("execution_end_time".into(), json!(t.0));
    }
    let files: Vec<&OutputRef> = job.outputs.iter().filter(|o| !o.is_value()).collect();
    m.insert("outputs_count".into(), json!(job.outputs.len()));
    let previewable: Vec<&&OutputRef> = files
        .iter()
        .filter(|o| ["images", "video", "gifs", "audio"].contains(&o.media.as_str()))
        .collect();
    m.insert("previewable_outputs_count".into(), json!(previewable.len()));
    if let Some(first) = previewable
        .iter()
        .find(|o| o.media == "images")
        .or(previewable.first())
    {
        let mut preview = file_entry(first);
        preview["nodeId"] = json!(first.node_id.clone().unwrap_or_default());
        preview["mediaType"] = json!(first.media);
        m.insert("preview_output".into(), preview);
    }
    if let Some(e) = execution_error(job) {
        m.insert("execution_error".into(), e);
    }
    entry
}

fn status_value(job: &Job) -> Value {
    let (word, completed) = match &job.state {
        JobState::Succeeded => ("success", true),
        JobState::Failed { .. } | JobState::Cancelled { .. } => ("error", false),
        _ => ("running", false),
    };
    let mut messages = Vec::new();
    if let Some(t) = job.started_at {
        messages.push(json!(["execution_start", {"prompt_id": job.id, "timestamp": t.0}]));
    }
    match &job.state {
        JobState::Succeeded => messages.push(json!(["execution_success", {"prompt_id": job.id, "timestamp": job.finished_at.map_or(0, |t| t.0)}])),
        JobState::Failed { .. } => messages.push(json!(["execution_error", execution_error(job)])),
        JobState::Cancelled { .. } => messages.push(json!(["execution_interrupted", {"prompt_id": job.id, "node_id": null, "node_type": null, "executed": [], "timestamp": job.finished_at.map_or(0, |t| t.0)}])),
        _ => {}
    }
    json!({"status_str": word, "completed": completed, "messages": messages})
}

/// A finished job as ComfyUI's history has it.
fn history_entry(job: &Job) -> Value {
    let outputs = outputs_by_node(job);
    let meta: Map<String, Value> = outputs
        .keys()
        .map(|n| {
            (
                n.clone(),
                json!({"node_id": n, "display_node": n, "parent_node": null, "real_node_id": n}),
            )
        })
        .collect();
    json!({"prompt": queue_item(job), "outputs": outputs, "status": status_value(job), "meta": meta})
}

async fn own_jobs(state: &AppState, ws: &Workspace, statuses: Vec<JobStatus>) -> Result<Vec<Job>, Response> {
    let filter = JobFilter {
        owner: Some(ws.user().clone()),
        statuses,
        limit: Some(MAX_LIST),
        offset: 0,
    };
    state.engine().list(&filter).await.map_err(|e| {
        tracing::error!(error = %e, "listing jobs for a workspace");
        StatusCode::INTERNAL_SERVER_ERROR.into_response()
    })
}

/// This user's job `id`, or `None` (another user's job is `None` too).
async fn own_job(state: &AppState, ws: &Workspace, id: &str) -> Option<Job> {
    let id: JobId = id.parse().ok()?;
    state
        .engine()
        .get(id)
        .await
        .ok()
        .flatten()
        .filter(|j| &j.spec.owner == ws.user())
}

/// How many of this user's jobs wait or run (ComfyUI's `queue_remaining`).
pub async fn queue_remaining(state: &AppState, user: &comfyume_core::UserId) -> usize {
    let filter = JobFilter {
        owner: Some(user.clone()),
        statuses: vec![JobStatus::Queued, JobStatus::Leased, JobStatus::Running],
        limit: Some(MAX_LIST),
        offset: 0,
    };
    state.engine().list(&filter).await.map_or(0, |j| j.len())
}

/// `GET /prompt`: `{"exec_info": {"queue_remaining": N}}` for this user.
pub async fn get_prompt(State(state): State<AppState>, ws: Workspace) -> Json<Value> {
    let n = queue_remaining(&state, ws.user()).await;
    Json(json!({"exec_info": {"queue_remaining": n}}))
}

/// `GET /queue`: this user's running and waiting prompts.
pub async fn get_queue(State(state): State<AppState>, ws: Workspace) -> Response {
    let jobs = match own_jobs(
        &state,
        &ws,
        vec![JobStatus::Queued, JobStatus::Leased, JobStatus::Running],
    )
    .await
    {
        Ok(j) => j,
        Err(r) => return r,
    };
    let (running, pending): (Vec<&Job>, Vec<&Job>) = jobs.iter().partition(|j| j.state != JobState::Queued);
    Json(json!({
        "queue_running": running.iter().map(|j| queue_item(j)).collect::<Vec<_>>(),
        "queue_pending": pending.iter().map(|j| queue_item(j)).collect::<Vec<_>>(),
    }))
    .into_response()
}

/// The `clear` / `delete` body of `POST /queue` and `POST /history`.
#[derive(Debug, Default, Deserialize)]
pub struct ClearOrDelete {
    #[serde(default)]
    clear: bool,
    #[serde(default)]
    delete: Vec<String>,
}

/// `POST /queue`: `{"clear": true}` cancels this user's waiting prompts, `{"delete": [ids]}` those
/// named (of theirs, still waiting). Always 200, empty.
pub async fn post_queue(State(state): State<AppState>, ws: Workspace, body: Bytes) -> StatusCode {
    let req: ClearOrDelete = serde_json::from_slice(&body).unwrap_or_default();
    let waiting = own_jobs(&state, &ws, vec![JobStatus::Queued])
        .await
        .unwrap_or_default();
    for job in waiting {
        if req.clear || req.delete.iter().any(|d| *d == job.id.to_string()) {
            let reason = format!("removed from the queue by {} in their workspace", ws.user());
            if let Err(e) = state.engine().cancel(job.id, &reason).await {
                tracing::warn!(job = %job.id, error = %e, "could not remove a queued job");
            }
        }
    }
    state.queue_changed();
    StatusCode::OK
}

/// `POST /interrupt`: stops this user's running prompt (the one named by `prompt_id`, or any of
/// theirs); never another user's. Always 200, empty.
pub async fn interrupt(State(state): State<AppState>, ws: Workspace, body: Bytes) -> StatusCode {
    let named = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v.get("prompt_id").and_then(Value::as_str).map(str::to_string));
    let running = own_jobs(&state, &ws, vec![JobStatus::Leased, JobStatus::Running])
        .await
        .unwrap_or_default();
    for job in running {
        if named.as_deref().is_none_or(|n| n == job.id.to_string()) {
            let reason = format!("interrupted by {} in their workspace", ws.user());
            if let Err(e) = state.engine().cancel(job.id, &reason).await {
                tracing::warn!(job = %job.id, error = %e, "could not interrupt a job");
            }
        }
    }
    StatusCode::OK
}

/// `GET /history` query.
#[derive(Debug, Default, Deserialize)]
pub struct HistoryQuery {
    max_items: Option<usize>,
    offset: Option<usize>,
}

/// `GET /history?max_items=&offset=`: this user's finished prompts, oldest first (with only
/// `max_items`, the last N), as ComfyUI keeps them.
pub async fn history(
    State(state): State<AppState>,
    ws: Workspace,
    Query(q): Query<HistoryQuery>,
) -> Response {
    let mut jobs = match own_jobs(
        &state,
        &ws,
        vec![JobStatus::Succeeded, JobStatus::Failed, JobStatus::Cancelled],
    )
    .await
    {
        Ok(j) => j,
        Err(r) => return r,
    };
    jobs.sort_by_key(|j| (j.finished_at.map_or(0, |t| t.0), j.seq));
    let start = match (q.offset, q.max_items) {
        (Some(o), _) => o.min(jobs.len()),
        (None, Some(n)) => jobs.len().saturating_sub(n),
        (None, None) => 0,
    };
    let end = q.max_items.map_or(jobs.len(), |n| (start + n).min(jobs.len()));
    let map: Map<String, Value> = jobs[start..end]
        .iter()
        .map(|j| (j.id.to_string(), history_entry(j)))
        .collect();
    Json(map).into_response()
}

/// `GET /history/{prompt_id}`: `{id: entry}` for this user's finished prompt, `{}` otherwise.
pub async fn history_one(
    State(state): State<AppState>,
    ws: Workspace,
    axum::extract::Path(params): axum::extract::Path<Vec<(String, String)>>,
) -> Json<Value> {
    match own_job(&state, &ws, param(&params, "id")).await {
        Some(job) if job.state.is_terminal() => Json(json!({ job.id.to_string(): history_entry(&job) })),
        _ => Json(json!({})),
    }
}

/// `POST /history`: comfyume keeps every job's record (the admin's usage and the user's downloads read
/// it), so clearing the history in the workspace changes nothing. 200, empty, as ComfyUI answers.
pub async fn post_history(_ws: Workspace) -> StatusCode {
    StatusCode::OK
}

/// `GET /jobs` query.
#[derive(Debug, Default, Deserialize)]
pub struct JobsQuery {
    status: Option<String>,
    workflow_id: Option<String>,
    sort_by: Option<String>,
    sort_order: Option<String>,
    limit: Option<String>,
    offset: Option<String>,
}

fn json_error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({"error": message}))).into_response()
}

/// `GET /jobs?status=&workflow_id=&sort_by=&sort_order=&limit=&offset=`: this user's jobs.
pub async fn list(State(state): State<AppState>, ws: Workspace, Query(q): Query<JobsQuery>) -> Response {
    const VALID: [&str; 5] = ["pending", "in_progress", "completed", "failed", "cancelled"];
    let wanted: Vec<String> = q.status.as_deref().filter(|s| !s.is_empty()).map_or_else(
        || VALID.iter().map(|s| s.to_string()).collect(),
        |s| s.split(',').map(|p| p.trim().to_string()).collect(),
    );
    let bad: Vec<&str> = wanted
        .iter()
        .map(String::as_str)
        .filter(|s| !VALID.contains(s))
        .collect();
    if !bad.is_empty() {
        return json_error(
            StatusCode::BAD_REQUEST,
            &format!(
                "Invalid status value(s): {}. Valid values: {}",
                bad.join(", "),
                VALID.join(", ")
            ),
        );
    }
    let sort_by = q.sort_by.as_deref().unwrap_or("created_at");
    if !["created_at", "execution_duration"].contains(&sort_by) {
        return json_error(
            StatusCode::BAD_REQUEST,
            "sort_by must be 'created_at' or 'execution_duration'",
        );
    }
    let ascending = match q.sort_order.as_deref().unwrap_or("desc") {
        "asc" => true,
        "desc" => false,
        _ => return json_error(StatusCode::BAD_REQUEST, "sort_order must be 'asc' or 'desc'"),
    };
    let limit = match q.limit.as_deref() {
        None => None,
        Some(l) => match l.parse::<usize>() {
            Ok(n) if n > 0 => Some(n),
            _ => return json_error(StatusCode::BAD_REQUEST, "limit must be a positive integer"),
        },
    };
    let offset = match q.offset.as_deref().map(str::parse::<usize>) {
        None => 0,
        Some(Ok(n)) => n,
        Some(Err(_)) => return json_error(StatusCode::BAD_REQUEST, "offset must be a non-negative integer"),
    };
    let mut jobs: Vec<Job> = match own_jobs(&state, &ws, Vec::new()).await {
        Ok(j) => j,
        Err(r) => return r,
    };
    jobs.retain(|j| wanted.iter().any(|w| w == comfy_status(&j.state)));
    if let Some(w) = q.workflow_id.as_deref().filter(|w| !w.is_empty()) {
        jobs.retain(|j| {
            workflow_id(j)
                .and_then(|v| v.as_str().map(str::to_string))
                .as_deref()
                == Some(w)
        });
    }
    let key = |j: &Job| -> u64 {
        if sort_by == "execution_duration" {
            match (j.started_at, j.finished_at) {
                (Some(s), Some(f)) => f.0.saturating_sub(s.0),
                _ => 0,
            }
        } else {
            j.created_at.0
        }
    };
    jobs.sort_by(|a, b| {
        let order = key(a).cmp(&key(b)).then(a.seq.cmp(&b.seq));
        if ascending { order } else { order.reverse() }
    });
    let total = jobs.len();
    let page: Vec<Value> = jobs
        .iter()
        .skip(offset)
        .take(limit.unwrap_or(usize::MAX))
        .map(job_entry)
        .collect();
    let has_more = offset + page.len() < total;
    Json(json!({"jobs": page, "pagination": {"offset": offset, "limit": limit, "total": total, "has_more": has_more}}))
        .into_response()
}

/// `GET /jobs/{id}`: one of this user's jobs with its outputs; 404 `{"error": "Job not found"}` else.
pub async fn get(
    State(state): State<AppState>,
    ws: Workspace,
    axum::extract::Path(params): axum::extract::Path<Vec<(String, String)>>,
) -> Response {
    let Some(job) = own_job(&state, &ws, param(&params, "id")).await else {
        return json_error(StatusCode::NOT_FOUND, "Job not found");
    };
    let mut entry = job_entry(&job);
    entry["outputs"] = Value::Object(outputs_by_node(&job));
    entry["execution_status"] = status_value(&job);
    entry["workflow"] = json!({"prompt": job.spec.workflow, "extra_data": extra_data(&job)});
    Json(entry).into_response()
}

async fn cancel_own(state: &AppState, ws: &Workspace, job: &Job) -> bool {
    if job.state.is_terminal() {
        return false;
    }
    let reason = format!("cancelled by {} in their workspace", ws.user());
    state.engine().cancel(job.id, &reason).await.is_ok()
}

/// `POST /jobs/{id}/cancel`: `{"cancelled": bool}` (a waiting job leaves the queue, a running one is
/// interrupted); another user's job is never touched (`false`).
pub async fn cancel(
    State(state): State<AppState>,
    ws: Workspace,
    axum::extract::Path(params): axum::extract::Path<Vec<(String, String)>>,
) -> Json<Value> {
    let cancelled = match own_job(&state, &ws, param(&params, "id")).await {
        Some(job) => cancel_own(&state, &ws, &job).await,
        None => false,
    };
    state.queue_changed();
    Json(json!({"cancelled": cancelled}))
}

/// `POST /jobs/cancel` body `{"job_ids": [...]}`: `{"cancelled": bool}`; 400 naming ids that are not
/// UUIDs.
pub async fn cancel_many(State(state): State<AppState>, ws: Workspace, body: Bytes) -> Response {
    let ids: Vec<String> = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v.get("job_ids").and_then(Value::as_array).cloned())
        .unwrap_or_default()
        .iter()
        .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string))
        .collect();
    let invalid: Vec<&String> = ids.iter().filter(|i| i.parse::<JobId>().is_err()).collect();
    if !invalid.is_empty() {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "job_ids contains invalid id(s)", "invalid_ids": invalid})),
        )
            .into_response();
    }
    let mut any = false;
    for id in &ids {
        if let Some(job) = own_job(&state, &ws, id).await {
            any |= cancel_own(&state, &ws, &job).await;
        }
    }
    state.queue_changed();
    Json(json!({"cancelled": any})).into_response()
}

/// ComfyUI's 400 answer to a prompt it refuses: `{"error": {type, message, details, extra_info},
/// "node_errors": {...}}`.
pub fn prompt_error(
    kind: &str,
    message: &str,
    details: &str,
    extra_info: Value,
    node_errors: Value,
) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(json!({
            "error": {"type": kind, "message": message, "details": details, "extra_info": extra_info},
            "node_errors": node_errors,
        })),
    )
        .into_response()
}

/// `POST /prompt`: checks the prompt as ComfyUI does (400 in ComfyUI's shape), then queues it as a
/// comfyume job of this user whose id is the prompt id (the client's `prompt_id` when given). ComfyUI's
/// `number` and `front` are not honoured: the fair queue decides the order. `{"prompt_id", "number",
/// "node_errors": {}}`.
pub async fn post_prompt(State(state): State<AppState>, ws: Workspace, body: Bytes) -> Response {
    let max_depth = state.config().max_json_depth;
    if crate::extract::check_depth(&body, max_depth).is_err() {
        let text = format!("the request body is nested deeper than the limit of {max_depth} levels");
        return prompt_error("invalid_prompt", "Invalid prompt", &text, json!({}), json!({}));
    }
    let request: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            let text = format!("the request body is not JSON: {e}");
            return prompt_error("invalid_prompt", "Invalid prompt", &text, json!({}), json!({}));
        }
    };
    let Some(prompt) = request.get("prompt") else {
        let m = "No prompt provided";
        return prompt_error("no_prompt", m, m, json!({}), json!({}));
    };
    let id = match request.get("prompt_id") {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_str().and_then(|s| s.parse::<uuid::Uuid>().ok()) {
            Some(u) => Some(JobId(u)),
            None => {
                let m = "prompt_id must be a valid UUID";
                return prompt_error("invalid_prompt_id", m, m, json!({}), json!({}));
            }
        },
    };
    let Some(nodes) = prompt.as_object().filter(|n| !n.is_empty()) else {
        let m = "Prompt has no outputs";
        return prompt_error("prompt_no_outputs", m, m, json!({}), json!({}));
    };
    for (node_id, node) in nodes {
        let title = node
            .pointer("/_meta/title")
            .and_then(Value::as_str)
            .unwrap_or(node_id);
        let has_class = node
            .get("class_type")
            .and_then(Value::as_str)
            .is_some_and(|c| !c.is_empty());
        if !has_class || !node.get("inputs").is_some_and(Value::is_object) {
            let message = format!(
                "Node 'ID #{node_id}' has no class_type. The workflow may be corrupted or a custom node is missing."
            );
            let extra = json!({"node_id": node_id, "class_type": null, "node_title": title});
            return prompt_error("missing_node_type", &message, &message, extra, json!({}));
        }
    }
    if let Err(e) = crate::api::jobs::validate_workflow(prompt) {
        return prompt_error(
            "invalid_prompt",
            "Invalid prompt",
            &e.message,
            json!({}),
            json!({}),
        );
    }
    let extra_data = match request.get("extra_data") {
        Some(v @ Value::Object(_)) => v.clone(),
        _ => Value::Null,
    };
    let client_id = request
        .get("client_id")
        .and_then(Value::as_str)
        .filter(|c| c.len() <= 256 && !c.chars().any(char::is_control))
        .map(str::to_string);
    if let Some(id) = id
        && let Ok(Some(existing)) = state.engine().get(id).await
    {
        if &existing.spec.owner != ws.user() {
            let m = "prompt_id must be a valid UUID";
            return prompt_error(
                "invalid_prompt_id",
                m,
                "this prompt_id cannot be used",
                json!({}),
                json!({}),
            );
        }
        return Json(json!({"prompt_id": existing.id, "number": existing.seq, "node_errors": {}}))
            .into_response();
    }
    // Checked against the providers' node catalogue, answered with ComfyUI's own body (the frontend
    // marks the nodes in `node_errors`); unchecked while no provider has a catalogue yet.
    let inputs = state.inputs().names(ws.user()).await.unwrap_or_default();
    if let comfyume_core::WorkflowCheck::Invalid { body, .. } =
        state.engine().check_workflow(prompt, &inputs).await
    {
        return (StatusCode::BAD_REQUEST, Json(body)).into_response();
    }
    let spec = comfyume_core::JobSpec {
        id,
        owner: ws.user().clone(),
        workflow: prompt.clone(),
        priority: 0,
        cost: None,
        extra_data,
        client_id,
    };
    match state.engine().submit(spec).await {
        Ok(job) => {
            tracing::info!(job = %job.id, user = %ws.user(), "prompt queued from the workspace");
            Json(json!({"prompt_id": job.id, "number": job.seq, "node_errors": {}})).into_response()
        }
        Err(e) => {
            let api = crate::error::ApiError::from(e);
            let body = json!({
                "error": {"type": api.code, "message": api.message, "details": api.message, "extra_info": {}},
                "node_errors": {},
            });
            (api.status, Json(body)).into_response()
        }
    }
}
