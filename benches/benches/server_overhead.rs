//! What the whole comfyume server path adds to a job's latency, against the **simulated** ComfyUI worker
//! at 0 ms execution time (so the figures are protocol, queue, store and bookkeeping cost, no inference).
//!
//! The same workflow (`01_empty_save`), 1 000 jobs each, interleaved:
//! (a) direct: `POST /prompt` to the worker with a `client_id`, wait on that websocket for
//!     `execution_success`, `GET /view` of the output — the least any client can do;
//! (b) via the server, SQLite store (the default, `synchronous = normal`): `POST /api/v1/jobs`, wait for
//!     `succeeded` on `/api/v1/events`, download the output from `/api/v1/jobs/{id}/outputs/0`;
//! (c) the same with the in-memory store.
//!
//! The servers are `comfyume_server::build` + `serve` on loopback in this process, logging at `info` into
//! a sink (so log formatting is paid for, as in production). Prints p50 / p99 / mean and the added
//! latency. Goal: ≤ 5 ms added at p50.
//! Run: `cargo bench -p comfyume-benches --bench server_overhead`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use comfyume_core::{InferenceProvider, JobId, UserId};
use comfyume_providers::sim::{ExecTime, SimConfig, SimWorker};
use comfyume_providers::{ComfyUiConfig, ComfyUiProvider};
use comfyume_server::auth::credentials::Credentials;
use comfyume_server::config::{ServerConfig, StoreBackend};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const JOBS: usize = 1_000;
const WARMUP: usize = 50;
const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../examples/workflows/01_empty_save.json"
);

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

fn fail(what: &str, e: impl std::fmt::Display) -> ! {
    panic!("server_overhead: {what}: {e}")
}

fn workflow(template: &Value, prefix: &str) -> Value {
    let mut w = template.clone();
    w["2"]["inputs"]["filename_prefix"] = json!(prefix);
    w
}

async fn next_json(ws: &mut Ws) -> Value {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => {
                return serde_json::from_str(text.as_str()).unwrap_or_else(|e| fail("ws message", e));
            }
            Some(Ok(_)) => continue,
            other => fail("websocket", format!("{other:?}")),
        }
    }
}

/// (a) One job straight against the worker.
async fn direct(
    http: &reqwest::Client,
    ws: &mut Ws,
    base: &str,
    client_id: &str,
    template: &Value,
) -> Duration {
    let id = JobId::new().to_string();
    let prompt = workflow(template, &format!("bench/{id}/empty"));
    let t = Instant::now();
    let body = json!({"prompt": prompt, "client_id": client_id, "prompt_id": id});
    let response = http
        .post(format!("{base}/prompt"))
        .json(&body)
        .send()
        .await
        .unwrap_or_else(|e| fail("POST /prompt", e));
    assert!(
        response.status().is_success(),
        "POST /prompt: {}",
        response.status()
    );
    let mut file: Option<Value> = None;
    loop {
        let m = next_json(ws).await;
        if m["data"]["prompt_id"] != id.as_str() {
            continue;
        }
        match m["type"].as_str() {
            Some("executed") => file = Some(m["data"]["output"]["images"][0].clone()),
            Some("execution_success") => break,
            Some("execution_error") => fail("job", &m),
            _ => {}
        }
    }
    let file = file.unwrap_or_else(|| fail("job", "no executed output"));
    let bytes = http
        .get(format!("{base}/view"))
        .query(&[
            ("filename", file["filename"].as_str().unwrap_or_default()),
            ("subfolder", file["subfolder"].as_str().unwrap_or_default()),
            ("type", "output"),
        ])
        .send()
        .await
        .unwrap_or_else(|e| fail("GET /view", e))
        .bytes()
        .await
        .unwrap_or_else(|e| fail("GET /view body", e));
    assert!(!bytes.is_empty());
    t.elapsed()
}

/// A comfyume server on loopback over one `ComfyUiProvider` of the worker; its URL, the user's token
/// and the user's open event stream.
async fn server(base: &str, backend: StoreBackend, dir: &std::path::Path) -> (String, String, Ws) {
    let mut config = ServerConfig {
        data_dir: dir.to_path_buf(),
        shutdown_grace_secs: 0,
        ..ServerConfig::default()
    };
    config.store.backend = backend;
    config.scheduler.max_queued_per_user = None;
    let mut creds = Credentials::new().with_cost(4);
    let user = UserId::new("bench").unwrap_or_else(|e| fail("user", e));
    creds
        .add_user(&user, "bench-password", false)
        .unwrap_or_else(|e| fail("user", e));
    let token = creds
        .issue_token(&user, "bench")
        .unwrap_or_else(|e| fail("token", e));
    creds
        .save(&config.credentials_path())
        .unwrap_or_else(|e| fail("credentials", e));
    let provider = ComfyUiProvider::start(ComfyUiConfig::with_urls([base.to_string()]))
        .await
        .unwrap_or_else(|e| fail("provider", e));
    let providers: Vec<Arc<dyn InferenceProvider>> = vec![Arc::new(provider)];
    let state = comfyume_server::build(config, providers)
        .await
        .unwrap_or_else(|e| fail("build", e));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| fail("bind", e));
    let url = format!(
        "http://{}",
        listener.local_addr().unwrap_or_else(|e| fail("addr", e))
    );
    tokio::spawn(comfyume_server::serve(listener, state, std::future::pending()));
    let mut request = format!("{}/api/v1/events", url.replace("http://", "ws://"))
        .into_client_request()
        .unwrap_or_else(|e| fail("ws url", e));
    let value = format!("Bearer {token}")
        .parse()
        .unwrap_or_else(|e| fail("header", e));
    request.headers_mut().insert("authorization", value);
    let (mut ws, _) = tokio_tungstenite::connect_async(request)
        .await
        .unwrap_or_else(|e| fail("events ws", e));
    let hello = next_json(&mut ws).await;
    assert_eq!(hello["type"], "hello", "{hello}");
    (url, token, ws)
}

/// (b), (c) One job through the server: submit, `succeeded` on the event stream, download.
async fn via_server(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    ws: &mut Ws,
    template: &Value,
) -> Duration {
    let t = Instant::now();
    let response = http
        .post(format!("{url}/api/v1/jobs"))
        .bearer_auth(token)
        .json(&json!({"prompt": template}))
        .send()
        .await
        .unwrap_or_else(|e| fail("POST /api/v1/jobs", e));
    assert_eq!(response.status(), reqwest::StatusCode::CREATED);
    let job: Value = response.json().await.unwrap_or_else(|e| fail("job view", e));
    let id = job["id"]
        .as_str()
        .unwrap_or_else(|| fail("job view", &job))
        .to_string();
    loop {
        let m = next_json(ws).await;
        if m["job_id"] != id.as_str() {
            continue;
        }
        match m["type"].as_str() {
            Some("succeeded") => break,
            Some("failed" | "cancelled") => fail("job", &m),
            _ => {}
        }
    }
    let bytes = http
        .get(format!("{url}/api/v1/jobs/{id}/outputs/0"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap_or_else(|e| fail("download", e))
        .bytes()
        .await
        .unwrap_or_else(|e| fail("download body", e));
    assert!(bytes.starts_with(b"\x89PNG"), "an output PNG");
    t.elapsed()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn report(name: &str, samples: &mut [Duration]) -> (Duration, Duration) {
    samples.sort();
    let mean = samples.iter().sum::<Duration>() / samples.len() as u32;
    let (p50, p99) = (percentile(samples, 0.50), percentile(samples, 0.99));
    println!(
        "{name:<44} n={:<5} p50 {:>8.3} ms   p99 {:>8.3} ms   mean {:>8.3} ms",
        samples.len(),
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3,
        mean.as_secs_f64() * 1e3
    );
    (p50, p99)
}

fn main() {
    // Request logs at `info`, formatted and thrown away: the server pays what it pays in production.
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
        .with_writer(std::io::sink)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap_or_else(|e| fail("runtime", e));
    runtime.block_on(async {
        let template: Value =
            serde_json::from_slice(&std::fs::read(FIXTURE).unwrap_or_else(|e| fail(FIXTURE, e)))
                .unwrap_or_else(|e| fail("fixture", e));
        let config = SimConfig {
            exec_time: ExecTime::Fixed(Duration::ZERO),
            ..SimConfig::default()
        };
        let addr = "127.0.0.1:0".parse().unwrap_or_else(|e| fail("addr", e));
        let worker = SimWorker::start(config, addr)
            .await
            .unwrap_or_else(|e| fail("sim", e));
        let base = worker.base_url();
        let http = reqwest::Client::builder()
            .tcp_nodelay(true)
            .build()
            .unwrap_or_else(|e| fail("http", e));
        let client_id = "benchdirect";
        let (mut ws, _) = tokio_tungstenite::connect_async(format!(
            "{}/ws?clientId={client_id}",
            base.replace("http", "ws")
        ))
        .await
        .unwrap_or_else(|e| fail("ws", e));
        ws.send(Message::text(r#"{"type":"feature_flags","data":{}}"#))
            .await
            .unwrap_or_else(|e| fail("ws send", e));

        let (sqlite_dir, memory_dir) = (
            tempfile::tempdir().unwrap_or_else(|e| fail("tempdir", e)),
            tempfile::tempdir().unwrap_or_else(|e| fail("tempdir", e)),
        );
        let (s_url, s_token, mut s_ws) = server(&base, StoreBackend::Sqlite, sqlite_dir.path()).await;
        let (m_url, m_token, mut m_ws) = server(&base, StoreBackend::Memory, memory_dir.path()).await;

        let (mut a, mut b, mut c) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..WARMUP + JOBS {
            let da = direct(&http, &mut ws, &base, client_id, &template).await;
            let db = via_server(&http, &s_url, &s_token, &mut s_ws, &template).await;
            let dc = via_server(&http, &m_url, &m_token, &mut m_ws, &template).await;
            if i >= WARMUP {
                a.push(da);
                b.push(db);
                c.push(dc);
            }
        }
        println!(
            "server_overhead: 01_empty_save on the simulated worker at 0 ms execution, {JOBS} jobs each"
        );
        let (a50, a99) = report("(a) direct: POST /prompt + ws + /view", &mut a);
        let (b50, b99) = report("(b) server, SQLite: POST + events + download", &mut b);
        let (c50, c99) = report("(c) server, memory: POST + events + download", &mut c);
        let added = |x: Duration, y: Duration| (x.as_secs_f64() - y.as_secs_f64()) * 1e3;
        println!(
            "added by the server (SQLite): p50 {:+.3} ms, p99 {:+.3} ms (goal: ≤ 5 ms at p50)",
            added(b50, a50),
            added(b99, a99)
        );
        println!(
            "added by the server (memory): p50 {:+.3} ms, p99 {:+.3} ms",
            added(c50, a50),
            added(c99, a99)
        );
        worker.shutdown().await;
    });
}
