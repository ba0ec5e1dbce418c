//! The **comfyume agent**: a small sidecar that runs beside an unmodified ComfyUI inside a GPU container
//! (ComfyUI stays vanilla: no custom nodes) and turns "run this workflow" into one request that answers
//! when the workflow has finished — what a serverless platform's async-inference layer needs, since
//! ComfyUI's own `POST /prompt` answers at once.
//!
//! It talks to its ComfyUI over loopback only, so `/ws`, `/history` and `/view` always reach the same
//! instance, and offers:
//! - `POST /comfyume/run` ([`RunRequest`] → [`RunResponse`]): runs one workflow to its end and answers
//!   with its outputs inline (base64). Requests wait their turn: ComfyUI runs one prompt at a time.
//!   With a job-scoped callback (URL + token) in the request, the job's live messages (`executing`,
//!   `progress`, `executed`, …) are pushed to the comfyume server as they happen, so serverless users see
//!   real progress.
//! - `GET /health`: `503 {"status":"starting"}` until ComfyUI answers and the optional warm-up workflow
//!   has run; `200 {"status":"ready"}` when idle; `200 {"status":"busy"}` while a workflow runs;
//!   `503 {"status":"stopping"}` after SIGTERM (see [`Agent::stopping`]), so the platform sends nothing
//!   more while the running job finishes.
//!
//! The output rewrite (`comfyume/<job_id>/…`) is made by the comfyume server before the workflow is sent;
//! the agent runs what it gets.

mod run;

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::error::Result;
use crate::protocol::ComfyClient;

pub use run::{InlineFile, RunFailure, RunResponse};

/// What the comfyume server sends to `POST /comfyume/run`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunRequest {
    /// The job id, used as ComfyUI's `prompt_id`.
    pub job_id: String,
    /// The workflow in ComfyUI's API format (already rewritten by the server).
    pub workflow: Value,
    /// ComfyUI's `extra_data` (e.g. `extra_pnginfo`).
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub extra_data: Value,
    /// Where to push live messages, if anywhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback: Option<Callback>,
}

/// A job-scoped callback: the server's URL for this job's messages and the token for it alone.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Callback {
    /// `https://<server>/api/v1/callbacks/<job_id>`.
    pub url: String,
    /// Sent as `Authorization: Bearer <token>`.
    pub token: String,
}

impl std::fmt::Debug for Callback {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Callback")
            .field("url", &self.url)
            .field("token", &"***")
            .finish()
    }
}

/// Settings of an [`Agent`].
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// The ComfyUI beside it (default `http://127.0.0.1:8188`).
    pub comfyui_url: String,
    /// A workflow run once before the agent reports ready (loads models into GPU memory).
    pub warmup: Option<Value>,
    /// Longest wait for one request to ComfyUI.
    pub request_timeout: Duration,
    /// How often ComfyUI is asked whether it is up, while starting.
    pub startup_poll: Duration,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            comfyui_url: "http://127.0.0.1:8188".into(),
            warmup: None,
            request_timeout: Duration::from_secs(60),
            startup_poll: Duration::from_millis(500),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Phase {
    Starting(String),
    Ready,
    Stopping,
}

struct Shared {
    config: AgentConfig,
    client: ComfyClient,
    callbacks: reqwest::Client,
    phase: Mutex<Phase>,
    running: std::sync::atomic::AtomicUsize,
    /// ComfyUI runs one prompt at a time: requests take turns.
    turn: tokio::sync::Mutex<()>,
}

/// See the module docs. Cheap to clone.
#[derive(Clone)]
pub struct Agent {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("comfyui_url", &self.shared.config.comfyui_url)
            .finish_non_exhaustive()
    }
}

impl Agent {
    /// An agent for the ComfyUI at `config.comfyui_url`; starting (unhealthy) until [`Agent::prepare`].
    pub fn new(config: AgentConfig) -> Result<Self> {
        let client = ComfyClient::new(
            &config.comfyui_url,
            config.request_timeout,
            Duration::from_secs(5),
        )?;
        let callbacks = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| crate::Error::Config(format!("cannot build an HTTP client: {e}")))?;
        Ok(Self {
            shared: Arc::new(Shared {
                config,
                client,
                callbacks,
                phase: Mutex::new(Phase::Starting("waiting for ComfyUI".into())),
                running: Default::default(),
                turn: tokio::sync::Mutex::new(()),
            }),
        })
    }

    fn phase(&self) -> MutexGuard<'_, Phase> {
        self.shared.phase.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until ComfyUI answers, runs the warm-up workflow if there is one, then reports ready. A
    /// failing warm-up keeps the agent unhealthy (with the reason), so the platform replaces it.
    pub async fn prepare(&self) {
        loop {
            if *self.phase() == Phase::Stopping {
                return;
            }
            match self.shared.client.system_stats().await {
                Ok(_) => break,
                Err(e) => *self.phase() = Phase::Starting(format!("waiting for ComfyUI: {e}")),
            }
            tokio::time::sleep(self.shared.config.startup_poll).await;
        }
        if let Some(workflow) = self.shared.config.warmup.clone() {
            *self.phase() = Phase::Starting("running the warm-up workflow".into());
            let request = RunRequest {
                job_id: uuid::Uuid::new_v4().to_string(),
                workflow,
                extra_data: Value::Null,
                callback: None,
            };
            let response = run::run(&self.shared, &request).await;
            if let Some(error) = response.error {
                tracing::error!(error = %error.message, "the warm-up workflow failed; staying unhealthy");
                *self.phase() = Phase::Starting(format!("the warm-up workflow failed: {}", error.message));
                return;
            }
        }
        let mut phase = self.phase();
        if *phase != Phase::Stopping {
            *phase = Phase::Ready;
        }
    }

    /// From now on `/health` answers `503 stopping` (call on SIGTERM); a running job still finishes.
    pub fn stopping(&self) {
        *self.phase() = Phase::Stopping;
    }

    /// True while a workflow runs.
    pub fn busy(&self) -> bool {
        self.shared.running.load(std::sync::atomic::Ordering::SeqCst) > 0
    }

    /// The agent's routes: `POST /comfyume/run`, `GET /health`.
    pub fn router(&self) -> axum::Router {
        axum::Router::new()
            .route("/comfyume/run", post(run_handler))
            .route("/health", get(health_handler))
            .with_state(self.clone())
    }
}

async fn health_handler(State(agent): State<Agent>) -> Response {
    let phase = agent.phase().clone();
    match phase {
        Phase::Starting(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "starting", "reason": reason})),
        )
            .into_response(),
        Phase::Stopping => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "stopping"})),
        )
            .into_response(),
        Phase::Ready if agent.busy() => Json(json!({"status": "busy"})).into_response(),
        Phase::Ready => Json(json!({"status": "ready"})).into_response(),
    }
}

async fn run_handler(State(agent): State<Agent>, body: axum::body::Bytes) -> Response {
    let request: RunRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                Json(json!({"error": format!("not a run request: {e}")})),
            )
                .into_response();
        }
    };
    if let Phase::Starting(reason) = agent.phase().clone() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"error": format!("not ready: {reason}")})),
        )
            .into_response();
    }
    let _turn = agent.shared.turn.lock().await;
    let shared = &agent.shared;
    shared.running.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let response = run::run(shared, &request).await;
    shared.running.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    Json(response).into_response()
}
