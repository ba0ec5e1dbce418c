//! Readiness, metrics, the OpenAPI document, a slow client, and graceful shutdown.

use std::collections::{BTreeSet, HashMap};

use comfyume_core::{EventKind, Health, JobEvent, JobId, JobState, Timestamp, UserId};
use comfyume_server::api::endpoints;
use comfyume_server::config::StoreBackend;
use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::support::*;

#[tokio::test]
async fn ready_needs_a_login_and_a_usable_provider() {
    let s = Server::start().await;
    assert_eq!(
        s.call(Method::GET, "/ready", None, None).await.0,
        StatusCode::UNAUTHORIZED
    );
    let (status, body) = s.get("/ready", "alice").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["usable_providers"][0], "test");
    assert_eq!(
        s.call(Method::GET, "/health", None, None).await.0,
        StatusCode::OK,
        "only /health is open"
    );

    let down = Server::with(Options {
        health: Health::Unavailable {
            reason: "no GPU box answers".into(),
        },
        ..Options::default()
    })
    .await;
    let (status, body) = down.get("/ready", "alice").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["code"], "not_ready");
    assert!(
        body["message"].as_str().unwrap().contains("no GPU box answers"),
        "{body}"
    );
}

/// A parsed Prometheus text exposition: sample → value, and family → type.
struct Exposition {
    samples: HashMap<String, f64>,
    types: HashMap<String, String>,
}

/// Parses the Prometheus text format strictly enough to catch malformed output.
fn parse_prometheus(text: &str) -> Exposition {
    let name_ok = |n: &str| {
        !n.is_empty()
            && n.chars().enumerate().all(|(i, c)| {
                c.is_ascii_alphabetic() || c == '_' || c == ':' || (i > 0 && c.is_ascii_digit())
            })
    };
    let (mut samples, mut types) = (HashMap::new(), HashMap::new());
    for line in text.lines().filter(|l| !l.is_empty()) {
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let (kind, name, tail) = (
                parts.next().unwrap(),
                parts.next().unwrap(),
                parts.next().unwrap_or(""),
            );
            assert!(name_ok(name), "bad name in {line:?}");
            match kind {
                "HELP" => {}
                "TYPE" => {
                    assert!(
                        ["counter", "gauge", "histogram", "summary", "untyped"].contains(&tail),
                        "{line:?}"
                    );
                    assert!(
                        types.insert(name.to_string(), tail.to_string()).is_none(),
                        "family twice: {line:?}"
                    );
                }
                _ => panic!("unknown comment {line:?}"),
            }
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("no value in {line:?}"));
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("bad value in {line:?}")),
        };
        let name = series.split('{').next().unwrap();
        assert!(name_ok(name), "bad name in {line:?}");
        if let Some(labels) = series.strip_prefix(name).filter(|l| !l.is_empty()) {
            let inner = labels
                .strip_prefix('{')
                .and_then(|l| l.strip_suffix('}'))
                .unwrap_or_else(|| panic!("{line:?}"));
            for pair in inner.split("\",").filter(|p| !p.is_empty()) {
                let (k, v) = pair
                    .split_once("=\"")
                    .unwrap_or_else(|| panic!("bad label in {line:?}"));
                assert!(name_ok(k) && !v.contains('\n'), "bad label in {line:?}");
            }
        }
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                name.strip_suffix(s)
                    .filter(|f| types.get(*f).is_some_and(|t| t == "histogram"))
            })
            .unwrap_or(name);
        assert!(types.contains_key(family), "sample before its TYPE: {line:?}");
        samples.insert(series.to_string(), value);
    }
    Exposition { samples, types }
}

#[tokio::test]
async fn metrics_are_prometheus_text_with_every_family() {
    let s = Server::start().await;
    let mut events = s.state.engine().subscribe();
    let ok = job_id(&s.submit("alice", workflow(Behaviour::Ok)).await);
    wait_end(&mut events, ok).await;
    let failed = job_id(&s.submit("bob", workflow(Behaviour::Fail)).await);
    wait_end(&mut events, failed).await;
    let running = s.submit_running("alice", &mut events).await;
    let waiting = job_id(&s.submit("alice", workflow(Behaviour::Ok)).await);
    let _ws = s.ws(Some("bob"), "").await.unwrap();
    s.call(
        Method::POST,
        &format!("/api/v1/jobs/{running}/cancel"),
        Some("alice"),
        None,
    )
    .await;
    wait_end(&mut events, running).await;
    wait_end(&mut events, waiting).await;
    // The collector follows the bus in the background: wait until it has seen the last end.
    wait_until(|| {
        let text = s.state.metrics().encode().unwrap();
        text.contains("comfyume_jobs_finished_total{state=\"succeeded\"} 2")
            && text.contains("comfyume_jobs_finished_total{state=\"cancelled\"} 1")
    })
    .await;

    assert_eq!(
        s.call(Method::GET, "/metrics", Some("alice"), None).await.0,
        StatusCode::FORBIDDEN
    );
    let resp = s
        .request(Method::GET, "/metrics", Some("teacher"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    let m = parse_prometheus(&resp.text().await.unwrap());
    let sample = |series: &str| {
        m.samples
            .get(series)
            .copied()
            .unwrap_or_else(|| panic!("no {series}"))
    };
    assert_eq!(sample("comfyume_jobs_submitted_total"), 4.0);
    assert_eq!(sample("comfyume_jobs_finished_total{state=\"failed\"}"), 1.0);
    assert_eq!(sample("comfyume_job_failures_total{kind=\"node_error\"}"), 1.0);
    assert_eq!(sample("comfyume_job_wait_seconds_count"), 4.0);
    assert_eq!(sample("comfyume_job_run_seconds_count"), 4.0);
    assert_eq!(sample("comfyume_queue_depth{user=\"alice\"}"), 0.0);
    assert_eq!(sample("comfyume_running_jobs{user=\"bob\"}"), 0.0);
    assert_eq!(sample("comfyume_user_paused{user=\"alice\"}"), 0.0);
    assert_eq!(sample("comfyume_queue_paused"), 0.0);
    assert_eq!(sample("comfyume_provider_up{provider=\"test\"}"), 1.0);
    assert_eq!(sample("comfyume_provider_slots{provider=\"test\"}"), 1.0);
    assert_eq!(sample("comfyume_provider_in_flight{provider=\"test\"}"), 0.0);
    assert_eq!(sample("comfyume_provider_draining{provider=\"test\"}"), 0.0);
    assert_eq!(sample("comfyume_websocket_connections"), 1.0);
    assert!(
        sample("comfyume_http_requests_total{method=\"POST\",route=\"/api/v1/jobs\",status=\"201\"}") >= 4.0
    );
    assert!(
        m.samples
            .keys()
            .any(|k| k.starts_with("comfyume_http_request_duration_seconds_count{"))
    );
    assert_eq!(m.types["comfyume_job_wait_seconds"], "histogram");
    assert_eq!(m.types["comfyume_queue_depth"], "gauge");
    assert_eq!(m.types["comfyume_job_failures_total"], "counter");
    // The server's own use of the machine (this test process, as the server runs in it).
    if cfg!(target_os = "linux") {
        assert!(sample("comfyume_process_resident_memory_bytes") > 1_000_000.0);
        assert!(sample("comfyume_process_cpu_seconds_total") > 0.0);
        assert!(sample("comfyume_process_open_fds") > 0.0);
        assert_eq!(m.types["comfyume_process_cpu_seconds_total"], "counter");
    }

    // While a job waits, the gauges show it.
    s.call(Method::POST, "/api/v1/admin/queue/pause", Some("teacher"), None)
        .await;
    s.submit("alice", workflow(Behaviour::Ok)).await;
    let m = parse_prometheus(&s.state.metrics().encode().unwrap());
    assert_eq!(m.samples["comfyume_queue_depth{user=\"alice\"}"], 1.0);
    assert_eq!(m.samples["comfyume_queue_paused"], 1.0);
}

#[tokio::test]
async fn the_openapi_document_lists_every_route_with_its_security() {
    let s = Server::start().await;
    assert_eq!(
        s.call(Method::GET, "/api/v1/openapi.json", None, None).await.0,
        StatusCode::UNAUTHORIZED
    );
    let (status, doc) = s.get("/api/v1/openapi.json", "alice").await;
    assert_eq!(status, StatusCode::OK);
    assert!(doc["openapi"].as_str().unwrap().starts_with('3'));
    let paths = doc["paths"].as_object().unwrap();
    let documented: BTreeSet<(String, String)> = paths
        .iter()
        .flat_map(|(p, item)| {
            item.as_object()
                .unwrap()
                .keys()
                .map(move |m| (m.to_uppercase(), p.clone()))
        })
        .filter(|(m, _)| ["GET", "POST", "PUT", "DELETE", "PATCH"].contains(&m.as_str()))
        .collect();
    // The browser login form and the admin page are pages, not API; everything else is documented, and
    // nothing more.
    let served: BTreeSet<(String, String)> = endpoints()
        .iter()
        .filter(|e| e.path != "/login" && !e.path.starts_with("/admin"))
        .map(|e| (e.method.to_string(), e.path.to_string()))
        .collect();
    assert_eq!(documented, served);
    assert!(served.iter().filter(|(_, p)| p.starts_with("/api/v1/")).count() >= 27);

    let schemes = &doc["components"]["securitySchemes"];
    assert_eq!(schemes["bearer"]["scheme"], "bearer");
    assert_eq!(schemes["session_cookie"]["in"], "cookie");
    assert_eq!(schemes["session_cookie"]["name"], "comfyume_session");
    assert_eq!(
        paths["/api/v1/login"]["post"]["security"],
        serde_json::json!([{}]),
        "login is open"
    );
    assert_eq!(paths["/health"]["get"]["security"], serde_json::json!([{}]));
    assert!(
        doc["security"].as_array().unwrap().len() == 2,
        "everything else needs one of the two"
    );
    for schema in [
        "JobView",
        "SubmitRequest",
        "ErrorBody",
        "StreamMessage",
        "QueueOverview",
        "Estimate",
    ] {
        assert!(
            doc["components"]["schemas"][schema].is_object(),
            "schema {schema} missing"
        );
    }
}

#[tokio::test]
async fn a_slow_client_is_told_how_many_events_it_missed_and_the_engine_does_not_wait() {
    let s = Server::start().await;
    let mut ws = s.ws(Some("alice"), "").await.unwrap();
    assert_eq!(ws.next_json().await["type"], "position");
    let alice = UserId::new("alice").unwrap();
    // The test runs on one thread: publishing without yielding outruns the stream's buffer.
    let published = 6_000;
    for i in 0..published {
        s.state.engine().events().publish(JobEvent {
            job_id: JobId::new(),
            owner: alice.clone(),
            seq: i,
            at: Timestamp(i),
            kind: EventKind::Other {
                kind: "synthetic".into(),
                data: Value::Null,
            },
        });
    }
    let (lagged, _) = ws.until(|m| m["type"] == "lagged").await;
    let missed = lagged["missed"].as_u64().unwrap();
    assert!(missed > 0 && missed < published, "{lagged}");
    // The stream goes on after the gap.
    let (after, _) = ws.until(|m| m["type"] == "other").await;
    assert_eq!(after["kind"], "synthetic");
}

#[tokio::test]
async fn shutdown_closes_event_streams_and_hands_running_jobs_back() {
    let mut s = Server::with(Options {
        store: StoreBackend::Sqlite,
        grace_secs: 0,
        ..Options::default()
    })
    .await;
    let mut events = s.state.engine().subscribe();
    let running = s.submit_running("alice", &mut events).await;
    let mut ws = s.ws(Some("alice"), "").await.unwrap();
    s.shut_down().await;
    let code = loop {
        match ws.next_frame().await {
            Frame::Closed(code) => break code,
            Frame::Json(_) | Frame::Binary(_) => {}
        }
    };
    assert_eq!(code, Some(1001), "closed as going away");
    let handed_back = wait_event(&mut events, |e| {
        e.job_id == running && matches!(e.kind, EventKind::Queued { .. })
    })
    .await;
    assert!(matches!(handed_back.kind, EventKind::Queued { reason: Some(ref r) } if r.contains("shutdown")));
    let job = s.state.engine().get(running).await.unwrap().unwrap();
    assert_eq!(
        job.state,
        JobState::Queued,
        "the running job is back in the store's queue"
    );
    assert_eq!(s.provider.cancels(), [running], "and was stopped on its provider");
    assert!(s.state.shutdown_token().is_cancelled());
}

/// The live gauge of open event streams, from `/metrics`.
async fn open_streams(s: &Server) -> f64 {
    let text = s
        .request(Method::GET, "/metrics", Some("teacher"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    parse_prometheus(&text).samples["comfyume_websocket_connections"]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_streams_that_answer_pings_stay_open_and_silent_ones_are_closed() {
    use futures::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let s = Server::with(Options {
        events: comfyume_server::config::EventsSection {
            ping_secs: 1,
            idle_timeout_secs: 2,
            send_timeout_secs: 1,
        },
        ..Options::default()
    })
    .await;
    // Reading the stream makes the client library answer each ping with a pong; the other client never
    // reads, so it never answers.
    let mut live = s.ws(Some("alice"), "").await.unwrap();
    let mut silent = s.ws(Some("bob"), "").await.unwrap();
    assert_eq!(open_streams(&s).await, 2.0);
    let until = tokio::time::Instant::now() + std::time::Duration::from_millis(4_500);
    let mut pings = 0;
    loop {
        match tokio::time::timeout_at(until, live.stream.next()).await {
            Err(_) => break,
            Ok(Some(Ok(Message::Ping(_)))) => pings += 1,
            Ok(Some(Ok(Message::Text(_) | Message::Pong(_)))) => {}
            other => panic!("the answering stream ended: {other:?}"),
        }
    }
    assert!(pings >= 3, "pinged every second, got {pings} pings in 4.5 s");
    assert_eq!(open_streams(&s).await, 1.0, "the silent stream was closed");
    // What the silent client finds when it finally reads: the pings it missed, then the end.
    let ended = loop {
        match tokio::time::timeout(WAIT, silent.stream.next()).await {
            Ok(Some(Ok(Message::Ping(_) | Message::Text(_)))) => continue,
            Ok(None | Some(Err(_)) | Some(Ok(Message::Close(_)))) => break true,
            Ok(Some(Ok(_))) => continue,
            Err(_) => break false,
        }
    };
    assert!(ended, "the silent stream was ended by the server");
}
