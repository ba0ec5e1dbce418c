//! Dispatcher tests under paused time, driven by a scriptable provider (a test helper, not a product).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::{broadcast, mpsc};

use super::*;
use crate::job::UserId;
use crate::provider::{Capacity, ProviderError, ProviderEvent, ProviderEventStream};
use crate::scheduler::Policy;
use crate::sink::{Artifact, LocalDirSink, OutputKind};
use crate::store::{JobStatus, MemoryStore};

/// One step of what the scripted provider does for a submitted job.
#[derive(Clone, Debug)]
enum Step {
    Emit(ProviderEvent),
    Sleep(Duration),
    /// Never finishes (until cancelled).
    Hang,
}

/// What the scripted provider does with one submit.
#[derive(Clone, Debug)]
enum Script {
    Run(Vec<Step>),
    Refuse(ProviderError),
}

fn ok_script(run: Duration) -> Script {
    Script::Run(vec![
        Step::Emit(ProviderEvent::Started),
        Step::Emit(ProviderEvent::Progress {
            node: Some("2".into()),
            value: 1,
            max: 2,
        }),
        Step::Sleep(run),
        Step::Emit(ProviderEvent::Artifact(Artifact {
            node_id: Some("2".into()),
            media: "images".into(),
            filename: "out_00001_.png".into(),
            subfolder: "gw".into(),
            kind: OutputKind::Output,
            data: Bytes::from_static(b"\x89PNG fake"),
        })),
        Step::Emit(ProviderEvent::Completed),
    ])
}

fn fail_script(kind: FailureKind) -> Script {
    Script::Run(vec![
        Step::Emit(ProviderEvent::Started),
        Step::Emit(ProviderEvent::Failed(Failure::new(kind, "boom"))),
    ])
}

/// A provider whose behaviour per submit is scripted by the test. Test helper only.
struct ScriptedProvider {
    name: String,
    slots: usize,
    scripts: Mutex<VecDeque<Script>>,
    default: Script,
    submits: Mutex<Vec<JobId>>,
    cancels: Mutex<Vec<JobId>>,
    active: AtomicUsize,
    max_active: AtomicUsize,
    interrupts: Mutex<HashMap<JobId, mpsc::Sender<ProviderEvent>>>,
}

impl ScriptedProvider {
    fn new(name: &str, slots: usize, default: Script) -> Arc<Self> {
        Arc::new(Self {
            name: name.into(),
            slots,
            scripts: Mutex::new(VecDeque::new()),
            default,
            submits: Mutex::new(Vec::new()),
            cancels: Mutex::new(Vec::new()),
            active: AtomicUsize::new(0),
            max_active: AtomicUsize::new(0),
            interrupts: Mutex::new(HashMap::new()),
        })
    }

    fn then(self: &Arc<Self>, script: Script) -> Arc<Self> {
        self.scripts.lock().unwrap().push_back(script);
        Arc::clone(self)
    }

    fn submits(&self) -> Vec<JobId> {
        self.submits.lock().unwrap().clone()
    }

    fn cancels(&self) -> Vec<JobId> {
        self.cancels.lock().unwrap().clone()
    }
}

struct ActiveGuard(Arc<ScriptedProvider>);
impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::SeqCst);
    }
}

#[async_trait]
impl InferenceProvider for Arc<ScriptedProvider> {
    fn name(&self) -> &str {
        &self.name
    }

    fn capacity(&self) -> Capacity {
        Capacity { slots: self.slots }
    }

    async fn submit(&self, job: &Job) -> Result<ProviderEventStream, ProviderError> {
        self.submits.lock().unwrap().push(job.id);
        let script = self
            .scripts
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or_else(|| self.default.clone());
        let steps = match script {
            Script::Refuse(e) => return Err(e),
            Script::Run(steps) => steps,
        };
        let now_active = self.active.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_active.fetch_max(now_active, Ordering::SeqCst);
        let (tx, rx) = mpsc::channel(64);
        self.interrupts.lock().unwrap().insert(job.id, tx.clone());
        let guard = ActiveGuard(Arc::clone(self));
        tokio::spawn(async move {
            let _guard = guard;
            for step in steps {
                match step {
                    Step::Emit(e) => {
                        if tx.send(e).await.is_err() {
                            return;
                        }
                    }
                    Step::Sleep(d) => tokio::time::sleep(d).await,
                    Step::Hang => {
                        tx.closed().await;
                        return;
                    }
                }
            }
        });
        Ok(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }

    async fn cancel(&self, job: JobId) -> Result<(), ProviderError> {
        self.cancels.lock().unwrap().push(job);
        if let Some(tx) = self.interrupts.lock().unwrap().remove(&job) {
            let _ = tx.try_send(ProviderEvent::Failed(Failure::new(
                FailureKind::ProviderError,
                "interrupted",
            )));
        }
        Ok(())
    }

    async fn health(&self) -> Health {
        Health::Healthy
    }
}

struct Harness {
    dispatcher: Dispatcher,
    store: Arc<dyn JobStore>,
    events: broadcast::Receiver<Arc<JobEvent>>,
    /// Events already received for jobs nobody was waiting on yet.
    pending: HashMap<JobId, VecDeque<EventKind>>,
    _dir: tempfile::TempDir,
}

fn config() -> DispatcherConfig {
    DispatcherConfig {
        holder: "test".into(),
        lease_ttl: Duration::from_secs(30),
        heartbeat_interval: Duration::from_secs(10),
        reap_interval: Duration::from_secs(5),
        max_attempts: 3,
        max_stalls: 2,
        backoff_base: Duration::from_secs(2),
        backoff_max: Duration::from_secs(60),
        queue_timeout: None,
        start_timeout: Duration::from_secs(60),
        execution_timeout: Duration::from_secs(300),
        event_capacity: 1024,
        follow_shared_queue: None,
        clock_start: None,
    }
}

#[path = "shared_tests.rs"]
mod shared;

#[path = "renew_tests.rs"]
mod renew;

async fn harness(providers: Vec<Arc<dyn InferenceProvider>>, config: DispatcherConfig) -> Harness {
    harness_with_store(Arc::new(MemoryStore::new()), providers, config).await
}

async fn harness_with_store(
    store: Arc<dyn JobStore>,
    providers: Vec<Arc<dyn InferenceProvider>>,
    config: DispatcherConfig,
) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let sink = Arc::new(LocalDirSink::new(dir.path()));
    let scheduler = SchedulerConfig {
        policy: Policy::RoundRobin,
        ..Default::default()
    };
    let dispatcher = Dispatcher::new(store.clone(), sink, providers, scheduler, config);
    let events = dispatcher.subscribe();
    dispatcher.start().await.unwrap();
    Harness {
        dispatcher,
        store,
        events,
        pending: HashMap::new(),
        _dir: dir,
    }
}

fn spec(user: &str) -> JobSpec {
    JobSpec::new(
        UserId::new(user).unwrap(),
        serde_json::json!({"1": {"class_type": "EmptyImage", "inputs": {}}}),
    )
}

impl Harness {
    /// The next event of any job (an hour of paused time at most).
    async fn next_event(&mut self) -> JobEvent {
        let event = tokio::time::timeout(Duration::from_secs(3600), self.events.recv())
            .await
            .expect("no event within an hour of (paused) time")
            .expect("event bus closed");
        Arc::unwrap_or_clone(event)
    }

    /// This job's events until its terminal one. Events of other jobs seen meanwhile are kept for them.
    async fn events_until_terminal(&mut self, id: JobId) -> Vec<EventKind> {
        let mut seen = Vec::new();
        loop {
            let kind = self.next_of(id).await;
            let terminal = kind.is_terminal();
            seen.push(kind);
            if terminal {
                return seen;
            }
        }
    }

    /// Waits for an event of this job matching `pred`, dropping the job's earlier events.
    async fn wait_for(&mut self, id: JobId, pred: impl Fn(&EventKind) -> bool) {
        while !pred(&self.next_of(id).await) {}
    }

    /// The next event of one job, from the buffer first.
    async fn next_of(&mut self, id: JobId) -> EventKind {
        if let Some(kind) = self.pending.get_mut(&id).and_then(VecDeque::pop_front) {
            return kind;
        }
        loop {
            let event = self.next_event().await;
            if event.job_id == id {
                return event.kind;
            }
            self.pending
                .entry(event.job_id)
                .or_default()
                .push_back(event.kind);
        }
    }

    async fn job(&self, id: JobId) -> Job {
        self.store.get(id).await.unwrap().unwrap()
    }
}

fn names(events: &[EventKind]) -> Vec<&'static str> {
    events
        .iter()
        .map(|e| match e {
            EventKind::Queued { .. } => "queued",
            EventKind::Dispatched { .. } => "dispatched",
            EventKind::Started => "started",
            EventKind::Progress { .. } => "progress",
            EventKind::Output { .. } => "output",
            EventKind::Retrying { .. } => "retrying",
            EventKind::Succeeded { .. } => "succeeded",
            EventKind::Failed { .. } => "failed",
            EventKind::Cancelled { .. } => "cancelled",
            _ => "other",
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn runs_a_job_to_success_and_stores_its_output() {
    let provider = ScriptedProvider::new("gpu", 1, ok_script(Duration::from_secs(3)));
    let mut h = harness(vec![Arc::new(provider.clone())], config()).await;
    let job = h.dispatcher.submit(spec("alice")).await.unwrap();
    let events = h.events_until_terminal(job.id).await;
    assert_eq!(
        names(&events),
        [
            "queued",
            "dispatched",
            "started",
            "progress",
            "output",
            "succeeded"
        ]
    );
    let done = h.job(job.id).await;
    assert_eq!(done.state, JobState::Succeeded);
    assert_eq!(done.attempts, 1);
    assert_eq!(done.outputs.len(), 1);
    let bytes = h.dispatcher.sink().read(&done.outputs[0]).await.unwrap();
    assert_eq!(bytes, Bytes::from_static(b"\x89PNG fake"));
    assert_eq!(done.outputs[0].owner.as_str(), "alice");
}

#[tokio::test(start_paused = true)]
async fn never_gives_a_provider_more_jobs_than_it_has_slots() {
    let provider = ScriptedProvider::new("gpu", 2, ok_script(Duration::from_secs(5)));
    let mut h = harness(vec![Arc::new(provider.clone())], config()).await;
    let mut ids = Vec::new();
    for i in 0..7 {
        ids.push(
            h.dispatcher
                .submit(spec(&format!("u{}", i % 3)))
                .await
                .unwrap()
                .id,
        );
    }
    for id in &ids {
        h.events_until_terminal(*id).await;
    }
    assert_eq!(provider.submits().len(), 7);
    assert_eq!(
        provider.max_active.load(Ordering::SeqCst),
        2,
        "two slots, used fully, never more"
    );
}

#[tokio::test(start_paused = true)]
async fn retries_infrastructure_failures_with_backoff() {
    let provider = ScriptedProvider::new("gpu", 1, ok_script(Duration::from_secs(1)))
        .then(fail_script(FailureKind::ProviderUnavailable));
    let mut h = harness(vec![Arc::new(provider.clone())], config()).await;
    let job = h.dispatcher.submit(spec("alice")).await.unwrap();
    let t0 = tokio::time::Instant::now();
    let events = h.events_until_terminal(job.id).await;
    assert_eq!(
        names(&events),
        [
            "queued",
            "dispatched",
            "started",
            "retrying",
            "queued",
            "dispatched",
            "started",
            "progress",
            "output",
            "succeeded"
        ]
    );
    assert!(
        matches!(&events[4], EventKind::Queued { reason: Some(r) } if r.contains("attempt 2")),
        "after its backoff the job is announced back in the queue: {:?}",
        events[4]
    );
    let EventKind::Retrying {
        attempt,
        delay_ms,
        failure,
    } = &events[3]
    else {
        panic!("{events:?}")
    };
    assert_eq!(*attempt, 1);
    assert!(
        (1000..=2000).contains(delay_ms),
        "first backoff within [base/2, base]: {delay_ms}"
    );
    assert_eq!(failure.kind, FailureKind::ProviderUnavailable);
    assert!(
        t0.elapsed() >= Duration::from_millis(*delay_ms),
        "the retry waited for its backoff"
    );
    assert_eq!(h.job(job.id).await.attempts, 2);
}

#[tokio::test(start_paused = true)]
async fn never_retries_the_users_own_errors() {
    let provider = ScriptedProvider::new("gpu", 1, ok_script(Duration::ZERO))
        .then(fail_script(FailureKind::NodeError))
        .then(Script::Refuse(ProviderError::Rejected(Failure::new(
            FailureKind::Validation,
            "unknown node",
        ))));
    let mut h = harness(vec![Arc::new(provider.clone())], config()).await;
    let a = h.dispatcher.submit(spec("alice")).await.unwrap();
    assert_eq!(
        names(&h.events_until_terminal(a.id).await).last(),
        Some(&"failed")
    );
    let b = h.dispatcher.submit(spec("alice")).await.unwrap();
    let events = h.events_until_terminal(b.id).await;
    let Some(EventKind::Failed { failure }) = events.last() else {
        panic!("{events:?}")
    };
    assert_eq!(failure.kind, FailureKind::Validation);
    assert_eq!(
        failure.message, "unknown node",
        "the user's error reaches them unchanged"
    );
    assert_eq!(provider.submits(), [a.id, b.id], "each submitted once");
    assert_eq!(h.job(a.id).await.attempts, 1);
}

#[tokio::test(start_paused = true)]
async fn gives_up_after_max_attempts_with_the_reason() {
    let provider = ScriptedProvider::new("gpu", 1, fail_script(FailureKind::ProviderError));
    let mut h = harness(vec![Arc::new(provider.clone())], config()).await;
    let job = h.dispatcher.submit(spec("alice")).await.unwrap();
    let events = h.events_until_terminal(job.id).await;
    assert_eq!(
        events
            .iter()
            .filter(|e| matches!(e, EventKind::Retrying { .. }))
            .count(),
        2
    );
    let Some(EventKind::Failed { failure }) = events.last() else {
        panic!("{events:?}")
    };
    assert_eq!(failure.message, "gave up after 3 attempts: boom");
    let job = h.job(job.id).await;
    assert_eq!(job.attempts, 3);
    assert_eq!(JobStatus::of(&job.state), JobStatus::Failed);
}

#[tokio::test(start_paused = true)]
async fn start_timeout_stops_the_job_on_the_provider_and_retries() {
    let provider =
        ScriptedProvider::new("gpu", 1, ok_script(Duration::ZERO)).then(Script::Run(vec![Step::Hang]));
    let mut h = harness(vec![Arc::new(provider.clone())], config()).await;
    let job = h.dispatcher.submit(spec("alice")).await.unwrap();
    let t0 = tokio::time::Instant::now();
    let events = h.events_until_terminal(job.id).await;
    let retry = events.iter().find_map(|e| match e {
        EventKind::Retrying { failure, .. } => Some(failure.clone()),
        _ => None,
    });
    assert_eq!(retry.map(|f| f.kind), Some(FailureKind::StartTimeout));
    assert!(t0.elapsed() >= Duration::from_secs(60));
    assert_eq!(
        provider.cancels().first(),
        Some(&job.id),
        "the hung attempt was stopped on the provider"
    );
    assert_eq!(h.job(job.id).await.state, JobState::Succeeded);
}

#[tokio::test(start_paused = true)]
async fn execution_timeout_fails_a_job_that_runs_too_long() {
    let hang = Script::Run(vec![Step::Emit(ProviderEvent::Started), Step::Hang]);
    let provider = ScriptedProvider::new("gpu", 1, hang);
    let mut h = harness(
        vec![Arc::new(provider.clone())],
        DispatcherConfig {
            max_attempts: 1,
            ..config()
        },
    )
    .await;
    let job = h.dispatcher.submit(spec("alice")).await.unwrap();
    let t0 = tokio::time::Instant::now();
    let events = h.events_until_terminal(job.id).await;
    let Some(EventKind::Failed { failure }) = events.last() else {
        panic!("{events:?}")
    };
    assert_eq!(failure.kind, FailureKind::ExecutionTimeout);
    let elapsed = t0.elapsed();
    assert!(
        elapsed >= Duration::from_secs(300) && elapsed < Duration::from_secs(310),
        "{elapsed:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn cancels_a_queued_job_without_running_it() {
    let provider = ScriptedProvider::new("gpu", 1, ok_script(Duration::from_secs(10)));
    let mut h = harness(vec![Arc::new(provider.clone())], config()).await;
    let first = h.dispatcher.submit(spec("alice")).await.unwrap();
    h.wait_for(first.id, |e| matches!(e, EventKind::Started)).await;
    let second = h.dispatcher.submit(spec("bob")).await.unwrap();
    let cancelled = h.dispatcher.cancel(second.id, "changed my mind").await.unwrap();
    assert_eq!(
        cancelled.state,
        JobState::Cancelled {
            reason: "changed my mind".into()
        }
    );
    h.events_until_terminal(first.id).await;
    assert_eq!(
        provider.submits(),
        [first.id],
        "the cancelled job never reached the provider"
    );
    assert_eq!(h.dispatcher.position(&second), None);
}

#[tokio::test(start_paused = true)]
async fn cancels_a_running_job_on_its_provider() {
    let hang = Script::Run(vec![Step::Emit(ProviderEvent::Started), Step::Hang]);
    let provider = ScriptedProvider::new("gpu", 1, hang);
    let mut h = harness(vec![Arc::new(provider.clone())], config()).await;
    let job = h.dispatcher.submit(spec("alice")).await.unwrap();
    h.wait_for(job.id, |e| matches!(e, EventKind::Started)).await;
    let flagged = h.dispatcher.cancel(job.id, "cancelled by alice").await.unwrap();
    assert!(flagged.cancel_requested);
    let events = h.events_until_terminal(job.id).await;
    assert_eq!(
        events.last(),
        Some(&EventKind::Cancelled {
            reason: "cancelled by alice".into()
        })
    );
    assert_eq!(provider.cancels(), [job.id]);
    assert_eq!(
        h.job(job.id).await.state,
        JobState::Cancelled {
            reason: "cancelled by alice".into()
        }
    );
    // The slot is free again.
    let next = h.dispatcher.submit(spec("alice")).await.unwrap();
    h.wait_for(next.id, |e| matches!(e, EventKind::Started)).await;
}

#[tokio::test(start_paused = true)]
async fn queue_wait_timeout_fails_jobs_that_never_got_a_slot() {
    let hang = Script::Run(vec![Step::Emit(ProviderEvent::Started), Step::Hang]);
    let provider = ScriptedProvider::new("gpu", 1, hang);
    let config = DispatcherConfig {
        queue_timeout: Some(Duration::from_secs(20)),
        ..config()
    };
    let mut h = harness(vec![Arc::new(provider.clone())], config).await;
    let running = h.dispatcher.submit(spec("alice")).await.unwrap();
    h.wait_for(running.id, |e| matches!(e, EventKind::Started)).await;
    let waiting = h.dispatcher.submit(spec("bob")).await.unwrap();
    let events = h.events_until_terminal(waiting.id).await;
    let Some(EventKind::Failed { failure }) = events.last() else {
        panic!("{events:?}")
    };
    assert_eq!(failure.kind, FailureKind::QueueTimeout);
    assert_eq!(provider.submits(), [running.id]);
}

#[tokio::test(start_paused = true)]
async fn recovers_queued_jobs_and_expired_leases_at_start_up() {
    // A previous server accepted two jobs and crashed while holding a lease on one.
    let store = Arc::new(MemoryStore::new());
    let clock = Clock::new();
    let (held, _) = store.enqueue(spec("alice"), clock.now()).await.unwrap();
    let (waiting, _) = store.enqueue(spec("bob"), clock.now()).await.unwrap();
    store
        .claim(
            held.id,
            "crashed-server",
            "gpu",
            Duration::from_secs(30),
            clock.now(),
        )
        .await
        .unwrap();
    tokio::time::advance(Duration::from_secs(31)).await;

    let provider = ScriptedProvider::new("gpu", 1, ok_script(Duration::from_secs(1)));
    let h = harness_with_store(store, vec![Arc::new(provider.clone())], config()).await;
    let mut rx = h.dispatcher.subscribe();
    let mut done = 0;
    while done < 2 {
        if rx.recv().await.unwrap().kind.is_terminal() {
            done += 1;
        }
    }
    let held = h.job(held.id).await;
    assert_eq!(held.state, JobState::Succeeded);
    assert_eq!((held.attempts, held.stalls), (2, 1));
    assert_eq!(h.job(waiting.id).await.state, JobState::Succeeded);
}

#[tokio::test(start_paused = true)]
async fn a_restart_under_the_same_holder_recovers_its_leases_at_once() {
    // This server ("test") crashed while holding a lease that has 30 s left.
    let store = Arc::new(MemoryStore::new());
    let clock = Clock::new();
    let (held, _) = store.enqueue(spec("alice"), clock.now()).await.unwrap();
    store
        .claim(held.id, "test", "gpu", Duration::from_secs(30), clock.now())
        .await
        .unwrap();
    let (other, _) = store.enqueue(spec("bob"), clock.now()).await.unwrap();
    store
        .claim(
            other.id,
            "another-server",
            "gpu",
            Duration::from_secs(30),
            clock.now(),
        )
        .await
        .unwrap();

    let t0 = tokio::time::Instant::now();
    let provider = ScriptedProvider::new("gpu", 1, ok_script(Duration::from_secs(1)));
    let mut h = harness_with_store(store, vec![Arc::new(provider.clone())], config()).await;
    let events = h.events_until_terminal(held.id).await;
    assert_eq!(events.last().map(|e| e.is_terminal()), Some(true));
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "did not wait for the lease: {:?}",
        t0.elapsed()
    );
    let held = h.job(held.id).await;
    assert_eq!(
        (held.state, held.attempts, held.stalls),
        (JobState::Succeeded, 2, 1)
    );
    assert_eq!(
        h.job(other.id).await.state,
        JobState::Leased,
        "another holder's lease is left to expire"
    );
}

#[tokio::test(start_paused = true)]
async fn shutdown_hands_running_jobs_back_to_the_queue() {
    let hang = Script::Run(vec![Step::Emit(ProviderEvent::Started), Step::Hang]);
    let provider = ScriptedProvider::new("gpu", 1, hang);
    let mut h = harness(vec![Arc::new(provider.clone())], config()).await;
    let job = h.dispatcher.submit(spec("alice")).await.unwrap();
    h.wait_for(job.id, |e| matches!(e, EventKind::Started)).await;
    h.dispatcher.shutdown(Duration::from_secs(5)).await;
    let job = h.job(job.id).await;
    assert_eq!(job.state, JobState::Queued);
    assert_eq!(job.attempts, 0, "handing back is not an attempt");
    assert_eq!(provider.cancels(), [job.id]);
    assert!(matches!(
        h.dispatcher.submit(spec("alice")).await,
        Err(Error::ShuttingDown)
    ));
}

#[tokio::test(start_paused = true)]
async fn prefers_the_first_provider_and_overflows_to_the_next() {
    let local = ScriptedProvider::new("local", 1, ok_script(Duration::from_secs(10)));
    let cloud = ScriptedProvider::new("cloud", 4, ok_script(Duration::from_secs(10)));
    let mut h = harness(vec![Arc::new(local.clone()), Arc::new(cloud.clone())], config()).await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(h.dispatcher.submit(spec("alice")).await.unwrap().id);
    }
    for id in &ids {
        h.events_until_terminal(*id).await;
    }
    assert_eq!(local.submits(), [ids[0]]);
    assert_eq!(cloud.submits(), [ids[1], ids[2]]);
    assert!(h.dispatcher.set_draining("local", true));
    let next = h.dispatcher.submit(spec("alice")).await.unwrap();
    h.events_until_terminal(next.id).await;
    assert_eq!(local.submits().len(), 1, "a draining provider gets no new jobs");
}

#[tokio::test(start_paused = true)]
async fn per_user_queue_cap_refuses_before_anything_is_stored() {
    let hang = Script::Run(vec![Step::Emit(ProviderEvent::Started), Step::Hang]);
    let provider = ScriptedProvider::new("gpu", 1, hang);
    let mut h = harness(vec![Arc::new(provider.clone())], config()).await;
    let alice = UserId::new("alice").unwrap();
    h.dispatcher.with_scheduler(|s| {
        s.set_user_caps(
            &alice,
            crate::scheduler::UserCaps {
                max_queued: Some(1),
                max_running: None,
            },
        )
    });
    let running = h.dispatcher.submit(spec("alice")).await.unwrap();
    h.wait_for(running.id, |e| matches!(e, EventKind::Started)).await;
    h.dispatcher.submit(spec("alice")).await.unwrap(); // waits
    let before = h.store.list(&JobFilter::default()).await.unwrap().len();
    let err = h.dispatcher.submit(spec("alice")).await.unwrap_err();
    assert!(matches!(err, Error::LimitReached(_)), "{err}");
    assert_eq!(
        h.store.list(&JobFilter::default()).await.unwrap().len(),
        before,
        "nothing stored"
    );
    h.dispatcher.submit(spec("bob")).await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_run_time_provider_order_decides_who_gets_the_next_job() {
    let local = ScriptedProvider::new("local", 1, ok_script(Duration::from_secs(10)));
    let cloud = ScriptedProvider::new("cloud", 1, ok_script(Duration::from_secs(10)));
    let mut h = harness(vec![Arc::new(local.clone()), Arc::new(cloud.clone())], config()).await;
    assert_eq!(h.dispatcher.provider_order(), ["local", "cloud"]);
    assert_eq!(
        h.dispatcher.set_provider_order(&["cloud"]).unwrap(),
        ["cloud", "local"],
        "the named provider first, the others after in their order"
    );
    let names: Vec<String> = h.dispatcher.providers().into_iter().map(|p| p.name).collect();
    assert_eq!(
        names,
        ["cloud", "local"],
        "providers are listed in the order in force"
    );
    let first = h.dispatcher.submit(spec("alice")).await.unwrap();
    h.events_until_terminal(first.id).await;
    assert_eq!(cloud.submits(), [first.id], "the new first provider ran it");
    assert!(local.submits().is_empty());
    for bad in [&["nope"][..], &["local", "local"][..]] {
        let err = h.dispatcher.set_provider_order(bad).unwrap_err();
        assert!(matches!(err, Error::InvalidInput(_)), "{err}");
    }
    assert_eq!(
        h.dispatcher.provider_order(),
        ["cloud", "local"],
        "a refused order changes nothing"
    );
}

#[tokio::test(start_paused = true)]
async fn cancelling_a_user_ends_their_waiting_and_running_jobs_only() {
    let hang = Script::Run(vec![Step::Emit(ProviderEvent::Started), Step::Hang]);
    let provider = ScriptedProvider::new("gpu", 1, hang);
    let mut h = harness(vec![Arc::new(provider.clone())], config()).await;
    let running = h.dispatcher.submit(spec("alice")).await.unwrap();
    h.wait_for(running.id, |e| matches!(e, EventKind::Started)).await;
    let waiting = h.dispatcher.submit(spec("alice")).await.unwrap();
    let bobs = h.dispatcher.submit(spec("bob")).await.unwrap();
    let alice = UserId::new("alice").unwrap();
    let only_waiting = h.dispatcher.cancel_user(&alice, true, "by admin").await.unwrap();
    assert_eq!(
        only_waiting.iter().map(|j| j.id).collect::<Vec<_>>(),
        [waiting.id]
    );
    assert_eq!(h.job(running.id).await.state, JobState::Running);
    let all = h.dispatcher.cancel_user(&alice, false, "by admin").await.unwrap();
    assert_eq!(all.iter().map(|j| j.id).collect::<Vec<_>>(), [running.id]);
    h.events_until_terminal(running.id).await;
    assert!(matches!(
        h.job(running.id).await.state,
        JobState::Cancelled { .. }
    ));
    assert_eq!(provider.cancels(), [running.id]);
    // Bob's job is untouched; it runs once Alice's job has left the slot.
    h.wait_for(bobs.id, |e| matches!(e, EventKind::Started)).await;
}
