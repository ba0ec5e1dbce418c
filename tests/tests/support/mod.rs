//! Shared set-up for the end-to-end tests: **simulated** ComfyUI workers on loopback, real comfyume
//! servers (`comfyume_server::build` + `serve`) over `ComfyUiProvider`s, each on its own Tokio runtime so
//! a test can crash one (drop every task at once) and start another on the same data directory, and raw
//! HTTP / WebSocket helpers that speak API v1 exactly as a client does.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod browser;
pub mod faulty;
pub mod frontend;
pub mod private_redis;
pub mod workspace;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use comfyume_core::{InferenceProvider, UserId};
use comfyume_providers::protocol::ComfyClient;
use comfyume_providers::sim::{ExecTime, SimConfig, SimWorker};
use comfyume_providers::{ComfyUiConfig, ComfyUiProvider};
use comfyume_server::auth::credentials::Credentials;
use comfyume_server::config::{ServerConfig, StoreBackend};
use futures::{SinkExt, StreamExt};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// The repository's root: sample workflows in `examples/workflows/`, captures of real ComfyUI runs in
/// `tests/captures/`.
pub const REPO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

/// Every wait gives up after this long (a failure, not a sleep).
pub const WAIT: Duration = Duration::from_secs(30);

/// The users every test server knows: three participants and an admin.
pub const USERS: [(&str, bool); 4] = [
    ("alice", false),
    ("bob", false),
    ("carol", false),
    ("teacher", true),
];

/// A fixture workflow by name (without `.json`).
pub fn fixture(name: &str) -> Value {
    let path = format!("{REPO}/examples/workflows/{name}.json");
    serde_json::from_slice(&std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))).unwrap()
}

/// The capture of a real ComfyUI run of a fixture.
pub fn capture(name: &str) -> Value {
    let path = format!("{REPO}/tests/captures/run_{name}.json");
    serde_json::from_slice(&std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))).unwrap()
}

/// A simulated worker taking `exec` per job.
pub async fn sim(exec: Duration) -> SimWorker {
    let config = SimConfig {
        exec_time: ExecTime::Fixed(exec),
        seed: Some(7),
        ..SimConfig::default()
    };
    SimWorker::start(config, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap()
}

/// Uploads a fixture input file to a worker (`POST /upload/image`), as a participant would before
/// running a workflow that loads it.
pub async fn upload(worker: &SimWorker, file: &str) {
    let client = ComfyClient::new(&worker.base_url(), WAIT, WAIT).unwrap();
    let data = std::fs::read(format!("{REPO}/examples/workflows/{file}")).unwrap();
    let uploaded = client.upload_image(file, data.into(), true).await.unwrap();
    assert_eq!(uploaded.name, file);
}

/// A server configuration for tests: short leases, no shutdown grace.
pub fn config(data_dir: &Path, backend: StoreBackend) -> ServerConfig {
    let mut config = ServerConfig {
        data_dir: data_dir.to_path_buf(),
        shutdown_grace_secs: 0,
        ..ServerConfig::default()
    };
    config.store.backend = backend;
    config.jobs.lease_ttl_secs = 2;
    config.jobs.heartbeat_secs = 1;
    config
}

/// Writes the credentials file of [`USERS`] (cheap bcrypt) and returns each user's API token.
pub fn credentials(config: &ServerConfig) -> HashMap<&'static str, String> {
    let mut creds = Credentials::new().with_cost(4);
    let mut tokens = HashMap::new();
    for (name, admin) in USERS {
        let user = UserId::new(name).unwrap();
        creds.add_user(&user, &format!("{name}-password"), admin).unwrap();
        tokens.insert(name, creds.issue_token(&user, "tests").unwrap());
    }
    creds.save(&config.credentials_path()).unwrap();
    tokens
}

/// Provider settings that notice a worker within a fraction of a second.
pub fn pool(urls: &[String]) -> ComfyUiConfig {
    ComfyUiConfig {
        name: "sim".into(),
        health_interval: Duration::from_millis(200),
        reconnect_min: Duration::from_millis(20),
        reconnect_max: Duration::from_millis(200),
        ..ComfyUiConfig::with_urls(urls.iter().cloned())
    }
}

/// A comfyume server on loopback, on a Tokio runtime of its own.
pub struct Server {
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    /// Its data directory.
    pub data_dir: PathBuf,
    /// The provider it runs jobs on.
    pub provider: Arc<ComfyUiProvider>,
    runtime: Option<tokio::runtime::Runtime>,
    stop: Option<oneshot::Sender<()>>,
    handle: Option<tokio::task::JoinHandle<Result<(), comfyume_server::ServerError>>>,
}

impl Server {
    /// Builds a server over one `ComfyUiProvider` of the given worker URLs and serves it.
    pub async fn start(config: ServerConfig, workers: &[String]) -> Server {
        // As `comfyume serve` does: the same websocket ids after a restart on the same data directory.
        let pool = ComfyUiConfig {
            client_id_seed: Some(comfyume_server::identity(&config)),
            ..pool(workers)
        };
        Server::start_with(config, pool).await
    }

    /// Builds a server over one `ComfyUiProvider` with these settings and serves it.
    pub async fn start_with(config: ServerConfig, pool: ComfyUiConfig) -> Server {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let data_dir = config.data_dir.clone();
        let (url_tx, url_rx) = oneshot::channel();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let handle = runtime.spawn(async move {
            let inputs = Arc::new(comfyume_core::inputs::LocalInputs::new(&config.data_dir));
            let provider = Arc::new(ComfyUiProvider::start(pool).await.unwrap().with_inputs(inputs));
            let providers: Vec<Arc<dyn InferenceProvider>> = vec![provider.clone()];
            let state = comfyume_server::build(config, providers).await?;
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let _ = url_tx.send((format!("http://{}", listener.local_addr()?), provider));
            comfyume_server::serve(listener, state, async move {
                let _ = stop_rx.await;
            })
            .await
        });
        let (url, provider) = match tokio::time::timeout(WAIT, url_rx)
            .await
            .expect("the server did not start")
        {
            Ok(started) => started,
            Err(_) => panic!("the server failed to start: {:?}", handle.await),
        };
        Server {
            url,
            data_dir,
            provider,
            runtime: Some(runtime),
            stop: Some(stop_tx),
            handle: Some(handle),
        }
    }

    /// Waits until the provider has fetched its node catalogue, so submitted workflows are checked.
    pub async fn catalogue_fetched(&self) {
        eventually("the node catalogue to be fetched", || {
            self.provider.catalogue().is_some()
        })
        .await;
    }

    /// Shuts down gracefully (as on SIGTERM), waits until `serve` returned, then ends what is left of
    /// the process (background loops), as the process exiting would — releasing the data directory.
    pub async fn shut_down(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(handle) = self.handle.take() {
            tokio::time::timeout(WAIT, handle)
                .await
                .expect("serve did not return after the shutdown signal")
                .unwrap()
                .unwrap();
        }
        self.end_process().await;
    }

    /// Stops like a crashed process: every task of the server (HTTP, engine, heartbeats, provider
    /// connections) is dropped where it stands — nothing is handed back, no lease is released — and, as
    /// when a process dies, what it held (sockets, the data directory's lock) is let go.
    pub async fn crash(mut self) {
        self.end_process().await;
    }

    async fn end_process(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            // Waits until every task is dropped (not run to completion); blocking here is fine on a
            // blocking thread.
            tokio::task::spawn_blocking(move || runtime.shutdown_timeout(WAIT))
                .await
                .unwrap();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Raw HTTP calls to API v1.
#[derive(Clone)]
pub struct Api {
    http: reqwest::Client,
    /// The server.
    pub url: String,
}

impl Api {
    /// Calls into the server at `url`.
    pub fn new(url: &str) -> Self {
        Self {
            http: reqwest::Client::new(),
            url: url.to_string(),
        }
    }

    /// A request with an optional bearer token and JSON body; the status and the JSON (or text) body.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = self.http.request(method, format!("{}{path}", self.url));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    /// Submits `workflow`; the job id from the 201 answer.
    pub async fn submit(&self, token: &str, workflow: &Value) -> String {
        let (status, body) = self
            .call(
                Method::POST,
                "/api/v1/jobs",
                Some(token),
                Some(json!({"prompt": workflow})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["id"].as_str().unwrap().to_string()
    }

    /// `GET /api/v1/jobs/{id}` (200 expected).
    pub async fn job(&self, token: &str, id: &str) -> Value {
        let (status, body) = self
            .call(Method::GET, &format!("/api/v1/jobs/{id}"), Some(token), None)
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body
    }

    /// Downloads `path`; the status and the bytes.
    pub async fn bytes(&self, token: Option<&str>, path: &str) -> (StatusCode, Vec<u8>) {
        let mut request = self.http.get(format!("{}{path}", self.url));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        (status, response.bytes().await.unwrap().to_vec())
    }
}

/// A client's live event stream (`/api/v1/events`).
pub struct Events {
    socket: tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
}

impl Events {
    /// Opens the stream with a bearer token and `query` (`""`, `"?job=…"`), and reads its hello.
    pub async fn open(url: &str, token: &str, query: &str) -> Events {
        let mut request = format!("{}/api/v1/events{query}", url.replace("http://", "ws://"))
            .into_client_request()
            .unwrap();
        request
            .headers_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        let (socket, _) = tokio_tungstenite::connect_async(request).await.unwrap();
        let mut events = Events { socket };
        let hello = events.next().await;
        assert_eq!(hello["type"], "hello", "{hello}");
        events
    }

    /// The next JSON message (binary frames and pings skipped).
    pub async fn next(&mut self) -> Value {
        loop {
            let message = tokio::time::timeout(WAIT, self.socket.next())
                .await
                .expect("no event in time")
                .expect("the event stream closed")
                .unwrap();
            if let Message::Text(text) = message {
                return serde_json::from_str(text.as_str()).unwrap();
            }
        }
    }

    /// Reads until a message matches; returns it and every message before it.
    pub async fn until(&mut self, mut pred: impl FnMut(&Value) -> bool) -> (Value, Vec<Value>) {
        let mut before = Vec::new();
        loop {
            let v = self.next().await;
            if pred(&v) {
                return (v, before);
            }
            before.push(v);
        }
    }

    /// Reads until job `id` ends; returns its terminal event and its earlier events (other messages
    /// dropped).
    pub async fn until_terminal(&mut self, id: &str) -> (Value, Vec<Value>) {
        let (last, before) = self.until(|v| v["job_id"] == id && is_terminal(v)).await;
        let mine = before.into_iter().filter(|v| v["job_id"] == id).collect();
        (last, mine)
    }

    /// Closes the stream.
    pub async fn close(mut self) {
        let _ = self.socket.send(Message::Close(None)).await;
    }
}

/// True for `succeeded`, `failed` and `cancelled` events.
pub fn is_terminal(event: &Value) -> bool {
    matches!(event["type"].as_str(), Some("succeeded" | "failed" | "cancelled"))
}

/// Follows one job to its end on a `?job=` stream (race-free: the stream starts with the job's state)
/// and returns the job as stored at the end.
pub async fn wait_for_end(api: &Api, token: &str, id: &str) -> Value {
    let mut events = Events::open(&api.url, token, &format!("?job={id}")).await;
    let (snapshot, _) = events.until(|v| v["type"] == "job").await;
    let state = snapshot["job"]["state"].as_str().unwrap().to_string();
    if !matches!(state.as_str(), "succeeded" | "failed" | "cancelled") {
        events.until_terminal(id).await;
    }
    events.close().await;
    api.job(token, id).await
}

/// Files (not directories) under `dir`, recursively, as paths relative to it.
pub fn files_under(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(base, &path, out);
            } else {
                out.push(path.strip_prefix(base).unwrap().display().to_string());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// Waits until `condition` holds, checking every 10 ms, for at most [`WAIT`] (for state that announces
/// itself with no event, such as a worker's counters).
pub async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "gave up waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
