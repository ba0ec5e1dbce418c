//! One job in async-inference mode: the platform keeps the request and its answer, comfyume polls.
//!
//! 1. `POST <deployment>/comfyume/run` with `Prefer: respond-async` and our job id as `X-Inference-Id`;
//!    the body is a [`RunRequest`] for the `comfyume agent` in the container (the workflow with the
//!    output rewrite, and a job-scoped callback when the server has a public URL). The platform answers
//!    at once with the request's `Id`, `StatusPath` and `ResultPath`.
//! 2. The status path is polled (with `X-Inference-Id`). Queued → "waiting for a GPU to start" after a
//!    moment, and a start timeout once the cold-start budget is spent; running (or the first live
//!    message from the agent) → started; done → the result path is fetched.
//! 3. The result is the agent's [`RunResponse`]: files (inline) become artifacts under the user's own
//!    subfolders, node outputs become `executed` events, a failure keeps its kind (a node error is the
//!    user's, never retried).
//!
//! Live messages pushed by the agent to the server's callback route arrive through the
//! [`CallbackHub`](comfyume_core::CallbackHub) and become progress events at once. Verda's documentation
//! does not list the words its status answer uses, so they are read tolerantly (see [`Phase::of`]).

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use comfyume_core::{
    Artifact, Failure, FailureKind, Job, JobId, ProviderError, ProviderEvent, ProviderEventStream,
    Registration,
};
use futures::StreamExt;
use reqwest::header::HeaderValue;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::task::AbortOnDropHandle;

use super::{AsyncConfig, Deployment, waiting_message};
use crate::agent::{Callback, RunRequest, RunResponse};
use crate::comfyui::{job_prefix, mark_outputs, plan_outputs, rewrite_workflow};
use crate::protocol::{ServerMessage, steps};
use crate::serverless::{body_detail, unreachable};

/// Where a request stands, as the platform's status answer says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Waiting for a replica.
    Queued,
    /// A replica runs it.
    Running,
    /// The result is ready.
    Done,
    /// The platform gave up on it.
    Failed,
}

impl Phase {
    /// Reads a status answer: its `Status`/`status`/`state` field, in any case, with the common words
    /// (`queued`/`pending`, `running`/`in_progress`/`processing`, `completed`/`succeeded`/`done`,
    /// `failed`/`error`/`expired`/`cancelled`/`timeout`). `None` for anything else.
    pub fn of(status: &Value) -> Option<Phase> {
        let word = ["Status", "status", "state", "State"]
            .iter()
            .find_map(|k| status.get(*k).and_then(Value::as_str))?
            .to_ascii_lowercase()
            .replace(['-', ' '], "_");
        Some(match word.as_str() {
            "queued" | "pending" | "waiting" | "accepted" | "submitted" | "in_queue" => Phase::Queued,
            "running" | "in_progress" | "processing" | "started" | "executing" => Phase::Running,
            "completed" | "complete" | "succeeded" | "success" | "done" | "finished" => Phase::Done,
            "failed" | "error" | "expired" | "cancelled" | "canceled" | "timeout" | "timed_out" => {
                Phase::Failed
            }
            _ => return None,
        })
    }
}

/// The platform's answer to an async request: where to ask next.
#[derive(Debug)]
struct Accepted {
    status: reqwest::Url,
    result: reqwest::Url,
}

pub(super) async fn submit(
    dep: Arc<Deployment>,
    config: AsyncConfig,
    job: &Job,
) -> Result<ProviderEventStream, ProviderError> {
    let extra = &dep.config.extra_prefix_classes;
    let mut workflow =
        rewrite_workflow(&job.spec.workflow, job.id, extra).map_err(|f| ProviderError::Rejected(*f))?;
    mark_outputs(
        &mut workflow,
        &format!("{}/{}", job.id, job.attempts),
        extra,
        false,
    );
    let registration = config.callbacks.as_ref().map(|c| c.hub.register(job.id));
    let callback = config
        .callbacks
        .as_ref()
        .zip(registration.as_ref())
        .map(|(c, r)| Callback {
            url: format!(
                "{}/api/v1/callbacks/{}",
                c.public_url.trim_end_matches('/'),
                job.id
            ),
            token: r.token.clone(),
        });
    let request = RunRequest {
        job_id: job.id.to_string(),
        workflow,
        extra_data: job.spec.extra_data.clone(),
        callback,
    };
    let (tx, rx) = mpsc::unbounded_channel();
    let run = Run {
        dep,
        config,
        job: job.id,
        tx,
    };
    let task = AbortOnDropHandle::new(tokio::spawn(run.drive(request, registration)));
    Ok(futures::stream::unfold((rx, task), |(mut rx, task)| async move {
        let event = rx.recv().await?;
        Some((event, (rx, task)))
    })
    .boxed())
}

struct Run {
    dep: Arc<Deployment>,
    config: AsyncConfig,
    job: JobId,
    tx: mpsc::UnboundedSender<ProviderEvent>,
}

impl Run {
    fn send(&self, event: ProviderEvent) {
        let _ = self.tx.send(event);
    }

    fn fail(&self, kind: FailureKind, why: String) -> ProviderEvent {
        let why = self
            .dep
            .redact(&format!("deployment '{}': {why}", self.dep.config.name));
        if kind != FailureKind::NodeError && kind != FailureKind::Validation {
            self.dep.gate.failed(&why);
        }
        ProviderEvent::Failed(Failure::new(kind, why))
    }

    async fn drive(self, request: RunRequest, registration: Option<Registration>) {
        let end = match self.post(&request).await {
            Ok(accepted) => self.follow(accepted, registration).await,
            Err(end) => end,
        };
        self.send(end);
    }

    fn with_id(&self, builder: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        builder.header("X-Inference-Id", self.job.to_string())
    }

    /// Sends the request for asynchronous handling.
    async fn post(&self, request: &RunRequest) -> Result<Accepted, ProviderEvent> {
        let url = self
            .dep
            .client
            .endpoint(&self.config.run_path)
            .map_err(|e| self.fail(FailureKind::ProviderError, e.to_string()))?;
        let response = self
            .with_id(self.dep.http.post(url.clone()))
            .header("Prefer", HeaderValue::from_static("respond-async"))
            .timeout(self.dep.config.request_timeout)
            .json(request)
            .send()
            .await
            .map_err(|e| {
                self.fail(
                    FailureKind::ProviderUnavailable,
                    unreachable(&url, &e).to_string(),
                )
            })?;
        let status = response.status();
        let location = response
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = response.bytes().await.map_err(|e| {
            self.fail(
                FailureKind::ProviderUnavailable,
                unreachable(&url, &e).to_string(),
            )
        })?;
        if !status.is_success() {
            let kind = if status.is_server_error() || status.as_u16() == 429 {
                FailureKind::ProviderUnavailable
            } else {
                FailureKind::ProviderError
            };
            return Err(self.fail(
                kind,
                format!(
                    "POST {} answered HTTP {}: {}",
                    url.path(),
                    status.as_u16(),
                    body_detail(&body)
                ),
            ));
        }
        let answer: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let path = |keys: &[&str]| {
            keys.iter()
                .find_map(|k| answer.get(*k).and_then(Value::as_str).map(str::to_string))
        };
        let status_path = path(&["StatusPath", "statusPath", "status_path"]);
        let result_path = path(&["ResultPath", "resultPath", "result_path"]).or(location);
        let (Some(status_path), Some(result_path)) = (status_path, result_path) else {
            return Err(self.fail(
                FailureKind::ProviderError,
                format!(
                    "the platform accepted the request without saying where its status and result are: {}",
                    body_detail(&body)
                ),
            ));
        };
        let base = self.dep.client.base_url();
        match (base.join(&status_path), base.join(&result_path)) {
            (Ok(status), Ok(result)) => Ok(Accepted { status, result }),
            _ => Err(self.fail(
                FailureKind::ProviderError,
                format!("odd status or result path: '{status_path}', '{result_path}'"),
            )),
        }
    }

    /// Polls until the result is ready, passing on live messages meanwhile.
    async fn follow(&self, accepted: Accepted, mut registration: Option<Registration>) -> ProviderEvent {
        let config = &self.dep.config;
        let sent = Instant::now();
        let cold = self.dep.gate.warmth() == comfyume_core::Warmth::Cold;
        let waiting = self.dep.gate.waiting();
        let mut waiting = Some(waiting);
        let mut told = false;
        if cold {
            told = true;
            self.send(ProviderEvent::Waiting {
                message: waiting_message(),
            });
        }
        let mut started = false;
        let mut poll = tokio::time::interval(self.config.poll_interval);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let live = async {
                match registration.as_mut() {
                    Some(r) => r.messages.recv().await,
                    None => std::future::pending().await,
                }
            };
            let phase = tokio::select! {
                message = live => {
                    match message {
                        Some(message) => {
                            if !started {
                                started = true;
                                if let Some(w) = waiting.take() { w.answered(); }
                                self.send(ProviderEvent::Started);
                            }
                            self.live(message);
                        }
                        None => registration = None,
                    }
                    continue;
                }
                _ = poll.tick() => self.status(&accepted).await,
            };
            match phase {
                Ok(Some(Phase::Done)) => break,
                Ok(Some(Phase::Failed)) => {
                    return self.fail(
                        FailureKind::ProviderError,
                        "the platform reports the request failed".into(),
                    );
                }
                Ok(Some(Phase::Running)) if !started => {
                    started = true;
                    if let Some(w) = waiting.take() {
                        w.answered();
                    }
                    self.send(ProviderEvent::Started);
                }
                Ok(_) => {}
                Err(why) => {
                    tracing::debug!(job = %self.job, why = %self.dep.redact(&why), "status check failed; asking again")
                }
            }
            if !started {
                if !told && sent.elapsed() >= config.waiting_after {
                    told = true;
                    self.send(ProviderEvent::Waiting {
                        message: waiting_message(),
                    });
                }
                if sent.elapsed() >= config.cold_start_timeout {
                    return self.fail(
                        FailureKind::StartTimeout,
                        format!(
                            "no replica took the job within the cold-start budget of {} s",
                            config.cold_start_timeout.as_secs()
                        ),
                    );
                }
            }
        }
        if let Some(w) = waiting.take() {
            w.answered();
        }
        // Messages pushed before the end may still be on their way.
        if let Some(r) = registration.as_mut() {
            while let Ok(message) = r.messages.try_recv() {
                self.live(message);
            }
        }
        match self.result(&accepted).await {
            Ok(response) => self.deliver(response, started),
            Err(why) => self.fail(FailureKind::ProviderError, why),
        }
    }

    /// One status check: the phase, `None` for an answer without one.
    async fn status(&self, accepted: &Accepted) -> Result<Option<Phase>, String> {
        let response = self
            .with_id(self.dep.http.get(accepted.status.clone()))
            .timeout(self.dep.config.request_timeout)
            .send()
            .await
            .map_err(|e| unreachable(&accepted.status, &e).to_string())?;
        let code = response.status();
        let body = response.bytes().await.map_err(|e| e.to_string())?;
        if !code.is_success() {
            return Err(format!(
                "status answered HTTP {}: {}",
                code.as_u16(),
                body_detail(&body)
            ));
        }
        Ok(serde_json::from_slice(&body).ok().as_ref().and_then(Phase::of))
    }

    async fn result(&self, accepted: &Accepted) -> Result<RunResponse, String> {
        let response = self
            .with_id(self.dep.http.get(accepted.result.clone()))
            .timeout(self.dep.config.request_timeout.max(Duration::from_secs(120)))
            .send()
            .await
            .map_err(|e| unreachable(&accepted.result, &e).to_string())?;
        let code = response.status();
        let body = response.bytes().await.map_err(|e| e.to_string())?;
        if !code.is_success() {
            return Err(format!(
                "the result answered HTTP {}: {}",
                code.as_u16(),
                body_detail(&body)
            ));
        }
        serde_json::from_slice(&body).map_err(|e| {
            format!(
                "the result is not a comfyume agent's answer ({e}): {}",
                body_detail(&body)
            )
        })
    }

    /// A live message from the agent, as a progress event.
    fn live(&self, message: Value) {
        let Some(kind) = message.get("type").and_then(Value::as_str) else {
            return;
        };
        let data = message.get("data").cloned().unwrap_or(Value::Null);
        let event = match ServerMessage::from_parts(kind.to_string(), data) {
            ServerMessage::Executing(e) => match e.node {
                Some(node) => ProviderEvent::Executing { node },
                None => return,
            },
            ServerMessage::ExecutionCached(c) => ProviderEvent::Cached { nodes: c.nodes },
            ServerMessage::Progress(p) => ProviderEvent::Progress {
                node: p.node.clone(),
                value: steps(&p.value),
                max: steps(&p.max),
            },
            // `executed` comes with the result, its files already in the user's space.
            _ => return,
        };
        self.send(event);
    }

    fn deliver(&self, response: RunResponse, started: bool) -> ProviderEvent {
        if response.status != "success" {
            let failure = match response.error {
                Some(e) => e.into_failure(),
                None => Failure::new(
                    FailureKind::ProviderError,
                    "the agent reported a failure without a reason",
                ),
            };
            let failure = self.dep.redact_failure(failure);
            if failure.kind.is_retryable() {
                self.dep.gate.failed(&failure.message);
            }
            return ProviderEvent::Failed(failure);
        }
        if !started {
            self.send(ProviderEvent::Started);
        }
        let prefix = job_prefix(self.job);
        for (node, output) in &response.outputs {
            let plan = plan_outputs(output, &prefix, false);
            for planned in &plan.files {
                let Some(inline) = response.files.iter().find(|f| {
                    f.node == *node
                        && f.filename == planned.remote.filename
                        && f.subfolder == planned.remote.subfolder
                        && f.kind == planned.remote.kind
                }) else {
                    return ProviderEvent::Failed(Failure::new(
                        FailureKind::ProviderError,
                        format!("the agent's answer lacks the file {}", planned.remote.filename),
                    ));
                };
                let data = match base64::engine::general_purpose::STANDARD.decode(&inline.data) {
                    Ok(d) => d,
                    Err(e) => {
                        return ProviderEvent::Failed(Failure::new(
                            FailureKind::ProviderError,
                            format!("the file {} is not valid base64: {e}", inline.filename),
                        ));
                    }
                };
                self.send(ProviderEvent::Artifact(Artifact {
                    node_id: Some(node.clone()),
                    media: planned.media.clone(),
                    filename: planned.remote.filename.clone(),
                    subfolder: planned.subfolder.clone(),
                    kind: planned.kind,
                    data: data.into(),
                }));
            }
            for (media, value) in plan.values {
                self.send(ProviderEvent::Value {
                    node: Some(node.clone()),
                    media,
                    value,
                });
            }
            self.send(ProviderEvent::Executed {
                node: node.clone(),
                output: plan.output,
            });
        }
        ProviderEvent::Completed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn status_words_are_read_tolerantly() {
        assert_eq!(Phase::of(&json!({"Status": "Queued"})), Some(Phase::Queued));
        assert_eq!(Phase::of(&json!({"status": "IN_PROGRESS"})), Some(Phase::Running));
        assert_eq!(Phase::of(&json!({"state": "completed"})), Some(Phase::Done));
        assert_eq!(Phase::of(&json!({"Status": "Expired"})), Some(Phase::Failed));
        assert_eq!(Phase::of(&json!({"Status": "mystery"})), None);
        assert_eq!(Phase::of(&json!({})), None);
    }
}
