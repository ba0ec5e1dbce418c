//! # comfyume-providers
//!
//! Inference providers for comfyume: the places where workflows really run.
//!
//! - [`protocol`]: a client for ComfyUI's own HTTP + WebSocket protocol — typed messages for everything a
//!   real ComfyUI sends (unknown types and fields pass through), `POST /prompt` with our own `prompt_id`
//!   and a `client_id` bound to an open websocket, 400 bodies turned into failures a person can act on,
//!   `/view`, `/interrupt`, `/queue`, `/history`. It never sends an `Origin` header.
//! - [`ComfyUiProvider`] ([`comfyui`]): a pool of ComfyUI instances (GPU boxes on the LAN, or this host)
//!   as one [`comfyume_core::InferenceProvider`]: health from `/system_stats`, one websocket per
//!   instance demultiplexed per job, outputs fetched and handed to the dispatcher as artifacts, the output
//!   rewrite that keeps every job's files apart (`comfyume/<job_id>/…`), cancel and crash handling.
//! - [`VerdaProvider`] ([`verda`]): a Verda serverless deployment (load-balanced replicas that scale
//!   to zero) in shared-directory mode: outputs picked up from a shared output directory by a polling
//!   scanner, cold starts reported as "waiting for a GPU to start", failover to the next deployment
//!   after repeated failures ([`serverless`]); or in async-inference mode, through the platform's async
//!   layer to a [`comfyume agent`](agent) beside an unmodified ComfyUI in the container.
//! - [`RunPodProvider`] ([`runpod`]): a RunPod serverless endpoint running the common ComfyUI worker
//!   image (`/run`, `/status`, `/cancel`; outputs inline or from a bucket), with the same cold-start
//!   budget and failover.
//! - [`sim`]: a protocol-faithful **simulated** ComfyUI worker for tests, demos and load tests (never
//!   inference).
//!
//! A tour: a simulated worker, a provider over it, and comfyume's dispatcher running one job to its
//! owner's directory.
//!
//! ```
//! # async fn tour() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use comfyume_core::{Dispatcher, JobSpec, JobState, LocalDirSink, MemoryStore, UserId};
//! use comfyume_providers::sim::{SimConfig, SimWorker};
//! use comfyume_providers::{ComfyUiConfig, ComfyUiProvider};
//!
//! let worker = SimWorker::start(SimConfig::default(), "127.0.0.1:0".parse()?).await?; // simulated
//! let provider = ComfyUiProvider::start(ComfyUiConfig::with_urls([worker.base_url()])).await?;
//!
//! let data = tempfile::tempdir()?;
//! let dispatcher = Dispatcher::new(
//!     Arc::new(MemoryStore::new()),
//!     Arc::new(LocalDirSink::new(data.path())),
//!     vec![Arc::new(provider)],
//!     Default::default(),
//!     Default::default(),
//! );
//! dispatcher.start().await?;
//!
//! let workflow = serde_json::json!({
//!     "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0}},
//!     "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "tour/empty"}}
//! });
//! let mut events = dispatcher.subscribe();
//! let job = dispatcher.submit(JobSpec::new(UserId::new("alice")?, workflow)).await?;
//! while !events.recv().await?.kind.is_terminal() {}
//!
//! let job = dispatcher.get(job.id).await?.expect("the job is stored");
//! assert_eq!(job.state, JobState::Succeeded);
//! // The user sees their own subfolder; the file is in their own space.
//! let output = &job.outputs[0];
//! assert_eq!(output.subfolder, "tour");
//! let path = data.path().join(format!("users/alice/output/{}/tour/{}", job.id, output.filename));
//! assert!(path.is_file());
//! # dispatcher.shutdown(std::time::Duration::from_secs(1)).await;
//! # Ok(())
//! # }
//! # tokio::runtime::Runtime::new().unwrap().block_on(tour()).unwrap();
//! ```

pub mod sim;

pub mod agent;
pub mod catalogue;
pub mod comfyui;
pub mod error;
pub mod protocol;
pub mod runpod;
pub mod serverless;
pub mod validate;
pub mod verda;

pub use comfyui::{ComfyUiConfig, ComfyUiProvider, InstanceConfig, InstanceStatus};
pub use error::{Error, Result};
pub use runpod::{RunPodConfig, RunPodProvider};
pub use serverless::ApiKey;
pub use verda::{AsyncConfig, Callbacks, SharedDirConfig, VerdaConfig, VerdaMode, VerdaProvider};
