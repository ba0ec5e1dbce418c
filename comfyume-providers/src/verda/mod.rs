//! [`VerdaProvider`]: a Verda (formerly DataCrunch) serverless container deployment running ComfyUI, as
//! one [`InferenceProvider`].
//!
//! Verda's load balancer sends every request to whichever replica is free: a `POST /prompt` reaches
//! replica A and the next `GET /history` replica B, which has never heard of the prompt. So this provider
//! never depends on reaching the same replica twice. Its **shared-directory mode** (the one built so
//! far):
//! 1. The workflow gets the output rewrite (`comfyume/<job_id>/…`, see
//!    [`rewrite_workflow`](crate::comfyui::rewrite_workflow)) and is POSTed to `<deployment>/prompt`
//!    with the job id as `prompt_id` and `Authorization: Bearer <key>`.
//! 2. The replicas write into a shared output directory (an NFS mount in production) that this server
//!    sees too. A polling [`Scanner`] looks into `comfyume/<job_id>/` of every job in flight and hands
//!    each file to the job's owner once it is complete (never half-written, see [`scan`]).
//! 3. The job is complete when every save node of the workflow has written at least one complete file
//!    and the job's directory stayed quiet for the settle time — or, sooner, when a `GET /history/<id>`
//!    happens to reach the replica that ran it (an extra, never relied upon: it may also report a node
//!    error, which otherwise ends as an execution timeout).
//! 4. After comfyume recorded the result, the job's directory is deleted.
//!
//! While no replica answers (the deployment scaled to zero), the job reports "waiting for a GPU to
//! start" ([`WAITING_FOR_GPU`]); a cold start longer than the configured budget fails the attempt as a
//! start timeout, and repeated failures (cold starts over budget, 5xx answers, no connection) take the
//! deployment out of rotation for a cool-down ([`Gate`]), so the dispatcher sends jobs to the next
//! deployment in the failover order.
//!
//! Capacity is `max_replicas × concurrency`: jobs wait in comfyume's fair queue, not in Verda's.
//!
//! Its **async-inference mode** ([`VerdaMode::Async`], see `async_mode.rs`) sends the whole job as one
//! request to the `comfyume agent` ([`crate::agent`]) in the container through Verda's async layer
//! (`Prefer: respond-async`, the job id as `X-Inference-Id`), polls the request's status path and fetches
//! the agent's answer (outputs inline) from its result path; live progress comes from the agent to the
//! server's callback route. Cancelling a job there is not possible (no documented way to withdraw an
//! async request): the container finishes it and the answer is ignored.

mod async_mode;
pub mod scan;
mod shared;

pub use async_mode::Phase;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use comfyume_core::{
    CallbackHub, Capacity, Health, InferenceProvider, Job, JobId, ProviderError, ProviderEventStream,
    WAITING_FOR_GPU, Warmth,
};

use crate::error::{Error, Result};
use crate::protocol::ComfyClient;
use crate::serverless::{ApiKey, Gate, GateConfig, bearer_client};
pub use scan::Scanner;

/// Where Verda's serverless containers live: `<base>/<deployment>`.
pub const VERDA_BASE: &str = "https://containers.datacrunch.io";

/// How a [`VerdaProvider`] gets a job's results.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum VerdaMode {
    /// Outputs are picked up from a directory the replicas and this server share.
    SharedDir(SharedDirConfig),
    /// The platform's async inference in front of a `comfyume agent`.
    Async(AsyncConfig),
}

/// Settings of the async-inference mode.
#[derive(Clone, Debug)]
pub struct AsyncConfig {
    /// How often the request's status is asked (default every second).
    pub poll_interval: Duration,
    /// The agent's run path below the deployment (default `comfyume/run`).
    pub run_path: String,
    /// Where the agent pushes live progress; `None`: no live progress, only the status.
    pub callbacks: Option<Callbacks>,
}

impl Default for AsyncConfig {
    fn default() -> Self {
        Self {
            poll_interval: Duration::from_secs(1),
            run_path: "comfyume/run".into(),
            callbacks: None,
        }
    }
}

/// Live progress from the agents: the server's URL as the containers reach it (its callback route is
/// `<public_url>/api/v1/callbacks/<job>`) and the hub that route delivers to.
#[derive(Clone, Debug)]
pub struct Callbacks {
    /// The comfyume server's URL as the GPU containers reach it.
    pub public_url: String,
    /// Shared with the server's callback route.
    pub hub: CallbackHub,
}

/// Settings of the shared-directory mode.
#[derive(Clone, Debug, PartialEq)]
pub struct SharedDirConfig {
    /// ComfyUI's output directory as mounted on this server (the replicas write `comfyume/<job>/…`
    /// below it).
    pub output_dir: PathBuf,
    /// How often the directories of jobs in flight are listed (default 100 ms).
    pub scan_interval: Duration,
    /// How long a file without a format check must stay unchanged, and a job's directory quiet, before
    /// it counts as complete (default 200 ms). On NFS, mount with a short attribute cache
    /// (`actimeo=1`) so that new files show up within it.
    pub settle: Duration,
    /// How often `GET /history/<id>` is tried (it reaches a random replica; default every 2 s; `None`:
    /// never).
    pub history_poll: Option<Duration>,
}

impl SharedDirConfig {
    /// The defaults for an output directory.
    pub fn new(output_dir: impl Into<PathBuf>) -> Self {
        Self {
            output_dir: output_dir.into(),
            scan_interval: Duration::from_millis(100),
            settle: Duration::from_millis(200),
            history_poll: Some(Duration::from_secs(2)),
        }
    }
}

/// Settings of one Verda deployment.
#[derive(Clone, Debug)]
pub struct VerdaConfig {
    /// Name for logs, metrics and the admin page.
    pub name: String,
    /// The deployment's URL, `https://containers.datacrunch.io/<deployment>` (another base in tests).
    pub url: String,
    /// The bearer key (`None` only for a test platform that wants none).
    pub api_key: Option<ApiKey>,
    /// How results come back.
    pub mode: VerdaMode,
    /// Most replicas the deployment scales to.
    pub max_replicas: usize,
    /// Jobs one replica runs at once (ComfyUI: 1).
    pub concurrency: usize,
    /// Longest wait for a first answer while a replica starts; longer fails the attempt as a start
    /// timeout (keep it under `[jobs] start_timeout_secs`).
    pub cold_start_timeout: Duration,
    /// Without an answer for this long, the job reports "waiting for a GPU to start" (at once when the
    /// deployment is known to be cold).
    pub waiting_after: Duration,
    /// Longest wait for an answer to other requests.
    pub request_timeout: Duration,
    /// Longest wait for a connection.
    pub connect_timeout: Duration,
    /// Warmth and failover.
    pub gate: GateConfig,
    /// Extra node classes that take a `filename_prefix` (custom save nodes).
    pub extra_prefix_classes: Vec<String>,
}

impl VerdaConfig {
    /// A deployment with the defaults: 1 replica of concurrency 1, a 10-minute cold-start budget.
    pub fn new(
        name: impl Into<String>,
        url: impl Into<String>,
        api_key: Option<ApiKey>,
        mode: VerdaMode,
    ) -> Self {
        Self {
            name: name.into(),
            url: url.into(),
            api_key,
            mode,
            max_replicas: 1,
            concurrency: 1,
            cold_start_timeout: Duration::from_secs(540),
            waiting_after: Duration::from_secs(2),
            request_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            gate: GateConfig::default(),
            extra_prefix_classes: Vec::new(),
        }
    }
}

/// What the jobs of one deployment share.
pub(crate) struct Deployment {
    pub config: VerdaConfig,
    pub client: ComfyClient,
    /// The same connection pool, for the requests that are not ComfyUI's.
    pub http: reqwest::Client,
    pub gate: Gate,
    /// Shared-directory mode only.
    pub scanner: Option<Arc<Scanner>>,
}

impl Deployment {
    /// `text` without the API key in it.
    pub(crate) fn redact(&self, text: &str) -> String {
        match &self.config.api_key {
            Some(key) => key.redact(text),
            None => text.to_string(),
        }
    }

    /// A failure without the API key in its message or details.
    pub(crate) fn redact_failure(&self, mut failure: comfyume_core::Failure) -> comfyume_core::Failure {
        if let Some(key) = &self.config.api_key {
            failure.message = key.redact(&failure.message);
            let details = key.redact(&failure.details.to_string());
            failure.details = serde_json::from_str(&details).unwrap_or(serde_json::Value::Null);
        }
        failure
    }
}

/// See the module docs.
pub struct VerdaProvider {
    deployment: Arc<Deployment>,
}

impl std::fmt::Debug for VerdaProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerdaProvider")
            .field("name", &self.deployment.config.name)
            .field("url", &self.deployment.config.url)
            .finish_non_exhaustive()
    }
}

impl VerdaProvider {
    /// Checks the settings and starts the scanner (inside a tokio runtime). Makes no request: asking a
    /// scaled-to-zero deployment anything would start a GPU.
    pub fn start(config: VerdaConfig) -> Result<Self> {
        if config.max_replicas == 0 || config.concurrency == 0 {
            return Err(Error::Config(format!(
                "provider '{}': max_replicas and concurrency must be at least 1",
                config.name
            )));
        }
        let scanner = match &config.mode {
            VerdaMode::SharedDir(shared) => {
                if shared.scan_interval.is_zero() {
                    return Err(Error::Config(format!(
                        "provider '{}': the scan interval must be above 0",
                        config.name
                    )));
                }
                let scanner = Scanner::new(shared.output_dir.clone(), shared.scan_interval, shared.settle);
                tokio::spawn(Arc::clone(&scanner).run());
                Some(scanner)
            }
            VerdaMode::Async(a) => {
                if a.poll_interval.is_zero() {
                    return Err(Error::Config(format!(
                        "provider '{}': the poll interval must be above 0",
                        config.name
                    )));
                }
                None
            }
        };
        let timeout = config
            .request_timeout
            .max(config.cold_start_timeout + config.request_timeout);
        let http = bearer_client(config.api_key.as_ref(), timeout, config.connect_timeout)?;
        let client = ComfyClient::with_http(&config.url, http.clone())?;
        let gate = Gate::new(config.gate.clone());
        Ok(Self {
            deployment: Arc::new(Deployment {
                config,
                client,
                http,
                gate,
                scanner,
            }),
        })
    }

    /// The settings it runs with.
    pub fn config(&self) -> &VerdaConfig {
        &self.deployment.config
    }
}

impl Drop for VerdaProvider {
    fn drop(&mut self) {
        if let Some(scanner) = &self.deployment.scanner {
            scanner.stop();
        }
    }
}

#[async_trait]
impl InferenceProvider for VerdaProvider {
    fn name(&self) -> &str {
        &self.deployment.config.name
    }

    fn capacity(&self) -> Capacity {
        let c = &self.deployment.config;
        Capacity {
            slots: c.max_replicas.saturating_mul(c.concurrency),
        }
    }

    async fn submit(&self, job: &Job) -> Result<ProviderEventStream, ProviderError> {
        match &self.deployment.config.mode {
            VerdaMode::SharedDir(_) => shared::submit(Arc::clone(&self.deployment), job).await,
            VerdaMode::Async(a) => async_mode::submit(Arc::clone(&self.deployment), a.clone(), job).await,
        }
    }

    /// Shared-directory mode, best effort: Verda routes each request to any replica, so the interrupt and
    /// the queue deletion are sent once per possible replica. Async mode: nothing to do (see the module
    /// docs).
    async fn cancel(&self, job: JobId) -> Result<(), ProviderError> {
        match &self.deployment.config.mode {
            VerdaMode::SharedDir(_) => shared::cancel(&self.deployment, job).await,
            VerdaMode::Async(_) => Ok(()),
        }
    }

    /// Deletes the job's directory in the shared output directory.
    async fn cleanup(&self, job: JobId) {
        let Some(scanner) = &self.deployment.scanner else {
            return;
        };
        let dir = scanner.job_dir(job);
        match tokio::fs::remove_dir_all(&dir).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(job = %job, dir = %dir.display(), error = %e, "cannot delete a job's shared output directory")
            }
        }
    }

    /// From what jobs observed (no request: that could start a GPU): unavailable while failing over.
    async fn health(&self) -> Health {
        self.deployment.gate.health()
    }

    fn health_interval(&self) -> Duration {
        self.deployment.gate.health_interval()
    }

    async fn health_changed(&self) {
        self.deployment.gate.changed().await;
    }

    fn warmth(&self) -> Warmth {
        self.deployment.gate.warmth()
    }
}

/// The message of [`comfyume_core::ProviderEvent::Waiting`] during a cold start.
pub(crate) fn waiting_message() -> String {
    WAITING_FOR_GPU.to_string()
}
