//! One attempt of one job on one provider, from lease to a recorded result.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use super::{Inner, Running, lock};
use crate::error::Error;
use crate::event::EventKind;
use crate::job::{Failure, FailureKind, Job, JobId, Timestamp};
use crate::provider::{InferenceProvider, ProviderError, ProviderEvent, ProviderEventStream};
use crate::sink::OutputRef;
use crate::store::{Lease, LeaseStatus};

/// How an attempt ended, before it is recorded.
enum Outcome {
    Succeeded(Vec<OutputRef>),
    Failed(Failure),
    Cancelled,
    /// The lease moved on (reaped or taken over): someone else owns the job now; record nothing.
    LeaseLost,
    /// The server is shutting down: hand the job back to the queue.
    HandedBack,
}

pub(super) struct JobRun {
    inner: Arc<Inner>,
    job: Job,
    lease: Lease,
    provider_index: usize,
    provider: Arc<dyn InferenceProvider>,
    cancel: CancellationToken,
    lost: CancellationToken,
    reason: Arc<Mutex<String>>,
    /// When the lease lapses, as last renewed (ms).
    expires_at: Arc<AtomicU64>,
    started_at: Option<Instant>,
}

impl JobRun {
    pub(super) fn new(
        inner: Arc<Inner>,
        job: Job,
        lease: Lease,
        provider_index: usize,
        running: &Running,
    ) -> Self {
        let provider = Arc::clone(&inner.providers[provider_index].provider);
        Self {
            inner,
            job,
            lease,
            provider_index,
            provider,
            cancel: running.cancel.clone(),
            lost: running.lost.clone(),
            reason: Arc::clone(&running.reason),
            expires_at: Arc::clone(&running.expires_at),
            started_at: None,
        }
    }

    pub(super) fn job_id(&self) -> JobId {
        self.job.id
    }

    pub(super) async fn execute(mut self) {
        let _heartbeat = AbortOnDropHandle::new(tokio::spawn(heartbeat_loop(
            Arc::clone(&self.inner),
            self.lease.clone(),
            Arc::clone(&self.expires_at),
            self.cancel.clone(),
            self.lost.clone(),
        )));
        let outcome = self.drive().await;
        self.finish(outcome).await;
    }

    fn publish(&self, kind: EventKind) {
        self.inner.publish(&self.job, kind);
    }

    /// Runs the attempt until the provider reports an end, a deadline passes, or it is cancelled.
    async fn drive(&mut self) -> Outcome {
        let config = &self.inner.config;
        self.publish(EventKind::Dispatched {
            provider: self.provider.name().to_string(),
            attempt: self.job.attempts,
        });
        if self.job.attempts > 1 {
            // Outputs of an earlier, failed attempt must not mix with this one's.
            if let Err(e) = self.inner.sink.discard(&self.job.spec.owner, self.job.id).await {
                return Outcome::Failed(Failure::new(
                    FailureKind::Internal,
                    format!("clearing old outputs: {e}"),
                ));
            }
        }
        let mut deadline = Instant::now() + config.start_timeout;
        let submitted = tokio::select! {
            r = tokio::time::timeout_at(deadline, self.start_attempt()) => r,
            _ = self.cancel.cancelled() => return self.stop(Outcome::Cancelled).await,
            _ = self.lost.cancelled() => return self.stop(Outcome::LeaseLost).await,
            _ = self.inner.hand_back.cancelled() => return self.stop(Outcome::HandedBack).await,
        };
        let mut stream = match submitted {
            Err(_) => return self.stop(Outcome::Failed(self.timeout_failure())).await,
            Ok(Err(e)) => return Outcome::Failed(e.into_failure()),
            Ok(Ok(stream)) => stream,
        };
        let mut outputs = Vec::new();
        loop {
            let event = tokio::select! {
                biased;
                _ = self.cancel.cancelled() => return self.stop(Outcome::Cancelled).await,
                _ = self.lost.cancelled() => return self.stop(Outcome::LeaseLost).await,
                _ = self.inner.hand_back.cancelled() => return self.stop(Outcome::HandedBack).await,
                _ = tokio::time::sleep_until(deadline) => {
                    return self.stop(Outcome::Failed(self.timeout_failure())).await;
                }
                event = stream.next() => event,
            };
            let Some(event) = event else {
                let message = format!(
                    "provider '{}' ended the job without a result",
                    self.provider.name()
                );
                return Outcome::Failed(Failure::new(FailureKind::ProviderError, message));
            };
            match event {
                ProviderEvent::Started => {
                    if self.started_at.is_none() {
                        self.started_at = Some(Instant::now());
                        deadline = Instant::now() + self.inner.config.execution_timeout;
                        match self
                            .inner
                            .store
                            .mark_running(&self.lease, self.inner.clock.now())
                            .await
                        {
                            Ok(_) => {}
                            Err(Error::StaleLease(_)) => return self.stop(Outcome::LeaseLost).await,
                            Err(e) => {
                                tracing::warn!(job = %self.job.id, error = %e, "could not record start")
                            }
                        }
                        self.publish(EventKind::Started);
                    }
                }
                ProviderEvent::Artifact(artifact) => {
                    match self
                        .inner
                        .sink
                        .store(&self.job.spec.owner, self.job.id, artifact)
                        .await
                    {
                        Ok(output) => {
                            self.publish(EventKind::Output {
                                output: output.clone(),
                            });
                            outputs.push(output);
                        }
                        // A full disk stays full: the job ends now, saying where to free space.
                        Err(e @ Error::StorageFull { .. }) => {
                            let failure = Failure::new(FailureKind::StorageFull, e.to_string());
                            return self.stop(Outcome::Failed(failure)).await;
                        }
                        Err(e) => {
                            let failure =
                                Failure::new(FailureKind::Internal, format!("storing an output: {e}"));
                            return self.stop(Outcome::Failed(failure)).await;
                        }
                    }
                }
                ProviderEvent::Value { node, media, value } => {
                    let owner = self.job.spec.owner.clone();
                    let output = OutputRef::from_value(owner, self.job.id, node, media, value);
                    // A node reporting the same key again (a re-check of the provider's history)
                    // replaces its earlier value instead of adding a second one.
                    outputs.retain(|o: &OutputRef| {
                        !(o.is_value() && o.node_id == output.node_id && o.media == output.media)
                    });
                    self.publish(EventKind::Output {
                        output: output.clone(),
                    });
                    outputs.push(output);
                }
                ProviderEvent::Completed => return Outcome::Succeeded(outputs),
                ProviderEvent::Failed(failure) => return Outcome::Failed(failure),
                ProviderEvent::Waiting { message } => self.publish(EventKind::Waiting { message }),
                ProviderEvent::Executing { node } => self.publish(EventKind::Executing { node }),
                ProviderEvent::Cached { nodes } => self.publish(EventKind::Cached { nodes }),
                ProviderEvent::Progress { node, value, max } => {
                    self.publish(EventKind::Progress { node, value, max })
                }
                ProviderEvent::Executed { node, output } => {
                    self.publish(EventKind::Executed { node, output })
                }
                ProviderEvent::Preview { content_type, data } => {
                    self.publish(EventKind::Preview { content_type, data })
                }
                ProviderEvent::Other { kind, data } => self.publish(EventKind::Other { kind, data }),
            }
        }
    }

    /// Submits the job, unless its previous attempt was lost on this very provider and the provider
    /// still has it: then that attempt is followed (or its result collected) instead, so the job does
    /// not run twice. A lost attempt on another provider is stopped there first.
    async fn start_attempt(&self) -> Result<ProviderEventStream, ProviderError> {
        if let Some(held_by) = self.inner.lost.take(self.job.id) {
            if held_by == self.provider.name() {
                match self.provider.reattach(&self.job).await {
                    Ok(Some(stream)) => {
                        tracing::info!(job = %self.job.id, provider = %held_by, "re-attached to the attempt that was running when the server stopped");
                        return Ok(stream);
                    }
                    Ok(None) => {}
                    Err(e) => {
                        self.inner.lost.put_back(self.job.id, held_by);
                        return Err(e);
                    }
                }
            } else if let Some(other) = self.inner.provider_named(&held_by)
                && let Err(e) = other.cancel(self.job.id).await
            {
                tracing::warn!(job = %self.job.id, provider = %held_by, error = %e, "could not stop the lost attempt");
            }
        }
        self.provider.submit(&self.job).await
    }

    fn timeout_failure(&self) -> Failure {
        let config = &self.inner.config;
        match self.started_at {
            None => Failure::new(
                FailureKind::StartTimeout,
                format!(
                    "provider '{}' did not start the job within {} s",
                    self.provider.name(),
                    config.start_timeout.as_secs()
                ),
            ),
            Some(_) => Failure::new(
                FailureKind::ExecutionTimeout,
                format!(
                    "the job ran longer than the limit of {} s",
                    config.execution_timeout.as_secs()
                ),
            ),
        }
    }

    /// Tells the provider to stop the job, then passes the outcome on.
    async fn stop(&self, outcome: Outcome) -> Outcome {
        if let Err(e) = self.provider.cancel(self.job.id).await {
            tracing::warn!(job = %self.job.id, error = %e, "provider could not stop the job");
        }
        outcome
    }

    /// Records the outcome in the store, publishes it, and frees the slot.
    async fn finish(self, outcome: Outcome) {
        let inner = &self.inner;
        let now = inner.clock.now();
        let id = self.job.id;
        // A failure reported after we asked the provider to stop is the cancellation itself.
        let outcome = match outcome {
            Outcome::Failed(_) if self.cancel.is_cancelled() => Outcome::Cancelled,
            other => other,
        };
        let mut retry_at: Option<Timestamp> = None;
        let mut requeue_now = false;
        let lease_lost = matches!(outcome, Outcome::LeaseLost);
        let recorded = match outcome {
            Outcome::Succeeded(outputs) => {
                inner
                    .store
                    .complete(&self.lease, outputs.clone(), now)
                    .await
                    .map(|job| {
                        inner.publish(&job, EventKind::Succeeded { outputs });
                    })
            }
            Outcome::Cancelled => {
                let reason = lock(&self.reason).clone();
                inner
                    .store
                    .finish_cancelled(&self.lease, &reason, now)
                    .await
                    .map(|job| {
                        inner.publish(&job, EventKind::Cancelled { reason });
                    })
            }
            Outcome::Failed(failure)
                if failure.kind.is_retryable() && self.job.attempts < inner.config.max_attempts =>
            {
                let delay = inner.config.backoff(self.job.attempts);
                let at = now.plus(delay);
                tracing::warn!(job = %id, attempt = self.job.attempts, reason = %failure, ?delay, "attempt failed; retrying");
                inner
                    .store
                    .fail(&self.lease, failure.clone(), Some(at), now)
                    .await
                    .map(|job| {
                        retry_at = Some(at);
                        let delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
                        inner.publish(
                            &job,
                            EventKind::Retrying {
                                attempt: self.job.attempts,
                                delay_ms,
                                failure,
                            },
                        );
                    })
            }
            Outcome::Failed(mut failure) => {
                if failure.kind.is_retryable() {
                    failure.message = format!(
                        "gave up after {} attempts: {}",
                        self.job.attempts, failure.message
                    );
                }
                tracing::info!(job = %id, reason = %failure, "job failed");
                inner
                    .store
                    .fail(&self.lease, failure.clone(), None, now)
                    .await
                    .map(|job| {
                        inner.publish(&job, EventKind::Failed { failure });
                    })
            }
            Outcome::HandedBack => inner.store.release(&self.lease, now).await.map(|job| {
                inner.publish(
                    &job,
                    EventKind::Queued {
                        reason: Some("handed back at server shutdown".into()),
                    },
                );
            }),
            Outcome::LeaseLost => {
                requeue_now = true;
                Ok(())
            }
        };
        match recorded {
            // Recorded: what the provider still keeps of this attempt can go (never before: a crash
            // between the two must find the attempt's result still on the provider).
            Ok(()) if !lease_lost => {
                let provider = Arc::clone(&self.provider);
                inner.tasks.spawn(async move { provider.cleanup(id).await });
            }
            Ok(()) => {}
            Err(Error::StaleLease(_)) => {
                tracing::warn!(job = %id, "lease was lost before the result was recorded; the job runs again");
                requeue_now = true;
            }
            Err(e) => {
                tracing::error!(job = %id, error = %e, "recording the result failed; the lease will expire and the job runs again")
            }
        }
        // Charge the owner for the GPU time really used when the job came with a GPU-seconds estimate.
        let actual = match (self.job.spec.cost, self.started_at) {
            (Some(_), Some(t)) => Some(t.elapsed().as_secs_f64()),
            (Some(_), None) => Some(0.0),
            (None, _) => None,
        };
        inner.release_slot(id, self.provider_index, actual);
        if let Some(at) = retry_at {
            inner.requeue_at(id, at);
        }
        if requeue_now {
            // The reaper put the job back in the store's queue while this run still held it here.
            if let Ok(Some(job)) = inner.store.get(id).await
                && job.state == crate::job::JobState::Queued
            {
                inner.restore(&job);
            }
        }
    }
}

/// Renews the lease until the run ends (the task is aborted then); flags cancellation requested elsewhere
/// and notices a lost lease.
async fn heartbeat_loop(
    inner: Arc<Inner>,
    lease: Lease,
    expires_at: Arc<AtomicU64>,
    cancel: CancellationToken,
    lost: CancellationToken,
) {
    let mut tick = tokio::time::interval(inner.config.heartbeat_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let renewed = inner
            .store
            .heartbeat(&lease, inner.config.lease_ttl, inner.clock.now())
            .await;
        if heard(renewed, &lease, &expires_at, &cancel, &lost) {
            return;
        }
    }
}

/// Acts on the answer to a lease renewal: notes the new expiry, flags a cancellation asked for elsewhere,
/// and cancels `lost` when the lease is gone. True when it is gone (renewing it again is pointless).
pub(super) fn heard(
    renewed: crate::Result<LeaseStatus>,
    lease: &Lease,
    expires_at: &AtomicU64,
    cancel: &CancellationToken,
    lost: &CancellationToken,
) -> bool {
    match renewed {
        Ok(status) => {
            expires_at.fetch_max(status.expires_at.0, Ordering::SeqCst);
            if status.cancel_requested {
                cancel.cancel();
            }
            false
        }
        Err(Error::StaleLease(_) | Error::NotFound(_) | Error::WrongState { .. }) => {
            lost.cancel();
            true
        }
        Err(e) => {
            tracing::warn!(job = %lease.job_id, error = %e, "heartbeat failed; will try again");
            false
        }
    }
}
