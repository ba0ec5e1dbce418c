//! The HTTP routes of one simulated ComfyUI process, each also under `/api/` like ComfyUI, with its
//! status codes and bodies (empty 200s, empty 400/403/404s, the unhandled-exception 500).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Multipart, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{get, post};
use serde_json::{Map, Value, json};

use super::files::{DirType, UploadOutcome, ViewTarget, resolve_view, store_upload};
use super::replica::{QueueItem, Replica, lock, now_ms};
use crate::validate::{error_body, validate_prompt};

/// ComfyUI's default `--max-upload-size` (100 MB).
pub(crate) const MAX_UPLOAD: usize = 100 * 1024 * 1024;

/// `extra_data` keys ComfyUI keeps out of the queue and history.
const SENSITIVE_KEYS: [&str; 2] = ["auth_token_comfy_org", "api_key_comfy_org"];

/// The router of one replica.
pub(crate) fn router(replica: Arc<Replica>) -> Router {
    let routes = Router::new()
        .route("/prompt", post(post_prompt).get(get_prompt))
        .route("/queue", get(get_queue).post(post_queue))
        .route("/history", get(get_history).post(post_history))
        .route("/history/{prompt_id}", get(get_history_item))
        .route("/view", get(view))
        .route("/upload/image", post(upload_image))
        .route("/interrupt", post(interrupt))
        .route("/free", post(free))
        .route("/object_info", get(object_info))
        .route("/object_info/{class}", get(object_info_one))
        .route("/system_stats", get(system_stats))
        .route("/features", get(features))
        .route("/ws", get(super::ws::handler));
    Router::new()
        .merge(routes.clone())
        .nest("/api", routes)
        .layer(DefaultBodyLimit::max(MAX_UPLOAD))
        .with_state(replica)
}

/// aiohttp's answer to an unhandled exception (e.g. a malformed JSON body).
fn server_error() -> Response {
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        "500 Internal Server Error\n\nServer got itself in trouble",
    )
        .into_response()
}

fn bad_request(body: Value) -> Response {
    (StatusCode::BAD_REQUEST, Json(body)).into_response()
}

fn truthy(v: Option<&Value>) -> bool {
    match v {
        None | Some(Value::Null) | Some(Value::Bool(false)) => false,
        Some(Value::Number(n)) => n.as_f64().is_some_and(|f| f != 0.0),
        Some(Value::String(s)) => !s.is_empty(),
        Some(Value::Array(a)) => !a.is_empty(),
        Some(Value::Object(o)) => !o.is_empty(),
        Some(Value::Bool(true)) => true,
    }
}

fn parse_object(body: &[u8]) -> Option<Map<String, Value>> {
    match serde_json::from_slice(body) {
        Ok(Value::Object(m)) => Some(m),
        _ => None,
    }
}

/// True for a UUID in canonical lowercase hyphenated form (what ComfyUI 0.33 accepts as `prompt_id`).
fn is_canonical_uuid(s: &str) -> bool {
    uuid::Uuid::parse_str(s).is_ok_and(|u| u.hyphenated().to_string() == s)
}

async fn post_prompt(State(r): State<Arc<Replica>>, headers: HeaderMap, body: Bytes) -> Response {
    let Some(body) = parse_object(&body) else {
        return server_error();
    };
    let counters = &r.shared.counters;
    let (number, number_json) = match body.get("number") {
        Some(n) => match n
            .as_f64()
            .or_else(|| n.as_str().and_then(|s| s.trim().parse().ok()))
        {
            Some(f) => (f, Value::from(f)),
            None => return server_error(),
        },
        None => {
            let mut q = r.queue();
            let n = q.counter;
            q.counter += 1;
            let n = if truthy(body.get("front")) { -n } else { n };
            (n as f64, Value::from(n))
        }
    };
    let reject = |b: Value| {
        counters.rejected.fetch_add(1, Ordering::Relaxed);
        bad_request(b)
    };
    let Some(prompt) = body.get("prompt") else {
        return reject(error_body(
            "no_prompt",
            "No prompt provided",
            "No prompt provided",
            json!({}),
        ));
    };
    let prompt_id = match body.get("prompt_id") {
        None | Some(Value::Null) => uuid::Uuid::new_v4().to_string(),
        Some(Value::String(s)) if is_canonical_uuid(s) => s.clone(),
        Some(_) => {
            return reject(error_body(
                "invalid_prompt_id",
                "prompt_id must be a valid UUID",
                "prompt_id must be a UUID string in canonical lowercase hyphenated form; omit it to let the server generate one",
                json!({}),
            ));
        }
    };
    let Value::Object(prompt) = prompt.clone() else {
        return server_error();
    };
    let accepted = match validate_prompt(
        &r.shared.catalogue,
        &r.shared.dirs,
        prompt,
        body.get("partial_execution_targets"),
    ) {
        Ok(a) => a,
        Err(b) => return reject(b),
    };
    let mut extra = body
        .get("extra_data")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    if let Some(cid) = body.get("client_id") {
        extra.insert("client_id".into(), cid.clone());
    }
    if !extra.contains_key("comfy_usage_source")
        && let Some(src) = headers.get("comfy-usage-source").and_then(|v| v.to_str().ok())
    {
        extra.insert("comfy_usage_source".into(), Value::from(src));
    }
    for k in SENSITIVE_KEYS {
        extra.shift_remove(k);
    }
    extra.insert("create_time".into(), Value::from(now_ms()));
    counters.accepted.fetch_add(1, Ordering::Relaxed);
    let node_errors = accepted.node_errors.clone();
    r.put(QueueItem {
        number,
        number_json: number_json.clone(),
        prompt_id: prompt_id.clone(),
        prompt: accepted.prompt,
        extra_data: extra,
        outputs: accepted.outputs,
    });
    Json(json!({"prompt_id": prompt_id, "number": number_json, "node_errors": node_errors})).into_response()
}

async fn get_prompt(State(r): State<Arc<Replica>>) -> Json<Value> {
    Json(json!({"exec_info": {"queue_remaining": r.queue().remaining()}}))
}

async fn get_queue(State(r): State<Arc<Replica>>) -> Json<Value> {
    let q = r.queue();
    let running: Vec<Value> = q.running.iter().map(|(item, _)| item.tuple()).collect();
    let pending: Vec<Value> = q.pending().map(QueueItem::tuple).collect();
    Json(json!({"queue_running": running, "queue_pending": pending}))
}

fn ids(v: Option<&Value>) -> Vec<String> {
    v.and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|x| x.as_str().map(str::to_string)).collect())
        .unwrap_or_default()
}

async fn post_queue(State(r): State<Arc<Replica>>, body: Bytes) -> Response {
    let Some(body) = parse_object(&body) else {
        return server_error();
    };
    if truthy(body.get("clear")) {
        r.clear_pending();
    }
    if body.contains_key("delete") {
        r.delete_pending(&ids(body.get("delete")));
    }
    StatusCode::OK.into_response()
}

async fn get_history(State(r): State<Arc<Replica>>, Query(q): Query<HashMap<String, String>>) -> Json<Value> {
    let max_items = q.get("max_items").and_then(|v| v.parse::<usize>().ok());
    let mut offset = q.get("offset").and_then(|v| v.parse::<i64>().ok()).unwrap_or(-1);
    let queue = r.queue();
    let history = &queue.history;
    if offset < 0
        && let Some(max) = max_items
    {
        offset = history.len() as i64 - max as i64;
    }
    let mut out = Map::new();
    for (i, (id, entry)) in history.iter().enumerate() {
        if max_items.is_some_and(|m| out.len() >= m) {
            break;
        }
        if i as i64 >= offset {
            out.insert(id.clone(), entry.clone());
        }
    }
    Json(Value::Object(out))
}

async fn get_history_item(State(r): State<Arc<Replica>>, Path(id): Path<String>) -> Json<Value> {
    let q = r.queue();
    let mut out = Map::new();
    if let Some(entry) = q.history.get(&id) {
        out.insert(id, entry.clone());
    }
    Json(Value::Object(out))
}

async fn post_history(State(r): State<Arc<Replica>>, body: Bytes) -> Response {
    let Some(body) = parse_object(&body) else {
        return server_error();
    };
    let mut q = r.queue();
    if truthy(body.get("clear")) {
        q.history.clear();
    }
    for id in ids(body.get("delete")) {
        q.history.shift_remove(&id);
    }
    StatusCode::OK.into_response()
}

async fn view(State(r): State<Arc<Replica>>, Query(q): Query<HashMap<String, String>>) -> Response {
    let target = resolve_view(
        &r.shared.dirs,
        q.get("filename").map(String::as_str),
        q.get("type").map(String::as_str),
        q.get("subfolder").map(String::as_str),
    );
    let (path, name) = match target {
        ViewTarget::Status(code) => {
            return StatusCode::from_u16(code)
                .unwrap_or(StatusCode::NOT_FOUND)
                .into_response();
        }
        ViewTarget::File(path, name) => (path, name),
    };
    let Ok(bytes) = tokio::fs::read(&path).await else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let mime = mime_guess::from_path(&path).first_or_octet_stream();
    let dangerous = matches!(
        mime.subtype().as_str(),
        "html" | "javascript" | "css" | "svg" | "xml"
    ) || mime.essence_str() == "image/svg+xml";
    let (content_type, disposition) = if dangerous {
        (
            "application/octet-stream".to_string(),
            format!("attachment; filename=\"{name}\""),
        )
    } else {
        (mime.essence_str().to_string(), format!("filename=\"{name}\""))
    };
    let mut resp = Response::new(Body::from(bytes));
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&content_type) {
        h.insert(header::CONTENT_TYPE, v);
    }
    if let Ok(v) = HeaderValue::from_str(&disposition) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    resp
}

async fn upload_image(State(r): State<Arc<Replica>>, mut form: Multipart) -> Response {
    let mut image: Option<(String, Bytes)> = None;
    let mut fields: HashMap<String, String> = HashMap::new();
    loop {
        match form.next_field().await {
            Ok(Some(field)) => {
                let name = field.name().unwrap_or_default().to_string();
                if name == "image" {
                    let filename = field.file_name().unwrap_or_default().to_string();
                    match field.bytes().await {
                        Ok(b) => image = Some((filename, b)),
                        Err(e) => return e.status().into_response(),
                    }
                } else if let Ok(text) = field.text().await {
                    fields.insert(name, text);
                }
            }
            Ok(None) => break,
            Err(e) => return e.status().into_response(),
        }
    }
    let Some((filename, bytes)) = image else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    let dir = fields
        .get("type")
        .and_then(|t| DirType::parse(t))
        .unwrap_or(DirType::Input);
    let subfolder = fields.get("subfolder").cloned().unwrap_or_default();
    let overwrite = matches!(fields.get("overwrite").map(String::as_str), Some("true" | "1"));
    let dirs = r.shared.dirs.clone();
    let sub = subfolder.clone();
    let stored =
        tokio::task::spawn_blocking(move || store_upload(&dirs, dir, &sub, &filename, &bytes, overwrite))
            .await;
    match stored {
        Ok(Ok(UploadOutcome::Stored(name))) => {
            Json(json!({"name": name, "subfolder": subfolder, "type": dir.as_str()})).into_response()
        }
        Ok(Ok(UploadOutcome::Refused(code))) => StatusCode::from_u16(code)
            .unwrap_or(StatusCode::BAD_REQUEST)
            .into_response(),
        _ => server_error(),
    }
}

async fn interrupt(State(r): State<Arc<Replica>>, body: Bytes) -> StatusCode {
    let body = parse_object(&body);
    let prompt_id = body
        .as_ref()
        .and_then(|b| b.get("prompt_id"))
        .and_then(Value::as_str);
    r.request_interrupt(prompt_id);
    StatusCode::OK
}

async fn free(State(r): State<Arc<Replica>>, body: Bytes) -> Response {
    let Some(body) = parse_object(&body) else {
        return server_error();
    };
    if truthy(body.get("free_memory")) {
        lock(&r.cache).clear();
    }
    StatusCode::OK.into_response()
}

async fn object_info(State(r): State<Arc<Replica>>) -> Json<Value> {
    Json(r.shared.catalogue.render_all(&r.shared.dirs.input_images()))
}

async fn object_info_one(State(r): State<Arc<Replica>>, Path(class): Path<String>) -> Json<Value> {
    Json(
        r.shared
            .catalogue
            .render_one(&class, &r.shared.dirs.input_images()),
    )
}

/// The body of `GET /features` (and the `feature_flags` WebSocket reply).
pub(crate) fn features_body() -> Value {
    json!({
        "supports_preview_metadata": true,
        "supports_model_type_tags": true,
        "max_upload_size": MAX_UPLOAD,
        "extension": {"manager": {"supports_v4": true}},
        "node_replacements": true,
        "assets": false
    })
}

async fn features() -> Json<Value> {
    Json(features_body())
}

async fn system_stats(State(r): State<Arc<Replica>>) -> Json<Value> {
    let gib = 1u64 << 30;
    Json(json!({
        "system": {
            "os": std::env::consts::OS,
            "ram_total": 24 * gib,
            "ram_free": 23 * gib,
            "comfyui_version": "0.33.0",
            "required_frontend_version": "1.49.6",
            "installed_templates_version": "0.11.44",
            "required_templates_version": "0.11.44",
            "comfy_package_versions": [],
            "python_version": "none (comfyume simulated worker)",
            "pytorch_version": "none (simulated, no inference)",
            "embedded_python": false,
            "deploy_environment": "comfyume-sim-worker",
            "argv": ["comfyume", "sim-worker", "--replica", r.index.to_string(),
                     "--uptime-s", r.uptime().as_secs().to_string()]
        },
        "devices": [{
            "name": "simulated (comfyume sim-worker, no GPU)",
            "type": "cpu",
            "index": null,
            "vram_total": 0,
            "vram_free": 0,
            "torch_vram_total": 0,
            "torch_vram_free": 0
        }]
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_uuids_only() {
        assert!(is_canonical_uuid("93b9d2a5-932d-4695-967e-cde7bd61dbd5"));
        assert!(!is_canonical_uuid("93B9D2A5-932D-4695-967E-CDE7BD61DBD5"));
        assert!(!is_canonical_uuid("93b9d2a5932d4695967ecde7bd61dbd5"));
        assert!(!is_canonical_uuid("NOT-A-UUID"));
    }
}
