//! A websocket that drops mid-job and comes back: the job's history on the instance is checked once.
//! A finished job is completed from it (its own files fetched, the prefix stripped); anything else is an
//! infrastructure failure, and the instance is told to drop the job. The instance here is a small
//! scripted ComfyUI stand-in (the simulated worker cannot drop only its websocket).
#![allow(clippy::unwrap_used)] // the scripted server is test code: a failed call is a failed test

mod provider_support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::ws::{Message, WebSocketUpgrade};
use axum::extract::{Path, Query, Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use comfyume_core::{FailureKind, InferenceProvider, ProviderEvent};
use comfyume_providers::ComfyUiProvider;
use futures::StreamExt;
use provider_support::*;
use serde_json::{Value, json};
use tokio::sync::Notify;

#[derive(Default)]
struct Script {
    finished_in_history: bool,
    prompt_id: Mutex<Option<String>>,
    posted: Notify,
    connections: Mutex<usize>,
    requests: Mutex<Vec<String>>,
}

type S = Arc<Script>;

async fn ws(State(s): State<S>, Query(q): Query<HashMap<String, String>>, up: WebSocketUpgrade) -> Response {
    let sid = q.get("clientId").cloned().unwrap_or_default();
    let n = {
        let mut c = s.connections.lock().unwrap();
        *c += 1;
        *c
    };
    up.on_upgrade(move |mut socket| async move {
        let status =
            json!({"type": "status", "data": {"status": {"exec_info": {"queue_remaining": 0}}, "sid": sid}});
        socket
            .send(Message::Text(status.to_string().into()))
            .await
            .unwrap();
        if n == 1 {
            s.posted.notified().await;
            let id = s.prompt_id.lock().unwrap().clone().unwrap();
            let start = json!({"type": "execution_start", "data": {"prompt_id": id, "timestamp": 1}});
            socket
                .send(Message::Text(start.to_string().into()))
                .await
                .unwrap();
            return; // dropped without a close handshake, like a network cut
        }
        while let Some(Ok(_)) = socket.recv().await {}
    })
}

async fn prompt(State(s): State<S>, body: axum::Json<Value>) -> Response {
    let id = body["prompt_id"].as_str().unwrap().to_string();
    *s.prompt_id.lock().unwrap() = Some(id.clone());
    s.posted.notify_one();
    axum::Json(json!({"prompt_id": id, "number": 1, "node_errors": {}})).into_response()
}

async fn history(State(s): State<S>, Path(id): Path<String>) -> Response {
    if !s.finished_in_history {
        return axum::Json(json!({})).into_response();
    }
    let entry = json!({
        "prompt": [1, id, {}, {}, ["2"]],
        "outputs": {"2": {"images": [{"filename": "x_00001_.png", "subfolder": format!("comfyume/{id}/gw"), "type": "output"}]}},
        "status": {"status_str": "success", "completed": true,
                   "messages": [["execution_start", {"prompt_id": id}], ["execution_cached", {"nodes": [], "prompt_id": id}],
                                ["execution_success", {"prompt_id": id}]]}
    });
    axum::Json(json!({ id: entry })).into_response()
}

async fn other(State(s): State<S>, req: Request) -> Response {
    s.requests
        .lock()
        .unwrap()
        .push(format!("{} {}", req.method(), req.uri().path()));
    match req.uri().path() {
        "/view" => "png-bytes".into_response(),
        _ => axum::Json(json!({})).into_response(),
    }
}

async fn scripted(finished_in_history: bool) -> (String, S) {
    let s = Arc::new(Script {
        finished_in_history,
        ..Script::default()
    });
    let app = Router::new()
        .route("/ws", get(ws))
        .route("/prompt", post(prompt))
        .route("/history/{id}", get(history))
        .fallback(any(other))
        .with_state(Arc::clone(&s));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, s)
}

async fn run(url: &str) -> Vec<ProviderEvent> {
    let provider = ComfyUiProvider::start(quick_config(&[(url.to_string(), 1)]))
        .await
        .unwrap();
    let job = leased_job("gina", fixture("01_empty_save"));
    let stream = provider.submit(&job).await.unwrap();
    tokio::time::timeout(WAIT, stream.collect::<Vec<_>>())
        .await
        .expect("the stream ends")
}

#[tokio::test]
async fn a_job_that_finished_while_the_websocket_was_down_completes_from_its_history() {
    let (url, script) = scripted(true).await;
    let events = run(&url).await;
    assert!(
        matches!(events.first(), Some(ProviderEvent::Started)),
        "{events:#?}"
    );
    let artifact = events.iter().find_map(|e| match e {
        ProviderEvent::Artifact(a) => Some(a.clone()),
        _ => None,
    });
    let artifact = artifact.expect("the output is delivered");
    assert_eq!(
        (artifact.filename.as_str(), artifact.subfolder.as_str()),
        ("x_00001_.png", "gw")
    );
    assert_eq!(&artifact.data[..], b"png-bytes");
    let executed = events.iter().find_map(|e| match e {
        ProviderEvent::Executed { output, .. } => Some(output.clone()),
        _ => None,
    });
    assert_eq!(executed.unwrap()["images"][0]["subfolder"], "gw");
    assert!(
        matches!(events.last(), Some(ProviderEvent::Completed)),
        "{events:#?}"
    );
    assert_eq!(events.iter().filter(|e| e.is_terminal()).count(), 1);
    assert!(
        *script.connections.lock().unwrap() >= 2,
        "the websocket was reopened"
    );
}

#[tokio::test]
async fn a_job_not_finished_after_a_reconnect_fails_as_unavailable_and_is_dropped_there() {
    let (url, script) = scripted(false).await;
    let events = run(&url).await;
    let Some(ProviderEvent::Failed(failure)) = events.last() else {
        panic!("{events:#?}")
    };
    assert_eq!(failure.kind, FailureKind::ProviderUnavailable, "{failure:?}");
    assert!(failure.message.contains(&url), "{}", failure.message);
    assert_eq!(events.iter().filter(|e| e.is_terminal()).count(), 1);
    eventually("the instance to be told to drop the job", async || {
        let seen = script.requests.lock().unwrap();
        seen.iter().any(|r| r == "POST /queue") && seen.iter().any(|r| r == "POST /interrupt")
    })
    .await;
}
