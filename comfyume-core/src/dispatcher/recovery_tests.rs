//! A server that restarts while a provider runs one of its jobs: the provider is asked before the job
//! is sent again. Driven by a recording provider (a test helper, not a product).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

use crate::job::{JobSpec, JobState, UserId};
use crate::provider::{Capacity, InferenceProvider, ProviderError, ProviderEvent, ProviderEventStream};
use crate::sink::LocalDirSink;
use crate::store::{JobStore, MemoryStore};
use crate::{Dispatcher, DispatcherConfig, Job, JobId, SchedulerConfig};

/// Records what it is asked; `reattach` finds the job when `still_there` is set.
struct Recorder {
    name: String,
    still_there: bool,
    calls: Mutex<Vec<String>>,
}

impl Recorder {
    fn new(name: &str, still_there: bool) -> Arc<Self> {
        Arc::new(Self {
            name: name.into(),
            still_there,
            calls: Mutex::new(Vec::new()),
        })
    }

    fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }

    fn record(&self, what: &str, job: JobId) {
        self.calls.lock().unwrap().push(format!("{what} {job}"));
    }
}

fn done() -> ProviderEventStream {
    Box::pin(futures::stream::iter([
        ProviderEvent::Started,
        ProviderEvent::Value {
            node: Some("3".into()),
            media: "text".into(),
            value: serde_json::json!(["40"]),
        },
        ProviderEvent::Completed,
    ]))
}

#[async_trait]
impl InferenceProvider for Arc<Recorder> {
    fn name(&self) -> &str {
        &self.name
    }
    fn capacity(&self) -> Capacity {
        Capacity { slots: 1 }
    }
    async fn submit(&self, job: &Job) -> Result<ProviderEventStream, ProviderError> {
        self.record("submit", job.id);
        Ok(done())
    }
    async fn cancel(&self, job: JobId) -> Result<(), ProviderError> {
        self.record("cancel", job);
        Ok(())
    }
    async fn reattach(&self, job: &Job) -> Result<Option<ProviderEventStream>, ProviderError> {
        self.record("reattach", job.id);
        Ok(self.still_there.then(done))
    }
}

/// A store holding one job that server "h" was running on provider `on` when it stopped.
async fn left_running(on: &str) -> (Arc<MemoryStore>, JobId) {
    let store = Arc::new(MemoryStore::new());
    let spec = JobSpec::new(UserId::new("alice").unwrap(), serde_json::json!({}));
    let (job, _) = store.enqueue(spec, crate::Timestamp(1)).await.unwrap();
    let (_, lease) = store
        .claim(job.id, "h", on, Duration::from_secs(30), crate::Timestamp(2))
        .await
        .unwrap();
    store.mark_running(&lease, crate::Timestamp(3)).await.unwrap();
    (store, job.id)
}

/// Server "h" again, over `store` with `providers` (not started).
fn server_h(
    store: Arc<MemoryStore>,
    providers: Vec<Arc<dyn InferenceProvider>>,
) -> (Dispatcher, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let config = DispatcherConfig {
        holder: "h".into(),
        ..DispatcherConfig::default()
    };
    let engine = Dispatcher::new(
        store,
        Arc::new(LocalDirSink::new(dir.path())),
        providers,
        SchedulerConfig::default(),
        config,
    );
    (engine, dir)
}

/// Restarts server "h" over `store` with `providers` and waits until `id` ended.
async fn restart(store: Arc<MemoryStore>, providers: Vec<Arc<dyn InferenceProvider>>, id: JobId) -> Job {
    let (engine, _dir) = server_h(store, providers);
    let mut events = engine.subscribe();
    engine.start().await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), async {
        while !(events.recv().await.unwrap().job_id == id
            && engine.get(id).await.unwrap().unwrap().state.is_terminal())
        {}
    })
    .await
    .expect("the job ended");
    let job = engine.get(id).await.unwrap().unwrap();
    engine.shutdown(Duration::from_secs(1)).await;
    job
}

#[tokio::test]
async fn a_job_still_on_its_provider_is_followed_not_sent_again() {
    let (store, id) = left_running("gpu").await;
    let gpu = Recorder::new("gpu", true);
    let job = restart(store, vec![Arc::new(Arc::clone(&gpu))], id).await;
    assert_eq!(job.state, JobState::Succeeded);
    assert_eq!(job.outputs.len(), 1, "its result was collected");
    assert_eq!(gpu.calls(), [format!("reattach {id}")], "never submitted again");
}

#[tokio::test]
async fn a_job_its_provider_forgot_is_sent_again_once() {
    let (store, id) = left_running("gpu").await;
    let gpu = Recorder::new("gpu", false);
    let job = restart(store, vec![Arc::new(Arc::clone(&gpu))], id).await;
    assert_eq!(job.state, JobState::Succeeded);
    assert_eq!(gpu.calls(), [format!("reattach {id}"), format!("submit {id}")]);
}

#[tokio::test]
async fn a_job_sent_to_another_provider_is_stopped_where_it_was() {
    let (store, id) = left_running("old").await;
    let old = Recorder::new("old", true);
    let new = Recorder::new("new", true);
    // The provider that held it is gone from the configuration's front: the job goes to "new".
    let job = restart(
        store,
        vec![Arc::new(Arc::clone(&new)), Arc::new(Arc::clone(&old))],
        id,
    )
    .await;
    assert_eq!(job.state, JobState::Succeeded);
    assert_eq!(old.calls(), [format!("cancel {id}")]);
    assert_eq!(new.calls(), [format!("submit {id}")]);
}

#[tokio::test]
async fn a_recovered_job_cancelled_before_it_runs_again_is_stopped_on_its_provider() {
    let (store, id) = left_running("gpu").await;
    let gpu = Recorder::new("gpu", true);
    let (engine, _dir) = server_h(store, vec![Arc::new(Arc::clone(&gpu))]);
    // Held: nothing is dispatched, so the job is still queued when it is cancelled.
    engine.with_scheduler(|s| s.pause_all());
    engine.start().await.unwrap();
    let job = engine.cancel(id, "changed my mind").await.unwrap();
    assert!(matches!(job.state, JobState::Cancelled { .. }), "{job:?}");
    engine.shutdown(Duration::from_secs(1)).await;
    assert_eq!(gpu.calls(), [format!("cancel {id}")]);
}
