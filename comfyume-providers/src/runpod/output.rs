//! Reading RunPod's answers: a job's status, the worker's output files, the worker's error.

use base64::Engine;
use comfyume_core::{Failure, FailureKind};
use serde::Deserialize;
use serde_json::Value;

use crate::serverless::saves::SaveNode;

/// RunPod's answer to `/run`, `/status/<id>` and `/cancel/<id>`.
#[derive(Clone, Debug, Default, Deserialize)]
pub(super) struct JobStatus {
    /// The RunPod job's id.
    #[serde(default)]
    pub id: String,
    /// `IN_QUEUE`, `IN_PROGRESS`, `COMPLETED`, `FAILED`, `CANCELLED`, `TIMED_OUT`.
    #[serde(default)]
    pub status: String,
    /// The handler's output (`COMPLETED`), or its latest progress update (`IN_PROGRESS`).
    #[serde(default)]
    pub output: Value,
    /// Why it failed (`FAILED`): a string, often JSON of the handler's exception.
    #[serde(default)]
    pub error: Value,
}

/// Where a RunPod job stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum State {
    InQueue,
    InProgress,
    Completed,
    Failed,
    Cancelled,
    TimedOut,
    Unknown(String),
}

impl JobStatus {
    pub fn state(&self) -> State {
        match self.status.as_str() {
            "IN_QUEUE" => State::InQueue,
            "IN_PROGRESS" => State::InProgress,
            "COMPLETED" => State::Completed,
            "FAILED" => State::Failed,
            "CANCELLED" => State::Cancelled,
            "TIMED_OUT" => State::TimedOut,
            other => State::Unknown(other.to_string()),
        }
    }

    /// The worker's step progress while `IN_PROGRESS` (worker-comfyui reports
    /// `{"type": "progress", "value", "max", "node"}`): `(node, value, max)`.
    pub fn progress(&self) -> Option<(Option<String>, u64, u64)> {
        let o = &self.output;
        if o.get("type").and_then(Value::as_str) != Some("progress") {
            return None;
        }
        let value = o.get("value").and_then(Value::as_f64)?;
        let max = o.get("max").and_then(Value::as_f64)?;
        let node = o.get("node").and_then(|n| match n {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        });
        (max > 0.0 && value >= 0.0).then_some((node, value as u64, max as u64))
    }

    /// The worker's error as a failure with the right kind: a workflow the worker's ComfyUI refused is a
    /// validation error, a node's exception a node error (the user's, never retried); anything else is
    /// the provider's.
    pub fn failure(&self) -> Failure {
        let (mut text, details) = match &self.error {
            Value::String(s) => match serde_json::from_str::<Value>(s) {
                // The handler raised: RunPod keeps its exception as JSON text.
                Ok(v @ Value::Object(_)) => (describe_exception(&v), v),
                _ => (s.clone(), Value::Null),
            },
            Value::Null => (String::new(), Value::Null),
            other => (describe_exception(other), other.clone()),
        };
        text = text.trim().to_string();
        if text.is_empty() {
            text = "the worker failed without saying why".to_string();
        }
        let mut failure = if text.starts_with("Workflow validation failed") {
            Failure::new(FailureKind::Validation, text)
        } else if let Some(rest) = text.strip_prefix("Workflow execution error:") {
            // "Node Type: KSampler, Node ID: 3, Message: …"
            let field = |name: &str| {
                rest.split(", ")
                    .find_map(|part| part.trim().strip_prefix(name))
                    .map(|v| v.trim().to_string())
                    .filter(|v| !v.is_empty() && v != "None")
            };
            let mut f = Failure::new(FailureKind::NodeError, text.clone());
            f.node_type = field("Node Type:");
            f.node_id = field("Node ID:");
            f
        } else {
            Failure::new(FailureKind::ProviderError, format!("the worker failed: {text}"))
        };
        failure.details = details;
        failure
    }
}

/// `error_type: error_message` of a handler's exception, or the value as text.
fn describe_exception(v: &Value) -> String {
    let message = ["error_message", "error", "message"]
        .iter()
        .find_map(|k| v.get(*k).and_then(Value::as_str));
    match (v.get("error_type").and_then(Value::as_str), message) {
        (Some(t), Some(m)) => format!("{t}: {m}"),
        (None, Some(m)) => m.to_string(),
        _ => v.to_string(),
    }
}

/// Where a file's bytes are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Source {
    /// In the answer (decoded).
    Inline(Vec<u8>),
    /// At a URL (a bucket the worker uploaded to).
    Url(String),
}

/// One output file of a completed job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct OutputFile {
    /// The save node that wrote it, when known.
    pub node: Option<String>,
    /// ComfyUI's media key (`images`, `audio`, …).
    pub media: String,
    /// Its name.
    pub filename: String,
    /// The user's subfolder (of the save node that wrote it).
    pub subfolder: String,
    /// Its bytes.
    pub source: Source,
}

/// A completed job's output: its files, and the worker's warnings.
#[derive(Debug, Default)]
pub(super) struct Outputs {
    pub files: Vec<OutputFile>,
    pub warnings: Vec<String>,
}

/// Reads a completed job's output. The current worker-comfyui answers
/// `{"images": [{"filename", "type": "base64" | "s3_url", "data"}], "audio": [...], "errors": [...]}`
/// (`"status": "success_no_output"` when the workflow saved nothing); older ones
/// `{"status": "success", "message": [{"node_id", "imageType": "base64" | "url", "image"}]}`. Each file
/// is put under the save node that wrote it (by node id, or by its file name `<stem>_NNNNN_.ext`).
pub(super) fn read_output(output: &Value, saves: &[SaveNode]) -> Result<Outputs, String> {
    let Some(map) = output.as_object() else {
        return Err(format!(
            "the worker's output is not a ComfyUI worker's answer: {}",
            quote(output)
        ));
    };
    if let Some(error) = map.get("error").filter(|e| !e.is_null()) {
        return Err(format!("the worker reports an error: {}", quote(error)));
    }
    let mut out = Outputs::default();
    for w in map.get("errors").and_then(Value::as_array).into_iter().flatten() {
        out.warnings
            .push(w.as_str().map_or_else(|| w.to_string(), str::to_string));
    }
    for (key, items) in map {
        let Some(items) = items.as_array() else { continue };
        for (n, item) in items.iter().enumerate() {
            let file = if key == "message" {
                legacy_file(item, n, saves)?
            } else if item.get("filename").is_some() && item.get("data").is_some() {
                current_file(key, item, saves)?
            } else {
                continue;
            };
            out.files.push(file);
        }
    }
    if out.files.is_empty() && !out.warnings.is_empty() {
        return Err(format!("the worker saved nothing: {}", out.warnings.join("; ")));
    }
    Ok(out)
}

/// `{"filename", "type", "data"}` under the media key `media`.
fn current_file(media: &str, item: &Value, saves: &[SaveNode]) -> Result<OutputFile, String> {
    let filename = item.get("filename").and_then(Value::as_str).unwrap_or_default();
    check_name(filename)?;
    let kind = item.get("type").and_then(Value::as_str).unwrap_or_default();
    let data = item.get("data").and_then(Value::as_str).unwrap_or_default();
    let source = source(kind, data, filename)?;
    let save = by_name(saves, filename);
    Ok(OutputFile {
        node: save.map(|s| s.node.clone()),
        media: media.to_string(),
        filename: filename.to_string(),
        subfolder: save.map(|s| s.subfolder.clone()).unwrap_or_default(),
        source,
    })
}

/// `{"node_id", "imageType", "image"}` (no file name: one is made of the node's stem).
fn legacy_file(item: &Value, n: usize, saves: &[SaveNode]) -> Result<OutputFile, String> {
    let node = item.get("node_id").and_then(|v| {
        v.as_str()
            .map(str::to_string)
            .or_else(|| v.as_u64().map(|n| n.to_string()))
    });
    let save = node.as_ref().and_then(|id| saves.iter().find(|s| s.node == *id));
    let stem = save.map_or("ComfyUI", |s| s.stem.as_str());
    let filename = format!("{stem}_{:05}_.png", n + 1);
    check_name(&filename)?;
    let kind = item.get("imageType").and_then(Value::as_str).unwrap_or_default();
    let data = item.get("image").and_then(Value::as_str).unwrap_or_default();
    Ok(OutputFile {
        node,
        media: "images".to_string(),
        source: source(kind, data, &filename)?,
        subfolder: save.map(|s| s.subfolder.clone()).unwrap_or_default(),
        filename,
    })
}

fn source(kind: &str, data: &str, filename: &str) -> Result<Source, String> {
    match kind {
        "base64" => {
            // A data URI's header, if any, goes.
            let b64 = data.split_once(',').map_or(data, |(_, rest)| rest);
            base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .map(Source::Inline)
                .map_err(|e| format!("the file {filename} is not valid base64: {e}"))
        }
        "s3_url" | "url" if data.starts_with("https://") || data.starts_with("http://") => {
            Ok(Source::Url(data.to_string()))
        }
        other => Err(format!(
            "the file {filename} comes as '{other}', which is neither base64 nor a URL"
        )),
    }
}

/// The save node whose files are named like `filename` (the longest matching stem).
fn by_name<'a>(saves: &'a [SaveNode], filename: &str) -> Option<&'a SaveNode> {
    saves
        .iter()
        .filter(|s| s.named(filename))
        .max_by_key(|s| s.stem.len())
}

/// A single, plain file name.
fn check_name(name: &str) -> Result<(), String> {
    let plain = !name.is_empty()
        && name != "."
        && name != ".."
        && !name.contains(['/', '\\'])
        && !name.chars().any(char::is_control);
    if plain {
        Ok(())
    } else {
        Err(format!(
            "the worker named an output file '{}', which is not a plain file name",
            name.escape_debug()
        ))
    }
}

/// A value as text, cut short.
pub(super) fn quote(v: &Value) -> String {
    let text = match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    match text.char_indices().nth(400) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serverless::saves::media_of;
    use serde_json::json;

    fn saves() -> Vec<SaveNode> {
        vec![
            SaveNode {
                node: "9".into(),
                subfolder: "portraits".into(),
                stem: "face".into(),
            },
            SaveNode {
                node: "12".into(),
                subfolder: String::new(),
                stem: "face_big".into(),
            },
        ]
    }

    #[test]
    fn files_of_both_shapes_land_under_their_save_node() {
        let out = read_output(
            &json!({"images": [
                {"filename": "face_00001_.png", "type": "base64", "data": "aGk="},
                {"filename": "face_big_00001_.png", "type": "s3_url", "data": "https://bucket/x.png"}
            ], "audio": [{"filename": "a_00001_.flac", "type": "base64", "data": "data:audio/flac;base64,aGk="}]}),
            &saves(),
        )
        .unwrap();
        assert_eq!(out.files.len(), 3);
        assert_eq!(out.files[0].subfolder, "portraits");
        assert_eq!(out.files[0].node.as_deref(), Some("9"));
        assert_eq!(out.files[0].source, Source::Inline(b"hi".to_vec()));
        assert_eq!(out.files[1].node.as_deref(), Some("12"));
        assert_eq!(out.files[1].source, Source::Url("https://bucket/x.png".into()));
        assert_eq!(
            (out.files[2].media.as_str(), out.files[2].node.as_ref()),
            ("audio", None)
        );
        assert_eq!(out.files[2].source, Source::Inline(b"hi".to_vec()));

        let legacy = read_output(
            &json!({"status": "success", "message": [{"node_id": "9", "imageType": "base64", "image": "aGk="}]}),
            &saves(),
        )
        .unwrap();
        assert_eq!(legacy.files[0].filename, "face_00001_.png");
        assert_eq!(legacy.files[0].subfolder, "portraits");
        assert_eq!(media_of(&legacy.files[0].filename), "images");

        let none = read_output(&json!({"status": "success_no_output"}), &saves()).unwrap();
        assert!(none.files.is_empty());
    }

    #[test]
    fn odd_outputs_are_refused_with_a_reason() {
        for (output, says) in [
            (json!("done"), "not a ComfyUI worker's answer"),
            (
                json!({"images": [{"filename": "../x.png", "type": "base64", "data": ""}]}),
                "plain file name",
            ),
            (
                json!({"images": [{"filename": "x.png", "type": "base64", "data": "%%"}]}),
                "base64",
            ),
            (
                json!({"images": [{"filename": "x.png", "type": "ftp", "data": "ftp://x"}]}),
                "neither",
            ),
            (json!({"errors": ["Failed to fetch image data"]}), "saved nothing"),
            (
                json!({"error": "Missing 'workflow' parameter"}),
                "Missing 'workflow'",
            ),
        ] {
            let err = read_output(&output, &saves()).unwrap_err();
            assert!(err.contains(says), "{output}: {err}");
        }
    }

    #[test]
    fn a_workers_error_keeps_whose_fault_it_is() {
        let status = |error: Value| JobStatus {
            status: "FAILED".into(),
            error,
            ..JobStatus::default()
        };
        let f = status(json!(
            "Workflow validation failed:\n• Node 4 (ckpt_name): not in list"
        ))
        .failure();
        assert_eq!(f.kind, FailureKind::Validation);
        let f = status(json!(
            "Workflow execution error: Node Type: KSampler, Node ID: 3, Message: CUDA out of memory"
        ))
        .failure();
        assert_eq!(f.kind, FailureKind::NodeError);
        assert_eq!(
            (f.node_type.as_deref(), f.node_id.as_deref()),
            (Some("KSampler"), Some("3"))
        );
        assert!(f.message.contains("CUDA out of memory"));
        let raised = json!({"error_type": "<class 'OSError'>", "error_message": "disk full"}).to_string();
        let f = status(Value::String(raised)).failure();
        assert_eq!(f.kind, FailureKind::ProviderError);
        assert!(f.message.contains("disk full"), "{}", f.message);
        assert!(
            status(Value::Null)
                .failure()
                .message
                .contains("without saying why")
        );
    }

    #[test]
    fn progress_is_read_from_the_workers_update() {
        let s = JobStatus {
            status: "IN_PROGRESS".into(),
            output: json!({"type": "progress", "value": 12, "max": 25, "percent": 48.0, "node": "3"}),
            ..JobStatus::default()
        };
        assert_eq!(s.progress(), Some((Some("3".into()), 12, 25)));
        assert_eq!(JobStatus::default().progress(), None);
        assert_eq!(s.state(), State::InProgress);
    }
}
