//! Security, end to end on a real server: ways around the login and the admin role, a session id chosen
//! by an attacker before the victim logs in, a session reused after its logout, names that try to climb out of their folder wherever the
//! server takes one, and one user flooding the server with event streams.
//!
//! Covered elsewhere and not repeated here: every route against every kind of caller
//! (`comfyume-server/tests/server/matrix.rs`), oversized, malformed and deeply nested bodies and
//! traversal in output names (`bad_input.rs`), expired sessions and revoked tokens (`auth/tests.rs`),
//! generated hostile input (`hostile.rs`).

#![allow(clippy::unwrap_used, clippy::expect_used)] // helpers outside #[test] fns: a failure fails the test

mod support;

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use comfyume_server::config::StoreBackend;
use reqwest::{Method, StatusCode};
use serde_json::json;
use support::*;

async fn server(
    dir: &Path,
) -> (
    Server,
    HashMap<&'static str, String>,
    comfyume_providers::sim::SimWorker,
) {
    let worker = sim(Duration::from_millis(10)).await;
    let config = config(dir, StoreBackend::Sqlite);
    let tokens = credentials(&config);
    let server = Server::start(config, &[worker.base_url()]).await;
    (server, tokens, worker)
}

/// A raw request (no client-side normalisation of the path): the status.
async fn raw(url: &str, method: &str, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let host = url.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(host).await.unwrap();
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n");
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut answer))
        .await
        .expect("an answer in time")
        .unwrap();
    let text = String::from_utf8_lossy(&answer).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ways_around_the_login_and_the_admin_role_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (server, tokens, _worker) = server(dir.path()).await;
    let alice = tokens["alice"].as_str();
    let teacher = tokens["teacher"].as_str();
    let bearer = |t: &str| format!("Bearer {t}");
    // Tokens that are not quite a token.
    let forged = [
        String::new(),
        "Bearer".into(),
        "Bearer ".into(),
        format!("Bearer {alice}x"),
        format!("Bearer {}", &alice[..alice.len() - 1]),
        format!("bearer{alice}"),
        format!("Basic {alice}"),
        "Bearer cmu_".into(),
        "Bearer null".into(),
        "Bearer ../../users.toml".into(),
    ];
    for auth in &forged {
        let (status, text) = raw(&server.url, "GET", "/api/v1/jobs", &[("Authorization", auth)]).await;
        assert!(status == 401 || status == 400, "{auth:?} → {text}");
    }
    // Two Authorization headers, the second an admin's: never the admin.
    let (status, text) = raw(
        &server.url,
        "GET",
        "/api/v1/admin/users",
        &[
            ("Authorization", &bearer(alice)),
            ("Authorization", &bearer(teacher)),
        ],
    )
    .await;
    assert_ne!(status, 200, "{text}");
    // A token in the query string is for the event stream only.
    let (status, text) = raw(&server.url, "GET", &format!("/api/v1/jobs?token={alice}"), &[]).await;
    assert_eq!(status, 401, "{text}");
    // A participant reaching an admin route by another spelling of its path.
    let tricks = [
        "/api/v1/admin/users/",
        "//api/v1/admin/users",
        "/api/v1//admin/users",
        "/api/v1/jobs/../admin/users",
        "/api/v1/jobs/%2e%2e/admin/users",
        "/api/v1/%61dmin/users",
        "/API/V1/ADMIN/USERS",
        "/metrics/",
        "/metrics?x=/api/v1/jobs",
        "/admin/../admin/",
    ];
    for path in tricks {
        for method in ["GET", "HEAD"] {
            let (status, text) = raw(&server.url, method, path, &[("Authorization", &bearer(alice))]).await;
            assert!(
                !(200..300).contains(&status) || !text.contains("teacher"),
                "{method} {path} as alice → {text}"
            );
            assert_ne!(status, 500, "{method} {path} → {text}");
        }
    }
    let api = Api::new(&server.url);
    for path in ["/api/v1/admin/users", "/metrics", "/api/v1/admin/audit"] {
        let (status, _) = api.call(Method::GET, path, Some(alice), None).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}");
    }
    // Admin actions by a participant are refused, and none reaches the audit log.
    let (status, _) = api
        .call(Method::POST, "/api/v1/admin/queue/pause", Some(alice), None)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, audit) = api
        .call(Method::GET, "/api/v1/admin/audit", Some(teacher), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(!audit.to_string().contains("pause"), "{audit}");
    server.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_id_planted_before_login_is_never_adopted() {
    let dir = tempfile::tempdir().unwrap();
    let (server, _tokens, _worker) = server(dir.path()).await;
    let planted = "cmu_s_attacker-chose-this-one";
    let http = reqwest::Client::new();
    let login = http
        .post(format!("{}/api/v1/login", server.url))
        .header("Cookie", format!("comfyume_session={planted}"))
        .json(&json!({"user": "alice", "password": "alice-password"}))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), StatusCode::OK);
    let cookie = login
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .unwrap()
        .to_string();
    assert!(!cookie.contains(planted), "{cookie}");
    assert!(cookie.contains("HttpOnly"), "{cookie}");
    let token = login.json::<serde_json::Value>().await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_string();
    assert_ne!(token, planted);
    // The planted id is still nobody; the new session is alice's.
    let me = |cookie: String| {
        let http = http.clone();
        let url = format!("{}/api/v1/me", server.url);
        async move {
            http.get(url)
                .header("Cookie", cookie)
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(
        me(format!("comfyume_session={planted}")).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(me(format!("comfyume_session={token}")).await, StatusCode::OK);
    let logout = http
        .post(format!("{}/api/v1/logout", server.url))
        .header("Cookie", format!("comfyume_session={token}"))
        .send()
        .await
        .unwrap();
    let cleared = logout
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .unwrap();
    assert!(cleared.contains("Max-Age=0"), "{cleared}");
    server.shut_down().await;
}

/// Logs `user` in; the session token.
async fn log_in(url: &str, user: &str, password: &str) -> String {
    let login = reqwest::Client::new()
        .post(format!("{url}/api/v1/login"))
        .json(&json!({"user": user, "password": password}))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), StatusCode::OK);
    login.json::<serde_json::Value>().await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_string()
}

/// The status of `GET /api/v1/me` with the session `cookie`, and with the same token as a bearer.
async fn me_by_cookie_and_bearer(url: &str, token: &str) -> (StatusCode, StatusCode) {
    let http = reqwest::Client::new();
    let me = format!("{url}/api/v1/me");
    let by_cookie = http
        .get(&me)
        .header("Cookie", format!("comfyume_session={token}"))
        .send()
        .await
        .unwrap();
    let by_bearer = http.get(&me).bearer_auth(token).send().await.unwrap();
    (by_cookie.status(), by_bearer.status())
}

/// The status the event WebSocket's upgrade answers to the session `cookie` (101 when it opens).
async fn events_by_cookie(url: &str, token: &str) -> u16 {
    use tokio_tungstenite::tungstenite::{Error, client::IntoClientRequest};
    let mut request = format!("{}/api/v1/events", url.replace("http://", "ws://"))
        .into_client_request()
        .unwrap();
    let cookie = format!("comfyume_session={token}").parse().unwrap();
    request.headers_mut().insert("cookie", cookie);
    match tokio_tungstenite::connect_async(request).await {
        Ok((mut socket, answer)) => {
            socket.close(None).await.ok();
            answer.status().as_u16()
        }
        Err(Error::Http(answer)) => answer.status().as_u16(),
        Err(e) => panic!("the upgrade failed otherwise: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_logged_out_session_is_refused_everywhere_and_others_are_not() {
    let dir = tempfile::tempdir().unwrap();
    let (server, tokens, _worker) = server(dir.path()).await;
    let url = server.url.clone();
    // Alice in two browsers.
    let first = log_in(&url, "alice", "alice-password").await;
    let second = log_in(&url, "alice", "alice-password").await;
    assert_ne!(first, second);
    let ok = (StatusCode::OK, StatusCode::OK);
    assert_eq!(me_by_cookie_and_bearer(&url, &first).await, ok);
    assert_eq!(events_by_cookie(&url, &first).await, 101);

    let logout = reqwest::Client::new()
        .post(format!("{url}/api/v1/logout"))
        .header("Cookie", format!("comfyume_session={first}"))
        .send()
        .await
        .unwrap();
    assert_eq!(logout.status(), StatusCode::NO_CONTENT);

    // Someone who kept the old cookie gets nowhere: not the API, not the events, not as a bearer.
    let refused = (StatusCode::UNAUTHORIZED, StatusCode::UNAUTHORIZED);
    assert_eq!(me_by_cookie_and_bearer(&url, &first).await, refused);
    assert_eq!(events_by_cookie(&url, &first).await, 401);
    let (status, body) = Api::new(&url)
        .call(Method::GET, "/api/v1/jobs", Some(&first), None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(body.to_string().contains("logged out"), "{body}");
    // Her other browser and her API token are untouched.
    assert_eq!(me_by_cookie_and_bearer(&url, &second).await, ok);
    assert_eq!(events_by_cookie(&url, &second).await, 101);
    let (status, _) = Api::new(&url)
        .call(Method::GET, "/api/v1/jobs", Some(&tokens["alice"]), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    // Logging out again, or with no session at all, changes nothing.
    for cookie in [format!("comfyume_session={first}"), String::new()] {
        let again = reqwest::Client::new()
            .post(format!("{url}/api/v1/logout"))
            .header("Cookie", cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(again.status(), StatusCode::NO_CONTENT);
    }
    assert_eq!(me_by_cookie_and_bearer(&url, &second).await, ok);
    server.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_that_climb_out_of_their_folder_are_refused_wherever_a_name_is_taken() {
    let dir = tempfile::tempdir().unwrap();
    // A frontend folder with one file, next to the credentials it must never serve.
    let frontend = dir.path().join("frontend");
    std::fs::create_dir_all(&frontend).unwrap();
    std::fs::write(frontend.join("index.html"), "<html>frontend</html>").unwrap();
    std::fs::write(frontend.join("app.js"), "console.log(1)").unwrap();
    let (server, tokens, _worker) = server(dir.path()).await;
    let secret = std::fs::read_to_string(dir.path().join("users.toml")).unwrap();
    assert!(!secret.is_empty());
    let alice = tokens["alice"].as_str();
    let teacher = tokens["teacher"].as_str();
    let bearer = format!("Bearer {alice}");
    let (status, _) = raw(
        &server.url,
        "GET",
        "/u/alice/app.js",
        &[("Authorization", &bearer)],
    )
    .await;
    assert_eq!(status, 200, "the file itself is served");
    let climbs = [
        "/u/alice/../users.toml",
        "/u/alice/..%2fusers.toml",
        "/u/alice/..%2Fusers.toml",
        "/u/alice/%2e%2e/users.toml",
        "/u/alice/%2e%2e%2fusers.toml",
        "/u/alice/..%5cusers.toml",
        "/u/alice/....//users.toml",
        "/u/alice/%252e%252e/users.toml",
        "/u/alice//etc/passwd",
        "/u/alice/%2fetc%2fpasswd",
        "/u/alice/app.js%00.png",
        "/assets/images/../../users.toml",
        "/assets/images/..%2f..%2fusers.toml",
        "/assets/images/%2e%2e/%2e%2e/users.toml",
    ];
    for path in climbs {
        let (status, text) = raw(&server.url, "GET", path, &[("Authorization", &bearer)]).await;
        assert!(
            !text.contains("password_hash") && !text.contains("root:"),
            "{path} → {text}"
        );
        assert!(
            status == 400 || status == 403 || status == 404,
            "{path} → {status}"
        );
    }
    // Names in the admin API: a user, a provider, a job id.
    let api = Api::new(&server.url);
    for name in ["..%2F..%2Fusers.toml", "%2e%2e", "alice%00", "..%5c..%5cx", "%2F"] {
        let (status, body) = api
            .call(
                Method::POST,
                &format!("/api/v1/admin/users/{name}/pause"),
                Some(teacher),
                None,
            )
            .await;
        assert!(status.is_client_error(), "user {name} → {status} {body}");
        let (status, body) = api
            .call(
                Method::POST,
                &format!("/api/v1/admin/providers/{name}/drain"),
                Some(teacher),
                None,
            )
            .await;
        assert!(status.is_client_error(), "provider {name} → {status} {body}");
        let (status, body) = api
            .call(Method::GET, &format!("/api/v1/jobs/{name}"), Some(alice), None)
            .await;
        assert!(status.is_client_error(), "job {name} → {status} {body}");
    }
    // Nothing was paused or drained, and the credentials are as they were.
    let (_, users) = api
        .call(Method::GET, "/api/v1/admin/users", Some(teacher), None)
        .await;
    assert!(!users.to_string().contains("\"paused\":true"), "{users}");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("users.toml")).unwrap(),
        secret
    );
    server.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_user_flooding_the_server_with_event_streams_leaves_the_others_served() {
    let dir = tempfile::tempdir().unwrap();
    let (server, tokens, _worker) = server(dir.path()).await;
    let api = Api::new(&server.url);
    // Bob opens 300 event streams and keeps them.
    let mut flood = Vec::new();
    for _ in 0..300 {
        flood.push(Events::open(&server.url, &tokens["bob"], "").await);
    }
    // Alice is served as usual: her job runs and its events reach her (and none of bob's streams).
    let id = api.submit(&tokens["alice"], &fixture("01_empty_save")).await;
    let job = wait_for_end(&api, &tokens["alice"], &id).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    let streams = |text: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix("comfyume_websocket_connections "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap()
    };
    let metrics = |api: Api, teacher: String| async move {
        let (_, body) = api.call(Method::GET, "/metrics", Some(&teacher), None).await;
        body.as_str().unwrap().to_string()
    };
    assert!(streams(&metrics(api.clone(), tokens["teacher"].clone()).await) >= 300.0);
    // Dropped, they are all let go: nothing leaks.
    for events in flood {
        events.close().await;
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let open = streams(&metrics(api.clone(), tokens["teacher"].clone()).await);
        if open == 0.0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{open} streams still counted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.shut_down().await;
}
