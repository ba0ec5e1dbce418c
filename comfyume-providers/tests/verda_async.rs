//! `VerdaProvider` in async-inference mode, driven by the real `Dispatcher`, against a **fake** platform
//! with an async layer (internal FIFO, status, result, no replica affinity; see `platform_support`) in
//! front of two `comfyume agent`s, each beside its own **simulated** ComfyUI worker. The agents push live
//! messages to a job-scoped callback; here a small stand-in of the server's callback route hands them
//! to the provider's `CallbackHub`.

#![allow(clippy::unwrap_used)] // test code: a failed call is a failed test

mod platform_support;
mod provider_support;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use comfyume_core::{
    CallbackHub, Dispatcher, DispatcherConfig, EventKind, InferenceProvider, JobId, JobSpec, JobState,
    LocalDirSink, MemoryStore, OutputSink, SchedulerConfig, WAITING_FOR_GPU,
};
use comfyume_providers::agent::{Agent, AgentConfig};
use comfyume_providers::sim::{ExecTime, SimConfig, SimWorker};
use comfyume_providers::{ApiKey, AsyncConfig, Callbacks, VerdaConfig, VerdaMode, VerdaProvider};
use platform_support::FakePlatform;
use provider_support::{fixture, names, user};
use serde_json::{Value, json};

const KEY: &str = "platform-key";

/// A simulated ComfyUI with an agent beside it; returns the agent's URL.
async fn replica() -> (SimWorker, String) {
    let sim = SimWorker::start(
        SimConfig {
            exec_time: ExecTime::Fixed(Duration::from_millis(40)),
            ..SimConfig::default()
        },
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    let agent = Agent::new(AgentConfig {
        comfyui_url: sim.base_url(),
        ..AgentConfig::default()
    })
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let router = agent.router();
    tokio::spawn(async move { axum::serve(listener, router).await });
    tokio::spawn(async move { agent.prepare().await });
    (sim, url)
}

/// A stand-in of the comfyume server's callback route: `POST /api/v1/callbacks/{job}` with the job's
/// bearer token hands the messages to the hub.
async fn callback_route(hub: CallbackHub) -> String {
    async fn deliver(
        State(hub): State<CallbackHub>,
        Path(job): Path<String>,
        headers: HeaderMap,
        axum::Json(body): axum::Json<Value>,
    ) -> StatusCode {
        let token = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        let Ok(job) = job.parse::<uuid::Uuid>() else {
            return StatusCode::NOT_FOUND;
        };
        let messages = body["messages"].as_array().cloned().unwrap_or_default();
        match hub.deliver(JobId(job), token, messages) {
            Ok(()) => StatusCode::NO_CONTENT,
            Err(_) => StatusCode::UNAUTHORIZED,
        }
    }
    let app = axum::Router::new()
        .route("/api/v1/callbacks/{job}", axum::routing::post(deliver))
        .with_state(hub);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

struct Setup {
    dispatcher: Dispatcher,
    platform: FakePlatform,
    data: tempfile::TempDir,
    _sims: Vec<SimWorker>,
}

async fn setup(cold: Duration) -> Setup {
    let (sim_a, agent_a) = replica().await;
    let (sim_b, agent_b) = replica().await;
    let platform = FakePlatform::start(KEY, vec![agent_a, agent_b], cold).await;
    let hub = CallbackHub::new();
    let public_url = callback_route(hub.clone()).await;
    let mode = VerdaMode::Async(AsyncConfig {
        poll_interval: Duration::from_millis(50),
        callbacks: Some(Callbacks { hub, public_url }),
        ..AsyncConfig::default()
    });
    let provider = VerdaProvider::start(VerdaConfig {
        max_replicas: 2,
        waiting_after: Duration::from_millis(200),
        ..VerdaConfig::new(
            "verda-async",
            platform.url.clone(),
            Some(ApiKey::new(KEY).unwrap()),
            mode,
        )
    })
    .unwrap();
    let data = tempfile::tempdir().unwrap();
    let dispatcher = Dispatcher::new(
        Arc::new(MemoryStore::new()),
        Arc::new(LocalDirSink::new(data.path())) as Arc<dyn OutputSink>,
        vec![Arc::new(provider) as Arc<dyn InferenceProvider>],
        SchedulerConfig::default(),
        DispatcherConfig::default(),
    );
    dispatcher.start().await.unwrap();
    Setup {
        dispatcher,
        platform,
        data,
        _sims: vec![sim_a, sim_b],
    }
}

/// A job whose node reports steps: the agent's live `progress` messages reach comfyume's event bus
/// (what a user's WebSocket shows) before the job ends, and its six files land in the owner's space.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_progress_from_the_agent_reaches_the_event_bus() {
    let s = setup(Duration::ZERO).await;
    let mut events = s.dispatcher.subscribe();
    let job = s
        .dispatcher
        .submit(JobSpec::new(user("alice"), fixture("12_progress_colortransfer")))
        .await
        .unwrap();
    let kinds = provider_support::until_terminal(&mut events, job.id).await;
    let progress = kinds.iter().position(|k| matches!(k, EventKind::Progress { .. }));
    let done = kinds
        .iter()
        .position(|k| matches!(k, EventKind::Succeeded { .. }));
    assert!(
        matches!((progress, done), (Some(p), Some(d)) if p < d),
        "{:#?}",
        names(&kinds)
    );
    let job = s.dispatcher.get(job.id).await.unwrap().unwrap();
    assert_eq!(job.state, JobState::Succeeded);
    let files: Vec<_> = job.outputs.iter().filter(|o| !o.is_value()).collect();
    assert_eq!(files.len(), 6, "{:?}", job.outputs);
    for f in files {
        // The user's own subfolder: the job prefix is gone.
        assert!(!f.subfolder.contains("comfyume"), "{f:?}");
        let path = s
            .data
            .path()
            .join("users/alice/output")
            .join(job.id.to_string())
            .join(&f.subfolder)
            .join(&f.filename);
        assert!(path.is_file(), "{}", path.display());
    }
}

/// Ten jobs of five users through the platform's own queue onto whichever replica is free: each ends
/// with its own image, in its owner's space, and both replicas did work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_of_several_users_go_through_the_platform_queue_without_affinity() {
    let s = setup(Duration::ZERO).await;
    let mut colors = HashMap::new();
    for n in 0..10u32 {
        let color = 0x10_20_30 + n;
        let wf = json!({
            "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": color}},
            "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "mine/img"}}
        });
        let owner = format!("user{}", n % 5);
        let job = s.dispatcher.submit(JobSpec::new(user(&owner), wf)).await.unwrap();
        colors.insert(job.id, (owner, color));
    }
    let ids: Vec<JobId> = colors.keys().copied().collect();
    provider_support::eventually("every job to end", async || {
        let mut open = 0;
        for id in &ids {
            if !s.dispatcher.get(*id).await.unwrap().unwrap().state.is_terminal() {
                open += 1;
            }
        }
        open == 0
    })
    .await;
    for (id, (owner, color)) in &colors {
        let job = s.dispatcher.get(*id).await.unwrap().unwrap();
        assert_eq!(job.state, JobState::Succeeded, "{:?}", job.state);
        assert_eq!(job.outputs.len(), 1);
        let o = &job.outputs[0];
        assert_eq!(o.subfolder, "mine");
        let path = s
            .data
            .path()
            .join("users")
            .join(owner)
            .join("output")
            .join(id.to_string())
            .join(&o.subfolder)
            .join(&o.filename);
        let px = image::open(&path).unwrap().to_rgb8().get_pixel(0, 0).0;
        let got = (u32::from(px[0]) << 16) | (u32::from(px[1]) << 8) | u32::from(px[2]);
        assert_eq!(got, *color, "job {id} holds another job's image");
    }
    let ran = s.platform.ran();
    assert_eq!(ran.len(), 10, "{ran:?}");
    assert!(
        ran.iter().any(|(_, r)| *r == 0) && ran.iter().any(|(_, r)| *r == 1),
        "{ran:?}"
    );
}

/// A platform that starts cold: the job says "waiting for a GPU to start" first, then live progress,
/// then it succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_platform_shows_waiting_then_progress() {
    let s = setup(Duration::from_millis(1200)).await;
    let mut events = s.dispatcher.subscribe();
    let job = s
        .dispatcher
        .submit(JobSpec::new(user("carol"), fixture("12_progress_colortransfer")))
        .await
        .unwrap();
    let kinds = provider_support::until_terminal(&mut events, job.id).await;
    let waiting = kinds
        .iter()
        .position(|k| matches!(k, EventKind::Waiting { message } if message == WAITING_FOR_GPU));
    let progress = kinds.iter().position(|k| matches!(k, EventKind::Progress { .. }));
    assert!(
        matches!((waiting, progress), (Some(w), Some(p)) if w < p),
        "{:#?}",
        names(&kinds)
    );
    assert!(
        matches!(kinds.last(), Some(EventKind::Succeeded { .. })),
        "{:#?}",
        names(&kinds)
    );
}

/// The agent's `/health`: starting (503) until its ComfyUI answers and the warm-up ran, ready (200),
/// busy (200) while a workflow runs, stopping (503) after SIGTERM while the running job still finishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_health_follows_the_platform_contract() {
    let sim = SimWorker::start(
        SimConfig {
            exec_time: ExecTime::Fixed(Duration::from_millis(1500)),
            ..SimConfig::default()
        },
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    let warmup = json!({
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
        "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}
    });
    let agent = Agent::new(AgentConfig {
        comfyui_url: sim.base_url(),
        warmup: Some(warmup),
        ..AgentConfig::default()
    })
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let router = agent.router();
    tokio::spawn(async move { axum::serve(listener, router).await });
    let http = reqwest::Client::new();
    let health = async || {
        let r = http.get(format!("{url}/health")).send().await.unwrap();
        let code = r.status().as_u16();
        let body: Value = r.json().await.unwrap();
        (code, body["status"].as_str().unwrap_or_default().to_string())
    };
    assert_eq!(health().await, (503, "starting".to_string()));
    let preparing = agent.clone();
    let prepared = tokio::spawn(async move { preparing.prepare().await });
    // The warm-up runs through the (slow) simulated worker: still starting meanwhile.
    provider_support::eventually("the warm-up to start", async || sim.stats().prompts_accepted == 1).await;
    assert_eq!(health().await, (503, "starting".to_string()));
    prepared.await.unwrap();
    assert_eq!(health().await, (200, "ready".to_string()));

    let job = uuid::Uuid::new_v4().to_string();
    let body = json!({"job_id": job, "workflow": fixture("01_empty_save")});
    let run = tokio::spawn({
        let http = http.clone();
        let url = url.clone();
        async move {
            http.post(format!("{url}/comfyume/run"))
                .json(&body)
                .send()
                .await
                .unwrap()
        }
    });
    provider_support::eventually("the agent to be busy", async || health().await.1 == "busy").await;
    agent.stopping();
    assert_eq!(health().await, (503, "stopping".to_string()));
    // The job it had taken still finishes, with its file inline.
    let answer: Value = run.await.unwrap().json().await.unwrap();
    assert_eq!(answer["status"], "success", "{answer}");
    assert_eq!(answer["files"].as_array().map(Vec::len), Some(1), "{answer}");
}
