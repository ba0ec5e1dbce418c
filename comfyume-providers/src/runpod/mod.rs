//! [`RunPodProvider`]: a RunPod serverless endpoint (queue-based) running the common ComfyUI worker
//! image (`runpod/worker-comfyui`), as one [`InferenceProvider`].
//!
//! RunPod keeps its own queue in front of the endpoint's workers and answers each job by its id, so
//! nothing depends on reaching one worker twice. One comfyume job is one RunPod job:
//! 1. `POST <base>/v2/<endpoint>/run` with `Authorization: Bearer <key>` and
//!    `{"input": {"workflow": …, "images": [{"name", "image"}]}}`: the workflow with the output rewrite
//!    (`comfyume/<job_id>/…`, see [`rewrite_workflow`](crate::comfyui::rewrite_workflow)) and the
//!    owner's input files that its loaders name, base64, under names unique to the job (the worker
//!    uploads them into its ComfyUI's `input/`). RunPod answers with the job's id.
//! 2. `GET /v2/<endpoint>/status/<id>`, every `poll_interval`: `IN_QUEUE` is "waiting for a GPU to start"
//!    ([`WAITING_FOR_GPU`]) until the cold-start budget is spent (then the RunPod job is cancelled and the
//!    attempt fails as a start timeout); `IN_PROGRESS` is started, with the worker's step progress when it
//!    reports any; `COMPLETED` carries the worker's output; `FAILED` its error (a workflow the worker's
//!    ComfyUI refused or a node error is the user's, never retried); `CANCELLED` and `TIMED_OUT` end the
//!    attempt.
//! 3. The output's files (`{"images": [{"filename", "type": "base64" | "s3_url", "data"}], "audio": …}`,
//!    or the older `{"message": [{"node_id", "imageType", "image"}]}`) are decoded or downloaded and
//!    handed to the job's owner, each under the subfolder and node of the save node that wrote it
//!    (found by its file name, see `output.rs`).
//! 4. Cancelling a job (or dropping it, on a timeout) sends `POST /v2/<endpoint>/cancel/<id>`, also for a
//!    job whose `/run` answer is still on its way.
//!
//! Capacity is `max_workers × concurrency`: jobs wait in comfyume's fair queue, not in RunPod's. Cold
//! starts over budget, 5xx answers and lost connections count against the endpoint ([`Gate`]); after
//! repeated ones it sits out a cool-down and the dispatcher sends jobs to the next provider in the
//! failover order. Errors quote RunPod's own words (`error`/`message` of its answer) and never the key.

mod job;
mod output;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use comfyume_core::inputs::InputStore;
use comfyume_core::{
    Capacity, Health, InferenceProvider, Job, JobId, ProviderError, ProviderEventStream, WAITING_FOR_GPU,
    Warmth,
};

use crate::error::{Error, Result};
use crate::serverless::{ApiKey, Gate, GateConfig, bearer_client};

/// RunPod's API for serverless endpoints: `<base>/v2/<endpoint>/…`.
pub const RUNPOD_BASE: &str = "https://api.runpod.ai";

/// The largest `/run` body RunPod takes for an asynchronous job (10 MB, per its documentation): the
/// workflow and the inputs, base64.
pub const RUN_PAYLOAD_LIMIT: usize = 10 * 1000 * 1000;

/// Settings of one RunPod endpoint.
#[derive(Clone, Debug)]
pub struct RunPodConfig {
    /// Name for logs, metrics and the admin page.
    pub name: String,
    /// The endpoint's id at RunPod.
    pub endpoint_id: String,
    /// RunPod's API base, [`RUNPOD_BASE`] (another in tests).
    pub base_url: String,
    /// The bearer key (`None` only for a test endpoint that wants none).
    pub api_key: Option<ApiKey>,
    /// Most workers the endpoint scales to.
    pub max_workers: usize,
    /// Jobs one worker runs at once (worker-comfyui: 1).
    pub concurrency: usize,
    /// How often a job's status is asked (default every second).
    pub poll_interval: Duration,
    /// Longest a job may stay `IN_QUEUE` while a worker starts; longer cancels it and fails the attempt
    /// as a start timeout (keep it under `[jobs] start_timeout_secs`).
    pub cold_start_timeout: Duration,
    /// `IN_QUEUE` for this long, the job reports "waiting for a GPU to start" (at once when the endpoint
    /// is known to be cold).
    pub waiting_after: Duration,
    /// Longest wait for an answer to one request.
    pub request_timeout: Duration,
    /// Longest wait for a connection.
    pub connect_timeout: Duration,
    /// Warmth and failover.
    pub gate: GateConfig,
    /// Extra node classes that take a `filename_prefix` (custom save nodes).
    pub extra_prefix_classes: Vec<String>,
}

impl RunPodConfig {
    /// An endpoint with the defaults: 1 worker of concurrency 1, a 9-minute cold-start budget.
    pub fn new(name: impl Into<String>, endpoint_id: impl Into<String>, api_key: Option<ApiKey>) -> Self {
        Self {
            name: name.into(),
            endpoint_id: endpoint_id.into(),
            base_url: RUNPOD_BASE.to_string(),
            api_key,
            max_workers: 1,
            concurrency: 1,
            poll_interval: Duration::from_secs(1),
            cold_start_timeout: Duration::from_secs(540),
            waiting_after: Duration::from_secs(2),
            request_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            gate: GateConfig::default(),
            extra_prefix_classes: Vec::new(),
        }
    }
}

/// Where one attempt of a job stands with RunPod, for cancelling it.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Remote {
    /// `/run` was sent; its answer (the RunPod id) has not come yet.
    Submitting,
    /// RunPod knows it under this id and has not ended it.
    Running(String),
}

/// The attempts in flight: job → (attempt serial, where it stands).
#[derive(Debug, Default)]
struct Attempts {
    jobs: HashMap<JobId, (u64, Remote)>,
    serial: u64,
}

/// What the jobs of one endpoint share.
pub(crate) struct Endpoint {
    config: RunPodConfig,
    /// `<base>/v2/<endpoint>/`.
    api: reqwest::Url,
    /// Sends the bearer key.
    http: reqwest::Client,
    /// Downloads output URLs (a bucket's): never sends the key.
    downloads: reqwest::Client,
    gate: Gate,
    attempts: Mutex<Attempts>,
    inputs: Option<Arc<dyn InputStore>>,
}

impl Endpoint {
    /// `<base>/v2/<endpoint>/<path>`.
    fn url(&self, path: &str) -> std::result::Result<reqwest::Url, String> {
        self.api
            .join(path)
            .map_err(|e| format!("cannot make a URL of '{path}': {e}"))
    }

    /// `text` without the API key in it.
    fn redact(&self, text: &str) -> String {
        match &self.config.api_key {
            Some(key) => key.redact(text),
            None => text.to_string(),
        }
    }

    fn attempts(&self) -> MutexGuard<'_, Attempts> {
        self.attempts.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// See the module docs.
pub struct RunPodProvider {
    endpoint: Arc<Endpoint>,
}

impl std::fmt::Debug for RunPodProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunPodProvider")
            .field("name", &self.endpoint.config.name)
            .field("endpoint", &self.endpoint.config.endpoint_id)
            .finish_non_exhaustive()
    }
}

impl RunPodProvider {
    /// Checks the settings. Makes no request: the first job tells whether the endpoint and the key work.
    pub fn start(config: RunPodConfig) -> Result<Self> {
        let bad = |why: &str| Err(Error::Config(format!("provider '{}': {why}", config.name)));
        if config.max_workers == 0 || config.concurrency == 0 {
            return bad("max_workers and concurrency must be at least 1");
        }
        if config.poll_interval.is_zero() {
            return bad("the poll interval must be above 0");
        }
        let id = &config.endpoint_id;
        if id.is_empty()
            || !id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return bad(&format!("'{id}' is not a RunPod endpoint id"));
        }
        let base = reqwest::Url::parse(&config.base_url)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.query().is_none());
        let Some(base) = base else {
            return bad(&format!("'{}' is not an http(s) base URL", config.base_url));
        };
        let api = base
            .join(&format!("{}/v2/{id}/", base.path().trim_end_matches('/')))
            .map_err(|e| Error::Config(format!("provider '{}': {e}", config.name)))?;
        let http = bearer_client(
            config.api_key.as_ref(),
            config.request_timeout,
            config.connect_timeout,
        )?;
        let downloads = bearer_client(None, Duration::from_secs(300), config.connect_timeout)?;
        let gate = Gate::new(config.gate.clone());
        Ok(Self {
            endpoint: Arc::new(Endpoint {
                config,
                api,
                http,
                downloads,
                gate,
                attempts: Mutex::default(),
                inputs: None,
            }),
        })
    }

    /// Ships jobs' inputs from `store`: a loader (`LoadImage`'s `image`, …) naming one of the job owner's
    /// inputs gets that file in the request's `images`, under a name unique to the job. Without it,
    /// loaders name files already on the workers. Call before the provider is shared.
    pub fn with_inputs(mut self, store: Arc<dyn InputStore>) -> Self {
        if let Some(endpoint) = Arc::get_mut(&mut self.endpoint) {
            endpoint.inputs = Some(store);
        }
        self
    }

    /// The settings it runs with.
    pub fn config(&self) -> &RunPodConfig {
        &self.endpoint.config
    }
}

#[async_trait]
impl InferenceProvider for RunPodProvider {
    fn name(&self) -> &str {
        &self.endpoint.config.name
    }

    fn capacity(&self) -> Capacity {
        let c = &self.endpoint.config;
        Capacity {
            slots: c.max_workers.saturating_mul(c.concurrency),
        }
    }

    async fn submit(&self, job: &Job) -> std::result::Result<ProviderEventStream, ProviderError> {
        job::submit(Arc::clone(&self.endpoint), job).await
    }

    /// `POST /cancel/<id>` for the job's RunPod job; a job whose `/run` answer has not come yet is
    /// cancelled as soon as it comes.
    async fn cancel(&self, job: JobId) -> std::result::Result<(), ProviderError> {
        job::cancel(&self.endpoint, job).await
    }

    /// From what jobs observed (no request): unavailable while failing over.
    async fn health(&self) -> Health {
        self.endpoint.gate.health()
    }

    fn health_interval(&self) -> Duration {
        self.endpoint.gate.health_interval()
    }

    async fn health_changed(&self) {
        self.endpoint.gate.changed().await;
    }

    fn warmth(&self) -> Warmth {
        self.endpoint.gate.warmth()
    }
}

/// The message of [`comfyume_core::ProviderEvent::Waiting`] while a job is `IN_QUEUE`.
fn waiting_message() -> String {
    WAITING_FOR_GPU.to_string()
}
