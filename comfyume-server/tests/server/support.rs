//! Test support: a scripted in-test provider (a test helper standing in for a GPU box, not a product), a
//! real server on 127.0.0.1 port 0 built with `comfyume_server::build` and run with `serve`, and HTTP and
//! WebSocket helpers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use comfyume_core::{
    Artifact, Capacity, Failure, FailureKind, Health, InferenceProvider, Job, JobEvent, JobId, JobState,
    OutputKind, ProviderError, ProviderEvent, ProviderEventStream, UserId,
};
use comfyume_server::auth::credentials::Credentials;
use comfyume_server::config::{EventsSection, HttpSection, ServerConfig, StoreBackend};
use futures::channel::mpsc::{UnboundedSender, unbounded};
use futures::{SinkExt, StreamExt};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::sync::{broadcast, oneshot};
use tokio_tungstenite::tungstenite::{self, Message, client::IntoClientRequest};

/// Every wait in these tests gives up after this long (a failure, not a sleep).
pub const WAIT: Duration = Duration::from_secs(10);

/// What the scripted provider does with a job, chosen by the workflow's node classes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Behaviour {
    /// Runs at once: started, executing, progress ×2, a preview, two outputs, completed.
    Ok,
    /// Starts, reports progress 0/2, then waits for [`ScriptedProvider::release`] (or a cancel).
    Hang,
    /// Starts, then fails with a node error on node "2".
    Fail,
}

impl Behaviour {
    fn of(workflow: &Value) -> Self {
        let classes: Vec<&str> = workflow
            .as_object()
            .map(|nodes| nodes.values().filter_map(|n| n["class_type"].as_str()).collect())
            .unwrap_or_default();
        if classes.contains(&"TestHang") {
            Behaviour::Hang
        } else if classes.contains(&"TestFail") {
            Behaviour::Fail
        } else {
            Behaviour::Ok
        }
    }
}

/// A workflow the scripted provider runs with `behaviour`.
pub fn workflow(behaviour: Behaviour) -> Value {
    let class = match behaviour {
        Behaviour::Ok => "SaveImage",
        Behaviour::Hang => "TestHang",
        Behaviour::Fail => "TestFail",
    };
    json!({
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8}},
        "2": {"class_type": class, "inputs": {"images": ["1", 0], "filename_prefix": "test"}},
    })
}

/// The bytes of the first output of every job that succeeds: a PNG signature and the job id, padded to
/// 256 KiB so the download is streamed in several chunks.
pub fn png_bytes(job: JobId) -> Vec<u8> {
    let mut data = b"\x89PNG\r\n\x1a\n".to_vec();
    data.extend_from_slice(job.to_string().as_bytes());
    data.resize(256 * 1024, 7);
    data
}

/// A provider whose behaviour per job is scripted by the test's workflow. Test helper only.
pub struct ScriptedProvider {
    name: String,
    slots: usize,
    health: Mutex<Health>,
    hanging: Mutex<HashMap<JobId, UnboundedSender<ProviderEvent>>>,
    submits: Mutex<Vec<JobId>>,
    cancels: Mutex<Vec<JobId>>,
}

impl ScriptedProvider {
    /// A provider named `test` with `slots` slots and the given health.
    pub fn new(slots: usize, health: Health) -> Arc<Self> {
        Self::named("test", slots, health)
    }

    /// A provider with a name.
    pub fn named(name: &str, slots: usize, health: Health) -> Arc<Self> {
        Arc::new(Self {
            name: name.to_string(),
            slots,
            health: Mutex::new(health),
            hanging: Mutex::new(HashMap::new()),
            submits: Mutex::new(Vec::new()),
            cancels: Mutex::new(Vec::new()),
        })
    }

    /// Lets a hanging job finish successfully. False if it is not hanging here.
    pub fn release(&self, job: JobId) -> bool {
        let Some(tx) = self.hanging.lock().unwrap().remove(&job) else {
            return false;
        };
        for event in success_tail(job) {
            let _ = tx.unbounded_send(event);
        }
        true
    }

    /// Jobs submitted here, in order.
    pub fn submits(&self) -> Vec<JobId> {
        self.submits.lock().unwrap().clone()
    }

    /// Jobs cancelled here, in order.
    pub fn cancels(&self) -> Vec<JobId> {
        self.cancels.lock().unwrap().clone()
    }
}

fn success_tail(job: JobId) -> Vec<ProviderEvent> {
    vec![
        ProviderEvent::Progress {
            node: Some("2".into()),
            value: 2,
            max: 2,
        },
        ProviderEvent::Preview {
            content_type: "image/jpeg".into(),
            data: Bytes::from_static(b"\xff\xd8preview"),
        },
        ProviderEvent::Artifact(Artifact {
            node_id: Some("2".into()),
            media: "images".into(),
            filename: "test_00001_.png".into(),
            subfolder: String::new(),
            kind: OutputKind::Output,
            data: Bytes::from(png_bytes(job)),
        }),
        ProviderEvent::Artifact(Artifact {
            node_id: Some("2".into()),
            media: "files".into(),
            filename: "notes ü.txt".into(),
            subfolder: "run/1".into(),
            kind: OutputKind::Output,
            data: Bytes::from_static(b"hello"),
        }),
        ProviderEvent::Completed,
    ]
}

#[async_trait]
impl InferenceProvider for ScriptedProvider {
    fn name(&self) -> &str {
        &self.name
    }

    fn capacity(&self) -> Capacity {
        Capacity { slots: self.slots }
    }

    async fn submit(&self, job: &Job) -> Result<ProviderEventStream, ProviderError> {
        self.submits.lock().unwrap().push(job.id);
        let (tx, rx) = unbounded();
        let head = [
            ProviderEvent::Started,
            ProviderEvent::Executing { node: "2".into() },
            ProviderEvent::Progress {
                node: Some("2".into()),
                value: 1,
                max: 2,
            },
        ];
        match Behaviour::of(&job.spec.workflow) {
            Behaviour::Ok => {
                for event in head.into_iter().chain(success_tail(job.id)) {
                    let _ = tx.unbounded_send(event);
                }
            }
            Behaviour::Fail => {
                let mut failure = Failure::new(FailureKind::NodeError, "the test node failed on purpose");
                failure.node_id = Some("2".into());
                failure.node_type = Some("TestFail".into());
                for event in [ProviderEvent::Started, ProviderEvent::Failed(failure)] {
                    let _ = tx.unbounded_send(event);
                }
            }
            Behaviour::Hang => {
                for event in head {
                    let _ = tx.unbounded_send(event);
                }
                self.hanging.lock().unwrap().insert(job.id, tx);
            }
        }
        Ok(Box::pin(rx))
    }

    async fn cancel(&self, job: JobId) -> Result<(), ProviderError> {
        self.cancels.lock().unwrap().push(job);
        if let Some(tx) = self.hanging.lock().unwrap().remove(&job) {
            let _ = tx.unbounded_send(ProviderEvent::Failed(Failure::new(
                FailureKind::ProviderError,
                "interrupted",
            )));
        }
        Ok(())
    }

    async fn health(&self) -> Health {
        self.health.lock().unwrap().clone()
    }
}

/// How to start a test server.
#[derive(Clone, Debug)]
pub struct Options {
    /// Provider slots.
    pub slots: usize,
    /// Provider health.
    pub health: Health,
    /// Per-user queued cap.
    pub max_queued: Option<usize>,
    /// The job store.
    pub store: StoreBackend,
    /// Largest request body.
    pub max_body_bytes: usize,
    /// Shutdown grace period.
    pub grace_secs: u64,
    /// Event stream pings and limits.
    pub events: EventsSection,
    /// More providers after `test`, by name, one healthy slot each.
    pub more_providers: Vec<&'static str>,
    /// Request read timeouts.
    pub http: HttpSection,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            slots: 1,
            health: Health::Healthy,
            max_queued: Some(100),
            store: StoreBackend::Memory,
            max_body_bytes: 64 * 1024,
            grace_secs: 0,
            events: EventsSection::default(),
            more_providers: Vec::new(),
            http: HttpSection::default(),
        }
    }
}

/// The users every test server knows: two users and an admin.
pub const USERS: [(&str, &str, bool); 3] = [
    ("alice", "alice-password", false),
    ("bob", "bob-password!", false),
    ("teacher", "teacher-password", true),
];

/// A running server.
pub struct Server {
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    /// Its state (engine, metrics…).
    pub state: comfyume_server::AppState,
    /// Its first provider, `test`.
    pub provider: Arc<ScriptedProvider>,
    /// Every provider, `test` first.
    pub providers: Vec<Arc<ScriptedProvider>>,
    tokens: HashMap<&'static str, String>,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<tokio::task::JoinHandle<Result<(), comfyume_server::ServerError>>>,
    client: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Server {
    /// Starts a server with the default options.
    pub async fn start() -> Self {
        Self::with(Options::default()).await
    }

    /// Starts a server.
    pub async fn with(options: Options) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut config = ServerConfig {
            data_dir: dir.path().join("data"),
            max_body_bytes: options.max_body_bytes,
            shutdown_grace_secs: options.grace_secs,
            events: options.events,
            http: options.http,
            ..ServerConfig::default()
        };
        config.store.backend = options.store;
        config.scheduler.max_queued_per_user = options.max_queued;
        std::fs::create_dir_all(&config.data_dir).unwrap();
        let mut creds = Credentials::new().with_cost(4);
        let mut tokens = HashMap::new();
        for (name, password, admin) in USERS {
            let user = UserId::new(name).unwrap();
            creds.add_user(&user, password, admin).unwrap();
            tokens.insert(name, creds.issue_token(&user, "tests").unwrap());
        }
        creds.save(&config.credentials_path()).unwrap();
        let provider = ScriptedProvider::new(options.slots, options.health);
        let mut providers = vec![provider.clone()];
        for name in &options.more_providers {
            providers.push(ScriptedProvider::named(name, 1, Health::Healthy));
        }
        let engine_providers = providers
            .iter()
            .map(|p| p.clone() as Arc<dyn InferenceProvider>)
            .collect();
        let state = comfyume_server::build(config, engine_providers).await.unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(comfyume_server::serve(listener, state.clone(), async move {
            let _ = rx.await;
        }));
        Server {
            url,
            state,
            provider,
            providers,
            tokens,
            shutdown: Some(tx),
            handle: Some(handle),
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            _dir: dir,
        }
    }

    /// The API token of a test user.
    pub fn token(&self, user: &str) -> &str {
        &self.tokens[user]
    }

    /// A request as `who` (None: anonymous).
    pub fn request(&self, method: Method, path: &str, who: Option<&str>) -> reqwest::RequestBuilder {
        let req = self.client.request(method, format!("{}{path}", self.url));
        match who {
            Some(user) => req.bearer_auth(self.token(user)),
            None => req,
        }
    }

    /// Sends a request with an optional JSON body; the status and the body (JSON, or a string).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        who: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self.request(method, path, who);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    /// `GET` as `who`.
    pub async fn get(&self, path: &str, who: &str) -> (StatusCode, Value) {
        self.call(Method::GET, path, Some(who), None).await
    }

    /// Submits `workflow` as `who`; the 201 body.
    pub async fn submit(&self, who: &str, workflow: Value) -> Value {
        let (status, body) = self
            .call(
                Method::POST,
                "/api/v1/jobs",
                Some(who),
                Some(json!({"prompt": workflow})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body
    }

    /// Submits a job that hangs on the provider and waits until it runs there.
    pub async fn submit_running(
        &self,
        who: &str,
        events: &mut broadcast::Receiver<std::sync::Arc<JobEvent>>,
    ) -> JobId {
        let id = job_id(&self.submit(who, workflow(Behaviour::Hang)).await);
        wait_event(events, |e| {
            e.job_id == id && e.kind == comfyume_core::EventKind::Started
        })
        .await;
        id
    }

    /// Every job's id and state, for "nothing changed" checks.
    pub async fn snapshot(&self) -> Vec<(JobId, JobState)> {
        let mut all: Vec<_> = self
            .state
            .engine()
            .list(&Default::default())
            .await
            .unwrap()
            .into_iter()
            .map(|j| (j.id, j.state))
            .collect();
        all.sort_by_key(|(id, _)| *id);
        all
    }

    /// Opens the event WebSocket as `who` (bearer header) with `query` (`""` or `"?job=…"`).
    pub async fn ws(&self, who: Option<&str>, query: &str) -> Result<Ws, tungstenite::Error> {
        let url = format!("{}/api/v1/events{query}", self.url.replace("http://", "ws://"));
        let mut request = url.into_client_request().unwrap();
        if let Some(user) = who {
            let value = format!("Bearer {}", self.token(user)).parse().unwrap();
            request.headers_mut().insert("authorization", value);
        }
        self.ws_request(request).await
    }

    /// Opens the event WebSocket with a prepared request.
    pub async fn ws_request(
        &self,
        request: tungstenite::handshake::client::Request,
    ) -> Result<Ws, tungstenite::Error> {
        let (stream, _) = tokio_tungstenite::connect_async(request).await?;
        let mut ws = Ws { stream };
        let hello = ws.next_json().await;
        assert_eq!(hello["type"], "hello", "{hello}");
        Ok(ws)
    }

    /// Starts the server's shutdown and waits until `serve` returned.
    pub async fn shut_down(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(handle) = self.handle.take() {
            tokio::time::timeout(WAIT, handle)
                .await
                .expect("serve did not finish after the shutdown signal")
                .unwrap()
                .unwrap();
        }
    }
}

/// A client's event stream.
pub struct Ws {
    /// The socket.
    pub stream: tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
}

/// What a WebSocket read gave.
#[derive(Debug)]
pub enum Frame {
    /// A JSON text message.
    Json(Value),
    /// A binary message.
    Binary(Vec<u8>),
    /// The server closed the stream, with this code.
    Closed(Option<u16>),
}

impl Ws {
    /// The next data frame (pings and pongs skipped).
    pub async fn next_frame(&mut self) -> Frame {
        loop {
            let msg = tokio::time::timeout(WAIT, self.stream.next())
                .await
                .expect("no WebSocket message in time");
            match msg {
                None => return Frame::Closed(None),
                Some(Err(e)) => panic!("WebSocket error: {e}"),
                Some(Ok(Message::Text(t))) => return Frame::Json(serde_json::from_str(&t).unwrap()),
                Some(Ok(Message::Binary(b))) => return Frame::Binary(b.to_vec()),
                Some(Ok(Message::Close(frame))) => return Frame::Closed(frame.map(|f| f.code.into())),
                Some(Ok(_)) => {}
            }
        }
    }

    /// The next JSON message.
    pub async fn next_json(&mut self) -> Value {
        match self.next_frame().await {
            Frame::Json(v) => v,
            other => panic!("expected a JSON message, got {other:?}"),
        }
    }

    /// Reads JSON messages until one matches; returns it and everything read before it.
    pub async fn until(&mut self, mut pred: impl FnMut(&Value) -> bool) -> (Value, Vec<Value>) {
        let mut before = Vec::new();
        loop {
            let v = self.next_json().await;
            if pred(&v) {
                return (v, before);
            }
            before.push(v);
        }
    }

    /// Closes the stream.
    pub async fn close(mut self) {
        let _ = self.stream.send(Message::Close(None)).await;
    }
}

/// The `id` of a job view.
pub fn job_id(view: &Value) -> JobId {
    view["id"].as_str().unwrap().parse().unwrap()
}

/// Waits for an engine event matching `pred`.
pub async fn wait_event(
    events: &mut broadcast::Receiver<std::sync::Arc<JobEvent>>,
    mut pred: impl FnMut(&JobEvent) -> bool,
) -> JobEvent {
    tokio::time::timeout(WAIT, async {
        loop {
            match events.recv().await {
                Ok(e) if pred(&e) => return std::sync::Arc::unwrap_or_clone(e),
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(e) => panic!("event bus closed: {e}"),
            }
        }
    })
    .await
    .expect("the expected event did not come in time")
}

/// Waits for the terminal event of `job`.
pub async fn wait_end(events: &mut broadcast::Receiver<std::sync::Arc<JobEvent>>, job: JobId) -> JobEvent {
    wait_event(events, |e| e.job_id == job && e.kind.is_terminal()).await
}

/// Waits until `cond` holds, letting the server's tasks run in between.
pub async fn wait_until(mut cond: impl FnMut() -> bool) {
    tokio::time::timeout(WAIT, async {
        while !cond() {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the condition did not hold in time");
}
