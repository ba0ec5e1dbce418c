//! Restarting the server mid-queue, on the durable SQLite store: after a graceful shutdown and after a
//! crash, a new server on the same data directory finishes every job exactly once — queued jobs survive,
//! the one that was running is recovered, and no job ends up with duplicate outputs.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use comfyume_providers::sim::SimWorker;
use comfyume_server::config::StoreBackend;
use serde_json::Value;
use support::{
    Api, Events, Server, config, credentials, eventually, files_under, fixture, sim, wait_for_end,
};

const JOBS: usize = 4;

/// A fresh server on `dir` with its first job running and the rest queued behind it. Returns the
/// server, the tokens and the job ids (the running one first).
async fn busy_server(dir: &Path, worker: &str) -> (Server, HashMap<&'static str, String>, Vec<String>) {
    let config = config(dir, StoreBackend::Sqlite);
    let tokens = credentials(&config);
    let server = Server::start(config, &[worker.to_string()]).await;
    let api = Api::new(&server.url);
    let mut events = Events::open(&server.url, &tokens["alice"], "").await;
    let mut ids = Vec::new();
    for i in 0..JOBS {
        let mut workflow = fixture("01_empty_save");
        workflow["2"]["inputs"]["filename_prefix"] = format!("gw/restart{i}").into();
        ids.push(api.submit(&tokens["alice"], &workflow).await);
    }
    let first = ids[0].clone();
    events
        .until(|v| v["job_id"] == first.as_str() && v["type"] == "started")
        .await;
    let (_, queue) = api
        .call(
            reqwest::Method::GET,
            "/api/v1/queue",
            Some(&tokens["alice"]),
            None,
        )
        .await;
    assert_eq!(
        queue["mine"].as_array().unwrap().len(),
        JOBS - 1,
        "the rest wait: {queue}"
    );
    (server, tokens, ids)
}

/// Every job finished on the new server, once, with exactly its one output in the owner's space.
async fn all_finished_once(server: &Server, dir: &Path, token: &str, ids: &[String]) -> Vec<Value> {
    let api = Api::new(&server.url);
    let mut jobs = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let job = wait_for_end(&api, token, id).await;
        assert_eq!(job["state"], "succeeded", "{job}");
        let outputs = job["outputs"].as_array().unwrap();
        assert_eq!(outputs.len(), 1, "{job}");
        let stored = files_under(&dir.join(format!("users/alice/output/{id}")));
        assert_eq!(stored.len(), 1, "job {i} has files {stored:?}");
        assert_eq!(
            stored[0],
            format!("gw/{}", outputs[0]["filename"].as_str().unwrap()),
            "{job}"
        );
        jobs.push(job);
    }
    let (_, list) = api
        .call(reqwest::Method::GET, "/api/v1/jobs?limit=100", Some(token), None)
        .await;
    assert_eq!(
        list["jobs"].as_array().unwrap().len(),
        ids.len(),
        "no job was added or lost: {list}"
    );
    jobs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_restart_mid_queue_finishes_every_job_once() {
    let worker = sim(Duration::from_millis(400)).await;
    let dir = tempfile::tempdir().unwrap();
    let (server, tokens, ids) = busy_server(dir.path(), &worker.base_url()).await;
    // Grace 0: the running job is handed back to the queue at once.
    server.shut_down().await;

    let server = Server::start(config(dir.path(), StoreBackend::Sqlite), &[worker.base_url()]).await;
    let jobs = all_finished_once(&server, dir.path(), &tokens["alice"], &ids).await;
    // A handed-back attempt is not counted against the job.
    assert_eq!(jobs[0]["attempts"], 1, "{}", jobs[0]);
    for job in &jobs[1..] {
        assert_eq!(job["attempts"], 1, "{job}");
    }
    server.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_crash_mid_queue_every_job_is_recovered_and_finished_once() {
    let worker = sim(Duration::from_millis(400)).await;
    let dir = tempfile::tempdir().unwrap();
    let (server, tokens, ids) = busy_server(dir.path(), &worker.base_url()).await;
    // Every task of the server stops at once: no hand-back, the running job's lease is simply left.
    server.crash().await;

    let server = Server::start(config(dir.path(), StoreBackend::Sqlite), &[worker.base_url()]).await;
    let jobs = all_finished_once(&server, dir.path(), &tokens["alice"], &ids).await;
    // The job that was running is recovered at once, as a second attempt: found again on the worker
    // (running or ended there), not sent a second time.
    assert_eq!(jobs[0]["attempts"], 2, "{}", jobs[0]);
    for job in &jobs[1..] {
        assert_eq!(job["attempts"], 1, "{job}");
    }
    let stats = worker.stats();
    assert_eq!(
        (stats.prompts_accepted, stats.executed, stats.interrupted),
        (JOBS as u64, JOBS as u64, 0),
        "each job ran exactly once on ComfyUI: {stats:?}"
    );
    server.shut_down().await;
}

/// A server with one job running on a worker taking `exec` per job. Returns the server, alice's token
/// and the job id, once the job has started.
async fn one_running(dir: &Path, worker: &str) -> (Server, String, String) {
    let config = config(dir, StoreBackend::Sqlite);
    let tokens = credentials(&config);
    let server = Server::start(config, &[worker.to_string()]).await;
    let api = Api::new(&server.url);
    let mut events = Events::open(&server.url, &tokens["alice"], "").await;
    let id = api.submit(&tokens["alice"], &fixture("14_two_outputs")).await;
    events
        .until(|v| v["job_id"] == id.as_str() && v["type"] == "started")
        .await;
    (server, tokens["alice"].clone(), id)
}

/// The job ended with both its files in alice's space, and ran exactly once on the worker.
async fn finished_once(server: &Server, dir: &Path, token: &str, id: &str, worker: &SimWorker) {
    let api = Api::new(&server.url);
    let job = wait_for_end(&api, token, id).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["outputs"].as_array().unwrap().len(), 2, "{job}");
    let stored = files_under(&dir.join(format!("users/alice/output/{id}")));
    assert_eq!(stored, ["gw/two_a_00001_.png", "gw/two_b_00001_.png"], "{job}");
    let stats = worker.stats();
    assert_eq!(
        (stats.prompts_accepted, stats.executed, stats.interrupted),
        (1, 1, 0),
        "the job ran exactly once on ComfyUI: {stats:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_while_comfyui_runs_a_job_the_server_follows_it_again_instead_of_sending_it_twice() {
    // Long enough that the job still runs its later nodes when the new server is up.
    let worker = sim(Duration::from_secs(4)).await;
    let dir = tempfile::tempdir().unwrap();
    let (server, token, id) = one_running(dir.path(), &worker.base_url()).await;
    server.crash().await;
    let server = Server::start(config(dir.path(), StoreBackend::Sqlite), &[worker.base_url()]).await;
    let mut events = Events::open(&server.url, &token, &format!("?job={id}")).await;
    // Live progress reaches watchers again: the prompt's websocket events come to the restarted
    // server (it reconnects under the same clientId), not only its end read from the history.
    let (event, _) = events.until(|v| v["type"] == "executing" || is_end(v)).await;
    assert_eq!(event["type"], "executing", "{event}");
    events.close().await;
    finished_once(&server, dir.path(), &token, &id, &worker).await;
    server.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_ended_on_comfyui_while_the_server_was_down_is_collected_from_its_history() {
    let worker = sim(Duration::from_millis(300)).await;
    let dir = tempfile::tempdir().unwrap();
    let (server, token, id) = one_running(dir.path(), &worker.base_url()).await;
    server.crash().await;
    eventually("the worker to finish the job", || worker.stats().executed == 1).await;
    let server = Server::start(config(dir.path(), StoreBackend::Sqlite), &[worker.base_url()]).await;
    finished_once(&server, dir.path(), &token, &id, &worker).await;
    server.shut_down().await;
}

fn is_end(event: &Value) -> bool {
    support::is_terminal(event)
}

/// An instructor's settings through the admin API: the queue and bob held (or released), the policy,
/// alice's weight and queued cap, the provider drained (or not).
async fn instruct(api: &Api, teacher: &str, hold: bool, policy: &str, weight: f64, max_queued: usize) {
    use reqwest::Method;
    use serde_json::json;
    let (pause, drain) = if hold {
        ("pause", "drain")
    } else {
        ("resume", "undrain")
    };
    let calls = [
        (Method::POST, format!("/api/v1/admin/queue/{pause}"), None),
        (
            Method::PUT,
            "/api/v1/admin/queue/policy".into(),
            Some(json!({ "policy": policy })),
        ),
        (Method::POST, format!("/api/v1/admin/users/bob/{pause}"), None),
        (
            Method::PUT,
            "/api/v1/admin/users/alice/weight".into(),
            Some(json!({ "weight": weight })),
        ),
        (
            Method::PUT,
            "/api/v1/admin/users/alice/caps".into(),
            Some(json!({ "max_queued": max_queued })),
        ),
        (Method::POST, format!("/api/v1/admin/providers/sim/{drain}"), None),
    ];
    for (method, path, body) in calls {
        let (status, answer) = api.call(method, &path, Some(teacher), body).await;
        assert_eq!(status, 200, "{path}: {answer}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_instructors_overrides_hold_after_a_restart() {
    use reqwest::Method;
    let worker = sim(Duration::from_millis(50)).await;
    let dir = tempfile::tempdir().unwrap();
    let tokens = credentials(&config(dir.path(), StoreBackend::Sqlite));
    let teacher = Some(tokens["teacher"].as_str());
    let server = Server::start(config(dir.path(), StoreBackend::Sqlite), &[worker.base_url()]).await;
    let api = Api::new(&server.url);
    instruct(&api, &tokens["teacher"], true, "priority", 3.0, 2).await;
    server.shut_down().await;
    assert!(dir.path().join("overrides.json").is_file());

    let server = Server::start(config(dir.path(), StoreBackend::Sqlite), &[worker.base_url()]).await;
    let api = Api::new(&server.url);
    let (_, queue) = api.call(Method::GET, "/api/v1/queue", teacher, None).await;
    assert_eq!(queue["paused"], true, "{queue}");
    assert_eq!(queue["policy"], "priority", "{queue}");
    assert_eq!(queue["providers"][0]["draining"], true, "{queue}");
    let (_, users) = api.call(Method::GET, "/api/v1/admin/users", teacher, None).await;
    let user = |name: &str| {
        users
            .as_array()
            .unwrap()
            .iter()
            .find(|u| u["user"] == name)
            .cloned()
    };
    let alice = user("alice").expect("alice's settings came back");
    assert_eq!(
        (alice["weight"].as_f64(), alice["paused"].as_bool()),
        (Some(3.0), Some(false))
    );
    assert_eq!(alice["max_queued"], 2, "{alice}");
    assert_eq!(user("bob").expect("bob's pause came back")["paused"], true);

    // Nothing starts while the queue is held; releasing everything runs the job and clears the file.
    let id = api.submit(&tokens["alice"], &fixture("01_empty_save")).await;
    let held = api.job(&tokens["alice"], &id).await;
    assert_eq!(held["state"], "queued", "{held}");
    assert!(
        held["estimated_start"]
            .to_string()
            .contains("the queue is paused by an admin"),
        "{held}"
    );
    // Back to the configuration: round robin, weight 1, the default cap of 100.
    instruct(&api, &tokens["teacher"], false, "round_robin", 1.0, 100).await;
    assert_eq!(
        wait_for_end(&api, &tokens["alice"], &id).await["state"],
        "succeeded"
    );
    assert!(
        !dir.path().join("overrides.json").exists(),
        "nothing differs from the configuration any more"
    );
    server.shut_down().await;
}
