//! A **fake** serverless platform with an async-inference layer, for tests only (a test tool, not Verda):
//! it takes `POST <deployment>/comfyume/run` with `Prefer: respond-async` and an `X-Inference-Id`, keeps
//! the requests in one internal FIFO queue, hands each to whichever `comfyume agent` is free (no replica
//! affinity), keeps each request's status and the agent's answer, and serves them on the status and
//! result paths (with `X-Inference-Id`), all behind a bearer key. Optionally it starts "cold": no agent
//! takes work until a delay has passed.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use tokio::sync::Notify;

#[derive(Clone, Debug, PartialEq)]
enum Status {
    Queued,
    Running,
    Completed(Value),
    Failed(String),
}

struct Inner {
    key: String,
    queue: Mutex<VecDeque<(String, Value)>>,
    status: Mutex<HashMap<String, Status>>,
    /// Which agent ran which request, in order.
    ran: Mutex<Vec<(String, usize)>>,
    work: Notify,
}

/// See the module docs.
pub struct FakePlatform {
    /// The deployment's URL (`http://127.0.0.1:<port>/my-deployment`).
    pub url: String,
    inner: Arc<Inner>,
}

const DEPLOYMENT: &str = "my-deployment";

impl FakePlatform {
    /// Starts the platform in front of these agents (their base URLs), with a cold start of `cold`.
    pub async fn start(key: &str, agents: Vec<String>, cold: Duration) -> FakePlatform {
        let inner = Arc::new(Inner {
            key: key.to_string(),
            queue: Mutex::default(),
            status: Mutex::default(),
            ran: Mutex::default(),
            work: Notify::new(),
        });
        let app = axum::Router::new()
            .route(&format!("/{DEPLOYMENT}/comfyume/run"), post(run))
            .route(&format!("/{DEPLOYMENT}/status"), get(status))
            .route(&format!("/{DEPLOYMENT}/result"), get(result))
            .with_state(Arc::clone(&inner));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/{DEPLOYMENT}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        let http = reqwest::Client::new();
        for (n, agent) in agents.into_iter().enumerate() {
            tokio::spawn(replica(Arc::clone(&inner), http.clone(), agent, n, cold));
        }
        FakePlatform { url, inner }
    }

    /// Which replica ran each request, in the order they were taken.
    pub fn ran(&self) -> Vec<(String, usize)> {
        self.inner.ran.lock().unwrap().clone()
    }
}

/// One replica: after the cold start and once its agent is healthy, takes the next request of the
/// shared queue, runs it on its agent (synchronously) and keeps the answer.
async fn replica(inner: Arc<Inner>, http: reqwest::Client, agent: String, n: usize, cold: Duration) {
    tokio::time::sleep(cold).await;
    loop {
        match http.get(format!("{agent}/health")).send().await {
            Ok(r) if r.status().is_success() => break,
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    loop {
        let next = inner.queue.lock().unwrap().pop_front();
        let Some((id, body)) = next else {
            tokio::select! {
                _ = inner.work.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
            continue;
        };
        inner.status.lock().unwrap().insert(id.clone(), Status::Running);
        inner.ran.lock().unwrap().push((id.clone(), n));
        let answer = http
            .post(format!("{agent}/comfyume/run"))
            .json(&body)
            .send()
            .await;
        let status = match answer {
            Ok(r) if r.status().is_success() => Status::Completed(r.json().await.unwrap_or(Value::Null)),
            Ok(r) => Status::Failed(format!("the container answered HTTP {}", r.status())),
            Err(e) => Status::Failed(format!("the container did not answer: {e}")),
        };
        inner.status.lock().unwrap().insert(id, status);
    }
}

fn authorized(inner: &Inner, headers: &HeaderMap) -> bool {
    headers.get("authorization").and_then(|v| v.to_str().ok())
        == Some(format!("Bearer {}", inner.key).as_str())
}

fn inference_id(headers: &HeaderMap) -> Option<String> {
    headers
        .get("x-inference-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(json!({ "error": message }))).into_response()
}

async fn run(State(inner): State<Arc<Inner>>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    if !authorized(&inner, &headers) {
        return error(StatusCode::UNAUTHORIZED, "invalid API key");
    }
    if headers.get("prefer").and_then(|v| v.to_str().ok()) != Some("respond-async") {
        return error(
            StatusCode::BAD_REQUEST,
            "this test platform only serves Prefer: respond-async",
        );
    }
    let id = inference_id(&headers).unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let Ok(body) = serde_json::from_slice::<Value>(&body) else {
        return error(StatusCode::BAD_REQUEST, "the body is not JSON");
    };
    inner.status.lock().unwrap().insert(id.clone(), Status::Queued);
    inner.queue.lock().unwrap().push_back((id.clone(), body));
    inner.work.notify_one();
    let result = format!("/{DEPLOYMENT}/result");
    (
        StatusCode::ACCEPTED,
        [("x-inference-id", id.clone()), ("location", result.clone())],
        axum::Json(json!({"Id": id, "StatusPath": format!("/{DEPLOYMENT}/status"), "ResultPath": result})),
    )
        .into_response()
}

async fn status(State(inner): State<Arc<Inner>>, headers: HeaderMap) -> Response {
    if !authorized(&inner, &headers) {
        return error(StatusCode::UNAUTHORIZED, "invalid API key");
    }
    let Some(id) = inference_id(&headers) else {
        return error(StatusCode::BAD_REQUEST, "X-Inference-Id is missing");
    };
    let word = match inner.status.lock().unwrap().get(&id) {
        None => return error(StatusCode::NOT_FOUND, "no such request"),
        Some(Status::Queued) => "Queued",
        Some(Status::Running) => "Running",
        Some(Status::Completed(_)) => "Completed",
        Some(Status::Failed(_)) => "Failed",
    };
    axum::Json(json!({"Id": id, "Status": word})).into_response()
}

async fn result(State(inner): State<Arc<Inner>>, headers: HeaderMap) -> Response {
    if !authorized(&inner, &headers) {
        return error(StatusCode::UNAUTHORIZED, "invalid API key");
    }
    let Some(id) = inference_id(&headers) else {
        return error(StatusCode::BAD_REQUEST, "X-Inference-Id is missing");
    };
    match inner.status.lock().unwrap().get(&id) {
        Some(Status::Completed(body)) => axum::Json(body.clone()).into_response(),
        Some(Status::Failed(why)) => error(StatusCode::INTERNAL_SERVER_ERROR, why),
        Some(_) => error(StatusCode::NOT_FOUND, "not ready"),
        None => error(StatusCode::NOT_FOUND, "no such request"),
    }
}
