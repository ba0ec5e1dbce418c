//! Faults with several comfyume servers on one Redis, over a **simulated** ComfyUI worker: a server
//! crashes mid-job, Redis restarts mid-queue, Redis is unreachable at submit time. Tests that stop Redis
//! use a private `redis-server` (free port, temporary directory, append-only file on), stopped by PID.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use comfyume_core::UserId;
use comfyume_server::auth::credentials::Credentials;
use comfyume_server::config::{ServerConfig, StoreBackend};
use reqwest::{Method, StatusCode};
use serde_json::json;
use support::private_redis::PrivateRedis;
use support::*;

/// A test server's configuration on the Redis at `url`.
fn redis_config(dir: &Path, url: &str) -> ServerConfig {
    let mut config = config(dir, StoreBackend::Redis);
    config.store.url = Some(url.to_owned());
    config.store.pool = Some("faults".to_owned());
    config
}

/// The same users on every server; each user's API token.
fn shared_credentials(configs: &[ServerConfig]) -> HashMap<&'static str, String> {
    let mut creds = Credentials::new().with_cost(4);
    let mut tokens = HashMap::new();
    for (name, admin) in USERS {
        let user = UserId::new(name).unwrap();
        creds.add_user(&user, &format!("{name}-password"), admin).unwrap();
        tokens.insert(name, creds.issue_token(&user, "tests").unwrap());
    }
    for config in configs {
        creds.save(&config.credentials_path()).unwrap();
    }
    tokens
}

/// A server stops dead (every task dropped, nothing handed back, as with `kill -9`) while the worker
/// runs its job: once the lease lapses the other server takes the job over, follows the attempt still
/// running on the worker instead of sending it again, and the job succeeds once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_crashed_servers_job_is_finished_once_by_another_server() {
    let redis = PrivateRedis::start().await;
    let worker = sim(Duration::from_secs(3)).await;
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let configs: Vec<_> = dirs
        .iter()
        .map(|d| redis_config(d.path(), &redis.url()))
        .collect();
    let tokens = shared_credentials(&configs);
    let mut configs = configs.into_iter();
    let a = Server::start(configs.next().unwrap(), &[worker.base_url()]).await;
    let b_config = configs.next().unwrap();
    let a_api = Api::new(&a.url);

    // Only A runs so far: the job is A's.
    let id = a_api.submit(&tokens["alice"], &fixture("01_empty_save")).await;
    eventually("the worker to start the job", || {
        worker.started_prompts().len() == 1
    })
    .await;
    let b = Server::start(b_config, &[worker.base_url()]).await;
    a.crash().await;

    let b_api = Api::new(&b.url);
    let done = wait_for_end(&b_api, &tokens["alice"], &id).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(
        worker.started_prompts(),
        std::slice::from_ref(&id),
        "the worker ran the job once"
    );
    b.shut_down().await;
}

/// Redis is killed and started again on its append-only file while jobs wait and run: the servers
/// reconnect (and load their scripts again), every job succeeds and none runs twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_redis_restart_mid_queue_loses_nothing() {
    let mut redis = PrivateRedis::start().await;
    let worker = sim(Duration::from_millis(100)).await;
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let configs: Vec<_> = dirs
        .iter()
        .map(|d| redis_config(d.path(), &redis.url()))
        .collect();
    let tokens = shared_credentials(&configs);
    let mut servers = Vec::new();
    for config in configs {
        servers.push(Server::start(config, &[worker.base_url()]).await);
    }
    let apis: Vec<Api> = servers.iter().map(|s| Api::new(&s.url)).collect();
    let workflow = fixture("01_empty_save");
    let mut ids = Vec::new();
    for n in 0..30 {
        let user = ["alice", "bob", "carol"][n % 3];
        ids.push((user, apis[n % 2].submit(&tokens[user], &workflow).await));
    }
    eventually("some jobs to start", || worker.started_prompts().len() >= 3).await;
    redis.restart().await;

    for (user, id) in &ids {
        let done = wait_until_end(&apis[0], &tokens[user], id).await;
        assert_eq!(done["state"], "succeeded", "{done}");
    }
    let started = worker.started_prompts();
    let mut seen = std::collections::HashSet::new();
    let twice: Vec<_> = started.iter().filter(|id| !seen.insert(id.as_str())).collect();
    assert!(twice.is_empty(), "started twice: {twice:?}");
    assert_eq!(seen.len(), ids.len());
    for server in servers {
        server.shut_down().await;
    }
}

/// While Redis is unreachable, a submission is refused with 503 and a message a person can act on, and
/// nothing of it is stored; once Redis is back the same submission is accepted once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unreachable_redis_answers_503_and_writes_nothing() {
    let mut redis = PrivateRedis::start().await;
    let worker = sim(Duration::from_millis(50)).await;
    let dir = tempfile::tempdir().unwrap();
    let config = redis_config(dir.path(), &redis.url());
    let tokens = shared_credentials(std::slice::from_ref(&config));
    let server = Server::start(config, &[worker.base_url()]).await;
    let api = Api::new(&server.url);
    redis.kill();

    let id = comfyume_core::JobId::new().to_string();
    let body = json!({"id": id, "prompt": fixture("01_empty_save")});
    let (status, answer) = api
        .call(
            Method::POST,
            "/api/v1/jobs",
            Some(&tokens["alice"]),
            Some(body.clone()),
        )
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{answer}");
    assert_eq!(answer["code"], "store_unavailable", "{answer}");
    assert!(
        answer["message"].as_str().unwrap().contains("try again"),
        "{answer}"
    );

    redis.restart().await;
    // The server reconnects by itself; the first calls may still find the old connection broken.
    let deadline = tokio::time::Instant::now() + WAIT;
    let answer = loop {
        let (status, answer) = api
            .call(Method::GET, "/api/v1/jobs", Some(&tokens["alice"]), None)
            .await;
        if status == StatusCode::OK {
            break answer;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the server did not reconnect: {status} {answer}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        answer["jobs"].as_array().map(Vec::len),
        Some(0),
        "nothing was half-written: {answer}"
    );
    let (status, answer) = api
        .call(Method::POST, "/api/v1/jobs", Some(&tokens["alice"]), Some(body))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    let done = wait_until_end(&api, &tokens["alice"], &id).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    assert_eq!(worker.started_prompts(), [id]);
    server.shut_down().await;
}

/// Polls `GET /api/v1/jobs/{id}` until the job ended, tolerating answers while Redis comes back.
async fn wait_until_end(api: &Api, token: &str, id: &str) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + WAIT * 4;
    loop {
        let (status, job) = api
            .call(Method::GET, &format!("/api/v1/jobs/{id}"), Some(token), None)
            .await;
        if status == StatusCode::OK
            && ["succeeded", "failed", "cancelled"]
                .iter()
                .any(|s| job["state"] == *s)
        {
            return job;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "job {id} did not end: {status} {job}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Redis over TLS with a password, its certificate signed by a private CA (`[store] ca_file`): a server
/// runs a job through it. Without the CA, or with a wrong password, the server refuses to start and says
/// why.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_server_uses_a_redis_that_takes_only_tls_and_a_password() {
    let redis = PrivateRedis::start_tls("s3cret-pw").await;
    let worker = sim(Duration::from_millis(200)).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = redis_config(dir.path(), &redis.url());
    config.store.ca_file = Some(redis.ca_file());
    let tokens = shared_credentials(std::slice::from_ref(&config));

    // The CA is not given: the certificate is not trusted.
    let mut untrusted = config.clone();
    untrusted.store.ca_file = None;
    let refused = |config| async move {
        match comfyume_server::build(config, Vec::new()).await {
            Ok(_) => panic!("the server started"),
            Err(e) => e.to_string(),
        }
    };
    let err = refused(untrusted).await;
    assert!(err.contains("Redis"), "{err}");
    // A wrong password.
    let mut wrong = config.clone();
    wrong.store.url = Some(redis.url().replace("s3cret-pw", "guess"));
    let err = refused(wrong).await;
    assert!(err.contains("Redis") && !err.contains("guess"), "{err}");

    let server = Server::start(config, &[worker.base_url()]).await;
    let api = Api::new(&server.url);
    let id = api.submit(&tokens["alice"], &fixture("01_empty_save")).await;
    let done = wait_for_end(&api, &tokens["alice"], &id).await;
    assert_eq!(done["state"], "succeeded", "{done}");
    server.shut_down().await;
}
