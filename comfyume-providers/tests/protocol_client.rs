//! The ComfyUI protocol client against a recording HTTP + WebSocket server on loopback: no request carries
//! an `Origin` header (ComfyUI's origin guard would answer 403), the websocket announces our feature flags
//! first, and answers are mapped to the right errors.
#![allow(clippy::unwrap_used)] // the recording server is test code: a failed call is a failed test

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::ws::{Message, WebSocketUpgrade};
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use comfyume_providers::Error;
use comfyume_providers::protocol::{ComfyClient, FileRef, Frame, PromptRequest, ServerMessage, WsConnection};
use serde_json::json;

#[derive(Default)]
struct Seen {
    requests: Vec<(String, bool)>,
    ws_first_text: Option<String>,
}

type Shared = Arc<Mutex<Seen>>;

async fn record(State(seen): State<Shared>, req: Request) -> Response {
    let path = req.uri().path().to_string();
    let has_origin = req.headers().contains_key("origin");
    seen.lock()
        .unwrap()
        .requests
        .push((format!("{} {path}", req.method()), has_origin));
    match path.as_str() {
        "/prompt" => {
            let body = axum::body::to_bytes(req.into_body(), 1 << 20).await.unwrap();
            let prompt: serde_json::Value = serde_json::from_slice(&body).unwrap();
            match prompt["prompt"]["mode"].as_str() {
                Some("reject") => (StatusCode::BAD_REQUEST, axum::Json(json!({"error": {"type": "no_prompt", "message": "No prompt provided"}, "node_errors": {}}))).into_response(),
                Some("proxy") => (StatusCode::BAD_REQUEST, "Bad Request").into_response(),
                Some("crash") => (StatusCode::INTERNAL_SERVER_ERROR, "500 Internal Server Error").into_response(),
                _ => axum::Json(json!({"prompt_id": prompt["prompt_id"], "number": 3, "node_errors": {}})).into_response(),
            }
        }
        "/history/p1" => axum::Json(json!({"p1": {"prompt": [], "outputs": {"2": {"images": []}}, "status": {"status_str": "success", "completed": true, "messages": []}}})).into_response(),
        "/history/p2" => axum::Json(json!({})).into_response(),
        "/view" => "file-bytes".into_response(),
        "/upload/image" => axum::Json(json!({"name": "x.png", "subfolder": "", "type": "input"})).into_response(),
        _ => axum::Json(json!({})).into_response(),
    }
}

async fn ws(State(seen): State<Shared>, upgrade: WebSocketUpgrade, req: Request) -> Response {
    let has_origin = req.headers().contains_key("origin");
    seen.lock().unwrap().requests.push(("GET /ws".into(), has_origin));
    upgrade.on_upgrade(move |mut socket| async move {
        let status = json!({"type": "status", "data": {"status": {"exec_info": {"queue_remaining": 0}}, "sid": "abc"}});
        socket.send(Message::Text(status.to_string().into())).await.unwrap();
        if let Some(Ok(Message::Text(first))) = socket.recv().await {
            seen.lock().unwrap().ws_first_text = Some(first.to_string());
        }
        let flags = json!({"type": "feature_flags", "data": {"supports_progress_text_metadata": true}});
        socket.send(Message::Text(flags.to_string().into())).await.unwrap();
        let mut text = vec![0, 0, 0, 3, 0, 0, 0, 2];
        text.extend(b"p9");
        text.extend([0, 0, 0, 1]);
        text.extend(b"7hi");
        socket.send(Message::Binary(text.into())).await.unwrap();
        let _ = socket.send(Message::Close(None)).await;
    })
}

async fn server() -> (String, Shared) {
    let seen = Shared::default();
    let app = Router::new()
        .route("/ws", get(ws))
        .fallback(any(record))
        .with_state(Arc::clone(&seen));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, seen)
}

#[tokio::test]
async fn no_request_carries_an_origin_header() {
    let (url, seen) = server().await;
    let client = ComfyClient::new(&url, Duration::from_secs(5), Duration::from_secs(5)).unwrap();
    let workflow = json!({"1": {"class_type": "X"}});
    let id = "93b9d2a5-932d-4695-967e-cde7bd61dbd5";
    let request = PromptRequest {
        prompt: &workflow,
        client_id: Some("abc"),
        prompt_id: Some(id),
        extra_data: None,
    };
    assert_eq!(client.submit(&request).await.unwrap().prompt_id, id);
    client.interrupt(Some(id)).await.unwrap();
    client.delete_queued(&[id]).await.unwrap();
    client.system_stats().await.unwrap();
    client.queue().await.unwrap();
    assert!(client.history("p1").await.unwrap().unwrap().status.completed);
    assert_eq!(client.history("p2").await.unwrap(), None);
    let file = FileRef {
        filename: "a.png".into(),
        subfolder: "gw".into(),
        kind: "output".into(),
    };
    assert_eq!(&client.view(&file).await.unwrap()[..], b"file-bytes");
    assert_eq!(
        client
            .upload_image("x.png", b"png".to_vec().into(), true)
            .await
            .unwrap()
            .name,
        "x.png"
    );

    let mut ws = WsConnection::connect(&client, "abc", Duration::from_secs(5))
        .await
        .unwrap();
    let mut frames = Vec::new();
    while let Some(frame) = ws.next().await {
        frames.push(frame.unwrap());
    }
    assert!(
        matches!(&frames[0], Frame::Message(ServerMessage::Status(s)) if s.sid.as_deref() == Some("abc"))
    );
    assert!(matches!(
        &frames[1],
        Frame::Message(ServerMessage::FeatureFlags(_))
    ));
    // The server advertised prompt ids in progress text, so the frame is read with one.
    assert!(
        matches!(&frames[2], Frame::Binary(b) if b.prompt_id() == Some("p9")),
        "{frames:?}"
    );

    let seen = seen.lock().unwrap();
    let paths: Vec<&str> = seen.requests.iter().map(|(p, _)| p.as_str()).collect();
    for expected in [
        "POST /prompt",
        "POST /interrupt",
        "POST /queue",
        "GET /system_stats",
        "GET /queue",
        "GET /history/p1",
        "GET /view",
        "POST /upload/image",
        "GET /ws",
    ] {
        assert!(paths.contains(&expected), "{expected} not seen in {paths:?}");
    }
    let with_origin: Vec<&String> = seen.requests.iter().filter(|(_, o)| *o).map(|(p, _)| p).collect();
    assert!(
        with_origin.is_empty(),
        "requests with an Origin header: {with_origin:?}"
    );
    let first: serde_json::Value = serde_json::from_str(seen.ws_first_text.as_deref().unwrap()).unwrap();
    assert_eq!(first["type"], "feature_flags");
    assert_eq!(first["data"]["supports_preview_metadata"], true);
}

#[tokio::test]
async fn answers_map_to_errors_that_say_whose_fault_they_are() {
    let (url, _) = server().await;
    let client = ComfyClient::new(&url, Duration::from_secs(5), Duration::from_secs(5)).unwrap();
    let submit = async |mode: &str| {
        let workflow = json!({"mode": mode});
        client
            .submit(&PromptRequest {
                prompt: &workflow,
                client_id: None,
                prompt_id: None,
                extra_data: None,
            })
            .await
    };
    match submit("reject").await {
        Err(Error::Rejected(body)) => assert_eq!(body["error"]["type"], "no_prompt"),
        other => panic!("{other:?}"),
    }
    let proxy = submit("proxy").await.unwrap_err();
    assert!(
        matches!(&proxy, Error::Status { status: 400, .. }) && !proxy.is_retryable(),
        "{proxy:?}"
    );
    let crash = submit("crash").await.unwrap_err();
    assert!(
        matches!(&crash, Error::Status { status: 500, .. }) && crash.is_retryable(),
        "{crash:?}"
    );

    let dead = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", probe.local_addr().unwrap())
    };
    let client = ComfyClient::new(&dead, Duration::from_secs(2), Duration::from_secs(2)).unwrap();
    let err = client.system_stats().await.unwrap_err();
    assert!(
        matches!(err, Error::Unreachable { .. }) && err.is_retryable(),
        "{err:?}"
    );
    let err = WsConnection::connect(&client, "abc", Duration::from_secs(2))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Unreachable { .. }), "{err:?}");
}
