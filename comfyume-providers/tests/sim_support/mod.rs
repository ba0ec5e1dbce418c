//! Helpers for the simulated worker's tests: fixtures, captures, a WebSocket client, HTTP calls.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)] // test helpers: a failed call is a failed test

use std::time::Duration;

use comfyume_providers::sim::{ExecTime, SimConfig, SimWorker};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long any single wait in these tests may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(20);

/// The repository's root (sample workflows in `examples/workflows/`, captures in `tests/captures/`).
pub fn repo_dir() -> std::path::PathBuf {
    std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/..")).to_path_buf()
}

pub fn fixture(name: &str) -> Value {
    let p = repo_dir().join(format!("examples/workflows/{name}.json"));
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

pub fn fixture_bytes(file: &str) -> Vec<u8> {
    std::fs::read(repo_dir().join(format!("examples/workflows/{file}"))).unwrap()
}

pub fn capture(name: &str) -> Value {
    let p = repo_dir().join(format!("tests/captures/{name}.json"));
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

/// A fast configuration for tests.
pub fn fast() -> SimConfig {
    SimConfig {
        exec_time: ExecTime::Fixed(Duration::from_millis(2)),
        seed: Some(7),
        ..SimConfig::default()
    }
}

pub async fn start(config: SimConfig) -> SimWorker {
    SimWorker::start(config, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap()
}

pub fn http() -> reqwest::Client {
    reqwest::Client::builder().timeout(WAIT).build().unwrap()
}

/// POST /prompt; returns the status and the JSON body.
pub async fn post_prompt(base: &str, body: Value) -> (u16, Value) {
    let r = http()
        .post(format!("{base}/prompt"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

pub async fn get_json(url: &str) -> Value {
    http().get(url).send().await.unwrap().json().await.unwrap()
}

pub async fn upload(base: &str, name: &str, bytes: Vec<u8>) -> (u16, Value) {
    let part = reqwest::multipart::Part::bytes(bytes).file_name(name.to_string());
    let form = reqwest::multipart::Form::new().part("image", part);
    let r = http()
        .post(format!("{base}/upload/image"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// One WebSocket client of the simulated worker.
pub struct Ws {
    pub sid: String,
    stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

/// A message as the captures record it: a JSON text message, or a binary frame.
#[derive(Debug, Clone)]
pub enum Msg {
    Json(Value),
    Binary(Vec<u8>),
}

impl Msg {
    pub fn kind(&self) -> String {
        match self {
            Msg::Json(v) => v["type"].as_str().unwrap_or_default().to_string(),
            Msg::Binary(b) => format!("binary{}", u32::from_be_bytes([b[0], b[1], b[2], b[3]])),
        }
    }

    pub fn json(&self) -> &Value {
        match self {
            Msg::Json(v) => v,
            Msg::Binary(_) => &Value::Null,
        }
    }
}

impl Ws {
    /// Connects (with `clientId` if given) and reads the first `status` message.
    pub async fn connect(base: &str, client_id: Option<&str>) -> Ws {
        let mut url = format!("{}/ws", base.replace("http://", "ws://"));
        if let Some(id) = client_id {
            url.push_str(&format!("?clientId={id}"));
        }
        let (stream, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
            .await
            .unwrap()
            .unwrap();
        let mut ws = Ws {
            sid: String::new(),
            stream,
        };
        let first = ws.next().await.unwrap();
        assert_eq!(first.kind(), "status", "first message must be status: {first:?}");
        ws.sid = first.json()["data"]["sid"].as_str().unwrap().to_string();
        ws
    }

    /// The next message, `None` when the connection ended (cleanly or not).
    pub async fn next(&mut self) -> Option<Msg> {
        loop {
            match tokio::time::timeout(WAIT, self.stream.next())
                .await
                .expect("no WebSocket message in time")
            {
                Some(Ok(Message::Text(t))) => {
                    return Some(Msg::Json(serde_json::from_str(t.as_str()).unwrap()));
                }
                Some(Ok(Message::Binary(b))) => return Some(Msg::Binary(b.to_vec())),
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return None,
                Some(Ok(_)) => continue,
            }
        }
    }

    /// Reads until the connection ends and says how: `"close-frame"`, `"reset"` (no closing
    /// handshake) or `"eof"`.
    pub async fn end(&mut self) -> &'static str {
        loop {
            match tokio::time::timeout(WAIT, self.stream.next())
                .await
                .expect("the connection did not end")
            {
                Some(Ok(Message::Close(_))) => return "close-frame",
                Some(Ok(_)) => continue,
                Some(Err(_)) => return "reset",
                None => return "eof",
            }
        }
    }

    pub async fn send_json(&mut self, v: Value) {
        self.stream
            .send(Message::Text(v.to_string().into()))
            .await
            .unwrap();
    }

    /// Collects messages until `executing` with `node: null` for `prompt_id` (included).
    pub async fn until_done(&mut self, prompt_id: &str) -> Vec<Msg> {
        let mut out = Vec::new();
        loop {
            let m = self.next().await.expect("socket closed before the job ended");
            let done = m.kind() == "executing"
                && m.json()["data"]["node"].is_null()
                && m.json()["data"]["prompt_id"] == prompt_id;
            out.push(m);
            if done {
                return out;
            }
        }
    }

    /// Reads until a message satisfies `pred`, returning it.
    pub async fn until(&mut self, pred: impl Fn(&Msg) -> bool) -> Msg {
        loop {
            let m = self.next().await.expect("socket closed");
            if pred(&m) {
                return m;
            }
        }
    }
}

/// The message types of a run, collapsing runs of consecutive `status` messages into one.
pub fn kinds(msgs: impl IntoIterator<Item = Msg>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for m in msgs {
        let k = m.kind();
        if k == "status" && out.last().is_some_and(|l| l == "status") {
            continue;
        }
        out.push(k);
    }
    out
}

/// The captured messages of a run as [`Msg`]s (binary frames by their recorded type).
pub fn captured(run: &Value) -> Vec<Msg> {
    run["ws_messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| match m.get("binary") {
            Some(b) => Msg::Binary(
                (b["binary_event_type"].as_u64().unwrap() as u32)
                    .to_be_bytes()
                    .to_vec(),
            ),
            None => {
                Msg::Json(json!({"type": m["type"], "data": m.get("data").cloned().unwrap_or(Value::Null)}))
            }
        })
        .collect()
}

/// `(type, node)` of the per-node messages (`executing`, `executed`, `progress`) in order.
pub fn node_steps(msgs: &[Msg]) -> Vec<(String, String)> {
    msgs.iter()
        .filter(|m| matches!(m.kind().as_str(), "executing" | "executed" | "progress"))
        .map(|m| {
            (
                m.kind(),
                m.json()["data"]["node"].as_str().unwrap_or("null").to_string(),
            )
        })
        .collect()
}

/// Submits a workflow with this socket's `client_id`, returns the prompt id.
pub async fn submit(base: &str, ws: &Ws, prompt: Value) -> String {
    let (status, body) = post_prompt(base, json!({"prompt": prompt, "client_id": ws.sid})).await;
    assert_eq!(status, 200, "{body}");
    body["prompt_id"].as_str().unwrap().to_string()
}
