//! # comfyume-core
//!
//! The engine of comfyume, a platform that lets a room of people share GPU inference for ComfyUI.
//! Every "Queue" click becomes a [`Job`]; jobs wait in one durable [`JobStore`]; the [`Scheduler`] picks
//! which runs next (FIFO, fair share per user, priority tiers, with instructor overrides); the
//! [`Dispatcher`] hands it to an [`InferenceProvider`] with a free slot, follows its events, stores its
//! outputs for its owner through an [`OutputSink`] and ends it in exactly one terminal state.
//!
//! This crate has no HTTP server, no Redis and no HTTP client: those live in `comfyume-providers` and
//! `comfyume-server`, so programs that embed the scheduler pay only for what they use.
//!
//! ## A tour
//!
//! - [`job`]: [`JobSpec`] (what a user asks for: a ComfyUI API-format workflow, opaque here), [`Job`] and
//!   its [`JobState`]; failures say whose fault they were ([`FailureKind`]), which decides retries.
//! - [`scheduler`]: the fair [`Scheduler`], `O(log n)` per decision.
//! - [`store`]: the [`JobStore`] contract (idempotent enqueue, leases with tokens and heartbeats, a reaper,
//!   dead letters), [`MemoryStore`], the embedded SQLite store, and a conformance suite for new stores.
//! - [`provider`]: the [`InferenceProvider`] trait that ComfyUI pools and serverless backends implement.
//! - [`sink`]: [`OutputSink`] and the per-user [`LocalDirSink`].
//! - [`dispatcher`]: the [`Dispatcher`], which ties them together; [`event`]: what it publishes.
//!
//! Embedding it takes a store, a sink and at least one provider. Here the provider answers every job
//! with a text file at once, standing in for a GPU:
//!
//! ```
//! use std::sync::Arc;
//! use async_trait::async_trait;
//! use comfyume_core::*;
//!
//! struct Echo;
//!
//! #[async_trait]
//! impl InferenceProvider for Echo {
//!     fn name(&self) -> &str { "echo" }
//!     fn capacity(&self) -> Capacity { Capacity { slots: 1 } }
//!     async fn submit(&self, job: &Job) -> Result<ProviderEventStream, ProviderError> {
//!         let file = Artifact::output("text", "echo.txt", job.spec.workflow.to_string());
//!         let events = [ProviderEvent::Started, ProviderEvent::Artifact(file), ProviderEvent::Completed];
//!         Ok(Box::pin(futures::stream::iter(events)))
//!     }
//!     // `cancel` and `health` keep their defaults: the work lives in the stream, and it is always up.
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> std::result::Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let engine = Dispatcher::new(
//!     Arc::new(MemoryStore::new()),
//!     Arc::new(LocalDirSink::new(dir.path())),
//!     vec![Arc::new(Echo)],
//!     SchedulerConfig::default(),
//!     DispatcherConfig::default(),
//! );
//! let mut events = engine.subscribe();
//! engine.start().await?;
//! let workflow = serde_json::json!({"1": {"class_type": "EmptyImage", "inputs": {}}});
//! let job = engine.submit(JobSpec::new(UserId::new("alice")?, workflow)).await?;
//! loop {
//!     let event = events.recv().await?;
//!     if event.job_id == job.id && event.kind.is_terminal() {
//!         break;
//!     }
//! }
//! let done = engine.get(job.id).await?.ok_or("job vanished")?;
//! assert_eq!(done.state, JobState::Succeeded);
//! assert_eq!(done.outputs[0].filename, "echo.txt");
//! engine.shutdown(std::time::Duration::from_secs(1)).await;
//! # Ok(())
//! # }
//! ```

pub mod callback;
pub mod clock;
pub mod dispatcher;
pub mod error;
pub mod event;
pub mod inputs;
pub mod job;
pub mod provider;
pub mod scheduler;
pub mod sink;
pub mod store;

pub use callback::{CallbackError, CallbackHub, Registration};
pub use clock::Clock;
pub use dispatcher::{Dispatcher, DispatcherConfig, ProviderStatus};
pub use error::{Error, Result};
pub use event::{EventBus, EventKind, JobEvent};
pub use job::{Failure, FailureKind, Job, JobId, JobSpec, JobState, Timestamp, UserId};
pub use provider::{
    Capacity, Health, InferenceProvider, ProviderError, ProviderEvent, ProviderEventStream, WAITING_FOR_GPU,
    Warmth, WorkflowCheck,
};
pub use scheduler::{JobKey, Policy, QueuedJob, Scheduler, SchedulerConfig, UserCaps, UserStats};
pub use sink::{Artifact, LocalDirSink, OutputKind, OutputRef, OutputSink};
pub use store::{
    CancelOutcome, JobFilter, JobStatus, JobStore, Lease, LeaseStatus, MemoryStore, ReapOutcome,
};
#[cfg(feature = "redis")]
pub use store::{RedisOptions, RedisStore};
#[cfg(feature = "sqlite")]
pub use store::{SqliteBlocking, SqliteOptions, SqliteStore, Synchronous};
