//! Jobs: what a user asked for ([`JobSpec`]), what comfyume knows about it ([`Job`]), and where it is in
//! its life ([`JobState`]).
//!
//! A job's workflow is ComfyUI API-format JSON (node id → `{class_type, inputs}`) and stays opaque here:
//! only providers and the output rewrite look inside it.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::Error;
use crate::sink::OutputRef;

/// A job's identity: a UUID, which is also the ComfyUI `prompt_id` end to end.
///
/// ComfyUI lets the client choose `prompt_id`, so the id a browser sees, the id the scheduler orders and
/// the id a GPU box runs are one and the same.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JobId(pub Uuid);

impl JobId {
    /// A fresh random (v4) id.
    pub fn new() -> Self {
        Self(Uuid::new_v4())
    }
}

impl Default for JobId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Canonical lowercase hyphenated form, the form ComfyUI keeps verbatim.
        fmt::Display::fmt(&self.0.hyphenated(), f)
    }
}

impl FromStr for JobId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        Uuid::parse_str(s)
            .map(JobId)
            .map_err(|_| Error::InvalidInput(format!("'{s}' is not a job id (expected a UUID)")))
    }
}

/// The name of a user who owns jobs, files and workflows.
///
/// Validated on construction: 1 to 64 characters of `A-Z a-z 0-9 _ - .`, not starting with `.`. User
/// names become directory names, so anything that could walk out of a directory is refused here.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct UserId(String);

impl UserId {
    /// Checks `name` and wraps it.
    pub fn new(name: impl Into<String>) -> Result<Self, Error> {
        let name = name.into();
        let ok_len = (1..=64).contains(&name.len());
        let ok_chars = name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
        if ok_len && ok_chars && !name.starts_with('.') {
            Ok(Self(name))
        } else {
            Err(Error::InvalidInput(format!(
                "'{name}' is not a valid user name (1-64 characters of A-Z a-z 0-9 _ - ., not starting with '.')"
            )))
        }
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for UserId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        UserId::new(s).map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for UserId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        UserId::new(s)
    }
}

/// Milliseconds since the Unix epoch: the one time format comfyume stores and sends.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Timestamp(pub u64);

impl Timestamp {
    /// The wall clock now. Engine code takes time from a [`crate::Clock`] instead, so tests can pause it.
    pub fn now() -> Self {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis();
        Self(u64::try_from(ms).unwrap_or(u64::MAX))
    }

    /// This time plus `d` (saturating).
    pub fn plus(self, d: Duration) -> Self {
        Self(
            self.0
                .saturating_add(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        )
    }

    /// How long after `earlier` this is (zero if it is not later).
    pub fn since(self, earlier: Timestamp) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }
}

/// What a user asks comfyume to run. Everything the scheduler and the providers need, nothing they derive.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobSpec {
    /// The job id; callers that speak ComfyUI pass the client's `prompt_id` here, others leave it `None`
    /// and get a fresh one. Enqueue is idempotent by this id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<JobId>,
    /// Who submitted it: outputs land in this user's storage, events reach only this user (and admins).
    pub owner: UserId,
    /// The ComfyUI API-format workflow (node id → `{class_type, inputs}`), opaque to the scheduler.
    pub workflow: serde_json::Value,
    /// Priority tier: higher runs first under the `priority` policy. 0 is normal.
    #[serde(default)]
    pub priority: i32,
    /// Estimated cost in GPU-seconds, charged to the owner's fair share. `None` means 1.0 (plain round robin).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost: Option<f64>,
    /// ComfyUI's `extra_data` (`extra_pnginfo.workflow` for the UI, …), passed through to the provider.
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub extra_data: serde_json::Value,
    /// The ComfyUI frontend's websocket client id, so its events can be routed back to that tab.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
}

impl JobSpec {
    /// A spec with normal priority, unit cost and no extra data.
    pub fn new(owner: UserId, workflow: serde_json::Value) -> Self {
        Self {
            id: None,
            owner,
            workflow,
            priority: 0,
            cost: None,
            extra_data: serde_json::Value::Null,
            client_id: None,
        }
    }

    /// The cost to charge: the estimate if given and sane, else 1.0.
    pub fn effective_cost(&self) -> f64 {
        match self.cost {
            Some(c) if c.is_finite() && c > 0.0 => c,
            _ => 1.0,
        }
    }
}

/// Where a failure came from decides whether comfyume retries it: the user's fault never is, the
/// infrastructure's is, with backoff, up to a limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum FailureKind {
    /// The workflow was rejected before it ran (unknown node, missing input, bad value).
    Validation,
    /// A node raised an error while running (ComfyUI `execution_error`).
    NodeError,
    /// The provider could not be reached or refused the job for reasons of its own.
    ProviderUnavailable,
    /// The provider broke the protocol or ended the job without a result.
    ProviderError,
    /// The job waited in the queue longer than allowed.
    QueueTimeout,
    /// The job did not start in time (includes a serverless cold start that never finished).
    StartTimeout,
    /// The job ran longer than allowed.
    ExecutionTimeout,
    /// The worker holding the job stopped renewing its lease (crash, network split).
    LeaseExpired,
    /// Storing outputs or another internal step failed.
    Internal,
    /// The outputs could not be stored because their storage is full (disk or quota). Not retried: an
    /// operator must free space first.
    StorageFull,
}

impl FailureKind {
    /// True when retrying cannot help because the request itself is wrong.
    pub fn is_user_fault(self) -> bool {
        matches!(self, FailureKind::Validation | FailureKind::NodeError)
    }

    /// True when the dispatcher may retry a job that failed this way.
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            FailureKind::ProviderUnavailable
                | FailureKind::ProviderError
                | FailureKind::StartTimeout
                | FailureKind::ExecutionTimeout
                | FailureKind::LeaseExpired
                | FailureKind::Internal
        )
    }
}

/// Why a job failed, in words a person can act on, with the machine-readable detail kept intact
/// (for ComfyUI failures, the original `error`/`node_errors` body or `execution_error` payload).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Failure {
    /// Which kind of failure this is.
    pub kind: FailureKind,
    /// A human-readable reason.
    pub message: String,
    /// The node that failed, when one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_id: Option<String>,
    /// The class of the node that failed, when one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_type: Option<String>,
    /// The provider's own error body, unchanged.
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub details: serde_json::Value,
}

impl Failure {
    /// A failure with just a kind and a message.
    pub fn new(kind: FailureKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            node_id: None,
            node_type: None,
            details: serde_json::Value::Null,
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.message)?;
        if let Some(node) = &self.node_id {
            write!(f, " (node {node}")?;
            if let Some(t) = &self.node_type {
                write!(f, ", {t}")?;
            }
            write!(f, ")")?;
        }
        Ok(())
    }
}

/// Where a job is in its life. Exactly one of the terminal states ends every job.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum JobState {
    /// Accepted and durable, waiting for a free provider slot.
    Queued,
    /// Handed to a worker under a lease; not yet confirmed running by the provider.
    Leased,
    /// The provider reported that it started.
    Running,
    /// Finished; outputs are stored.
    Succeeded,
    /// Finished without a result; the failure says why.
    Failed {
        /// Why it failed.
        failure: Failure,
    },
    /// Cancelled by its owner or an admin before it finished.
    Cancelled {
        /// Who cancelled it, or why.
        reason: String,
    },
}

impl JobState {
    /// True for `Succeeded`, `Failed` and `Cancelled`.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Failed { .. } | JobState::Cancelled { .. }
        )
    }

    /// A short name: `queued`, `leased`, `running`, `succeeded`, `failed`, `cancelled`.
    pub fn name(&self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Leased => "leased",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed { .. } => "failed",
            JobState::Cancelled { .. } => "cancelled",
        }
    }
}

/// A job as the store keeps it: the spec plus everything that happened to it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Job {
    /// The job's id (also its ComfyUI `prompt_id`).
    pub id: JobId,
    /// What was asked for.
    pub spec: JobSpec,
    /// Where the job is now.
    #[serde(flatten)]
    pub state: JobState,
    /// Enqueue order, assigned by the store; FIFO order and tie-breaks use it.
    pub seq: u64,
    /// How many times it has been handed to a provider.
    pub attempts: u32,
    /// How many times its lease expired without a word from the holder.
    pub stalls: u32,
    /// Set when cancellation was asked for while the job was leased or running.
    #[serde(default)]
    pub cancel_requested: bool,
    /// Not to be dispatched before this time (retry backoff).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before: Option<Timestamp>,
    /// The provider that holds or last held it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// When it was accepted.
    pub created_at: Timestamp,
    /// When the provider reported it started (latest attempt).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Timestamp>,
    /// When it reached its terminal state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Timestamp>,
    /// Stored outputs, once it succeeded.
    #[serde(default)]
    pub outputs: Vec<OutputRef>,
}

impl Job {
    /// The job's cost estimate, as charged by the scheduler.
    pub fn cost(&self) -> f64 {
        self.spec.effective_cost()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_names_that_could_escape_a_directory_are_refused() {
        for bad in [
            "",
            ".",
            "..",
            "../x",
            "a/b",
            "a\\b",
            ".hidden",
            "a b",
            "ü",
            &"x".repeat(65),
        ] {
            assert!(UserId::new(bad).is_err(), "{bad:?} accepted");
        }
        for good in ["alice", "Bob_2", "a.b-c", &"x".repeat(64)] {
            assert!(UserId::new(good).is_ok(), "{good:?} refused");
        }
        assert!(serde_json::from_str::<UserId>("\"../etc\"").is_err());
    }

    #[test]
    fn job_ids_print_canonically_and_parse_back() {
        let id = JobId::new();
        assert_eq!(id.to_string().parse::<JobId>().unwrap(), id);
        assert_eq!(id.to_string(), id.to_string().to_lowercase());
        assert!("nope".parse::<JobId>().is_err());
    }

    #[test]
    fn jobs_round_trip_through_json() {
        let mut spec = JobSpec::new(
            UserId::new("alice").unwrap(),
            serde_json::json!({"1": {"class_type": "X"}}),
        );
        spec.cost = Some(4.0);
        let job = Job {
            id: JobId::new(),
            spec,
            state: JobState::Failed {
                failure: Failure {
                    node_id: Some("3".into()),
                    node_type: Some("LoadImage".into()),
                    ..Failure::new(FailureKind::NodeError, "broken image")
                },
            },
            seq: 7,
            attempts: 1,
            stalls: 0,
            cancel_requested: false,
            not_before: None,
            provider: Some("gpu-1".into()),
            created_at: Timestamp(1),
            started_at: Some(Timestamp(2)),
            finished_at: Some(Timestamp(3)),
            outputs: vec![],
        };
        let text = serde_json::to_string(&job).unwrap();
        assert!(text.contains("\"state\":\"failed\""), "{text}");
        assert_eq!(serde_json::from_str::<Job>(&text).unwrap(), job);
    }

    #[test]
    fn only_infrastructure_failures_are_retried() {
        assert!(!FailureKind::Validation.is_retryable());
        assert!(!FailureKind::NodeError.is_retryable());
        assert!(!FailureKind::QueueTimeout.is_retryable());
        assert!(FailureKind::ProviderUnavailable.is_retryable());
        assert!(FailureKind::LeaseExpired.is_retryable());
        assert!(!FailureKind::StorageFull.is_retryable());
        assert!(!FailureKind::StorageFull.is_user_fault());
    }
}
