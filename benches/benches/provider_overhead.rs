//! What `ComfyUiProvider` adds to a job's latency, against the **simulated** ComfyUI worker at 0 ms
//! execution time (so the figures are protocol and bookkeeping cost only, no inference).
//!
//! The same workflow (`01_empty_save`, a fresh `filename_prefix` per job so nothing is served from
//! ComfyUI's cache on either path), 1 000 jobs each, alternating between:
//! (a) direct: `POST /prompt` with a `client_id`, wait on that websocket for `execution_success`, `GET
//!     /view` of the output — the least any client can do;
//! (b) provider: `ComfyUiProvider::submit` → the event stream → every artifact received → `Completed`.
//!
//! Prints p50 / p99 / mean of both and the added latency. Goal: ≤ 2 ms added at p50.
//! Run: `cargo bench -p comfyume-benches --bench provider_overhead`.

use std::time::{Duration, Instant};

use comfyume_core::{InferenceProvider, Job, JobId, JobSpec, JobState, ProviderEvent, Timestamp, UserId};
use comfyume_providers::sim::{ExecTime, SimConfig, SimWorker};
use comfyume_providers::{ComfyUiConfig, ComfyUiProvider};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

const JOBS: usize = 1_000;
const WARMUP: usize = 50;
const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../examples/workflows/01_empty_save.json"
);

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

fn fail(what: &str, e: impl std::fmt::Display) -> ! {
    panic!("provider_overhead: {what}: {e}")
}

fn workflow(template: &Value, prefix: &str) -> Value {
    let mut w = template.clone();
    w["2"]["inputs"]["filename_prefix"] = json!(prefix);
    w
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
        let text = match ws.next().await {
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(_)) => continue,
            other => fail("websocket", format!("{other:?}")),
        };
        let m: Value = serde_json::from_str(text.as_str()).unwrap_or_else(|e| fail("ws message", e));
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

fn job(owner: &UserId, template: &Value) -> Job {
    let id = JobId::new();
    Job {
        id,
        spec: JobSpec {
            id: Some(id),
            ..JobSpec::new(owner.clone(), workflow(template, "gw/empty"))
        },
        state: JobState::Leased,
        seq: 0,
        attempts: 1,
        stalls: 0,
        cancel_requested: false,
        not_before: None,
        provider: None,
        created_at: Timestamp::now(),
        started_at: None,
        finished_at: None,
        outputs: Vec::new(),
    }
}

/// (b) One job through the provider, until every artifact and the completion arrived.
async fn through_provider(provider: &ComfyUiProvider, job: &Job) -> Duration {
    let t = Instant::now();
    let mut stream = provider.submit(job).await.unwrap_or_else(|e| fail("submit", e));
    let mut artifacts = 0;
    while let Some(event) = stream.next().await {
        match event {
            ProviderEvent::Artifact(a) => {
                assert!(!a.data.is_empty());
                artifacts += 1;
            }
            ProviderEvent::Completed => break,
            ProviderEvent::Failed(f) => fail("job", f),
            _ => {}
        }
    }
    assert_eq!(artifacts, 1);
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
        "{name:<38} n={:<5} p50 {:>8.3} ms   p99 {:>8.3} ms   mean {:>8.3} ms",
        samples.len(),
        p50.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3,
        mean.as_secs_f64() * 1e3
    );
    (p50, p99)
}

fn main() {
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

        let provider = ComfyUiProvider::start(ComfyUiConfig::with_urls([base.clone()]))
            .await
            .unwrap_or_else(|e| fail("provider", e));
        let owner = UserId::new("bench").unwrap_or_else(|e| fail("user", e));

        let (mut a, mut b) = (Vec::with_capacity(JOBS), Vec::with_capacity(JOBS));
        for i in 0..WARMUP + JOBS {
            let da = direct(&http, &mut ws, &base, client_id, &template).await;
            let db = through_provider(&provider, &job(&owner, &template)).await;
            if i >= WARMUP {
                a.push(da);
                b.push(db);
            }
        }
        println!(
            "provider_overhead: 01_empty_save on the simulated worker at 0 ms execution, {JOBS} jobs each"
        );
        let (a50, a99) = report("(a) direct: POST + ws + /view", &mut a);
        let (b50, b99) = report("(b) ComfyUiProvider: submit → artifacts", &mut b);
        let added = |x: Duration, y: Duration| (x.as_secs_f64() - y.as_secs_f64()) * 1e3;
        println!(
            "added by ComfyUiProvider: p50 {:+.3} ms, p99 {:+.3} ms (goal: ≤ 2 ms at p50)",
            added(b50, a50),
            added(b99, a99)
        );
        worker.shutdown().await;
    });
}
