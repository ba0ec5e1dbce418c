//! Speaking to a user's ComfyUI workspace (`/u/<user>/…`) as the ComfyUI frontend does: HTTP with the
//! user's credentials, and the workspace WebSocket.

use std::collections::HashMap;

use futures::{SinkExt, StreamExt};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use super::WAIT;

/// HTTP calls into workspaces, as one of the test users.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    /// The server.
    pub url: String,
    tokens: HashMap<&'static str, String>,
}

/// A status, the content type and the body (JSON when it parses, else the text as a JSON string).
pub type Answer = (StatusCode, String, Value);

impl Client {
    /// A client of the server at `url` with the users' API tokens.
    pub fn new(url: &str, tokens: &HashMap<&'static str, String>) -> Self {
        Self {
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            url: url.to_string(),
            tokens: tokens.clone(),
        }
    }

    /// A request to `path` (absolute, e.g. `/u/alice/api/users`) as `who` (`None`: anonymous).
    pub fn request(&self, method: Method, who: Option<&str>, path: &str) -> reqwest::RequestBuilder {
        let mut req = self.http.request(method, format!("{}{path}", self.url));
        if let Some(who) = who {
            req = req.bearer_auth(&self.tokens[who]);
        }
        req
    }

    /// Sends `req` and reads the answer.
    pub async fn send(req: reqwest::RequestBuilder) -> Answer {
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let content_type = resp
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let text = resp.text().await.unwrap();
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, content_type, body)
    }

    /// `method path` as `who` with an optional raw body.
    pub async fn call(&self, method: Method, who: &str, path: &str, body: Option<&str>) -> Answer {
        let mut req = self.request(method, Some(who), path);
        if let Some(body) = body {
            req = req.body(body.to_string());
        }
        Self::send(req).await
    }

    /// `GET path` as `who`, expecting 200: the JSON.
    pub async fn get(&self, who: &str, path: &str) -> Value {
        let (status, _, body) = self.call(Method::GET, who, path, None).await;
        assert_eq!(status, StatusCode::OK, "GET {path} as {who}: {body}");
        body
    }

    /// Queues `prompt` from `user`'s workspace for the socket `client_id`: the prompt id.
    pub async fn queue(&self, user: &str, prompt: &Value, client_id: &str) -> String {
        let body = serde_json::json!({"prompt": prompt, "client_id": client_id}).to_string();
        let (status, _, answer) = self
            .call(Method::POST, user, &format!("/u/{user}/api/prompt"), Some(&body))
            .await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        answer["prompt_id"].as_str().unwrap().to_string()
    }
}

/// A workspace WebSocket, as the frontend opens it.
pub struct Socket {
    socket: tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    /// The `sid` the server gave it.
    pub sid: String,
    /// Binary frames received, in order.
    pub binary: Vec<Vec<u8>>,
}

impl Socket {
    /// Opens `/u/<workspace>/ws` with `token` (the owner's, or someone else's to be refused), asking for
    /// `client_id`; reads the first `status`.
    pub async fn open(url: &str, workspace: &str, token: &str, client_id: &str) -> Socket {
        let mut request = format!(
            "{}/u/{workspace}/ws?clientId={client_id}",
            url.replace("http://", "ws://")
        )
        .into_client_request()
        .unwrap();
        request
            .headers_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        let (socket, _) = tokio_tungstenite::connect_async(request).await.unwrap();
        let mut socket = Socket {
            socket,
            sid: String::new(),
            binary: Vec::new(),
        };
        let first = socket.next().await;
        assert_eq!(first["type"], "status", "{first}");
        socket.sid = first["data"]["sid"].as_str().unwrap().to_string();
        socket
    }

    /// The HTTP status a connection attempt gets (101 when it opens).
    pub async fn status(url: &str, workspace: &str, token: Option<&str>) -> u16 {
        let mut request = format!("{}/u/{workspace}/ws", url.replace("http://", "ws://"))
            .into_client_request()
            .unwrap();
        if let Some(token) = token {
            request
                .headers_mut()
                .insert("authorization", format!("Bearer {token}").parse().unwrap());
        }
        match tokio_tungstenite::connect_async(request).await {
            Ok(_) => 101,
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => resp.status().as_u16(),
            Err(e) => panic!("unexpected WebSocket error: {e}"),
        }
    }

    /// Sends a text message.
    pub async fn send(&mut self, message: &Value) {
        self.socket
            .send(Message::Text(message.to_string().into()))
            .await
            .unwrap();
    }

    /// The next text message (binary frames are kept in [`Socket::binary`]).
    pub async fn next(&mut self) -> Value {
        loop {
            let message = tokio::time::timeout(WAIT, self.socket.next())
                .await
                .expect("no message in time")
                .expect("the socket closed")
                .unwrap();
            match message {
                Message::Text(text) => return serde_json::from_str(text.as_str()).unwrap(),
                Message::Binary(data) => self.binary.push(data.to_vec()),
                _ => {}
            }
        }
    }

    /// Messages up to and including the first that matches.
    pub async fn until(&mut self, mut pred: impl FnMut(&Value) -> bool) -> Vec<Value> {
        let mut seen = Vec::new();
        loop {
            let v = self.next().await;
            let done = pred(&v);
            seen.push(v);
            if done {
                return seen;
            }
        }
    }

    /// Every message of prompt `id` up to its closing `executing` with `node: null`.
    pub async fn until_done(&mut self, id: &str) -> Vec<Value> {
        self.until(|v| {
            v["type"] == "executing" && v["data"]["node"].is_null() && v["data"]["prompt_id"] == id
        })
        .await
    }

    /// Messages that arrive within `window` (for checking that nothing comes).
    pub async fn drain(&mut self, window: std::time::Duration) -> Vec<Value> {
        let mut seen = Vec::new();
        while let Ok(Some(Ok(message))) = tokio::time::timeout(window, self.socket.next()).await {
            if let Message::Text(text) = message {
                seen.push(serde_json::from_str(text.as_str()).unwrap());
            }
        }
        seen
    }
}
