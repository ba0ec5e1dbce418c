//! Auth over real HTTP on loopback: login, sessions, tokens, expiry, reloads.

use std::sync::Arc;
use std::time::Duration;

use axum::routing::get;
use comfyume_core::{Dispatcher, DispatcherConfig, LocalDirSink, MemoryStore, SchedulerConfig};
use reqwest::StatusCode;
use serde_json::{Value, json};

use super::*;
use crate::config::ServerConfig;

struct Server {
    url: String,
    state: AppState,
    creds_path: PathBuf,
    _dir: tempfile::TempDir,
}

async fn server(session_ttl: Duration) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let creds_path = dir.path().join("users.toml");
    let mut creds = Credentials::new().with_cost(4);
    creds
        .add_user(&UserId::new("alice").unwrap(), "alice-password", false)
        .unwrap();
    creds
        .add_user(&UserId::new("teacher").unwrap(), "teacher-password", true)
        .unwrap();
    creds.save(&creds_path).unwrap();
    let auth = Auth::open(&creds_path, &dir.path().join("session.key"), session_ttl, false).unwrap();
    let engine = Dispatcher::new(
        Arc::new(MemoryStore::new()),
        Arc::new(LocalDirSink::new(dir.path())),
        Vec::new(),
        SchedulerConfig::default(),
        DispatcherConfig::default(),
    );
    let state = AppState::new(engine, auth, ServerConfig::default());
    let app = crate::router(state.clone()).merge(
        Router::new()
            .route(
                "/test/admin",
                get(|Admin(p): Admin| async move { p.user.to_string() }),
            )
            .with_state(state.clone()),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    Server {
        url,
        state,
        creds_path,
        _dir: dir,
    }
}

use axum::Router;

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

async fn login(s: &Server, user: &str, password: &str) -> reqwest::Response {
    client()
        .post(format!("{}/api/v1/login", s.url))
        .json(&json!({"user": user, "password": password}))
        .send()
        .await
        .unwrap()
}

async fn me(s: &Server, auth: Option<&str>, cookie: Option<&str>) -> (StatusCode, Value) {
    let mut req = client().get(format!("{}/api/v1/me", s.url));
    if let Some(token) = auth {
        req = req.header("authorization", format!("Bearer {token}"));
    }
    if let Some(c) = cookie {
        req = req.header("cookie", c);
    }
    let resp = req.send().await.unwrap();
    (resp.status(), resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn login_gives_a_session_usable_as_bearer_and_cookie() {
    let s = server(Duration::from_secs(3600)).await;
    let resp = login(&s, "alice", "alice-password").await;
    assert_eq!(resp.status(), StatusCode::OK);
    let cookie = resp.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Lax"),
        "{cookie}"
    );
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["user"], "alice");
    assert_eq!(body["admin"], false);
    let token = body["token"].as_str().unwrap();

    let (status, who) = me(&s, Some(token), None).await;
    assert_eq!((status, who["user"].as_str()), (StatusCode::OK, Some("alice")));
    let cookie_pair = cookie.split(';').next().unwrap();
    let (status, who) = me(&s, None, Some(cookie_pair)).await;
    assert_eq!((status, who["user"].as_str()), (StatusCode::OK, Some("alice")));
}

#[tokio::test]
async fn wrong_or_missing_credentials_are_401_with_a_reason() {
    let s = server(Duration::from_secs(3600)).await;
    for (user, password) in [
        ("alice", "not-her-password"),
        ("nobody", "whatever-at-all"),
        ("", ""),
    ] {
        let resp = login(&s, user, password).await;
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{user}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["code"], "unauthorized");
        assert_eq!(
            body["message"], "wrong user name or password",
            "no hint which part was wrong"
        );
    }
    let (status, body) = me(&s, None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(body["message"].as_str().unwrap().contains("/login"));
    for bad in ["cmu_forged", "v1:alice:99999999999999:AAAA", "garbage"] {
        assert_eq!(me(&s, Some(bad), None).await.0, StatusCode::UNAUTHORIZED, "{bad}");
    }
    let resp = client()
        .get(format!("{}/api/v1/me", s.url))
        .header("authorization", "Basic YTpi")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let resp = client()
        .post(format!("{}/api/v1/login", s.url))
        .header("content-type", "application/json")
        .body("{\"user\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let body: Value = resp.json().await.unwrap();
    assert!(body["message"].as_str().unwrap().contains("line 1"), "{body}");
}

#[tokio::test]
async fn expired_sessions_are_refused_with_a_clear_message() {
    let s = server(Duration::from_millis(1)).await;
    let body: Value = login(&s, "alice", "alice-password").await.json().await.unwrap();
    let token = body["token"].as_str().unwrap().to_string();
    // The session lasted one millisecond; wait until the clock has passed its end.
    let expires = body["expires_at"].as_u64().unwrap();
    while Timestamp::now().0 <= expires {
        tokio::task::yield_now().await;
    }
    let (status, body) = me(&s, Some(&token), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(body["message"].as_str().unwrap().contains("expired"), "{body}");
}

#[tokio::test]
async fn api_tokens_work_until_revoked_and_edits_are_picked_up() {
    let s = server(Duration::from_secs(3600)).await;
    let alice = UserId::new("alice").unwrap();
    let mut creds = Credentials::load(&s.creds_path).unwrap().with_cost(4);
    let token = creds.issue_token(&alice, "laptop").unwrap();
    creds.save(&s.creds_path).unwrap();
    s.state.auth().reload().unwrap();
    assert_eq!(me(&s, Some(&token), None).await.0, StatusCode::OK);

    let session: Value = login(&s, "alice", "alice-password").await.json().await.unwrap();
    let session = session["token"].as_str().unwrap().to_string();
    // A new password ends every session; revoking ends the token.
    creds.set_password(&alice, "a-new-password").unwrap();
    creds.revoke_tokens(&alice).unwrap();
    creds.save(&s.creds_path).unwrap();
    s.state.auth().reload().unwrap();
    assert_eq!(me(&s, Some(&token), None).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(me(&s, Some(&session), None).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(
        login(&s, "alice", "a-new-password").await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn a_logout_outlives_a_restart() {
    let s = server(Duration::from_secs(3600)).await;
    let session = |body: Value| body["token"].as_str().unwrap().to_string();
    let gone = session(login(&s, "alice", "alice-password").await.json().await.unwrap());
    let kept = session(login(&s, "alice", "alice-password").await.json().await.unwrap());
    let mut headers = HeaderMap::new();
    headers.insert(header::AUTHORIZATION, format!("Bearer {gone}").parse().unwrap());
    s.state.auth().logout(&headers).await.unwrap();
    assert_eq!(me(&s, Some(&gone), None).await.0, StatusCode::UNAUTHORIZED);
    // The same files opened again, as a restarted server does.
    let key = s._dir.path().join("session.key");
    let restarted = Auth::open(&s.creds_path, &key, Duration::from_secs(3600), false).unwrap();
    let bearer = |token: &str| {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, format!("Bearer {token}").parse().unwrap());
        headers
    };
    let refused = restarted.authenticate(&bearer(&gone)).unwrap_err();
    assert!(refused.message.contains("logged out"), "{}", refused.message);
    assert_eq!(
        restarted.authenticate(&bearer(&kept)).unwrap().user.as_str(),
        "alice"
    );
    // One line per logged-out session that has not expired yet.
    let file = std::fs::read_to_string(s._dir.path().join("revoked-sessions")).unwrap();
    assert_eq!(file.lines().count(), 1, "{file}");
}

#[tokio::test]
async fn only_admins_pass_the_admin_extractor() {
    let s = server(Duration::from_secs(3600)).await;
    let get = |token: String| {
        let url = format!("{}/test/admin", s.url);
        async move {
            client()
                .get(url)
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    let alice: Value = login(&s, "alice", "alice-password").await.json().await.unwrap();
    let teacher: Value = login(&s, "teacher", "teacher-password")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        get(alice["token"].as_str().unwrap().into()).await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        get(teacher["token"].as_str().unwrap().into()).await,
        StatusCode::OK
    );
}

#[tokio::test]
async fn the_browser_form_sets_the_cookie_and_redirects_home_only() {
    let s = server(Duration::from_secs(3600)).await;
    let page = client()
        .get(format!("{}/login?next=/u/alice/", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    assert!(page.text().await.unwrap().contains("value=\"/u/alice/\""));
    let post = |password: &'static str, next: &'static str| {
        let url = format!("{}/login", s.url);
        async move {
            client()
                .post(url)
                .form(&[("user", "alice"), ("password", password), ("next", next)])
                .send()
                .await
                .unwrap()
        }
    };
    let ok = post("alice-password", "https://evil.example/").await;
    assert_eq!(ok.status(), StatusCode::SEE_OTHER);
    assert_eq!(ok.headers()["location"], "/");
    assert!(
        ok.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .starts_with(SESSION_COOKIE)
    );
    let bad = post("wrong-password", "/").await;
    assert_eq!(bad.status(), StatusCode::UNAUTHORIZED);
    assert!(bad.headers().get("set-cookie").is_none());
    assert!(bad.text().await.unwrap().contains("wrong user name or password"));
}

#[test]
fn a_first_start_creates_one_admin_with_a_random_password() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("users.toml");
    let (user, password) = Auth::init_first_admin(&path).unwrap().unwrap();
    assert_eq!(user.as_str(), "admin");
    assert!(password.len() >= 16);
    let creds = Credentials::load(&path).unwrap();
    assert!(creds.user("admin").unwrap().admin);
    assert!(credentials::verify_password(
        &password,
        &creds.user("admin").unwrap().password
    ));
    assert!(
        Auth::init_first_admin(&path).unwrap().is_none(),
        "never overwrites"
    );
}
