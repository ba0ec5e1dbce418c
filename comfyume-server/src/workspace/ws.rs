//! The workspace's WebSocket `/u/<user>/ws`: ComfyUI's messages, made from the user's own comfyume job
//! events, in ComfyUI's order.
//!
//! - First `status` with the socket's `sid` (the `clientId` the frontend asked for, else a new one);
//!   `status` again (`queue_remaining` = the user's waiting and running jobs) whenever one of their jobs
//!   is queued, starts or ends.
//! - For prompts this socket submitted (their `client_id` is its `sid`, as in ComfyUI): `execution_start`,
//!   `execution_cached`, `progress_state` + `executing` per node, `progress`, `executed` (files named as
//!   `/view` serves them: subfolder `<job id>[/…]`), live previews as ComfyUI's binary frames,
//!   `execution_success` / `execution_error` (every field the frontend reads) / `execution_interrupted`,
//!   then `status` and `executing` with `node: null` last.
//! - While such a prompt waits: `comfyume_status` `{"prompt_id", "state": "queued", "position": N}` (N
//!   jobs before it; at most every 100 ms), `"waiting"` with the provider's words (a GPU starting),
//!   `"retrying"` with the reason, `"held"` while an admin pause holds it. comfyume's workspace extension
//!   ([`super::EXTENSION_PATH`]) shows them; ComfyUI's own frontend ignores the type.
//! - A first client message `{"type": "feature_flags", …}` is answered with the server's features, as
//!   ComfyUI does (`supports_preview_metadata` then selects the preview frame with metadata).
//!
//! Nothing of another user's jobs ever reaches the socket: events are filtered by owner first.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use comfyume_core::{EventKind, JobEvent, JobId, JobKey};
use futures::stream::SplitSink;
use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::broadcast::error::RecvError;
use tokio::time::Instant;

use super::Workspace;
use super::jobs::{queue_remaining, view_subfolder};
use crate::api::views::Positions;
use crate::state::AppState;

/// `GET /ws` query.
#[derive(Debug, Default, Deserialize)]
pub struct WsQuery {
    #[serde(default, rename = "clientId")]
    client_id: Option<String>,
}

/// Largest message a workspace client may send (feature flags, pings).
const MAX_CLIENT_MESSAGE: usize = 64 * 1024;

/// `GET /u/<user>/ws`: the workspace's live messages.
pub async fn ws(
    State(state): State<AppState>,
    ws: Workspace,
    Query(q): Query<WsQuery>,
    upgrade: WebSocketUpgrade,
) -> Response {
    let sid = q
        .client_id
        .filter(|c| {
            !c.is_empty()
                && c.len() <= 64
                && c.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        })
        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
    // Subscribe before the upgrade completes, so nothing published after this answer is missed.
    let events = state.engine().subscribe();
    upgrade
        .read_buffer_size(4 * 1024)
        .max_message_size(MAX_CLIENT_MESSAGE)
        .on_upgrade(move |socket| async move {
            let _live = state.metrics().websocket_opened();
            Socket::new(ws, sid).run(socket, state, events).await;
        })
        .into_response()
}

/// What one job's nodes are doing, for `progress_state`.
#[derive(Default)]
struct Progress {
    /// node → (value, max, state).
    nodes: BTreeMap<String, (f64, f64, &'static str)>,
    running: Option<String>,
}

struct Socket {
    ws: Workspace,
    sid: String,
    /// Whether a job's execution messages go to this socket (it submitted the prompt).
    routed: HashMap<JobId, bool>,
    progress: HashMap<JobId, Progress>,
    /// Waiting jobs of this socket, with their enqueue order, for positions.
    waiting: HashMap<JobId, u64>,
    last_positions: HashMap<JobId, Option<usize>>,
    preview_metadata: bool,
    first_message: bool,
}

type Sink = SplitSink<WebSocket, Message>;

impl Socket {
    fn new(ws: Workspace, sid: String) -> Self {
        Self {
            ws,
            sid,
            routed: HashMap::new(),
            progress: HashMap::new(),
            waiting: HashMap::new(),
            last_positions: HashMap::new(),
            preview_metadata: false,
            first_message: true,
        }
    }

    async fn run(
        mut self,
        socket: WebSocket,
        state: AppState,
        mut events: tokio::sync::broadcast::Receiver<Arc<JobEvent>>,
    ) {
        let (mut tx, mut rx) = socket.split();
        let limits = state.config().events.clone();
        let timeout = limits.send_timeout();
        let remaining = queue_remaining(&state, self.ws.user()).await;
        let hello = json!({"type": "status", "data": {"status": {"exec_info": {"queue_remaining": remaining}}, "sid": self.sid}});
        if !send(&mut tx, timeout, hello).await {
            return;
        }
        let mut board = state.positions().subscribe();
        let mut ping = tokio::time::interval_at(Instant::now() + limits.ping(), limits.ping());
        let mut heard = Instant::now();
        let shutdown = state.shutdown_token().clone();
        loop {
            let ok = tokio::select! {
                _ = shutdown.cancelled() => false,
                received = events.recv() => match received {
                    Ok(event) if &event.owner == self.ws.user() => {
                        self.on_event(&mut tx, timeout, &state, Arc::unwrap_or_clone(event)).await
                    }
                    Ok(_) => true,
                    // Missed events: the frontend re-reads the queue on the next status.
                    Err(RecvError::Lagged(_)) => self.send_status(&mut tx, timeout, &state).await,
                    Err(RecvError::Closed) => false,
                },
                changed = board.changed() => {
                    let current = board.borrow_and_update().clone();
                    changed.is_ok() && self.send_positions(&mut tx, timeout, &state, &current).await
                }
                incoming = rx.next() => match incoming {
                    None | Some(Err(_)) | Some(Ok(Message::Close(_))) => false,
                    Some(Ok(Message::Text(text))) => {
                        heard = Instant::now();
                        self.on_client_text(&mut tx, timeout, &state, &text).await
                    }
                    Some(Ok(_)) => { heard = Instant::now(); true }
                },
                _ = ping.tick() => heard.elapsed() <= limits.idle_timeout()
                    && tokio::time::timeout(timeout, tx.send(Message::Ping(Default::default()))).await.is_ok_and(|r| r.is_ok()),
            };
            if !ok {
                break;
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), tx.close()).await;
    }

    async fn on_client_text(
        &mut self,
        tx: &mut Sink,
        timeout: Duration,
        state: &AppState,
        text: &str,
    ) -> bool {
        let first = std::mem::replace(&mut self.first_message, false);
        let Ok(message) = serde_json::from_str::<Value>(text) else {
            return true;
        };
        if first && message["type"] == "feature_flags" {
            self.preview_metadata = message["data"]["supports_preview_metadata"] == true;
            let reply = json!({"type": "feature_flags", "data": super::info::features_value(state)});
            return send(tx, timeout, reply).await;
        }
        true
    }

    async fn send_status(&mut self, tx: &mut Sink, timeout: Duration, state: &AppState) -> bool {
        let remaining = queue_remaining(state, self.ws.user()).await;
        send(
            tx,
            timeout,
            json!({"type": "status", "data": {"status": {"exec_info": {"queue_remaining": remaining}}}}),
        )
        .await
    }

    /// Whether `job`'s execution messages are this socket's (it submitted the prompt).
    async fn is_routed(&mut self, state: &AppState, job: JobId) -> bool {
        if let Some(&r) = self.routed.get(&job) {
            return r;
        }
        let routed = state
            .engine()
            .get(job)
            .await
            .ok()
            .flatten()
            .is_some_and(|j| j.spec.client_id.as_deref() == Some(self.sid.as_str()));
        if self.routed.len() > 10_000 {
            self.routed.clear();
        }
        self.routed.insert(job, routed);
        routed
    }

    async fn on_event(
        &mut self,
        tx: &mut Sink,
        timeout: Duration,
        state: &AppState,
        event: JobEvent,
    ) -> bool {
        let id = event.job_id;
        let routed = self.is_routed(state, id).await;
        let pid = id.to_string();
        let at = event.at.0;
        let mut out: Vec<Value> = Vec::new();
        let mut status = false;
        if event.kind.is_terminal() {
            self.waiting.remove(&id);
            self.last_positions.remove(&id);
        }
        match event.kind {
            EventKind::Queued { .. } => {
                status = true;
                if routed {
                    self.waiting.insert(id, event.seq);
                }
            }
            EventKind::Dispatched { .. } => {
                self.waiting.remove(&id);
                self.last_positions.remove(&id);
                if routed {
                    out.push(comfyume_status(
                        &pid,
                        "starting",
                        None,
                        "handed to a GPU; starting",
                    ));
                }
            }
            EventKind::Waiting { message } if routed => {
                out.push(comfyume_status(&pid, "waiting", None, &message));
            }
            EventKind::Retrying {
                failure, delay_ms, ..
            } if routed => {
                self.waiting.insert(id, event.seq);
                let text = format!(
                    "{}; trying again in {} s",
                    failure.message,
                    delay_ms.div_ceil(1000)
                );
                out.push(comfyume_status(&pid, "retrying", None, &text));
            }
            EventKind::Started => {
                self.waiting.remove(&id);
                status = true;
                if routed {
                    self.progress.insert(id, Progress::default());
                    out.push(json!({"type": "execution_start", "data": {"prompt_id": pid, "timestamp": at}}));
                }
            }
            EventKind::Cached { nodes } if routed => {
                let p = self.progress.entry(id).or_default();
                for n in &nodes {
                    p.nodes.insert(n.clone(), (1.0, 1.0, "finished"));
                }
                out.push(json!({"type": "execution_cached", "data": {"nodes": nodes, "prompt_id": pid, "timestamp": at}}));
            }
            EventKind::Executing { node } if routed => {
                let p = self.progress.entry(id).or_default();
                if let Some(prev) = p.running.take()
                    && let Some(entry) = p.nodes.get_mut(&prev)
                {
                    *entry = (entry.1, entry.1, "finished");
                }
                p.nodes.insert(node.clone(), (0.0, 1.0, "running"));
                p.running = Some(node.clone());
                out.push(progress_state(&pid, p));
                out.push(json!({"type": "executing", "data": {"node": node, "display_node": node, "prompt_id": pid}}));
            }
            EventKind::Progress { node, value, max } if routed => {
                let p = self.progress.entry(id).or_default();
                let node = node.or_else(|| p.running.clone()).unwrap_or_default();
                p.nodes
                    .insert(node.clone(), (value as f64, max as f64, "running"));
                out.push(json!({"type": "progress", "data": {"value": value, "max": max, "prompt_id": pid, "node": node}}));
                out.push(progress_state(&pid, p));
            }
            EventKind::Executed { node, output } if routed => {
                let p = self.progress.entry(id).or_default();
                p.nodes.insert(node.clone(), (1.0, 1.0, "finished"));
                let output = rename_files(output, id);
                out.push(json!({"type": "executed", "data": {"node": node, "display_node": node, "output": output, "prompt_id": pid}}));
            }
            EventKind::Preview { content_type, data } if routed => {
                let node = self
                    .progress
                    .get(&id)
                    .and_then(|p| p.running.clone())
                    .unwrap_or_default();
                let frame = preview_frame(self.preview_metadata, &pid, &node, &content_type, &data);
                if !send_raw(tx, timeout, Message::Binary(frame.into())).await {
                    return false;
                }
            }
            EventKind::Other { kind, data } if routed && kind == "progress_text" => {
                let node = data["node"].as_str().unwrap_or("").to_string();
                let text = data["text"].as_str().unwrap_or("").to_string();
                let mut frame = 3u32.to_be_bytes().to_vec();
                frame.extend((node.len() as u32).to_be_bytes());
                frame.extend(node.as_bytes());
                frame.extend(text.as_bytes());
                if !send_raw(tx, timeout, Message::Binary(frame.into())).await {
                    return false;
                }
            }
            EventKind::Succeeded { .. } => {
                status = true;
                if routed {
                    let mut p = self.progress.remove(&id).unwrap_or_default();
                    for entry in p.nodes.values_mut() {
                        *entry = (entry.1, entry.1, "finished");
                    }
                    out.push(progress_state(&pid, &p));
                    out.push(
                        json!({"type": "execution_success", "data": {"prompt_id": pid, "timestamp": at}}),
                    );
                }
            }
            EventKind::Failed { .. } => {
                status = true;
                self.progress.remove(&id);
                if routed && let Ok(Some(job)) = state.engine().get(id).await {
                    out.extend(
                        super::jobs::execution_error(&job)
                            .map(|e| json!({"type": "execution_error", "data": e})),
                    );
                }
            }
            EventKind::Cancelled { .. } => {
                status = true;
                let started = self.progress.remove(&id);
                if routed && let Some(p) = started {
                    out.push(json!({"type": "execution_interrupted", "data": {"prompt_id": pid, "node_id": p.running, "node_type": null, "executed": [], "timestamp": at}}));
                }
            }
            _ => {}
        }
        let terminal = matches!(out.last(), Some(m) if ["execution_success", "execution_error", "execution_interrupted"].contains(&m["type"].as_str().unwrap_or("")));
        let queued = routed && self.waiting.contains_key(&id) && !self.last_positions.contains_key(&id);
        for message in out {
            if !send(tx, timeout, message).await {
                return false;
            }
        }
        if status && !self.send_status(tx, timeout, state).await {
            return false;
        }
        if terminal && routed {
            let last = json!({"type": "executing", "data": {"node": null, "prompt_id": pid}});
            if !send(tx, timeout, last).await {
                return false;
            }
        }
        if queued {
            // Its first position now (the board may have moved before this socket saw the event).
            let board = state.positions().subscribe().borrow().clone();
            return self.send_positions(tx, timeout, state, &board).await;
        }
        true
    }

    /// Sends the positions of this socket's waiting jobs that changed.
    async fn send_positions(
        &mut self,
        tx: &mut Sink,
        timeout: Duration,
        state: &AppState,
        board: &Positions,
    ) -> bool {
        let mut changed = Vec::new();
        for (&id, &seq) in &self.waiting {
            let position = board.of(state, JobKey { id, seq });
            if self.last_positions.get(&id) != Some(&position) {
                changed.push((id, position));
            }
        }
        for (id, position) in changed {
            self.last_positions.insert(id, position);
            let pid = id.to_string();
            let message = match position {
                Some(0) => comfyume_status(
                    &pid,
                    "queued",
                    Some(0),
                    "next in the queue: waiting for a free GPU",
                ),
                Some(n) => comfyume_status(
                    &pid,
                    "queued",
                    Some(n),
                    &format!("queued: {n} job(s) ahead in the shared queue"),
                ),
                None => comfyume_status(
                    &pid,
                    "held",
                    None,
                    "held in the queue (paused by the instructor, or capped)",
                ),
            };
            if !send(tx, timeout, message).await {
                return false;
            }
        }
        true
    }
}

fn comfyume_status(pid: &str, state: &str, position: Option<usize>, text: &str) -> Value {
    let mut data = json!({"prompt_id": pid, "state": state, "text": text});
    if let Some(p) = position {
        data["position"] = json!(p);
    }
    json!({"type": "comfyume_status", "data": data})
}

fn progress_state(pid: &str, p: &Progress) -> Value {
    let nodes: serde_json::Map<String, Value> = p
        .nodes
        .iter()
        .map(|(n, (value, max, st))| {
            (
                n.clone(),
                json!({"value": value, "max": max, "state": st, "node_id": n, "prompt_id": pid,
                "display_node_id": n, "parent_node_id": null, "real_node_id": n}),
            )
        })
        .collect();
    json!({"type": "progress_state", "data": {"prompt_id": pid, "nodes": nodes}})
}

/// An `executed.output` with each file's subfolder as the workspace serves it (`<job>[/<subfolder>]`).
fn rename_files(mut output: Value, job: JobId) -> Value {
    if let Some(media) = output.as_object_mut() {
        for list in media.values_mut() {
            let Some(items) = list.as_array_mut() else {
                continue;
            };
            for item in items {
                if let Some(file) = item.as_object_mut()
                    && file.contains_key("filename")
                {
                    let sub = file
                        .get("subfolder")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string();
                    file.insert("subfolder".into(), json!(view_subfolder(job, &sub)));
                }
            }
        }
    }
    output
}

/// ComfyUI's preview frame: type 4 with metadata when the client asked for it, else type 1.
fn preview_frame(metadata: bool, pid: &str, node: &str, content_type: &str, data: &[u8]) -> Vec<u8> {
    if metadata {
        let meta = json!({"node_id": node, "prompt_id": pid, "display_node_id": node, "parent_node_id": null,
            "real_node_id": node, "image_type": content_type})
        .to_string();
        let mut frame = 4u32.to_be_bytes().to_vec();
        frame.extend((meta.len() as u32).to_be_bytes());
        frame.extend(meta.as_bytes());
        frame.extend(data);
        frame
    } else {
        let format: u32 = if content_type == "image/png" { 2 } else { 1 };
        let mut frame = 1u32.to_be_bytes().to_vec();
        frame.extend(format.to_be_bytes());
        frame.extend(data);
        frame
    }
}

async fn send(tx: &mut Sink, timeout: Duration, message: Value) -> bool {
    send_raw(tx, timeout, Message::Text(message.to_string().into())).await
}

async fn send_raw(tx: &mut Sink, timeout: Duration, message: Message) -> bool {
    matches!(tokio::time::timeout(timeout, tx.send(message)).await, Ok(Ok(())))
}
