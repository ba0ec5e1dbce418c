//! One job on one instance: the instance's frames for this prompt, turned into [`ProviderEvent`]s.
//!
//! The stream is lazy: it does its work (fetching outputs with `/view`) while the dispatcher polls it,
//! and dropping it frees the job's slot on the instance. It ends right after its one terminal event.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use comfyume_core::{Artifact, Failure, FailureKind, JobId, ProviderEvent, ProviderEventStream};
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::instance::{Delivery, Instance, JobGuard, Registration};
use super::rewrite::{PlannedFile, job_prefix, plan_outputs};
use crate::protocol::{BinaryFrame, FileRef, Frame, ServerMessage, node_error_failure, steps};

pub(crate) struct JobRun {
    prompt_id: String,
    prefix: String,
    instance: Arc<Instance>,
    rx: mpsc::UnboundedReceiver<Delivery>,
    _guard: JobGuard,
    reconnect_grace: Duration,
    queue: VecDeque<ProviderEvent>,
    finished: bool,
    started: bool,
    cached: HashSet<String>,
    delivered: HashSet<FileRef>,
    /// Nodes ComfyUI answered from its cache with another prompt's files (refused): the job lacks them.
    short: Vec<String>,
    uncached: Arc<Mutex<HashSet<JobId>>>,
    job: JobId,
    /// For a prompt found again after a restart: how often to check its state on the instance when no
    /// frame comes (its events may go to another socket).
    poll: Option<Duration>,
    /// Found again after a restart: frames were missed, so outputs are read from the history at the end.
    recovered: bool,
    /// The history holds the prompt's end already: read it before anything else.
    history_first: bool,
    /// How often to check the prompt's state when it is followed by polling (after missed frames).
    recovery_poll: Duration,
}

impl JobRun {
    pub(crate) fn new(
        job: JobId,
        instance: Arc<Instance>,
        registration: Registration,
        reconnect_grace: Duration,
        recovery_poll: Duration,
        uncached: Arc<Mutex<HashSet<JobId>>>,
    ) -> Self {
        let (guard, rx) = registration;
        Self {
            recovery_poll,
            short: Vec::new(),
            uncached,
            job,
            poll: None,
            recovered: false,
            history_first: false,
            prompt_id: job.to_string(),
            prefix: job_prefix(job),
            instance,
            rx,
            _guard: guard,
            reconnect_grace,
            queue: VecDeque::new(),
            finished: false,
            started: false,
            cached: HashSet::new(),
            delivered: HashSet::new(),
        }
    }

    /// ComfyUI accepted the prompt but dropped some invalid outputs: tell the user before anything runs.
    pub(crate) fn warn_node_errors(&mut self, node_errors: Value) {
        if node_errors.as_object().is_some_and(|m| !m.is_empty()) {
            self.queue.push_back(ProviderEvent::Other {
                kind: "node_errors".into(),
                data: node_errors,
            });
        }
    }

    /// Turns this into the run of a prompt found on the instance after a restart (see
    /// `recover.rs`): `running` when it executes now, `ended` when its history holds its end. Its
    /// state is checked every `poll` while no frame comes.
    pub(crate) fn recovered(mut self, running: bool, ended: bool, poll: Duration) -> Self {
        self.recovered = true;
        self.poll = Some(poll);
        self.history_first = ended;
        if running || ended {
            self.started = true;
            self.queue.push_back(ProviderEvent::Started);
        }
        self
    }

    pub(crate) fn into_stream(self) -> ProviderEventStream {
        futures::stream::unfold(self, |mut run| async move {
            let event = run.next_event().await?;
            Some((event, run))
        })
        .boxed()
    }

    async fn next_event(&mut self) -> Option<ProviderEvent> {
        loop {
            if let Some(event) = self.queue.pop_front() {
                return Some(event);
            }
            if self.finished {
                return None;
            }
            if std::mem::take(&mut self.history_first) {
                self.history_check().await;
                continue;
            }
            let delivery = match self.poll {
                None => self.rx.recv().await,
                Some(every) => match tokio::time::timeout(every, self.rx.recv()).await {
                    Ok(delivery) => delivery,
                    Err(_) => {
                        self.poll_state().await;
                        continue;
                    }
                },
            };
            match delivery {
                Some(delivery) => self.handle(delivery).await,
                None => self.lost("the ComfyUI provider was shut down".into()),
            }
        }
    }

    fn push(&mut self, event: ProviderEvent) {
        if !self.finished {
            self.queue.push_back(event);
        }
    }

    fn finish(&mut self, event: ProviderEvent) {
        if !self.finished {
            self.queue.push_back(event);
            self.finished = true;
        }
    }

    async fn handle(&mut self, delivery: Delivery) {
        match delivery {
            Delivery::Frame(frame) => match *frame {
                Frame::Message(m) => self.on_message(m).await,
                Frame::Binary(b) => self.on_binary(b),
            },
            Delivery::Disconnected => self.on_disconnect().await,
            Delivery::Reconnected => {}
            Delivery::Lost(reason) => self.lost(reason),
        }
    }

    async fn on_message(&mut self, message: ServerMessage) {
        match message {
            ServerMessage::ExecutionStart(_) => {
                if !self.started {
                    self.started = true;
                    self.push(ProviderEvent::Started);
                }
            }
            ServerMessage::ExecutionCached(c) => {
                self.cached.extend(c.nodes.iter().cloned());
                self.push(ProviderEvent::Cached { nodes: c.nodes });
            }
            ServerMessage::Executing(e) => match e.node {
                Some(node) => self.push(ProviderEvent::Executing { node }),
                // The prompt is over but its end was not seen (frames were missed): ask its history.
                None => self.history_check().await,
            },
            ServerMessage::Progress(p) => self.push(ProviderEvent::Progress {
                node: p.node,
                value: steps(&p.value),
                max: steps(&p.max),
            }),
            ServerMessage::Executed(e) => self.on_executed(&e.node, &e.output).await,
            // A prompt found again after a restart missed some `executed` frames: its outputs come
            // from the history, which holds them once `executing` with no node follows.
            ServerMessage::ExecutionSuccess(_) if self.recovered => {}
            ServerMessage::ExecutionSuccess(_) => self.succeed(),
            ServerMessage::ExecutionError(ref e) => {
                let failure = node_error_failure(e, message.data());
                self.finish(ProviderEvent::Failed(failure));
            }
            ServerMessage::ExecutionInterrupted(ref i) => {
                let failure = Failure {
                    node_id: i.node_id.clone(),
                    node_type: i.node_type.clone(),
                    details: message.data(),
                    ..Failure::new(
                        FailureKind::ProviderError,
                        format!(
                            "the job was interrupted on the ComfyUI at {} (not by comfyume)",
                            self.instance.url
                        ),
                    )
                };
                self.finish(ProviderEvent::Failed(failure));
            }
            ServerMessage::Status(_) | ServerMessage::FeatureFlags(_) => {}
            other => {
                let kind = other.kind().to_string();
                self.push(ProviderEvent::Other {
                    kind,
                    data: other.data(),
                });
            }
        }
    }

    fn on_binary(&mut self, frame: BinaryFrame) {
        match frame {
            BinaryFrame::PreviewImage { format, data } => self.push(ProviderEvent::Preview {
                content_type: format.content_type().to_string(),
                data,
            }),
            BinaryFrame::PreviewImageWithMetadata { metadata, data } => self.push(ProviderEvent::Preview {
                content_type: metadata.image_type.unwrap_or_else(|| "image/jpeg".into()),
                data,
            }),
            BinaryFrame::Text { node_id, text, .. } => self.push(ProviderEvent::Other {
                kind: "progress_text".into(),
                data: json!({ "node": node_id, "text": text }),
            }),
            other => tracing::debug!(?other, "ignoring a binary frame"),
        }
    }

    /// Fetches this job's files of one node's output, then reports the output as the user sees it.
    async fn on_executed(&mut self, node: &str, output: &Value) {
        let plan = plan_outputs(output, &self.prefix, self.cached.contains(node));
        for why in &plan.refused {
            tracing::warn!(job = %self.prompt_id, node, reason = %why, "refused an output that is not this job's");
        }
        if plan.refused_cached && !self.short.iter().any(|n| n == node) {
            self.short.push(node.to_string());
        }
        let files: Vec<PlannedFile> = plan
            .files
            .into_iter()
            .filter(|f| self.delivered.insert(f.remote.clone()))
            .collect();
        let client = &self.instance.client;
        let fetched = futures::future::try_join_all(files.iter().map(|f| client.view(&f.remote))).await;
        match fetched {
            Ok(data) => {
                for (file, data) in files.into_iter().zip(data) {
                    self.push(ProviderEvent::Artifact(Artifact {
                        node_id: Some(node.to_string()),
                        media: file.media,
                        filename: file.remote.filename,
                        subfolder: file.subfolder,
                        kind: file.kind,
                        data,
                    }));
                }
                // Text and flags (`animated`) are results too; a repeat (a history re-check) replaces.
                for (media, value) in plan.values {
                    self.push(ProviderEvent::Value {
                        node: Some(node.to_string()),
                        media,
                        value,
                    });
                }
                self.push(ProviderEvent::Executed {
                    node: node.to_string(),
                    output: plan.output,
                });
            }
            Err(e) => {
                let message = format!(
                    "could not fetch an output from the ComfyUI at {}: {e}",
                    self.instance.url
                );
                self.fail_remote(FailureKind::ProviderError, message);
            }
        }
    }

    /// The prompt succeeded: the job completes, unless ComfyUI answered an output node from its cache
    /// with another prompt's files despite the marker. Then it has fewer outputs than its graph makes:
    /// the attempt fails as an infrastructure failure, and the retry runs with the cache bypassed.
    fn succeed(&mut self) {
        if self.short.is_empty() {
            return self.finish(ProviderEvent::Completed);
        }
        self.uncached
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(self.job);
        let message = format!(
            "the ComfyUI at {} answered node(s) {} from its cache with another prompt's files; the job \
             runs again with the cache bypassed",
            self.instance.url,
            self.short.join(", ")
        );
        self.finish(ProviderEvent::Failed(Failure::new(
            FailureKind::ProviderError,
            message,
        )));
    }

    /// The websocket dropped: wait (bounded) for it to come back, then ask the history what happened.
    async fn on_disconnect(&mut self) {
        let deadline = Instant::now() + self.reconnect_grace;
        loop {
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Err(_) => {
                    let reason = format!(
                        "the websocket to the ComfyUI at {} dropped and did not come back within {:?}",
                        self.instance.url, self.reconnect_grace
                    );
                    return self.lost(reason);
                }
                Ok(None) => return self.lost("the ComfyUI provider was shut down".into()),
                Ok(Some(Delivery::Reconnected)) => return self.history_check().await,
                Ok(Some(Delivery::Lost(reason))) => return self.lost(reason),
                Ok(Some(Delivery::Disconnected | Delivery::Frame(_))) => {}
            }
        }
    }

    /// After missed frames: the websocket stays the source of truth, the history is the fallback check.
    /// A finished prompt is completed from its history; one still queued or running there is followed
    /// on (never sent a second time); anything else is an infrastructure failure.
    async fn history_check(&mut self) {
        if self.finished {
            return;
        }
        let url = self.instance.url.clone();
        let entry = match self.instance.client.history(&self.prompt_id).await {
            Ok(Some(entry)) => entry,
            Ok(None) => {
                if self.still_queued().await {
                    return;
                }
                return self.lost(format!(
                    "lost track of the job on the ComfyUI at {url}: it did not finish there"
                ));
            }
            Err(e) => return self.lost(format!("lost track of the job on the ComfyUI at {url}: {e}")),
        };
        let messages = entry.status.messages();
        for m in &messages {
            if let ServerMessage::ExecutionCached(c) = m {
                self.cached.extend(c.nodes.iter().cloned());
            }
        }
        if entry.status.status_str == "success" {
            let mut nodes: Vec<(&String, &Value)> = entry.outputs.iter().collect();
            nodes.sort_by(|a, b| node_order(a.0, b.0));
            for (node, output) in nodes {
                self.on_executed(node, output).await;
            }
            self.succeed();
            return;
        }
        for m in messages {
            if matches!(
                m,
                ServerMessage::ExecutionError(_) | ServerMessage::ExecutionInterrupted(_)
            ) {
                Box::pin(self.on_message(m)).await;
            }
        }
        if !self.finished {
            self.lost(format!("the job did not finish on the ComfyUI at {url}"));
        }
    }

    /// After missed frames, a prompt not ended yet: is it still in the instance's queue? Then it is
    /// followed as after a restart — its state polled while no frame comes, its outputs read from the
    /// history at the end (the frames sent while the websocket was down are gone).
    async fn still_queued(&mut self) -> bool {
        let Ok(queue) = self.instance.client.queue().await else {
            return false;
        };
        let Some(found) = super::recover::find_in_queue(&queue, &self.prompt_id) else {
            return false;
        };
        tracing::info!(job = %self.prompt_id, instance = %self.instance.url, running = found.running,
            "the job is still on the instance after missed frames; following it there");
        self.recovered = true;
        self.poll = Some(self.recovery_poll);
        if found.running && !self.started {
            self.started = true;
            self.push(ProviderEvent::Started);
        }
        true
    }

    /// No frame came for a while (a prompt found again after a restart): asks the instance where the
    /// prompt is. Ended → its history; running → started; gone from the queue without an end (ComfyUI
    /// restarted) → lost. A failed request is tried again at the next poll.
    async fn poll_state(&mut self) {
        let url = self.instance.url.clone();
        match self.instance.client.history(&self.prompt_id).await {
            Ok(Some(_)) => return self.history_check().await,
            Ok(None) => {}
            Err(e) => {
                return tracing::debug!(job = %self.prompt_id, error = %e, "could not read a prompt's history");
            }
        }
        let queue = match self.instance.client.queue().await {
            Ok(queue) => queue,
            Err(e) => return tracing::debug!(job = %self.prompt_id, error = %e, "could not read the queue"),
        };
        match super::recover::find_in_queue(&queue, &self.prompt_id) {
            Some(found) if found.running && !self.started => {
                self.started = true;
                self.push(ProviderEvent::Started);
            }
            Some(_) => {}
            // It may have ended between the two reads.
            None => match self.instance.client.history(&self.prompt_id).await {
                Ok(Some(_)) => self.history_check().await,
                _ => self.lost(format!(
                    "the job left the queue of the ComfyUI at {url} without an end (was it restarted?)"
                )),
            },
        }
    }

    /// Fails the job as "provider unavailable" (retried elsewhere) and stops it on the instance.
    fn lost(&mut self, reason: String) {
        self.fail_remote(FailureKind::ProviderUnavailable, reason);
    }

    /// Fails the job for an infrastructure reason and makes sure the instance does not go on running it.
    fn fail_remote(&mut self, kind: FailureKind, message: String) {
        if self.finished {
            return;
        }
        self.finish(ProviderEvent::Failed(Failure::new(kind, message)));
        let client = self.instance.client.clone();
        let id = self.prompt_id.clone();
        tokio::spawn(async move {
            let deleted = client.delete_queued(&[&id]).await;
            let interrupted = client.interrupt(Some(&id)).await;
            if let (Err(e), _) | (_, Err(e)) = (deleted, interrupted) {
                tracing::debug!(prompt = %id, error = %e, "could not stop an abandoned prompt");
            }
        });
    }
}

fn node_order(a: &str, b: &str) -> std::cmp::Ordering {
    match (a.parse::<u64>(), b.parse::<u64>()) {
        (Ok(x), Ok(y)) => x.cmp(&y),
        _ => a.cmp(b),
    }
}
