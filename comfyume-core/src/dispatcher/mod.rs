//! The engine: takes jobs from the [`JobStore`] in the order the [`Scheduler`] chooses and runs them on
//! [`InferenceProvider`]s, one lease at a time.
//!
//! What it guarantees:
//! - A provider receives a job only while it has a free slot ([`InferenceProvider::capacity`]), so the
//!   provider's own queue never reorders comfyume's, and waiting jobs stay cancellable.
//! - Every handed-out job is under a lease renewed by heartbeats; a crashed server's jobs return to the
//!   queue when their leases expire ([`JobStore::reap_expired`]), also at start-up.
//! - Timeouts for queue wait, start (including a serverless cold start) and execution.
//! - Infrastructure failures are retried with exponential backoff and full jitter up to
//!   [`DispatcherConfig::max_attempts`]; the user's own mistakes (invalid workflow, node error) never are.
//! - Queued and running jobs can be cancelled; every job ends in exactly one terminal state, and every
//!   state change is published on the [`EventBus`].
//!
//! Time comes from a [`Clock`] that follows tokio's clock, so all of this is tested under
//! `tokio::time::pause()` without sleeping.

mod admin;
#[cfg(test)]
mod check_tests;
#[cfg(test)]
mod clock_tests;
mod config;
mod recovery;
mod run;
mod shared;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{Notify, broadcast};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::DispatcherConfig;

use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::event::{EventBus, EventKind, JobEvent};
use crate::job::{Failure, FailureKind, Job, JobId, JobSpec, JobState, Timestamp};
use crate::provider::{Health, InferenceProvider, Warmth, WorkflowCheck};
use crate::scheduler::{JobKey, QueuedJob, Scheduler, SchedulerConfig};
use crate::sink::OutputSink;
use crate::store::{CancelOutcome, JobFilter, JobStore, Lease, ReapOutcome};

/// How often the dispatch loop looks again without being woken (provider capacity can change silently).
const IDLE_RECHECK: Duration = Duration::from_secs(1);

/// A provider as the admin page sees it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ProviderStatus {
    /// The provider's name.
    pub name: String,
    /// Its health at the last check.
    pub health: Health,
    /// Whether its GPUs are up (a serverless deployment may be cold or starting).
    pub warmth: Warmth,
    /// Slots it reports now.
    pub slots: usize,
    /// Jobs this dispatcher has running on it.
    pub in_flight: usize,
    /// True while an admin drains it (no new jobs).
    pub draining: bool,
}

/// The engine. Cheap to clone: every clone drives the same state.
#[derive(Clone)]
pub struct Dispatcher {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatcher")
            .field("holder", &self.inner.config.holder)
            .finish_non_exhaustive()
    }
}

struct ProviderSlot {
    provider: Arc<dyn InferenceProvider>,
    in_flight: AtomicUsize,
    draining: AtomicBool,
    health: Mutex<Health>,
}

/// A job this engine is running now.
struct Running {
    /// Cancelled when the job's cancellation is requested.
    cancel: CancellationToken,
    /// Cancelled when the lease is found to be lost (reaped, taken over).
    lost: CancellationToken,
    reason: Arc<Mutex<String>>,
    /// The run's lease, and when it lapses as last renewed (ms), for the reaper's own check.
    lease: Lease,
    expires_at: Arc<AtomicU64>,
}

struct Inner {
    store: Arc<dyn JobStore>,
    sink: Arc<dyn OutputSink>,
    providers: Vec<ProviderSlot>,
    /// The order providers are offered jobs in (indices into `providers`): the first with a free slot
    /// gets the next job. An admin changes it at run time ([`Dispatcher::set_provider_order`]).
    order: Mutex<Vec<usize>>,
    scheduler: Mutex<Scheduler>,
    running: Mutex<HashMap<JobId, Running>>,
    /// Jobs whose last attempt ended unrecorded (see [`recovery`]).
    lost: recovery::LostAttempts,
    bus: EventBus,
    clock: Clock,
    config: DispatcherConfig,
    wake: Notify,
    /// Stops the background loops (dispatch, reaper, health).
    stop: CancellationToken,
    /// Cancelled when the shutdown grace period is over: running jobs are handed back to the store.
    hand_back: CancellationToken,
    shutting_down: AtomicBool,
    started: AtomicBool,
    tasks: TaskTracker,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves plain data behind; carry on with it.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Dispatcher {
    /// Builds an engine. Nothing runs until [`Dispatcher::start`].
    pub fn new(
        store: Arc<dyn JobStore>,
        sink: Arc<dyn OutputSink>,
        providers: Vec<Arc<dyn InferenceProvider>>,
        scheduler: SchedulerConfig,
        config: DispatcherConfig,
    ) -> Self {
        let providers = providers
            .into_iter()
            .map(|provider| ProviderSlot {
                provider,
                in_flight: AtomicUsize::new(0),
                draining: AtomicBool::new(false),
                health: Mutex::new(Health::Healthy),
            })
            .collect::<Vec<_>>();
        let inner = Inner {
            store,
            sink,
            order: Mutex::new((0..providers.len()).collect()),
            providers,
            scheduler: Mutex::new(Scheduler::new(scheduler)),
            running: Mutex::new(HashMap::new()),
            lost: recovery::LostAttempts::default(),
            bus: EventBus::new(config.event_capacity),
            clock: config.clock_start.map_or_else(Clock::new, Clock::starting_at),
            config,
            wake: Notify::new(),
            stop: CancellationToken::new(),
            hand_back: CancellationToken::new(),
            shutting_down: AtomicBool::new(false),
            started: AtomicBool::new(false),
            tasks: TaskTracker::new(),
        };
        Self {
            inner: Arc::new(inner),
        }
    }

    /// Recovers what a previous run left (its own leases and expired ones back to the queue, queued jobs
    /// into the scheduler), checks provider health once, then starts the dispatch, reaper and health loops.
    /// Calling it twice does nothing the second time.
    pub async fn start(&self) -> Result<()> {
        if self.inner.started.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        let inner = &self.inner;
        // A previous run under this holder name (a restart after a crash) cannot still be working: its
        // jobs go back to the queue now instead of waiting out their leases.
        let (holder, now) = (&inner.config.holder, inner.clock.now());
        let own = inner
            .store
            .recover_holder(holder, now, inner.config.max_stalls)
            .await?;
        if !own.is_empty() {
            tracing::warn!(jobs = own.len(), %holder, "recovered the jobs this server held when it stopped");
        }
        inner.reaped(own);
        inner.reap().await?;
        let now = inner.clock.now();
        let queued = inner.store.queued().await?;
        let recovered = queued.len();
        // A retry waits out its backoff, but never longer than the longest backoff from now: a wall clock
        // set back while the server was down must not hold the job for the size of the jump.
        let latest = now.plus(inner.config.backoff_max);
        for job in queued {
            match job.not_before {
                Some(t) if t > now => inner.requeue_at(job.id, t.min(latest)),
                _ => inner.restore(&job),
            }
        }
        for (i, slot) in inner.providers.iter().enumerate() {
            let health = slot.provider.health().await;
            *lock(&slot.health) = health;
            inner.tasks.spawn(Arc::clone(inner).health_loop(i));
        }
        inner.tasks.spawn(Arc::clone(inner).dispatch_loop());
        inner.tasks.spawn(Arc::clone(inner).reaper_loop());
        if let Some(every) = inner.config.follow_shared_queue {
            inner.tasks.spawn(Arc::clone(inner).follow_loop(every));
        }
        tracing::info!(recovered, providers = inner.providers.len(), "dispatcher started");
        Ok(())
    }

    /// Stops taking jobs, lets running ones finish for up to `grace`, then hands the rest back to the store
    /// (queued again, the attempt not counted) so another server or the next start runs them.
    pub async fn shutdown(&self, grace: Duration) {
        let inner = &self.inner;
        inner.shutting_down.store(true, Ordering::SeqCst);
        inner.stop.cancel();
        inner.tasks.close();
        if tokio::time::timeout(grace, inner.tasks.wait()).await.is_err() {
            let left = lock(&inner.running).len();
            tracing::warn!(
                left,
                "shutdown grace period over; handing running jobs back to the queue"
            );
            inner.hand_back.cancel();
            inner.tasks.wait().await;
        }
    }

    /// Accepts a job: durable in the store before this returns, then queued for dispatch. Idempotent by
    /// `spec.id`. Refused with [`Error::LimitReached`] when the owner is at their queued-jobs cap.
    pub async fn submit(&self, spec: JobSpec) -> Result<Job> {
        let inner = &self.inner;
        if inner.shutting_down.load(Ordering::SeqCst) {
            return Err(Error::ShuttingDown);
        }
        lock(&inner.scheduler).check_can_queue(&spec.owner)?;
        let (job, created) = inner.store.enqueue(spec, inner.clock.now()).await?;
        if created {
            // Publish before the dispatch loop can see the job, so `queued` always precedes `dispatched`.
            inner.publish(&job, EventKind::Queued { reason: None });
            inner.restore(&job);
        }
        Ok(job)
    }

    /// Cancels a job: a queued one at once; a running one is stopped on its provider first (the
    /// `Cancelled` event follows). Ended jobs are returned unchanged.
    pub async fn cancel(&self, id: JobId, reason: &str) -> Result<Job> {
        let inner = &self.inner;
        match inner.store.cancel(id, reason, inner.clock.now()).await? {
            CancelOutcome::Cancelled(job) => {
                lock(&inner.scheduler).remove(JobKey::from(&job));
                inner.drop_lost(&job);
                inner.publish(
                    &job,
                    EventKind::Cancelled {
                        reason: reason.to_string(),
                    },
                );
                inner.wake.notify_one();
                Ok(job)
            }
            CancelOutcome::Requested(job) => {
                if let Some(run) = lock(&inner.running).get(&id) {
                    *lock(&run.reason) = reason.to_string();
                    run.cancel.cancel();
                }
                Ok(job)
            }
            CancelOutcome::AlreadyFinished(job) => Ok(job),
        }
    }

    /// Changes a job's priority tier (takes effect under the `priority` policy).
    pub async fn set_priority(&self, id: JobId, priority: i32) -> Result<Job> {
        let job = self.inner.store.set_priority(id, priority).await?;
        lock(&self.inner.scheduler).set_priority(JobKey::from(&job), priority);
        self.inner.wake.notify_one();
        Ok(job)
    }

    /// One job by id.
    pub async fn get(&self, id: JobId) -> Result<Option<Job>> {
        self.inner.store.get(id).await
    }

    /// Jobs matching a filter, newest first.
    pub async fn list(&self, filter: &JobFilter) -> Result<Vec<Job>> {
        self.inner.store.list(filter).await
    }

    /// Every event published from now on. Filter by [`JobEvent::owner`] before showing one to a user.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<JobEvent>> {
        self.inner.bus.subscribe()
    }

    /// The bus events are published on.
    pub fn events(&self) -> &EventBus {
        &self.inner.bus
    }

    /// The projected 0-based position of a queued job (None when it is not waiting, or its owner is
    /// paused). Pass the job (or its [`JobKey`]).
    pub fn position(&self, job: impl Into<JobKey>) -> Option<usize> {
        lock(&self.inner.scheduler).position(job.into())
    }

    /// The projected dispatch order of the first `limit` queued jobs.
    pub fn queue_order(&self, limit: usize) -> Vec<JobId> {
        lock(&self.inner.scheduler).order(limit)
    }

    /// Reads the scheduler (stats, policy, pauses) without waking the dispatch loop. Keep `f` short:
    /// dispatch waits while it runs.
    pub fn read_scheduler<R>(&self, f: impl FnOnce(&Scheduler) -> R) -> R {
        f(&lock(&self.inner.scheduler))
    }

    /// Runs `f` on the scheduler (admin overrides: pause, weights, caps, move to front…) and then lets the
    /// dispatch loop look again. Keep `f` short: dispatch waits while it runs.
    pub fn with_scheduler<R>(&self, f: impl FnOnce(&mut Scheduler) -> R) -> R {
        let r = f(&mut lock(&self.inner.scheduler));
        self.inner.wake.notify_one();
        r
    }

    /// The state of every provider, in the order they are offered jobs.
    pub fn providers(&self) -> Vec<ProviderStatus> {
        let order = lock(&self.inner.order).clone();
        order
            .into_iter()
            .map(|i| &self.inner.providers[i])
            .map(|slot| ProviderStatus {
                name: slot.provider.name().to_string(),
                health: lock(&slot.health).clone(),
                warmth: slot.provider.warmth(),
                slots: slot.provider.capacity().slots,
                in_flight: slot.in_flight.load(Ordering::SeqCst),
                draining: slot.draining.load(Ordering::SeqCst),
            })
            .collect()
    }

    /// Checks a workflow against every provider that is not drained ([`InferenceProvider::check_workflow`]):
    /// valid if any can run it; invalid (with the first refusal) if none can and at least one said why;
    /// unknown when no provider can tell yet.
    pub async fn check_workflow(&self, workflow: &serde_json::Value, inputs: &[String]) -> WorkflowCheck {
        let mut refusal = None;
        for slot in &self.inner.providers {
            if slot.draining.load(Ordering::SeqCst) {
                continue;
            }
            match slot.provider.check_workflow(workflow, inputs).await {
                WorkflowCheck::Valid => return WorkflowCheck::Valid,
                invalid @ WorkflowCheck::Invalid { .. } => {
                    refusal.get_or_insert(invalid);
                }
                _ => {}
            }
        }
        refusal.unwrap_or(WorkflowCheck::Unknown)
    }

    /// Drains (no new jobs; running ones finish) or undrains a provider by name. False if there is none.
    pub fn set_draining(&self, name: &str, draining: bool) -> bool {
        let Some(slot) = self.inner.providers.iter().find(|s| s.provider.name() == name) else {
            return false;
        };
        slot.draining.store(draining, Ordering::SeqCst);
        self.inner.wake.notify_one();
        true
    }

    /// True when the store answers and at least one provider is usable.
    pub async fn ready(&self) -> bool {
        let store_ok = self.inner.store.get(JobId(uuid::Uuid::nil())).await.is_ok();
        store_ok && self.inner.providers.iter().any(|s| lock(&s.health).is_usable())
    }

    /// The job store.
    pub fn store(&self) -> &Arc<dyn JobStore> {
        &self.inner.store
    }

    /// The output sink.
    pub fn sink(&self) -> &Arc<dyn OutputSink> {
        &self.inner.sink
    }

    /// The engine's clock.
    pub fn clock(&self) -> Clock {
        self.inner.clock
    }
}

impl Inner {
    fn publish(&self, job: &Job, kind: EventKind) {
        self.bus.publish(JobEvent {
            job_id: job.id,
            owner: job.spec.owner.clone(),
            seq: job.seq,
            at: self.clock.now(),
            kind,
        });
    }

    /// Puts a job the store holds as queued into the scheduler (caps are checked at submit, not here:
    /// a recovered or retried job is never refused).
    fn restore(&self, job: &Job) {
        lock(&self.scheduler).restore(QueuedJob {
            id: job.id,
            owner: job.spec.owner.clone(),
            priority: job.spec.priority,
            cost: job.cost(),
            seq: job.seq,
        });
        self.wake.notify_one();
    }

    /// Queues a job again at `at` (retry backoff), if it is still queued in the store then.
    fn requeue_at(self: &Arc<Self>, id: JobId, at: Timestamp) {
        let inner = Arc::clone(self);
        let deadline = self.clock.instant_at(at);
        // Not tracked: the job is durable as queued; if the engine stops first, start-up recovery requeues it.
        tokio::spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => {}
                _ = inner.stop.cancelled() => return,
            }
            match inner.store.get(id).await {
                Ok(Some(job)) if job.state == JobState::Queued => {
                    inner.restore(&job);
                    // Back in the scheduler: watchers learn it waits again (and its new position).
                    let reason = format!("back in the queue for attempt {}", job.attempts + 1);
                    inner.publish(&job, EventKind::Queued { reason: Some(reason) });
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::error!(job = %id, error = %e, "could not requeue job; it runs after restart")
                }
            }
        });
    }

    /// The first provider in the admin's order that takes a job now.
    fn free_provider(&self) -> Option<usize> {
        lock(&self.order).iter().copied().find(|&i| {
            let slot = &self.providers[i];
            !slot.draining.load(Ordering::SeqCst)
                && lock(&slot.health).is_usable()
                && slot.in_flight.load(Ordering::SeqCst) < slot.provider.capacity().slots
        })
    }

    async fn dispatch_loop(self: Arc<Self>) {
        loop {
            self.dispatch_ready().await;
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(IDLE_RECHECK) => {}
                _ = self.stop.cancelled() => return,
            }
        }
    }

    /// Hands out jobs while a provider has a free slot and the scheduler has an eligible job.
    async fn dispatch_ready(self: &Arc<Self>) {
        while !self.shutting_down.load(Ordering::SeqCst) {
            let Some(p) = self.free_provider() else { return };
            let Some(next) = lock(&self.scheduler).pop() else {
                return;
            };
            let slot = &self.providers[p];
            slot.in_flight.fetch_add(1, Ordering::SeqCst);
            let ttl = self.config.lease_ttl;
            let claimed = self
                .store
                .claim(
                    next.id,
                    &self.config.holder,
                    slot.provider.name(),
                    ttl,
                    self.clock.now(),
                )
                .await;
            match claimed {
                Ok((job, lease)) => self.launch(job, lease, p),
                Err(e) => {
                    slot.in_flight.fetch_sub(1, Ordering::SeqCst);
                    let mut scheduler = lock(&self.scheduler);
                    scheduler.complete(next.id, Some(0.0));
                    match e {
                        // Cancelled or finished in the meantime: nothing to run.
                        Error::WrongState { .. } | Error::NotFound(_) => continue,
                        e => {
                            tracing::error!(job = %next.id, error = %e, "claim failed; will try again");
                            scheduler.restore(next);
                            return;
                        }
                    }
                }
            }
        }
    }

    fn launch(self: &Arc<Self>, job: Job, lease: Lease, provider: usize) {
        let running = Running {
            cancel: CancellationToken::new(),
            lost: CancellationToken::new(),
            reason: Arc::new(Mutex::new("cancelled".to_string())),
            expires_at: Arc::new(AtomicU64::new(lease.expires_at.0)),
            lease: lease.clone(),
        };
        let run = run::JobRun::new(Arc::clone(self), job, lease, provider, &running);
        lock(&self.running).insert(run.job_id(), running);
        self.tasks.spawn(run.execute());
    }

    /// Called by a finished run: frees its slot and its scheduler entry, and wakes the dispatch loop.
    fn release_slot(&self, id: JobId, provider: usize, actual_cost: Option<f64>) {
        lock(&self.running).remove(&id);
        self.providers[provider].in_flight.fetch_sub(1, Ordering::SeqCst);
        lock(&self.scheduler).complete(id, actual_cost);
        self.wake.notify_one();
    }

    async fn reaper_loop(self: Arc<Self>) {
        let mut tick = tokio::time::interval(self.config.reap_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = self.stop.cancelled() => return,
            }
            if let Err(e) = self.reap().await {
                tracing::error!(error = %e, "reaping expired leases failed");
            }
            if let Err(e) = self.expire_queued().await {
                tracing::error!(error = %e, "checking queue-wait timeouts failed");
            }
        }
    }

    /// Returns jobs with expired leases to the queue (or dead-letters them) and tells everyone.
    async fn reap(&self) -> Result<()> {
        self.renew_own_leases().await;
        let outcomes = self
            .store
            .reap_expired(self.clock.now(), self.config.max_stalls)
            .await?;
        self.reaped(outcomes);
        Ok(())
    }

    /// Renews the leases of this server's own live runs that would lapse before the reaper's next look.
    ///
    /// A lease exists to find the jobs of a server that died. When this server is alive but its heartbeats
    /// come late (a store slowed down by a flood of submits, an overloaded machine), its own reaper must
    /// not take its running jobs away and hand them out a second time: it renews them first, in order,
    /// before it looks for lapsed leases.
    async fn renew_own_leases(&self) {
        let margin = self.config.reap_interval.saturating_mul(2);
        let due_by = self
            .clock
            .now()
            .0
            .saturating_add(u64::try_from(margin.as_millis()).unwrap_or(u64::MAX));
        let due: Vec<_> = lock(&self.running)
            .values()
            .filter(|r| r.expires_at.load(Ordering::SeqCst) <= due_by && !r.lost.is_cancelled())
            .map(|r| {
                (
                    r.lease.clone(),
                    Arc::clone(&r.expires_at),
                    r.cancel.clone(),
                    r.lost.clone(),
                )
            })
            .collect();
        for (lease, expires_at, cancel, lost) in due {
            let renewed = self
                .store
                .heartbeat(&lease, self.config.lease_ttl, self.clock.now())
                .await;
            run::heard(renewed, &lease, &expires_at, &cancel, &lost);
        }
    }

    /// Publishes what the reaper (or start-up recovery) did and puts requeued jobs back in line.
    fn reaped(&self, outcomes: Vec<ReapOutcome>) {
        for outcome in outcomes {
            match outcome {
                ReapOutcome::Requeued(job) => {
                    tracing::warn!(job = %job.id, stalls = job.stalls, "lease expired; job queued again");
                    let reason = format!("its worker stopped responding (stall {})", job.stalls);
                    self.publish(&job, EventKind::Queued { reason: Some(reason) });
                    let local = lock(&self.running).get(&job.id).map(|r| r.lost.clone());
                    match local {
                        // Our own run lost its lease; it requeues the job when it has stopped.
                        Some(lost) => lost.cancel(),
                        // Someone else's run (or ours before a restart): its provider may still run it.
                        None => {
                            self.lost.note(&job);
                            self.restore(&job);
                        }
                    }
                }
                ReapOutcome::DeadLettered(job) => {
                    match lock(&self.running).get(&job.id) {
                        Some(run) => run.lost.cancel(),
                        None => self.stop_lost(&job),
                    }
                    if let JobState::Failed { failure } = &job.state {
                        tracing::error!(job = %job.id, reason = %failure, "job dead-lettered");
                        self.publish(
                            &job,
                            EventKind::Failed {
                                failure: failure.clone(),
                            },
                        );
                    }
                }
                ReapOutcome::Cancelled(job) => {
                    if !lock(&self.running).contains_key(&job.id) {
                        self.stop_lost(&job);
                    }
                    let reason = match &job.state {
                        JobState::Cancelled { reason } => reason.clone(),
                        _ => "cancelled".to_string(),
                    };
                    self.publish(&job, EventKind::Cancelled { reason });
                }
            }
        }
    }

    /// Fails jobs that waited longer than the queue timeout.
    async fn expire_queued(&self) -> Result<()> {
        let Some(limit) = self.config.queue_timeout else {
            return Ok(());
        };
        let now = self.clock.now();
        for job in self.store.queued().await? {
            if now.since(job.created_at) <= limit {
                continue;
            }
            lock(&self.scheduler).remove(JobKey::from(&job));
            let failure = Failure::new(
                FailureKind::QueueTimeout,
                format!(
                    "waited {} s in the queue without a free GPU (limit {} s)",
                    now.since(job.created_at).as_secs(),
                    limit.as_secs()
                ),
            );
            match self.store.fail_queued(job.id, failure.clone(), now).await {
                Ok(job) => {
                    self.drop_lost(&job);
                    self.publish(&job, EventKind::Failed { failure })
                }
                // Claimed or cancelled in the meantime: it is no longer waiting.
                Err(Error::WrongState { .. } | Error::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    async fn health_loop(self: Arc<Self>, index: usize) {
        let slot = &self.providers[index];
        loop {
            tokio::select! {
                _ = tokio::time::sleep(slot.provider.health_interval()) => {}
                // A provider that knows its backend just went away (or came back) says so at once.
                _ = slot.provider.health_changed() => {}
                _ = self.stop.cancelled() => return,
            }
            let health = slot.provider.health().await;
            let changed = {
                let mut current = lock(&slot.health);
                let changed = *current != health;
                *current = health.clone();
                changed
            };
            if changed {
                tracing::info!(
                    provider = slot.provider.name(),
                    ?health,
                    "provider health changed"
                );
                self.wake.notify_one();
            }
        }
    }
}
