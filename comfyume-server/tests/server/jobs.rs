//! Submitting, following, downloading, listing and cancelling jobs over real HTTP and WebSocket.

use comfyume_core::EventKind;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::support::*;

#[tokio::test]
async fn a_job_streams_its_events_in_order_and_its_outputs_download_for_its_owner_only() {
    let s = Server::start().await;
    let mut alice_ws = s.ws(Some("alice"), "").await.unwrap();
    let mut bob_ws = s.ws(Some("bob"), "").await.unwrap();
    let view = s.submit("alice", workflow(Behaviour::Ok)).await;
    let id = job_id(&view);
    assert_eq!(view["owner"], "alice");
    assert_eq!(view["state"], "queued");

    let (done, before) = alice_ws
        .until(|m| m["job_id"] == id.to_string() && m["type"] == "succeeded")
        .await;
    let types: Vec<&str> = before
        .iter()
        .filter(|m| m["job_id"] == id.to_string())
        .map(|m| m["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        [
            "queued",
            "dispatched",
            "started",
            "executing",
            "progress",
            "progress",
            "output",
            "output"
        ],
        "previews are not sent unless asked for"
    );
    let progress: Vec<_> = before.iter().filter(|m| m["type"] == "progress").collect();
    assert_eq!(
        (progress[0]["value"].as_u64(), progress[0]["max"].as_u64()),
        (Some(1), Some(2))
    );
    assert_eq!(done["outputs"].as_array().unwrap().len(), 2);
    assert_eq!(done["owner"], "alice");

    let (status, job) = s.get(&format!("/api/v1/jobs/{id}"), "alice").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(job["state"], "succeeded");
    assert_eq!(job["attempts"], 1);
    assert_eq!(job["provider"], "test");
    assert!(
        job["timings"]["started_at"].is_u64() && job["timings"]["ran_ms"].is_u64(),
        "{job}"
    );
    let outputs = job["outputs"].as_array().unwrap();
    assert_eq!(outputs[0]["url"], format!("/api/v1/jobs/{id}/outputs/0"));
    assert_eq!(outputs[0]["content_type"], "image/png");

    // The owner downloads the exact bytes, streamed, with safe headers.
    let resp = s
        .request(Method::GET, outputs[0]["url"].as_str().unwrap(), Some("alice"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let headers = resp.headers().clone();
    assert_eq!(headers["content-type"], "image/png");
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert!(
        headers["content-disposition"]
            .to_str()
            .unwrap()
            .starts_with("inline; filename=\"test_00001_.png\"")
    );
    assert_eq!(resp.bytes().await.unwrap().to_vec(), png_bytes(id));

    // By name, as ComfyUI's /view names files; `download=true` asks for an attachment.
    let by_name = format!(
        "/api/v1/jobs/{id}/outputs/file?filename=notes%20%C3%BC.txt&subfolder=run/1&type=output&download=true"
    );
    let resp = s
        .request(Method::GET, &by_name, Some("alice"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "text/plain; charset=utf-8");
    let disposition = resp.headers()["content-disposition"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        disposition.starts_with("attachment") && disposition.contains("notes%20%C3%BC.txt"),
        "{disposition}"
    );
    assert_eq!(resp.text().await.unwrap(), "hello");

    // Another user cannot learn the job exists; an admin can read everything.
    for path in [
        format!("/api/v1/jobs/{id}"),
        format!("/api/v1/jobs/{id}/outputs"),
        format!("/api/v1/jobs/{id}/outputs/0"),
        by_name.clone(),
    ] {
        let (status, body) = s.get(&path, "bob").await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(body["code"], "not_found");
        assert_eq!(s.get(&path, "teacher").await.0, StatusCode::OK, "{path}");
    }
    let (_, missing) = s
        .get(&format!("/api/v1/jobs/{}", comfyume_core::JobId::new()), "bob")
        .await;
    let (_, hidden) = s.get(&format!("/api/v1/jobs/{id}"), "bob").await;
    assert_eq!(
        missing["message"]
            .as_str()
            .unwrap()
            .replace(|c: char| c.is_ascii_hexdigit() || c == '-', ""),
        hidden["message"]
            .as_str()
            .unwrap()
            .replace(|c: char| c.is_ascii_hexdigit() || c == '-', ""),
        "a hidden job reads exactly like a missing one"
    );

    // Bob's stream never carried Alice's events: his own job's events come, and nothing of hers before.
    let bobs = job_id(&s.submit("bob", workflow(Behaviour::Ok)).await);
    let (_, before) = bob_ws
        .until(|m| m["job_id"] == bobs.to_string() && m["type"] == "succeeded")
        .await;
    assert!(before.iter().all(|m| m["job_id"] != id.to_string()), "{before:?}");
    assert!(before.iter().all(|m| m["owner"].is_null() || m["owner"] == "bob"));
}

#[tokio::test]
async fn previews_come_as_a_header_and_a_binary_frame_when_asked_for() {
    let s = Server::start().await;
    let mut ws = s.ws(Some("alice"), "?previews=true").await.unwrap();
    let id = job_id(&s.submit("alice", workflow(Behaviour::Ok)).await);
    let (header, _) = ws.until(|m| m["type"] == "preview").await;
    assert_eq!(header["job_id"], id.to_string());
    assert_eq!(header["content_type"], "image/jpeg");
    match ws.next_frame().await {
        Frame::Binary(bytes) => {
            assert_eq!(bytes, b"\xff\xd8preview");
            assert_eq!(header["size"], bytes.len());
        }
        other => panic!("expected the preview bytes, got {other:?}"),
    }
    ws.until(|m| m["type"] == "succeeded").await;
}

#[tokio::test]
async fn a_stream_for_one_job_starts_with_its_state_and_failures_say_why() {
    let s = Server::start().await;
    let mut events = s.state.engine().subscribe();
    let id = job_id(&s.submit("alice", workflow(Behaviour::Fail)).await);
    wait_end(&mut events, id).await;
    // Connecting after the end still tells the whole story: the snapshot.
    let mut ws = s.ws(Some("alice"), &format!("?job={id}")).await.unwrap();
    let snapshot = ws.next_json().await;
    assert_eq!(snapshot["type"], "job");
    let job = &snapshot["job"];
    assert_eq!(job["state"], "failed");
    assert_eq!(job["failure"]["kind"], "node_error");
    assert_eq!(job["failure"]["node_id"], "2");
    assert_eq!(job["failure"]["node_type"], "TestFail");

    // Another user's job, or a bad id, is refused before the upgrade.
    assert!(s.ws(Some("bob"), &format!("?job={id}")).await.is_err());
    let (status, body) = s.get(&format!("/api/v1/events?job={id}"), "bob").await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );
    let (status, _) = s.get("/api/v1/events?job=nope", "alice").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn submitting_the_same_id_twice_returns_the_same_job() {
    let s = Server::start().await;
    let id = comfyume_core::JobId::new();
    let body = json!({"prompt": workflow(Behaviour::Hang), "id": id.to_string(), "priority": -1,
        "extra_data": {"extra_pnginfo": {"workflow": {}}}, "client_id": "tab-1", "cost": 12.5});
    let (status, first) = s
        .call(Method::POST, "/api/v1/jobs", Some("alice"), Some(body.clone()))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    assert_eq!(job_id(&first), id);
    assert_eq!(
        (first["priority"].as_i64(), first["cost"].as_f64()),
        (Some(-1), Some(12.5))
    );
    assert_eq!(first["client_id"], "tab-1");
    let before = s.snapshot().await;
    let (status, again) = s
        .call(Method::POST, "/api/v1/jobs", Some("alice"), Some(body.clone()))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(job_id(&again), id);
    // ComfyUI's name for it works too.
    let alias = json!({"prompt": workflow(Behaviour::Hang), "prompt_id": id.to_string()});
    assert_eq!(
        s.call(Method::POST, "/api/v1/jobs", Some("alice"), Some(alias))
            .await
            .0,
        StatusCode::OK
    );
    // Someone else's id is refused without saying whose it is.
    let (status, err) = s
        .call(Method::POST, "/api/v1/jobs", Some("bob"), Some(body))
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(!err["message"].as_str().unwrap().contains("alice"), "{err}");
    assert_eq!(s.snapshot().await, before, "nothing new was queued");
}

#[tokio::test]
async fn users_may_not_ask_for_more_priority_than_allowed_but_admins_may() {
    let s = Server::start().await;
    let body = |p: i32| Some(json!({"prompt": workflow(Behaviour::Ok), "priority": p}));
    let (status, err) = s.call(Method::POST, "/api/v1/jobs", Some("alice"), body(5)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(err["message"].as_str().unwrap().contains("priority 5"), "{err}");
    assert!(s.snapshot().await.is_empty());
    let (status, view) = s
        .call(Method::POST, "/api/v1/jobs", Some("teacher"), body(5))
        .await;
    assert_eq!(
        (status, view["priority"].as_i64()),
        (StatusCode::CREATED, Some(5))
    );
    assert_eq!(
        s.call(Method::POST, "/api/v1/jobs", Some("alice"), body(0))
            .await
            .0,
        StatusCode::CREATED
    );
}

#[tokio::test]
async fn lists_show_own_jobs_newest_first_and_admins_everyone() {
    let s = Server::start().await;
    let mut events = s.state.engine().subscribe();
    let a1 = job_id(&s.submit("alice", workflow(Behaviour::Ok)).await);
    wait_end(&mut events, a1).await;
    let b1 = job_id(&s.submit("bob", workflow(Behaviour::Ok)).await);
    wait_end(&mut events, b1).await;
    let a2 = s.submit_running("alice", &mut events).await;

    let ids = |v: &Value| -> Vec<String> {
        v["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|j| j["id"].as_str().unwrap().to_string())
            .collect()
    };
    let (status, mine) = s.get("/api/v1/jobs", "alice").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ids(&mine), [a2.to_string(), a1.to_string()]);
    let (_, done) = s.get("/api/v1/jobs?state=succeeded", "alice").await;
    assert_eq!(ids(&done), [a1.to_string()]);
    let (_, active) = s.get("/api/v1/jobs?state=queued,leased,running", "alice").await;
    assert_eq!(ids(&active), [a2.to_string()]);
    let (_, page) = s.get("/api/v1/jobs?limit=1", "alice").await;
    assert_eq!((ids(&page).len(), page["more"].as_bool()), (1, Some(true)));
    let (_, page2) = s.get("/api/v1/jobs?limit=1&offset=1", "alice").await;
    assert_eq!(
        (ids(&page2), page2["more"].as_bool()),
        (vec![a1.to_string()], Some(false))
    );
    assert_eq!(s.get("/api/v1/jobs?user=alice", "alice").await.0, StatusCode::OK);
    let (status, err) = s.get("/api/v1/jobs?user=bob", "alice").await;
    assert_eq!(
        (status, err["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("forbidden"))
    );

    let (_, all) = s.get("/api/v1/jobs", "teacher").await;
    assert_eq!(ids(&all), [a2.to_string(), b1.to_string(), a1.to_string()]);
    let (_, bobs) = s.get("/api/v1/jobs?user=bob", "teacher").await;
    assert_eq!(ids(&bobs), [b1.to_string()]);
    assert!(s.provider.release(a2));
}

#[tokio::test]
async fn cancelling_a_queued_job_ends_it_and_a_running_one_stops_on_its_provider() {
    let s = Server::start().await;
    let mut events = s.state.engine().subscribe();
    let running = s.submit_running("alice", &mut events).await;
    let queued = job_id(&s.submit("alice", workflow(Behaviour::Ok)).await);

    // Other users cannot cancel, and learn nothing.
    let (status, _) = s
        .call(
            Method::POST,
            &format!("/api/v1/jobs/{queued}/cancel"),
            Some("bob"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = s
        .call(
            Method::DELETE,
            &format!("/api/v1/jobs/{running}"),
            Some("bob"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let (status, view) = s
        .call(
            Method::POST,
            &format!("/api/v1/jobs/{queued}/cancel"),
            Some("alice"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(view["state"], "cancelled");
    assert_eq!(view["cancel_reason"], "cancelled by alice");

    let (status, view) = s
        .call(
            Method::DELETE,
            &format!("/api/v1/jobs/{running}"),
            Some("alice"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(view["cancel_requested"], true, "{view}");
    let end = wait_end(&mut events, running).await;
    assert!(matches!(end.kind, EventKind::Cancelled { .. }), "{end:?}");
    assert_eq!(s.provider.cancels(), [running]);
    let (_, view) = s.get(&format!("/api/v1/jobs/{running}"), "alice").await;
    assert_eq!(view["state"], "cancelled");
    assert_eq!(
        s.provider.submits(),
        [running],
        "the cancelled queued job never reached the provider"
    );

    // Cancelling an ended job changes nothing; an admin may cancel anyone's.
    let (status, view) = s
        .call(
            Method::POST,
            &format!("/api/v1/jobs/{queued}/cancel"),
            Some("teacher"),
            None,
        )
        .await;
    assert_eq!(
        (status, view["cancel_reason"].as_str()),
        (StatusCode::OK, Some("cancelled by alice"))
    );
    let other = job_id(&s.submit("bob", workflow(Behaviour::Hang)).await);
    let (_, view) = s
        .call(
            Method::POST,
            &format!("/api/v1/jobs/{other}/cancel"),
            Some("teacher"),
            None,
        )
        .await;
    assert!(
        view["state"] == "cancelled" || view["cancel_requested"] == true,
        "{view}"
    );
    let end = wait_end(&mut events, other).await;
    assert!(
        matches!(end.kind, EventKind::Cancelled { ref reason } if reason == "cancelled by admin teacher")
    );
}
