//! A fault-injecting proxy in front of a **simulated** ComfyUI worker: everything is passed through
//! (HTTP requests and the `/ws` WebSocket) except what the test asks to break — `POST /prompt`
//! answered with a 5xx, `POST /prompt` delivered to the worker but its answer never sent back, or the
//! WebSocket cut (no closing handshake) as the worker reports a prompt started.

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::ws::{Message as AxMessage, WebSocketUpgrade};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message as TMessage;

/// What the proxy breaks, for how many times.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Pass everything through.
    None,
    /// Answer `POST /prompt` with this status (the worker never sees the prompt).
    PromptStatus(u16),
    /// Deliver `POST /prompt` to the worker and never answer the caller.
    PromptAnswerLost,
    /// Cut every WebSocket (no close frame) when the worker reports `execution_start`.
    CutWebSocketAtStart,
}

struct Inner {
    upstream: String,
    http: reqwest::Client,
    /// The fault and how many more times it strikes.
    fault: Mutex<(Fault, usize)>,
    /// Faults that struck.
    struck: Mutex<Vec<Fault>>,
}

/// The running proxy.
#[derive(Clone)]
pub struct FaultyProxy {
    inner: Arc<Inner>,
    /// `http://127.0.0.1:<port>`.
    pub url: String,
}

impl FaultyProxy {
    /// A proxy in front of the worker at `upstream` (`http://…`), passing everything through.
    pub async fn start(upstream: &str) -> FaultyProxy {
        let inner = Arc::new(Inner {
            upstream: upstream.trim_end_matches('/').to_string(),
            http: reqwest::Client::new(),
            fault: Mutex::new((Fault::None, 0)),
            struck: Mutex::new(Vec::new()),
        });
        let app = Router::new()
            .route("/ws", axum::routing::get(ws))
            .fallback(forward)
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        FaultyProxy { inner, url }
    }

    /// Breaks things this way for the next `times` occasions.
    pub fn set(&self, fault: Fault, times: usize) {
        *self.inner.fault.lock().unwrap() = (fault, times);
    }

    /// The faults that struck so far.
    pub fn struck(&self) -> Vec<Fault> {
        self.inner.struck.lock().unwrap().clone()
    }
}

impl Inner {
    /// Takes one strike of `fault` if it is armed.
    fn strike(&self, fault: Fault) -> bool {
        let mut armed = self.fault.lock().unwrap();
        if armed.0 == fault && armed.1 > 0 {
            armed.1 -= 1;
            self.struck.lock().unwrap().push(fault);
            true
        } else {
            false
        }
    }

    fn armed(&self) -> Fault {
        let armed = self.fault.lock().unwrap();
        if armed.1 > 0 { armed.0 } else { Fault::None }
    }
}

async fn forward(State(inner): State<Arc<Inner>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let path = parts.uri.path().to_string();
    let is_prompt = parts.method == Method::POST && (path == "/prompt" || path == "/api/prompt");
    if is_prompt
        && let Fault::PromptStatus(code) = inner.armed()
        && inner.strike(Fault::PromptStatus(code))
    {
        let status = StatusCode::from_u16(code).unwrap();
        return (status, "the GPU box's proxy failed").into_response();
    }
    let query = parts.uri.query().map(|q| format!("?{q}")).unwrap_or_default();
    let body: Bytes = axum::body::to_bytes(body, 64 << 20).await.unwrap_or_default();
    let mut headers = HeaderMap::new();
    if let Some(ct) = parts.headers.get("content-type") {
        headers.insert("content-type", ct.clone());
    }
    let answer = inner
        .http
        .request(parts.method.clone(), format!("{}{path}{query}", inner.upstream))
        .headers(headers)
        .body(body)
        .send()
        .await;
    let lose_answer = is_prompt && inner.strike(Fault::PromptAnswerLost);
    let answer = match answer {
        Ok(a) => a,
        Err(e) => return (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
    };
    if lose_answer {
        // The worker took the prompt; the caller never hears so.
        std::future::pending::<()>().await;
    }
    let status = answer.status();
    let content_type = answer.headers().get("content-type").cloned();
    let bytes = answer.bytes().await.unwrap_or_default();
    let mut response = Response::new(Body::from(bytes));
    *response.status_mut() = status;
    if let Some(ct) = content_type {
        response.headers_mut().insert("content-type", ct);
    }
    response
}

async fn ws(State(inner): State<Arc<Inner>>, uri: axum::http::Uri, upgrade: WebSocketUpgrade) -> Response {
    let query = uri.query().map(|q| format!("?{q}")).unwrap_or_default();
    let url = format!("{}/ws{query}", inner.upstream.replacen("http://", "ws://", 1));
    let Ok((upstream, _)) = tokio_tungstenite::connect_async(url).await else {
        return StatusCode::BAD_GATEWAY.into_response();
    };
    upgrade.on_upgrade(move |client| async move {
        let (mut up_tx, mut up_rx) = upstream.split();
        let (mut cl_tx, mut cl_rx) = client.split();
        let to_client = async {
            while let Some(Ok(message)) = up_rx.next().await {
                let relayed = match message {
                    TMessage::Text(t) => {
                        if t.as_str().contains("\"execution_start\"")
                            && inner.strike(Fault::CutWebSocketAtStart)
                        {
                            return; // both halves dropped: no close frame
                        }
                        AxMessage::Text(t.as_str().into())
                    }
                    TMessage::Binary(b) => AxMessage::Binary(b),
                    TMessage::Ping(p) => AxMessage::Ping(p),
                    TMessage::Pong(p) => AxMessage::Pong(p),
                    TMessage::Close(_) => return,
                    TMessage::Frame(_) => continue,
                };
                if cl_tx.send(relayed).await.is_err() {
                    return;
                }
            }
        };
        let to_upstream = async {
            while let Some(Ok(message)) = cl_rx.next().await {
                let relayed = match message {
                    AxMessage::Text(t) => TMessage::Text(t.as_str().into()),
                    AxMessage::Binary(b) => TMessage::Binary(b),
                    AxMessage::Ping(p) => TMessage::Ping(p),
                    AxMessage::Pong(p) => TMessage::Pong(p),
                    AxMessage::Close(_) => return,
                };
                if up_tx.send(relayed).await.is_err() {
                    return;
                }
            }
        };
        tokio::select! {
            _ = to_client => {}
            _ = to_upstream => {}
        }
    })
}
