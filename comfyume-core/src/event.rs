//! Job events: every state change and every piece of live progress, published on one bus.
//!
//! Servers forward these to the job's owner (and admins) over WebSockets; the CLI prints them as a
//! progress bar. Subscribers filter by [`JobEvent::owner`]: an event never needs to be looked up to
//! know whom it belongs to.

use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::job::{Failure, JobId, Timestamp, UserId};
use crate::sink::OutputRef;

/// Something that happened to a job.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobEvent {
    /// The job.
    pub job_id: JobId,
    /// Its owner: only they (and admins) may see this event.
    pub owner: UserId,
    /// Its enqueue order ([`Job::seq`](crate::Job::seq)): with `job_id`, the job's
    /// [`JobKey`](crate::JobKey) for queue positions.
    #[serde(default)]
    pub seq: u64,
    /// When it happened.
    pub at: Timestamp,
    /// What happened.
    #[serde(flatten)]
    pub kind: EventKind,
}

/// What happened, in the order a job lives it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum EventKind {
    /// Accepted into the queue (also after a retry or a recovered lease).
    Queued {
        /// Why it is queued again, for requeues.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// Handed to a provider.
    Dispatched {
        /// The provider's name.
        provider: String,
        /// Which attempt this is (1 for the first).
        attempt: u32,
    },
    /// Accepted by the provider but waiting for capacity (cold start).
    Waiting {
        /// What it waits for.
        message: String,
    },
    /// Execution started.
    Started,
    /// A node began executing.
    Executing {
        /// The node id.
        node: String,
    },
    /// Nodes served from cache.
    Cached {
        /// Their ids.
        nodes: Vec<String>,
    },
    /// Progress of a node.
    Progress {
        /// The node id, when known.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        node: Option<String>,
        /// Steps done.
        value: u64,
        /// Steps in all.
        max: u64,
    },
    /// A node finished with UI output (ComfyUI's `executed.output`).
    Executed {
        /// The node id.
        node: String,
        /// The output description, as the provider sent it.
        output: serde_json::Value,
    },
    /// A live preview image (not stored, not serialized).
    Preview {
        /// Its MIME type.
        content_type: String,
        /// The image bytes.
        #[serde(skip)]
        data: Bytes,
    },
    /// An output file was stored for the owner.
    Output {
        /// Where it is.
        output: OutputRef,
    },
    /// A provider message without a typed counterpart.
    Other {
        /// Its type.
        kind: String,
        /// Its payload.
        data: serde_json::Value,
    },
    /// The attempt failed for infrastructure reasons; the job will run again after `delay_ms`.
    Retrying {
        /// The attempt that failed.
        attempt: u32,
        /// Backoff before it is queued again.
        delay_ms: u64,
        /// What went wrong.
        failure: Failure,
    },
    /// Finished successfully (terminal).
    Succeeded {
        /// Everything stored for the owner.
        outputs: Vec<OutputRef>,
    },
    /// Finished with a failure (terminal).
    Failed {
        /// Why.
        failure: Failure,
    },
    /// Cancelled (terminal).
    Cancelled {
        /// By whom or why.
        reason: String,
    },
}

impl EventKind {
    /// True for the three terminal kinds.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            EventKind::Succeeded { .. } | EventKind::Failed { .. } | EventKind::Cancelled { .. }
        )
    }
}

/// A broadcast bus of [`JobEvent`]s. Cheap to clone; a slow subscriber lags (and is told so by
/// `RecvError::Lagged`) instead of slowing the engine.
///
/// Events are shared, not copied: every subscriber receives the same [`Arc`], so a server with a thousand
/// event streams open pays for one event, not a thousand copies of it.
#[derive(Clone, Debug)]
pub struct EventBus {
    tx: broadcast::Sender<Arc<JobEvent>>,
    /// The events published here, without those relayed from other servers.
    local: broadcast::Sender<Arc<JobEvent>>,
}

impl EventBus {
    /// A bus that buffers up to `capacity` events per subscriber.
    pub fn new(capacity: usize) -> Self {
        let (tx, _) = broadcast::channel(capacity.max(1));
        let (local, _) = broadcast::channel(capacity.max(1));
        Self { tx, local }
    }

    /// Sends an event to every current subscriber (none is fine).
    pub fn publish(&self, event: JobEvent) {
        let event = Arc::new(event);
        if self.local.receiver_count() > 0 {
            let _ = self.local.send(Arc::clone(&event));
        }
        let _ = self.tx.send(event);
    }

    /// Delivers an event another server published (relayed through a shared store) to the subscribers
    /// of [`EventBus::subscribe`], not to those of [`EventBus::subscribe_local`].
    pub fn publish_relayed(&self, event: JobEvent) {
        let _ = self.tx.send(Arc::new(event));
    }

    /// A receiver of the events published on this server from now on (what a relay sends to the others).
    pub fn subscribe_local(&self) -> broadcast::Receiver<Arc<JobEvent>> {
        self.local.subscribe()
    }

    /// A receiver of every event published from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<JobEvent>> {
        self.tx.subscribe()
    }
}

impl Default for EventBus {
    fn default() -> Self {
        Self::new(4096)
    }
}
