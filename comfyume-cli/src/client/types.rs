//! What the comfyume API sends back, as the command line reads it.
//!
//! These mirror the server's API v1 views loosely: every field the command line does not need may be
//! missing, and fields it does not know are ignored, so a newer server still works with an older client.
//! Where the whole answer matters (`--json`), commands print the server's own JSON ([`JobView::raw`]).

use comfyume_core::JobId;
use serde::Deserialize;
use serde_json::Value;

/// A job as the server shows it to its owner.
#[derive(Clone, Debug, Deserialize)]
pub struct JobView {
    /// The job id.
    pub id: JobId,
    /// Who submitted it.
    #[serde(default)]
    pub owner: String,
    /// `queued`, `leased`, `running`, `succeeded`, `failed` or `cancelled`.
    pub state: String,
    /// Why it failed.
    #[serde(default)]
    pub failure: Option<FailureView>,
    /// Who cancelled it, or why.
    #[serde(default)]
    pub cancel_reason: Option<String>,
    /// A cancel was asked for while it ran.
    #[serde(default)]
    pub cancel_requested: bool,
    /// 0-based place in the queue (queued jobs).
    #[serde(default)]
    pub position: Option<usize>,
    /// When it may start (queued jobs).
    #[serde(default)]
    pub estimated_start: Option<Estimate>,
    /// Priority tier.
    #[serde(default)]
    pub priority: i32,
    /// Times it was handed to a provider.
    #[serde(default)]
    pub attempts: u32,
    /// Where it runs or ran.
    #[serde(default)]
    pub provider: Option<String>,
    /// When things happened.
    #[serde(default)]
    pub timings: Timings,
    /// Its stored outputs (once it succeeded).
    #[serde(default)]
    pub outputs: Vec<OutputView>,
    /// The server's JSON exactly as sent.
    #[serde(skip)]
    pub raw: Value,
}

impl JobView {
    /// True once the job ended (succeeded, failed or cancelled).
    pub fn is_terminal(&self) -> bool {
        matches!(self.state.as_str(), "succeeded" | "failed" | "cancelled")
    }

    /// Parses a job view, keeping the JSON.
    pub fn from_json(raw: Value) -> Result<Self, serde_json::Error> {
        let mut view: JobView = serde_json::from_value(raw.clone())?;
        view.raw = raw;
        Ok(view)
    }
}

/// A job's times (milliseconds since the Unix epoch, durations in milliseconds).
#[derive(Clone, Debug, Default, Deserialize)]
pub struct Timings {
    /// When it was accepted.
    #[serde(default)]
    pub created_at: u64,
    /// When it started running.
    #[serde(default)]
    pub started_at: Option<u64>,
    /// When it ended.
    #[serde(default)]
    pub finished_at: Option<u64>,
    /// From acceptance to start.
    #[serde(default)]
    pub waited_ms: u64,
    /// From start to end.
    #[serde(default)]
    pub ran_ms: Option<u64>,
}

/// Why a job failed.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct FailureView {
    /// `validation`, `node_error`, `provider_unavailable`, …
    #[serde(default)]
    pub kind: String,
    /// What went wrong, for a person.
    #[serde(default)]
    pub message: String,
    /// The node that failed.
    #[serde(default)]
    pub node_id: Option<String>,
    /// Its class.
    #[serde(default)]
    pub node_type: Option<String>,
}

impl std::fmt::Display for FailureView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = self.kind.replace('_', " ");
        match (&self.node_id, &self.node_type) {
            (Some(id), Some(class)) if !self.message.contains(&format!("node {id}")) => {
                write!(f, "{kind} in node {id} ({class}): {}", self.message)
            }
            (Some(id), None) if !self.message.contains(&format!("node {id}")) => {
                write!(f, "{kind} in node {id}: {}", self.message)
            }
            _ => write!(f, "{kind}: {}", self.message),
        }
    }
}

/// One stored output file of a job.
#[derive(Clone, Debug, Deserialize)]
pub struct OutputView {
    /// Its index (the `{n}` of its URL).
    pub index: usize,
    /// File name.
    pub filename: String,
    /// Sub-directory (may be empty).
    #[serde(default)]
    pub subfolder: String,
    /// `output` or `temp` (a preview).
    #[serde(rename = "type", default)]
    pub kind: String,
    /// MIME type.
    #[serde(default)]
    pub content_type: String,
    /// Size in bytes.
    #[serde(default)]
    pub size: u64,
    /// Where to download it, relative to the server.
    pub url: String,
    /// The key it was reported under (`images`, `text`, `animated`, …).
    #[serde(default)]
    pub media: String,
    /// For a result that is not a file (a node's text, an `animated` flag): its value. It downloads
    /// from `url` as text or JSON, under `filename`.
    #[serde(default)]
    pub value: Option<serde_json::Value>,
}

impl OutputView {
    /// A value result on one short line: text as it reads (lines joined by ` / `), anything else as
    /// JSON; cut at `max` characters. `None` for a file.
    pub fn value_line(&self, max: usize) -> Option<String> {
        let value = self.value.as_ref()?;
        let text = match value {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Array(items) if !items.is_empty() && items.iter().all(|i| i.is_string()) => {
                let lines: Vec<&str> = items.iter().filter_map(|i| i.as_str()).collect();
                lines.join(" / ")
            }
            other => other.to_string(),
        };
        let one_line = text.replace(['\n', '\r'], " ");
        Some(if one_line.chars().count() > max {
            let cut: String = one_line.chars().take(max.saturating_sub(1)).collect();
            format!("{cut}…")
        } else {
            one_line
        })
    }

    /// `subfolder/filename`, or the file name alone.
    pub fn path(&self) -> String {
        if self.subfolder.is_empty() {
            self.filename.clone()
        } else {
            format!("{}/{}", self.subfolder, self.filename)
        }
    }
}

/// When a waiting job may start.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Estimate {
    /// A rough estimate.
    Estimated {
        /// Expected wait from now, in milliseconds.
        wait_ms: u64,
    },
    /// No estimate yet.
    Unknown {
        /// Why.
        #[serde(default)]
        reason: String,
    },
    /// Held back by an admin.
    Held {
        /// By what.
        #[serde(default)]
        reason: String,
    },
    /// A kind of estimate this client does not know.
    #[serde(other)]
    Other,
}

/// A page of jobs.
#[derive(Clone, Debug, Deserialize)]
pub struct JobList {
    /// The jobs, newest first.
    pub jobs: Vec<Value>,
    /// More follow after this page.
    #[serde(default)]
    pub more: bool,
}

/// A job's outputs.
#[derive(Clone, Debug, Deserialize)]
pub struct OutputList {
    /// The job's state.
    pub state: String,
    /// The stored files.
    pub outputs: Vec<OutputView>,
}

/// Who the caller is.
#[derive(Clone, Debug, Deserialize)]
pub struct Me {
    /// Their user name.
    pub user: String,
    /// Whether they are an admin.
    #[serde(default)]
    pub admin: bool,
}

/// A successful login.
#[derive(Clone, Debug, Deserialize)]
pub struct Login {
    /// Who logged in.
    pub user: String,
    /// The session token.
    pub token: String,
}

/// One waiting job's place, from a `position` message of the event stream.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
pub struct PositionEntry {
    /// The job.
    pub job_id: JobId,
    /// Its 0-based place (absent while held back).
    #[serde(default)]
    pub position: Option<usize>,
    /// When it may start.
    pub estimated_start: Estimate,
}

/// An error answer of the API.
#[derive(Clone, Debug, Deserialize)]
pub struct ErrorBody {
    /// Stable machine-readable code.
    pub code: String,
    /// What went wrong.
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn job_views_parse_with_fields_missing_or_unknown() {
        let raw = json!({
            "id": "0b6c4f3e-8a63-4f36-9a7e-9c2d3f0f1a2b", "owner": "alice", "state": "queued",
            "position": 2, "estimated_start": {"status": "estimated", "wait_ms": 1200, "start_at": 5},
            "something_new": true, "timings": {"created_at": 1, "waited_ms": 0}, "outputs": []
        });
        let view = JobView::from_json(raw.clone()).unwrap();
        assert_eq!(view.position, Some(2));
        assert_eq!(view.estimated_start, Some(Estimate::Estimated { wait_ms: 1200 }));
        assert_eq!(view.raw, raw);
        assert!(!view.is_terminal());
        let odd: Estimate = serde_json::from_value(json!({"status": "someday"})).unwrap();
        assert_eq!(odd, Estimate::Other);
    }

    #[test]
    fn failures_read_as_one_line() {
        let f = FailureView {
            kind: "node_error".into(),
            message: "cannot identify image file".into(),
            node_id: Some("1".into()),
            node_type: Some("LoadImage".into()),
        };
        assert_eq!(
            f.to_string(),
            "node error in node 1 (LoadImage): cannot identify image file"
        );
        let v = FailureView {
            kind: "validation".into(),
            message: "node 2 (SaveImage): Required input is missing: images".into(),
            node_id: Some("2".into()),
            node_type: Some("SaveImage".into()),
        };
        assert_eq!(
            v.to_string(),
            "validation: node 2 (SaveImage): Required input is missing: images"
        );
    }
}
