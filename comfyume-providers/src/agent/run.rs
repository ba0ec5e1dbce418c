//! One workflow run by the agent, against its ComfyUI on loopback.

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::{Callback, RunRequest, Shared};
use crate::error::Error;
use crate::protocol::{
    FileRef, Frame, PromptRequest, ServerMessage, WsConnection, node_error_failure, validation_failure,
};

/// What `POST /comfyume/run` answers.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RunResponse {
    /// `success` or `error`.
    pub status: String,
    /// Node id → that node's `executed` output, as ComfyUI reported it.
    #[serde(default)]
    pub outputs: BTreeMap<String, Value>,
    /// The output files, inline.
    #[serde(default)]
    pub files: Vec<InlineFile>,
    /// Why it failed (with `status = "error"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<RunFailure>,
}

/// One output file, inline.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InlineFile {
    /// The node that wrote it.
    pub node: String,
    /// Its media key in the node's output (`images`, `audio`, …).
    pub media: String,
    /// Its name.
    pub filename: String,
    /// Its subfolder on the instance (`comfyume/<job>/…`).
    pub subfolder: String,
    /// `output` or `temp`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Its bytes, base64 (standard alphabet, padded).
    pub data: String,
}

/// A failed run: a [`comfyume_core::Failure`] in transport form.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunFailure {
    /// `validation`, `node_error` or `provider_error`.
    pub kind: String,
    /// In words.
    pub message: String,
    /// The failing node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_id: Option<String>,
    /// Its class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_type: Option<String>,
    /// ComfyUI's own error body.
    #[serde(default)]
    pub details: Value,
}

impl RunFailure {
    fn from_failure(f: comfyume_core::Failure) -> Self {
        let kind = serde_json::to_value(f.kind)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_else(|| "provider_error".into());
        Self {
            kind,
            message: f.message,
            node_id: f.node_id,
            node_type: f.node_type,
            details: f.details,
        }
    }

    fn infrastructure(message: impl Into<String>) -> Self {
        Self {
            kind: "provider_error".into(),
            message: message.into(),
            node_id: None,
            node_type: None,
            details: Value::Null,
        }
    }

    /// Back to a failure.
    pub fn into_failure(self) -> comfyume_core::Failure {
        let kind = serde_json::from_value(Value::String(self.kind))
            .unwrap_or(comfyume_core::FailureKind::ProviderError);
        comfyume_core::Failure {
            node_id: self.node_id,
            node_type: self.node_type,
            details: self.details,
            ..comfyume_core::Failure::new(kind, self.message)
        }
    }
}

fn failed(error: RunFailure) -> RunResponse {
    RunResponse {
        status: "error".into(),
        error: Some(error),
        ..RunResponse::default()
    }
}

/// Messages of the job worth showing live.
fn is_live(kind: &str) -> bool {
    matches!(
        kind,
        "execution_start" | "execution_cached" | "executing" | "progress" | "progress_state" | "executed"
    )
}

/// Runs one workflow to its end.
pub(super) async fn run(shared: &Shared, request: &RunRequest) -> RunResponse {
    let client = &shared.client;
    let client_id = uuid::Uuid::new_v4().to_string();
    let mut ws = match WsConnection::connect(client, &client_id, shared.config.request_timeout).await {
        Ok(ws) => ws,
        Err(e) => return failed(RunFailure::infrastructure(format!("cannot reach ComfyUI: {e}"))),
    };
    let extra_data = request.extra_data.is_object().then_some(&request.extra_data);
    let prompt = PromptRequest {
        prompt: &request.workflow,
        client_id: Some(&client_id),
        prompt_id: Some(&request.job_id),
        extra_data,
    };
    match client.submit(&prompt).await {
        Ok(_) => {}
        Err(Error::Rejected(body)) => return failed(RunFailure::from_failure(validation_failure(body))),
        Err(e) => {
            return failed(RunFailure::infrastructure(format!(
                "ComfyUI refused the prompt: {e}"
            )));
        }
    }
    let pusher = request
        .callback
        .clone()
        .map(|cb| Pusher::start(shared.callbacks.clone(), cb));
    let mut outputs = BTreeMap::new();
    let end = loop {
        let frame = match ws.next().await {
            Some(Ok(frame)) => frame,
            Some(Err(e)) => {
                break Err(RunFailure::infrastructure(format!(
                    "ComfyUI's websocket failed: {e}"
                )));
            }
            None => {
                break Err(RunFailure::infrastructure(
                    "ComfyUI closed its websocket during the run",
                ));
            }
        };
        let Frame::Message(message) = frame else { continue };
        if message.prompt_id() != Some(request.job_id.as_str()) {
            continue;
        }
        if let Some(p) = &pusher
            && is_live(message.kind())
        {
            p.push(json!({"type": message.kind(), "data": message.data()}));
        }
        match message {
            ServerMessage::Executed(e) => {
                outputs.insert(e.node.clone(), e.output.clone());
            }
            ServerMessage::ExecutionSuccess(_) => break Ok(()),
            ServerMessage::ExecutionError(ref e) => {
                break Err(RunFailure::from_failure(node_error_failure(e, message.data())));
            }
            ServerMessage::ExecutionInterrupted(_) => {
                break Err(RunFailure::infrastructure("the run was interrupted"));
            }
            _ => {}
        }
    };
    ws.close().await;
    if let Some(p) = pusher {
        p.finish().await;
    }
    if let Err(error) = end {
        return failed(error);
    }
    let mut files = Vec::new();
    for (node, output) in &outputs {
        let Some(map) = output.as_object() else { continue };
        for (media, items) in map {
            for item in items.as_array().into_iter().flatten() {
                let Ok(file) = serde_json::from_value::<FileRef>(item.clone()) else {
                    continue;
                };
                if file.filename.is_empty() || file.kind == "input" {
                    continue;
                }
                match client.view(&file).await {
                    Ok(bytes) => files.push(InlineFile {
                        node: node.clone(),
                        media: media.clone(),
                        filename: file.filename.clone(),
                        subfolder: file.subfolder.clone(),
                        kind: file.kind.clone(),
                        data: base64::engine::general_purpose::STANDARD.encode(&bytes),
                    }),
                    Err(e) => {
                        return failed(RunFailure::infrastructure(format!(
                            "cannot read the output {}: {e}",
                            file.filename
                        )));
                    }
                }
            }
        }
    }
    // The files are in the answer: ComfyUI's copies and history entry can go.
    let _ = client.delete_history(&[&request.job_id]).await;
    RunResponse {
        status: "success".into(),
        outputs,
        files,
        error: None,
    }
}

/// Pushes live messages to the job's callback in small batches, in order, best effort.
struct Pusher {
    tx: mpsc::UnboundedSender<Value>,
    task: tokio::task::JoinHandle<()>,
}

impl Pusher {
    fn start(http: reqwest::Client, callback: Callback) -> Self {
        let (tx, mut rx) = mpsc::unbounded_channel::<Value>();
        let task = tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut batch = vec![first];
                while let Ok(more) = rx.try_recv() {
                    batch.push(more);
                }
                let sent = http
                    .post(&callback.url)
                    .bearer_auth(&callback.token)
                    .json(&json!({ "messages": batch }))
                    .send()
                    .await;
                match sent {
                    Ok(r) if r.status().is_success() => {}
                    Ok(r) => {
                        tracing::warn!(status = %r.status(), "the comfyume server refused live messages")
                    }
                    Err(e) => {
                        tracing::warn!(error = %e.without_url(), "cannot push live messages to the comfyume server")
                    }
                }
            }
        });
        Self { tx, task }
    }

    fn push(&self, message: Value) {
        let _ = self.tx.send(message);
    }

    /// Sends what is left (for up to a few seconds), then stops.
    async fn finish(self) {
        drop(self.tx);
        let _ = tokio::time::timeout(Duration::from_secs(5), self.task).await;
    }
}
