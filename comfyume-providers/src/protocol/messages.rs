//! ComfyUI's websocket text messages (`{"type": T, "data": D}`), typed.
//!
//! Every type seen on a real ComfyUI has a struct here; every struct keeps the fields it does not know in
//! `extra`, and a message type we have no struct for arrives as [`ServerMessage::Unknown`] with its payload
//! untouched. Upstream adds fields and message types over time: they pass through, they never fail.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Number, Value};

use crate::error::{Error, Result};

/// Fields a message carries that this crate has no name for, kept as sent.
pub type Extra = Map<String, Value>;

/// One text message from ComfyUI's `/ws`.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum ServerMessage {
    /// Queue size, broadcast on every queue change (and sent first on connect, with the socket's `sid`).
    Status(Status),
    /// A prompt began executing.
    ExecutionStart(ExecutionStart),
    /// Nodes whose outputs came from ComfyUI's cache (they will not execute).
    ExecutionCached(ExecutionCached),
    /// A node began executing; `node: null` is the last message of every prompt.
    Executing(Executing),
    /// Steps of a node that reports progress (samplers, frame loops).
    Progress(Progress),
    /// State of every started node of a prompt (newer ComfyUI).
    ProgressState(ProgressState),
    /// A node finished and reports its UI output (files, text).
    Executed(Executed),
    /// The prompt finished successfully.
    ExecutionSuccess(ExecutionSuccess),
    /// A node raised an exception; the prompt stopped.
    ExecutionError(ExecutionError),
    /// The prompt was interrupted (`POST /interrupt`).
    ExecutionInterrupted(ExecutionInterrupted),
    /// The server's feature flags, in reply to ours.
    FeatureFlags(Extra),
    /// A message type without a struct here (or a known type whose payload has an unexpected shape),
    /// passed through unchanged.
    Unknown {
        /// The message's `type`.
        kind: String,
        /// Its `data`, unchanged.
        data: Value,
    },
}

#[derive(Deserialize)]
struct Envelope {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    data: Value,
}

impl ServerMessage {
    /// Parses one text frame. Fails only when the text is not a JSON object with a string `type`;
    /// everything else becomes a typed message or [`ServerMessage::Unknown`].
    pub fn parse(text: &str) -> Result<Self> {
        let envelope: Envelope = serde_json::from_str(text)
            .map_err(|e| Error::Protocol(format!("websocket text is not a ComfyUI message: {e}")))?;
        Ok(Self::from_parts(envelope.kind, envelope.data))
    }

    /// Builds the typed message for a `type` and its `data`.
    pub fn from_parts(kind: String, data: Value) -> Self {
        fn typed<'a, T: Deserialize<'a>>(data: &'a Value) -> Option<T> {
            T::deserialize(data).ok()
        }
        let parsed = match kind.as_str() {
            "status" => typed(&data).map(ServerMessage::Status),
            "execution_start" => typed(&data).map(ServerMessage::ExecutionStart),
            "execution_cached" => typed(&data).map(ServerMessage::ExecutionCached),
            "executing" => typed(&data).map(ServerMessage::Executing),
            "progress" => typed(&data).map(ServerMessage::Progress),
            "progress_state" => typed(&data).map(ServerMessage::ProgressState),
            "executed" => typed(&data).map(ServerMessage::Executed),
            "execution_success" => typed(&data).map(ServerMessage::ExecutionSuccess),
            "execution_error" => typed(&data).map(ServerMessage::ExecutionError),
            "execution_interrupted" => typed(&data).map(ServerMessage::ExecutionInterrupted),
            "feature_flags" => typed(&data).map(ServerMessage::FeatureFlags),
            _ => None,
        };
        parsed.unwrap_or(ServerMessage::Unknown { kind, data })
    }

    /// The message's `type` as ComfyUI spells it.
    pub fn kind(&self) -> &str {
        match self {
            ServerMessage::Status(_) => "status",
            ServerMessage::ExecutionStart(_) => "execution_start",
            ServerMessage::ExecutionCached(_) => "execution_cached",
            ServerMessage::Executing(_) => "executing",
            ServerMessage::Progress(_) => "progress",
            ServerMessage::ProgressState(_) => "progress_state",
            ServerMessage::Executed(_) => "executed",
            ServerMessage::ExecutionSuccess(_) => "execution_success",
            ServerMessage::ExecutionError(_) => "execution_error",
            ServerMessage::ExecutionInterrupted(_) => "execution_interrupted",
            ServerMessage::FeatureFlags(_) => "feature_flags",
            ServerMessage::Unknown { kind, .. } => kind,
        }
    }

    /// The message's `data`, as ComfyUI would send it (unknown fields included).
    pub fn data(&self) -> Value {
        fn ser<T: Serialize>(t: &T) -> Value {
            serde_json::to_value(t).unwrap_or(Value::Null)
        }
        match self {
            ServerMessage::Status(m) => ser(m),
            ServerMessage::ExecutionStart(m) => ser(m),
            ServerMessage::ExecutionCached(m) => ser(m),
            ServerMessage::Executing(m) => ser(m),
            ServerMessage::Progress(m) => ser(m),
            ServerMessage::ProgressState(m) => ser(m),
            ServerMessage::Executed(m) => ser(m),
            ServerMessage::ExecutionSuccess(m) => ser(m),
            ServerMessage::ExecutionError(m) => ser(m),
            ServerMessage::ExecutionInterrupted(m) => ser(m),
            ServerMessage::FeatureFlags(m) => Value::Object(m.clone()),
            ServerMessage::Unknown { data, .. } => data.clone(),
        }
    }

    /// The prompt this message is about, when it names one (routing key for per-job channels).
    pub fn prompt_id(&self) -> Option<&str> {
        let id = match self {
            ServerMessage::ExecutionStart(m) => &m.prompt_id,
            ServerMessage::ExecutionCached(m) => &m.prompt_id,
            ServerMessage::Executing(m) => &m.prompt_id,
            ServerMessage::Progress(m) => &m.prompt_id,
            ServerMessage::ProgressState(m) => &m.prompt_id,
            ServerMessage::Executed(m) => &m.prompt_id,
            ServerMessage::ExecutionSuccess(m) => &m.prompt_id,
            ServerMessage::ExecutionError(m) => &m.prompt_id,
            ServerMessage::ExecutionInterrupted(m) => &m.prompt_id,
            ServerMessage::Unknown { data, .. } => return data.get("prompt_id").and_then(Value::as_str),
            ServerMessage::Status(_) | ServerMessage::FeatureFlags(_) => return None,
        };
        id.as_deref()
    }
}

fn zero() -> Number {
    Number::from(0)
}

/// A JSON number as a count of steps (negative, fractional or huge values saturate).
pub fn steps(n: &Number) -> u64 {
    n.as_u64()
        .unwrap_or_else(|| n.as_f64().map_or(0, |f| f.max(0.0) as u64))
}

/// `status`: the queue size; the first one on a connection also carries the socket's `sid`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// `{"exec_info": {"queue_remaining": N}}`.
    #[serde(default)]
    pub status: Option<QueueStatus>,
    /// The socket's session id (= the `clientId` it was opened with), on the first message only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<String>,
    /// Unknown fields.
    #[serde(flatten)]
    pub extra: Extra,
}

/// The `status.status` object.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct QueueStatus {
    /// Pending plus running prompts.
    #[serde(default)]
    pub exec_info: ExecInfo,
    /// Unknown fields.
    #[serde(flatten)]
    pub extra: Extra,
}

/// `exec_info`: how many prompts are pending or running.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ExecInfo {
    /// Pending plus running prompts on the instance.
    #[serde(default)]
    pub queue_remaining: u64,
    /// Unknown fields.
    #[serde(flatten)]
    pub extra: Extra,
}

/// `execution_start`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ExecutionStart {
    /// The prompt.
    #[serde(default)]
    pub prompt_id: Option<String>,
    /// Milliseconds since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<u64>,
    /// Unknown fields.
    #[serde(flatten)]
    pub extra: Extra,
}

/// `execution_cached`: nodes served from ComfyUI's cache.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ExecutionCached {
    /// Node ids.
    #[serde(default)]
    pub nodes: Vec<String>,
    /// The prompt.
    #[serde(default)]
    pub prompt_id: Option<String>,
    /// Milliseconds since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<u64>,
    /// Unknown fields.
    #[serde(flatten)]
    pub extra: Extra,
}

/// `executing`: a node started; `node: None` ends the prompt.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Executing {
    /// The node id, or `None` once the prompt is over.
    #[serde(default)]
    pub node: Option<String>,
    /// The node to show as executing in the UI (differs inside subgraphs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_node: Option<String>,
    /// The prompt (absent on the reconnect notice for a socket whose prompt is running).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_id: Option<String>,
    /// Unknown fields.
    #[serde(flatten)]
    pub extra: Extra,
}

/// `progress`: steps of one node.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// Steps done (a JSON number as sent: ComfyUI sends integers here, some nodes floats).
    #[serde(default = "zero")]
    pub value: Number,
    /// Steps in all.
    #[serde(default = "zero")]
    pub max: Number,
    /// The prompt.
    #[serde(default)]
    pub prompt_id: Option<String>,
    /// The node.
    #[serde(default)]
    pub node: Option<String>,
    /// Unknown fields.
    #[serde(flatten)]
    pub extra: Extra,
}

/// `progress_state`: every started node of a prompt with its state.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ProgressState {
    /// The prompt.
    #[serde(default)]
    pub prompt_id: Option<String>,
    /// Node id → its progress; pending nodes are omitted.
    #[serde(default)]
    pub nodes: BTreeMap<String, NodeProgress>,
    /// Unknown fields.
    #[serde(flatten)]
    pub extra: Extra,
}

/// One node's entry in `progress_state`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeProgress {
    /// Progress value (0..=max), as sent (`1.0` or `1`).
    #[serde(default = "zero")]
    pub value: Number,
    /// Progress maximum, as sent.
    #[serde(default = "zero")]
    pub max: Number,
    /// `running`, `finished` or `error`.
    #[serde(default)]
    pub state: String,
    /// The node id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_id: Option<String>,
    /// The prompt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_id: Option<String>,
    /// The node to show in the UI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_node_id: Option<String>,
    /// The enclosing subgraph node, if any.
    #[serde(default)]
    pub parent_node_id: Option<String>,
    /// The node id in the expanded graph.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub real_node_id: Option<String>,
    /// Unknown fields.
    #[serde(flatten)]
    pub extra: Extra,
}

/// `executed`: a node's UI output (`{"images": [{filename, subfolder, type}], "animated": [true], …}`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Executed {
    /// The node id.
    #[serde(default)]
    pub node: String,
    /// The node to show in the UI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_node: Option<String>,
    /// The node's output description, unchanged.
    #[serde(default)]
    pub output: Value,
    /// The prompt.
    #[serde(default)]
    pub prompt_id: Option<String>,
    /// Unknown fields.
    #[serde(flatten)]
    pub extra: Extra,
}

/// `execution_success`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ExecutionSuccess {
    /// The prompt.
    #[serde(default)]
    pub prompt_id: Option<String>,
    /// Milliseconds since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<u64>,
    /// Unknown fields.
    #[serde(flatten)]
    pub extra: Extra,
}

/// `execution_error`: a node raised; every field the ComfyUI frontend reads is kept.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ExecutionError {
    /// The prompt.
    #[serde(default)]
    pub prompt_id: Option<String>,
    /// The failing node.
    #[serde(default)]
    pub node_id: Option<String>,
    /// Its class.
    #[serde(default)]
    pub node_type: Option<String>,
    /// Nodes that had finished.
    #[serde(default)]
    pub executed: Vec<String>,
    /// The exception's message.
    #[serde(default)]
    pub exception_message: String,
    /// The exception's Python type.
    #[serde(default)]
    pub exception_type: String,
    /// The Python traceback, one frame per entry.
    #[serde(default)]
    pub traceback: Vec<String>,
    /// The node's inputs when it failed.
    #[serde(default)]
    pub current_inputs: Value,
    /// Outputs that were computed.
    #[serde(default)]
    pub current_outputs: Value,
    /// Milliseconds since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<u64>,
    /// Unknown fields.
    #[serde(flatten)]
    pub extra: Extra,
}

/// `execution_interrupted`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ExecutionInterrupted {
    /// The prompt.
    #[serde(default)]
    pub prompt_id: Option<String>,
    /// The node that was running.
    #[serde(default)]
    pub node_id: Option<String>,
    /// Its class.
    #[serde(default)]
    pub node_type: Option<String>,
    /// Nodes that had finished.
    #[serde(default)]
    pub executed: Vec<String>,
    /// Milliseconds since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<u64>,
    /// Unknown fields.
    #[serde(flatten)]
    pub extra: Extra,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_types_and_fields_pass_through() {
        let m = ServerMessage::parse(r#"{"type":"logs","data":{"entries":[{"t":"x","m":"y"}]}}"#).unwrap();
        assert_eq!(m.kind(), "logs");
        assert!(matches!(&m, ServerMessage::Unknown { data, .. } if data["entries"][0]["m"] == "y"));

        let text = r#"{"type":"execution_start","data":{"prompt_id":"p","timestamp":1,"new_field":[1,2]}}"#;
        let m = ServerMessage::parse(text).unwrap();
        let ServerMessage::ExecutionStart(start) = &m else {
            panic!("{m:?}")
        };
        assert_eq!(start.prompt_id.as_deref(), Some("p"));
        assert_eq!(m.data()["new_field"], serde_json::json!([1, 2]));
        assert_eq!(m.prompt_id(), Some("p"));
    }

    #[test]
    fn a_known_type_with_an_odd_payload_is_kept_not_dropped() {
        let m = ServerMessage::parse(r#"{"type":"executing","data":{"node":5}}"#).unwrap();
        assert!(
            matches!(&m, ServerMessage::Unknown { kind, data } if kind == "executing" && data["node"] == 5)
        );
    }

    #[test]
    fn executing_null_is_the_end_marker() {
        let m = ServerMessage::parse(r#"{"type":"executing","data":{"node":null,"prompt_id":"p"}}"#).unwrap();
        assert!(matches!(
            m,
            ServerMessage::Executing(Executing { node: None, .. })
        ));
    }

    #[test]
    fn text_that_is_not_a_message_is_an_error() {
        assert!(ServerMessage::parse("not json").is_err());
        assert!(ServerMessage::parse(r#"{"data":{}}"#).is_err());
        assert!(ServerMessage::parse(r#"[1]"#).is_err());
    }
}
