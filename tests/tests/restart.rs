//! Restarting the server mid-queue, on the durable SQLite store: after a graceful shutdown and after a
//! crash, a new server on the same data directory finishes every job exactly once — queued jobs survive,
//! the one that was running is recovered, and no job ends up with duplicate outputs.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use comfyume_server::config::StoreBackend;
use serde_json::Value;
use support::{Api, Events, Server, config, credentials, files_under, fixture, sim, wait_for_end};

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
    // The job that was running is recovered when its lease lapses, and runs again as a second attempt.
    assert_eq!(jobs[0]["attempts"], 2, "{}", jobs[0]);
    for job in &jobs[1..] {
        assert_eq!(job["attempts"], 1, "{job}");
    }
    server.shut_down().await;
}
