//! The authentication matrix: every route the router serves, called anonymously, by the owner of the
//! resource, by another user and by an admin. A route added to the router but not to this table fails the
//! test. Every admin route answers a participant 403.

use std::collections::BTreeSet;
use std::io::Write;
use std::sync::{Arc, Mutex};

use comfyume_server::api::{Access, endpoints};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest};

use crate::support::*;

enum Body {
    None,
    Json(Value),
    Form(&'static [(&'static str, &'static str)]),
    /// A multipart upload of one small file under this name.
    Upload(&'static str),
}

struct Row {
    method: Method,
    template: &'static str,
    path: String,
    body: Body,
    /// Expected status as: anonymous, the owner (alice), another user (bob), an admin (teacher).
    expect: [u16; 4],
}

const USER: [u16; 4] = [401, 200, 200, 200];
const OWNED: [u16; 4] = [401, 200, 404, 200];
const ADMIN: [u16; 4] = [401, 403, 403, 200];
const OPEN: [u16; 4] = [200, 200, 200, 200];

fn rows(job: &str) -> Vec<Row> {
    let row = |method: Method, template: &'static str, body: Body, expect: [u16; 4]| Row {
        path: template
            .replace("{id}", job)
            .replace("{n}", "0")
            .replace("{user}", "alice")
            .replace("{name}", "test"),
        method,
        template,
        body,
        expect,
    };
    use Method as M;
    let ok_job = || Body::Json(json!({"prompt": workflow(Behaviour::Ok)}));
    vec![
        row(M::GET, "/health", Body::None, OPEN),
        row(M::GET, "/login", Body::None, OPEN),
        row(
            M::POST,
            "/login",
            Body::Form(&[("user", "alice"), ("password", "alice-password")]),
            [303; 4],
        ),
        row(
            M::POST,
            "/api/v1/login",
            Body::Json(json!({"user": "alice", "password": "alice-password"})),
            OPEN,
        ),
        row(M::POST, "/api/v1/logout", Body::None, [204; 4]),
        row(M::GET, "/api/v1/me", Body::None, USER),
        row(M::POST, "/api/v1/jobs", ok_job(), [401, 201, 201, 201]),
        row(M::GET, "/api/v1/jobs", Body::None, USER),
        row(M::GET, "/api/v1/jobs/{id}", Body::None, OWNED),
        row(M::DELETE, "/api/v1/jobs/{id}", Body::None, OWNED),
        row(M::POST, "/api/v1/jobs/{id}/cancel", Body::None, OWNED),
        row(M::GET, "/api/v1/jobs/{id}/outputs", Body::None, OWNED),
        row(M::GET, "/api/v1/jobs/{id}/outputs/file", Body::None, OWNED),
        row(M::GET, "/api/v1/jobs/{id}/outputs/{n}", Body::None, OWNED),
        // Inputs are the caller's own: `test` exists for alice only (uploaded before the matrix runs).
        row(
            M::POST,
            "/api/v1/inputs",
            Body::Upload("upload.png"),
            [401, 201, 201, 201],
        ),
        row(M::GET, "/api/v1/inputs", Body::None, USER),
        row(M::GET, "/api/v1/inputs/{name}", Body::None, [401, 200, 404, 404]),
        row(
            M::DELETE,
            "/api/v1/inputs/{name}",
            Body::None,
            [401, 204, 404, 404],
        ),
        row(M::GET, "/api/v1/queue", Body::None, USER),
        row(M::GET, "/api/v1/events", Body::None, [401, 101, 101, 101]),
        row(M::GET, "/api/v1/openapi.json", Body::None, USER),
        // A worker's route: user credentials are no callback token, and the ended job takes no messages.
        row(
            M::POST,
            "/api/v1/callbacks/{id}",
            Body::Json(json!({"messages": []})),
            [401, 404, 404, 404],
        ),
        row(M::POST, "/api/v1/admin/queue/pause", Body::None, ADMIN),
        row(M::POST, "/api/v1/admin/queue/resume", Body::None, ADMIN),
        row(
            M::PUT,
            "/api/v1/admin/queue/policy",
            Body::Json(json!({"policy": "round_robin"})),
            ADMIN,
        ),
        row(
            M::POST,
            "/api/v1/admin/jobs/{id}/front",
            Body::None,
            [401, 403, 403, 409],
        ),
        row(
            M::POST,
            "/api/v1/admin/jobs/{id}/priority",
            Body::Json(json!({"priority": 0})),
            ADMIN,
        ),
        row(M::GET, "/api/v1/admin/users", Body::None, ADMIN),
        row(M::POST, "/api/v1/admin/users/{user}/pause", Body::None, ADMIN),
        row(M::POST, "/api/v1/admin/users/{user}/resume", Body::None, ADMIN),
        row(
            M::PUT,
            "/api/v1/admin/users/{user}/weight",
            Body::Json(json!({"weight": 1.0})),
            ADMIN,
        ),
        row(
            M::PUT,
            "/api/v1/admin/users/{user}/caps",
            Body::Json(json!({})),
            ADMIN,
        ),
        row(M::POST, "/api/v1/admin/users/{user}/cancel", Body::None, ADMIN),
        row(M::GET, "/api/v1/admin/jobs", Body::None, ADMIN),
        row(M::GET, "/api/v1/admin/usage", Body::None, ADMIN),
        row(M::GET, "/api/v1/admin/history", Body::None, ADMIN),
        row(M::GET, "/api/v1/admin/audit", Body::None, ADMIN),
        row(M::GET, "/api/v1/admin/dashboard", Body::None, ADMIN),
        row(M::GET, "/api/v1/admin/live", Body::None, [401, 403, 403, 101]),
        row(M::GET, "/admin", Body::None, [308; 4]),
        // The page sends anyone not logged in to the login form.
        row(M::GET, "/admin/", Body::None, [303, 403, 403, 200]),
        row(M::GET, "/admin/dashboard.js", Body::None, ADMIN),
        row(M::GET, "/admin/dashboard.css", Body::None, ADMIN),
        row(M::GET, "/api/v1/admin/providers", Body::None, ADMIN),
        row(
            M::PUT,
            "/api/v1/admin/providers/order",
            Body::Json(json!({"order": ["test"]})),
            ADMIN,
        ),
        row(M::POST, "/api/v1/admin/providers/{name}/drain", Body::None, ADMIN),
        row(
            M::POST,
            "/api/v1/admin/providers/{name}/undrain",
            Body::None,
            ADMIN,
        ),
        row(M::GET, "/ready", Body::None, USER),
        row(M::GET, "/metrics", Body::None, ADMIN),
    ]
}

/// A multipart form holding one small file named `name`.
fn upload_form(name: &str) -> reqwest::multipart::Form {
    let part = reqwest::multipart::Part::bytes(b"not really a picture".to_vec()).file_name(name.to_string());
    reqwest::multipart::Form::new().part("file", part)
}

async fn ws_status(s: &Server, path: &str, who: Option<&str>) -> u16 {
    let url = format!("{}{path}", s.url.replace("http://", "ws://"));
    let mut request = url.into_client_request().unwrap();
    if let Some(user) = who {
        let value = format!("Bearer {}", s.token(user)).parse().unwrap();
        request.headers_mut().insert("authorization", value);
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok((ws, _)) => {
            Ws { stream: ws }.close().await;
            101
        }
        Err(tungstenite::Error::Http(resp)) => resp.status().as_u16(),
        Err(e) => panic!("unexpected WebSocket error: {e}"),
    }
}

#[tokio::test]
async fn every_route_answers_each_kind_of_caller_as_documented() {
    let s = Server::start().await;
    let mut events = s.state.engine().subscribe();
    let job = job_id(&s.submit("alice", workflow(Behaviour::Ok)).await);
    wait_end(&mut events, job).await;
    let rows = rows(&job.to_string());
    let resp = s
        .request(Method::POST, "/api/v1/inputs", Some("alice"))
        .multipart(upload_form("test"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);

    let served: BTreeSet<(String, &str)> = endpoints()
        .iter()
        .map(|e| (e.method.to_string(), e.path))
        .collect();
    let tested: BTreeSet<(String, &str)> = rows.iter().map(|r| (r.method.to_string(), r.template)).collect();
    assert_eq!(
        served, tested,
        "every route the router serves is in the matrix, and only those"
    );
    for e in endpoints() {
        let row = rows
            .iter()
            .find(|r| r.method == e.method && r.template == e.path)
            .unwrap();
        let expected_access = match row.expect {
            _ if row.template.starts_with("/api/v1/callbacks/") => Access::Worker,
            [401 | 303, 403, _, _] => Access::Admin,
            [401, ..] => Access::User,
            _ => Access::Open,
        };
        assert_eq!(e.access, expected_access, "{} {}", e.method, e.path);
    }

    for row in &rows {
        for (i, who) in [None, Some("alice"), Some("bob"), Some("teacher")]
            .into_iter()
            .enumerate()
        {
            let websocket = endpoints().iter().any(|e| e.websocket && e.path == row.template);
            let status = if websocket {
                ws_status(&s, row.template, who).await
            } else {
                let path = if row.template.ends_with("/file") {
                    format!("{}?filename=test_00001_.png", row.path)
                } else {
                    row.path.clone()
                };
                let mut req = s.request(row.method.clone(), &path, who);
                req = match &row.body {
                    Body::None => req,
                    Body::Json(v) => req.json(v),
                    Body::Form(f) => req.form(f),
                    Body::Upload(name) => req.multipart(upload_form(name)),
                };
                let resp = req.send().await.unwrap();
                let status = resp.status().as_u16();
                // The admin page answers a participant with a page that says why, not JSON.
                if matches!(status, 401 | 403 | 404 | 409) && row.template != "/admin/" {
                    let body: Value = resp.json().await.unwrap();
                    assert!(body["code"].is_string() && body["message"].is_string(), "{body}");
                }
                status
            };
            assert_eq!(
                status,
                row.expect[i],
                "{} {} as {}",
                row.method,
                row.template,
                who.unwrap_or("anonymous")
            );
        }
    }
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_json() {
    let s = Server::start().await;
    let (status, body) = s.get("/api/v1/nope", "alice").await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );
    let (status, body) = s.call(Method::PATCH, "/api/v1/jobs", Some("alice"), None).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::METHOD_NOT_ALLOWED, Some("method_not_allowed"))
    );
}

/// Collects what the server logs.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

impl Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn the_event_stream_takes_a_cookie_a_header_or_a_token_in_the_url_which_is_never_logged() {
    let logs = Logs::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    // The test runtime runs every server task on this thread, so this catches all of the server's logs.
    // tracing caches per log site whether anyone listens; with a single thread-local subscriber it asks
    // only the current thread's, so a site first met by another test's thread would stay silent here. A
    // second (silent) subscriber makes it ask every subscriber.
    let capture = tracing::Dispatch::new(subscriber);
    let _second = tracing::Dispatch::new(tracing_subscriber::registry());
    let _guard = tracing::dispatcher::set_default(&capture);
    tracing::callsite::rebuild_interest_cache();
    let s = Server::start().await;
    let base = format!("{}/api/v1/events", s.url.replace("http://", "ws://"));

    // ?token= (an API token), as a browser would.
    let token = s.token("alice").to_string();
    let request = format!("{base}?token={token}").into_client_request().unwrap();
    let mut ws = s.ws_request(request).await.unwrap();
    let id = job_id(&s.submit("alice", workflow(Behaviour::Ok)).await);
    ws.until(|m| m["job_id"] == id.to_string() && m["type"] == "succeeded")
        .await;

    // The session cookie from a login.
    let login = s
        .request(Method::POST, "/api/v1/login", None)
        .json(&json!({"user": "bob", "password": "bob-password!"}))
        .send()
        .await
        .unwrap();
    let cookie = login.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let session: Value = login.json().await.unwrap();
    let mut request = base.as_str().into_client_request().unwrap();
    request.headers_mut().insert("cookie", cookie.parse().unwrap());
    let mut ws = s.ws_request(request).await.unwrap();
    let bobs = job_id(&s.submit("bob", workflow(Behaviour::Ok)).await);
    let (_, before) = ws
        .until(|m| m["job_id"] == bobs.to_string() && m["type"] == "succeeded")
        .await;
    assert!(before.iter().all(|m| m["job_id"] != id.to_string()));

    // A session token in the URL works too; a wrong one is 401.
    let session_token = session["token"].as_str().unwrap().to_string();
    let request = format!("{base}?token={session_token}")
        .into_client_request()
        .unwrap();
    s.ws_request(request).await.unwrap().close().await;
    let request = format!("{base}?token=cmu_forged").into_client_request().unwrap();
    match s.ws_request(request).await {
        Err(tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 401),
        other => panic!("a forged token was accepted: {:?}", other.map(|_| ())),
    }

    // A user may filter to themselves but not to another user; an admin sees everyone's events.
    assert!(s.ws(Some("alice"), "?user=alice").await.is_ok());
    match s.ws(Some("alice"), "?user=bob").await {
        Err(tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 403),
        other => panic!("alice watched bob: {:?}", other.map(|_| ())),
    }
    let mut admin = s.ws(Some("teacher"), "").await.unwrap();
    let a = job_id(&s.submit("alice", workflow(Behaviour::Ok)).await);
    let b = job_id(&s.submit("bob", workflow(Behaviour::Ok)).await);
    let mut ended = BTreeSet::new();
    while ended.len() < 2 {
        let (m, _) = admin.until(|m| m["type"] == "succeeded").await;
        ended.insert(m["job_id"].as_str().unwrap().to_string());
    }
    assert_eq!(ended, BTreeSet::from([a.to_string(), b.to_string()]));

    let logged = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(logged.contains("/api/v1/events"), "requests are logged: {logged}");
    assert!(!logged.contains(&token), "an API token was logged");
    assert!(!logged.contains(&session_token), "a session token was logged");
    assert!(!logged.contains("cmu_forged"), "a token from a URL was logged");
}
