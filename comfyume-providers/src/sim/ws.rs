//! `GET /ws`: the first message is `status` with the `sid` (the `clientId` query parameter if given,
//! else a fresh `uuid4().hex`); a first client message `feature_flags` is answered with the server's
//! features; everything else the client sends is ignored.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::response::Response;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::replica::{Replica, WsOut};

pub(crate) async fn handler(
    State(r): State<Arc<Replica>>,
    Query(q): Query<HashMap<String, String>>,
    ws: WebSocketUpgrade,
) -> Response {
    let sid = q
        .get("clientId")
        .filter(|s| !s.is_empty())
        .cloned()
        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
    let tracker = r.shared.tracker.clone();
    ws.on_upgrade(move |socket| tracker.track_future(serve(socket, r, sid)))
}

fn to_message(out: WsOut) -> Message {
    match out {
        WsOut::Text(t) => Message::Text(t.as_ref().into()),
        WsOut::Binary(b) => Message::Binary(b),
    }
}

async fn serve(mut socket: WebSocket, r: Arc<Replica>, sid: String) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let conn = r.register(&sid, tx);
    let kill = r.shared.kill.clone();
    let shutdown = r.shared.shutdown.clone();
    let mut first_message = true;
    // Another connection took this socket's `sid`: like ComfyUI, this one stays open but gets nothing.
    let mut taken_over = false;
    loop {
        tokio::select! {
            biased;
            // Like a crashed process: the TCP connection is dropped without a closing handshake.
            _ = kill.cancelled() => break,
            _ = shutdown.cancelled() => {
                let _ = socket.send(Message::Close(None)).await;
                break;
            }
            out = rx.recv(), if !taken_over => match out {
                Some(out) => {
                    if socket.send(to_message(out)).await.is_err() {
                        break;
                    }
                }
                None => taken_over = true,
            },
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Text(text))) => {
                    if let Ok(msg) = serde_json::from_str::<Value>(text.as_str()) {
                        if first_message && msg.get("type").and_then(Value::as_str) == Some("feature_flags") {
                            let reply = json!({"type": "feature_flags", "data": super::http::features_body()});
                            if socket.send(Message::Text(reply.to_string().into())).await.is_err() {
                                break;
                            }
                        }
                        first_message = false;
                    }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            },
        }
    }
    r.unregister(&sid, conn);
}
