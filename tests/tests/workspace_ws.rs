//! The workspace WebSocket while prompts wait: "queued, N ahead" / "waiting for a free GPU" truthfully,
//! only to the tab that queued them; a removed prompt ends quietly. Jobs run on a **simulated** worker.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use comfyume_server::config::StoreBackend;
use reqwest::{Method, StatusCode};
use serde_json::json;
use support::workspace::{Client, Socket};
use support::{Server, config, credentials, fixture, sim};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_prompt_is_told_its_place_and_other_tabs_get_only_the_queue_count() {
    let dir = tempfile::tempdir().unwrap();
    let worker = sim(Duration::from_millis(1500)).await;
    let config = config(dir.path(), StoreBackend::Memory);
    let tokens = credentials(&config);
    let server = Server::start(config, &[worker.base_url()]).await;
    let ws = Client::new(&server.url, &tokens);
    let mut tab = Socket::open(&server.url, "alice", &tokens["alice"], "tab-1").await;
    let mut other_tab = Socket::open(&server.url, "alice", &tokens["alice"], "tab-2").await;

    let first = ws.queue("alice", &fixture("01_empty_save"), "tab-1").await;
    tab.until(|m| m["type"] == "execution_start" && m["data"]["prompt_id"] == first)
        .await;
    let second = ws.queue("alice", &fixture("01_empty_save"), "tab-1").await;
    let third = ws.queue("alice", &fixture("01_empty_save"), "tab-1").await;
    // The worker runs one job at a time: the second is next, the third has one job before it.
    let place = |id: &str, position: u64| {
        let id = id.to_string();
        move |m: &serde_json::Value| {
            m["type"] == "comfyume_status"
                && m["data"]["prompt_id"] == id
                && m["data"]["position"] == position
        }
    };
    let seen = tab.until(place(&third, 1)).await;
    let seen_second =
        seen.iter().any(place(&second, 0)) || tab.until(place(&second, 0)).await.last().is_some();
    assert!(seen_second);
    let status = ws.get("alice", "/u/alice/api/prompt").await;
    assert_eq!(status["exec_info"]["queue_remaining"], 3);
    let queue = ws.get("alice", "/u/alice/api/queue").await;
    assert_eq!(queue["queue_running"].as_array().unwrap().len(), 1);
    assert_eq!(queue["queue_pending"].as_array().unwrap().len(), 2);

    // Removing the third from the queue ends it without a run.
    let body = json!({"delete": [third]}).to_string();
    let (status, _, _) = ws
        .call(Method::POST, "alice", "/u/alice/api/queue", Some(&body))
        .await;
    assert_eq!(status, StatusCode::OK);
    let done = tab.until_done(&second).await;
    assert!(
        done.iter()
            .all(|m| m["data"]["prompt_id"] != third || m["type"] == "comfyume_status"),
        "{done:?}"
    );
    let jobs = ws.get("alice", "/u/alice/api/jobs?status=cancelled").await;
    assert_eq!(jobs["jobs"][0]["id"], third);

    // The other tab followed the queue count only: no execution messages of prompts it did not queue.
    let heard = other_tab.drain(Duration::from_millis(300)).await;
    assert!(!heard.is_empty());
    assert!(heard.iter().all(|m| m["type"] == "status"), "{heard:?}");
    server.shut_down().await;
    worker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_templates_show_for_everyone_read_only_and_the_default_opens_on_a_first_visit() {
    let frontend = support::frontend::installed();
    let dir = tempfile::tempdir().unwrap();
    let worker = sim(Duration::from_millis(10)).await;
    let mut config = config(dir.path(), StoreBackend::Memory);
    config.workspace.frontend_dir = Some(frontend);
    config.workspace.default_workflow = Some("starter.json".into());
    let templates = dir.path().join("templates");
    std::fs::create_dir_all(&templates).unwrap();
    std::fs::write(
        templates.join("starter.json"),
        r#"{"nodes": [], "links": [], "extra": {"who": "teacher"}}"#,
    )
    .unwrap();
    let tokens = credentials(&config);
    let server = Server::start(config, &[worker.base_url()]).await;
    let ws = Client::new(&server.url, &tokens);

    for user in ["alice", "bob"] {
        let list = ws
            .get(
                user,
                &format!("/u/{user}/api/userdata?dir=workflows&recurse=true&split=false"),
            )
            .await;
        assert_eq!(list, json!(["templates/starter.json"]), "{user}");
        let one = ws
            .get(
                user,
                &format!("/u/{user}/api/userdata/workflows%2Ftemplates%2Fstarter.json"),
            )
            .await;
        assert_eq!(one["extra"]["who"], "teacher");
        assert_eq!(
            ws.get(user, &format!("/u/{user}/api/workflow_templates")).await,
            json!({"comfyume": ["starter"]})
        );
        let t = ws
            .get(
                user,
                &format!("/u/{user}/api/workflow_templates/comfyume/starter.json"),
            )
            .await;
        assert_eq!(t["extra"]["who"], "teacher");
    }
    // First visit: sent to the frontend's own link for opening a template (it fetches the template
    // above); every later visit gets the page as it is. Bob already has settings: no default for him.
    let page = |user: &'static str| {
        let ws = ws.clone();
        async move {
            let resp = ws
                .request(Method::GET, Some(user), &format!("/u/{user}/"))
                .send()
                .await
                .unwrap();
            let location = resp
                .headers()
                .get("location")
                .map(|v| v.to_str().unwrap().to_string());
            (resp.status(), location)
        }
    };
    let (status, _, _) = ws
        .call(
            Method::POST,
            "bob",
            "/u/bob/api/settings/Comfy.Locale",
            Some("\"en\""),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        page("alice").await,
        (
            StatusCode::SEE_OTHER,
            Some("/u/alice/?template=starter&source=comfyume".to_string())
        )
    );
    assert_eq!(page("alice").await, (StatusCode::OK, None));
    assert_eq!(page("bob").await, (StatusCode::OK, None));

    // Alice saves over the template: her own copy; Bob and the operator's file keep the original.
    let (status, _, _) = ws
        .call(
            Method::POST,
            "alice",
            "/u/alice/api/userdata/workflows%2Ftemplates%2Fstarter.json",
            Some(r#"{"extra": {"who": "alice"}}"#),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let mine = ws
        .get(
            "alice",
            "/u/alice/api/userdata/workflows%2Ftemplates%2Fstarter.json",
        )
        .await;
    assert_eq!(mine["extra"]["who"], "alice");
    let theirs = ws
        .get("bob", "/u/bob/api/userdata/workflows%2Ftemplates%2Fstarter.json")
        .await;
    assert_eq!(theirs["extra"]["who"], "teacher");
    let list = ws
        .get("alice", "/u/alice/api/userdata?dir=workflows&recurse=true")
        .await;
    assert_eq!(list, json!(["templates/starter.json"]), "listed once");
    server.shut_down().await;
    worker.shutdown().await;
}
