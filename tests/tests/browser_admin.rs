//! The admin page in headless Chromium (playwright-core) against a real server and a **simulated**
//! ComfyUI worker (a test tool standing in for a GPU box): jobs of three users appear live, moving a job
//! to the front changes the order the worker actually runs them in, pausing a user keeps their jobs from
//! starting, and every action lands in the audit log. Screenshots are kept under
//! `<target>/tmp/browser/admin/`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use comfyume_server::config::StoreBackend;
use reqwest::Method;
use support::{Api, Server, browser, config, credentials, fixture, sim};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_instructor_steers_the_queue_from_the_admin_page() {
    browser::require_browser();
    let dir = tempfile::tempdir().unwrap();
    // Long enough that a running job is seen on the page, short enough to keep the test quick.
    let worker = sim(Duration::from_millis(700)).await;
    let config = config(dir.path(), StoreBackend::Sqlite);
    let tokens = credentials(&config);
    let server = Server::start(config, &[worker.base_url()]).await;
    let participants: serde_json::Map<String, serde_json::Value> = ["alice", "bob", "carol"]
        .iter()
        .map(|u| (u.to_string(), tokens[u].clone().into()))
        .collect();
    let out = browser::run_script(
        "admin.mjs",
        "admin",
        &server.url,
        &[
            ("TEACHER_PASSWORD", "teacher-password".to_string()),
            ("ALICE_PASSWORD", "alice-password".to_string()),
            ("TOKENS", serde_json::Value::Object(participants).to_string()),
            ("WORKFLOW", fixture("01_empty_save").to_string()),
        ],
        Duration::from_secs(120),
    )
    .await;
    assert!(out.stdout.contains("ok: admin"), "{}", out.stdout);

    // The worker's own record: it started the four jobs in exactly the order the page showed after the
    // move to the front, and the paused user's two only after those.
    let line = |key: &str| -> Vec<String> {
        let prefix = format!("{key}: ");
        let found = out.stdout.lines().find_map(|l| l.strip_prefix(prefix.as_str()));
        found
            .unwrap_or_else(|| panic!("no `{key}:` line in {}", out.stdout))
            .split(',')
            .map(str::to_string)
            .collect()
    };
    let (shown, held) = (line("shown"), line("held"));
    let started = worker.started_prompts();
    assert_eq!(started.len(), 6, "{started:?}");
    assert_eq!(
        started[..4],
        shown[..],
        "the worker's order is the order the page showed"
    );
    let mut last_two = started[4..].to_vec();
    last_two.sort();
    let mut held = held;
    held.sort();
    assert_eq!(last_two, held, "the paused user's jobs started last");

    // What the page did is in the audit log, attributed to the instructor.
    let api = Api::new(&server.url);
    let (status, audit) = api
        .call(Method::GET, "/api/v1/admin/audit", Some(&tokens["teacher"]), None)
        .await;
    assert_eq!(status, 200, "{audit}");
    let actions: Vec<(&str, &str)> = audit
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .map(|e| (e["admin"].as_str().unwrap(), e["action"].as_str().unwrap()))
        .collect();
    assert_eq!(
        actions,
        [
            ("teacher", "pause_queue"),
            ("teacher", "move_to_front"),
            ("teacher", "pause_user"),
            ("teacher", "resume_queue"),
            ("teacher", "resume_user"),
        ]
    );
    server.shut_down().await;
    worker.shutdown().await;
}
