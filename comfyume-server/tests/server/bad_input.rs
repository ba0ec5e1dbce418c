//! Bad input gets a clear error with the documented status, and changes nothing.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::support::*;

#[tokio::test]
async fn malformed_oversized_and_deep_bodies_are_refused_and_change_nothing() {
    let s = Server::start().await;
    let mut events = s.state.engine().subscribe();
    let job = job_id(&s.submit("alice", workflow(Behaviour::Ok)).await);
    wait_end(&mut events, job).await;
    let before = s.snapshot().await;
    let users_before = s.state.engine().with_scheduler(|sch| sch.users());

    let raw = |path: &str, content_type: &str, body: String| {
        s.request(Method::POST, path, Some("alice"))
            .header("content-type", content_type)
            .body(body)
    };
    let deep = format!("{{\"prompt\": {}1{}}}", "[".repeat(100), "]".repeat(100));
    let big = format!(
        "{{\"prompt\": {{\"1\": {{\"class_type\": \"X\", \"inputs\": {{\"t\": \"{}\"}}}}}}}}",
        "a".repeat(100 * 1024)
    );
    let cases: Vec<(reqwest::RequestBuilder, u16, &str, &str)> = vec![
        (
            raw("/api/v1/jobs", "application/json", "{\"prompt\": ".into()),
            400,
            "invalid_input",
            "line 1",
        ),
        (
            raw("/api/v1/jobs", "text/plain", "{}".into()),
            415,
            "unsupported_media_type",
            "application/json",
        ),
        (
            raw("/api/v1/jobs", "application/json", big),
            413,
            "payload_too_large",
            "limit",
        ),
        (
            raw("/api/v1/jobs", "application/json", deep),
            400,
            "invalid_input",
            "nested deeper",
        ),
        (
            raw("/api/v1/jobs", "application/json", "[]".into()),
            400,
            "invalid_input",
            "JSON",
        ),
        (
            raw(
                "/api/v1/jobs",
                "application/json",
                "{\"prompt\": {}, \"colour\": 1}".into(),
            ),
            400,
            "invalid_input",
            "colour",
        ),
        (
            raw(
                "/api/v1/jobs",
                "application/json",
                "{\"prompt\": {\"1\": {\"inputs\": {}}}}".into(),
            ),
            400,
            "invalid_input",
            "node '1'",
        ),
        (
            raw("/api/v1/jobs", "application/json", "{\"prompt\": {}}".into()),
            400,
            "invalid_input",
            "no nodes",
        ),
        (
            raw("/api/v1/jobs", "application/json", "{\"prompt\": [1]}".into()),
            400,
            "invalid_input",
            "ComfyUI's API format",
        ),
        (
            raw(
                "/api/v1/jobs",
                "application/json",
                json!({"prompt": workflow(Behaviour::Ok), "cost": -1}).to_string(),
            ),
            400,
            "invalid_input",
            "cost",
        ),
        (
            raw(
                "/api/v1/jobs",
                "application/json",
                json!({"prompt": workflow(Behaviour::Ok), "extra_data": [1]}).to_string(),
            ),
            400,
            "invalid_input",
            "extra_data",
        ),
        (
            raw(
                "/api/v1/jobs",
                "application/json",
                json!({"prompt": workflow(Behaviour::Ok), "id": "nope"}).to_string(),
            ),
            400,
            "invalid_input",
            "UUID",
        ),
        (
            raw(
                "/api/v1/jobs",
                "application/json",
                json!({"prompt": workflow(Behaviour::Ok), "client_id": "x".repeat(300)}).to_string(),
            ),
            400,
            "invalid_input",
            "client_id",
        ),
        (
            s.request(Method::PUT, "/api/v1/admin/users/alice/weight", Some("teacher"))
                .json(&json!({"weight": "heavy"})),
            400,
            "invalid_input",
            "expected f64",
        ),
        (
            s.request(Method::PUT, "/api/v1/admin/users/alice/weight", Some("teacher"))
                .json(&json!({"weight": -1})),
            400,
            "invalid_input",
            "weight",
        ),
        (
            s.request(Method::PUT, "/api/v1/admin/users/alcie/weight", Some("teacher"))
                .json(&json!({"weight": 2})),
            404,
            "not_found",
            "no user 'alcie'",
        ),
        (
            s.request(Method::PUT, "/api/v1/admin/users/alice/caps", Some("teacher"))
                .json(&json!({"max_running": 0})),
            400,
            "invalid_input",
            "pause",
        ),
        (
            s.request(Method::PUT, "/api/v1/admin/users/a%20b/caps", Some("teacher"))
                .json(&json!({})),
            400,
            "invalid_input",
            "user name",
        ),
        (
            s.request(Method::POST, "/api/v1/admin/users/.hidden/pause", Some("teacher")),
            400,
            "invalid_input",
            "user name",
        ),
    ];
    for (i, (req, status, code, needle)) in cases.into_iter().enumerate() {
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status().as_u16(), status, "case {i}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["code"], code, "case {i}: {body}");
        assert!(
            body["message"].as_str().unwrap().contains(needle),
            "case {i}: {body}"
        );
    }
    assert_eq!(s.snapshot().await, before, "no job was added or changed");
    assert_eq!(
        s.state.engine().with_scheduler(|sch| sch.users()),
        users_before,
        "no override took effect"
    );
}

#[tokio::test]
async fn bad_ids_bad_queries_and_path_traversal_are_refused_and_change_nothing() {
    let s = Server::start().await;
    let mut events = s.state.engine().subscribe();
    let job = job_id(&s.submit("alice", workflow(Behaviour::Ok)).await);
    wait_end(&mut events, job).await;
    let running = s.submit_running("alice", &mut events).await;
    let before = s.snapshot().await;

    let file = |query: &str| format!("/api/v1/jobs/{job}/outputs/file?{query}");
    let cases: Vec<(Method, String, &str, u16)> = vec![
        (Method::GET, "/api/v1/jobs/not-a-uuid".into(), "alice", 400),
        (Method::DELETE, "/api/v1/jobs/not-a-uuid".into(), "alice", 400),
        (Method::POST, "/api/v1/jobs/1234/cancel".into(), "alice", 400),
        (Method::GET, "/api/v1/jobs/zzz/outputs".into(), "alice", 400),
        (Method::GET, "/api/v1/jobs/zzz/outputs/0".into(), "alice", 400),
        (
            Method::POST,
            "/api/v1/admin/jobs/zzz/front".into(),
            "teacher",
            400,
        ),
        (
            Method::GET,
            format!("/api/v1/jobs/{job}/outputs/first"),
            "alice",
            400,
        ),
        (
            Method::GET,
            format!("/api/v1/jobs/{job}/outputs/-1"),
            "alice",
            400,
        ),
        (Method::GET, format!("/api/v1/jobs/{job}/outputs/9"), "alice", 404),
        (Method::GET, file("filename=..%2F..%2Fusers.toml"), "alice", 400),
        (Method::GET, file("filename=..&subfolder="), "alice", 400),
        (Method::GET, file("filename=%2Fetc%2Fpasswd"), "alice", 400),
        (
            Method::GET,
            file("filename=test_00001_.png&subfolder=..%2F..%2F.."),
            "alice",
            400,
        ),
        (
            Method::GET,
            file("filename=test_00001_.png&subfolder=%2Fetc"),
            "alice",
            400,
        ),
        (
            Method::GET,
            file("filename=test_00001_.png&subfolder=a%5C..%5Cb"),
            "alice",
            400,
        ),
        (Method::GET, file("filename=test%00.png"), "alice", 400),
        (Method::GET, file("filename=a%2Fb.png"), "alice", 400),
        (
            Method::GET,
            file("filename=test_00001_.png&type=..%2Foutput"),
            "alice",
            400,
        ),
        (Method::GET, file("subfolder=x"), "alice", 400),
        (Method::GET, file("filename=users.toml"), "alice", 404),
        (
            Method::GET,
            file("filename=test_00001_.png&subfolder=run"),
            "alice",
            404,
        ),
        (
            Method::GET,
            file("filename=test_00001_.png&type=temp"),
            "alice",
            404,
        ),
        (Method::GET, file("filename=..%2F..%2Fusers.toml"), "bob", 400),
        (Method::GET, "/api/v1/jobs?limit=lots".into(), "alice", 400),
        (Method::GET, "/api/v1/jobs?limit=0".into(), "alice", 400),
        (Method::GET, "/api/v1/jobs?state=done".into(), "alice", 400),
        (Method::GET, "/api/v1/jobs?colour=red".into(), "alice", 400),
        (Method::GET, "/api/v1/jobs?user=..".into(), "teacher", 400),
        (Method::GET, "/api/v1/queue?limit=100000".into(), "teacher", 400),
    ];
    for (method, path, who, status) in cases {
        let (got, body) = s.call(method.clone(), &path, Some(who), None).await;
        assert_eq!(got.as_u16(), status, "{method} {path}: {body}");
        assert!(
            body["code"].is_string() && body["message"].is_string(),
            "{path}: {body}"
        );
    }
    assert_eq!(s.snapshot().await, before, "nothing changed");
    assert_eq!(s.provider.submits(), [job, running]);
    assert!(s.provider.release(running));
    let (status, _) = s.get(&format!("/api/v1/jobs/{job}/outputs/0"), "alice").await;
    assert_eq!(status, StatusCode::OK);
}
