//! One job in shared-directory mode (see the module docs of [`super`]).

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use comfyume_core::{
    Artifact, Failure, FailureKind, Job, JobId, OutputKind, ProviderError, ProviderEvent, ProviderEventStream,
};
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::task::AbortOnDropHandle;

use super::scan::{FoundFile, ScanReport};
use super::{Deployment, waiting_message};
use crate::comfyui::{job_prefix, mark_outputs, plan_outputs, rewrite_workflow};
use crate::error::Error;
use crate::protocol::{PromptRequest, ServerMessage, node_error_failure, validation_failure};
use crate::serverless::saves::{SaveNode as Expected, media_of, save_nodes as expected_files};

pub(super) async fn submit(dep: Arc<Deployment>, job: &Job) -> Result<ProviderEventStream, ProviderError> {
    let config = &dep.config;
    let mut workflow = rewrite_workflow(&job.spec.workflow, job.id, &config.extra_prefix_classes)
        .map_err(|f| ProviderError::Rejected(*f))?;
    mark_outputs(
        &mut workflow,
        &format!("{}/{}", job.id, job.attempts),
        &config.extra_prefix_classes,
        false,
    );
    let expected = expected_files(&workflow, job.id);
    let Some(scanner) = dep.scanner.clone() else {
        return Err(ProviderError::Protocol("not in shared-directory mode".into()));
    };
    // Files an earlier attempt left would be taken for this one's.
    let dir = scanner.job_dir(job.id);
    match tokio::fs::remove_dir_all(&dir).await {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(ProviderError::Unavailable(format!(
                "cannot clear {} in the shared output directory: {e}",
                dir.display()
            )));
        }
    }
    let reports = scanner.watch(job.id);
    let (tx, rx) = mpsc::unbounded_channel();
    let run = Run {
        scanner,
        dep: Arc::clone(&dep),
        job: job.id,
        extra_data: job.spec.extra_data.clone(),
        workflow,
        expected,
        tx,
    };
    let task = AbortOnDropHandle::new(tokio::spawn(run.drive(reports)));
    Ok(futures::stream::unfold((rx, task), |(mut rx, task)| async move {
        let event = rx.recv().await?;
        Some((event, (rx, task)))
    })
    .boxed())
}

pub(super) async fn cancel(dep: &Deployment, job: JobId) -> Result<(), ProviderError> {
    let id = job.to_string();
    let mut problems = Vec::new();
    // Each request reaches some replica; one per replica gives every replica its chance.
    for _ in 0..dep.config.max_replicas {
        let deleted = dep.client.delete_queued(&[&id]).await;
        let interrupted = dep.client.interrupt(Some(&id)).await;
        if let (Err(e), _) | (_, Err(e)) = (deleted, interrupted) {
            problems.push(dep.redact(&e.to_string()));
        }
    }
    if problems.len() == dep.config.max_replicas && !problems.is_empty() {
        return Err(ProviderError::Unavailable(problems.join("; ")));
    }
    Ok(())
}

struct Run {
    scanner: Arc<super::Scanner>,
    dep: Arc<Deployment>,
    job: JobId,
    extra_data: Value,
    workflow: Value,
    expected: Vec<Expected>,
    tx: mpsc::UnboundedSender<ProviderEvent>,
}

/// A job's output files (subfolder, name) and its node outputs, as its history entry lists them.
type Listed = (Vec<(String, String)>, BTreeMap<String, Value>);

/// What a look at `/history` told.
enum Told {
    Nothing,
    /// It ended well: these files (subfolder, name) are its outputs; these are its other results.
    Succeeded {
        files: Vec<(String, String)>,
        outputs: BTreeMap<String, Value>,
    },
    Failed(Failure),
}

impl Run {
    fn send(&self, event: ProviderEvent) {
        let _ = self.tx.send(event);
    }

    async fn drive(self, reports: mpsc::UnboundedReceiver<ScanReport>) {
        let end = match self.post().await {
            Ok(()) => {
                self.send(ProviderEvent::Started);
                self.follow(reports).await
            }
            Err(failure) => ProviderEvent::Failed(failure),
        };
        self.scanner.unwatch(self.job);
        self.send(end);
    }

    /// `POST /prompt`, waiting out a cold start within its budget.
    async fn post(&self) -> Result<(), Failure> {
        let config = &self.dep.config;
        let gate = &self.dep.gate;
        let prompt_id = self.job.to_string();
        let extra_data = self.extra_data.is_object().then_some(&self.extra_data);
        let request = PromptRequest {
            prompt: &self.workflow,
            client_id: None,
            prompt_id: Some(&prompt_id),
            extra_data,
        };
        let cold = gate.warmth() == comfyume_core::Warmth::Cold;
        if cold {
            self.send(ProviderEvent::Waiting {
                message: waiting_message(),
            });
        }
        let waiting = gate.waiting();
        let submit = self.dep.client.submit(&request);
        tokio::pin!(submit);
        let budget = tokio::time::sleep(config.cold_start_timeout);
        tokio::pin!(budget);
        let notice = tokio::time::sleep(config.waiting_after);
        tokio::pin!(notice);
        let mut told = cold;
        let answer = loop {
            tokio::select! {
                answer = &mut submit => break answer,
                _ = &mut notice, if !told => {
                    told = true;
                    self.send(ProviderEvent::Waiting { message: waiting_message() });
                }
                _ = &mut budget => {
                    let why = format!(
                        "no replica of '{}' answered within the cold-start budget of {} s",
                        config.name,
                        config.cold_start_timeout.as_secs()
                    );
                    gate.failed(&why);
                    return Err(Failure::new(FailureKind::StartTimeout, why));
                }
            }
        };
        match answer {
            Ok(_) => {
                waiting.answered();
                Ok(())
            }
            Err(Error::Rejected(body)) => {
                waiting.answered();
                Err(self.dep.redact_failure(validation_failure(body)))
            }
            Err(e) => {
                let why = self.dep.redact(&format!("deployment '{}': {e}", config.name));
                gate.failed(&why);
                let kind = if e.is_retryable() {
                    FailureKind::ProviderUnavailable
                } else {
                    FailureKind::ProviderError
                };
                Err(Failure::new(kind, why))
            }
        }
    }

    /// Hands over complete files until the job is complete (or a history entry says how it ended).
    async fn follow(&self, mut reports: mpsc::UnboundedReceiver<ScanReport>) -> ProviderEvent {
        let settle = self.scanner.settle();
        let poll = match &self.dep.config.mode {
            super::VerdaMode::SharedDir(s) => s.history_poll,
            _ => None,
        };
        let mut next_poll = poll.map(|p| Instant::now() + p);
        let mut delivered: Vec<(Option<String>, FoundFile)> = Vec::new();
        let mut names: HashSet<(String, String)> = HashSet::new();
        let mut exact: Option<Listed> = None;
        loop {
            let poll_at = next_poll.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            let report = tokio::select! {
                report = reports.recv() => match report {
                    Some(r) => r,
                    None => return self.lost("the shared-directory scanner stopped"),
                },
                _ = tokio::time::sleep_until(poll_at), if next_poll.is_some() => {
                    next_poll = poll.map(|p| Instant::now() + p);
                    match self.ask_history().await {
                        Told::Nothing => {}
                        Told::Failed(failure) => return ProviderEvent::Failed(failure),
                        Told::Succeeded { files, outputs } => {
                            exact = Some((files, outputs));
                            next_poll = None;
                        }
                    }
                    continue;
                }
            };
            for file in report.complete {
                let node = self
                    .expected
                    .iter()
                    .find(|e| e.matches(&file.subfolder, &file.filename))
                    .map(|e| e.node.clone());
                let data = match tokio::fs::read(&file.path).await {
                    Ok(data) => data,
                    Err(e) => {
                        return self.lost(&format!("cannot read {}: {e}", file.path.display()));
                    }
                };
                self.send(ProviderEvent::Artifact(Artifact {
                    node_id: node.clone(),
                    media: media_of(&file.filename).to_string(),
                    filename: file.filename.clone(),
                    subfolder: file.subfolder.clone(),
                    kind: OutputKind::Output,
                    data: data.into(),
                }));
                names.insert((file.subfolder.clone(), file.filename.clone()));
                delivered.push((node, file));
            }
            let done = match &exact {
                Some((files, _)) => files.iter().all(|f| names.contains(f)),
                None => {
                    !self.expected.is_empty()
                        && report.incomplete == 0
                        && report.quiet_for >= settle
                        && self.expected.iter().all(|e| {
                            delivered
                                .iter()
                                .any(|(_, f)| e.matches(&f.subfolder, &f.filename))
                        })
                }
            };
            if done {
                self.report_executed(&delivered, exact.as_ref().map(|(_, o)| o));
                return ProviderEvent::Completed;
            }
        }
    }

    /// `executed` per node, as ComfyUI would have sent it (the job prefix stripped), and the results that
    /// are not files when the history told them.
    fn report_executed(
        &self,
        delivered: &[(Option<String>, FoundFile)],
        outputs: Option<&BTreeMap<String, Value>>,
    ) {
        if let Some(outputs) = outputs {
            let prefix = job_prefix(self.job);
            for (node, output) in outputs {
                let plan = plan_outputs(output, &prefix, false);
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
            return;
        }
        let mut by_node: BTreeMap<&str, Vec<Value>> = BTreeMap::new();
        for (node, file) in delivered {
            if let Some(node) = node {
                by_node.entry(node).or_default().push(json!({
                    "filename": file.filename,
                    "subfolder": file.subfolder,
                    "type": "output",
                }));
            }
        }
        for (node, files) in by_node {
            let media = files
                .first()
                .and_then(|f| f["filename"].as_str())
                .map(media_of)
                .unwrap_or("images");
            self.send(ProviderEvent::Executed {
                node: node.to_string(),
                output: json!({ media: files }),
            });
        }
    }

    /// `GET /history/<id>`: answered by whichever replica the load balancer picks, so usually empty.
    async fn ask_history(&self) -> Told {
        let id = self.job.to_string();
        let timeout = self.dep.config.request_timeout;
        let entry = match tokio::time::timeout(timeout, self.dep.client.history(&id)).await {
            Ok(Ok(Some(entry))) => entry,
            Ok(Ok(None)) | Err(_) => return Told::Nothing,
            Ok(Err(e)) => {
                let e = self.dep.redact(&e.to_string());
                tracing::debug!(job = %id, error = %e, "history check failed; the scan goes on");
                return Told::Nothing;
            }
        };
        self.dep.gate.answered();
        if entry.status.status_str == "success" {
            let prefix = job_prefix(self.job);
            let files = entry
                .outputs
                .values()
                .flat_map(|output| plan_outputs(output, &prefix, false).files)
                .filter(|f| f.kind == OutputKind::Output)
                .map(|f| (f.subfolder, f.remote.filename))
                .collect();
            return Told::Succeeded {
                files,
                outputs: entry.outputs,
            };
        }
        for m in entry.status.messages() {
            match m {
                ServerMessage::ExecutionError(ref e) => {
                    return Told::Failed(node_error_failure(e, m.data()));
                }
                ServerMessage::ExecutionInterrupted(_) => {
                    return Told::Failed(Failure::new(
                        FailureKind::ProviderError,
                        "the job was interrupted on the GPU",
                    ));
                }
                _ => {}
            }
        }
        Told::Nothing
    }

    fn lost(&self, why: &str) -> ProviderEvent {
        ProviderEvent::Failed(Failure::new(
            FailureKind::ProviderError,
            format!("deployment '{}': {why}", self.dep.config.name),
        ))
    }
}
