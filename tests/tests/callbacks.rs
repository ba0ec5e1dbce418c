//! The server's callback route end to end: a real comfyume server (`build_with_callbacks` + `serve`) over
//! a `VerdaProvider` in async-inference mode, in front of a **fake** serverless platform (a test tool:
//! internal FIFO, status and result paths, no replica affinity; shared with the provider tests) and two
//! `comfyume agent`s, each beside its own **simulated** ComfyUI worker. The agents push live progress to
//! `<server>/api/v1/callbacks/<job>` with the job's token; the user follows the job on `/api/v1/events`.
//! And the route's refusals: no token, another job's token, an ended job, oversized or malformed bodies.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../../comfyume-providers/tests/platform_support/mod.rs"]
mod platform_support;
mod support;

use std::sync::Arc;
use std::time::Duration;

use comfyume_core::{CallbackHub, InferenceProvider, JobId};
use comfyume_providers::agent::{Agent, AgentConfig};
use comfyume_providers::sim::{ExecTime, SimConfig, SimWorker};
use comfyume_providers::{ApiKey, AsyncConfig, Callbacks, VerdaConfig, VerdaMode, VerdaProvider};
use comfyume_server::config::{ServerConfig, StoreBackend};
use platform_support::FakePlatform;
use reqwest::StatusCode;
use serde_json::{Value, json};
use support::{Api, Events, config, credentials, fixture};
use tokio::sync::oneshot;

const KEY: &str = "platform-key-for-callback-tests";

/// A simulated ComfyUI with an agent beside it; returns the agent's URL.
async fn replica() -> (SimWorker, String) {
    let sim = SimWorker::start(
        SimConfig {
            exec_time: ExecTime::Fixed(Duration::from_millis(60)),
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

/// A served comfyume server; stops when dropped (the test's runtime ends with it).
struct Served {
    url: String,
    hub: CallbackHub,
    _stop: oneshot::Sender<()>,
}

/// Binds a port, lets `providers` make the providers for that address (the callback base, as
/// `comfyume serve` does) and serves a server built over them with one shared hub.
async fn serve(
    config: ServerConfig,
    providers: impl FnOnce(&Callbacks) -> Vec<Arc<dyn InferenceProvider>>,
) -> Served {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let callbacks = Callbacks {
        public_url: config.callback_base(addr),
        hub: CallbackHub::new(),
    };
    let providers = providers(&callbacks);
    let state = comfyume_server::build_with_callbacks(config, providers, callbacks.hub.clone())
        .await
        .unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(comfyume_server::serve(listener, state, async move {
        let _ = stopped.await;
    }));
    Served {
        url: format!("http://{addr}"),
        hub: callbacks.hub,
        _stop: stop,
    }
}

/// A job whose node reports steps runs on a serverless deployment: the agent's progress, pushed to the
/// server's callback route, reaches the owner's event stream before the job succeeds with its files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_progress_reaches_the_users_event_stream() {
    let (_sim_a, agent_a) = replica().await;
    let (_sim_b, agent_b) = replica().await;
    let platform = FakePlatform::start(KEY, vec![agent_a, agent_b], Duration::ZERO).await;
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), StoreBackend::Sqlite);
    let tokens = credentials(&config);
    let server = serve(config, |callbacks| {
        let mode = VerdaMode::Async(AsyncConfig {
            poll_interval: Duration::from_millis(50),
            callbacks: Some(callbacks.clone()),
            ..AsyncConfig::default()
        });
        let provider = VerdaProvider::start(VerdaConfig {
            max_replicas: 2,
            ..VerdaConfig::new(
                "verda-async",
                platform.url.clone(),
                Some(ApiKey::new(KEY).unwrap()),
                mode,
            )
        })
        .unwrap();
        vec![Arc::new(provider) as Arc<dyn InferenceProvider>]
    })
    .await;
    let api = Api::new(&server.url);
    let mut alice = Events::open(&server.url, &tokens["alice"], "").await;

    let id = api
        .submit(&tokens["alice"], &fixture("12_progress_colortransfer"))
        .await;
    let (end, before) = alice.until_terminal(&id).await;
    let kinds: Vec<&str> = before.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(end["type"], "succeeded", "{end} after {kinds:?}");
    let progress: Vec<&Value> = before.iter().filter(|e| e["type"] == "progress").collect();
    assert!(!progress.is_empty(), "no live progress: {kinds:?}");
    // The simulated node counts its six frames; what the agent pushed is what the user saw.
    assert!(
        progress.iter().all(|p| p["node"] == "4" && p["max"] == 6),
        "{progress:?}"
    );
    assert_eq!(progress.last().unwrap()["value"], 6, "{progress:?}");
    let started = kinds.iter().position(|k| *k == "started").unwrap();
    let first_progress = kinds.iter().position(|k| *k == "progress").unwrap();
    assert!(started < first_progress, "{kinds:?}");
    assert_eq!(end["outputs"].as_array().map(Vec::len), Some(6), "{end}");
    // Once the job ended, its token is worthless.
    assert!(server.hub.deliver(id.parse().unwrap(), "any", vec![]).is_err());
    alice.close().await;
}

/// What a worker sends: `POST /api/v1/callbacks/{job}` with a bearer token and a raw body.
async fn post(url: &str, job: &str, token: Option<&str>, body: Vec<u8>) -> (StatusCode, Value) {
    let mut request = reqwest::Client::new()
        .post(format!("{url}/api/v1/callbacks/{job}"))
        .header("content-type", "application/json")
        .body(body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

fn batch(messages: Value) -> Vec<u8> {
    serde_json::to_vec(&json!({ "messages": messages })).unwrap()
}

/// Every refusal says why, with a JSON error, and delivers nothing; the right token delivers exactly
/// what was sent; an ended attempt's token is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_callback_route_refuses_what_is_not_the_jobs_own_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path(), StoreBackend::Memory);
    let tokens = credentials(&config);
    let server = serve(config, |_| Vec::new()).await;
    let url = server.url.as_str();
    let (job_a, job_b) = (JobId::new(), JobId::new());
    let mut a = server.hub.register(job_a);
    let mut b = server.hub.register(job_b);
    let (a_id, b_id) = (job_a.to_string(), job_b.to_string());
    let unknown = JobId::new().to_string();
    let progress = json!([{"type": "progress", "data": {"node": "3", "value": 1, "max": 4}}]);

    // What is tried, on which job, with which token and body, and the answer it must get.
    type Refusal<'a> = (&'a str, &'a str, Option<&'a str>, Vec<u8>, StatusCode);
    let refusals: Vec<Refusal<'_>> = vec![
        (
            "no token",
            &a_id,
            None,
            batch(progress.clone()),
            StatusCode::UNAUTHORIZED,
        ),
        (
            "a user's API token",
            &a_id,
            Some(tokens["alice"].as_str()),
            batch(progress.clone()),
            StatusCode::FORBIDDEN,
        ),
        (
            "another job's token",
            &a_id,
            Some(b.token.as_str()),
            batch(progress.clone()),
            StatusCode::FORBIDDEN,
        ),
        (
            "a job that takes no messages",
            &unknown,
            Some(a.token.as_str()),
            batch(progress.clone()),
            StatusCode::NOT_FOUND,
        ),
        (
            "not a job id",
            "not-a-uuid",
            Some(a.token.as_str()),
            batch(progress.clone()),
            StatusCode::BAD_REQUEST,
        ),
        (
            "not JSON",
            &a_id,
            Some(a.token.as_str()),
            b"{\"messages\": [".to_vec(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "a message without a type",
            &a_id,
            Some(a.token.as_str()),
            batch(json!([{"type": "progress", "data": {}}, {"data": {}}])),
            StatusCode::BAD_REQUEST,
        ),
        (
            "something else than a batch",
            &a_id,
            Some(a.token.as_str()),
            serde_json::to_vec(&json!({"progress": 1})).unwrap(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "a body over the limit",
            &a_id,
            Some(a.token.as_str()),
            batch(json!([{"type": "progress", "data": {"pad": "x".repeat(300 * 1024)}}])),
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
    ];
    for (what, job, token, body, want) in refusals {
        let (status, answer) = post(url, job, token, body).await;
        assert_eq!(status, want, "{what}: {answer}");
        assert!(
            answer["code"].is_string() && answer["message"].is_string(),
            "{what}: {answer}"
        );
        if let Some(token) = token {
            assert!(
                !answer.to_string().contains(token),
                "{what}: the answer quotes the token"
            );
        }
    }
    // Nothing of the refused requests reached either job.
    assert!(a.messages.try_recv().is_err());
    assert!(b.messages.try_recv().is_err());

    let (status, answer) = post(url, &a_id, Some(&a.token), batch(progress.clone())).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{answer}");
    assert_eq!(a.messages.try_recv().unwrap(), progress[0]);
    assert!(a.messages.try_recv().is_err() && b.messages.try_recv().is_err());

    // The attempt ended: its token no longer delivers anything.
    let old = a.token.clone();
    drop(a);
    let (status, _) = post(url, &a_id, Some(&old), batch(progress.clone())).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = post(url, &b_id, Some(&b.token), batch(progress)).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert!(b.messages.try_recv().is_ok());
}
