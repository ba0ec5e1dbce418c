//! Shared set-up for the `ComfyUiProvider` tests: **simulated** ComfyUI workers on loopback, the real
//! `Dispatcher` with a `MemoryStore` and a `LocalDirSink` in a temporary directory.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use comfyume_core::{
    Dispatcher, DispatcherConfig, EventKind, InferenceProvider, Job, JobEvent, JobId, JobSpec, LocalDirSink,
    MemoryStore, OutputSink, SchedulerConfig, UserId,
};
use comfyume_providers::protocol::ComfyClient;
use comfyume_providers::sim::{ExecTime, SimConfig, SimWorker};
use comfyume_providers::{ComfyUiConfig, ComfyUiProvider, InstanceConfig};
use serde_json::Value;
use tokio::sync::broadcast;

/// The sample workflows in the repository (`examples/workflows/`).
pub const WORKFLOWS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/workflows");

/// How long any single wait in these tests may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(30);

pub fn fixture(name: &str) -> Value {
    let path = format!("{WORKFLOWS}/{name}.json");
    serde_json::from_slice(&std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))).unwrap()
}

pub fn user(name: &str) -> UserId {
    UserId::new(name).unwrap()
}

/// A simulated worker with a fixed execution time.
pub async fn sim(exec: Duration) -> SimWorker {
    let config = SimConfig {
        exec_time: ExecTime::Fixed(exec),
        ..SimConfig::default()
    };
    SimWorker::start(config, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap()
}

/// Uploads one of the fixture input files to a worker (`POST /upload/image`).
pub async fn upload(worker: &SimWorker, file: &str) {
    let client = ComfyClient::new(&worker.base_url(), WAIT, WAIT).unwrap();
    let data = std::fs::read(format!("{WORKFLOWS}/{file}")).unwrap();
    let uploaded = client.upload_image(file, data.into(), true).await.unwrap();
    assert_eq!(uploaded.name, file);
}

/// A job as the dispatcher hands it to a provider (for tests that drive the provider directly).
pub fn leased_job(owner: &str, workflow: Value) -> Job {
    let id = JobId::new();
    Job {
        id,
        spec: JobSpec {
            id: Some(id),
            ..JobSpec::new(user(owner), workflow)
        },
        state: comfyume_core::JobState::Leased,
        seq: 1,
        attempts: 1,
        stalls: 0,
        cancel_requested: false,
        not_before: None,
        provider: None,
        created_at: comfyume_core::Timestamp::now(),
        started_at: None,
        finished_at: None,
        outputs: Vec::new(),
    }
}

/// Provider settings that notice trouble within a fraction of a second.
pub fn quick_config(urls: &[(String, usize)]) -> ComfyUiConfig {
    ComfyUiConfig {
        name: "gpu-pool".into(),
        instances: urls
            .iter()
            .map(|(url, slots)| InstanceConfig {
                output_dir: None,
                url: url.clone(),
                slots: *slots,
            })
            .collect(),
        health_interval: Duration::from_millis(100),
        health_timeout: Duration::from_secs(2),
        request_timeout: Duration::from_secs(10),
        connect_timeout: Duration::from_secs(2),
        reconnect_min: Duration::from_millis(20),
        reconnect_max: Duration::from_millis(200),
        reconnect_grace: Duration::from_secs(2),
        ..ComfyUiConfig::default()
    }
}

/// The real engine around one `ComfyUiProvider`.
pub struct Env {
    pub dispatcher: Dispatcher,
    pub provider: Arc<ComfyUiProvider>,
    pub sink: Arc<LocalDirSink>,
    pub data: tempfile::TempDir,
}

impl Env {
    pub async fn start(config: ComfyUiConfig) -> Env {
        let provider = Arc::new(ComfyUiProvider::start(config).await.unwrap());
        let data = tempfile::tempdir().unwrap();
        let sink = Arc::new(LocalDirSink::new(data.path()));
        let dispatcher_config = DispatcherConfig {
            backoff_base: Duration::from_millis(20),
            backoff_max: Duration::from_millis(100),
            ..DispatcherConfig::default()
        };
        let dispatcher = Dispatcher::new(
            Arc::new(MemoryStore::new()),
            Arc::clone(&sink) as Arc<dyn OutputSink>,
            vec![Arc::clone(&provider) as Arc<dyn InferenceProvider>],
            SchedulerConfig::default(),
            dispatcher_config,
        );
        dispatcher.start().await.unwrap();
        Env {
            dispatcher,
            provider,
            sink,
            data,
        }
    }

    /// Submits a workflow for `owner` and returns the job with a subscription opened before it.
    pub async fn submit(
        &self,
        owner: &str,
        workflow: Value,
    ) -> (Job, broadcast::Receiver<std::sync::Arc<JobEvent>>) {
        let events = self.dispatcher.subscribe();
        let job = self
            .dispatcher
            .submit(JobSpec::new(user(owner), workflow))
            .await
            .unwrap();
        (job, events)
    }

    /// Runs a workflow to its end: the final job and every event it had, in order.
    pub async fn run(&self, owner: &str, workflow: Value) -> (Job, Vec<EventKind>) {
        let (job, mut events) = self.submit(owner, workflow).await;
        let kinds = until_terminal(&mut events, job.id).await;
        let job = self.dispatcher.get(job.id).await.unwrap().unwrap();
        (job, kinds)
    }

    /// Where the sink keeps a user's file.
    pub fn stored(&self, owner: &str, job: JobId, kind: &str, subfolder: &str, name: &str) -> PathBuf {
        let mut p = self
            .data
            .path()
            .join("users")
            .join(owner)
            .join(kind)
            .join(job.to_string());
        if !subfolder.is_empty() {
            p = p.join(subfolder);
        }
        p.join(name)
    }

    /// Every file stored for a user, relative to the user's directory.
    pub fn files_of(&self, owner: &str) -> Vec<String> {
        let root = self.data.path().join("users").join(owner);
        let mut out = Vec::new();
        walk(&root, &root, &mut out);
        out.sort();
        out
    }
}

fn walk(root: &std::path::Path, dir: &std::path::Path, out: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_dir() {
            walk(root, &path, out);
        } else {
            out.push(path.strip_prefix(root).unwrap().to_string_lossy().into_owned());
        }
    }
}

/// Collects one job's events until its terminal one (fails the test after [`WAIT`]).
pub async fn until_terminal(
    events: &mut broadcast::Receiver<std::sync::Arc<JobEvent>>,
    job: JobId,
) -> Vec<EventKind> {
    let mut kinds = Vec::new();
    let collect = async {
        loop {
            let event = events.recv().await.expect("event bus");
            if event.job_id != job {
                continue;
            }
            let terminal = event.kind.is_terminal();
            kinds.push(event.kind.clone());
            if terminal {
                return;
            }
        }
    };
    tokio::time::timeout(WAIT, collect)
        .await
        .unwrap_or_else(|_| panic!("job {job} did not end; events so far: {kinds:#?}"));
    kinds
}

/// Waits for the first event of `job` that `pred` accepts, returning the events seen up to it.
pub async fn until(
    events: &mut broadcast::Receiver<std::sync::Arc<JobEvent>>,
    job: JobId,
    pred: impl Fn(&EventKind) -> bool,
) -> Vec<EventKind> {
    let mut kinds = Vec::new();
    let collect = async {
        loop {
            let event = events.recv().await.expect("event bus");
            if event.job_id != job {
                continue;
            }
            let hit = pred(&event.kind);
            kinds.push(event.kind.clone());
            if hit {
                return;
            }
        }
    };
    tokio::time::timeout(WAIT, collect)
        .await
        .unwrap_or_else(|_| panic!("job {job}: awaited event never came; events: {kinds:#?}"));
    kinds
}

/// Polls a condition (state of another process, no event for it) until it holds or [`WAIT`] passes.
pub async fn eventually(what: &str, mut cond: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !cond().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A short name for each event, for comparing sequences.
pub fn names(kinds: &[EventKind]) -> Vec<String> {
    kinds
        .iter()
        .map(|k| match k {
            EventKind::Queued { .. } => "queued".into(),
            EventKind::Dispatched { .. } => "dispatched".into(),
            EventKind::Started => "started".into(),
            EventKind::Cached { .. } => "cached".into(),
            EventKind::Executing { node } => format!("executing {node}"),
            EventKind::Progress { .. } => "progress".into(),
            EventKind::Executed { node, .. } => format!("executed {node}"),
            EventKind::Output { output } => format!("output {}", output.node_id.as_deref().unwrap_or("?")),
            EventKind::Preview { .. } => "preview".into(),
            EventKind::Other { kind, .. } => format!("other {kind}"),
            EventKind::Retrying { .. } => "retrying".into(),
            EventKind::Succeeded { .. } => "succeeded".into(),
            EventKind::Failed { .. } => "failed".into(),
            EventKind::Cancelled { .. } => "cancelled".into(),
            other => format!("{other:?}"),
        })
        .collect()
}
