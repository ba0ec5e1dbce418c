//! Isolation between workspaces: nothing of one user (events, files, workflows, settings, queue
//! entries, inputs) is visible to another, on every workspace route. Jobs run on a **simulated**
//! ComfyUI worker.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use comfyume_server::config::StoreBackend;
use comfyume_server::workspace::api_endpoints;
use reqwest::{Method, StatusCode};
use serde_json::json;
use support::workspace::{Client, Socket};
use support::{Server, config, credentials, fixture, sim};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_workspace_route_refuses_other_users_and_anonymous_callers() {
    let dir = tempfile::tempdir().unwrap();
    let worker = sim(Duration::from_millis(10)).await;
    let config = config(dir.path(), StoreBackend::Memory);
    let tokens = credentials(&config);
    let server = Server::start(config, &[worker.base_url()]).await;
    let ws = Client::new(&server.url, &tokens);
    let routes = api_endpoints();
    assert!(routes.len() >= 60, "{}", routes.len());
    for (method, template) in routes {
        let path = template
            .replace("{user}", "alice")
            .replace("{id}", "6461ed60-0000-4000-8000-000000000000")
            .replace("{file}", "workflows%2Fa.json")
            .replace("{dest}", "workflows%2Fb.json")
            .replace("{folder}", "checkpoints")
            .replace("{node}", "comfyume");
        let method: Method = method.parse().unwrap();
        for (who, expected) in [(Some("bob"), 403), (Some("teacher"), 403), (None, 401)] {
            let (status, _, body) = Client::send(ws.request(method.clone(), who, &path).body("{}")).await;
            assert_eq!(status.as_u16(), expected, "{method} {path} as {who:?}: {body}");
        }
    }
    for (path, anonymous) in [
        ("/u/alice/", 303),
        ("/u/alice/index.html", 401),
        ("/u/alice/extensions/comfyume/comfyume.js", 401),
    ] {
        let (status, _, _) = Client::send(ws.request(Method::GET, Some("bob"), path)).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}");
        let (status, _, _) = Client::send(ws.request(Method::GET, None, path)).await;
        assert_eq!(status.as_u16(), anonymous, "{path}");
    }
    assert_eq!(
        Socket::status(&server.url, "alice", Some(&tokens["bob"])).await,
        403
    );
    assert_eq!(Socket::status(&server.url, "alice", None).await, 401);
    assert_eq!(
        Socket::status(&server.url, "alice", Some(&tokens["alice"])).await,
        101
    );
    server.shut_down().await;
    worker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_users_jobs_files_workflows_and_settings_never_reach_another() {
    let dir = tempfile::tempdir().unwrap();
    let worker = sim(Duration::from_millis(1500)).await;
    let config = config(dir.path(), StoreBackend::Sqlite);
    let tokens = credentials(&config);
    let server = Server::start(config, &[worker.base_url()]).await;
    let ws = Client::new(&server.url, &tokens);
    // Bob even asks for the same socket id as Alice's tab.
    let mut alice_socket = Socket::open(&server.url, "alice", &tokens["alice"], "tab-1").await;
    let mut bob_socket = Socket::open(&server.url, "bob", &tokens["bob"], "tab-1").await;

    // Alice's things: a workflow, a setting, an upload, and a running job.
    let (status, _, _) = ws
        .call(
            Method::POST,
            "alice",
            "/u/alice/api/userdata/workflows%2Fmine.json",
            Some("{\"nodes\":[]}"),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = ws
        .call(
            Method::POST,
            "alice",
            "/u/alice/api/settings/Comfy.Locale",
            Some("\"fr\""),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let png = std::fs::read(format!("{}/examples/workflows/gw_input.png", support::REPO)).unwrap();
    let form = reqwest::multipart::Form::new().part(
        "image",
        reqwest::multipart::Part::bytes(png).file_name("secret.png"),
    );
    let (status, _, uploaded) = Client::send(
        ws.request(Method::POST, Some("alice"), "/u/alice/api/upload/image")
            .multipart(form),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        uploaded,
        json!({"name": "secret.png", "subfolder": "", "type": "input"})
    );
    let id = ws.queue("alice", &fixture("01_empty_save"), "tab-1").await;
    alice_socket
        .until(|m| m["type"] == "execution_start" && m["data"]["prompt_id"] == id)
        .await;

    // Bob cannot see it, stop it, or take its id.
    let bob = |path: &str| format!("/u/bob/api{path}");
    assert_eq!(
        ws.get("bob", &bob("/queue")).await,
        json!({"queue_running": [], "queue_pending": []})
    );
    assert_eq!(
        ws.get("bob", &bob("/prompt")).await["exec_info"]["queue_remaining"],
        0
    );
    assert_eq!(ws.get("bob", &bob("/jobs")).await["pagination"]["total"], 0);
    let (status, _, _) = ws
        .call(Method::GET, "bob", &bob(&format!("/jobs/{id}")), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let cancel = ws
        .call(Method::POST, "bob", &bob(&format!("/jobs/{id}/cancel")), None)
        .await;
    assert_eq!(cancel.2, json!({"cancelled": false}));
    let body = json!({"job_ids": [id]}).to_string();
    assert_eq!(
        ws.call(Method::POST, "bob", &bob("/jobs/cancel"), Some(&body))
            .await
            .2,
        json!({"cancelled": false})
    );
    for (path, body) in [
        ("/interrupt", json!({"prompt_id": id})),
        ("/interrupt", json!({})),
        ("/queue", json!({"clear": true})),
        ("/queue", json!({"delete": [id]})),
    ] {
        let (status, _, _) = ws
            .call(Method::POST, "bob", &bob(path), Some(&body.to_string()))
            .await;
        assert_eq!(status, StatusCode::OK, "{path}");
    }
    let taken = json!({"prompt": fixture("01_empty_save"), "prompt_id": id}).to_string();
    let (status, _, answer) = ws.call(Method::POST, "bob", &bob("/prompt"), Some(&taken)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");

    // Alice's job was not touched: it ends in success, and her socket saw all of it.
    let done = alice_socket.until_done(&id).await;
    assert!(done.iter().any(|m| m["type"] == "execution_success"), "{done:?}");
    let executed = done.iter().find(|m| m["type"] == "executed").unwrap();
    let image = &executed["data"]["output"]["images"][0];
    let (filename, subfolder) = (
        image["filename"].as_str().unwrap(),
        image["subfolder"].as_str().unwrap(),
    );

    // Her files are hers: Bob's workspace serves none of them.
    let sub = subfolder.replace('/', "%2F");
    let view = format!("/view?filename={filename}&subfolder={sub}&type=output");
    assert_eq!(
        ws.call(Method::GET, "alice", &format!("/u/alice/api{view}"), None)
            .await
            .0,
        StatusCode::OK
    );
    assert_eq!(
        ws.call(Method::GET, "bob", &bob(&view), None).await.0,
        StatusCode::NOT_FOUND
    );
    let input = "/view?filename=secret.png&type=input";
    assert_eq!(
        ws.call(Method::GET, "alice", &format!("/u/alice/api{input}"), None)
            .await
            .0,
        StatusCode::OK
    );
    assert_eq!(
        ws.call(Method::GET, "bob", &bob(input), None).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(ws.get("bob", &bob(&format!("/history/{id}"))).await, json!({}));
    assert_eq!(ws.get("bob", &bob("/history")).await, json!({}));
    assert!(ws.get("alice", "/u/alice/api/history").await.get(&id).is_some());
    let (status, _, _) = ws
        .call(Method::GET, "bob", &bob("/userdata?dir=workflows"), None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "Bob has no workflows");
    assert_eq!(
        ws.call(Method::GET, "bob", &bob("/userdata/workflows%2Fmine.json"), None)
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(ws.get("bob", &bob("/settings")).await, json!({}));
    assert_eq!(
        ws.get("alice", "/u/alice/api/settings/Comfy.Locale").await,
        json!("fr")
    );

    // Bob's socket heard nothing of it (not even a status: the job is not his).
    let heard = bob_socket.drain(Duration::from_millis(500)).await;
    assert!(heard.is_empty(), "{heard:?}");
    server.shut_down().await;
    worker.shutdown().await;
}
