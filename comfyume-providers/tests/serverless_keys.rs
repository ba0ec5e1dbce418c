//! The platform API key of a serverless provider never shows up in a log line, an error message or a
//! `Debug` print — not even when the platform answers with an error page that echoes the request's
//! headers, or a worker's error that quotes them. Against stand-in platforms on loopback (test tools, not
//! Verda or RunPod).

#![allow(clippy::unwrap_used)] // test code: a failed call is a failed test

mod runpod_support;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::HeaderMap;
use comfyume_core::{InferenceProvider, Job, JobId, JobSpec, JobState, ProviderEvent, Timestamp, UserId};
use comfyume_providers::sim::{SimConfig, SimWorker};
use comfyume_providers::{
    ApiKey, RunPodConfig, RunPodProvider, SharedDirConfig, VerdaConfig, VerdaMode, VerdaProvider,
};
use futures::StreamExt;
use runpod_support::{ENDPOINT, FakeRunPod, Options};
use serde_json::json;

const KEY: &str = "sk-live-0123456789abcdef-SECRET";

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

fn job() -> Job {
    let id = JobId::new();
    let workflow = json!({
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "k/img"}}
    });
    Job {
        id,
        spec: JobSpec {
            id: Some(id),
            ..JobSpec::new(UserId::new("alice").unwrap(), workflow)
        },
        state: JobState::Leased,
        seq: 1,
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

/// A platform whose every answer is an error page quoting the request's `Authorization` header.
async fn echoing_platform(status: u16, seen: Arc<Mutex<Vec<String>>>) -> String {
    let app = axum::Router::new().fallback(move |headers: HeaderMap| {
        let seen = Arc::clone(&seen);
        async move {
            let auth = headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            seen.lock().unwrap().push(auth.clone());
            let body = json!({"error": format!("gateway trouble; your request had Authorization: {auth}")});
            (
                axum::http::StatusCode::from_u16(status).unwrap(),
                axum::Json(body),
            )
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/my-deployment", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

async fn run_once(url: String, shared: &std::path::Path) -> (String, String) {
    let provider = VerdaProvider::start(VerdaConfig {
        request_timeout: Duration::from_secs(5),
        ..VerdaConfig::new(
            "verda",
            url,
            Some(ApiKey::new(KEY).unwrap()),
            VerdaMode::SharedDir(SharedDirConfig::new(shared)),
        )
    })
    .unwrap();
    let job = job();
    let mut stream = provider.submit(&job).await.unwrap();
    let mut failure = None;
    while let Some(event) = stream.next().await {
        if let ProviderEvent::Failed(f) = event {
            failure = Some(f);
        }
    }
    let failure = failure.expect("the job fails");
    let _ = provider.cancel(job.id).await;
    let printed = format!(
        "{failure} {} {:?} {provider:?} {:?}",
        failure.details,
        failure,
        provider.config()
    );
    (failure.message, printed)
}

#[test]
fn the_api_key_never_reaches_logs_errors_or_debug_output() {
    let logs = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(logs.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let shared = tempfile::tempdir().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut texts = Vec::new();
    rt.block_on(async {
        for status in [502, 401, 400] {
            let url = echoing_platform(status, Arc::clone(&seen)).await;
            let (message, printed) = run_once(url, shared.path()).await;
            // The platform's own words come through, the key does not.
            assert!(message.contains("gateway trouble"), "{status}: {message}");
            texts.push(printed);
        }
        // Nobody listening at all.
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/gone", closed.local_addr().unwrap());
        drop(closed);
        texts.push(run_once(url, shared.path()).await.1);
    });
    // The key was really sent (so not finding it below means something).
    let seen = seen.lock().unwrap().clone();
    assert!(
        !seen.is_empty() && seen.iter().all(|a| a == &format!("Bearer {KEY}")),
        "{seen:?}"
    );
    let logs = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(
        !logs.is_empty(),
        "nothing was logged: the check would prove nothing"
    );
    for text in texts.iter().chain(std::iter::once(&logs)) {
        assert!(!text.contains(KEY), "the key leaked: {text}");
        assert!(
            !text.contains("0123456789abcdef"),
            "part of the key leaked: {text}"
        );
    }
}

/// One job on a RunPod endpoint at `base`: how it ended (the failure's message, if any) and everything
/// printable about it.
async fn run_on_runpod(base: String) -> (Option<String>, String) {
    let provider = RunPodProvider::start(RunPodConfig {
        base_url: base,
        poll_interval: Duration::from_millis(30),
        request_timeout: Duration::from_secs(5),
        ..RunPodConfig::new("runpod", ENDPOINT, Some(ApiKey::new(KEY).unwrap()))
    })
    .unwrap();
    let job = job();
    let mut stream = provider.submit(&job).await.unwrap();
    let mut failure = None;
    let mut completed = false;
    while let Some(event) = stream.next().await {
        match event {
            ProviderEvent::Failed(f) => failure = Some(f),
            ProviderEvent::Completed => completed = true,
            _ => {}
        }
    }
    let _ = provider.cancel(job.id).await;
    let printed = match &failure {
        Some(f) => format!("{f} {} {f:?} {provider:?} {:?}", f.details, provider.config()),
        None => format!("{provider:?} {:?}", provider.config()),
    };
    assert!(
        completed || failure.is_some(),
        "the job neither completed nor failed"
    );
    (failure.map(|f| f.message), printed)
}

#[test]
fn the_runpod_key_never_reaches_logs_errors_or_debug_output() {
    let logs = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(logs.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut texts = Vec::new();
    let mut seen = Vec::new();
    rt.block_on(async {
        let sim = SimWorker::start(SimConfig::default(), "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        // A working endpoint (the key is sent and accepted), error pages that quote it, a worker whose
        // error quotes it.
        for (options, says) in [
            (Options::default(), None),
            (
                Options {
                    echo_key: Some(502),
                    ..Options::default()
                },
                Some("gateway trouble"),
            ),
            (
                Options {
                    echo_key: Some(401),
                    ..Options::default()
                },
                Some("gateway trouble"),
            ),
            (
                Options {
                    fail_echoing_key: true,
                    ..Options::default()
                },
                Some("storage service refused"),
            ),
        ] {
            let fake = FakeRunPod::start(KEY, vec![sim.base_url()], options).await;
            let (message, printed) = run_on_runpod(fake.base.clone()).await;
            match says {
                None => assert_eq!(message, None, "{printed}"),
                // The platform's own words come through, the key does not.
                Some(words) => {
                    let message = message.unwrap();
                    assert!(message.contains(words), "{message}");
                }
            }
            texts.push(printed);
            seen.extend(fake.seen());
        }
        // Nobody listening at all.
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", closed.local_addr().unwrap());
        drop(closed);
        texts.push(run_on_runpod(base).await.1);
    });
    // The key was really sent (so not finding it below means something).
    assert!(
        !seen.is_empty() && seen.iter().all(|a| a == &format!("Bearer {KEY}")),
        "{seen:?}"
    );
    let logs = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(
        !logs.is_empty(),
        "nothing was logged: the check would prove nothing"
    );
    for text in texts.iter().chain(std::iter::once(&logs)) {
        assert!(!text.contains(KEY), "the key leaked: {text}");
        assert!(
            !text.contains("0123456789abcdef"),
            "part of the key leaked: {text}"
        );
    }
}
