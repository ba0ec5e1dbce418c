//! One simulated participant: holds an event WebSocket open, submits jobs over the REST API, and follows
//! them to their end from the live events — reconnecting when the server goes away — then asks the
//! server about any job whose end it did not see.

use std::collections::HashMap;
use std::time::Duration;

use comfyume_cli::client::{Client, EventStream, StreamItem};
use comfyume_core::{EventKind, JobId};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::now_ms;
use super::stats::JobRecord;

/// What one user did.
#[derive(Debug, Default)]
pub struct UserOutcome {
    /// Every accepted job.
    pub jobs: Vec<JobRecord>,
    /// Why submissions were refused.
    pub refused: Vec<String>,
    /// Times the event stream had to be opened again.
    pub reconnects: u32,
}

/// The job a load test submits: a small image made and saved, its colour varying by job so no
/// cache on the worker can skip it.
pub fn workflow(user: usize, n: usize) -> Value {
    json!({
        "1": {"class_type": "EmptyImage",
              "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": (user * 7919 + n) % 0xFF_FFFF}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "loadtest/job"}}
    })
}

/// When each of the user's submissions happen.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Bursts: (time after the start, jobs submitted back to back then).
    pub bursts: Vec<(Duration, usize)>,
    /// How long to wait, after the last submit, for every job to end.
    pub settle: Duration,
}

fn record_event(records: &mut HashMap<JobId, JobRecord>, user: usize, event: &comfyume_core::JobEvent) {
    let record = records.entry(event.job_id).or_insert_with(|| JobRecord {
        user,
        id: event.job_id.to_string(),
        ..JobRecord::default()
    });
    let at = event.at.0;
    match &event.kind {
        EventKind::Queued { reason: None } => {
            record.created_ms.get_or_insert(at);
        }
        EventKind::Started => {
            record.starts += 1;
            record.started_ms = Some(at);
        }
        EventKind::Retrying { .. } => record.retries += 1,
        EventKind::Succeeded { .. } => finish(record, "succeeded", None, at),
        EventKind::Failed { failure } => {
            finish(record, "failed", Some(failure.to_string()), at);
        }
        EventKind::Cancelled { reason } => finish(record, "cancelled", Some(reason.clone()), at),
        _ => {}
    }
}

fn finish(record: &mut JobRecord, state: &str, reason: Option<String>, at: u64) {
    if record.state.is_none() {
        record.state = Some(state.to_string());
        record.reason = reason;
        record.ended_ms = Some(at);
        record.seen_end_ms = Some(now_ms());
    }
}

/// Fills what the events did not tell from the job as the server stores it.
async fn reconcile(client: &Client, record: &mut JobRecord) {
    let Ok(id) = record.id.parse::<uuid::Uuid>() else {
        return;
    };
    let Ok(view) = client.job(JobId(id)).await else {
        return;
    };
    record.created_ms = record.created_ms.or(Some(view.timings.created_at));
    if record.started_ms.is_none() {
        record.started_ms = view.timings.started_at;
    }
    if view.is_terminal() && record.state.is_none() {
        let reason = view
            .failure
            .as_ref()
            .map(ToString::to_string)
            .or(view.cancel_reason.clone());
        record.state = Some(view.state.clone());
        record.reason = reason;
        record.ended_ms = view.timings.finished_at;
        record.seen_end_ms = Some(now_ms());
    }
}

/// Asks the server, as the job's owner, for a job that failed or was cancelled, and records whether it
/// shows that state with a reason a person can act on.
async fn check_reason_shown(client: &Client, record: &mut JobRecord) {
    if !matches!(record.state.as_deref(), Some("failed" | "cancelled")) {
        return;
    }
    let Ok(id) = record.id.parse::<uuid::Uuid>() else {
        record.reason_shown = Some(false);
        return;
    };
    let mut shown = false;
    for attempt in 0..5 {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let Ok(view) = client.job(JobId(id)).await else {
            continue;
        };
        let reason = match view.state.as_str() {
            "failed" => view.failure.as_ref().map(|f| f.message.clone()),
            "cancelled" => view.cancel_reason.clone(),
            _ => None,
        };
        shown = reason.is_some_and(|r| !r.trim().is_empty());
        break;
    }
    record.reason_shown = Some(shown);
}

async fn connect(client: &Client, until: Instant) -> Option<EventStream> {
    let mut backoff = Duration::from_millis(50);
    while Instant::now() < until {
        if let Ok(stream) = client.events("").await {
            return Some(stream);
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
    None
}

/// Submits the plan's jobs, in bursts, sending each accepted job's record (with its submit time) or the
/// refusal on `accepted`.
async fn submitter(
    client: Client,
    user: usize,
    plan: Plan,
    start: Instant,
    accepted: mpsc::Sender<Result<JobRecord, String>>,
) {
    let mut n = 0;
    for (at, count) in plan.bursts {
        tokio::time::sleep_until(start + at).await;
        for _ in 0..count {
            let submitted_ms = now_ms();
            let answer = submit_retrying(&client, &workflow(user, n)).await;
            n += 1;
            let sent = match answer {
                Ok(id) => {
                    accepted
                        .send(Ok(JobRecord {
                            user,
                            id,
                            submitted_ms,
                            ..JobRecord::default()
                        }))
                        .await
                }
                Err(reason) => accepted.send(Err(reason)).await,
            };
            if sent.is_err() {
                return;
            }
        }
    }
}

/// Submits, trying again for a while when the server cannot be reached (it may be restarting). A refusal
/// is final. The job id is chosen here, so a submit whose answer was lost is simply sent again: the
/// server keeps one job per id.
async fn submit_retrying(client: &Client, workflow: &Value) -> Result<String, String> {
    let id = JobId(uuid::Uuid::new_v4());
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        match client.submit_with_id(id, workflow).await {
            Ok(job) => return Ok(job.id.to_string()),
            Err(e @ comfyume_cli::client::ClientError::Connect { .. }) if Instant::now() < deadline => {
                tracing::debug!(error = %e, "submit: server unreachable, trying again");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(comfyume_cli::client::ClientError::Protocol(e)) if Instant::now() < deadline => {
                tracing::debug!(error = %e, "submit: connection broke, trying again");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// Runs one user's plan to its end.
pub async fn run(client: Client, user: usize, plan: Plan, start: Instant) -> UserOutcome {
    let mut outcome = UserOutcome::default();
    let expected: usize = plan.bursts.iter().map(|(_, n)| n).sum();
    let last_burst = plan.bursts.iter().map(|(at, _)| *at).max().unwrap_or_default();
    let give_up = start + last_burst + plan.settle;
    let mut records: HashMap<JobId, JobRecord> = HashMap::new();
    let mut submitted: Vec<JobId> = Vec::new();
    let mut answered = 0usize;
    let mut stream = connect(&client, give_up).await;
    let (tx, mut rx) = mpsc::channel(64);
    tokio::spawn(submitter(client.clone(), user, plan, start, tx));
    loop {
        let all_answered = answered == expected;
        let open = submitted
            .iter()
            .filter(|id| records.get(id).is_none_or(|r| r.state.is_none()))
            .count();
        if all_answered && open == 0 {
            break;
        }
        if Instant::now() >= give_up {
            break;
        }
        let Some(events) = stream.as_mut() else {
            // The server went away: open the stream again, then ask about every job still open.
            outcome.reconnects += 1;
            stream = connect(&client, give_up).await;
            for id in &submitted {
                if let Some(r) = records.get_mut(id)
                    && r.state.is_none()
                {
                    reconcile(&client, r).await;
                }
            }
            continue;
        };
        tokio::select! {
            item = events.next() => match item {
                Ok(Some(StreamItem::Event(event))) => record_event(&mut records, user, &event),
                Ok(Some(StreamItem::Lagged(_))) => {
                    for id in &submitted {
                        if let Some(r) = records.get_mut(id) && r.state.is_none() {
                            reconcile(&client, r).await;
                        }
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => stream = None,
            },
            accepted = rx.recv(), if !all_answered => match accepted {
                Some(Ok(job)) => {
                    answered += 1;
                    let Ok(id) = job.id.parse::<uuid::Uuid>() else { continue };
                    let id = JobId(id);
                    let record = records.entry(id).or_insert_with(|| JobRecord { user, id: job.id.clone(), ..JobRecord::default() });
                    record.submitted_ms = job.submitted_ms;
                    submitted.push(id);
                }
                Some(Err(reason)) => {
                    answered += 1;
                    outcome.refused.push(reason);
                }
                None => answered = expected,
            },
            _ = tokio::time::sleep_until(give_up) => {}
        }
    }
    if let Some(events) = stream {
        events.close().await;
    }
    for id in &submitted {
        if let Some(mut record) = records.remove(id) {
            if record.state.is_none() || record.started_ms.is_none() || record.created_ms.is_none() {
                reconcile(&client, &mut record).await;
            }
            check_reason_shown(&client, &mut record).await;
            outcome.jobs.push(record);
        }
    }
    outcome
}
