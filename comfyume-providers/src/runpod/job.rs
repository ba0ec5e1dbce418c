//! One job on a RunPod endpoint (see the module docs of [`super`]).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use comfyume_core::{
    Artifact, Failure, FailureKind, Job, JobId, OutputKind, ProviderError, ProviderEvent,
    ProviderEventStream, Warmth,
};
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::task::AbortOnDropHandle;

use super::output::{JobStatus, Source, State, quote, read_output};
use super::{Endpoint, RUN_PAYLOAD_LIMIT, Remote, waiting_message};
use crate::comfyui::{Shipment, mark_outputs, rewrite_workflow};
use crate::serverless::body_detail;
use crate::serverless::saves::{SaveNode, save_nodes};

/// Without a status answer for this long, the job is given up as lost.
const LOST_AFTER: Duration = Duration::from_secs(60);

/// The name a job's input gets on the worker: unique to the job, one plain file name (the worker
/// uploads into its ComfyUI's `input/` folder, which every job on that worker shares).
fn input_name(job: JobId, name: &str) -> String {
    format!("comfyume_{}_{}", job.0.simple(), name.replace('/', "_"))
}

pub(super) async fn submit(ep: Arc<Endpoint>, job: &Job) -> Result<ProviderEventStream, ProviderError> {
    let extra = &ep.config.extra_prefix_classes;
    let mut workflow =
        rewrite_workflow(&job.spec.workflow, job.id, extra).map_err(|f| ProviderError::Rejected(*f))?;
    mark_outputs(
        &mut workflow,
        &format!("{}/{}", job.id, job.attempts),
        extra,
        false,
    );
    let mut images = Vec::new();
    if let Some(store) = &ep.inputs {
        let id = job.id;
        let rename = move |name: &str| input_name(id, name);
        let files =
            Shipment::prepare_as(store.as_ref(), &job.spec.owner, &mut workflow, None, &rename).await?;
        for (name, data) in files {
            images.push(json!({
                "name": input_name(job.id, &name),
                "image": base64::engine::general_purpose::STANDARD.encode(&data),
            }));
        }
    }
    let saves = save_nodes(&workflow, job.id);
    let mut input = json!({ "workflow": workflow });
    if !images.is_empty() {
        input["images"] = Value::Array(images);
    }
    let body = serde_json::to_vec(&json!({ "input": input }))
        .map_err(|e| ProviderError::Protocol(format!("cannot encode the job: {e}")))?;
    if body.len() > RUN_PAYLOAD_LIMIT {
        return Err(ProviderError::Rejected(Failure::new(
            FailureKind::Validation,
            format!(
                "the workflow and its input files make {:.1} MB; RunPod takes at most {} MB per job \
                 (use smaller inputs)",
                body.len() as f64 / 1e6,
                RUN_PAYLOAD_LIMIT / 1_000_000
            ),
        )));
    }
    let serial = {
        let mut a = ep.attempts();
        a.serial += 1;
        let serial = a.serial;
        a.jobs.insert(job.id, (serial, Remote::Submitting));
        serial
    };
    let (tx, rx) = mpsc::unbounded_channel();
    let run = Run {
        ep,
        job: job.id,
        serial,
        saves,
        tx,
    };
    let task = AbortOnDropHandle::new(tokio::spawn(run.drive(body)));
    Ok(futures::stream::unfold((rx, task), |(mut rx, task)| async move {
        let event = rx.recv().await?;
        Some((event, (rx, task)))
    })
    .boxed())
}

/// Cancels the RunPod job of `job`'s attempt: now if its id is known, else as soon as `/run` answers.
pub(super) async fn cancel(ep: &Arc<Endpoint>, job: JobId) -> Result<(), ProviderError> {
    let remote = ep.attempts().jobs.remove(&job).map(|(_, r)| r);
    match remote {
        Some(Remote::Running(id)) => cancel_remote(ep, &id).await.map_err(ProviderError::Unavailable),
        // The `/run` task cancels it when the id comes (it finds its attempt gone).
        Some(Remote::Submitting) | None => Ok(()),
    }
}

/// `POST /cancel/<id>`.
async fn cancel_remote(ep: &Endpoint, id: &str) -> Result<(), String> {
    let url = ep.url(&format!("cancel/{id}"))?;
    let answer = ep
        .http
        .post(url)
        .timeout(ep.config.request_timeout)
        .send()
        .await
        .map_err(|e| ep.redact(&crate::serverless::unreachable(&ep.api, &e).to_string()))?;
    let status = answer.status();
    let body = answer.bytes().await.unwrap_or_default();
    if status.is_success() {
        tracing::debug!(endpoint = %ep.config.name, runpod_job = %id, "cancelled at RunPod");
        Ok(())
    } else {
        Err(ep.redact(&format!(
            "RunPod did not cancel job {id} (HTTP {}): {}",
            status.as_u16(),
            body_detail(&body)
        )))
    }
}

/// Cancels in the background (from a destructor), logging what fails.
fn cancel_in_background(ep: Arc<Endpoint>, id: String) {
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        runtime.spawn(async move {
            if let Err(why) = cancel_remote(&ep, &id).await {
                tracing::warn!(endpoint = %ep.config.name, runpod_job = %id, "{why}");
            }
        });
    }
}

struct Run {
    ep: Arc<Endpoint>,
    job: JobId,
    serial: u64,
    saves: Vec<SaveNode>,
    tx: mpsc::UnboundedSender<ProviderEvent>,
}

/// A dropped run (the job was cancelled, timed out, or the server stops) leaves nothing running at
/// RunPod.
impl Drop for Run {
    fn drop(&mut self) {
        if let Some(Remote::Running(id)) = self.forget() {
            cancel_in_background(Arc::clone(&self.ep), id);
        }
    }
}

impl Run {
    fn send(&self, event: ProviderEvent) {
        let _ = self.tx.send(event);
    }

    /// Takes this attempt out of the endpoint's list (it ended, or RunPod ended it); where it stood.
    fn forget(&self) -> Option<Remote> {
        let mut a = self.ep.attempts();
        match a.jobs.get(&self.job) {
            Some((serial, _)) if *serial == self.serial => a.jobs.remove(&self.job).map(|(_, r)| r),
            _ => None,
        }
    }

    fn fail(&self, kind: FailureKind, why: &str) -> ProviderEvent {
        let why = self
            .ep
            .redact(&format!("endpoint '{}': {why}", self.ep.config.name));
        if kind.is_retryable() {
            self.ep.gate.failed(&why);
        }
        ProviderEvent::Failed(Failure::new(kind, why))
    }

    async fn drive(self, body: Vec<u8>) {
        let end = match self.post(body).await {
            Ok(id) => self.follow(&id).await,
            Err(end) => end,
        };
        self.forget();
        self.send(end);
    }

    /// `POST /run`, in a task of its own: a job dropped meanwhile is cancelled when its id comes.
    async fn post(&self, body: Vec<u8>) -> Result<String, ProviderEvent> {
        let (ep, job, serial) = (Arc::clone(&self.ep), self.job, self.serial);
        let posting = tokio::spawn(async move {
            let answer = post_run(&ep, body).await;
            if let Ok(id) = &answer {
                let mut a = ep.attempts();
                match a.jobs.get_mut(&job) {
                    Some((s, remote)) if *s == serial && *remote == Remote::Submitting => {
                        *remote = Remote::Running(id.clone());
                    }
                    _ => {
                        drop(a);
                        cancel_in_background(Arc::clone(&ep), id.clone());
                    }
                }
            }
            answer
        });
        match posting.await {
            Ok(Ok(id)) => Ok(id),
            Ok(Err((kind, why))) => Err(self.fail(kind, &why)),
            Err(e) => Err(self.fail(FailureKind::Internal, &format!("the request task failed: {e}"))),
        }
    }

    /// Polls the job's status until it ends; passes on progress meanwhile.
    async fn follow(&self, id: &str) -> ProviderEvent {
        let config = &self.ep.config;
        let gate = &self.ep.gate;
        let sent = Instant::now();
        let mut waiting = Some(gate.waiting());
        let mut told = gate.warmth() == Warmth::Cold;
        if told {
            self.send(ProviderEvent::Waiting {
                message: waiting_message(),
            });
        }
        let mut started = false;
        let mut last_progress = None;
        let mut last_answer = Instant::now();
        let mut poll = tokio::time::interval(config.poll_interval);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            poll.tick().await;
            match self.status(id).await {
                Ok(status) => {
                    last_answer = Instant::now();
                    let state = status.state();
                    if matches!(state, State::InProgress | State::Completed) && !started {
                        started = true;
                        if let Some(w) = waiting.take() {
                            w.answered();
                        }
                        self.send(ProviderEvent::Started);
                    }
                    match state {
                        State::InQueue | State::Unknown(_) => {}
                        State::InProgress => {
                            if let Some((node, value, max)) = status.progress()
                                && last_progress != Some((value, max))
                            {
                                last_progress = Some((value, max));
                                self.send(ProviderEvent::Progress { node, value, max });
                            }
                        }
                        State::Completed => {
                            self.forget();
                            return self.deliver(&status.output).await;
                        }
                        State::Failed => {
                            self.forget();
                            let mut failure = status.failure();
                            failure.message = self.ep.redact(&failure.message);
                            failure.details =
                                serde_json::from_str(&self.ep.redact(&failure.details.to_string()))
                                    .unwrap_or(Value::Null);
                            if failure.kind.is_user_fault() {
                                if let Some(w) = waiting.take() {
                                    w.answered();
                                }
                            } else {
                                gate.failed(&failure.message);
                            }
                            return ProviderEvent::Failed(failure);
                        }
                        State::Cancelled => {
                            self.forget();
                            return self.fail(
                                FailureKind::ProviderError,
                                &format!(
                                    "RunPod cancelled job {id} (its queue was purged, or the job outlived \
                                     its time to live)"
                                ),
                            );
                        }
                        State::TimedOut => {
                            self.forget();
                            return self.fail(
                                FailureKind::ExecutionTimeout,
                                &format!("job {id} ran past the endpoint's execution timeout at RunPod"),
                            );
                        }
                    }
                }
                Err(Lost::Gone(why)) => {
                    self.forget();
                    return self.fail(FailureKind::ProviderError, &why);
                }
                Err(Lost::Maybe(why)) => {
                    tracing::debug!(job = %self.job, why = %self.ep.redact(&why), "status check failed; asking again");
                    if last_answer.elapsed() >= LOST_AFTER {
                        return self.fail(
                            FailureKind::ProviderUnavailable,
                            &format!("no status of job {id} for {} s: {why}", LOST_AFTER.as_secs()),
                        );
                    }
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
                    if let Some(Remote::Running(id)) = self.forget()
                        && let Err(why) = cancel_remote(&self.ep, &id).await
                    {
                        tracing::warn!(job = %self.job, "{why}");
                    }
                    return self.fail(
                        FailureKind::StartTimeout,
                        &format!(
                            "no worker took the job within the cold-start budget of {} s",
                            config.cold_start_timeout.as_secs()
                        ),
                    );
                }
            }
        }
    }

    /// `GET /status/<id>`.
    async fn status(&self, id: &str) -> Result<JobStatus, Lost> {
        let url = self.ep.url(&format!("status/{id}")).map_err(Lost::Gone)?;
        let answer = self
            .ep
            .http
            .get(url)
            .timeout(self.ep.config.request_timeout)
            .send()
            .await
            .map_err(|e| Lost::Maybe(crate::serverless::unreachable(&self.ep.api, &e).to_string()))?;
        let code = answer.status();
        let body = answer.bytes().await.map_err(|e| Lost::Maybe(e.to_string()))?;
        if code.as_u16() == 404 {
            return Err(Lost::Gone(format!(
                "RunPod no longer knows job {id}: {}",
                body_detail(&body)
            )));
        }
        if !code.is_success() {
            return Err(Lost::Maybe(format!(
                "status answered HTTP {}: {}",
                code.as_u16(),
                body_detail(&body)
            )));
        }
        serde_json::from_slice(&body)
            .map_err(|e| Lost::Maybe(format!("status answered something else than a job ({e})")))
    }

    /// The worker's output, as artifacts in the owner's space and `executed` per save node.
    async fn deliver(&self, output: &Value) -> ProviderEvent {
        let outputs = match read_output(output, &self.saves) {
            Ok(o) => o,
            Err(why) => return self.fail(FailureKind::ProviderError, &why),
        };
        for warning in &outputs.warnings {
            tracing::warn!(job = %self.job, endpoint = %self.ep.config.name, "the worker warns: {}", self.ep.redact(warning));
        }
        let mut by_node: BTreeMap<String, (String, Vec<Value>)> = BTreeMap::new();
        for file in outputs.files {
            let data = match file.source {
                Source::Inline(data) => data,
                Source::Url(url) => match self.download(&url).await {
                    Ok(data) => data,
                    Err(why) => return self.fail(FailureKind::ProviderError, &why),
                },
            };
            if let Some(node) = &file.node {
                by_node
                    .entry(node.clone())
                    .or_insert_with(|| (file.media.clone(), Vec::new()))
                    .1
                    .push(json!({"filename": file.filename, "subfolder": file.subfolder, "type": "output"}));
            }
            self.send(ProviderEvent::Artifact(Artifact {
                node_id: file.node,
                media: file.media,
                filename: file.filename,
                subfolder: file.subfolder,
                kind: OutputKind::Output,
                data: data.into(),
            }));
        }
        for (node, (media, files)) in by_node {
            self.send(ProviderEvent::Executed {
                node,
                output: json!({ media: files }),
            });
        }
        ProviderEvent::Completed
    }

    /// An output the worker uploaded to a bucket (without the API key: the URL is its own credential).
    async fn download(&self, url: &str) -> Result<Vec<u8>, String> {
        let parsed = reqwest::Url::parse(url).map_err(|e| format!("the output URL is not a URL: {e}"))?;
        let shown = crate::serverless::without_query(&parsed);
        let answer = self
            .ep
            .downloads
            .get(parsed.clone())
            .send()
            .await
            .map_err(|e| crate::serverless::unreachable(&parsed, &e).to_string())?;
        let code = answer.status();
        let body = answer
            .bytes()
            .await
            .map_err(|e| format!("reading {shown}: {}", e.without_url()))?;
        if !code.is_success() {
            return Err(format!(
                "downloading {shown} answered HTTP {}: {}",
                code.as_u16(),
                body_detail(&body)
            ));
        }
        Ok(body.to_vec())
    }
}

/// A status check that failed.
enum Lost {
    /// RunPod does not know the job (any more).
    Gone(String),
    /// No answer, or not a useful one: ask again.
    Maybe(String),
}

/// `POST /run`: the RunPod job's id, or the failure's kind and reason.
async fn post_run(ep: &Endpoint, body: Vec<u8>) -> Result<String, (FailureKind, String)> {
    let url = ep.url("run").map_err(|why| (FailureKind::ProviderError, why))?;
    let answer = ep
        .http
        .post(url.clone())
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .timeout(ep.config.request_timeout)
        .body(body)
        .send()
        .await
        .map_err(|e| {
            (
                FailureKind::ProviderUnavailable,
                crate::serverless::unreachable(&url, &e).to_string(),
            )
        })?;
    let code = answer.status();
    let body = answer.bytes().await.map_err(|e| {
        (
            FailureKind::ProviderUnavailable,
            format!("reading the answer to POST /run: {}", e.without_url()),
        )
    })?;
    if !code.is_success() {
        let kind = match code.as_u16() {
            401 | 403 | 429 | 500..=599 => FailureKind::ProviderUnavailable,
            _ => FailureKind::ProviderError,
        };
        let hint = match code.as_u16() {
            401 | 403 => " (check the API key)",
            404 => " (check the endpoint id)",
            _ => "",
        };
        return Err((
            kind,
            format!(
                "POST {} answered HTTP {}{hint}: {}",
                url.path(),
                code.as_u16(),
                body_detail(&body)
            ),
        ));
    }
    let status: JobStatus = serde_json::from_slice(&body).unwrap_or_default();
    if status.id.is_empty() {
        return Err((
            FailureKind::ProviderError,
            format!(
                "RunPod accepted the job without an id: {}",
                quote(&serde_json::from_slice(&body).unwrap_or(Value::Null))
            ),
        ));
    }
    Ok(status.id)
}
