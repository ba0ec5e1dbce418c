//! `RunPodProvider`, driven by the real `Dispatcher`, against a **fake** RunPod endpoint (a test tool:
//! run/status/cancel in RunPod's shapes, one FIFO queue, workers that do what the worker-comfyui image
//! does; see `runpod_support`) whose workers are **simulated** ComfyUI workers.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod provider_support;
mod runpod_support;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use comfyume_core::inputs::{InputName, LocalInputs};
use comfyume_core::{
    Dispatcher, DispatcherConfig, EventKind, FailureKind, InferenceProvider, JobId, JobSpec, JobState,
    LocalDirSink, MemoryStore, OutputSink, SchedulerConfig, WAITING_FOR_GPU,
};
use comfyume_providers::serverless::GateConfig;
use comfyume_providers::sim::{ExecTime, SimConfig, SimWorker};
use comfyume_providers::{ApiKey, RunPodConfig, RunPodProvider};
use provider_support::{eventually, names, user};
use runpod_support::{ENDPOINT, FakeRunPod, Options};
use serde_json::{Value, json};

const KEY: &str = "rp_test_key_for_the_fake_endpoint";

/// `n` simulated ComfyUI workers taking `exec` per job, failing every job when `failing`.
async fn sims(n: usize, exec: Duration, failing: bool) -> Vec<SimWorker> {
    let mut out = Vec::new();
    for _ in 0..n {
        let config = SimConfig {
            exec_time: ExecTime::Fixed(exec),
            failure_rate: if failing { 1.0 } else { 0.0 },
            seed: Some(11),
            ..SimConfig::default()
        };
        out.push(
            SimWorker::start(config, "127.0.0.1:0".parse().unwrap())
                .await
                .unwrap(),
        );
    }
    out
}

async fn endpoint(workers: &[SimWorker], options: Options) -> FakeRunPod {
    FakeRunPod::start(KEY, workers.iter().map(SimWorker::base_url).collect(), options).await
}

fn runpod(name: &str, fake: &FakeRunPod, workers: usize) -> RunPodConfig {
    RunPodConfig {
        base_url: fake.base.clone(),
        max_workers: workers,
        poll_interval: Duration::from_millis(40),
        waiting_after: Duration::from_millis(200),
        request_timeout: Duration::from_secs(10),
        ..RunPodConfig::new(name, ENDPOINT, Some(ApiKey::new(KEY).unwrap()))
    }
}

async fn engine(providers: Vec<Arc<dyn InferenceProvider>>) -> (Dispatcher, tempfile::TempDir) {
    let data = tempfile::tempdir().unwrap();
    let dispatcher = Dispatcher::new(
        Arc::new(MemoryStore::new()),
        Arc::new(LocalDirSink::new(data.path())) as Arc<dyn OutputSink>,
        providers,
        SchedulerConfig::default(),
        DispatcherConfig {
            backoff_base: Duration::from_millis(20),
            backoff_max: Duration::from_millis(100),
            ..DispatcherConfig::default()
        },
    );
    dispatcher.start().await.unwrap();
    (dispatcher, data)
}

/// A one-image workflow whose pixels are `color`, saved under `mine/<name>`.
fn coloured(color: u32, name: &str) -> Value {
    json!({
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": color}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": format!("mine/{name}")}}
    })
}

async fn wait_all(dispatcher: &Dispatcher, ids: &[JobId]) {
    eventually("every job to end", async || {
        for id in ids {
            if !dispatcher.get(*id).await.unwrap().unwrap().state.is_terminal() {
                return false;
            }
        }
        true
    })
    .await;
}

/// 20 users × 3 jobs through three workers: every job succeeds once, with its own image, in its own
/// owner's space under the workflow's subfolder; RunPod saw each job exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_users_get_their_own_images_once_each() {
    let workers = sims(3, Duration::from_millis(20), false).await;
    let fake = endpoint(&workers, Options::default()).await;
    let provider = RunPodProvider::start(runpod("runpod", &fake, 3)).unwrap();
    let (dispatcher, data) = engine(vec![Arc::new(provider)]).await;
    let mut expected = HashMap::new();
    for round in 0..3u32 {
        for u in 0..20u32 {
            let color = 0x01_00_00 * (u + 1) + round;
            let owner = format!("user{u:02}");
            let job = dispatcher
                .submit(JobSpec::new(user(&owner), coloured(color, "pic")))
                .await
                .unwrap();
            expected.insert(job.id, (owner, color));
        }
    }
    let ids: Vec<JobId> = expected.keys().copied().collect();
    wait_all(&dispatcher, &ids).await;
    for (id, (owner, color)) in &expected {
        let job = dispatcher.get(*id).await.unwrap().unwrap();
        assert_eq!(job.state, JobState::Succeeded, "{id}: {:?}", job.state);
        assert_eq!(job.attempts, 1, "{id} ran more than once");
        assert_eq!(job.outputs.len(), 1, "{:?}", job.outputs);
        let o = &job.outputs[0];
        assert_eq!(o.subfolder, "mine");
        assert_eq!(o.node_id.as_deref(), Some("2"));
        let dir = data
            .path()
            .join("users")
            .join(owner)
            .join("output")
            .join(id.to_string());
        let px = image::open(dir.join("mine").join(&o.filename))
            .unwrap()
            .to_rgb8()
            .get_pixel(0, 0)
            .0;
        let got = (u32::from(px[0]) << 16) | (u32::from(px[1]) << 8) | u32::from(px[2]);
        assert_eq!(got, *color, "job {id} holds another job's image");
    }
    // No user has a file of another's: each owner's output holds exactly their three jobs.
    for u in 0..20 {
        let dir = data.path().join(format!("users/user{u:02}/output"));
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 3, "{}", dir.display());
    }
    let seen = fake.jobs();
    assert_eq!(seen.len(), 60, "RunPod got a job twice or lost one");
    assert!(seen.values().all(|j| j.status == "COMPLETED"));
    let used: HashSet<usize> = seen.values().filter_map(|j| j.worker).collect();
    assert!(used.len() > 1, "one worker did everything: {used:?}");
    dispatcher.shutdown(Duration::from_secs(5)).await;
}

/// A workflow that loads one of its owner's inputs: the file travels in the request's `images` under a
/// name unique to the job, the loader is pointed at it, and the job succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jobs_inputs_travel_with_it() {
    let workers = sims(1, Duration::from_millis(20), false).await;
    let fake = endpoint(&workers, Options::default()).await;
    let store = tempfile::tempdir().unwrap();
    let inputs = Arc::new(LocalInputs::new(store.path()));
    let png = std::fs::read(format!("{}/gw_input.png", provider_support::WORKFLOWS)).unwrap();
    inputs
        .put(
            &user("alice"),
            &InputName::new("shot.png").unwrap(),
            png.clone().into(),
        )
        .await
        .unwrap();
    let provider = RunPodProvider::start(runpod("runpod", &fake, 1))
        .unwrap()
        .with_inputs(inputs);
    let (dispatcher, _data) = engine(vec![Arc::new(provider)]).await;
    let wf = json!({
        "1": {"class_type": "LoadImage", "inputs": {"image": "shot.png"}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "copy"}}
    });
    let job = dispatcher.submit(JobSpec::new(user("alice"), wf)).await.unwrap();
    wait_all(&dispatcher, &[job.id]).await;
    let done = dispatcher.get(job.id).await.unwrap().unwrap();
    assert_eq!(done.state, JobState::Succeeded, "{:?}", done.state);
    let sent = fake.jobs().into_values().next().unwrap().input;
    let name = format!("comfyume_{}_shot.png", job.id.0.simple());
    assert_eq!(sent["images"][0]["name"], name.as_str(), "{sent}");
    assert_eq!(sent["workflow"]["1"]["inputs"]["image"], name.as_str());
    dispatcher.shutdown(Duration::from_secs(5)).await;
}

/// Cancelling a job that waits at RunPod for a worker: RunPod is told, the job never runs anywhere.
/// Cancelling a running one: RunPod is told, and its ComfyUI is interrupted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_is_cancelled_at_runpod_while_queued_and_while_running() {
    // Queued: the endpoint is cold for longer than the test.
    let cold_workers = sims(1, Duration::from_millis(20), false).await;
    let cold = endpoint(
        &cold_workers,
        Options {
            cold: Duration::from_secs(600),
            ..Options::default()
        },
    )
    .await;
    // Running: each job takes long enough to be caught.
    let slow_workers = sims(1, Duration::from_secs(20), false).await;
    let slow = endpoint(&slow_workers, Options::default()).await;
    for (fake, workers, state) in [
        (&cold, &cold_workers, "IN_QUEUE"),
        (&slow, &slow_workers, "IN_PROGRESS"),
    ] {
        let provider = RunPodProvider::start(runpod("runpod", fake, 1)).unwrap();
        let (dispatcher, _data) = engine(vec![Arc::new(provider)]).await;
        let job = dispatcher
            .submit(JobSpec::new(user("carol"), coloured(7, "c")))
            .await
            .unwrap();
        eventually(&format!("the job to be {state} at RunPod"), async || {
            fake.jobs().values().any(|j| j.status == state)
                && (state == "IN_QUEUE" || workers[0].stats().prompts_accepted == 1)
        })
        .await;
        dispatcher.cancel(job.id, "changed my mind").await.unwrap();
        wait_all(&dispatcher, &[job.id]).await;
        let cancelled = dispatcher.get(job.id).await.unwrap().unwrap();
        assert!(
            matches!(cancelled.state, JobState::Cancelled { .. }),
            "{:?}",
            cancelled.state
        );
        eventually("RunPod to cancel the job", async || {
            fake.jobs()
                .values()
                .all(|j| j.cancel_asked && j.status == "CANCELLED")
        })
        .await;
        if state == "IN_QUEUE" {
            assert_eq!(workers[0].stats().prompts_accepted, 0, "a cancelled job ran");
        } else {
            eventually("the ComfyUI to be interrupted", async || {
                workers[0].stats().interrupted == 1
            })
            .await;
        }
        assert_eq!(fake.jobs().len(), 1);
        dispatcher.shutdown(Duration::from_secs(5)).await;
    }
}

/// A node error in the worker's ComfyUI reaches the owner as a node error with the worker's words and
/// the failing node, and is not retried; a workflow the worker refuses is a validation error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_job_reaches_the_user_with_the_workers_reason() {
    let workers = sims(1, Duration::from_millis(20), true).await;
    let fake = endpoint(&workers, Options::default()).await;
    let provider = RunPodProvider::start(runpod("runpod", &fake, 1)).unwrap();
    let (dispatcher, _data) = engine(vec![Arc::new(provider)]).await;
    let mut events = dispatcher.subscribe();
    let job = dispatcher
        .submit(JobSpec::new(user("dave"), coloured(1, "x")))
        .await
        .unwrap();
    let kinds = provider_support::until_terminal(&mut events, job.id).await;
    let failure = match kinds.last() {
        Some(EventKind::Failed { failure }) => failure.clone(),
        _ => panic!("{:#?}", names(&kinds)),
    };
    assert_eq!(failure.kind, FailureKind::NodeError, "{failure:?}");
    assert!(
        failure.message.contains("Simulated failure"),
        "{}",
        failure.message
    );
    assert!(failure.node_id.is_some(), "{failure:?}");
    let done = dispatcher.get(job.id).await.unwrap().unwrap();
    assert!(matches!(done.state, JobState::Failed { .. }), "{:?}", done.state);
    assert_eq!(done.attempts, 1);
    assert_eq!(fake.jobs().len(), 1, "a node error was retried");

    let broken = json!({"1": {"class_type": "NoSuchNode", "inputs": {}}});
    let job = dispatcher
        .submit(JobSpec::new(user("dave"), broken))
        .await
        .unwrap();
    let kinds = provider_support::until_terminal(&mut events, job.id).await;
    match kinds.last() {
        Some(EventKind::Failed { failure }) => {
            assert_eq!(failure.kind, FailureKind::Validation, "{failure:?}");
            assert!(failure.message.contains("NoSuchNode"), "{}", failure.message);
        }
        _ => panic!("{:#?}", names(&kinds)),
    }
    dispatcher.shutdown(Duration::from_secs(5)).await;
}

/// The first endpoint stays cold past its budget: the user sees "waiting for a GPU to start", the
/// RunPod job there is cancelled, the endpoint leaves rotation, and the retry succeeds on the next one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_start_past_its_budget_fails_over_to_the_next_endpoint() {
    let spot_workers = sims(1, Duration::from_millis(20), false).await;
    let spot_fake = endpoint(
        &spot_workers,
        Options {
            cold: Duration::from_secs(600),
            ..Options::default()
        },
    )
    .await;
    let warm_workers = sims(1, Duration::from_millis(20), false).await;
    let warm_fake = endpoint(&warm_workers, Options::default()).await;
    let spot = RunPodProvider::start(RunPodConfig {
        cold_start_timeout: Duration::from_millis(800),
        gate: GateConfig {
            failover_after: 1,
            cooldown: Duration::from_secs(600),
            ..GateConfig::default()
        },
        ..runpod("spot", &spot_fake, 1)
    })
    .unwrap();
    let warm = RunPodProvider::start(runpod("on-demand", &warm_fake, 1)).unwrap();
    let (dispatcher, _data) = engine(vec![Arc::new(spot), Arc::new(warm)]).await;
    let mut events = dispatcher.subscribe();
    let job = dispatcher
        .submit(JobSpec::new(user("erin"), coloured(3, "e")))
        .await
        .unwrap();
    let kinds = provider_support::until_terminal(&mut events, job.id).await;
    let waiting = kinds
        .iter()
        .position(|k| matches!(k, EventKind::Waiting { message } if message == WAITING_FOR_GPU));
    let retry = kinds.iter().position(|k| {
        matches!(k, EventKind::Retrying { failure, .. }
            if failure.kind == FailureKind::StartTimeout && failure.message.contains("cold-start budget"))
    });
    assert!(
        matches!((waiting, retry), (Some(w), Some(r)) if w < r),
        "{:#?}",
        names(&kinds)
    );
    assert!(
        matches!(kinds.last(), Some(EventKind::Succeeded { .. })),
        "{:#?}",
        names(&kinds)
    );
    let done = dispatcher.get(job.id).await.unwrap().unwrap();
    assert_eq!(done.provider.as_deref(), Some("on-demand"));
    eventually("the spot endpoint's job to be cancelled", async || {
        spot_fake
            .jobs()
            .values()
            .all(|j| j.cancel_asked && j.status == "CANCELLED")
    })
    .await;
    assert_eq!(spot_workers[0].stats().prompts_accepted, 0);
    assert_eq!(warm_fake.jobs().len(), 1);
    assert_eq!(warm_workers[0].stats().executed, 1);
    dispatcher.shutdown(Duration::from_secs(5)).await;
}
