//! The per-user ComfyUI API of the workspace (`/u/<user>/api/…`) against what a real ComfyUI answered
//! (`tests/captures/`), with jobs running on a **simulated** ComfyUI worker.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use comfyume_server::config::StoreBackend;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use support::workspace::{Client, Socket};
use support::{REPO, Server, config, credentials, fixture, sim};

/// A value with the timestamps a capture cannot match left out.
fn without_times(mut v: Value) -> Value {
    match &mut v {
        Value::Object(m) => {
            m.remove("modified");
            m.remove("created");
            for x in m.values_mut() {
                *x = without_times(x.take());
            }
        }
        Value::Array(a) => {
            for x in a.iter_mut() {
                *x = without_times(x.take());
            }
        }
        _ => {}
    }
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn userdata_and_settings_answer_as_the_captured_comfyui_did() {
    let dir = tempfile::tempdir().unwrap();
    let worker = sim(Duration::from_millis(10)).await;
    let config = config(dir.path(), StoreBackend::Memory);
    let tokens = credentials(&config);
    let server = Server::start(config, &[worker.base_url()]).await;
    let ws = Client::new(&server.url, &tokens);

    // Before anything is saved: the directories the frontend asks for at start-up are 404 text.
    let (status, content_type, body) = ws
        .call(Method::GET, "alice", "/u/alice/api/userdata?dir=workflows", None)
        .await;
    assert_eq!(
        (status, body),
        (StatusCode::NOT_FOUND, json!("Directory not found"))
    );
    assert!(content_type.starts_with("text/plain"));
    let (status, _, body) = ws.call(Method::GET, "alice", "/u/alice/api/userdata", None).await;
    assert_eq!(
        (status, body),
        (StatusCode::BAD_REQUEST, json!("Directory not provided"))
    );
    let (status, _, body) = ws
        .call(Method::GET, "alice", "/u/alice/api/userdata?dir=..%2F..", None)
        .await;
    assert_eq!(
        (status, body),
        (StatusCode::FORBIDDEN, json!("Invalid directory"))
    );

    let capture: Vec<Value> = serde_json::from_slice(
        &std::fs::read(format!("{REPO}/tests/captures/scenario_userdata.json")).unwrap(),
    )
    .unwrap();
    let mut replayed = 0;
    for step in capture {
        let (method, path) = step["req"].as_str().unwrap().split_once(' ').unwrap();
        // Not among the workspace's routes: the v2 listing and creating ComfyUI users.
        if path.starts_with("/v2/") || path == "/users" && method == "POST" {
            continue;
        }
        // The capture holds userdata bodies as the raw text sent, settings as the JSON value sent.
        let body = match &step["body"] {
            Value::Null => None,
            Value::String(raw) if path.starts_with("/userdata") => Some(raw.clone()),
            value => Some(value.to_string()),
        };
        let (status, content_type, answer) = ws
            .call(
                method.parse().unwrap(),
                "alice",
                &format!("/u/alice/api{path}"),
                body.as_deref(),
            )
            .await;
        assert_eq!(
            status.as_u16(),
            step["status"].as_u64().unwrap() as u16,
            "{method} {path}: {answer}"
        );
        let expected = &step["resp"];
        if status.is_success() && expected != "" {
            assert_eq!(
                without_times(answer.clone()),
                without_times(expected.clone()),
                "{method} {path}"
            );
        } else if status.is_client_error() {
            let expected_text = expected.as_str().unwrap_or_default();
            assert_eq!(
                answer.as_str().unwrap_or_default(),
                expected_text,
                "{method} {path}"
            );
        }
        if let Some(captured) = step["content_type"].as_str()
            && captured.starts_with("text/plain")
        {
            assert!(
                content_type.starts_with("text/plain"),
                "{method} {path}: {content_type}"
            );
        }
        replayed += 1;
    }
    assert!(replayed >= 17, "{replayed}");
    // Settings live in the user's own directory.
    assert!(
        dir.path()
            .join("users/alice/comfyui/comfy.settings.json")
            .is_file()
    );
    server.shut_down().await;
    worker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_startup_routes_answer_in_comfyui_shapes_and_unknown_routes_like_comfyui() {
    let frontend = support::frontend::installed();
    let dir = tempfile::tempdir().unwrap();
    let worker = sim(Duration::from_millis(10)).await;
    let mut config = config(dir.path(), StoreBackend::Memory);
    config.workspace.frontend_dir = Some(frontend);
    let tokens = credentials(&config);
    let server = Server::start(config, &[worker.base_url()]).await;
    let ws = Client::new(&server.url, &tokens);

    // Both spellings, as ComfyUI registers every route twice.
    for prefix in ["/u/alice/api", "/u/alice"] {
        let users = ws.get("alice", &format!("{prefix}/users")).await;
        assert!(
            users.get("users").is_none(),
            "single-user shape, no login picker: {users}"
        );
        assert_eq!(users["storage"], "server");
    }
    let extensions = ws.get("alice", "/u/alice/api/extensions").await;
    let list: Vec<&str> = extensions
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(list.contains(&"/extensions/core/groupNode.js"), "{list:?}");
    assert!(list.contains(&comfyume_server::workspace::EXTENSION_PATH));
    let (status, content_type, _) = ws
        .call(
            Method::GET,
            "alice",
            &format!("/u/alice{}", comfyume_server::workspace::EXTENSION_PATH),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(content_type.starts_with("text/javascript"));
    let features = ws.get("alice", "/u/alice/api/features").await;
    assert_eq!(features["supports_preview_metadata"], true);
    assert!(features["max_upload_size"].as_u64().unwrap() > 0);
    let stats = ws.get("alice", "/u/alice/api/system_stats").await;
    assert!(
        stats["system"]["comfyui_version"]
            .as_str()
            .unwrap()
            .starts_with("comfyume")
    );
    let devices = stats["devices"].as_array().unwrap();
    assert_eq!(devices.len(), 1, "one provider: {stats}");
    assert!(devices[0]["name"].as_str().unwrap().contains("sim"), "{stats}");
    for (route, empty) in [
        ("i18n", json!({})),
        ("global_subgraphs", json!({})),
        ("node_replacements", json!({})),
        ("workflow_templates", json!({})),
        ("experiment/models", json!([])),
        ("embeddings", json!([])),
    ] {
        assert_eq!(
            ws.get("alice", &format!("/u/alice/api/{route}")).await,
            empty,
            "{route}"
        );
    }
    // ComfyUI's internal route, asked for by the frontend's missing-model check: no model folders here.
    // It has no `/api` spelling, as in ComfyUI.
    assert_eq!(ws.get("alice", "/u/alice/internal/folder_paths").await, json!({}));
    let (status, _, _) = ws
        .call(Method::GET, "alice", "/u/alice/api/internal/folder_paths", None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(
        ws.get("alice", "/u/alice/api/models")
            .await
            .as_array()
            .unwrap()
            .contains(&json!("checkpoints"))
    );
    // The node catalogue, from the provider (the simulated worker serves ComfyUI 0.33.0's real one).
    let info = ws.get("alice", "/u/alice/api/object_info").await;
    assert!(
        info.as_object().unwrap().len() > 800,
        "{} classes",
        info.as_object().unwrap().len()
    );
    assert_eq!(info["SaveImage"]["output_node"], true);
    // A browser taking gzip gets the copy compressed once when the catalogue was kept: the same JSON.
    let resp = ws
        .request(Method::GET, Some("alice"), "/u/alice/api/object_info")
        .header("accept-encoding", "gzip, deflate, br, zstd")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["content-encoding"], "gzip");
    let gz = resp.bytes().await.unwrap();
    let mut text = String::new();
    std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&gz[..]), &mut text).unwrap();
    assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), info);
    let one = ws.get("alice", "/u/alice/api/object_info/EmptyImage").await;
    assert_eq!(
        one.as_object().unwrap().keys().collect::<Vec<_>>(),
        ["EmptyImage"]
    );
    assert_eq!(one["EmptyImage"], info["EmptyImage"]);
    assert_eq!(
        ws.get("alice", "/u/alice/api/object_info/NoSuchNode").await,
        json!({})
    );
    // Kept: the worker going away does not take the catalogue from the workspaces.
    worker.shutdown().await;
    let kept = ws.get("alice", "/u/alice/api/object_info?refresh=1").await;
    assert_eq!(kept.as_object().unwrap().len(), info.as_object().unwrap().len());
    assert_eq!(ws.get("alice", "/u/alice/api/settings").await, json!({}));
    assert_eq!(
        ws.get("alice", "/u/alice/api/settings/Comfy.Locale").await,
        Value::Null
    );
    for path in [
        "/u/alice/api/no_such_route",
        "/u/alice/api/models/checkpoints",
        "/u/alice/api/userdata/user.css",
    ] {
        let (status, _, body) = ws.call(Method::GET, "alice", path, None).await;
        assert_eq!((status, body), (StatusCode::NOT_FOUND, json!("")), "{path}");
    }
    server.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_prompts_get_comfyuis_400_shapes_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let worker = sim(Duration::from_millis(10)).await;
    let config = config(dir.path(), StoreBackend::Memory);
    let tokens = credentials(&config);
    let server = Server::start(config, &[worker.base_url()]).await;
    let ws = Client::new(&server.url, &tokens);
    let cases = [
        (json!({"client_id": "x"}), "no_prompt", "No prompt provided"),
        (
            json!({"prompt": fixture("01_empty_save"), "prompt_id": "nope"}),
            "invalid_prompt_id",
            "prompt_id must be a valid UUID",
        ),
        (
            json!({"prompt": {}}),
            "prompt_no_outputs",
            "Prompt has no outputs",
        ),
        (
            json!({"prompt": {"1": {"inputs": {}}}}),
            "missing_node_type",
            "Node 'ID #1' has no class_type. The workflow may be corrupted or a custom node is missing.",
        ),
    ];
    for (body, kind, message) in cases {
        let (status, _, answer) = ws
            .call(
                Method::POST,
                "alice",
                "/u/alice/api/prompt",
                Some(&body.to_string()),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
        assert_eq!(answer["error"]["type"], kind, "{answer}");
        assert_eq!(answer["error"]["message"], message, "{answer}");
        assert!(
            answer["error"]["extra_info"].is_object() && answer["node_errors"].is_object(),
            "{answer}"
        );
    }
    // Nested deeper than the server's JSON depth limit: refused before it is parsed, in the same shape.
    let deep = format!(
        r#"{{"prompt": {{"1": {{"class_type": "SaveImage", "inputs": {{"images": {}1{}}}}}}}}}"#,
        "[".repeat(500),
        "]".repeat(500)
    );
    let (status, _, answer) = ws
        .call(Method::POST, "alice", "/u/alice/api/prompt", Some(&deep))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert_eq!(answer["error"]["type"], "invalid_prompt", "{answer}");
    assert!(
        answer["error"]["details"]
            .as_str()
            .is_some_and(|d| d.contains("nested deeper than the limit")),
        "{answer}"
    );
    assert_eq!(
        ws.get("alice", "/u/alice/api/jobs").await["pagination"]["total"],
        0
    );
    let (status, _, answer) = ws
        .call(Method::GET, "alice", "/u/alice/api/jobs?status=bogus", None)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        answer["error"],
        "Invalid status value(s): bogus. Valid values: pending, in_progress, completed, failed, cancelled"
    );
    let (status, _, answer) = ws
        .call(Method::GET, "alice", "/u/alice/api/jobs?limit=0", None)
        .await;
    assert_eq!(
        (status, answer["error"].clone()),
        (StatusCode::BAD_REQUEST, json!("limit must be a positive integer"))
    );
    let (status, _, answer) = ws
        .call(
            Method::POST,
            "alice",
            "/u/alice/api/jobs/cancel",
            Some(r#"{"job_ids": ["nope"]}"#),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        answer,
        json!({"error": "job_ids contains invalid id(s)", "invalid_ids": ["nope"]})
    );
    let (status, _, answer) = ws
        .call(
            Method::GET,
            "alice",
            "/u/alice/api/jobs/6461ed60-0000-4000-8000-000000000000",
            None,
        )
        .await;
    assert_eq!(
        (status, answer),
        (StatusCode::NOT_FOUND, json!({"error": "Job not found"}))
    );
    server.shut_down().await;
    worker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_prompt_runs_as_a_job_and_the_workspace_shows_it_as_comfyui_would() {
    let dir = tempfile::tempdir().unwrap();
    let worker = sim(Duration::from_millis(50)).await;
    let config = config(dir.path(), StoreBackend::Sqlite);
    let tokens = credentials(&config);
    let server = Server::start(config, &[worker.base_url()]).await;
    let ws = Client::new(&server.url, &tokens);
    let mut socket = Socket::open(&server.url, "alice", &tokens["alice"], "tab-1").await;
    assert_eq!(socket.sid, "tab-1");
    socket
        .send(&json!({"type": "feature_flags", "data": {"supports_preview_metadata": true}}))
        .await;
    let flags = socket.next().await;
    assert_eq!(flags["type"], "feature_flags");
    assert_eq!(flags["data"]["supports_preview_metadata"], true);

    let id = ws.queue("alice", &fixture("01_empty_save"), "tab-1").await;
    let messages = socket.until_done(&id).await;
    let types: Vec<&str> = messages.iter().map(|m| m["type"].as_str().unwrap()).collect();
    // ComfyUI's order: status on queueing, execution_start, per node progress_state + executing,
    // executed, execution_success, status, executing(null) last.
    let at = |t: &str| {
        types
            .iter()
            .position(|x| *x == t)
            .unwrap_or_else(|| panic!("no {t} in {types:?}"))
    };
    assert_eq!(types[0], "status", "{types:?}");
    assert!(at("execution_start") < at("executing"));
    assert!(at("executing") < at("executed"));
    assert!(at("executed") < at("execution_success"));
    assert_eq!(&types[types.len() - 2..], ["status", "executing"], "{types:?}");
    for m in &messages {
        if m["type"] != "status" && m["type"] != "comfyume_status" {
            assert_eq!(m["data"]["prompt_id"], id, "{m}");
        }
    }
    let executed = messages.iter().find(|m| m["type"] == "executed").unwrap();
    let image = &executed["data"]["output"]["images"][0];
    assert_eq!(image["type"], "output");
    assert_eq!(image["subfolder"], format!("{id}/gw"), "{executed}");
    let filename = image["filename"].as_str().unwrap();

    // The thumbnail the frontend asks for.
    let view = format!("/u/alice/api/view?filename={filename}&subfolder={id}%2Fgw&type=output&rand=0.5");
    let resp = ws
        .request(Method::GET, Some("alice"), &view)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "image/png");
    assert_eq!(&resp.bytes().await.unwrap()[..4], b"\x89PNG");
    for bad in ["filename=..%2Fx.png", "filename=", "filename=x.png&type=bogus"] {
        let (status, _, _) = ws
            .call(Method::GET, "alice", &format!("/u/alice/api/view?{bad}"), None)
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
    }
    let (status, _, _) = ws
        .call(
            Method::GET,
            "alice",
            &format!("/u/alice/api/view?filename={filename}&subfolder=..%2F..&type=output"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // Queue, history and jobs, in ComfyUI's shapes.
    assert_eq!(
        ws.get("alice", "/u/alice/api/prompt").await,
        json!({"exec_info": {"queue_remaining": 0}})
    );
    assert_eq!(
        ws.get("alice", "/u/alice/api/queue").await,
        json!({"queue_running": [], "queue_pending": []})
    );
    let history = ws.get("alice", &format!("/u/alice/api/history/{id}")).await;
    let entry = &history[&id];
    assert_eq!(entry["status"]["status_str"], "success");
    assert_eq!(entry["status"]["completed"], true);
    assert_eq!(entry["prompt"][1], id);
    assert_eq!(entry["outputs"]["2"]["images"][0]["filename"], filename);
    assert!(
        ws.get("alice", "/u/alice/api/history?max_items=5")
            .await
            .get(&id)
            .is_some()
    );
    let jobs = ws
        .get(
            "alice",
            "/u/alice/api/jobs?status=completed,failed,cancelled&limit=64&offset=0",
        )
        .await;
    assert_eq!(
        jobs["pagination"],
        json!({"offset": 0, "limit": 64, "total": 1, "has_more": false})
    );
    let job = &jobs["jobs"][0];
    assert_eq!(
        (job["id"].as_str(), job["status"].as_str()),
        (Some(id.as_str()), Some("completed"))
    );
    assert_eq!(job["preview_output"]["filename"], filename);
    assert_eq!(job["preview_output"]["mediaType"], "images");
    assert!(job["execution_end_time"].as_u64() >= job["execution_start_time"].as_u64());
    let one = ws.get("alice", &format!("/u/alice/api/jobs/{id}")).await;
    assert_eq!(one["outputs"]["2"]["images"][0]["subfolder"], format!("{id}/gw"));
    assert_eq!(one["execution_status"]["status_str"], "success");
    assert_eq!(one["workflow"]["prompt"], fixture("01_empty_save"));
    // It is a comfyume job like any other (the REST API sees it too).
    let (status, _, rest) = ws
        .call(Method::GET, "alice", &format!("/api/v1/jobs/{id}"), None)
        .await;
    assert_eq!(
        (status, rest["state"].as_str()),
        (StatusCode::OK, Some("succeeded"))
    );
    let (status, _, _) = ws
        .call(
            Method::GET,
            "alice",
            &format!("/u/alice/api/jobs/{id}/cancel"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "GET is not cancel");
    server.shut_down().await;
    worker.shutdown().await;
}
