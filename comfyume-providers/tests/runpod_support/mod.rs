//! A **fake** RunPod serverless endpoint, for tests only (a test tool, not RunPod). It takes
//! `POST /v2/<endpoint>/run` behind a bearer key, keeps the jobs in one FIFO queue, hands each to
//! whichever of its workers is free, and answers `GET /v2/<endpoint>/status/<id>` and
//! `POST /v2/<endpoint>/cancel/<id>` in RunPod's shapes (`IN_QUEUE`, `IN_PROGRESS`, `COMPLETED`,
//! `FAILED`, `CANCELLED`). Each worker does what the `worker-comfyui` image's handler does, against its
//! own **simulated** ComfyUI: uploads the input `images`, queues the workflow, forwards step progress as
//! the job's progress update, and answers the saved files as base64
//! (`{"images": [{"filename", "type": "base64", "data"}]}`), or fails with the handler's words
//! (`Workflow validation failed…`, `Workflow execution error: Node Type: …, Node ID: …, Message: …`).
//! Cancelling a running job interrupts its ComfyUI. Optionally it starts cold (no worker takes work
//! until a delay has passed), answers every request with an error page that quotes the request's
//! `Authorization` header, or fails every job with an error that quotes it.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use comfyume_providers::protocol::{
    ComfyClient, FileRef, Frame, PromptRequest, ServerMessage, WsConnection, steps,
};
use serde_json::{Value, json};
use tokio::sync::Notify;

/// The endpoint id the fake serves.
pub const ENDPOINT: &str = "fake-endpoint";

/// How the fake behaves.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// No worker takes work before this has passed.
    pub cold: Duration,
    /// Every request is answered with this status and an error quoting its `Authorization` header.
    pub echo_key: Option<u16>,
    /// Every job fails with an error that quotes the `Authorization` header it was sent with.
    pub fail_echoing_key: bool,
}

/// One job as the fake keeps it.
#[derive(Clone, Debug)]
pub struct FakeJob {
    /// `IN_QUEUE`, `IN_PROGRESS`, `COMPLETED`, `FAILED`, `CANCELLED`.
    pub status: &'static str,
    /// What `/run` was given (`input`).
    pub input: Value,
    /// The handler's output or latest progress update.
    pub output: Value,
    /// The handler's error.
    pub error: Option<String>,
    /// The worker that took it.
    pub worker: Option<usize>,
    /// Its prompt on the worker's ComfyUI, once queued there.
    prompt: Option<String>,
    /// `/cancel` was called for it.
    pub cancel_asked: bool,
    /// The `Authorization` header `/run` had.
    auth: String,
}

struct Inner {
    key: String,
    options: Options,
    queue: Mutex<VecDeque<String>>,
    jobs: Mutex<HashMap<String, FakeJob>>,
    /// Every `Authorization` header seen.
    seen: Mutex<Vec<String>>,
    /// The workers' ComfyUIs.
    comfy: Vec<ComfyClient>,
    work: Notify,
}

/// See the module docs.
pub struct FakeRunPod {
    /// The API base (`http://127.0.0.1:<port>`).
    pub base: String,
    inner: Arc<Inner>,
}

impl FakeRunPod {
    /// Starts the endpoint with one worker per ComfyUI URL (simulated workers).
    pub async fn start(key: &str, comfyuis: Vec<String>, options: Options) -> FakeRunPod {
        let comfy = comfyuis
            .iter()
            .map(|url| ComfyClient::new(url, Duration::from_secs(30), Duration::from_secs(5)).unwrap())
            .collect();
        let inner = Arc::new(Inner {
            key: key.to_string(),
            options,
            queue: Mutex::default(),
            jobs: Mutex::default(),
            seen: Mutex::default(),
            comfy,
            work: Notify::new(),
        });
        let app = axum::Router::new()
            .route(&format!("/v2/{ENDPOINT}/run"), post(run))
            .route(&format!("/v2/{ENDPOINT}/status/{{id}}"), get(status))
            .route(&format!("/v2/{ENDPOINT}/cancel/{{id}}"), post(cancel))
            .fallback(|| async { error(StatusCode::NOT_FOUND, "not found") })
            .with_state(Arc::clone(&inner));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        for n in 0..comfyuis.len() {
            tokio::spawn(worker(Arc::clone(&inner), n));
        }
        FakeRunPod { base, inner }
    }

    /// Every job it was given, by RunPod id.
    pub fn jobs(&self) -> HashMap<String, FakeJob> {
        self.inner.jobs.lock().unwrap().clone()
    }

    /// Every `Authorization` header it saw.
    pub fn seen(&self) -> Vec<String> {
        self.inner.seen.lock().unwrap().clone()
    }
}

/// One worker: after the cold start, takes the next queued job and runs it as worker-comfyui does.
async fn worker(inner: Arc<Inner>, n: usize) {
    tokio::time::sleep(inner.options.cold).await;
    loop {
        let next = inner.queue.lock().unwrap().pop_front();
        let Some(id) = next else {
            tokio::select! {
                _ = inner.work.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
            continue;
        };
        let input = {
            let mut jobs = inner.jobs.lock().unwrap();
            let job = jobs.get_mut(&id).unwrap();
            if job.status != "IN_QUEUE" {
                continue; // cancelled while queued
            }
            job.status = "IN_PROGRESS";
            job.worker = Some(n);
            job.input.clone()
        };
        let result = handle(&inner, n, &id, &input).await;
        let mut jobs = inner.jobs.lock().unwrap();
        let job = jobs.get_mut(&id).unwrap();
        if job.status == "CANCELLED" {
            continue;
        }
        match result {
            Ok(output) => {
                job.status = "COMPLETED";
                job.output = output;
            }
            Err(why) => {
                job.status = "FAILED";
                job.output = Value::Null;
                job.error = Some(why);
            }
        }
    }
}

/// worker-comfyui's handler, against worker `n`'s ComfyUI.
async fn handle(inner: &Inner, n: usize, id: &str, input: &Value) -> Result<Value, String> {
    let client = &inner.comfy[n];
    if inner.options.fail_echoing_key {
        let auth = inner.jobs.lock().unwrap()[id].auth.clone();
        return Err(format!(
            "the storage service refused the upload; request headers: Authorization: {auth}"
        ));
    }
    let Some(workflow) = input.get("workflow") else {
        return Err("Missing 'workflow' parameter".into());
    };
    for image in input
        .get("images")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let (Some(name), Some(data)) = (
            image.get("name").and_then(Value::as_str),
            image.get("image").and_then(Value::as_str),
        ) else {
            return Err("'images' must be a list of objects with 'name' and 'image' keys".into());
        };
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(data)
            .map_err(|e| format!("Error decoding base64 for {name}: {e}"))?;
        client
            .upload_image(name, bytes.into(), true)
            .await
            .map_err(|e| format!("Failed to upload one or more input images: {e}"))?;
    }
    let client_id = uuid::Uuid::new_v4().to_string();
    let mut ws = WsConnection::connect(client, &client_id, Duration::from_secs(10))
        .await
        .map_err(|e| format!("WebSocket communication error: {e}"))?;
    let prompt_id = uuid::Uuid::new_v4().to_string();
    let request = PromptRequest {
        prompt: workflow,
        client_id: Some(&client_id),
        prompt_id: Some(&prompt_id),
        extra_data: None,
    };
    match client.submit(&request).await {
        Ok(_) => {}
        Err(comfyume_providers::Error::Rejected(body)) => {
            return Err(format!("Workflow validation failed: {body}"));
        }
        Err(e) => return Err(format!("Error queuing workflow: {e}")),
    }
    inner.jobs.lock().unwrap().get_mut(id).unwrap().prompt = Some(prompt_id.clone());
    loop {
        let frame = match ws.next().await {
            Some(Ok(frame)) => frame,
            other => return Err(format!("WebSocket communication error: {other:?}")),
        };
        let Frame::Message(message) = frame else { continue };
        if message.prompt_id() != Some(prompt_id.as_str()) {
            continue;
        }
        match message {
            ServerMessage::Progress(p) => {
                let (value, max) = (steps(&p.value), steps(&p.max));
                let update = json!({
                    "type": "progress", "value": value, "max": max,
                    "percent": value as f64 * 100.0 / max.max(1) as f64, "node": p.node,
                });
                if let Some(job) = inner.jobs.lock().unwrap().get_mut(id) {
                    job.output = update;
                }
            }
            ServerMessage::ExecutionSuccess(_) => break,
            ServerMessage::ExecutionError(e) => {
                return Err(format!(
                    "Workflow execution error: Node Type: {}, Node ID: {}, Message: {}",
                    e.node_type.clone().unwrap_or_default(),
                    e.node_id.clone().unwrap_or_default(),
                    e.exception_message
                ));
            }
            ServerMessage::ExecutionInterrupted(_) => return Err("Workflow interrupted".into()),
            _ => {}
        }
    }
    ws.close().await;
    let history = client
        .history(&prompt_id)
        .await
        .map_err(|e| format!("HTTP communication error with ComfyUI: {e}"))?
        .ok_or_else(|| format!("Prompt ID {prompt_id} not found in history after execution."))?;
    let mut images = Vec::new();
    for output in history.outputs.values() {
        for item in output
            .get("images")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let file: FileRef = serde_json::from_value(item.clone()).unwrap();
            if file.kind == "temp" {
                continue;
            }
            let bytes = client.view(&file).await.map_err(|e| e.to_string())?;
            images.push(json!({
                "filename": file.filename,
                "type": "base64",
                "data": base64::engine::general_purpose::STANDARD.encode(&bytes),
            }));
        }
    }
    Ok(if images.is_empty() {
        json!({"status": "success_no_output"})
    } else {
        json!({ "images": images })
    })
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(json!({ "error": message }))).into_response()
}

/// The request's `Authorization` header when it carries the key; an error answer otherwise.
fn check(inner: &Inner, headers: &HeaderMap) -> Result<String, Box<Response>> {
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    inner.seen.lock().unwrap().push(auth.clone());
    if let Some(code) = inner.options.echo_key {
        return Err(Box::new(error(
            StatusCode::from_u16(code).unwrap(),
            &format!("gateway trouble; your request had Authorization: {auth}"),
        )));
    }
    if auth != format!("Bearer {}", inner.key) {
        return Err(Box::new(error(StatusCode::UNAUTHORIZED, "Unauthorized")));
    }
    Ok(auth)
}

async fn run(State(inner): State<Arc<Inner>>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    let auth = match check(&inner, &headers) {
        Ok(auth) => auth,
        Err(r) => return *r,
    };
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return error(StatusCode::BAD_REQUEST, "invalid JSON");
    };
    let Some(input) = body.get("input").filter(|i| i.is_object()) else {
        return error(StatusCode::BAD_REQUEST, "the body needs an `input` object");
    };
    let id = format!("{}-u1", uuid::Uuid::new_v4());
    inner.jobs.lock().unwrap().insert(
        id.clone(),
        FakeJob {
            status: "IN_QUEUE",
            input: input.clone(),
            output: Value::Null,
            error: None,
            worker: None,
            prompt: None,
            cancel_asked: false,
            auth,
        },
    );
    inner.queue.lock().unwrap().push_back(id.clone());
    inner.work.notify_one();
    axum::Json(json!({"id": id, "status": "IN_QUEUE"})).into_response()
}

async fn status(State(inner): State<Arc<Inner>>, Path(id): Path<String>, headers: HeaderMap) -> Response {
    if let Err(r) = check(&inner, &headers) {
        return *r;
    }
    let Some(job) = inner.jobs.lock().unwrap().get(&id).cloned() else {
        return error(StatusCode::NOT_FOUND, "request does not exist");
    };
    let mut answer = json!({"id": id, "status": job.status, "delayTime": 10});
    if !job.output.is_null() {
        answer["output"] = job.output;
    }
    if let Some(e) = job.error {
        answer["error"] = Value::String(e);
    }
    axum::Json(answer).into_response()
}

async fn cancel(State(inner): State<Arc<Inner>>, Path(id): Path<String>, headers: HeaderMap) -> Response {
    if let Err(r) = check(&inner, &headers) {
        return *r;
    }
    let interrupt = {
        let mut jobs = inner.jobs.lock().unwrap();
        let Some(job) = jobs.get_mut(&id) else {
            return error(StatusCode::NOT_FOUND, "request does not exist");
        };
        job.cancel_asked = true;
        let running = job.status == "IN_PROGRESS";
        if matches!(job.status, "IN_QUEUE" | "IN_PROGRESS") {
            job.status = "CANCELLED";
        }
        running.then(|| (job.worker, job.prompt.clone()))
    };
    if let Some((Some(n), Some(prompt))) = interrupt {
        let _ = inner.comfy[n].interrupt(Some(&prompt)).await;
    }
    axum::Json(json!({"id": id, "status": "CANCELLED"})).into_response()
}
