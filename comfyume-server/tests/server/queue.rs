//! Queue positions, the overview, caps and the admin overrides.

use comfyume_core::{EventKind, JobId};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::support::*;

fn mine(overview: &Value) -> Vec<(String, Option<u64>)> {
    overview["mine"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| (j["job_id"].as_str().unwrap().to_string(), j["position"].as_u64()))
        .collect()
}

fn positions(message: &Value) -> Vec<(String, Option<u64>)> {
    message["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| (j["job_id"].as_str().unwrap().to_string(), j["position"].as_u64()))
        .collect()
}

#[tokio::test]
async fn positions_and_estimates_follow_the_queue_live() {
    let s = Server::start().await;
    let mut events = s.state.engine().subscribe();
    let mut ws = s.ws(Some("alice"), "").await.unwrap();
    let first = ws.next_json().await;
    assert_eq!(
        (first["type"].as_str(), positions(&first).len()),
        (Some("position"), 0)
    );

    let running = s.submit_running("teacher", &mut events).await;
    let a1 = job_id(&s.submit("alice", workflow(Behaviour::Hang)).await);
    let a2 = job_id(&s.submit("alice", workflow(Behaviour::Hang)).await);
    let b1 = job_id(&s.submit("bob", workflow(Behaviour::Hang)).await);
    // Fair share: Bob's first job goes between Alice's two.
    let expect = vec![(a1.to_string(), Some(0)), (a2.to_string(), Some(2))];
    let (msg, _) = ws
        .until(|m| m["type"] == "position" && positions(m) == expect)
        .await;
    assert_eq!(
        msg["jobs"][0]["estimated_start"]["status"], "unknown",
        "no run has finished yet: {msg}"
    );

    let (status, overview) = s.get("/api/v1/queue", "alice").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(mine(&overview), expect);
    assert_eq!(
        (overview["waiting"].as_u64(), overview["running"].as_u64()),
        (Some(3), Some(1))
    );
    assert_eq!(
        (overview["total_slots"].as_u64(), overview["free_slots"].as_u64()),
        (Some(1), Some(0))
    );
    assert_eq!(overview["paused"], false);
    assert_eq!(overview["policy"], "round_robin");
    assert_eq!(overview["providers"][0]["name"], "test");
    assert_eq!(overview["providers"][0]["in_flight"], 1);
    assert_eq!(overview["providers"][0]["health"]["status"], "healthy");
    assert_eq!(
        overview["mine"][0]["estimated_start"]["reason"],
        "no run-time history yet"
    );
    assert!(
        overview["order"].is_null() && overview["users"].is_null(),
        "users see only their own jobs"
    );
    let (_, bobs) = s.get("/api/v1/queue", "bob").await;
    assert_eq!(mine(&bobs), [(b1.to_string(), Some(1))]);

    let (_, admin) = s.get("/api/v1/queue", "teacher").await;
    let order: Vec<(&str, &str)> = admin["order"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["job_id"].as_str().unwrap(), e["owner"].as_str().unwrap()))
        .collect();
    let (a1s, a2s, b1s) = (a1.to_string(), a2.to_string(), b1.to_string());
    assert_eq!(
        order,
        [
            (a1s.as_str(), "alice"),
            (b1s.as_str(), "bob"),
            (a2s.as_str(), "alice")
        ]
    );
    let users = admin["users"].as_array().unwrap();
    let alice = users.iter().find(|u| u["user"] == "alice").unwrap();
    assert_eq!(
        (alice["queued"].as_u64(), alice["running"].as_u64()),
        (Some(2), Some(0))
    );

    // Bob cancels: Alice's second job moves up, and her stream says so.
    s.call(Method::DELETE, &format!("/api/v1/jobs/{b1}"), Some("bob"), None)
        .await;
    let expect = vec![(a1.to_string(), Some(0)), (a2.to_string(), Some(1))];
    ws.until(|m| m["type"] == "position" && positions(m) == expect)
        .await;

    // The running job ends: now there is a run time to estimate from, and A1 is dispatched.
    assert!(s.provider.release(running));
    wait_event(&mut events, |e| e.job_id == a1 && e.kind == EventKind::Started).await;
    let expect = vec![(a2.to_string(), Some(0))];
    ws.until(|m| m["type"] == "position" && positions(m) == expect)
        .await;
    wait_until(|| s.state.metrics().median_run_ms().is_some()).await;
    let (_, overview) = s.get("/api/v1/queue", "alice").await;
    assert!(overview["median_run_ms"].is_u64(), "{overview}");
    let estimate = &overview["mine"][0]["estimated_start"];
    assert_eq!(estimate["status"], "estimated", "{overview}");
    assert!(estimate["wait_ms"].is_u64() && estimate["start_at"].is_u64());
    let (_, view) = s.get(&format!("/api/v1/jobs/{a2}"), "alice").await;
    assert_eq!(
        (
            view["position"].as_u64(),
            view["estimated_start"]["status"].as_str()
        ),
        (Some(0), Some("estimated"))
    );
    for id in [a1, a2] {
        s.provider.release(id);
    }
}

#[tokio::test]
async fn the_queued_cap_answers_429_and_changes_nothing() {
    let s = Server::with(Options {
        max_queued: Some(2),
        ..Options::default()
    })
    .await;
    let mut events = s.state.engine().subscribe();
    let running = s.submit_running("alice", &mut events).await;
    s.submit("alice", workflow(Behaviour::Ok)).await;
    s.submit("alice", workflow(Behaviour::Ok)).await;
    let before = s.snapshot().await;
    let (status, err) = s
        .call(
            Method::POST,
            "/api/v1/jobs",
            Some("alice"),
            Some(json!({"prompt": workflow(Behaviour::Ok)})),
        )
        .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(err["code"], "limit_reached");
    assert!(
        err["message"].as_str().unwrap().contains("2 job(s) waiting"),
        "{err}"
    );
    assert_eq!(s.snapshot().await, before);
    // The cap is per user.
    s.submit("bob", workflow(Behaviour::Ok)).await;
    assert!(s.provider.release(running));
}

#[tokio::test]
async fn moving_a_job_to_the_front_runs_it_next() {
    let s = Server::start().await;
    let mut events = s.state.engine().subscribe();
    let running = s.submit_running("alice", &mut events).await;
    let waiting: Vec<JobId> =
        futures::future::join_all((0..3).map(|_| s.submit("alice", workflow(Behaviour::Ok))))
            .await
            .iter()
            .map(job_id)
            .collect();
    let last = *s.state.engine().queue_order(10).last().unwrap();
    let (status, view) = s
        .call(
            Method::POST,
            &format!("/api/v1/admin/jobs/{last}/front"),
            Some("teacher"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{view}");
    assert_eq!(view["position"], 0);
    assert!(waiting.contains(&last));
    assert!(s.provider.release(running));
    let next = wait_event(&mut events, |e| matches!(e.kind, EventKind::Dispatched { .. })).await;
    assert_eq!(next.job_id, last, "the job moved to the front ran next");
    // A job that is not waiting cannot be moved.
    let (status, err) = s
        .call(
            Method::POST,
            &format!("/api/v1/admin/jobs/{running}/front"),
            Some("teacher"),
            None,
        )
        .await;
    assert_eq!(
        (status, err["code"].as_str()),
        (StatusCode::CONFLICT, Some("conflict"))
    );
}

#[tokio::test]
async fn a_paused_user_is_held_back_while_others_run() {
    let s = Server::start().await;
    let mut events = s.state.engine().subscribe();
    let running = s.submit_running("teacher", &mut events).await;
    let held = job_id(&s.submit("alice", workflow(Behaviour::Ok)).await);
    let (status, user) = s
        .call(
            Method::POST,
            "/api/v1/admin/users/alice/pause",
            Some("teacher"),
            None,
        )
        .await;
    assert_eq!((status, user["paused"].as_bool()), (StatusCode::OK, Some(true)));
    let other = job_id(&s.submit("bob", workflow(Behaviour::Ok)).await);
    assert!(s.provider.release(running));
    // Alice's job was queued first, yet Bob's runs: she is paused.
    let next = wait_event(&mut events, |e| matches!(e.kind, EventKind::Dispatched { .. })).await;
    assert_eq!(next.job_id, other);
    wait_end(&mut events, other).await;
    let (_, overview) = s.get("/api/v1/queue", "alice").await;
    assert_eq!(overview["mine"][0]["position"], Value::Null);
    assert_eq!(overview["mine"][0]["estimated_start"]["status"], "held");
    let (status, user) = s
        .call(
            Method::POST,
            "/api/v1/admin/users/alice/resume",
            Some("teacher"),
            None,
        )
        .await;
    assert_eq!((status, user["paused"].as_bool()), (StatusCode::OK, Some(false)));
    wait_end(&mut events, held).await;
}

#[tokio::test]
async fn a_paused_queue_starts_nothing_until_resumed() {
    let s = Server::start().await;
    let mut events = s.state.engine().subscribe();
    let (status, q) = s
        .call(Method::POST, "/api/v1/admin/queue/pause", Some("teacher"), None)
        .await;
    assert_eq!((status, q["paused"].as_bool()), (StatusCode::OK, Some(true)));
    let id = job_id(&s.submit("alice", workflow(Behaviour::Ok)).await);
    let (_, overview) = s.get("/api/v1/queue", "alice").await;
    assert_eq!(overview["paused"], true);
    assert_eq!(
        overview["mine"][0]["estimated_start"]["reason"],
        "the queue is paused by an admin"
    );
    let (_, view) = s.get(&format!("/api/v1/jobs/{id}"), "alice").await;
    assert_eq!(view["state"], "queued");
    assert!(s.provider.submits().is_empty());
    let (_, q) = s
        .call(Method::POST, "/api/v1/admin/queue/resume", Some("teacher"), None)
        .await;
    assert_eq!(q["paused"], false);
    let end = wait_end(&mut events, id).await;
    assert!(matches!(end.kind, EventKind::Succeeded { .. }));
    assert_eq!(s.provider.submits(), [id]);
}

#[tokio::test]
async fn admins_set_priorities_weights_caps_policy_and_drain_providers() {
    let s = Server::start().await;
    let mut events = s.state.engine().subscribe();
    let id = job_id(&s.submit("alice", workflow(Behaviour::Ok)).await);
    wait_end(&mut events, id).await;
    let (status, view) = s
        .call(
            Method::POST,
            &format!("/api/v1/admin/jobs/{id}/priority"),
            Some("teacher"),
            Some(json!({"priority": 7})),
        )
        .await;
    assert_eq!((status, view["priority"].as_i64()), (StatusCode::OK, Some(7)));

    let put = |path: &'static str, body: Value| s.call(Method::PUT, path, Some("teacher"), Some(body));
    let (status, user) = put("/api/v1/admin/users/alice/weight", json!({"weight": 2.5})).await;
    assert_eq!((status, user["weight"].as_f64()), (StatusCode::OK, Some(2.5)));
    let (status, _) = put("/api/v1/admin/users/alice/weight", json!({"weight": 0})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    let (status, user) = put("/api/v1/admin/users/alice/caps", json!({"max_queued": 1})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (user["max_queued"].as_u64(), user["max_running"].as_u64()),
        (Some(1), None)
    );
    let (_, user) = put("/api/v1/admin/users/alice/caps", json!({"max_running": 3})).await;
    assert_eq!(
        (user["max_queued"].as_u64(), user["max_running"].as_u64()),
        (Some(1), Some(3)),
        "left-out keys are kept"
    );
    let (_, user) = put("/api/v1/admin/users/alice/caps", json!({"max_queued": null})).await;
    assert_eq!(
        (user["max_queued"].as_u64(), user["max_running"].as_u64()),
        (None, Some(3)),
        "null lifts a cap"
    );

    let (status, q) = put("/api/v1/admin/queue/policy", json!({"policy": "fifo"})).await;
    assert_eq!((status, q["policy"].as_str()), (StatusCode::OK, Some("fifo")));
    let (status, _) = put("/api/v1/admin/queue/policy", json!({"policy": "lottery"})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    let (status, users) = s.get("/api/v1/admin/users", "teacher").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        users
            .as_array()
            .unwrap()
            .iter()
            .any(|u| u["user"] == "alice" && u["weight"] == 2.5)
    );

    // A drained provider takes nothing new; undrained, the waiting job runs.
    let (status, p) = s
        .call(
            Method::POST,
            "/api/v1/admin/providers/test/drain",
            Some("teacher"),
            None,
        )
        .await;
    assert_eq!((status, p["draining"].as_bool()), (StatusCode::OK, Some(true)));
    let waiting = job_id(&s.submit("bob", workflow(Behaviour::Ok)).await);
    let (_, overview) = s.get("/api/v1/queue", "bob").await;
    assert_eq!(overview["total_slots"], 0);
    assert_eq!(overview["mine"][0]["estimated_start"]["status"], "unknown");
    let (_, providers) = s.get("/api/v1/admin/providers", "teacher").await;
    assert_eq!(providers[0]["draining"], true);
    let (status, p) = s
        .call(
            Method::POST,
            "/api/v1/admin/providers/test/undrain",
            Some("teacher"),
            None,
        )
        .await;
    assert_eq!((status, p["draining"].as_bool()), (StatusCode::OK, Some(false)));
    wait_end(&mut events, waiting).await;
    let (status, _) = s
        .call(
            Method::POST,
            "/api/v1/admin/providers/nope/drain",
            Some("teacher"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}
