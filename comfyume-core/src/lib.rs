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

pub mod clock;
pub mod dispatcher;
pub mod error;
pub mod event;
pub mod job;
pub mod provider;
pub mod scheduler;
pub mod sink;
pub mod store;

pub use clock::Clock;
pub use dispatcher::{Dispatcher, DispatcherConfig, ProviderStatus};
pub use error::{Error, Result};
pub use event::{EventBus, EventKind, JobEvent};
pub use job::{Failure, FailureKind, Job, JobId, JobSpec, JobState, Timestamp, UserId};
pub use provider::{Capacity, Health, InferenceProvider, ProviderError, ProviderEvent, ProviderEventStream};
pub use scheduler::{Policy, QueuedJob, Scheduler, SchedulerConfig, UserCaps, UserStats};
pub use sink::{Artifact, LocalDirSink, OutputKind, OutputRef, OutputSink};
pub use store::{
    CancelOutcome, JobFilter, JobStatus, JobStore, Lease, LeaseStatus, MemoryStore, ReapOutcome,
};
