//! Several comfyume servers on one Redis (the machine's, `COMFYUME_TEST_REDIS` or 127.0.0.1:6379, in a
//! pool of the test's own that is deleted afterwards), in front of one **simulated** ComfyUI worker whose
//! record of the prompts it started is the ground truth: which jobs ran, how often, in which order.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use comfyume_core::{RedisOptions, RedisStore, UserId};
use comfyume_providers::ComfyUiConfig;
use comfyume_server::auth::credentials::Credentials;
use comfyume_server::config::{ServerConfig, StoreBackend};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use support::*;

/// The Redis the tests share.
fn redis_url() -> String {
    std::env::var("COMFYUME_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// A pool name no other test uses.
fn fresh_pool() -> String {
    format!("test-{}", comfyume_core::JobId::new().0.simple())
}

/// A test server's configuration on the Redis store in `pool`.
fn redis_config(dir: &Path, pool: &str) -> ServerConfig {
    let mut config = config(dir, StoreBackend::Redis);
    config.store.url = Some(redis_url());
    config.store.pool = Some(pool.to_owned());
    config.scheduler.max_queued_per_user = None;
    config
}

/// The same users (an admin `teacher` and `user00`…) on every server; each user's API token.
fn shared_credentials(configs: &[ServerConfig], users: &[String]) -> HashMap<String, String> {
    let mut creds = Credentials::new().with_cost(4);
    let mut tokens = HashMap::new();
    let everyone = users
        .iter()
        .map(|u| (u.as_str(), false))
        .chain([("teacher", true)]);
    for (name, admin) in everyone {
        let user = UserId::new(name).unwrap();
        creds.add_user(&user, &format!("{name}-password"), admin).unwrap();
        tokens.insert(name.to_owned(), creds.issue_token(&user, "tests").unwrap());
    }
    for config in configs {
        creds.save(&config.credentials_path()).unwrap();
    }
    tokens
}

/// Deletes the pool's keys when the test ends, passed or not.
struct PoolGuard(String);

impl Drop for PoolGuard {
    fn drop(&mut self) {
        let pool = self.0.clone();
        let cleanup = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let options = RedisOptions::default().with_pool(pool);
                if let Ok(store) = RedisStore::connect(&redis_url(), options).await {
                    let _ = store.delete_pool().await;
                }
            });
        });
        let _ = cleanup.join();
    }
}

/// Waits (polling, up to `limit`) until `check` returns true.
async fn until(what: &str, limit: Duration, mut check: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "gave up waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `GET /api/v1/queue` as an admin.
async fn queue(api: &Api, admin: &str) -> Value {
    let (status, body) = api.call(Method::GET, "/api/v1/queue", Some(admin), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

/// Three servers on one Redis, 20 users × 50 jobs submitted to all three while their queues are paused,
/// then resumed: every job succeeds, the worker started each exactly once, and the order it started them
/// in is fair across servers (after every 20·k starts each user had k ± 3 jobs started).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_servers_share_one_queue_and_run_every_job_once_in_fair_order() {
    const SERVERS: usize = 3;
    const USERS: usize = 20;
    const JOBS: usize = 50;
    let pool = fresh_pool();
    let _cleanup = PoolGuard(pool.clone());
    let worker = sim(Duration::from_millis(5)).await;
    let dirs: Vec<_> = (0..SERVERS).map(|_| tempfile::tempdir().unwrap()).collect();
    let configs: Vec<_> = dirs.iter().map(|d| redis_config(d.path(), &pool)).collect();
    let users: Vec<String> = (0..USERS).map(|i| format!("user{i:02}")).collect();
    let tokens = shared_credentials(&configs, &users);
    let admin = tokens["teacher"].clone();
    let mut servers = Vec::new();
    for config in configs {
        servers.push(Server::start(config, &[worker.base_url()]).await);
    }
    let apis: Vec<Api> = servers.iter().map(|s| Api::new(&s.url)).collect();
    for api in &apis {
        let (status, body) = api
            .call(Method::POST, "/api/v1/admin/queue/pause", Some(&admin), None)
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }

    // Every user submits all their jobs, spread over the three servers, all users at once.
    let workflow = fixture("01_empty_save");
    let mut submitters = tokio::task::JoinSet::new();
    for (u, user) in users.iter().enumerate() {
        let token = tokens[user].clone();
        let apis: Vec<Api> = apis.clone();
        let workflow = workflow.clone();
        let user = user.clone();
        submitters.spawn(async move {
            let mut ids = Vec::new();
            for j in 0..JOBS {
                ids.push(apis[(u + j) % SERVERS].submit(&token, &workflow).await);
            }
            (user, ids)
        });
    }
    let mut owner_of = HashMap::new();
    while let Some(done) = submitters.join_next().await {
        let (user, ids) = done.unwrap();
        for id in ids {
            owner_of.insert(id, user.clone());
        }
    }
    assert_eq!(owner_of.len(), USERS * JOBS);

    // Each server learns the others' jobs from the shared queue.
    for api in &apis {
        until("every server to see the whole queue", WAIT * 4, async || {
            queue(api, &admin).await["waiting"] == USERS * JOBS
        })
        .await;
    }
    for api in &apis {
        let (status, body) = api
            .call(Method::POST, "/api/v1/admin/queue/resume", Some(&admin), None)
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    until(
        "the worker to start every job",
        Duration::from_secs(600),
        async || worker.started_prompts().len() >= USERS * JOBS,
    )
    .await;

    // Every job succeeded, and was started on the worker exactly once.
    for (id, user) in &owner_of {
        let job = wait_for_end(&apis[0], &tokens[user], id).await;
        assert_eq!(job["state"], "succeeded", "{job}");
    }
    let started = worker.started_prompts();
    let mut times: HashMap<&str, usize> = HashMap::new();
    for id in &started {
        *times.entry(id.as_str()).or_default() += 1;
    }
    let twice: Vec<_> = times.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "started more than once: {twice:?}");
    assert_eq!(times.len(), USERS * JOBS);
    assert!(owner_of.keys().all(|id| times.contains_key(id.as_str())));

    // Fair across servers: in the worker's start order, after 20·k starts every user had k ± 3.
    let mut count: HashMap<&str, usize> = HashMap::new();
    let mut worst = 0usize;
    for (n, id) in started.iter().enumerate() {
        *count.entry(owner_of[id].as_str()).or_default() += 1;
        if (n + 1) % USERS == 0 {
            let k = (n + 1) / USERS;
            for user in &users {
                let got = count.get(user.as_str()).copied().unwrap_or(0);
                worst = worst.max(got.abs_diff(k));
            }
        }
    }
    assert!(
        worst <= 3,
        "a user got ahead of or behind the round by {worst} jobs"
    );

    for server in servers {
        server.shut_down().await;
    }
}

/// A user connected to server A follows a job that server B runs (A's own provider is drained, so only
/// B can take it): the progress and the end arrive over Redis pub/sub.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_user_on_one_server_sees_the_progress_of_a_job_another_server_runs() {
    let pool = fresh_pool();
    let _cleanup = PoolGuard(pool.clone());
    let worker = sim(Duration::from_millis(200)).await;
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let configs: Vec<_> = dirs.iter().map(|d| redis_config(d.path(), &pool)).collect();
    let users = vec!["alice".to_owned()];
    let tokens = shared_credentials(&configs, &users);
    // The two servers name their connections to the worker apart, so draining A's leaves B's.
    let mut servers = Vec::new();
    for (config, name) in configs.into_iter().zip(["sim-a", "sim-b"]) {
        let provider = ComfyUiConfig {
            name: name.into(),
            client_id_seed: Some(comfyume_server::identity(&config)),
            ..support::pool(&[worker.base_url()])
        };
        servers.push(Server::start_with(config, provider).await);
    }
    let (a, b) = (Api::new(&servers[0].url), Api::new(&servers[1].url));
    let (status, body) = a
        .call(
            Method::POST,
            "/api/v1/admin/providers/sim-a/drain",
            Some(&tokens["teacher"]),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let mut events = Events::open(&a.url, &tokens["alice"], "").await;
    let id = a
        .submit(&tokens["alice"], &fixture("12_progress_colortransfer"))
        .await;
    let (end, seen) = events.until_terminal(&id).await;
    assert_eq!(end["type"], "succeeded", "{end}");
    let kinds: Vec<&str> = seen.iter().filter_map(|e| e["type"].as_str()).collect();
    assert!(
        kinds.contains(&"dispatched") && kinds.contains(&"progress"),
        "{kinds:?}"
    );
    assert_eq!(worker.started_prompts(), std::slice::from_ref(&id));
    let job = b.job(&tokens["alice"], &id).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    events.close().await;
    for server in servers {
        server.shut_down().await;
    }
}

/// The instructor's standing overrides hold on every server of the pool: the queue paused on A holds
/// jobs submitted to B; a weight set on A shows on B; resuming on B lets A's and B's jobs run.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_override_made_on_one_server_holds_on_every_server() {
    let pool = fresh_pool();
    let _cleanup = PoolGuard(pool.clone());
    let worker = sim(Duration::from_millis(5)).await;
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let configs: Vec<_> = dirs.iter().map(|d| redis_config(d.path(), &pool)).collect();
    let users = vec!["alice".to_owned()];
    let tokens = shared_credentials(&configs, &users);
    let admin = tokens["teacher"].clone();
    let mut servers = Vec::new();
    for config in configs {
        servers.push(Server::start(config, &[worker.base_url()]).await);
    }
    let (a, b) = (Api::new(&servers[0].url), Api::new(&servers[1].url));

    let (status, body) = a
        .call(Method::POST, "/api/v1/admin/queue/pause", Some(&admin), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let weight = serde_json::json!({"weight": 3.0});
    let (status, body) = a
        .call(
            Method::PUT,
            "/api/v1/admin/users/alice/weight",
            Some(&admin),
            Some(weight),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    until("B to follow A's pause", WAIT, async || {
        queue(&b, &admin).await["paused"] == true
    })
    .await;
    until("B to follow A's weight for alice", WAIT, async || {
        let (_, users) = b
            .call(Method::GET, "/api/v1/admin/users", Some(&admin), None)
            .await;
        users.to_string().contains("\"weight\":3.0")
    })
    .await;

    // Held on B too: nothing starts while the pool's queue is paused.
    let on_b = b.submit(&tokens["alice"], &fixture("01_empty_save")).await;
    let on_a = a.submit(&tokens["alice"], &fixture("01_empty_save")).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(worker.started_prompts().is_empty(), "a job started while paused");

    let (status, body) = b
        .call(Method::POST, "/api/v1/admin/queue/resume", Some(&admin), None)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    for id in [&on_a, &on_b] {
        let job = wait_for_end(&a, &tokens["alice"], id).await;
        assert_eq!(job["state"], "succeeded", "{job}");
    }
    until("A to follow B's resume", WAIT, async || {
        queue(&a, &admin).await["paused"] == false
    })
    .await;
    for server in servers {
        server.shut_down().await;
    }
}
