//! Inference providers: the things that actually run workflows (a ComfyUI on a GPU box, serverless GPU
//! containers, a simulated worker in tests).
//!
//! The dispatcher hands a provider a job only when [`InferenceProvider::capacity`] says it has a free slot,
//! so the provider's own queue can never undo comfyume's order, and queued jobs stay cancellable.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};

use crate::job::{Failure, FailureKind, Job, JobId};
use crate::sink::Artifact;

/// What a provider reports about a job it runs, in order. The stream ends after exactly one terminal
/// event ([`ProviderEvent::Completed`] or [`ProviderEvent::Failed`]); a stream that ends without one is
/// treated as an infrastructure failure.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum ProviderEvent {
    /// The job is accepted but waits for capacity to appear (a serverless cold start). Not an error.
    Waiting {
        /// What is being waited for, in words ("waiting for a GPU to start").
        message: String,
    },
    /// Execution started.
    Started,
    /// A node began executing.
    Executing {
        /// The node id.
        node: String,
    },
    /// Some nodes were served from the provider's cache.
    Cached {
        /// Their ids.
        nodes: Vec<String>,
    },
    /// A node reported progress (sampler steps, frames).
    Progress {
        /// The node id, when known.
        node: Option<String>,
        /// Steps done.
        value: u64,
        /// Steps in all.
        max: u64,
    },
    /// A node finished and reported its UI output (ComfyUI's `executed.output`, as sent).
    Executed {
        /// The node id.
        node: String,
        /// The node's output description, unchanged.
        output: serde_json::Value,
    },
    /// A preview image (binary websocket frame), for live display only; never stored.
    Preview {
        /// MIME type (`image/png`, `image/jpeg`, …).
        content_type: String,
        /// The image bytes.
        data: Bytes,
    },
    /// A file the job produced; the dispatcher hands it to the owner's output sink.
    Artifact(Artifact),
    /// A result that is not a file (ComfyUI's `executed.output.text` of a `PreviewAny`, the `animated`
    /// flag of an animated image, any other key without files): kept with the job's outputs. A repeat
    /// for the same node and key replaces the earlier value.
    Value {
        /// The node that reported it, when known.
        node: Option<String>,
        /// Its key (`text`, `animated`, …).
        media: String,
        /// Its value, as reported.
        value: serde_json::Value,
    },
    /// A provider message without a typed counterpart, passed through for UIs that understand it.
    Other {
        /// The message type.
        kind: String,
        /// Its payload, unchanged.
        data: serde_json::Value,
    },
    /// The job finished successfully; every artifact has been sent before this.
    Completed,
    /// The job failed; the failure's kind says whose fault it was.
    Failed(Failure),
}

impl ProviderEvent {
    /// True for `Completed` and `Failed`.
    pub fn is_terminal(&self) -> bool {
        matches!(self, ProviderEvent::Completed | ProviderEvent::Failed(_))
    }
}

/// The events of one submitted job.
pub type ProviderEventStream = BoxStream<'static, ProviderEvent>;

/// How much a provider can take right now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capacity {
    /// Jobs it can run at once right now (healthy slots, including busy ones).
    pub slots: usize,
}

/// A provider's health, as last observed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Health {
    /// Answering and able to run jobs.
    Healthy,
    /// Some capacity is missing (e.g. one of several GPU boxes does not answer).
    Degraded {
        /// What is wrong.
        reason: String,
    },
    /// Cannot run jobs now.
    Unavailable {
        /// Why.
        reason: String,
    },
}

impl Health {
    /// True unless `Unavailable`.
    pub fn is_usable(&self) -> bool {
        !matches!(self, Health::Unavailable { .. })
    }
}

/// Whether a provider's GPUs are up: a serverless deployment scales to zero and takes minutes to start a
/// replica; a GPU box on the LAN is always on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Warmth {
    /// No replica is known to be running: the next job waits for a GPU to start.
    Cold,
    /// A replica is being started for a job that waits for it.
    Starting,
    /// A replica answered recently: jobs start at once.
    Warm,
    /// Not a scale-to-zero provider (a GPU box, an in-process worker): nothing ever has to start.
    #[default]
    AlwaysOn,
}

impl Warmth {
    /// `cold`, `starting`, `warm` or `always_on`.
    pub fn as_str(self) -> &'static str {
        match self {
            Warmth::AlwaysOn => "always_on",
            Warmth::Cold => "cold",
            Warmth::Starting => "starting",
            Warmth::Warm => "warm",
        }
    }
}

/// What a provider emits, as [`ProviderEvent::Waiting`], while a job waits for a serverless GPU to start.
pub const WAITING_FOR_GPU: &str = "waiting for a GPU to start";

/// What a provider says about a workflow before it is queued ([`InferenceProvider::check_workflow`]).
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum WorkflowCheck {
    /// The provider cannot tell yet (it has not seen its node catalogue): the job is accepted and any
    /// problem is reported by the provider when the job runs.
    Unknown,
    /// The provider can run it.
    Valid,
    /// The provider cannot run it.
    Invalid {
        /// What is wrong, in one line a person can act on ("node 1 (EmptyImage): Required input is
        /// missing: color").
        message: String,
        /// The full answer, in ComfyUI's own 400 shape: `{"error": {type, message, details,
        /// extra_info}, "node_errors": {…}}`.
        body: serde_json::Value,
    },
}

/// Why a provider refused or lost a job before it could produce events.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ProviderError {
    /// The workflow itself is wrong (ComfyUI answered 400): the user's fault, never retried.
    #[error("{0}")]
    Rejected(Failure),
    /// The provider could not be reached or had no room: retried elsewhere or later.
    #[error("provider unavailable: {0}")]
    Unavailable(String),
    /// The provider answered something that makes no sense.
    #[error("provider protocol error: {0}")]
    Protocol(String),
}

impl ProviderError {
    /// This error as a job failure with the right kind.
    pub fn into_failure(self) -> Failure {
        match self {
            ProviderError::Rejected(f) => f,
            ProviderError::Unavailable(m) => Failure::new(FailureKind::ProviderUnavailable, m),
            ProviderError::Protocol(m) => Failure::new(FailureKind::ProviderError, m),
        }
    }
}

/// A place that runs ComfyUI workflows. Object safe: providers are chosen from the config at run time and
/// held as `Arc<dyn InferenceProvider>`.
#[async_trait]
pub trait InferenceProvider: Send + Sync {
    /// A short stable name for logs, metrics and the admin page ("gpu-box", "verda-h200").
    fn name(&self) -> &str;

    /// How many jobs it can run at once now. The dispatcher keeps count of what it has handed out and
    /// submits only while fewer than `slots` are in flight here.
    fn capacity(&self) -> Capacity;

    /// Starts a job. Returns once the provider accepted it; events follow on the stream.
    async fn submit(&self, job: &Job) -> Result<ProviderEventStream, ProviderError>;

    /// Checks a workflow against what this provider can run (a ComfyUI's node catalogue), before it is
    /// queued, so a broken workflow is refused at once instead of failing when its turn comes.
    /// `inputs` are the names of the owner's uploaded inputs, which the provider ships with the job (a
    /// `LoadImage` may name them). Must be quick: answer from what is cached, fetch at most rarely. The
    /// default, for providers with no catalogue, is [`WorkflowCheck::Unknown`].
    async fn check_workflow(&self, workflow: &serde_json::Value, inputs: &[String]) -> WorkflowCheck {
        let _ = (workflow, inputs);
        WorkflowCheck::Unknown
    }

    /// Stops a job, queued or running on the provider. Idempotent; unknown jobs are not an error.
    ///
    /// The dispatcher drops the job's event stream right after this call, so a provider whose work lives
    /// inside that stream (an in-process provider) may keep the default, which does nothing more. A provider
    /// with work elsewhere (a remote ComfyUI) must override it and stop that work.
    async fn cancel(&self, job: JobId) -> Result<(), ProviderError> {
        let _ = job;
        Ok(())
    }

    /// Called before `job` is submitted again when comfyume lost track of its previous attempt on this
    /// provider: a server stopped (a crash, kill -9) while it ran, and its lease was recovered. Says what
    /// became of that attempt: still queued or running here → its events from here on, exactly as
    /// [`InferenceProvider::submit`] gives them (the dispatcher follows them instead of submitting
    /// again); ended here → its result as events (outputs, then the terminal event); no trace → `None`,
    /// and the job is submitted as usual. A provider that can find the attempt but not follow it must
    /// stop it and answer `None`, so that the job never runs twice at once. An error means the provider
    /// could not be asked; the attempt fails as unavailable and is asked again on the next.
    ///
    /// The default, for providers whose work lives in the stream (gone with the process that held
    /// it), is `None`.
    async fn reattach(&self, job: &Job) -> Result<Option<ProviderEventStream>, ProviderError> {
        let _ = job;
        Ok(None)
    }

    /// comfyume has recorded how an attempt of `job` ended (its outputs, if any, are stored in the
    /// owner's space): the provider may drop what it still keeps for it (ComfyUI's history entry, the
    /// output files on the instance). Called once per recorded attempt, in the background; errors are
    /// the provider's to log. The default keeps nothing, so does nothing.
    async fn cleanup(&self, job: JobId) {
        let _ = job;
    }

    /// Checks whether the provider can take jobs. The default, for providers that are always up (in the
    /// same process), is [`Health::Healthy`]; a provider that talks to anything remote must override it.
    async fn health(&self) -> Health {
        Health::Healthy
    }

    /// Whether its GPUs are up (see [`Warmth`]). The default, for providers that never scale to zero, is
    /// [`Warmth::AlwaysOn`]; a serverless provider reports what it last observed.
    fn warmth(&self) -> Warmth {
        Warmth::AlwaysOn
    }

    /// How long to wait between health checks of this provider.
    fn health_interval(&self) -> Duration {
        Duration::from_secs(10)
    }

    /// Resolves when the provider's health may have changed (a connection to its backend closed or
    /// came back), so the dispatcher checks [`InferenceProvider::health`] at once instead of at the next
    /// [`InferenceProvider::health_interval`]: `/ready` and dispatch notice a dead backend within
    /// moments. Called by one task at a time; a change that happens while nobody waits must still wake
    /// the next call. The default never resolves (health is polled only).
    async fn health_changed(&self) {
        std::future::pending::<()>().await
    }

    /// The provider's node catalogue exactly as ComfyUI's `GET /object_info` answers it, for serving to
    /// a ComfyUI frontend: asked for now (callers keep the last good copy). `None` when the provider has
    /// no such catalogue or none of its machines answers. The default is `None`.
    async fn object_info(&self) -> Option<serde_json::Value> {
        None
    }
}
